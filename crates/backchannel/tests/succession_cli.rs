//! Succession and lost devices end to end, through the binary against a
//! real `backchannel node run`: Oman mediating between the United States
//! and Iran, and a US negotiator admitted after the roster.
//!
//! - `device link`: the negotiator's second device is added through a
//!   short code (offer, request, seat), and gets the whole history from
//!   the first (`device link --history`: a handover to its own devices); a wrong code, a garbled offer, a request
//!   seated from a home without the talks authority are refused clearly.
//! - `talks open|join --recovery-sheet`: the sheet names the identity key
//!   the command made; a sheet path that exists or whose directory does
//!   not is refused before anything is made.
//! - `home backup|restore`, `members join --recovery-sheet|--from-sheet`,
//!   `members recover`: a restored home comes back on a new device key
//!   (never the MLS state) and gets what was sent since the backup by a
//!   handover; a member who lost every device comes back with the same
//!   identity key from the sheet, or with a new one the talks authority
//!   certifies (the old one revoked).
//! - `talks authority claim|pass`: the US talks authority passes to the
//!   negotiator's home; the mediator co-signs the access-list change; the
//!   new holder certifies a member; the old holder's signature no longer
//!   counts; Iran's verification of the US shows the keys changed.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::path::Path;

use common::ok;
use common::talks::{FAILED, IR, OM, Talks, US, USAGE, ok_json, run};
use serde_json::Value;

/// The negotiator's homes.
const NEG: &str = "neg";
const NEG2: &str = "neg2";

/// The text of the line at `seq` of `lines`, if it has one.
fn text_at(lines: &[Value], seq: u64) -> Option<String> {
    lines
        .iter()
        .find(|l| l["seq"] == seq)
        .and_then(|l| l["text"].as_str())
        .map(str::to_owned)
}

/// The negotiator: invited by the US, answered from `NEG` (with a
/// recovery sheet at `sheet`, if given), admitted, co-signed, on the node;
/// the seq of its member certificate.
fn admit_negotiator(t: &Talks, sheet: Option<&Path>) -> u64 {
    let invitation = t.path("neg.inv");
    t.invite_negotiator(&invitation);
    let reply = t.path("neg.reply");
    ok(t.cli(NEG).args(["home", "init"]));
    let mut join = t.cli(NEG);
    join.args(["members", "join", "--invitation"])
        .arg(&invitation)
        .arg("--out")
        .arg(&reply);
    if let Some(sheet) = sheet {
        join.arg("--recovery-sheet").arg(sheet);
    }
    ok(&mut join);
    let admitted = ok_json(
        t.cli(US)
            .args(["members", "admit", "--json", "--reply"])
            .arg(&reply),
    );
    ok(t.cli(OM).args(["talks", "cosign"]));
    ok(t.cli(IR).args(["talks", "cosign"]));
    ok(t.cli(NEG).args(["read"]));
    // The US head's next command adds the device to its rooms' groups.
    ok(t.cli(US).args(["read"]));
    ok(t.cli(NEG).args(["read"]));
    admitted["member_cert_seq"].as_u64().unwrap()
}

/// The negotiator's home, holding the US talks authority now, invites and
/// admits "US expert"; the mediator and Iran co-sign, and the expert's
/// device joins the groups. The expert's principal id.
fn admit_expert(t: &Talks) -> String {
    let inv = t.path("expert.inv");
    let added = ok_json(
        t.cli(NEG)
            .args([
                "members",
                "add",
                "--json",
                "--name",
                "US expert",
                "--role",
                "expert",
                "--out",
            ])
            .arg(&inv),
    );
    ok(t.cli("expert").args(["home", "init"]));
    let reply = t.path("expert.reply");
    ok(t.cli("expert")
        .args(["members", "join", "--invitation"])
        .arg(&inv)
        .arg("--out")
        .arg(&reply));
    ok(t.cli(NEG).args(["members", "admit", "--reply"]).arg(&reply));
    ok(t.cli(OM).args(["talks", "cosign"]));
    ok(t.cli(IR).args(["talks", "cosign"]));
    ok(t.cli("expert").args(["read"]));
    ok(t.cli(US).args(["read"]));
    ok(t.cli("expert").args(["read"]));
    added["principal"].as_str().unwrap().to_owned()
}

