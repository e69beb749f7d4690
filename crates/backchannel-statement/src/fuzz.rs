//! Fuzz entry points, one per parser (`fuzz/fuzz_targets/` calls these, and
//! `backchannel-core`'s corpus test runs them over `fuzz/corpus/`). Each
//! must never panic on any input, and when the input parses, re-encoding
//! must give back the input byte for byte (one encoding per value).

use backchannel_codec::{Decode, Encode, TalksId};
use backchannel_crypto::Signer;

use crate::access_list::{AccessList, AccessListChange};
use crate::fixtures;
use crate::header::{SignedHeader, unpad_body};
use crate::lifecycle::LifecycleChange;
use crate::markings::Markings;
use crate::statement::SignedStatement;
use crate::text::{StructuredText, confusables};

/// A signed statement: decode, re-encode, verify, check a room.
pub fn statement(data: &[u8]) {
    if let Ok(s) = SignedStatement::decode(data) {
        assert_eq!(s.as_bytes(), data);
        let rebuilt = s.unverified().frame_bytes();
        assert_eq!(rebuilt.as_deref().ok(), Some(s.frame()));
        let key = fixtures::key(fixtures::labels::US_HEAD).public_key();
        if let Ok(v) = s.verify(s.unverified().talks, &key) {
            let _ = v.check_room(backchannel_codec::RoomId([0; 16]), &[]);
        }
    }
}

/// A signed envelope header: decode, re-encode, verify.
pub fn header(data: &[u8]) {
    if let Ok(h) = SignedHeader::decode(data) {
        assert_eq!(&h.to_bytes()[..], data);
        let key = fixtures::key(fixtures::labels::US_HEAD_DEVICE).public_key();
        let _ = h.verify(&key);
    }
    let _ = unpad_body(data);
}

/// An access list, then the same bytes as a change applied to it.
pub fn access_list(data: &[u8]) {
    if let Ok(l) = AccessList::from_canonical_bytes(data) {
        assert_eq!(l.to_canonical_bytes(), data);
        let _ = l.hash();
    }
    if let Ok(c) = AccessListChange::from_canonical_bytes(data) {
        assert_eq!(c.to_canonical_bytes(), data);
        let t = fixtures::talks();
        if let Ok(list) = t.roster.implied_access_list(t.talks) {
            let _ = list.apply(&c);
        }
    }
}

/// Structured text, markings, and a lifecycle change (its reason is text).
pub fn text(data: &[u8]) {
    if let Ok(t) = StructuredText::from_canonical_bytes(data) {
        assert_eq!(t.to_canonical_bytes(), data);
        for s in t.strings() {
            let _ = confusables(s);
        }
    }
    if let Ok(m) = Markings::from_canonical_bytes(data) {
        assert_eq!(m.to_canonical_bytes(), data);
    }
    if let Ok(l) = LifecycleChange::from_canonical_bytes(data) {
        assert_eq!(l.to_canonical_bytes(), data);
    }
}

/// A roster payload, verified for the fixture talks.
pub fn roster(data: &[u8]) {
    if let Ok(r) = crate::Roster::from_canonical_bytes(data) {
        assert_eq!(r.to_canonical_bytes(), data);
        let _ = r.verify_for(TalksId([1; 16]));
    }
    if let Ok(g) = crate::GroundRules::from_canonical_bytes(data) {
        assert_eq!(g.to_canonical_bytes(), data);
    }
}
