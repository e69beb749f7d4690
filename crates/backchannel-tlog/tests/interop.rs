//! Cross-checks against data from independent implementations, kept in
//! `test-vectors/log/`:
//!
//! - `go-sumdb-argon2020/` and `tlog-tiles-argon2020/`: a real Certificate
//!   Transparency log (Google Argon 2020) entry, inclusion proof and
//!   consistency proof, as the Go `golang.org/x/mod/sumdb/tlog` tests
//!   (`ct_test.go`) and `tlog_tiles` (which ports them) carry them; the two
//!   copies were fetched at different tree sizes.
//! - `rfc6962-reference.json`: the RFC 6962 reference tree of the CT C++
//!   code (roots, audit paths, consistency proofs).
//! - `signed-notes.json`: signed notes by other implementations (Go's
//!   `sumdb/note` test vectors and real `sum.golang.org` checkpoints), and the
//!   C2SP tlog-cosignature example. That example publishes no public key, so
//!   only its syntax, timestamp and signed message are checked; we found no
//!   published Ed25519 cosignature with its key and checkpoint to verify.
#![allow(clippy::expect_used)] // Test code: a failed expectation is a failed test.

use std::path::PathBuf;

use backchannel_crypto::{Digest, PublicKey};
use backchannel_tlog::{
    ConsistencyProof, Cosignature, InclusionProof, MemoryHashStore, NoteVerifier, SIG_TYPE_ED25519,
    cosignatures, cosigned_message, key_id,
};
use base64::Engine as _;
use serde_json::Value;

fn vectors() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../test-vectors/log")
}

fn json(rel: &str) -> Value {
    let path = vectors().join(rel);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path:?}: {e}"))
}

fn b64(v: &Value) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(v.as_str().expect("a string"))
        .expect("base64")
}

fn digest_b64(v: &Value) -> Digest {
    Digest(b64(v).try_into().expect("32 bytes"))
}

fn digest_hex(v: &Value) -> Digest {
    Digest(
        hex::decode(v.as_str().expect("a string"))
            .expect("hex")
            .try_into()
            .expect("32 bytes"),
    )
}

fn list(v: &Value, f: fn(&Value) -> Digest) -> Vec<Digest> {
    v.as_array().expect("a list").iter().map(f).collect()
}

#[test]
fn certificate_transparency_argon2020_proofs_verify() {
    for dir in ["go-sumdb-argon2020", "tlog-tiles-argon2020"] {
        let sth = json(&format!("{dir}/sth.json"));
        let size = sth["tree_size"].as_u64().expect("size");
        let root = digest_b64(&sth["sha256_root_hash"]);
        let entries = json(&format!("{dir}/entries.json"));
        let leaf = b64(&entries["entries"][0]["leaf_input"]);
        let leaf_hash = Digest(tlog_tiles::record_hash(&leaf).0);

        let proof = json(&format!("{dir}/proof.json"));
        let p = InclusionProof::new(10000, size, list(&proof["audit_path"], digest_b64))
            .expect("well-formed proof");
        assert_eq!(
            p.verify(10000, size, &root, &leaf_hash),
            Ok(()),
            "{dir} inclusion"
        );
        assert!(p.verify(10000, size, &root, &Digest([0; 32])).is_err());

        let old = digest_b64(&Value::from("AuIZ5V6sDUj1vn3Y1K85oOaQ7y+FJJKtyRTl1edIKBQ="));
        let cons = json(&format!("{dir}/consistency.json"));
        let c = ConsistencyProof::new(3_654_490, size, list(&cons["consistency"], digest_b64))
            .expect("well-formed proof");
        assert_eq!(
            c.verify(3_654_490, &old, size, &root),
            Ok(()),
            "{dir} consistency"
        );
        assert!(c.verify(3_654_490, &root, size, &old).is_err());
    }
}

#[test]
fn rfc6962_reference_tree() {
    let v = json("rfc6962-reference.json");
    let mut store = MemoryHashStore::new();
    assert_eq!(store.root(), Ok(digest_hex(&v["empty_root_hex"])));
    let leaves: Vec<Vec<u8>> = v["leaf_inputs_hex"]
        .as_array()
        .expect("list")
        .iter()
        .map(|h| hex::decode(h.as_str().expect("str")).expect("hex"))
        .collect();
    let roots = list(&v["roots_at_size_hex"], digest_hex);
    for (i, leaf) in leaves.iter().enumerate() {
        store
            .append(&Digest(tlog_tiles::record_hash(leaf).0))
            .expect("appends");
        assert_eq!(store.root(), Ok(roots[i]), "root at size {}", i + 1);
    }
    for case in v["inclusion"].as_array().expect("list") {
        let (i, n) = (
            case["index"].as_u64().expect("u64"),
            case["size"].as_u64().expect("u64"),
        );
        let want = list(&case["path_hex"], digest_hex);
        let p = store.prove_inclusion(i, n).expect("proves");
        assert_eq!(p.hashes(), want.as_slice(), "path {i} in {n}");
        let leaf_hash = Digest(tlog_tiles::record_hash(&leaves[i as usize]).0);
        assert_eq!(p.verify(i, n, &roots[n as usize - 1], &leaf_hash), Ok(()));
    }
    for case in v["consistency"].as_array().expect("list") {
        let (m, n) = (
            case["old"].as_u64().expect("u64"),
            case["new"].as_u64().expect("u64"),
        );
        let want = list(&case["proof_hex"], digest_hex);
        let p = store.prove_consistency(m, n).expect("proves");
        assert_eq!(p.hashes(), want.as_slice(), "consistency {m} to {n}");
        assert_eq!(
            p.verify(m, &roots[m as usize - 1], n, &roots[n as usize - 1]),
            Ok(())
        );
    }
}

