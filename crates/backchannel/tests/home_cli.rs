//! `backchannel home …` and `backchannel keys …`, run as the built binary.

// Test code: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{assert_failure, assert_success, run, stderr, stdout};

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use age::secrecy::SecretString;
use backchannel_client::store::{ClientStore, Namespace};
use backchannel_client_store_sqlite::{ClientStoreOptions, SqliteClientStore};
use backchannel_crypto::{SecretKey, Signer as _};

const PASSPHRASE: &str = "correct horse battery staple";
const TALKS: &str = "00112233445566778899aabbccddeeff";

/// The command on `home`, with a fast scrypt work factor for the store it
/// creates (honoured by debug builds only) and the passphrase.
fn backchannel(home: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_backchannel"));
    cmd.env("BACKCHANNEL_DANGER_TEST_SCRYPT_LOG_N", "4")
        .env("BACKCHANNEL_PASSPHRASE", PASSPHRASE)
        .env("BACKCHANNEL_HOME", home)
        .env_remove("BACKCHANNEL_LOG")
        .stdin(Stdio::null());
    cmd
}

fn json(out: &Output) -> serde_json::Value {
    assert_success(out);
    serde_json::from_slice(&out.stdout).expect("--json prints JSON")
}

/// A temporary directory and a home path inside it (not yet created).
fn home() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    (tmp, home)
}

/// `home init` on `home`.
fn init(home: &Path) {
    assert_success(&run(backchannel(home).args(["home", "init"])));
}

/// `keys generate --json` with `args`; the printed key.
fn generate(home: &Path, args: &[&str]) -> serde_json::Value {
    json(&run(backchannel(home)
        .args(["keys", "generate", "--json"])
        .args(args)))
}

#[test]
fn init_creates_a_private_home_and_refuses_a_second_init() {
    let (_tmp, home) = home();
    let out = run(backchannel(&home).args(["home", "init", "--json"]));
    let created = json(&out);
    let canonical = std::fs::canonicalize(&home).unwrap();
    assert_eq!(created["home"], canonical.to_str().unwrap());
    assert_eq!(
        created["store"],
        canonical.join("home.db").to_str().unwrap()
    );
    assert!(home.join("home.db").is_file());
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&home), 0o700);
    assert_eq!(mode(&home.join("home.db")), 0o600);

    let again = run(backchannel(&home).args(["home", "init"]));
    assert_failure(&again, 1, "a home already exists at");

    // A non-empty directory that is not a home is left alone.
    let (_tmp2, other) = self::home();
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("notes.txt"), b"mine").unwrap();
    let out = run(backchannel(&other).args(["home", "init"]));
    assert_failure(&out, 1, "is not empty");
}

#[test]
fn commands_need_a_home_and_a_passphrase() {
    let (_tmp, home) = home();
    // No home given at all.
    let out = run(backchannel(&home)
        .env_remove("BACKCHANNEL_HOME")
        .args(["keys", "list"]));
    assert_failure(&out, 1, "pass --home <DIR> or set BACKCHANNEL_HOME");
    // A home that was never made.
    let out = run(backchannel(&home).args(["keys", "list"]));
    assert_failure(&out, 1, "run `backchannel home init` first");
    assert!(stderr(&out).contains(home.to_str().unwrap()));
    // No passphrase.
    let out = run(backchannel(&home)
        .env_remove("BACKCHANNEL_PASSPHRASE")
        .args(["home", "init"]));
    assert_failure(&out, 1, "set BACKCHANNEL_PASSPHRASE");
    assert!(!home.exists(), "a home was made without a passphrase");
}

#[test]
fn a_wrong_passphrase_is_refused_and_never_echoed() {
    let (_tmp, home) = home();
    init(&home);
    let wrong = "not the passphrase at all";
    let out = run(backchannel(&home)
        .env("BACKCHANNEL_PASSPHRASE", wrong)
        .args(["keys", "list"]));
    assert_failure(&out, 1, "passphrase does not open");
    assert!(!stderr(&out).contains(wrong) && !stdout(&out).contains(wrong));

    // The right one, from a file named by --passphrase-file, opens it.
    let file = home.parent().unwrap().join("pass");
    std::fs::write(&file, format!("{PASSPHRASE}\n")).unwrap();
    let out = run(backchannel(&home)
        .env("BACKCHANNEL_PASSPHRASE", wrong)
        .args(["keys", "list", "--passphrase-file"])
        .arg(&file));
    assert_success(&out);
}

