//! The node directory: what `node init` writes and `node run` reads.
//!
//! ```text
//! <DIR>/node.json   config: format version, origin, the log key's public half
//! <DIR>/log.key     the log key (key file, kind log), signs receipts and checkpoints
//! <DIR>/tls.key     the TLS key (key file, kind node-tls)
//! <DIR>/tls.crt     the self-signed certificate (DER) clients pin by fingerprint
//! <DIR>/creators    keys allowed to open talks: one hex key per line, `#` comments
//! <DIR>/node.db     the SQLite database (default; made by `node run`)
//! ```
//!
//! `node.json` is written last, so a directory holds a node exactly when it
//! holds `node.json`. The log key's public half is copied into it so that
//! `node info` needs no passphrase; `node run` checks that the two agree.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use age::secrecy::SecretString;
use anyhow::{Context as _, anyhow, bail};
use backchannel_crypto::{PublicKey, Signer as _};
use backchannel_keyfile::{FileSigner, KeyFile, KeyKind};
use backchannel_node::tls::{Fingerprint, Identity};
use backchannel_tlog::NodeOrigin;
use rustls::pki_types::CertificateDer;
use serde::{Deserialize, Serialize};

/// The config file.
pub const CONFIG: &str = "node.json";
/// The log key file.
pub const LOG_KEY: &str = "log.key";
/// The TLS key file.
pub const TLS_KEY: &str = "tls.key";
/// The TLS certificate.
pub const TLS_CERT: &str = "tls.crt";
/// The creators file.
pub const CREATORS: &str = "creators";
/// The default SQLite database.
pub const DATABASE: &str = "node.db";

/// The name in the node's certificate (informational: clients pin the
/// fingerprint, never a name).
pub const CERT_NAME: &str = "backchannel-node";

/// The version of `node.json` this build writes and reads.
pub const CONFIG_VERSION: u32 = 1;

/// The largest config, certificate or creators file read: they are small
/// text files, and the limit only stops a wrong path from being read into
/// memory. 4 MiB of creators is some 60,000 keys.
const MAX_FILE_LEN: u64 = 4 << 20;

/// What a new creators file says.
const CREATORS_HEADER: &str = "\
# Keys allowed to open talks on this node: one Ed25519 public key per line,
# 64 hex digits. Add one with `backchannel node creators add`.
";

/// `node.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// [`CONFIG_VERSION`].
    pub version: u32,
    /// The node's origin ([`NodeOrigin`]).
    pub origin: String,
    /// The public half of `log.key`, hex.
    pub log_key: String,
}

/// A node directory.
#[derive(Debug, Clone)]
pub struct NodeDir {
    root: PathBuf,
}

