//! Known-answer vectors in `test-vectors/log/*.json`, made from fixed seeds
//! (`SecretKey::from_seed(&[n; 32])`) and fixed inputs. The test regenerates
//! every file and compares it byte for byte; with
//! `BACKCHANNEL_REGENERATE_VECTORS=1` it rewrites the files instead.
#![allow(clippy::expect_used)] // Test code: a failed expectation is a failed test.

use std::path::PathBuf;

use backchannel_codec::{Encode, RoomId, TalksId};
use backchannel_crypto::{Digest, SecretKey, Signer};
use backchannel_tlog::{
    BatchRecord, Checkpoint, Cosignature, CosignerKey, LeafData, LogOrigin, MemoryHashStore,
    NodeOrigin, RECEIPT_CONTEXT, SIG_TYPE_ED25519, SignedBatch, attach, batch_signed_bytes,
    cosigned_message, key_id, log_key_id,
};
use base64::Engine as _;
use serde_json::{Value, json};

fn key(n: u8) -> SecretKey {
    SecretKey::from_seed(&[n; 32]).expect("valid seed")
}

/// The C2SP verifier key text `<name>+<hex id>+<base64(type ‖ key)>`.
fn vkey(name: &str, sig_type: u8, k: &SecretKey) -> String {
    let mut typed = vec![sig_type];
    typed.extend_from_slice(k.public_key().as_bytes());
    format!(
        "{name}+{:08x}+{}",
        key_id(name, sig_type, &k.public_key()),
        base64::engine::general_purpose::STANDARD.encode(typed)
    )
}

fn leaves() -> Vec<LeafData> {
    (0..10u64)
        .map(|i| LeafData {
            seq: i,
            timestamp_ms: 1_700_000_000_000 + 1000 * i,
            room: RoomId([0x10 + i as u8; 16]),
            header_hash: backchannel_crypto::sha256(format!("header {i}").as_bytes()),
            body_hash: backchannel_crypto::sha256(format!("body {i}").as_bytes()),
        })
        .collect()
}

fn node() -> NodeOrigin {
    NodeOrigin::new("node.backchannel.example").expect("valid")
}

fn talks() -> TalksId {
    TalksId(*b"\x00\x11\x22\x33\x44\x55\x66\x77\x88\x99\xaa\xbb\xcc\xdd\xee\xff")
}

fn log() -> MemoryHashStore {
    let mut s = MemoryHashStore::new();
    for l in leaves() {
        s.append(&l.hash()).expect("appends");
    }
    s
}

fn leaf_vectors() -> Value {
    let cases: Vec<Value> = leaves()
        .iter()
        .take(3)
        .map(|l| {
            json!({
                "seq": l.seq,
                "timestamp_ms": l.timestamp_ms,
                "room_id": l.room.to_hex(),
                "header_hash": l.header_hash.to_hex(),
                "body_hash": l.body_hash.to_hex(),
                "leaf_data": hex::encode(l.to_canonical_bytes()),
                "leaf_hash": l.hash().to_hex(),
            })
        })
        .collect();
    json!({ "description": "leaf data (97 bytes) and leaf hash SHA-256(0x00 ‖ leaf data)", "cases": cases })
}

fn checkpoint_note() -> (Checkpoint, Vec<u8>) {
    let cp = Checkpoint {
        origin: LogOrigin::new(&node(), talks()),
        size: 10,
        root: log().root().expect("root"),
    };
    let signed = cp.sign(&key(1)).expect("signs");
    (cp, signed.note().to_vec())
}

fn checkpoint_vectors() -> Value {
    let (cp, note) = checkpoint_note();
    json!({
        "description": "a checkpoint of the 10 leaves of leaf.json's generator, signed by SecretKey::from_seed(&[1; 32])",
        "log_key_seed": hex::encode([1u8; 32]),
        "log_public_key": hex::encode(key(1).public_key().as_bytes()),
        "key_name": node().as_str(),
        "key_id": format!("{:08x}", log_key_id(&node(), &key(1).public_key())),
        "vkey": vkey(node().as_str(), SIG_TYPE_ED25519, &key(1)),
        "origin": cp.origin.as_str(),
        "size": cp.size,
        "root": cp.root.to_hex(),
        "body": String::from_utf8(cp.body()).expect("ascii"),
        "note": String::from_utf8(note).expect("utf-8"),
    })
}

