// Test code: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use backchannel_crypto::SecretKey;

use super::*;

/// The work factor tests write with: fast, and passed as a parameter so no
/// test depends on the (process-wide) environment.
const TEST_LOG_N: u8 = 4;

const CTX: Context = Context::new("backchannel/v1/test/keyfile");

fn passphrase(s: &str) -> SecretString {
    SecretString::from(s.to_owned())
}

fn key_file(n: u8, kind: KeyKind, talks: Option<TalksId>) -> KeyFile {
    KeyFile::new(
        kind,
        talks,
        SecretKey::from_seed(&[n; 32]).expect("valid seed"),
    )
    .expect("kind and talks agree")
}

/// Writes a test key file at the fast work factor.
fn write(file: &KeyFile, path: &Path, pass: &str, force: bool) -> Result<(), WriteError> {
    file.write_with_log_n(path, &passphrase(pass), force, TEST_LOG_N)
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path)
        .expect("file exists")
        .permissions()
        .mode()
        & 0o7777
}

/// The work factor in an age file's scrypt stanza (`-> scrypt SALT LOG_N`).
fn header_log_n(bytes: &[u8]) -> u8 {
    let text = String::from_utf8_lossy(bytes);
    let line = text
        .lines()
        .find(|l| l.starts_with("-> scrypt "))
        .expect("an scrypt stanza");
    line.split(' ')
        .nth(3)
        .expect("a work factor")
        .parse()
        .expect("a number")
}

#[test]
fn round_trips_with_and_without_talks() {
    let dir = tempfile::tempdir().unwrap();
    let talks = TalksId([0xab; 16]);
    for (i, (kind, talks)) in [
        (KeyKind::Authority, None),
        (KeyKind::TalksAuthority, Some(talks)),
        (KeyKind::Identity, Some(talks)),
        (KeyKind::Device, Some(talks)),
        (KeyKind::Log, None),
        (KeyKind::NodeTls, None),
    ]
    .into_iter()
    .enumerate()
    {
        let path = dir.path().join(format!("{kind}.key"));
        let original = key_file(i as u8 + 1, kind, talks);
        write(&original, &path, "correct horse", false).unwrap();

        let signer = FileSigner::open(&path, &passphrase("correct horse")).unwrap();
        assert_eq!(signer.kind(), kind);
        assert_eq!(signer.talks(), talks);
        assert_eq!(signer.path(), path);
        assert_eq!(signer.public_key(), original.public_key());
        let sig = signer.sign(CTX, b"message").unwrap();
        assert!(original.public_key().verify(CTX, b"message", &sig).is_ok());

        let reopened = KeyFile::open(&path, &passphrase("correct horse")).unwrap();
        assert_eq!(*reopened.secret_key().seed(), *original.secret_key().seed());
    }
}

#[test]
fn plaintext_layout_is_as_documented() {
    let with = key_file(7, KeyKind::TalksAuthority, Some(TalksId([0xab; 16])));
    let mut expected = b"backchannel key file v1\n".to_vec();
    expected.extend_from_slice(&[0x02, 0x01]);
    expected.extend_from_slice(&[0xab; 16]);
    expected.extend_from_slice(&[7; 32]);
    assert_eq!(*with.to_plaintext(), expected);
    assert_eq!(expected.len(), MAX_PLAINTEXT_LEN);

    let without = key_file(7, KeyKind::Log, None);
    let mut expected = b"backchannel key file v1\n".to_vec();
    expected.extend_from_slice(&[0x05, 0x00]);
    expected.extend_from_slice(&[7; 32]);
    assert_eq!(*without.to_plaintext(), expected);
    assert_eq!(expected.len(), 58);

    let node_tls = key_file(7, KeyKind::NodeTls, None);
    let mut expected = b"backchannel key file v1\n".to_vec();
    expected.extend_from_slice(&[0x06, 0x00]);
    expected.extend_from_slice(&[7; 32]);
    assert_eq!(*node_tls.to_plaintext(), expected);
    assert_eq!(KeyKind::NodeTls.as_str(), "node-tls");
    assert!(!KeyKind::NodeTls.is_per_talks());

    for kind in KeyKind::ALL {
        assert_eq!(KeyKind::from_tag(kind.tag()), Some(kind));
    }
}