#[test]
fn generated_keys_are_listed_and_exported() {
    let (_tmp, home) = home();
    init(&home);
    let empty = json(&run(backchannel(&home).args(["keys", "list", "--json"])));
    assert_eq!(empty["keys"], serde_json::json!([]));

    let authority = generate(&home, &["--kind", "authority", "--label", "us"]);
    let device = generate(
        &home,
        &["--kind", "device", "--talks", TALKS, "--label", "laptop"],
    );
    assert_eq!(authority["kind"], "authority");
    assert_eq!(authority["talks"], serde_json::Value::Null);
    assert_eq!(authority["label"], "us");
    assert_eq!(authority["public_key"].as_str().unwrap().len(), 64);
    assert_eq!(authority["key_id"].as_str().unwrap().len(), 64);
    assert_eq!(device["talks"], TALKS);
    assert_ne!(authority["public_key"], device["public_key"]);

    let listed = json(&run(backchannel(&home).args(["keys", "list", "--json"])));
    assert_eq!(listed["keys"], serde_json::json!([authority, device]));

    // The text listing shows the same keys.
    let out = run(backchannel(&home).args(["keys", "list"]));
    assert_success(&out);
    let text = stdout(&out);
    for key in [&authority, &device] {
        assert!(text.contains(key["public_key"].as_str().unwrap()), "{text}");
        assert!(text.contains(key["key_id"].as_str().unwrap()), "{text}");
    }

    // export-public prints the public key alone.
    let out = run(backchannel(&home).args(["keys", "export-public", "--label", "us"]));
    assert_success(&out);
    assert_eq!(
        stdout(&out).trim(),
        authority["public_key"].as_str().unwrap()
    );
    let out = run(backchannel(&home).args([
        "keys",
        "export-public",
        "--label",
        "laptop",
        "--kind",
        "device",
        "--talks",
        TALKS,
    ]));
    assert_success(&out);
    assert_eq!(stdout(&out).trim(), device["public_key"].as_str().unwrap());
    let out = run(backchannel(&home).args(["keys", "export-public", "--label", "nobody"]));
    assert_failure(&out, 1, "no key labelled \"nobody\"");

    // One label on two kinds: export-public asks which.
    generate(
        &home,
        &["--kind", "identity", "--talks", TALKS, "--label", "us"],
    );
    let out = run(backchannel(&home).args(["keys", "export-public", "--label", "us"]));
    assert_failure(&out, 1, "choose one with --kind and --talks");
    let out = run(backchannel(&home).args([
        "keys",
        "export-public",
        "--label",
        "us",
        "--kind",
        "authority",
    ]));
    assert_success(&out);
    assert_eq!(
        stdout(&out).trim(),
        authority["public_key"].as_str().unwrap()
    );
}

#[test]
fn per_talks_kinds_require_talks_and_the_others_refuse_it() {
    let (_tmp, home) = home();
    init(&home);
    for kind in ["talks-authority", "identity", "device"] {
        let out = run(backchannel(&home).args(["keys", "generate", "--kind", kind]));
        assert_failure(&out, 1, "pass --talks <HEX>");
    }
    let out =
        run(backchannel(&home).args(["keys", "generate", "--kind", "authority", "--talks", TALKS]));
    assert_failure(&out, 1, "drop --talks");
    let out =
        run(backchannel(&home).args(["keys", "generate", "--kind", "device", "--talks", "xyz"]));
    assert_failure(&out, 1, "is not a talks id");
    // An unknown kind is a usage error.
    let out = run(backchannel(&home).args(["keys", "generate", "--kind", "log"]));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    // Nothing was stored by the refused commands.
    let listed = json(&run(backchannel(&home).args(["keys", "list", "--json"])));
    assert_eq!(listed["keys"], serde_json::json!([]));
}

