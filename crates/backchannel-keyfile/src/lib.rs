//! Secret key files: one Ed25519 key, encrypted with a passphrase.
//!
//! Features:
//! - A key file holds one Ed25519 seed, the [`KeyKind`] of the key and,
//!   for a per-talks kind ([`KeyKind::is_per_talks`]), the [`TalksId`] the key
//!   belongs to (and for other kinds none), encrypted to a passphrase
//!   with [age]'s scrypt recipient at a fixed work factor ([`SCRYPT_LOG_N`]).
//! - Files are written with mode `0600`, atomically (temporary file in the same
//!   directory, `fsync`, rename, `fsync` of the directory), and an existing
//!   file is never replaced unless the caller passes `force`.
//! - Files readable or writable by group or others are refused before the
//!   passphrase is even tried, as OpenSSH refuses such private keys.
//! - [`FileSigner`] opens a key file and implements
//!   [`backchannel_crypto::Signer`], so the rest of Backchannel never sees a
//!   seed. Seeds, plaintexts and passphrases are zeroized when dropped.
//!
//! Non-features: no key generation policy (callers pass a
//! [`SecretKey`]), no passphrase prompting (that is the CLI's job), no
//! other encryption than age scrypt, no plaintext key files.
//!
//! # File format
//!
//! The file is a binary [age v1] file (`age-encryption.org/v1`) with exactly
//! one `scrypt` recipient stanza. Its plaintext is, in the primitives of
//! `backchannel-codec` (fixed-size fields raw, no lengths):
//!
//! | offset | size | field                                                     |
//! |-------:|-----:|-----------------------------------------------------------|
//! |      0 |   24 | magic and version: ASCII `backchannel key file v1\n`      |
//! |     24 |    1 | key kind: `0x01` authority, `0x02` talks-authority, `0x03` identity, `0x04` device, `0x05` log, `0x06` node-tls |
//! |     25 |    1 | talks id presence: `0x00` absent, `0x01` present          |
//! |     26 |   16 | talks id (only if present)                                |
//! | 26/42  |   32 | the RFC 8032 Ed25519 seed                                 |
//!
//! so a plaintext is 58 bytes without a talks id and 74 with one. Readers are
//! strict: a wrong magic, an unknown kind, a presence byte other than `0x00`
//! or `0x01`, a short plaintext or trailing bytes make the file corrupt. A
//! new plaintext layout gets a new magic line (`… v2\n`).
//!
//! [age]: https://age-encryption.org
//! [age v1]: https://c2sp.org/age

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use age::secrecy::SecretString;
use backchannel_codec::{DecodeError, Reader, TalksId, Writer};
use backchannel_crypto::{Context, PublicKey, SecretKey, SignError, Signature, Signer};
use rand_core::RngCore;
use thiserror::Error;
use zeroize::Zeroizing;

/// The scrypt work factor (`N = 2^SCRYPT_LOG_N`, r = 8, p = 1) every key file
/// is written with.
///
/// 18 is age's own default for passphrases (what `rage -p` picks when it
/// cannot measure the machine): about a second and 256 MiB per attempt, paid
/// once per command that signs, and the same per guess by anyone who steals
/// the file. A fixed value, rather than age's per-machine measurement, means a
/// file written on a fast desktop still opens promptly on a slow laptop.
pub const SCRYPT_LOG_N: u8 = 18;

/// The highest scrypt work factor a key file may demand when it is opened.
///
/// Two steps above [`SCRYPT_LOG_N`] (1 GiB, a few seconds): a later version
/// may raise the write constant by that much without older versions becoming
/// unable to open its files, while a hostile file cannot make us spend tens
/// of GiB (age's own default limit is measured per machine and much higher).
pub const MAX_SCRYPT_LOG_N: u8 = SCRYPT_LOG_N + 2;

/// The environment variable that lowers the work factor key files are
/// *written* with, so tests run in milliseconds. Debug builds only: release
/// builds ignore it (`cfg!(debug_assertions)`). Values outside
/// `1..=SCRYPT_LOG_N` are ignored. Never set it outside tests: a key file
/// written with a low work factor is cheap to brute-force.
pub const DANGER_TEST_SCRYPT_LOG_N_ENV: &str = "BACKCHANNEL_DANGER_TEST_SCRYPT_LOG_N";