#[test]
fn plaintext_decoding_is_strict() {
    let good = key_file(7, KeyKind::Device, Some(TalksId([1; 16]))).to_plaintext();
    assert!(KeyFile::from_plaintext(&good).is_ok());

    let mut bad_magic = good.to_vec();
    bad_magic[22] = b'2';
    assert_eq!(
        KeyFile::from_plaintext(&bad_magic).err(),
        Some(Corruption::Magic)
    );
    for bad_kind in [0x00, 0x07, 0xff] {
        let mut p = good.to_vec();
        p[24] = bad_kind;
        assert!(matches!(
            KeyFile::from_plaintext(&p),
            Err(Corruption::Decode(DecodeError::UnknownValue { .. }))
        ));
    }
    let mut bad_presence = good.to_vec();
    bad_presence[25] = 0x02;
    assert!(KeyFile::from_plaintext(&bad_presence).is_err());
    let mut trailing = good.to_vec();
    trailing.push(0);
    assert!(matches!(
        KeyFile::from_plaintext(&trailing),
        Err(Corruption::Decode(DecodeError::TrailingBytes { count: 1 }))
    ));
    for len in 0..good.len() {
        assert!(KeyFile::from_plaintext(&good[..len]).is_err(), "len {len}");
    }
}

#[test]
fn wrong_passphrase_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k");
    write(
        &key_file(1, KeyKind::Identity, Some(TalksId([1; 16]))),
        &path,
        "right",
        false,
    )
    .unwrap();
    let err = FileSigner::open(&path, &passphrase("wrong")).unwrap_err();
    assert!(matches!(err, OpenError::WrongPassphrase { .. }), "{err:?}");
    assert!(err.to_string().contains("wrong passphrase"), "{err}");
}

#[test]
fn empty_passphrase_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k");
    let err = write(
        &key_file(1, KeyKind::Identity, Some(TalksId([1; 16]))),
        &path,
        "",
        false,
    )
    .unwrap_err();
    assert!(matches!(err, WriteError::EmptyPassphrase), "{err:?}");
    assert!(!path.exists());
}

#[test]
fn refuses_to_overwrite_without_force_and_replaces_with_force() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k");
    let first = key_file(1, KeyKind::Device, Some(TalksId([1; 16])));
    let second = key_file(2, KeyKind::Device, Some(TalksId([1; 16])));
    write(&first, &path, "pw", false).unwrap();
    let before = fs::read(&path).unwrap();

    let err = write(&second, &path, "pw", false).unwrap_err();
    assert!(matches!(err, WriteError::AlreadyExists { .. }), "{err:?}");
    assert!(
        err.to_string().contains("use --force to replace it"),
        "{err}"
    );
    assert_eq!(fs::read(&path).unwrap(), before, "file untouched");

    // Even when the early check is skipped (a file created concurrently),
    // the no-clobber link refuses.
    let err = write_private_file(&path, b"other", false).unwrap_err();
    assert!(matches!(err, WriteError::AlreadyExists { .. }), "{err:?}");
    assert_eq!(fs::read(&path).unwrap(), before, "file untouched");

    write(&second, &path, "pw", true).unwrap();
    let signer = FileSigner::open(&path, &passphrase("pw")).unwrap();
    assert_eq!(signer.public_key(), second.public_key());
    assert_eq!(mode(&path), 0o600);

    // No temporary files are left behind.
    let names: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["k"]);
}

#[test]
fn files_are_written_with_mode_0600() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k");
    write(&key_file(1, KeyKind::Log, None), &path, "pw", false).unwrap();
    assert_eq!(mode(&path), 0o600);
}

