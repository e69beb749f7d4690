//! The README's first command: `backchannel demo` replays the opening of the
//! reference scenario on a real local node (on SQLite, and with `--database`
//! on PostgreSQL) and exits 0, with matching
//! safety codes, a final checkpoint, and what each participant saw; and,
//! with a canary planted in every name and text, the node's files, its log
//! output and every answer it sent hold the canary in no form.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use rand_core::{OsRng, RngCore};

/// The participant's section of the transcript: from its "What … saw"
/// header to the next blank line.
fn section<'a>(stdout: &'a str, who: &str) -> &'a str {
    let header = format!("\nWhat {who} saw");
    let start = stdout
        .find(&header)
        .unwrap_or_else(|| panic!("no transcript of {who} in:\n{stdout}"));
    let rest = &stdout[start + 1..];
    let end = rest.find("\n\n").unwrap_or(rest.len());
    &rest[..end]
}

#[test]
fn the_demo_runs_the_reference_scenario() {
    let out = Command::new(env!("CARGO_BIN_EXE_backchannel"))
        .arg("demo")
        .env_remove("BACKCHANNEL_LOG")
        .output()
        .expect("runs");
    check_demo(&out);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("(TLS 1.3, SQLite)"),
        "not on SQLite"
    );
}

/// The same run with the node on PostgreSQL, in a database of its own on
/// the server `BACKCHANNEL_TEST_DATABASE_URL` names.
#[test]
fn the_demo_runs_on_postgresql() {
    let Some(db) = common::PgDatabase::create() else {
        return;
    };
    let out = Command::new(env!("CARGO_BIN_EXE_backchannel"))
        .args(["demo", "--database", &db.url])
        .env_remove("BACKCHANNEL_LOG")
        .output()
        .expect("runs");
    drop(db);
    check_demo(&out);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("(TLS 1.3, PostgreSQL)"),
        "not on PostgreSQL"
    );
}

/// The demo on two nodes sharing one PostgreSQL database: the first is
/// stopped midway, the participants fail over to the second, which takes
/// over integrating, and the whole transcript still checks (the final
/// checkpoint included, cosigned after the handover).
#[test]
fn the_demo_fails_over_between_two_nodes_on_postgresql() {
    let Some(db) = common::PgDatabase::create() else {
        return;
    };
    let out = Command::new(env!("CARGO_BIN_EXE_backchannel"))
        .args(["demo", "--database", &db.url, "--nodes", "2"])
        .env_remove("BACKCHANNEL_LOG")
        .output()
        .expect("runs");
    drop(db);
    check_demo(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout.matches("(TLS 1.3, PostgreSQL)").count(),
        2,
        "{stdout}"
    );
    let stopped = stdout.find("[ops] node ").expect("a node is stopped");
    let integrates = stdout
        .find("integrates the log now (integrator lease epoch ")
        .expect("the other node integrates");
    let epoch: u64 = stdout[integrates..]
        .split("epoch ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .and_then(|e| e.parse().ok())
        .expect("an epoch");
    assert!(epoch >= 2, "the lease changed hands at least once: {epoch}");
    let shipping = stdout
        .find("the shipping track met")
        .expect("the demo goes on");
    let final_ = stdout
        .rfind("the checkpoint is final")
        .expect("a final checkpoint");
    assert!(
        stopped < integrates && integrates < shipping && shipping < final_,
        "{stdout}"
    );
}

#[test]
fn two_demo_nodes_need_a_database() {
    let out = Command::new(env!("CARGO_BIN_EXE_backchannel"))
        .args(["demo", "--nodes", "2"])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--database"),
        "{out:?}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_backchannel"))
        .args(["demo", "--nodes", "3", "--database", "postgres://h/db"])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