/// The largest key file read from disk. A key file is under 400 bytes (age
/// header with one scrypt stanza, nonce, one 74-byte chunk and its tag); the
/// limit only stops a wrong path (a disk image, `/dev/zero`) from being read
/// into memory.
pub const MAX_KEY_FILE_LEN: u64 = 64 * 1024;

/// The first line of every plaintext: magic and format version.
const MAGIC: &[u8; 24] = b"backchannel key file v1\n";

/// The longest valid plaintext: magic, kind, presence, talks id, seed.
const MAX_PLAINTEXT_LEN: usize = MAGIC.len() + 1 + 1 + 16 + 32;

/// What a key is for. The kind is stored in the file so a key is never used
/// in the wrong role by mistake (a device key given where the authority key
/// was asked for).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyKind {
    /// A principal's long-term authority key.
    Authority,
    /// An authority key specific to one talks.
    TalksAuthority,
    /// An identity key.
    Identity,
    /// A key held by one device.
    Device,
    /// A transparency log's signing key.
    Log,
    /// A node's TLS identity key: the key of its self-signed certificate,
    /// which clients pin by fingerprint. Kept apart from [`KeyKind::Log`] so
    /// the key that signs checkpoints never signs TLS handshakes.
    NodeTls,
}

impl KeyKind {
    /// Every kind, in tag order.
    pub const ALL: [KeyKind; 6] = [
        KeyKind::Authority,
        KeyKind::TalksAuthority,
        KeyKind::Identity,
        KeyKind::Device,
        KeyKind::Log,
        KeyKind::NodeTls,
    ];

    /// The kind's name, as the CLI spells it (`talks-authority`).
    pub fn as_str(self) -> &'static str {
        match self {
            KeyKind::Authority => "authority",
            KeyKind::TalksAuthority => "talks-authority",
            KeyKind::Identity => "identity",
            KeyKind::Device => "device",
            KeyKind::Log => "log",
            KeyKind::NodeTls => "node-tls",
        }
    }

    /// Whether keys of this kind belong to one talks (and their files name
    /// it): talks authority, identity and device keys do; a party's
    /// long-term authority key and a node's log and TLS keys do not.
    pub fn is_per_talks(self) -> bool {
        matches!(
            self,
            KeyKind::TalksAuthority | KeyKind::Identity | KeyKind::Device
        )
    }

    fn tag(self) -> u8 {
        match self {
            KeyKind::Authority => 0x01,
            KeyKind::TalksAuthority => 0x02,
            KeyKind::Identity => 0x03,
            KeyKind::Device => 0x04,
            KeyKind::Log => 0x05,
            KeyKind::NodeTls => 0x06,
        }
    }

    fn from_tag(tag: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.tag() == tag)
    }
}

impl std::fmt::Display for KeyKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The decrypted contents of a key file: the key, its kind and its talks.
#[derive(Debug)]
pub struct KeyFile {
    kind: KeyKind,
    talks: Option<TalksId>,
    key: SecretKey,
}

impl KeyFile {
    /// Contents for a new key file. Per-talks kinds must name their talks,
    /// and the others must not ([`KeyKind::is_per_talks`]).
    pub fn new(
        kind: KeyKind,
        talks: Option<TalksId>,
        key: SecretKey,
    ) -> Result<Self, KindTalksMismatch> {
        if kind.is_per_talks() != talks.is_some() {
            return Err(KindTalksMismatch(kind));
        }
        Ok(Self { kind, talks, key })
    }

    /// What the key is for.
    pub fn kind(&self) -> KeyKind {
        self.kind
    }

    /// The talks the key belongs to, if it belongs to one.
    pub fn talks(&self) -> Option<TalksId> {
        self.talks
    }

    /// The key's public half.
    pub fn public_key(&self) -> PublicKey {
        self.key.public_key()
    }

    /// The secret key, e.g. to sign with it.
    pub fn secret_key(&self) -> &SecretKey {
        &self.key
    }