#[test]
fn group_or_world_accessible_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k");
    write(&key_file(1, KeyKind::Authority, None), &path, "pw", false).unwrap();
    for bad in [0o640, 0o604, 0o660, 0o620, 0o602, 0o644] {
        fs::set_permissions(&path, fs::Permissions::from_mode(bad)).unwrap();
        let err = FileSigner::open(&path, &passphrase("pw")).unwrap_err();
        assert!(
            matches!(err, OpenError::TooPermissive { mode, .. } if mode == bad),
            "{bad:o}: {err:?}"
        );
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }
    // Stricter than 0600 is fine.
    fs::set_permissions(&path, fs::Permissions::from_mode(0o400)).unwrap();
    assert!(FileSigner::open(&path, &passphrase("pw")).is_ok());
}

#[test]
fn truncated_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k");
    write(
        &key_file(1, KeyKind::Device, Some(TalksId([1; 16]))),
        &path,
        "pw",
        false,
    )
    .unwrap();
    let bytes = fs::read(&path).unwrap();
    let damaged = dir.path().join("damaged");
    let mut lens: Vec<usize> = (0..bytes.len()).step_by(9).collect();
    lens.extend([bytes.len() - 1, bytes.len() - 16, bytes.len() - 17]);
    for len in lens {
        write_private_file(&damaged, &bytes[..len], true).unwrap();
        let err = FileSigner::open(&damaged, &passphrase("pw")).unwrap_err();
        assert!(
            matches!(err, OpenError::Corrupt { .. }),
            "truncated to {len}: {err:?}"
        );
    }
}