impl NodeDir {
    /// The node directory at `root` (nothing is read yet).
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_owned(),
        }
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The path of `name` in the directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// Reads and checks `node.json`.
    pub fn config(&self) -> anyhow::Result<(Config, NodeOrigin, PublicKey)> {
        let path = self.path(CONFIG);
        if !path.exists() {
            bail!(
                "{} holds no node ({CONFIG} is missing); create one with `backchannel node init \
                 --dir {} --origin <ORIGIN>`, or pass the right --dir",
                self.root.display(),
                self.root.display()
            );
        }
        let bytes = read_small(&path)?;
        let broken = |what: String| {
            anyhow!(
                "{} is not a valid node config: {what}; restore it from a backup, or fix it by hand",
                path.display()
            )
        };
        let config: Config = serde_json::from_slice(&bytes).map_err(|e| broken(e.to_string()))?;
        if config.version != CONFIG_VERSION {
            bail!(
                "{} has format version {}, and this build knows only version {CONFIG_VERSION}; \
                 run the version of backchannel that made it",
                path.display(),
                config.version
            );
        }
        let origin = NodeOrigin::new(&config.origin)
            .map_err(|e| broken(format!("origin {:?}: {e}", config.origin)))?;
        let log_key = parse_key(&config.log_key).map_err(|e| broken(format!("log_key: {e}")))?;
        Ok((config, origin, log_key))
    }

    /// Writes `node.json` (atomically; replacing one only if `force`).
    pub fn write_config(&self, config: &Config, force: bool) -> anyhow::Result<()> {
        let mut json = serde_json::to_vec_pretty(config).context("encoding node.json")?;
        json.push(b'\n');
        write_atomic(&self.path(CONFIG), &json, force)
    }

    /// The TLS certificate's fingerprint, from `tls.crt`.
    pub fn fingerprint(&self) -> anyhow::Result<Fingerprint> {
        let bytes = read_small(&self.path(TLS_CERT))?;
        Ok(Fingerprint::of(&CertificateDer::from(bytes)))
    }

    /// Opens `log.key`, checking its kind and that it is the key
    /// `node.json` names.
    pub fn open_log_key(
        &self,
        passphrase: &SecretString,
        expected: &PublicKey,
    ) -> anyhow::Result<FileSigner> {
        let path = self.path(LOG_KEY);
        let signer = FileSigner::open(&path, passphrase)?;
        check_kind(&path, signer.kind(), KeyKind::Log)?;
        if signer.public_key() != *expected {
            bail!(
                "{} holds the log key {}, but {CONFIG} names {}; the directory mixes files of \
                 two nodes: restore the matching files from a backup",
                path.display(),
                hex::encode(signer.public_key().as_bytes()),
                hex::encode(expected.as_bytes())
            );
        }
        Ok(signer)
    }

    /// Opens `tls.key` and pairs it with the certificate stored in
    /// `tls.crt` (whose fingerprint clients pinned), checking that the
    /// certificate is for that key.
    pub fn open_identity(&self, passphrase: &SecretString) -> anyhow::Result<Identity> {
        let path = self.path(TLS_KEY);
        let key = KeyFile::open(&path, passphrase)?;
        check_kind(&path, key.kind(), KeyKind::NodeTls)?;
        let cert_path = self.path(TLS_CERT);
        let stored = read_small(&cert_path)?;
        let fingerprint = Fingerprint::of(&CertificateDer::from(stored.as_slice()));
        Identity::from_parts(key.secret_key(), stored).map_err(|e| {
            anyhow!(
                "{} (fingerprint {}) does not go with {}: {e}; restore the matching tls.crt \
                 and tls.key from a backup, or run `backchannel node init --force` and have \
                 clients pin the new fingerprint",
                cert_path.display(),
                fingerprint.to_hex(),
                path.display()
            )
        })
    }

    /// Reads the creators file.
    pub fn creators(&self) -> anyhow::Result<Vec<PublicKey>> {
        let path = self.path(CREATORS);
        let bytes = read_small(&path)?;
        let text = std::str::from_utf8(&bytes).map_err(|_| {
            anyhow!(
                "{} is not UTF-8 text; it holds one hex public key per line",
                path.display()
            )
        })?;
        parse_creators(text).map_err(|e| {
            anyhow!(
                "{} line {}: {}; fix or remove that line (one hex Ed25519 public key per line, \
                 `#` starts a comment)",
                path.display(),
                e.line,
                e.reason
            )
        })
    }

    /// Writes an empty creators file, unless one exists.
    pub fn create_creators(&self) -> anyhow::Result<()> {
        let path = self.path(CREATORS);
        if path.exists() {
            return Ok(());
        }
        write_atomic(&path, CREATORS_HEADER.as_bytes(), false)
    }

    /// Appends `key` to the creators file; `false` if it is there already.
    pub fn add_creator(&self, key: &PublicKey) -> anyhow::Result<bool> {
        if self.creators()?.contains(key) {
            return Ok(false);
        }
        let path = self.path(CREATORS);
        let bytes = read_small(&path)?;
        let mut line = String::new();
        if !bytes.is_empty() && !bytes.ends_with(b"\n") {
            line.push('\n');
        }
        line.push_str(&hex::encode(key.as_bytes()));
        line.push('\n');
        let cannot = |e: io::Error| {
            anyhow!(
                "cannot append to {}: {e}; check the file's permissions",
                path.display()
            )
        };
        let mut file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(cannot)?;
        file.write_all(line.as_bytes()).map_err(cannot)?;
        file.sync_all().map_err(cannot)?;
        Ok(true)
    }
}

/// A creators file line that is not a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatorsLineError {
    /// The line number, from 1.
    pub line: usize,
    /// What is wrong.
    pub reason: String,
}

