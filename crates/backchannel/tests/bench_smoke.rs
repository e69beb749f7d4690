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
    let svg = std::env::temp_dir().join(format!("bench-smoke-{}.svg", std::process::id()));
    let report = small_run(&[
        "--svg",
        svg.to_str().unwrap(),
        "--envelopes-per-sender",
        "2000",
        "--mix",
        "app=100",
        "--node-cpus",
        &first_cpu(),
    ]);
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
    // The node on the CPU it was given, the generator on every CPU this
    // process may use (the default once either option is given), niced
    // by default.
    assert_eq!(report["placement"]["node_cpus"], first_cpu(), "{report:#}");
    assert_eq!(
        report["placement"]["generator_cpus"],
        cpus_allowed_list(),
        "{report:#}"
    );
    assert_eq!(
        report["placement"]["generator_nice"],
        own_nice().max(10),
        "{report:#}"
    );
    assert!(report["steal_cpu_s"].is_number(), "{report:#}");
    assert!(report["steal_peak_percent"].is_number(), "{report:#}");
    // The disk watch probed about ten times a second through the phase.
    assert!(
        report["fsync_watch"]["samples"].as_u64().unwrap() >= 10,
        "{report:#}"
    );
    // The SVG draws ack, push, the fsync watch and the stolen share.
    let drawn = std::fs::read_to_string(&svg).unwrap();
    let _ = std::fs::remove_file(&svg);
    for colour in ["#1f77b4", "#d62728", "#2ca02c", "#7f7f7f"] {
        assert!(
            drawn.contains(&format!("<polyline fill=\"none\" stroke=\"{colour}\"")),
            "{colour} not drawn: {drawn}"
        );
    }
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
        "--generator-nice",
        "0",
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
    // Nothing pinned: both where this process may run; the nice value
    // as it was (0 never lowers it).
    for who in ["node_cpus", "generator_cpus"] {
        assert_eq!(report["placement"][who], cpus_allowed_list(), "{report:#}");
    }
    assert_eq!(
        report["placement"]["generator_nice"],
        own_nice(),
        "{report:#}"
    );
}

/// This test process's `Cpus_allowed_list` (what the bench inherits).
fn cpus_allowed_list() -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap()
        .trim()
        .to_owned()
}

/// This test process's nice value (`/proc/self/stat`, field 19), which
/// the bench starts from.
fn own_nice() -> i64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let rest = stat.rsplit_once(')').unwrap().1;
    rest.split_whitespace().nth(16).unwrap().parse().unwrap()
}

/// The first CPU this test process may run on.
fn first_cpu() -> String {
    let list = cpus_allowed_list();
    list.split([',', '-']).next().unwrap().to_owned()
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
    for (option, value, says) in [
        ("--node-cpus", "x", "\"x\" is not a CPU number"),
        ("--node-cpus", "0,", "\"\" is not a CPU number"),
        (
            "--generator-cpus",
            "3-1",
            "the range \"3-1\" runs backwards",
        ),
        (
            "--generator-cpus",
            "1000000",
            "is not a CPU number from 0 to",
        ),
        ("--generator-nice", "20", "20 is not in 0..=19"),
        ("--generator-nice", "-1", "-1 is not in 0..=19"),
    ] {
        let out = run(backchannel().args(["bench", "load", option, value]));
        assert_failure(&out, 2, says);
    }
    // A CPU this process may not use (the highest a set can name, which
    // no machine of ours has), before any node starts.
    for option in ["--node-cpus", "--generator-cpus"] {
        let out = run(backchannel().args(["bench", "load", option, "1023"]));
        assert_failure(&out, 1, "are not among the CPUs this process may use");
    }
}
