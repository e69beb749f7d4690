//! `backchannel device list|revoke` end to end, through the binary against
//! a real `backchannel node run`: Oman mediating between the United States
//! and Iran, and a US negotiator admitted after the roster.
//!
//! - A member with two devices revokes the lost one from the other, dating
//!   the loss in the past: the record takes the revocation (signed by the
//!   member's identity key), every other home's `read` flags what the lost
//!   device sent at or after the loss and not before; the other device
//!   takes it off the list (a removal its own signature completes) and
//!   commits the removal in the rooms it shares with it; the lost device's
//!   home can no longer read, and the talks authority finds nothing left
//!   to do.
//! - The talks-authority home revokes a member's (only) device outright.
//! - Every bad input is refused with a clear message and a nonzero exit,
//!   and changes nothing (the log is as long after as before).
//!
//! A member's second device here answers the same member invitation from a
//! home of its own (`members join`, `members admit`: its own identity key,
//! under the same principal); `device link` (tests/succession_cli.rs) is
//! the other way, with the member's one identity key.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use common::{now_ms, ok, rfc3339};
use std::time::Duration;

use common::talks::{FAILED, IR, OM, Talks, US, USAGE, at, ok_json, run};
use serde_json::Value;

/// The US negotiator's two devices.
const NEG: &str = "neg";
const NEG2: &str = "neg2";

/// The device of `devices` whose key id is `key_id`.
#[track_caller]
fn device<'a>(devices: &'a [Value], key_id: &str) -> &'a Value {
    devices
        .iter()
        .find(|d| d["key_id"] == key_id)
        .unwrap_or_else(|| panic!("no device {key_id}: {devices:?}"))
}

fn key_id(d: &Value) -> String {
    d["key_id"].as_str().unwrap().to_owned()
}

/// What views add to the sender of an envelope sent at or after a loss.
const FLAG: &str = "reported lost";

// --- Tests -------------------------------------------------------------------