    /// Encrypts the contents to `passphrase` and writes them to `path` with
    /// mode `0600`, atomically. An existing file at `path` is replaced only
    /// if `force` is true; otherwise [`WriteError::AlreadyExists`].
    ///
    /// The work factor is [`SCRYPT_LOG_N`], unless a debug build runs with
    /// [`DANGER_TEST_SCRYPT_LOG_N_ENV`] set.
    pub fn write(
        &self,
        path: &Path,
        passphrase: &SecretString,
        force: bool,
    ) -> Result<(), WriteError> {
        self.write_with_log_n(path, passphrase, force, write_log_n())
    }

    /// Reads and decrypts the key file at `path`.
    pub fn open(path: &Path, passphrase: &SecretString) -> Result<Self, OpenError> {
        let ciphertext = read_private_file(path)?;
        decrypt(&ciphertext, passphrase).map_err(|e| e.at(path))
    }

    fn write_with_log_n(
        &self,
        path: &Path,
        passphrase: &SecretString,
        force: bool,
        log_n: u8,
    ) -> Result<(), WriteError> {
        use age::secrecy::ExposeSecret;
        if passphrase.expose_secret().is_empty() {
            return Err(WriteError::EmptyPassphrase);
        }
        let ciphertext = self.encrypt(passphrase, log_n)?;
        write_private_file(path, &ciphertext, force)
    }

    fn encrypt(&self, passphrase: &SecretString, log_n: u8) -> Result<Vec<u8>, WriteError> {
        let plaintext = self.to_plaintext();
        // Not `Encryptor::with_user_passphrase`: it picks a work factor by
        // timing this machine, and we want the fixed one.
        let mut recipient = age::scrypt::Recipient::new(passphrase.clone());
        recipient.set_work_factor(log_n);
        let encryptor =
            age::Encryptor::with_recipients(std::iter::once(&recipient as &dyn age::Recipient))
                .map_err(WriteError::Encrypt)?;
        let mut ciphertext = Vec::with_capacity(512);
        let mut stream = encryptor
            .wrap_output(&mut ciphertext)
            .map_err(|e| WriteError::Encrypt(age::EncryptError::Io(e)))?;
        stream
            .write_all(&plaintext)
            .and_then(|()| stream.finish())
            .map_err(|e| WriteError::Encrypt(age::EncryptError::Io(e)))?;
        Ok(ciphertext)
    }

    /// The plaintext layout documented in the crate docs.
    fn to_plaintext(&self) -> Zeroizing<Vec<u8>> {
        // Exactly the capacity needed, so the buffer holding the seed is
        // never reallocated (which would leave an un-zeroized copy behind).
        let mut w = Writer::with_capacity(MAX_PLAINTEXT_LEN);
        w.raw(MAGIC);
        w.u8(self.kind.tag());
        w.option(self.talks.as_ref());
        w.raw(&self.key.seed()[..]);
        Zeroizing::new(w.into_bytes())
    }

    fn from_plaintext(plaintext: &[u8]) -> Result<Self, Corruption> {
        let mut r = Reader::new(plaintext);
        let magic: [u8; MAGIC.len()] = r.array("magic")?;
        if &magic != MAGIC {
            return Err(Corruption::Magic);
        }
        let tag = r.u8("key kind")?;
        let kind = KeyKind::from_tag(tag).ok_or(Corruption::Decode(DecodeError::UnknownValue {
            field: "key kind",
            value: u64::from(tag),
        }))?;
        let talks = r.option::<TalksId>("talks id")?;
        let seed = Zeroizing::new(r.array::<32>("seed")?);
        r.finish()?;
        let key = SecretKey::from_seed(&seed).map_err(|_| Corruption::SmallOrderKey)?;
        Self::new(kind, talks, key).map_err(|_| Corruption::KindTalks)
    }
}

/// A key file opened for signing: the [`Signer`] for keys kept on disk.
#[derive(Debug)]
pub struct FileSigner {
    file: KeyFile,
    path: PathBuf,
}

impl FileSigner {
    /// Reads and decrypts the key file at `path` (see [`KeyFile::open`]).
    pub fn open(path: &Path, passphrase: &SecretString) -> Result<Self, OpenError> {
        Ok(Self {
            file: KeyFile::open(path, passphrase)?,
            path: path.to_owned(),
        })
    }