/// Parses a creators file: one hex key per line; `#` starts a comment;
/// blank lines are ignored; a key listed twice counts once.
pub fn parse_creators(text: &str) -> Result<Vec<PublicKey>, CreatorsLineError> {
    let mut keys = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let content = line.split('#').next().unwrap_or_default().trim();
        if content.is_empty() {
            continue;
        }
        let key = parse_key(content).map_err(|reason| CreatorsLineError {
            line: i + 1,
            reason,
        })?;
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    Ok(keys)
}

/// Parses an Ed25519 public key from 64 hex digits.
pub fn parse_key(s: &str) -> Result<PublicKey, String> {
    let bytes = hex::decode(s).map_err(|_| format!("{s:?} is not a public key (64 hex digits)"))?;
    PublicKey::from_bytes(&bytes)
        .map_err(|e| format!("{s:?} is not a valid Ed25519 public key ({e})"))
}

fn check_kind(path: &Path, found: KeyKind, want: KeyKind) -> anyhow::Result<()> {
    if found != want {
        bail!(
            "{} holds a {found} key where the node's {want} key belongs; restore the node's \
             own {} from a backup",
            path.display(),
            path.file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
        );
    }
    Ok(())
}

/// Reads a small file (at most [`MAX_FILE_LEN`]).
pub fn read_small(path: &Path) -> anyhow::Result<Vec<u8>> {
    use std::io::Read as _;
    let cannot = |e: io::Error| anyhow!("cannot read {}: {e}", path.display());
    let mut bytes = Vec::new();
    File::open(path)
        .map_err(cannot)?
        .take(MAX_FILE_LEN + 1)
        .read_to_end(&mut bytes)
        .map_err(cannot)?;
    if bytes.len() as u64 > MAX_FILE_LEN {
        bail!(
            "{} is larger than {MAX_FILE_LEN} bytes; is it the right file?",
            path.display()
        );
    }
    Ok(bytes)
}

/// Writes `bytes` to `path` through a temporary file in the same
/// directory, `fsync` and a rename, so a crash leaves the old file or the
/// new one. An existing file is replaced only if `force`.
pub fn write_atomic(path: &Path, bytes: &[u8], force: bool) -> anyhow::Result<()> {
    if !force && path.exists() {
        bail!(
            "{} already exists; pass --force to replace it",
            path.display()
        );
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| anyhow!("{} is not a file path", path.display()))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".{}.tmp", std::process::id()));
    let tmp = dir.join(tmp_name);
    let cannot = |p: &Path, e: io::Error| anyhow!("cannot write {}: {e}", p.display());
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(|e| cannot(&tmp, e))?;
        file.write_all(bytes).map_err(|e| cannot(&tmp, e))?;
        file.sync_all().map_err(|e| cannot(&tmp, e))?;
        fs::rename(&tmp, path).map_err(|e| cannot(path, e))?;
        sync_dir(&dir).map_err(|e| cannot(&dir, e))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
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

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";
    const OTHER: &str = "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c";

    fn check(text: &str, want: Result<Vec<&str>, usize>) {
        let got = parse_creators(text)
            .map(|keys| {
                keys.iter()
                    .map(|k| hex::encode(k.as_bytes()))
                    .collect::<Vec<_>>()
            })
            .map_err(|e| e.line);
        let want = want.map(|keys| keys.into_iter().map(str::to_owned).collect::<Vec<_>>());
        assert_eq!(got, want, "{text:?}");
    }

    #[test]
    fn creators_files_parse_line_by_line() {
        check("", Ok(vec![]));
        check(CREATORS_HEADER, Ok(vec![]));
        check(&format!("{KEY}\n"), Ok(vec![KEY]));
        check(
            &format!("# a\n\n  {KEY}  # the mediator\n{OTHER}"),
            Ok(vec![KEY, OTHER]),
        );
        check(&format!("{KEY}\r\n{OTHER}\r\n"), Ok(vec![KEY, OTHER]));
        check(&format!("{KEY}\n{KEY}\n"), Ok(vec![KEY]));
        // Errors name the line.
        check(&format!("{KEY}\nnot hex\n"), Err(2));
        check(&format!("# c\n\n{}\n", &KEY[..62]), Err(3));
        // Not a canonical point, and a point of small order (the identity).
        check(&format!("{}\n", "ff".repeat(32)), Err(1));
        check(&format!("01{}\n", "00".repeat(31)), Err(1));
    }
}