/// `h` reads every line of `seqs` with its text (nothing unreadable).
#[track_caller]
fn reads_all(t: &Talks, h: &str, seqs: &[(u64, &str)]) {
    let lines = t.read_all(h);
    for (seq, text) in seqs {
        assert_eq!(
            text_at(&lines, *seq).as_deref(),
            Some(*text),
            "{h} at {seq}: {lines:?}"
        );
    }
}

#[test]
fn a_device_is_linked_with_a_short_code_and_gets_the_history() {
    let t = Talks::open();
    admit_negotiator(&t, None);
    let early = t.send(NEG, "caucus", "Said before the second device existed.");
    let from_us = t.send(US, "caucus", "The envoy, before the link.");

    // Before any loss, the member's home says what could come back.
    let lost = |h: &str| {
        let v = ok_json(t.cli(h).args(["device", "list", "--json"]));
        v["if_this_device_is_lost"].as_array().unwrap().clone()
    };
    let before = lost(NEG);
    assert!(!before.is_empty(), "{before:?}");
    let caucus = |rooms: &[Value]| {
        rooms
            .iter()
            .find(|r| r["room"].as_str().unwrap().starts_with("Caucus"))
            .unwrap()
            .clone()
    };
    assert_eq!(caucus(&before)["held_elsewhere"], true, "{before:?}");
    assert!(
        caucus(&before)["recoverable"]
            .as_str()
            .unwrap()
            .contains("a member of your party"),
        "{before:?}"
    );

    // The offer, and its code.
    let offer = t.path("link.offer");
    let shown = ok_json(
        t.cli(NEG)
            .args(["device", "link", "--json", "--out"])
            .arg(&offer),
    );
    let code = shown["code"].as_str().unwrap().to_owned();
    assert_eq!(code.len(), 11, "{shown}");

    // The new device's home: bad codes and offers change nothing.
    ok(t.cli(NEG2).args(["home", "init"]));
    let request = t.path("link.request");
    let take = |code: &str, offer: &Path| {
        run(t
            .cli(NEG2)
            .args(["device", "link", "--offer"])
            .arg(offer)
            .args(["--code", code, "--out"])
            .arg(&request))
    };
    // Another code: its first character changed.
    let wrong = match code.strip_prefix('0') {
        Some(rest) => format!("1{rest}"),
        None => format!("0{}", &code[1..]),
    };
    take(&wrong, &offer).refused(FAILED, &["the code does not open this offer"]);
    take("ABCDE-FGHJU", &offer).refused(FAILED, &["no code does"]);
    take("ABCD", &offer).refused(FAILED, &["not 10"]);
    let garbled = t.path("garbled.offer");
    std::fs::write(&garbled, b"not an offer").unwrap();
    take(&code, &garbled).refused(FAILED, &["not a device link offer"]);
    assert!(!request.exists());
    run(t.cli(NEG2).args(["device", "link"])).refused(FAILED, &["say which step"]);
    run(t
        .cli(NEG2)
        .args(["device", "link", "--offer"])
        .arg(&offer)
        .args(["--out", "x"]))
    .refused(USAGE, &["--code"]);

    let taken = take(&code.to_lowercase(), &offer);
    assert_eq!(taken.code, Some(0), "{taken:?}");
    // The same offer cannot be taken twice into one home.
    let again = run(t
        .cli(NEG2)
        .args(["device", "link", "--offer"])
        .arg(&offer)
        .args(["--code", &code, "--out"])
        .arg(t.path("again.request")));
    again.refused(FAILED, &["already takes part"]);

    // A request whose device key is not the one its certificate names is
    // refused, and nothing is posted.
    let tampered = t.path("tampered.request");
    let mut doc: Value = serde_json::from_str(&std::fs::read_to_string(&request).unwrap()).unwrap();
    doc["device_key"] = doc["identity_key"].clone();
    std::fs::write(&tampered, doc.to_string()).unwrap();
    let size = t.log_size();
    run(t
        .cli(US)
        .args(["device", "seat", "--request"])
        .arg(&tampered))
    .refused(FAILED, &["not for that member's device"]);
    assert_eq!(t.log_size(), size);

    // The negotiator's home posts the certificate but cannot sign the
    // seating change; the talks-authority home does, the mediator
    // co-signs.
    run(t
        .cli(NEG)
        .args(["device", "link", "--request"])
        .arg(&request))
    .refused(FAILED, &["only your party's talks-authority home"]);
    let seated = ok_json(
        t.cli(US)
            .args(["device", "seat", "--json", "--request"])
            .arg(&request),
    );
    assert_eq!(seated["applied"], false, "{seated}");
    ok(t.cli(OM).args(["talks", "cosign"]));
    ok(t.cli(IR).args(["talks", "cosign"]));
    // The request seated again: nothing more to do.
    let again = ok_json(
        t.cli(US)
            .args(["device", "seat", "--json", "--request"])
            .arg(&request),
    );
    assert_eq!(again["applied"], true, "{again}");

    // The history cannot go before the new device has put its key
    // packages on the node (so the first can add it to the rooms): said,
    // nothing posted.
    let size = t.log_size();
    run(t
        .cli(NEG)
        .args(["device", "link", "--history", "--wait", "0"]))
    .refused(
        FAILED,
        &["not yet in its MLS group", "once it has run a command"],
    );
    run(t
        .cli(NEG)
        .args(["device", "link", "--history", "--wait", "601"]))
    .refused(USAGE, &["601 is not in 0..=600"]);
    run(t.cli(NEG).args(["device", "link", "--wait", "5"])).refused(USAGE, &["--history"]);
    assert_eq!(t.log_size(), size);

    // The new device opens the talks (key packages); the first adds it to
    // the rooms, waits for a checkpoint covering what it received, and
    // hands over the history the new device cannot read.
    ok(t.cli(NEG2).args(["read"]));
    let lines = t.read_all(NEG2);
    let line = lines.iter().find(|l| l["seq"] == early).unwrap();
    assert_eq!(line["kind"], "unreadable", "{line}");
    let sent = ok_json(t.cli(NEG).args(["device", "link", "--history", "--json"]));
    assert!(sent["until"].as_u64().unwrap() > from_us, "{sent}");
    assert!(sent["opened"].as_u64().unwrap() >= 2, "{sent}");
    ok(t.cli(NEG2).args(["read"]));
    reads_all(
        &t,
        NEG2,
        &[
            (early, "Said before the second device existed."),
            (from_us, "The envoy, before the link."),
        ],
    );
    let linked = lost(NEG);
    assert!(
        caucus(&linked)["recoverable"]
            .as_str()
            .unwrap()
            .contains("your other device"),
        "{linked:?}"
    );
    let after = t.send(NEG2, "caucus", "Now on the second device.");
    reads_all(&t, US, &[(after, "Now on the second device.")]);
}