    /// What the key is for.
    pub fn kind(&self) -> KeyKind {
        self.file.kind()
    }

    /// The talks the key belongs to, if it belongs to one.
    pub fn talks(&self) -> Option<TalksId> {
        self.file.talks()
    }

    /// The file the key was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Signer for FileSigner {
    fn public_key(&self) -> PublicKey {
        self.file.public_key()
    }

    fn sign(&self, context: Context, message: &[u8]) -> Result<Signature, SignError> {
        self.file.key.sign(context, message)
    }
}

/// Why a key file could not be written.
#[derive(Debug, Error)]
pub enum WriteError {
    /// A file already exists at the path.
    #[error(
        "{} already exists; use --force to replace it (the key it holds will be lost unless you kept a copy)",
        path.display()
    )]
    AlreadyExists {
        /// The path given.
        path: PathBuf,
    },
    /// The passphrase was empty.
    #[error("the passphrase is empty; choose a passphrase to protect the key file")]
    EmptyPassphrase,
    /// age could not encrypt (only possible if writing to memory fails).
    #[error("could not encrypt the key file")]
    Encrypt(#[source] age::EncryptError),
    /// The file system refused.
    #[error("could not write {}", path.display())]
    Io {
        /// The path that failed (the key file, its temporary file or its directory).
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
}

/// Why a key file could not be opened.
#[derive(Debug, Error)]
pub enum OpenError {
    /// The file could not be read.
    #[error("could not read key file {}", path.display())]
    Io {
        /// The key file's path.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// Group or others may read or write the file.
    #[error(
        "key file {} is accessible by other users (mode {mode:03o}); run `chmod 600 {}` and try again",
        path.display(),
        path.display()
    )]
    TooPermissive {
        /// The key file's path.
        path: PathBuf,
        /// The file's permission bits.
        mode: u32,
    },
    /// The passphrase does not decrypt the file.
    #[error(
        "wrong passphrase for key file {} (or the file's header is damaged); check the passphrase and try again",
        path.display()
    )]
    WrongPassphrase {
        /// The key file's path.
        path: PathBuf,
    },
    /// The file asks for more scrypt work than [`MAX_SCRYPT_LOG_N`].
    #[error(
        "key file {} asks for scrypt work factor 2^{log_n}, more than the limit of 2^{max}; \
         it was not written by this version of Backchannel, or it was tampered with",
        path.display()
    )]
    WorkFactorTooHigh {
        /// The key file's path.
        path: PathBuf,
        /// The work factor the file asks for.
        log_n: u8,
        /// The highest accepted, [`MAX_SCRYPT_LOG_N`].
        max: u8,
    },
    /// The file is not a key file, or it is damaged.
    #[error(
        "key file {} is damaged or not a Backchannel key file ({reason}); restore it from a backup",
        path.display()
    )]
    Corrupt {
        /// The key file's path.
        path: PathBuf,
        /// What is wrong.
        reason: Corruption,
    },
}

/// What is wrong with a corrupt key file (see [`OpenError::Corrupt`]).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Corruption {
    /// Longer than [`MAX_KEY_FILE_LEN`].
    #[error("longer than {MAX_KEY_FILE_LEN} bytes")]
    TooLong,
    /// Not an age file, or an age header that does not parse.
    #[error("not a valid age file")]
    NotAge,
    /// An age file, but not encrypted to a passphrase.
    #[error("not encrypted with a passphrase")]
    NotPassphrase,
    /// The age header's MAC does not match: the header was altered.
    #[error("the age header was altered")]
    HeaderMac,
    /// The encrypted payload is truncated or altered.
    #[error("the encrypted payload is truncated or altered")]
    Payload,
    /// The plaintext does not start with the key file magic.
    #[error("unknown key file format or version")]
    Magic,
    /// The plaintext does not decode.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// A per-talks kind without a talks id, or another kind with one.
    #[error("the key kind and the presence of a talks id disagree")]
    KindTalks,
    /// The seed gives a public key of small order (never written by us).
    #[error("the key is of small order")]
    SmallOrderKey,
}