/// What every run of the demo must show.
fn check_demo(out: &std::process::Output) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "exit {:?}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "[OM] opened the talks",
        "[US] enrolled its talks authority",
        "[IR] checked and co-signed the access-list change (applied)",
        "[US] verified the roster against the node's access list and accepted",
        "the checkpoint is final",
        "keeps its archive in its own home, encrypted at rest",
        "statements accepted",
        "none rejected",
        "(all three match)",
        "signed statement: Roster",
        "Demo complete.",
        // The opening, as it happens.
        "[IR] the delegation deliberated in its internal room",
        "[US] the note-taker's draft cannot leave the delegation itself: your party's messages \
         leave the delegation by release",
        "[US] the US envoy released the note-taker's draft to the US caucus",
        "[OM] received the US demand formally and conveyed it verbatim to Iran's caucus",
        "[OM] refused to convey Iran's note verbatim to the US caucus: seq ",
        "its marking is mediator-only: it may not be conveyed verbatim",
        "[OM] conveyed Iran's ceasefire demand to the US caucus re-drafted",
        "[OM] put a non-paper on detainees to both caucuses",
        "[OM] recorded an oral message from Iran in the US caucus",
        "the shipping track met",
        "a sealed letter passed to Iran",
        "Each device holds only its rooms",
        // Succession: the US envoy replaced mid-talks.
        "[US] certified US envoy (successor) (head of delegation) in the record",
        "[US] the outgoing envoy handed over 4 rooms up to seq",
        "[US] the new envoy verified the bundle against the headers logged at each seq",
        // The US talks authority passes with the envoy; Iran sees it.
        "[US] the US talks authority passed to the new envoy at seq",
        "[IR] Iran's record shows the pass; how the US's keys stand for Iran now: keys changed \
         since verified",
        "[US] the outgoing envoy's keys are revoked and their device is off the list and out \
         of every group: the node refuses it",
        "[US] the new envoy reads the whole file of its rooms",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }
    // Three safety-code lines, all the same phrase.
    let codes: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("  OM ") || l.starts_with("  US ") || l.starts_with("  IR "))
        .map(|l| l[4..].trim())
        .collect();
    assert_eq!(codes.len(), 3, "{stdout}");
    assert!(codes.iter().all(|c| *c == codes[0]));
    // No node log lines interleave with the account.
    assert!(!stdout.contains(" INFO "));

    // What each participant saw.
    let iran = section(&stdout, "[IR] Iranian deputy foreign minister");
    for needle in [
        "conveyed verbatim by Omani lead mediator",
        "— US envoy of United States (verified (safety codes compared))",
        "the author's signature verified, logged at seq",
        "[proxies] \"The United States demands that Iran restrain",
        "non-paper: an unattributed draft put by the mediators",
        "drafted by Iranian expert, released by Iranian deputy foreign minister, \
         substance-may-be-conveyed",
        "released by Iranian deputy foreign minister, mediator-only",
        "Internal: Islamic Republic of Iran",
        "Letter: ",
        "Sealed letter to the Iranian deputy foreign minister",
        "Islamic Republic of Iran formally received seq",
    ] {
        assert!(
            iran.contains(needle),
            "Iran did not see {needle:?}:\n{iran}"
        );
    }
    for needle in [
        "Internal: United States",
        "Caucus: Sultanate of Oman with United States",
        "rendering of",
        "RECORDED",
        "Mediators:",
    ] {
        assert!(!iran.contains(needle), "Iran saw {needle:?}:\n{iran}");
    }
    // The successor's view: the whole file, handed over.
    let us = section(&stdout, "[US] US envoy (successor)");
    assert!(
        us.contains("[US] US envoy (former): "),
        "the successor does not read the former envoy:\n{us}"
    );
    assert!(!us.contains("unreadable"), "{us}");
    for needle in [
        "Internal: United States",
        "(internal, mediator-only)",
        "drafted by US note-taker, released by US envoy, verbatim-may-be-conveyed) (receipt \
         required)",
        "Sultanate of Oman formally received seq",
        "conveyed verbatim to Islamic Republic of Iran by Omani lead mediator (seq",
        "Omani lead mediator's rendering of Islamic Republic of Iran's position (re-drafted by \
         the mediator, not Islamic Republic of Iran's words)",
        "RECORDED by Omani lead mediator: Islamic Republic of Iran acted off the system at",
        "non-paper: an unattributed draft put by the mediators",
        "Islamic Republic of Iran formally received seq",
    ] {
        assert!(us.contains(needle), "the US did not see {needle:?}:\n{us}");
    }
    for needle in [
        "Internal: Islamic Republic of Iran",
        "Caucus: Sultanate of Oman with Islamic Republic of Iran",
        "For Oman alone",
        "Mediators:",
        "Track: ",
    ] {
        assert!(!us.contains(needle), "the US envoy saw {needle:?}:\n{us}");
    }
    let expert = section(&stdout, "[US] US shipping expert");
    assert!(expert.contains("Track: shipping"), "{expert}");
    assert!(expert.contains("[shipping] Shipping track"), "{expert}");
    let oman = section(&stdout, "[OM] Omani lead mediator");
    for needle in [
        "For Oman alone",
        "(drafted by Iranian deputy foreign minister, released by Iranian deputy foreign \
         minister, mediator-only)",
        "re-drafted seq ",
        "Mediators: Sultanate of Oman",
    ] {
        assert!(
            oman.contains(needle),
            "Oman did not see {needle:?}:\n{oman}"
        );
    }
    for needle in ["Internal: ", "Letter: ", "Sealed letter", "Track: "] {
        assert!(!oman.contains(needle), "Oman saw {needle:?}:\n{oman}");
    }
    let staff = section(&stdout, "[OM] Omani mediation staff");
    assert!(staff.contains("Track: shipping"), "{staff}");
    assert!(!stdout.contains("REJECTED"), "{stdout}");
    assert!(!stdout.contains("FAILED"), "{stdout}");
}