/// A member with two devices revokes the lost one from the other; the
/// talks authority takes it off the list; every other home flags what it
/// sent from the loss on, and it reads nothing more. Bad inputs before
/// that change nothing.
#[test]
fn a_lost_device_is_revoked_from_the_members_other_device() {
    let t = Talks::open();
    let invitation = t.path("neg.member");
    t.invite_negotiator(&invitation);
    t.admit(NEG, &invitation);
    t.admit(NEG2, &invitation);
    // The US head's next command adds both devices to its rooms' groups.
    ok(t.cli(US).args(["read"]));
    ok(t.cli(NEG2).args(["read"]));

    // Each home's list: its member's devices, this home's marked.
    let mine = t.devices(NEG2, &[]);
    assert_eq!(mine.len(), 2, "{mine:?}");
    let this: Vec<&Value> = mine.iter().filter(|d| d["this_device"] == true).collect();
    assert_eq!(this.len(), 1, "{mine:?}");
    let kept = key_id(this[0]);
    let lost = key_id(mine.iter().find(|d| d["this_device"] == false).unwrap());
    for d in &mine {
        assert_eq!(d["on_access_list"], true, "{d}");
        assert!(d["certified_at"].as_u64().is_some(), "{d}");
        assert_eq!(d["revoked"], Value::Null, "{d}");
        assert!(
            d["key_id"]
                .as_str()
                .unwrap()
                .starts_with(d["short"].as_str().unwrap())
        );
    }
    let from_lost = t.devices(NEG, &[]);
    assert_eq!(device(&from_lost, &lost)["this_device"], true);
    assert_eq!(device(&from_lost, &kept)["this_device"], false);
    // The talks authority lists another member's devices with --member.
    let neg_from_us = t.devices(US, &["--member", "US negotiator"]);
    assert_eq!(neg_from_us.len(), 2, "{neg_from_us:?}");
    // --member names a member of one's own party: anyone else is refused,
    // with the party's members listed.
    for query in ["Nobody", "Iranian deputy foreign minister", ""] {
        run(t.cli(US).args(["device", "list", "--member", query]))
            .refused(FAILED, &["your party has no member", "\"US negotiator\""]);
    }
    let us_device = key_id(&t.devices(US, &[])[0]);
    let ir_device = key_id(&t.devices(IR, &[])[0]);

    // The lost device talks before the loss, and once after it (the node
    // stamps it in a later second).
    let drafted_before = ok_json(t.cli(NEG).args([
        "message",
        "--json",
        "--room",
        "internal",
        "A position drafted before the loss.",
    ]))["seq"]
        .as_u64()
        .unwrap();
    let before = t.send(NEG, "caucus", "Before the laptop went missing.");
    let before_time = at(&t.read_all(US), before)["node_time"].as_u64().unwrap();
    while now_ms() < (before_time / 1000 + 1) * 1000 + 50 {
        std::thread::sleep(Duration::from_millis(50));
    }
    let stolen = t.send(NEG, "caucus", "Sent by whoever holds the laptop.");
    let stolen_time = at(&t.read_all(US), stolen)["node_time"].as_u64().unwrap();
    let lost_at = stolen_time / 1000 * 1000;
    assert!(before_time < lost_at && lost_at <= stolen_time);
    let lost_at_utc = rfc3339(lost_at);
    // And a statement, signed by the member's identity key held on the
    // lost device and sent by it: a draft in the party's internal room.
    let signed_when_lost = ok_json(t.cli(NEG).args([
        "message",
        "--json",
        "--room",
        "internal",
        "A position drafted on the stolen laptop.",
    ]))["seq"]
        .as_u64()
        .unwrap();

    // Bad inputs: refused, nothing posted.
    let size = t.log_size();
    assert_eq!(t.log_size(), size, "the log is quiet");
    let short_kept = &kept[..8];
    for (h, args, code, what) in [
        (
            NEG2,
            vec![short_kept],
            FAILED,
            vec![
                "this home's own device",
                "revoke it from another device of yours",
            ],
        ),
        (
            US,
            vec![&us_device[..]],
            FAILED,
            vec![
                "this home's own device",
                "revoke it from another device of yours",
            ],
        ),
        (
            NEG2,
            vec![&us_device[..]],
            FAILED,
            vec!["another member of your party", "talks authority"],
        ),
        (
            NEG2,
            vec![&ir_device[..]],
            FAILED,
            vec!["not to your party", "Islamic Republic of Iran"],
        ),
        (
            IR,
            vec![&lost[..]],
            FAILED,
            vec!["not to your party", "United States"],
        ),
        (
            NEG2,
            vec!["0000000000000000"],
            FAILED,
            vec!["no device with key id 0000000000000000", "device list"],
        ),
        (
            NEG2,
            vec![&lost[..7]],
            FAILED,
            vec!["too short", "at least 8 hex digits"],
        ),
        (NEG2, vec!["not-a-key"], FAILED, vec!["not a device key id"]),
        (
            NEG2,
            vec![
                &lost[..],
                "--reason",
                "superseded",
                "--lost-at",
                &lost_at_utc,
            ],
            FAILED,
            vec!["--lost-at goes with --reason lost or --reason compromised"],
        ),
        (
            NEG2,
            vec![&lost[..], "--lost-at", "yesterday"],
            FAILED,
            vec!["not a UTC time"],
        ),
        (
            NEG2,
            vec![&lost[..], "--lost-at", "2026-02-30T10:00Z"],
            FAILED,
            vec!["not a UTC time"],
        ),
        (
            NEG2,
            vec![&lost[..], "--lost-at", &rfc3339(now_ms() + 3_600_000)],
            FAILED,
            vec!["lies in the future"],
        ),
        (
            NEG2,
            vec![&lost[..], "--reason", "left"],
            USAGE,
            vec!["invalid value 'left'"],
        ),
    ] {
        t.revoke(h, &args).refused(code, &what);
    }
    assert_eq!(t.log_size(), size, "nothing was posted");

    // The other device revokes the lost one, dating the loss: the member's
    // identity key signs the revocation, this device the removal (the
    // change rule lets a device remove any device of its own principal, and
    // the node takes a change its signatures complete from any member); it
    // commits the removal in the rooms it shares with it.
    let done = ok_json(t.cli(NEG2).args([
        "device",
        "revoke",
        "--json",
        &lost[..8],
        "--reason",
        "lost",
        "--lost-at",
        &lost_at_utc,
    ]));
    assert_eq!(done["signed_by"], "identity", "{done}");
    assert_eq!(done["removed_from_access_list"], true, "{done}");
    assert_eq!(done["revoked"]["reason"], "lost", "{done}");
    assert_eq!(done["revoked"]["lost_at"], lost_at, "{done}");
    let revocation = done["revoked"]["seq"].as_u64().unwrap();
    assert_eq!(done["revocation_seq"], revocation, "{done}");
    let line = at(&t.read_all(OM), revocation).clone();
    assert!(
        line["verdict"].as_str().unwrap().starts_with("accepted"),
        "{line}"
    );
    let committed: Vec<&str> = done["rooms_committed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    assert!(committed.iter().any(|r| r.starts_with("Caucus")), "{done}");

    // Every other home flags what the lost device sent at or after the
    // loss, and not what it sent before.
    for h in [OM, US, NEG2] {
        let view = t.read_all(h);
        let sender = |seq| at(&view, seq)["sender"].as_str().unwrap().to_owned();
        assert!(!sender(before).contains(FLAG), "{h}: {}", sender(before));
        assert!(sender(stolen).contains(FLAG), "{h}: {}", sender(stolen));
    }
    // Exported as evidence once every party verified the log, the draft
    // is flagged: the bundle proves it was logged and signed, and the
    // export says the record dates the loss of its sender before it.
    for h in [OM, IR, US] {
        t.verified_to(h, signed_when_lost + 1);
    }
    let bundle = t.path("stolen.bundle");
    let exported = ok_json(
        t.cli(US)
            .args(["evidence", "export", "--json", "--seq"])
            .arg(signed_when_lost.to_string())
            .arg("--out")
            .arg(&bundle),
    );
    let flagged = exported["flagged"].as_str().unwrap_or_default();
    assert!(flagged.contains("reported lost"), "{exported}");
    let human = run(t
        .cli(US)
        .args(["evidence", "export", "--seq"])
        .arg(signed_when_lost.to_string())
        .arg("--out")
        .arg(t.path("stolen2.bundle")));
    assert_eq!(human.code, Some(0), "{human:?}");
    assert!(human.stdout.contains("FLAGGED"), "{human:?}");
    // What it signed before the loss is exported unflagged.
    let earlier = ok_json(
        t.cli(US)
            .args(["evidence", "export", "--json", "--seq"])
            .arg(drafted_before.to_string())
            .arg("--out")
            .arg(t.path("before.bundle")),
    );
    assert_eq!(earlier.get("flagged"), Some(&Value::Null), "{earlier}");
    // The lost device's home reads nothing more: the node refuses it.
    run(t.cli(NEG).args(["read"])).refused(
        FAILED,
        &[
            "the node does not know this device",
            "taken off the access list",
        ],
    );
    run(t.cli(NEG).args(["send", "--room", "caucus", "still here?"]))
        .refused(FAILED, &["taken off the access list"]);
    let listed = t.devices(NEG2, &[]);
    assert_eq!(device(&listed, &lost)["on_access_list"], false);
    assert_eq!(device(&listed, &kept)["on_access_list"], true);
    // Again: nothing to do.
    let size = t.log_size();
    t.revoke(US, &[&lost[..]])
        .refused(FAILED, &["already revoked", "off the access list"]);
    assert_eq!(t.log_size(), size);
    // The remaining device still talks, and every log verifies with no
    // statement rejected.
    t.send(NEG2, "caucus", "The negotiator, on the other device.");
    let size = t.log_size() as u64;
    for h in [OM, US, IR] {
        t.verified_to(h, size);
    }
}

/// The talks-authority home revokes a member's only device (compromised,
/// dated now): revoked in the record, off the list, out of the rooms'
/// groups; the member's home can read no more.
#[test]
fn the_talks_authority_revokes_a_members_device() {
    let t = Talks::open();
    let invitation = t.path("neg.member");
    t.invite_negotiator(&invitation);
    t.admit(NEG, &invitation);
    ok(t.cli(US).args(["read"]));
    let said = t.send(NEG, "caucus", "The negotiator is here.");
    let devices = t.devices(US, &["--member", "US negotiator"]);
    assert_eq!(devices.len(), 1, "{devices:?}");
    let target = key_id(&devices[0]);
    let short = devices[0]["short"].as_str().unwrap().to_owned();
    // Someone not of the party, and the member itself from its only device,
    // may not.
    let size = t.log_size();
    t.revoke(OM, &[&short])
        .refused(FAILED, &["not to your party"]);
    t.revoke(NEG, &[&short])
        .refused(FAILED, &["this home's own device"]);
    assert_eq!(t.log_size(), size);

    let done = ok_json(t.cli(US).args([
        "device",
        "revoke",
        "--json",
        &short,
        "--reason",
        "compromised",
    ]));
    assert_eq!(done["device"], target.as_str(), "{done}");
    assert_eq!(done["signed_by"], "talks authority", "{done}");
    let seq = done["revocation_seq"].as_u64().expect("posted");
    assert_eq!(done["revoked"]["seq"], seq, "{done}");
    assert_eq!(done["revoked"]["reason"], "compromised", "{done}");
    assert!(done["revoked"]["lost_at"].as_u64().is_some(), "{done}");
    assert!(
        done["rooms_committed"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r.as_str().unwrap().starts_with("Caucus")),
        "{done}"
    );
    assert_eq!(done["rooms_waiting"], serde_json::json!([]), "{done}");
    let listed = t.devices(US, &["--member", "US negotiator"]);
    assert_eq!(listed[0]["on_access_list"], false, "{listed:?}");
    assert_eq!(listed[0]["revoked"]["seq"], seq, "{listed:?}");
    // What it said before the revocation's date is not flagged.
    let view = t.read_all(OM);
    assert!(!at(&view, said)["sender"].as_str().unwrap().contains(FLAG));
    assert!(
        at(&view, seq)["verdict"]
            .as_str()
            .unwrap()
            .starts_with("accepted")
    );
    run(t.cli(NEG).args(["read"])).refused(FAILED, &["taken off the access list"]);
}
