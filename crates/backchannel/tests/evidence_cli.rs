//! `backchannel log compare` turns two checkpoint notes the node signed for
//! one log at one size with different roots into an evidence file, and
//! `backchannel evidence verify` checks it offline; consistent notes,
//! another log key and a changed byte are refused.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output};

use backchannel_crypto::{Signer, sha256};
use backchannel_statement::fixtures::{self, key, labels::*};
use backchannel_tlog::{Checkpoint, LogOrigin, NodeOrigin};

fn run(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_backchannel"))
        .args(args)
        .current_dir(dir)
        .env_remove("BACKCHANNEL_LOG")
        .output()
        .expect("runs")
}

fn note(size: u64, root: &[u8]) -> Vec<u8> {
    let t = fixtures::talks();
    Checkpoint {
        origin: LogOrigin::new(&NodeOrigin::new("node.example").unwrap(), t.talks),
        size,
        root: sha256(root),
    }
    .sign(&key(NODE_LOG))
    .unwrap()
    .note()
    .to_vec()
}

#[test]
fn compare_writes_evidence_that_verifies_offline() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("us.note"), note(5, b"what the US saw")).unwrap();
    std::fs::write(d.join("ir.note"), note(5, b"what Iran saw")).unwrap();
    std::fs::write(d.join("same.note"), note(5, b"what the US saw")).unwrap();
    let t = fixtures::talks();
    let log_key = hex::encode(key(NODE_LOG).public_key().as_bytes());
    let talks = t.talks.to_hex();
    let id = [
        "--log-key",
        &log_key,
        "--origin",
        "node.example",
        "--talks",
        &talks,
    ];
    let compare = |a: &str, b: &str, out: &str| {
        let mut args = vec![
            "log",
            "compare",
            "--checkpoint-a",
            a,
            "--checkpoint-b",
            b,
            "--out",
            out,
        ];
        args.extend(id);
        run(&args, d)
    };
    let verify = |file: &str, log_key: &str| {
        run(
            &[
                "evidence",
                "verify",
                file,
                "--log-key",
                log_key,
                "--origin",
                "node.example",
                "--talks",
                &talks,
                "--json",
            ],
            d,
        )
    };

    let out = compare("us.note", "ir.note", "fork.bin");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("FORK"));
    let out = verify("fork.bin", &log_key);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["size"], 5);

    // Two notes of one history are no fork: exit 1, nothing written.
    let out = compare("us.note", "same.note", "none.bin");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no fork"));
    assert!(!d.join("none.bin").exists());
    // Another log key: refused.
    let other = hex::encode(key(US_HEAD).public_key().as_bytes());
    assert_eq!(verify("fork.bin", &other).status.code(), Some(1));
    // A changed byte: refused.
    let mut bytes = std::fs::read(d.join("fork.bin")).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 1;
    std::fs::write(d.join("tampered.bin"), bytes).unwrap();
    let out = verify("tampered.bin", &log_key);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // The output file is never overwritten.
    assert_eq!(
        compare("us.note", "ir.note", "fork.bin").status.code(),
        Some(1)
    );
}