// --- The canary ---------------------------------------------------------------

/// The node crates' own log output, as verbose as they go; every other
/// target (the client library, in the same process) at `warn`.
const NODE_LOG: &str = "warn,backchannel_node=trace,backchannel_store=trace,\
                        backchannel_store_sqlite=trace";

/// Every form the canary could take in stored or logged bytes: the planted
/// text (32 hex digits) and the 16 bytes it encodes, raw, as hex in either
/// case, in base64 (standard and URL-safe, padded or not, at each of the
/// three byte alignments: the part of the encoding that depends on the
/// canary alone), as UTF-16 (both byte orders) and JSON-escaped.
fn forms(text: &str, bytes: &[u8; 16]) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = Vec::new();
    let mut add = |name: String, b: Vec<u8>| out.push((name, b));
    for (what, raw) in [
        ("text", text.as_bytes().to_vec()),
        ("bytes", bytes.to_vec()),
    ] {
        add(format!("{what} raw"), raw.clone());
        add(format!("{what} hex"), hex::encode(&raw).into_bytes());
        add(format!("{what} HEX"), hex::encode_upper(&raw).into_bytes());
        for (name, engine) in [
            ("base64", &STANDARD),
            ("base64 no pad", &STANDARD_NO_PAD),
            ("base64url", &URL_SAFE),
            ("base64url no pad", &URL_SAFE_NO_PAD),
        ] {
            add(
                format!("{what} {name} whole"),
                engine.encode(&raw).into_bytes(),
            );
            for align in 0..3usize {
                let mut shifted = vec![0u8; align];
                shifted.extend_from_slice(&raw);
                let enc = engine.encode(&shifted).into_bytes();
                // Skip the group that mixes in the prefix, and the last,
                // partial group, which mixes in what follows.
                let from = if align == 0 { 0 } else { 4 };
                let to = (shifted.len() / 3) * 4;
                add(
                    format!("{what} {name} at alignment {align}"),
                    enc[from..to].to_vec(),
                );
            }
        }
        add(
            format!("{what} UTF-16LE"),
            raw.iter().flat_map(|&b| [b, 0]).collect(),
        );
        add(
            format!("{what} UTF-16BE"),
            raw.iter().flat_map(|&b| [0, b]).collect(),
        );
        if let Ok(s) = std::str::from_utf8(&raw) {
            add(
                format!("{what} JSON"),
                serde_json::to_string(s)
                    .unwrap()
                    .trim_matches('"')
                    .as_bytes()
                    .to_vec(),
            );
        }
        add(
            format!("{what} JSON \\u-escaped"),
            raw.iter()
                .map(|b| format!("\\u{b:04x}"))
                .collect::<String>()
                .into_bytes(),
        );
        add(
            format!("{what} JSON byte array"),
            serde_json::to_string(&raw).unwrap().into_bytes(),
        );
    }
    // Case-insensitively, for the hex text: its upper-case form.
    add("text upper case".into(), text.to_uppercase().into_bytes());
    out.retain(|(_, b)| !b.is_empty());
    out
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.len() > hay.len() {
        return None;
    }
    let first = needle[0];
    (0..=hay.len() - needle.len()).find(|&i| hay[i] == first && &hay[i..i + needle.len()] == needle)
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files_under(&p, out);
        } else {
            out.push(p);
        }
    }
}

/// Where `forms` occur in `bytes`, as "form at offset" lines.
fn hits(forms: &[(String, Vec<u8>)], bytes: &[u8]) -> Vec<String> {
    forms
        .iter()
        .filter_map(|(name, f)| find(bytes, f).map(|at| format!("{name} at byte {at}")))
        .collect()
}

/// The path printed after `prefix` on one line of `stdout`.
fn kept(stdout: &str, prefix: &str) -> PathBuf {
    let line = stdout
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix:?} line in:\n{stdout}"));
    PathBuf::from(line[prefix.len()..].trim())
}