#[test]
fn a_home_is_restored_and_a_member_recovered() {
    let t = Talks::open();
    let sheet = t.path("neg.sheet");
    let certified = admit_negotiator(&t, Some(&sheet));
    let words = std::fs::read_to_string(&sheet).unwrap();
    assert!(words.contains("words:"), "{words}");
    let early = t.send(NEG, "caucus", "Before the backup.");

    // The backup, and what it says it cannot bring back.
    let backup = t.path("neg.backup");
    let out = run(t.cli(NEG).args(["home", "backup", "--out"]).arg(&backup));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.contains("cannot be recovered"), "{out:?}");
    run(t.cli(NEG).args(["home", "backup", "--out"]).arg(&backup)).refused(FAILED, &["exists"]);
    let late = t.send(NEG, "caucus", "After the backup.");

    // Restored on a new device key; a bad passphrase, a non-empty
    // requests directory change nothing.
    let requests = t.path("requests");
    let restore = |h: &str, pass: &str| {
        run(t
            .cli(h)
            .env("BACKCHANNEL_PASSPHRASE", pass)
            .args(["home", "restore", "--json", "--from"])
            .arg(&backup)
            .arg("--requests")
            .arg(&requests))
    };
    restore("restored", "wrong passphrase").refused(FAILED, &["does not open as a backup"]);
    assert!(!t.path("restored").join("home.db").exists());
    std::fs::create_dir_all(&requests).unwrap();
    std::fs::write(requests.join("left-over"), b"x").unwrap();
    restore("restored", common::talks::HOME_PASSPHRASE)
        .refused(FAILED, &["is not empty", "new or empty directory"]);
    assert!(!t.path("restored").join("home.db").exists());
    std::fs::remove_file(requests.join("left-over")).unwrap();
    restore("restored", "").refused(FAILED, &["passphrase"]);
    assert!(!t.path("restored").join("home.db").exists());
    let restored = restore("restored", common::talks::HOME_PASSPHRASE);
    assert_eq!(restored.code, Some(0), "{restored:?}");
    let r = restored.json();
    let r = &r[0];
    assert_ne!(r["old_device_key_id"], r["new_device_key_id"], "{r}");
    let request = r["request"].as_str().unwrap().to_owned();
    ok(t.cli(US).args(["device", "seat", "--request", &request]));
    ok(t.cli(OM).args(["talks", "cosign"]));
    ok(t.cli(IR).args(["talks", "cosign"]));
    ok(t.cli("restored").args(["read"]));
    ok(t.cli(US).args(["read"]));
    // The mediator and Iran take in the commits that added it while it is
    // still seated (a commit read only after its newcomer left the list
    // cannot be checked, and the reader would have to rejoin).
    ok(t.cli(OM).args(["read"]));
    ok(t.cli(IR).args(["read"]));
    // The archive came back; what was sent after the backup comes by a
    // handover from a member of the party who sits in the room.
    let lines = t.read_all("restored");
    assert_eq!(
        text_at(&lines, early).as_deref(),
        Some("Before the backup."),
        "{lines:?}"
    );
    let line = lines.iter().find(|l| l["seq"] == late).unwrap();
    assert_eq!(line["kind"], "unreadable", "{line}");
    t.verified_to(US, late + 1);
    ok(t.cli(US).args(["handover", "--to", "US negotiator"]));
    ok(t.cli("restored").args(["read"]));
    reads_all(&t, "restored", &[(late, "After the backup.")]);

    // Every device lost: the talks authority writes the invitation again.
    let inv = t.path("recover.inv");
    run(t
        .cli(NEG)
        .args(["members", "recover", "--member", "US negotiator", "--out"])
        .arg(&inv))
    .refused(
        FAILED,
        &["only the home holding your party's talks authority"],
    );
    run(t
        .cli(US)
        .args(["members", "recover", "--member", "nobody", "--out"])
        .arg(&inv))
    .refused(FAILED, &["no member"]);
    ok(t.cli(US)
        .args(["members", "recover", "--member", "US negotiator", "--out"])
        .arg(&inv));

    // With the sheet: a wrong word is refused; the right words give the
    // same identity key, which is only seated.
    ok(t.cli("from-sheet").args(["home", "init"]));
    let bad_sheet = t.path("bad.sheet");
    let first = words
        .split("words:")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_owned();
    std::fs::write(
        &bad_sheet,
        words.replacen(&format!(" 1 {first}"), " 1 zzzz", 1),
    )
    .unwrap();
    let reply = t.path("sheet.reply");
    run(t
        .cli("from-sheet")
        .args(["members", "join", "--invitation"])
        .arg(&inv)
        .arg("--from-sheet")
        .arg(&bad_sheet)
        .arg("--out")
        .arg(&reply))
    .refused(FAILED, &["word 1", "not a recovery word"]);
    ok(t.cli("from-sheet")
        .args(["members", "join", "--invitation"])
        .arg(&inv)
        .arg("--from-sheet")
        .arg(&sheet)
        .arg("--out")
        .arg(&reply));
    let admitted = ok_json(
        t.cli(US)
            .args(["members", "admit", "--json", "--reply"])
            .arg(&reply),
    );
    // The same identity key: its certificate is the first one, nothing new;
    // the member's earlier devices (the first, the restored one) are
    // revoked as lost and off the list.
    assert_eq!(admitted["member_cert_seq"], certified, "{admitted}");
    assert_eq!(
        admitted["revoked_as_lost"].as_array().unwrap().len(),
        2,
        "{admitted}"
    );
    assert_ne!(run(t.cli(NEG).args(["read"])).code, Some(0));
    assert_ne!(run(t.cli("restored").args(["read"])).code, Some(0));
    ok(t.cli(OM).args(["talks", "cosign"]));
    ok(t.cli(IR).args(["talks", "cosign"]));
    ok(t.cli("from-sheet").args(["read"]));
    ok(t.cli(US).args(["read"]));
    ok(t.cli("from-sheet").args(["read"]));
    ok(t.cli(OM).args(["read"]));
    ok(t.cli(IR).args(["read"]));
    let said = t.send("from-sheet", "caucus", "Back from the sheet.");
    reads_all(&t, US, &[(said, "Back from the sheet.")]);

    // Without the sheet: a new identity key, certified, and the old one
    // revoked as lost with the device from the sheet: that home is out.
    let inv = t.path("recover2.inv");
    ok(t.cli(US)
        .args(["members", "recover", "--member", "US negotiator", "--out"])
        .arg(&inv));
    ok(t.cli("new-key").args(["home", "init"]));
    let reply = t.path("new.reply");
    ok(t.cli("new-key")
        .args(["members", "join", "--invitation"])
        .arg(&inv)
        .arg("--out")
        .arg(&reply));
    let second = ok_json(
        t.cli(US)
            .args(["members", "admit", "--json", "--reply"])
            .arg(&reply),
    );
    assert!(
        second["member_cert_seq"].as_u64() > admitted["member_cert_seq"].as_u64(),
        "{admitted} {second}"
    );
    // The sheet's identity key and its home's device.
    assert_eq!(
        second["revoked_as_lost"].as_array().unwrap().len(),
        2,
        "{second}"
    );
    ok(t.cli(OM).args(["talks", "cosign"]));
    ok(t.cli(IR).args(["talks", "cosign"]));
    ok(t.cli("new-key").args(["read"]));
    ok(t.cli(US).args(["read"]));
    ok(t.cli("new-key").args(["read"]));
    assert_ne!(run(t.cli("from-sheet").args(["read"])).code, Some(0));
    let said = t.send("new-key", "caucus", "Back with a new key.");
    reads_all(&t, US, &[(said, "Back with a new key.")]);
}

