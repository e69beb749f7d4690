//! `backchannel bench load` runs end to end on a small load (closed loop,
//! SQLite): it exits 0, every submission is acknowledged without error,
//! and pushes reach the recipients' streams. Never a speed: the figures
//! belong to `docs/performance.md`, from release builds.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use common::{assert_success, backchannel, run, stdout};

#[test]
fn a_small_closed_loop_run_acknowledges_and_pushes_without_errors() {
    let out = run(backchannel().args([
        "bench",
        "load",
        "--talks",
        "2",
        "--devices",
        "3",
        "--duration",
        "2",
        "--envelopes-per-sender",
        "2000",
        "--json",
    ]));
    assert_success(&out);
    let report: serde_json::Value = serde_json::from_str(stdout(&out).trim())
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", stdout(&out)));
    assert_eq!(report["errors"], 0, "{report:#}");
    assert!(report["acknowledged"].as_u64().unwrap() > 0, "{report:#}");
    assert!(report["ack"]["samples"].as_u64().unwrap() > 0, "{report:#}");
    assert!(
        report["push"]["samples"].as_u64().unwrap() > 0,
        "{report:#}"
    );
    assert_eq!(report["push_missing"], 0, "{report:#}");
    assert_eq!(report["backend"], "sqlite");
    assert_eq!(report["mode"], "closed");
}