#[test]
fn a_duplicate_label_is_refused_without_force() {
    let (_tmp, home) = home();
    init(&home);
    let args = [
        "--kind",
        "talks-authority",
        "--talks",
        TALKS,
        "--label",
        "x",
    ];
    let first = generate(&home, &args);
    let out = run(backchannel(&home).args(["keys", "generate"]).args(args));
    assert_failure(&out, 1, "pass --force to replace it");
    // The same label in another talks is another key.
    let other_talks = "ff".repeat(16);
    generate(
        &home,
        &[
            "--kind",
            "talks-authority",
            "--talks",
            &other_talks,
            "--label",
            "x",
        ],
    );
    // --force replaces the key, and the listing shows only the new one.
    let out = run(backchannel(&home)
        .args(["keys", "generate", "--force", "--json"])
        .args(args));
    let replaced = json(&out);
    assert!(stderr(&out).contains("its old secret is gone"));
    assert_ne!(replaced["public_key"], first["public_key"]);
    let listed = json(&run(backchannel(&home).args(["keys", "list", "--json"])));
    let keys = listed["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2);
    assert!(keys.contains(&replaced));
    assert!(!keys.contains(&first));
}

/// Every byte of the files in the home directory (the store and any WAL).
fn home_bytes(home: &Path) -> Vec<u8> {
    let mut all = Vec::new();
    for entry in std::fs::read_dir(home).unwrap() {
        all.extend(std::fs::read(entry.unwrap().path()).unwrap());
    }
    all
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The seed stored for the authority key labelled `label`, read with the
/// store's library (the record key as documented in `keys.rs`).
fn stored_authority_seed(home: &Path, label: &str) -> [u8; 32] {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let passphrase = SecretString::from(PASSPHRASE.to_owned());
        let store = SqliteClientStore::open(
            home.join("home.db"),
            &passphrase,
            ClientStoreOptions::default(),
        )
        .await
        .unwrap();
        let mut name = vec![0x01, 0x00];
        name.extend((label.len() as u32).to_be_bytes());
        name.extend(label.as_bytes());
        let mut key = b"backchannel/v1/home/keys/key/".to_vec();
        key.extend(&name);
        let record = store.get(Namespace::Keys, &key).await.unwrap().unwrap();
        store.close().await;
        let mut want_prefix = vec![0x01];
        want_prefix.extend(&name);
        assert_eq!(record[..want_prefix.len()], want_prefix[..]);
        record[want_prefix.len()..].try_into().unwrap()
    })
}

#[test]
fn the_store_holds_no_public_key_seed_or_label_in_the_clear() {
    let (_tmp, home) = home();
    init(&home);
    let label = "a-very-distinctive-label";
    let key = generate(&home, &["--kind", "authority", "--label", label]);
    let public_hex = key["public_key"].as_str().unwrap().to_owned();
    let public = hex::decode(&public_hex).unwrap();

    // The seed in the store is the key's: its public half is what was printed.
    let seed = stored_authority_seed(&home, label);
    assert_eq!(
        SecretKey::from_seed(&seed).unwrap().public_key().as_bytes()[..],
        public[..]
    );

    let bytes = home_bytes(&home);
    assert!(!bytes.is_empty());
    for (what, needle) in [
        ("the public key", public.as_slice()),
        ("the public key in hex", public_hex.as_bytes()),
        ("the seed", seed.as_slice()),
        ("the label", label.as_bytes()),
        ("the passphrase", PASSPHRASE.as_bytes()),
    ] {
        assert!(
            !contains(&bytes, needle),
            "the home holds {what} in the clear"
        );
    }
}

#[test]
fn help_documents_the_exit_codes() {
    let (_tmp, home) = home();
    for args in [
        &["home", "init", "--help"][..],
        &["keys", "generate", "--help"],
        &["keys", "list", "--help"],
        &["keys", "export-public", "--help"],
    ] {
        let out = run(backchannel(&home).args(args));
        assert_success(&out);
        assert!(stdout(&out).contains("Exit codes: 0 success"), "{args:?}");
    }
}

/// One command at a time works on a home: a second one waits, saying so,
/// until the first lets the home go (a session reads its state when it
/// opens and writes it as it goes; two at once would overwrite each other).
#[test]
fn a_second_command_on_a_home_waits_for_the_first() {
    use rustix::fs::{FlockOperation, flock};
    let (_dir, home) = home();
    init(&home);
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(home.join("home.lock"))
        .unwrap();
    flock(&lock, FlockOperation::LockExclusive).unwrap();
    let mut waiting = backchannel(&home)
        .args(["keys", "list", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // It cannot finish while the home is held, however long it is given.
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(waiting.try_wait().unwrap().is_none(), "it did not wait");
    drop(lock);
    let out = waiting.wait_with_output().unwrap();
    assert_success(&out);
    assert!(
        stderr(&out).contains("waiting for another backchannel command"),
        "{out:?}"
    );
}