/// A key kind that belongs to one talks without a talks id, or another
/// kind with one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error(
    "a {0} key {must} name the talks it belongs to",
    must = if .0.is_per_talks() { "must" } else { "must not" }
)]
pub struct KindTalksMismatch(pub KeyKind);

/// An [`OpenError`] before the path is known.
#[derive(Debug)]
enum DecryptFailure {
    WrongPassphrase,
    WorkFactorTooHigh(u8),
    Corrupt(Corruption),
}

impl DecryptFailure {
    fn at(self, path: &Path) -> OpenError {
        let path = path.to_owned();
        match self {
            DecryptFailure::WrongPassphrase => OpenError::WrongPassphrase { path },
            DecryptFailure::WorkFactorTooHigh(log_n) => OpenError::WorkFactorTooHigh {
                path,
                log_n,
                max: MAX_SCRYPT_LOG_N,
            },
            DecryptFailure::Corrupt(reason) => OpenError::Corrupt { path, reason },
        }
    }
}

impl From<Corruption> for DecryptFailure {
    fn from(c: Corruption) -> Self {
        DecryptFailure::Corrupt(c)
    }
}

fn decrypt(ciphertext: &[u8], passphrase: &SecretString) -> Result<KeyFile, DecryptFailure> {
    let decryptor = age::Decryptor::new_buffered(ciphertext).map_err(map_age_error)?;
    if !decryptor.is_scrypt() {
        return Err(Corruption::NotPassphrase.into());
    }
    let mut identity = age::scrypt::Identity::new(passphrase.clone());
    identity.set_max_work_factor(MAX_SCRYPT_LOG_N);
    let stream = decryptor
        .decrypt(std::iter::once(&identity as &dyn age::Identity))
        .map_err(map_age_error)?;
    // Read into a fixed buffer, one byte more than the longest plaintext so
    // a longer one is seen, and zeroized on drop.
    let mut buf = Zeroizing::new([0u8; MAX_PLAINTEXT_LEN + 1]);
    let mut len = 0;
    let mut limited = stream.take((MAX_PLAINTEXT_LEN + 1) as u64);
    loop {
        match limited.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // The stream reports a chunk that fails authentication, or a
            // truncated last chunk, as an IO error.
            Err(_) => return Err(Corruption::Payload.into()),
        }
    }
    Ok(KeyFile::from_plaintext(&buf[..len])?)
}

fn map_age_error(e: age::DecryptError) -> DecryptFailure {
    match e {
        // The only AEAD the passphrase reaches is the stanza's wrapped file
        // key, so a failure there is a wrong passphrase (or, equally
        // possible to age, an altered salt or stanza body).
        age::DecryptError::DecryptionFailed | age::DecryptError::KeyDecryptionFailed => {
            DecryptFailure::WrongPassphrase
        }
        age::DecryptError::ExcessiveWork { required, .. } => {
            DecryptFailure::WorkFactorTooHigh(required)
        }
        age::DecryptError::InvalidMac => Corruption::HeaderMac.into(),
        age::DecryptError::NoMatchingKeys => Corruption::NotPassphrase.into(),
        // InvalidHeader, UnknownFormat, Io (a truncated header), and
        // anything a later age adds.
        _ => Corruption::NotAge.into(),
    }
}

/// The work factor for new files: [`SCRYPT_LOG_N`], or the test override in
/// debug builds. Other files sealed to a passphrase the same way (a device
/// link's offer) use it too.
pub fn write_log_n() -> u8 {
    log_n_from_env(
        std::env::var(DANGER_TEST_SCRYPT_LOG_N_ENV).ok().as_deref(),
        cfg!(debug_assertions),
    )
}

/// The pure part of [`write_log_n`], so tests need not touch the
/// environment (which is shared by test threads).
fn log_n_from_env(value: Option<&str>, debug_build: bool) -> u8 {
    if !debug_build {
        return SCRYPT_LOG_N;
    }
    value
        .and_then(|v| v.trim().parse::<u8>().ok())
        .filter(|n| (1..=SCRYPT_LOG_N).contains(n))
        .unwrap_or(SCRYPT_LOG_N)
}