#[test]
fn bit_flips_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k");
    write(
        &key_file(1, KeyKind::Device, Some(TalksId([1; 16]))),
        &path,
        "pw",
        false,
    )
    .unwrap();
    let bytes = fs::read(&path).unwrap();
    let damaged = dir.path().join("damaged");
    // Every region is hit: version line, stanza (salt, work factor, wrapped
    // key), MAC, nonce, payload and its tag.
    let mut positions: Vec<usize> = (0..bytes.len()).step_by(7).collect();
    positions.push(bytes.len() - 1);
    for pos in positions {
        // A different bit at each position (7 is prime to 8).
        let bit = pos % 8;
        let mut flipped = bytes.clone();
        flipped[pos] ^= 1 << bit;
        write_private_file(&damaged, &flipped, true).unwrap();
        let err = FileSigner::open(&damaged, &passphrase("pw")).unwrap_err();
        // A flip in the salt or the wrapped key is, to age, the same as a
        // wrong passphrase; anything else is reported as damage.
        assert!(
            matches!(
                err,
                OpenError::Corrupt { .. }
                    | OpenError::WrongPassphrase { .. }
                    | OpenError::WorkFactorTooHigh { .. }
            ),
            "byte {pos} bit {bit}: {err:?}"
        );
    }
    // A flip in the payload is always reported as damage.
    let mut flipped = bytes.clone();
    let last = flipped.len() - 20;
    flipped[last] ^= 1;
    write_private_file(&damaged, &flipped, true).unwrap();
    let err = FileSigner::open(&damaged, &passphrase("pw")).unwrap_err();
    assert!(
        matches!(
            err,
            OpenError::Corrupt {
                reason: Corruption::Payload,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn other_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k");
    for junk in [&b""[..], b"hello", b"age-encryption.org/v1\n"] {
        write_private_file(&path, junk, true).unwrap();
        let err = FileSigner::open(&path, &passphrase("pw")).unwrap_err();
        assert!(
            matches!(
                err,
                OpenError::Corrupt {
                    reason: Corruption::NotAge,
                    ..
                }
            ),
            "{err:?}"
        );
    }
    let huge = vec![b'a'; MAX_KEY_FILE_LEN as usize + 1];
    write_private_file(&path, &huge, true).unwrap();
    let err = FileSigner::open(&path, &passphrase("pw")).unwrap_err();
    assert!(
        matches!(
            err,
            OpenError::Corrupt {
                reason: Corruption::TooLong,
                ..
            }
        ),
        "{err:?}"
    );
    let err = FileSigner::open(&dir.path().join("missing"), &passphrase("pw")).unwrap_err();
    assert!(matches!(err, OpenError::Io { .. }), "{err:?}");
}

#[test]
fn work_factor_is_written_and_bounded_on_reading() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k");
    write(
        &key_file(1, KeyKind::Device, Some(TalksId([1; 16]))),
        &path,
        "pw",
        false,
    )
    .unwrap();
    let bytes = fs::read(&path).unwrap();
    assert_eq!(header_log_n(&bytes), TEST_LOG_N);

    // Ask for more work than the limit: refused before any scrypt work.
    let text = &bytes;
    let needle = format!(" {TEST_LOG_N}\n");
    let at = text
        .windows(needle.len())
        .position(|w| w == needle.as_bytes())
        .expect("the work factor in the stanza");
    let mut tampered = text[..at].to_vec();
    tampered.extend_from_slice(format!(" {}\n", MAX_SCRYPT_LOG_N + 1).as_bytes());
    tampered.extend_from_slice(&text[at + needle.len()..]);
    write_private_file(&path, &tampered, true).unwrap();
    let err = FileSigner::open(&path, &passphrase("pw")).unwrap_err();
    assert!(
        matches!(err, OpenError::WorkFactorTooHigh { log_n, max, .. }
            if log_n == MAX_SCRYPT_LOG_N + 1 && max == MAX_SCRYPT_LOG_N),
        "{err:?}"
    );
    const { assert!(MAX_SCRYPT_LOG_N >= SCRYPT_LOG_N) };
}

#[test]
fn env_var_parsing() {
    // Debug builds: any value in 1..=SCRYPT_LOG_N lowers the work factor.
    assert_eq!(log_n_from_env(Some("10"), true), 10);
    assert_eq!(log_n_from_env(Some("1"), true), 1);
    assert_eq!(log_n_from_env(Some(" 12 "), true), 12);
    // It can never raise it, and garbage is ignored.
    for ignored in [None, Some("0"), Some("19"), Some("64"), Some("x"), Some("")] {
        assert_eq!(log_n_from_env(ignored, true), SCRYPT_LOG_N, "{ignored:?}");
    }
    // Release builds ignore it.
    assert_eq!(log_n_from_env(Some("10"), false), SCRYPT_LOG_N);
}

/// Set (to a directory) only in the child process of
/// [`env_var_lowers_the_work_factor_in_debug_builds`].
const CHILD_DIR_ENV: &str = "BACKCHANNEL_KEYFILE_TEST_CHILD_DIR";

/// The public API, end to end with the real environment variable. Setting an
/// environment variable in this process would race with the other test
/// threads (and is `unsafe` in Rust 2024), so the test runs this test binary
/// again, with the variable set, to run only [`env_var_child`].
#[test]
fn env_var_lowers_the_work_factor_in_debug_builds() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "tests::env_var_child", "--test-threads=1"])
        .env(DANGER_TEST_SCRYPT_LOG_N_ENV, "10")
        .env(CHILD_DIR_ENV, dir.path())
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let bytes = fs::read(dir.path().join("k")).expect("the child wrote the key file");
    let expected = if cfg!(debug_assertions) {
        10
    } else {
        SCRYPT_LOG_N
    };
    assert_eq!(header_log_n(&bytes), expected);
    // Files written at a lower work factor open normally.
    let signer = FileSigner::open(&dir.path().join("k"), &passphrase("pw")).unwrap();
    assert_eq!(signer.kind(), KeyKind::Authority);
}

/// Does nothing unless run by
/// [`env_var_lowers_the_work_factor_in_debug_builds`].
#[test]
fn env_var_child() {
    let Some(dir) = std::env::var_os(CHILD_DIR_ENV) else {
        return;
    };
    key_file(3, KeyKind::Authority, None)
        .write(&Path::new(&dir).join("k"), &passphrase("pw"), false)
        .unwrap();
}

#[test]
fn kind_and_talks_must_agree() {
    let key = || SecretKey::from_seed(&[5; 32]).expect("valid seed");
    assert!(KeyFile::new(KeyKind::Device, None, key()).is_err());
    assert!(KeyFile::new(KeyKind::Log, Some(TalksId([1; 16])), key()).is_err());
    assert!(KeyFile::new(KeyKind::NodeTls, Some(TalksId([1; 16])), key()).is_err());
    assert!(KeyFile::new(KeyKind::Authority, None, key()).is_ok());
}