#[test]
fn the_talks_authority_is_handed_over() {
    let t = Talks::open();
    admit_negotiator(&t, None);

    // Iran compares the safety code with the US first.
    let show = ok_json(t.cli(IR).args(["talks", "show", "--json"]));
    let code: String = show["safety_code"]
        .as_str()
        .unwrap()
        .split_whitespace()
        .filter(|w| *w != "/")
        .collect::<Vec<_>>()
        .join(" ");
    ok(t.cli(IR).args([
        "talks",
        "verify",
        "--with",
        "US",
        "--via",
        "in person",
        "--code",
        &code,
    ]));

    // The negotiator's home claims; only the current holder passes.
    let claim = t.path("authority.claim");
    ok(t.cli(NEG)
        .args(["talks", "authority", "claim", "--out"])
        .arg(&claim));
    run(t
        .cli(US)
        .args(["talks", "authority", "claim", "--out"])
        .arg(t.path("other.claim")))
    .refused(FAILED, &["already holds your party's talks authority"]);
    run(t
        .cli(IR)
        .args(["talks", "authority", "pass", "--claim"])
        .arg(&claim))
    .refused(FAILED, &["passed by its current holder"]);
    let garbled = t.path("garbled.claim");
    std::fs::write(&garbled, "{}").unwrap();
    run(t
        .cli(US)
        .args(["talks", "authority", "pass", "--claim"])
        .arg(&garbled))
    .refused(FAILED, &["not an authority claim"]);
    run(t
        .cli(US)
        .args(["talks", "authority", "certify", "--claim"])
        .arg(&claim)
        .args(["--out", "x"]))
    .refused(FAILED, &["needs no certification"]);

    let passed = ok_json(
        t.cli(US)
            .args(["talks", "authority", "pass", "--json", "--claim"])
            .arg(&claim),
    );
    assert_eq!(passed["applied"], false, "{passed}");
    ok(t.cli(OM).args(["talks", "cosign"]));
    // Passed once: the same claim again has nothing left to do.
    let again = run(t
        .cli(US)
        .args(["talks", "authority", "pass", "--claim"])
        .arg(&claim));
    assert_eq!(again.code, Some(0), "{again:?}");
    assert!(again.stdout.contains("nothing left to do"), "{again:?}");

    // Iran sees the change: its verification of the US no longer holds.
    let show = ok_json(t.cli(IR).args(["talks", "show", "--json"]));
    let us = show["parties"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "United States")
        .unwrap();
    assert_eq!(us["verified"], false, "{us}");
    assert!(us["keys"].as_str().unwrap().contains("changed"), "{us}");

    // The new holder acts for the US: it invites and admits a member, and
    // every replay takes its certificate.
    let expert = admit_expert(&t);
    let said = t.send(
        "expert",
        "caucus",
        "The expert, certified by the new authority.",
    );
    reads_all(
        &t,
        US,
        &[(said, "The expert, certified by the new authority.")],
    );

    // The old holder's talks authority signs nothing that counts: the
    // member it tries to remove stays seated.
    let out = run(t.cli(US).args(["members", "remove", "--member", &expert]));
    assert_ne!(out.code, Some(0), "{out:?}");
    assert!(!out.stderr.contains("no member"), "{out:?}");
    let still = t.send("expert", "caucus", "Still here.");
    reads_all(&t, NEG, &[(still, "Still here.")]);
}