fn cosignature_vectors() -> Value {
    let (cp, note) = checkpoint_note();
    let w = key(2);
    let name = "witness.example/w1";
    let ts = 1_700_000_123;
    let cos = Cosignature::sign(&w, name, ts, &cp.body()).expect("signs");
    let ck = CosignerKey::new(name, w.public_key()).expect("valid");
    json!({
        "description": "a C2SP tlog-cosignature/v1 by SecretKey::from_seed(&[2; 32]) on checkpoint.json's checkpoint",
        "cosigner_seed": hex::encode([2u8; 32]),
        "cosigner_public_key": hex::encode(w.public_key().as_bytes()),
        "cosigner_name": name,
        "key_id": format!("{:08x}", ck.key_id()),
        "vkey": vkey(name, 0x04, &w),
        "timestamp": ts,
        "signed_message": String::from_utf8(cosigned_message(ts, &cp.body())).expect("ascii"),
        "signature": hex::encode(cos.signature().as_bytes()),
        "line": String::from_utf8(cos.to_line()).expect("utf-8"),
        "cosigned_note": String::from_utf8(attach(&note, &cos).expect("attaches")).expect("utf-8"),
    })
}

fn receipt_vectors() -> Value {
    let node_key = key(3);
    let records: Vec<BatchRecord> = leaves()
        .iter()
        .take(5)
        .map(|l| BatchRecord {
            talks: talks(),
            seq: l.seq,
            timestamp_ms: l.timestamp_ms,
            leaf_hash: l.hash(),
        })
        .collect();
    let ts = 1_700_000_005_000;
    let batch = SignedBatch::sign(&node_key, records.clone(), ts).expect("signs");
    let receipts: Vec<Value> = batch
        .receipts()
        .iter()
        .zip(&records)
        .map(|(r, rec)| {
            json!({
                "record": hex::encode(rec.to_canonical_bytes()),
                "record_hash": rec.hash().to_hex(),
                "receipt": hex::encode(r.to_canonical_bytes()),
            })
        })
        .collect();
    let signed = batch_signed_bytes(batch.root(), records.len() as u64, ts);
    json!({
        "description": "a batch of 5 records signed by SecretKey::from_seed(&[3; 32]) and each record's receipt",
        "node_seed": hex::encode([3u8; 32]),
        "node_public_key": hex::encode(node_key.public_key().as_bytes()),
        "context": RECEIPT_CONTEXT.as_str(),
        "batch_timestamp_ms": ts,
        "batch_root": batch.root().to_hex(),
        "signed_bytes": hex::encode(&signed),
        "signature": hex::encode(node_key.sign(RECEIPT_CONTEXT, &signed).expect("signs").as_bytes()),
        "receipts": receipts,
    })
}

fn proof_vectors() -> Value {
    let s = log();
    let root = |n| -> Digest { s.root_at(n).expect("root") };
    let incl: Vec<Value> = [(0u64, 10u64), (6, 10), (9, 10), (2, 3)]
        .iter()
        .map(|&(i, n)| {
            json!({
                "index": i, "size": n, "root": root(n).to_hex(),
                "encoded": hex::encode(s.prove_inclusion(i, n).expect("proves").to_canonical_bytes()),
            })
        })
        .collect();
    let cons: Vec<Value> = [(1u64, 10u64), (4, 10), (7, 10), (10, 10)]
        .iter()
        .map(|&(m, n)| {
            json!({
                "old_size": m, "new_size": n, "old_root": root(m).to_hex(), "new_root": root(n).to_hex(),
                "encoded": hex::encode(s.prove_consistency(m, n).expect("proves").to_canonical_bytes()),
            })
        })
        .collect();
    json!({ "description": "proofs over the 10 leaves of leaf.json's generator", "inclusion": incl, "consistency": cons })
}

#[test]
fn known_answer_vectors_are_reproduced() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../test-vectors/log");
    let regenerate = std::env::var("BACKCHANNEL_REGENERATE_VECTORS").as_deref() == Ok("1");
    for (file, value) in [
        ("leaf.json", leaf_vectors()),
        ("checkpoint.json", checkpoint_vectors()),
        ("cosignature.json", cosignature_vectors()),
        ("receipt.json", receipt_vectors()),
        ("proof.json", proof_vectors()),
    ] {
        let mut text = serde_json::to_string_pretty(&value).expect("serializes");
        text.push('\n');
        let path = dir.join(file);
        if regenerate {
            std::fs::write(&path, &text).unwrap_or_else(|e| panic!("{path:?}: {e}"));
        } else {
            let stored = std::fs::read_to_string(&path).unwrap_or_else(|e| {
                panic!("{path:?}: {e} (run with BACKCHANNEL_REGENERATE_VECTORS=1 to write it)")
            });
            assert_eq!(stored, text, "{file} differs from what the code produces");
        }
    }
}
