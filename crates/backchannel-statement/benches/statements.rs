//! Statement and header sign/verify, and roster encode/decode:
//! `cargo bench -p backchannel-statement`.
#![allow(missing_docs)] // criterion generates the entry points.

use backchannel_codec::{Decode, Encode};
use backchannel_crypto::{Signer, sha256};
use backchannel_statement::fixtures::{self, key, labels::*};
use backchannel_statement::header::pad_body;
use backchannel_statement::{
    Commitment, Header, Kind, Payload, Revoke, RevokeReason, Roster, Salt, SignedHeader,
    SignedStatement,
};
use criterion::{Criterion, criterion_group, criterion_main};

fn bench(c: &mut Criterion) {
    let t = fixtures::talks();
    let signer = key(US_HEAD);
    let payload = Payload::Revoke(Revoke {
        key: key(US_HEAD_DEVICE).public_key().id(),
        reason: RevokeReason::Lost,
        lost_at: None,
    });
    let statement = t.statement(1, &signer, t.us, payload.clone());
    let bytes = statement.as_bytes().to_vec();
    let pk = signer.public_key();

    c.bench_function("statement/sign", |b| {
        b.iter(|| t.statement(1, &signer, t.us, payload.clone()))
    });
    c.bench_function("statement/decode+verify", |b| {
        b.iter(|| SignedStatement::decode(&bytes).map(|s| s.verify(t.talks, &pk).is_ok()))
    });

    let device = key(US_HEAD_DEVICE);
    let body = pad_body(&[7; 1000]).unwrap_or_else(|e| panic!("{e}"));
    let header = Header {
        talks: t.talks,
        room: t.record,
        sender: device.public_key().id(),
        kind: Kind::MlsApp,
        idempotency_key: [1; 16],
        body_len: body.len() as u32,
        body_hash: sha256(&body),
        commitment: Commitment::to_plaintext(&Salt([2; 32]), &[7; 1000]),
    };
    let signed = header
        .sign(&device)
        .unwrap_or_else(|e| panic!("{e}"))
        .to_bytes();
    let dpk = device.public_key();
    c.bench_function("header/sign", |b| b.iter(|| header.sign(&device)));
    c.bench_function("header/decode+verify+body-hash (1 KiB)", |b| {
        b.iter(|| {
            SignedHeader::decode(&signed)
                .map(|h| h.verify(&dpk).is_ok() && h.check_body(&body).is_ok())
        })
    });

    let roster = t.roster.to_canonical_bytes();
    c.bench_function("roster/decode+verify (3 parties)", |b| {
        b.iter(|| Roster::from_canonical_bytes(&roster).map(|r| r.verify_for(t.talks).is_ok()))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