#[test]
fn the_talks_authority_is_re_appointed_when_its_holder_is_gone() {
    let t = Talks::open();
    admit_negotiator(&t, None);
    let path = |n: &str| t.path(n);
    let claim = path("claim.json");
    ok(t.cli(NEG)
        .args(["talks", "authority", "claim", "--reappointed", "--out"])
        .arg(&claim));
    // Not complete: no certification yet.
    run(t
        .cli(OM)
        .args(["talks", "authority", "pass", "--claim"])
        .arg(&claim))
    .refused(FAILED, &["not complete or not well formed"]);
    // Only a home holding the long-term authority certifies.
    run(t
        .cli(NEG)
        .args(["talks", "authority", "certify", "--claim"])
        .arg(&claim)
        .arg("--out")
        .arg(path("x.json")))
    .refused(FAILED, &["holds no long-term authority key"]);
    let certified = path("certified.json");
    ok(t.cli(US)
        .args(["talks", "authority", "certify", "--claim"])
        .arg(&claim)
        .arg("--out")
        .arg(&certified));
    // A party does not endorse its own claim; Iran endorses.
    run(t
        .cli(US)
        .args(["talks", "authority", "endorse", "--claim"])
        .arg(&certified)
        .arg("--out")
        .arg(path("y.json")))
    .refused(FAILED, &["not yours to endorse"]);
    let endorsed = path("endorsed.json");
    ok(t.cli(IR)
        .args(["talks", "authority", "endorse", "--claim"])
        .arg(&certified)
        .arg("--out")
        .arg(&endorsed));
    // Only a mediator passes a re-appointment.
    run(t
        .cli(US)
        .args(["talks", "authority", "pass", "--claim"])
        .arg(&endorsed))
    .refused(FAILED, &["passed by a mediator team's talks authority"]);
    let passed = ok_json(
        t.cli(OM)
            .args(["talks", "authority", "pass", "--json", "--claim"])
            .arg(&endorsed),
    );
    assert_eq!(passed["applied"], false, "{passed}");
    // Iran co-signs; the new key signs last, over the negotiator's device's
    // connection, and the change applies.
    ok(t.cli(IR).args(["talks", "cosign"]));
    let last = ok_json(t.cli(NEG).args(["talks", "cosign", "--json"]));
    assert_eq!(last["applied"], 1, "{last}");

    // The new holder certifies a member; every replay takes it.
    admit_expert(&t);
    let said = t.send(
        "expert",
        "caucus",
        "Certified by the re-appointed authority.",
    );
    // Iran's replay accepted every statement: the pass and what the new
    // key signed.
    t.verified_to(IR, said + 1);
}

