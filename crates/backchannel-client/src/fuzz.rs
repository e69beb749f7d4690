//! Fuzz entry points, one per group of parsers (`fuzz/fuzz_targets/` calls
//! these, and this crate's `tests/fuzz_corpus.rs` runs them over
//! `fuzz/corpus/`). Each must never panic on any input; when the input
//! parses, a canonical encoding must give back the input byte for byte (one
//! encoding per value), and a JSON document must re-serialise to text that
//! parses to the same value.
//!
//! As in `backchannel_statement::fuzz::text`, a target hands the same bytes
//! to each of its parsers: the formats start with distinct version bytes or
//! JSON braces, so a seed of one format, mutated, stays one format's input.

use backchannel_codec::{Decode, Encode};
use backchannel_crypto::{Digest, PublicKey};
use backchannel_tlog::LEAF_DATA_LEN;

use crate::follow::{Follower, Pending, Witness, data_tiles, parse_data_tile};
use crate::fork::{Comparison, ForkEvidence, compare};
use crate::participant::{
    Enrolment, InvitationDoc, MemberInvitationDoc, MemberReplyDoc, TalksRecord,
};
use crate::safety::{PartyVerification, SafetyCode};
use crate::seal::AppMessage;

/// A fixed, valid key for the verification half of the targets (the
/// Ed25519 base point).
fn key() -> Option<PublicKey> {
    let mut b = [0x66u8; 32];
    b[0] = 0x58;
    PublicKey::from_bytes(&b).ok()
}

/// The documents participants exchange out of band (JSON: an invitation, a
/// member invitation, a member's reply) and the participant's binary
/// records (an enrolment payload, a home's talks record).
pub fn participant(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(d) = InvitationDoc::parse(text) {
            let again = InvitationDoc::parse(&d.to_json());
            assert_eq!(again.ok().as_ref(), Some(&d));
        }
        if let Ok(d) = MemberInvitationDoc::parse(text) {
            let again = MemberInvitationDoc::parse(&d.to_json());
            assert_eq!(again.ok().as_ref(), Some(&d));
        }
        if let Ok(d) = MemberReplyDoc::parse(text) {
            let again = MemberReplyDoc::parse(&d.to_json());
            assert_eq!(again.ok().as_ref(), Some(&d));
        }
    }
    if let Ok(e) = Enrolment::from_canonical_bytes(data) {
        assert_eq!(e.to_canonical_bytes(), data);
    }
    if let Ok(r) = TalksRecord::from_canonical_bytes(data) {
        assert_eq!(r.to_canonical_bytes(), data);
        for party in r
            .verifications
            .keys()
            .chain(r.invited.iter().map(|i| &i.party))
        {
            let _ = r.verification(*party).label();
        }
    }
}

/// The client's persisted state: the log follower, the pending receipts,
/// the witness memory, a party's verification state and a safety code;
/// also fork evidence (verified under a fixed key), an application
/// message, and a handover bundle and part.
pub fn client_state(data: &[u8]) {
    if let Ok(f) = Follower::from_canonical_bytes(data) {
        assert_eq!(f.to_canonical_bytes(), data);
        assert_eq!(f.range().len(), f.size().count_ones() as usize);
        assert_eq!(f.root_at(f.size()), Some(f.root()));
        let with_itself = compare(&f, &f);
        if f.verified().is_empty() {
            assert_eq!(with_itself, Comparison::Inconclusive);
        } else {
            assert!(matches!(with_itself, Comparison::Consistent { .. }));
        }
        let _ = f.compare_reference(f.size(), &f.root());
        let _ = f.compare_reference(f.size() / 2, &Digest([0; 32]));
    }
    if let Ok(p) = Pending::from_canonical_bytes(data) {
        assert_eq!(p.to_canonical_bytes(), data);
        assert_eq!(p.overdue(u64::MAX).len(), p.len());
        let mut settled = p.clone();
        // Nothing is below an empty log's size: nothing settles.
        assert_eq!(settled.settle(&Follower::new(), &[]), Ok(()));
        assert_eq!(settled, p);
    }
    if let Ok(w) = Witness::from_canonical_bytes(data) {
        assert_eq!(w.to_canonical_bytes(), data);
    }
    if let Ok(e) = ForkEvidence::from_canonical_bytes(data) {
        assert_eq!(e.to_canonical_bytes(), data);
        let (a, b) = e.notes();
        assert_ne!(a, b);
        if let Some(k) = key() {
            let _ = e.verify(&k, e.origin());
        }
    }
    if let Ok(m) = AppMessage::from_bytes(data) {
        assert_eq!(m.to_bytes(), data);
        let _ = m.commitment();
    }
    if let Ok(b) = crate::handover::Bundle::from_bytes(data) {
        assert_eq!(b.to_bytes(), data);
        let _ = b.counts();
    }
    if let Ok(p) = crate::handover::Part::from_bytes(data) {
        assert_eq!(p.to_bytes(), data);
    }
    if let Ok(v) = PartyVerification::from_canonical_bytes(data) {
        assert_eq!(v.to_canonical_bytes(), data);
        let _ = v.label();
        let _ = v.against(SafetyCode(Digest([0; 32])));
    }
    if let Ok(c) = SafetyCode::from_canonical_bytes(data) {
        assert_eq!(c.to_canonical_bytes(), data);
        let _ = c.phrase();
        let _ = c.qr_payload();
    }
}

/// A data tile as the node serves it: `count` entries of leaf data from
/// `first_seq`, both taken from the input (the first entry's seq, and the
/// whole entries it holds) so that mutations of a valid tile stay valid
/// tiles as often as not. The tile plan for those seqs is built too.
pub fn data_tile(data: &[u8]) {
    let first_seq = data
        .get(1..9)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map_or(0, u64::from_be_bytes);
    let count = (data.len() / LEAF_DATA_LEN) as u64;
    if let Ok(leaves) = parse_data_tile(data, first_seq, count) {
        assert_eq!(leaves.len() as u64, count);
        let bytes: Vec<u8> = leaves.iter().flat_map(|l| l.to_canonical_bytes()).collect();
        assert_eq!(bytes, data);
    }
    for tile in data_tiles(first_seq, first_seq.saturating_add(count)).take(2) {
        let _ = tile.path();
        let _ = tile.parse(data);
    }
}

/// What MLS rooms add to parse: the public framing of an MLS message (what
/// the node reads), a handshake body, a copy of statements for newcomers,
/// an attachment message, the request a session writes before its first
/// send, and a member's stored MLS state.
pub fn mls(data: &[u8]) {
    let _ = backchannel_mls::read_framing(data);
    if let Ok(h) = backchannel_mls::Handshake::parse(data) {
        assert_eq!(h.encode(), data);
    }
    if let Ok(items) = crate::rooms::decode_copy(data) {
        assert_eq!(crate::rooms::encode_copy(&items), data);
    }
    if let Ok(a) = crate::attachment::Attachment::from_bytes(data) {
        assert_eq!(a.to_bytes(), data);
    }
    if let Ok(u) = crate::rooms::Unsent::decode(data) {
        assert_eq!(u.encode(), data);
    }
    if let Ok(seed) = backchannel_crypto::SecretKey::from_seed(&[7; 32]) {
        let talks = backchannel_codec::TalksId([1; 16]);
        // OpenMLS's own values inside are not canonical encodings of ours:
        // parsing must not panic, and what parsed must encode again.
        if let Ok(m) = backchannel_mls::Member::from_bytes(talks, seed, data) {
            let _ = m.to_bytes();
        }
    }
}