/// Parses a C2SP verifier key `<name>+<hex id>+<base64(type ‖ key)>`.
fn vkey(s: &str) -> (String, u32, PublicKey) {
    let mut parts = s.splitn(3, '+');
    let (name, id, key) = (
        parts.next().expect("name"),
        parts.next().expect("id"),
        parts.next().expect("key"),
    );
    let raw = base64::engine::general_purpose::STANDARD
        .decode(key)
        .expect("base64");
    assert_eq!(raw[0], SIG_TYPE_ED25519);
    (
        name.to_owned(),
        u32::from_str_radix(id, 16).expect("hex id"),
        PublicKey::from_bytes(&raw[1..]).expect("valid key"),
    )
}

#[test]
fn other_implementations_notes_verify_through_our_adapter() {
    let v = json("signed-notes.json");
    for case in v["notes"].as_array().expect("list") {
        let (name, id, key) = vkey(case["vkey"].as_str().expect("str"));
        // Our key ID derivation agrees with theirs.
        assert_eq!(key_id(&name, SIG_TYPE_ED25519, &key), id, "{name}");
        let note_bytes = case["note"].as_str().expect("str").as_bytes();
        let note = signed_note::Note::from_bytes(note_bytes).expect("a note");
        let verifier = NoteVerifier::new(&name, key);
        let list = signed_note::VerifierList::new(vec![Box::new(verifier)]);
        let (ok, _) = note
            .verify(&list)
            .expect("verifies under our ZIP-215 policy");
        assert_eq!(ok.len(), 1);
        if case["checkpoint"].as_bool() == Some(true) {
            // A real C2SP tlog-checkpoint body, parsed by tlog_tiles.
            let body = tlog_tiles::Checkpoint::from_bytes(note.text()).expect("checkpoint body");
            assert_eq!(body.origin(), "go.sum database tree");
            assert_eq!(body.to_bytes(), note.text());
        }
        // One flipped bit in the text is refused.
        let mut text = note.text().to_vec();
        text[3] ^= 1;
        let tampered = signed_note::Note::new(&text, &[]).expect("text");
        let mut bytes = tampered.to_bytes();
        bytes.extend_from_slice(&note_bytes[note.text().len() + 1..]);
        let n2 = signed_note::Note::from_bytes(&bytes).expect("a note");
        assert!(n2.verify(&list).is_err(), "{name}");
    }
}

#[test]
fn the_cosignature_spec_example_parses() {
    let v = json("signed-notes.json");
    let ex = &v["cosignature_spec_example"];
    let note = ex["note"].as_str().expect("str").as_bytes();
    let cos = cosignatures(note).expect("a note");
    // The log's own line is 68 bytes and is skipped; the witness line is a
    // 76-byte cosignature.
    assert_eq!(cos.len(), 1);
    assert_eq!(cos[0].name(), ex["cosigner"].as_str().expect("str"));
    assert_eq!(cos[0].timestamp(), ex["timestamp"].as_u64().expect("u64"));
    let line_start = note.len()
        - note
            .iter()
            .rev()
            .skip(1)
            .position(|&b| b == b'\n')
            .expect("two lines")
        - 1;
    assert_eq!(
        Cosignature::from_line(&note[line_start..]).as_ref(),
        Ok(&cos[0])
    );
    assert_eq!(cos[0].to_line(), &note[line_start..]);
    let body = signed_note::Note::from_bytes(note).expect("a note");
    assert_eq!(
        cosigned_message(cos[0].timestamp(), body.text()),
        ex["signed_message"].as_str().expect("str").as_bytes()
    );
}

#[test]
fn our_checkpoints_verify_with_signed_notes_standard_verifier() {
    // signed_note's StandardVerifier (ed25519-dalek, strict) stands in for
    // any other C2SP tool: it must accept the node's notes as they are.
    let v = json("checkpoint.json");
    let verifier =
        signed_note::StandardVerifier::new(v["vkey"].as_str().expect("str")).expect("a valid vkey");
    let note =
        signed_note::Note::from_bytes(v["note"].as_str().expect("str").as_bytes()).expect("a note");
    let list = signed_note::VerifierList::new(vec![Box::new(verifier)]);
    assert!(note.verify(&list).is_ok());
}
