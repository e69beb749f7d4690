//! The README's first command: `backchannel demo` replays the reference
//! scenario on a real local node and exits 0, with matching safety codes
//! and a final checkpoint.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::process::Command;

#[test]
fn the_demo_runs_the_reference_scenario() {
    let out = Command::new(env!("CARGO_BIN_EXE_backchannel"))
        .arg("demo")
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
    for line in [
        "[OM] opened the talks",
        "[US] enrolled its talks authority",
        "[IR] checked and co-signed the access-list change (applied)",
        "[US] verified the roster against the node's access list and accepted",
        "the checkpoint is final",
        "keeps its archive in its own home, encrypted at rest",
        "statements accepted, none rejected",
        "(all three match)",
        "signed statement: Roster",
        "Demo complete.",
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
}