/// The identity key id of talks `talks` in home `h` (`keys list`).
fn identity_key_id(t: &Talks, h: &str, talks: &str) -> String {
    let keys = ok_json(t.cli(h).args(["keys", "list", "--json"]));
    let ids: Vec<&str> = keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["kind"] == "identity" && k["talks"] == talks)
        .map(|k| k["key_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 1, "{keys}");
    ids[0].to_owned()
}

/// The key id a recovery sheet names on its `identity` line.
fn sheet_identity(sheet: &str) -> String {
    sheet
        .lines()
        .find_map(|l| l.strip_prefix("identity"))
        .unwrap()
        .trim()
        .to_owned()
}

#[test]
fn a_recovery_sheet_is_offered_where_a_member_key_is_made_at_talks_join_and_open() {
    let t = Talks::open();
    // A fourth home joins with an invitation of the mediator's. A sheet
    // path that exists, or in a directory that does not, is refused
    // before anything is made: the invitation stays unused.
    let inv = t.path("qatar.inv");
    ok(t.cli(OM).args(["talks", "invite", "--out"]).arg(&inv));
    ok(t.cli("qatar").args(["home", "init"]));
    let taken = t.path("taken.sheet");
    std::fs::write(&taken, b"keep me").unwrap();
    let join = |sheet: &Path| {
        run(t
            .cli("qatar")
            .args(["talks", "join", "--json", "--name", "State of Qatar"])
            .args(["--member", "Qatari envoy", "--invitation"])
            .arg(&inv)
            .arg("--recovery-sheet")
            .arg(sheet))
    };
    join(&taken).refused(FAILED, &["exists", "choose another --recovery-sheet"]);
    assert_eq!(std::fs::read(&taken).unwrap(), b"keep me");
    join(&t.path("no-such-dir/qatar.sheet")).refused(FAILED, &["is not a directory"]);
    let keys = ok_json(t.cli("qatar").args(["keys", "list", "--json"]));
    assert_eq!(keys["keys"].as_array().unwrap().len(), 0, "{keys}");
    // Then with a new path: the sheet names the identity key just made.
    let sheet_path = t.path("qatar.sheet");
    let joined = join(&sheet_path);
    assert_eq!(joined.code, Some(0), "{joined:?}");
    let joined = joined.json();
    assert_eq!(
        joined["recovery_sheet"].as_str(),
        Some(sheet_path.to_str().unwrap())
    );
    let talks = joined["talks"].as_str().unwrap().to_owned();
    let sheet = std::fs::read_to_string(&sheet_path).unwrap();
    assert!(sheet.contains("Qatari envoy"), "{sheet}");
    assert!(sheet.contains("words:"), "{sheet}");
    assert_eq!(sheet_identity(&sheet), identity_key_id(&t, "qatar", &talks));
    // Oman opens second talks from its home (its authority key may open
    // talks on this node), with a sheet: the human output says what the
    // sheet is for and, before any loss, what a lost device takes with it.
    let mediator_sheet = t.path("oman2.sheet");
    let om_keys = || ok_json(t.cli(OM).args(["keys", "list", "--json"]))["keys"].clone();
    let keys_before = om_keys();
    run(t
        .cli(OM)
        .args(["talks", "open"])
        .args(&t.pin)
        .args(["--name", "Oman", "--member", "Second-track mediator"])
        .arg("--recovery-sheet")
        .arg(&taken))
    .refused(FAILED, &["exists"]);
    assert_eq!(om_keys(), keys_before, "a refused open makes no key");
    let out = run(t
        .cli(OM)
        .args(["talks", "open"])
        .args(&t.pin)
        .args(["--name", "Oman", "--member", "Second-track mediator"])
        .arg("--recovery-sheet")
        .arg(&mediator_sheet));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.contains("wrote your recovery sheet"), "{out:?}");
    assert!(
        out.stdout
            .contains("also holds your party's talks authority"),
        "{out:?}"
    );
    assert!(out.stderr.contains("cannot be recovered"), "{out:?}");
    let opened = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("opened talks "))
        .unwrap()
        .trim()
        .to_owned();
    let sheet = std::fs::read_to_string(&mediator_sheet).unwrap();
    assert!(sheet.contains("Second-track mediator"), "{sheet}");
    assert_eq!(sheet_identity(&sheet), identity_key_id(&t, OM, &opened));

    // `members join`: a reply path that exists is refused before the home
    // is touched, and no sheet is written.
    let invitation = t.path("neg.inv");
    t.invite_negotiator(&invitation);
    ok(t.cli(NEG).args(["home", "init"]));
    let neg_sheet = t.path("neg.sheet");
    run(t
        .cli(NEG)
        .args(["members", "join", "--invitation"])
        .arg(&invitation)
        .arg("--out")
        .arg(&taken)
        .arg("--recovery-sheet")
        .arg(&neg_sheet))
    .refused(FAILED, &["exists; choose another --out"]);
    assert!(!neg_sheet.exists());
    let keys = ok_json(t.cli(NEG).args(["keys", "list", "--json"]));
    assert_eq!(keys["keys"].as_array().unwrap().len(), 0, "{keys}");
}