/// Reads a key file, refusing it if group or others have access, and
/// refusing to read more than [`MAX_KEY_FILE_LEN`].
fn read_private_file(path: &Path) -> Result<Vec<u8>, OpenError> {
    let io_err = |source| OpenError::Io {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(io_err)?;
    // Checked on the open file, not the path, so the file checked is the
    // file read.
    let metadata = file.metadata().map_err(io_err)?;
    check_private(path, &metadata)?;
    let mut bytes = Vec::new();
    file.take(MAX_KEY_FILE_LEN + 1)
        .read_to_end(&mut bytes)
        .map_err(io_err)?;
    if bytes.len() as u64 > MAX_KEY_FILE_LEN {
        return Err(OpenError::Corrupt {
            path: path.to_owned(),
            reason: Corruption::TooLong,
        });
    }
    Ok(bytes)
}

#[cfg(unix)]
fn check_private(path: &Path, metadata: &fs::Metadata) -> Result<(), OpenError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = metadata.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(OpenError::TooPermissive {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

/// Other platforms have no mode bits; their ACLs are left to the user.
#[cfg(not(unix))]
fn check_private(_path: &Path, _metadata: &fs::Metadata) -> Result<(), OpenError> {
    Ok(())
}

/// Writes `bytes` to `path` atomically with mode `0600`: a temporary file in
/// the same directory, `fsync`, then a rename (`force`) or a hard link that
/// fails if `path` exists (no `force`, so even a file created concurrently is
/// never replaced), then `fsync` of the directory.
fn write_private_file(path: &Path, bytes: &[u8], force: bool) -> Result<(), WriteError> {
    let io_err = |p: &Path| {
        let p = p.to_owned();
        move |source| WriteError::Io { path: p, source }
    };
    if !force && fs::symlink_metadata(path).is_ok() {
        // Checked early only to fail before any work; the link below is the
        // real, race-free check.
        return Err(WriteError::AlreadyExists {
            path: path.to_owned(),
        });
    }
    let file_name = path.file_name().ok_or_else(|| WriteError::Io {
        path: path.to_owned(),
        source: io::Error::new(io::ErrorKind::InvalidInput, "not a file path"),
    })?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let mut random = [0u8; 8];
    rand_core::OsRng.fill_bytes(&mut random);
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(format!(".{}.tmp", hex::encode(random)));
    let tmp = TempPath(dir.join(tmp_name));

    let mut file = create_private(&tmp.0).map_err(io_err(&tmp.0))?;
    file.write_all(bytes).map_err(io_err(&tmp.0))?;
    file.sync_all().map_err(io_err(&tmp.0))?;
    drop(file);

    if force {
        fs::rename(&tmp.0, path).map_err(io_err(path))?;
    } else {
        match fs::hard_link(&tmp.0, path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(WriteError::AlreadyExists {
                    path: path.to_owned(),
                });
            }
            // A file system without hard links (FAT, some network and FUSE
            // file systems): fall back to check-then-rename, which only a
            // file created in the instant between the two can defeat.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::Unsupported | io::ErrorKind::PermissionDenied
                ) =>
            {
                if fs::symlink_metadata(path).is_ok() {
                    return Err(WriteError::AlreadyExists {
                        path: path.to_owned(),
                    });
                }
                fs::rename(&tmp.0, path).map_err(io_err(path))?;
            }
            Err(e) => return Err(io_err(path)(e)),
        }
        // `tmp` is removed when dropped below; the key now lives at `path`.
    }
    drop(tmp);
    sync_dir(&dir).map_err(io_err(&dir))
}

/// Creates a new file that only its owner can read and write.
fn create_private(path: &Path) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        options.mode(0o600);
        let file = options.open(path)?;
        // The umask can only clear bits, but make the mode exact anyway.
        file.set_permissions(fs::Permissions::from_mode(0o600))?;
        Ok(file)
    }
    #[cfg(not(unix))]
    {
        options.open(path)
    }
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Directories cannot be opened for syncing on other platforms.
#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> io::Result<()> {
    Ok(())
}

/// A temporary file, removed when dropped (after a rename it is already
/// gone, and the removal error is ignored).
struct TempPath(PathBuf);

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

// The tests check unix permission bits.
#[cfg(all(test, unix))]
mod tests;