#[test]
fn the_node_never_holds_or_logs_plaintext() {
    let mut bytes = [0u8; 16];
    OsRng.fill_bytes(&mut bytes);
    let canary = hex::encode(bytes);
    let answers = std::env::temp_dir().join(format!("backchannel-answers-{canary}"));
    let out = Command::new(env!("CARGO_BIN_EXE_backchannel"))
        .args([
            "--log-level",
            NODE_LOG,
            "demo",
            "--keep",
            "--canary",
            &canary,
            "--answers",
        ])
        .arg(&answers)
        .env_remove("BACKCHANNEL_LOG")
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "exit {:?}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let node_dir = kept(&stdout, "The node's data directory is kept at ");
    let homes = kept(&stdout, "The participants' homes are kept at ");
    let cleanup = || {
        let _ = std::fs::remove_dir_all(node_dir.parent().unwrap());
        let _ = std::fs::remove_file(&answers);
    };
    let forms = forms(&canary, &bytes);

    // The demo planted it: its own transcript (plaintext on purpose) shows
    // it in names, rooms, items and texts.
    for needle in [
        format!("US envoy {canary} of United States {canary}"),
        format!("[ceasefire {canary}]"),
        format!("Track: shipping {canary}"),
        format!("Record {canary}"),
        format!("in public while they continue. {canary}"),
    ] {
        if !stdout.contains(&needle) {
            cleanup();
            panic!("the canary was not planted: no {needle:?} in:\n{stdout}");
        }
    }

    let mut found = Vec::new();
    // The node's log output: the only thing on stderr (the demo's account
    // is on stdout), at the node crates' most verbose level.
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("backchannel_node::server: talks opened"),
        "no node log captured: {log}"
    );
    for h in hits(&forms, &out.stderr) {
        found.push(format!("the node's log output: {h}"));
    }
    // Every file under the node's data directory (the database, its WAL
    // and shared-memory files if left) and, encrypted at rest, the homes.
    let mut files = Vec::new();
    files_under(&node_dir, &mut files);
    let node_files = files.len();
    files_under(&homes, &mut files);
    assert!(node_files >= 1 && files.len() > node_files, "{files:?}");
    let mut total = 0;
    for f in &files {
        let b = std::fs::read(f).unwrap();
        total += b.len();
        for h in hits(&forms, &b) {
            found.push(format!("{}: {h}", f.display()));
        }
    }
    assert!(total > 100_000, "only {total} bytes stored");
    // Every answer the node sent the demo's clients: response bodies, error
    // bodies and stream frames.
    let sent = std::fs::read(&answers).unwrap();
    for h in hits(&forms, &sent) {
        found.push(format!("the node's answers: {h}"));
    }
    let pages = String::from_utf8_lossy(&sent)
        .matches("\"envelopes\":")
        .count();
    cleanup();
    assert!(
        sent.len() > 100_000 && pages > 0,
        "only {} bytes of answers, {pages} pages of envelopes",
        sent.len()
    );
    assert!(
        found.is_empty(),
        "the canary {canary} was found outside ciphertext ({} forms searched in {} files, \
         the node's log and its {} bytes of answers):\n{}",
        forms.len(),
        files.len(),
        sent.len(),
        found.join("\n")
    );
}

/// The search itself: each form is found wherever in a file it sits, its
/// base64 forms whatever the canary's alignment in the encoded bytes.
#[test]
fn the_canary_search_finds_every_encoding() {
    let mut bytes = [0u8; 16];
    OsRng.fill_bytes(&mut bytes);
    let canary = hex::encode(bytes);
    let forms = forms(&canary, &bytes);
    let embed = |prefix: usize, inner: &[u8]| {
        let mut v = vec![b'x'; prefix];
        v.extend_from_slice(inner);
        v.extend_from_slice(b"yz");
        v
    };
    let text = canary.as_bytes();
    let mut cases: Vec<Vec<u8>> = vec![
        text.to_vec(),
        canary.to_uppercase().into_bytes(),
        hex::encode(text).into_bytes(),
        canary.encode_utf16().flat_map(u16::to_be_bytes).collect(),
        canary.encode_utf16().flat_map(u16::to_le_bytes).collect(),
        bytes.to_vec(),
    ];
    for engine in [&STANDARD, &URL_SAFE_NO_PAD] {
        for prefix in 0..3 {
            for what in [text, &bytes[..]] {
                cases.push(engine.encode(embed(prefix, what)).into_bytes());
            }
        }
    }
    for (i, c) in cases.iter().enumerate() {
        assert!(
            !hits(&forms, &embed(i % 7, c)).is_empty(),
            "case {i} not found: {}",
            String::from_utf8_lossy(c)
        );
    }
    assert!(hits(&forms, &[b'a'; 4096]).is_empty());
}
