//! `backchannel bench load` runs end to end on a small load (closed loop,
//! SQLite): it exits 0, every submission is acknowledged without error,
//! and pushes reach the recipients' streams. Never a speed: the figures
//! belong to `docs/performance.md`, from release builds.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use common::{assert_failure, assert_success, backchannel, run, stdout};

/// A two-second run of 2 talks x 3 devices with `extra` options; its
/// JSON report, once it exited 0.
fn small_run(extra: &[&str]) -> serde_json::Value {
    let out = run(backchannel()
        .args([
            "bench",
            "load",
            "--talks",
            "2",
            "--devices",
            "3",
            "--duration",
            "2",
            "--json",
        ])
        .args(extra));
    assert_success(&out);
    serde_json::from_str(stdout(&out).trim())
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", stdout(&out)))
}

#[test]
fn a_small_closed_loop_run_acknowledges_and_pushes_without_errors() {
    let report = small_run(&["--envelopes-per-sender", "2000", "--mix", "app=100"]);
    assert_eq!(report["errors"], 0, "{report:#}");
    assert!(report["acknowledged"].as_u64().unwrap() > 0, "{report:#}");
    assert!(report["ack"]["samples"].as_u64().unwrap() > 0, "{report:#}");
    assert!(
        report["push"]["samples"].as_u64().unwrap() > 0,
        "{report:#}"
    );
    assert_eq!(report["push_missing"], 0, "{report:#}");
    // Every acknowledged envelope was verified under a checkpoint from
    // the data tiles (the prober's samples are the acknowledgements).
    assert_eq!(report["inclusion_missing"], 0, "{report:#}");
    assert_eq!(
        report["inclusion"]["samples"], report["acknowledged"],
        "{report:#}"
    );
    assert!(
        report["checkpoints_verified"].as_u64().unwrap() > 0,
        "{report:#}"
    );
    assert_eq!(report["backend"], "sqlite");
    assert_eq!(report["mode"], "closed");
    assert_eq!(report["kinds"].as_array().unwrap().len(), 1, "{report:#}");
}

/// The default mix (application messages, commits, statements, blobs), a
/// catch-up and a few idle streams: every kind acknowledged, every
/// envelope kind pushed, nothing failed.
#[test]
fn a_small_mixed_run_with_catch_up_and_idle_streams_has_no_errors() {
    let report = small_run(&[
        "--mix",
        "app=70,commit=10,statement=10,blob=10",
        "--envelopes-per-sender",
        "2000",
        "--catch-up",
        "50",
        "--catch-up-repeats",
        "2",
        "--idle-streams",
        "30",
        "--source-addresses",
        "2",
    ]);
    assert_eq!(report["errors"], 0, "{report:#}");
    assert_eq!(report["push_missing"], 0, "{report:#}");
    assert_eq!(report["mix"], "app=70,commit=10,statement=10,blob=10");
    let kinds = report["kinds"].as_array().unwrap();
    let names: Vec<&str> = kinds.iter().map(|k| k["kind"].as_str().unwrap()).collect();
    assert_eq!(names, ["app", "commit", "statement", "blob"], "{report:#}");
    for k in kinds {
        assert_eq!(k["errors"], 0, "{report:#}");
        assert!(k["acknowledged"].as_u64().unwrap() > 0, "{report:#}");
        if k["kind"] != "blob" {
            assert!(k["push"]["samples"].as_u64().unwrap() > 0, "{report:#}");
        }
    }
    assert_eq!(report["catch_up"]["missed"], 50, "{report:#}");
    assert_eq!(
        report["catch_up"]["upgrade_to_caught"]["samples"], 2,
        "{report:#}"
    );
    assert_eq!(report["idle"]["connected"], 30, "{report:#}");
    assert_eq!(report["idle"]["dropped"], 0, "{report:#}");
    assert_eq!(report["idle"]["open_at_end"], 30, "{report:#}");
    assert!(report["idle"]["node_vmrss_connected_kib"].as_u64().unwrap() > 0);
    assert_eq!(report["submit_source_addresses"], 2);
}

/// Bad option values are refused with a reason, before any node starts.
#[test]
fn bad_mixes_and_too_many_idle_streams_are_refused() {
    for (mix, says) in [
        ("app=94,video=6", "\"video\" is not a kind of work"),
        ("app=x", "is not a whole number"),
        ("app=0", "every weight is 0"),
        ("app=50,app=50", "app is given twice"),
        ("app", "is not KIND=WEIGHT"),
    ] {
        let out = run(backchannel().args(["bench", "load", "--mix", mix]));
        assert_failure(&out, 2, says);
    }
    let out = run(backchannel().args(["bench", "load", "--idle-streams", "100000000"]));
    assert_failure(&out, 1, "RLIMIT_NOFILE");
}
