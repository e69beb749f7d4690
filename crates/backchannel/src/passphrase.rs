//! The passphrase of the node's key files (or of the participant's home):
//! from `--passphrase-file`, or else from `BACKCHANNEL_NODE_PASSPHRASE`
//! (`BACKCHANNEL_PASSPHRASE`). Never from the command line,
//! where every user of the machine could read it in the process list.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use age::secrecy::SecretString;
use anyhow::{anyhow, bail};
use zeroize::Zeroizing;

use crate::cli::{HOME_PASSPHRASE_ENV, HomePassphraseArgs, NODE_PASSPHRASE_ENV, PassphraseArgs};

/// The longest passphrase file read: a passphrase is a line, and the limit
/// only stops a wrong path (a disk image) from being read into memory.
const MAX_PASSPHRASE_FILE_LEN: u64 = 4096;

/// The passphrase of the node's key files, from the file if one is named,
/// else the environment.
pub fn resolve(args: &PassphraseArgs) -> anyhow::Result<SecretString> {
    resolve_from(
        args.passphrase_file.as_deref(),
        NODE_PASSPHRASE_ENV,
        "the node's key files",
    )
}

/// The passphrase of the participant's home, from the file if one is
/// named, else `BACKCHANNEL_PASSPHRASE`.
pub fn resolve_home(args: &HomePassphraseArgs) -> anyhow::Result<SecretString> {
    resolve_from(
        args.passphrase_file.as_deref(),
        HOME_PASSPHRASE_ENV,
        "the home",
    )
}

/// The passphrase of `what`: from `file` if given, else from the
/// environment variable `env`. Refuses an empty one.
fn resolve_from(file: Option<&Path>, env: &str, what: &str) -> anyhow::Result<SecretString> {
    let passphrase = match file {
        Some(path) => read_file(path)?,
        None => match std::env::var(env) {
            Ok(value) => Zeroizing::new(value),
            Err(std::env::VarError::NotPresent) => bail!(
                "no passphrase for {what}: set {env}, or pass --passphrase-file <FILE> naming a \
                 file that holds it"
            ),
            Err(std::env::VarError::NotUnicode(_)) => {
                bail!("{env} is not valid UTF-8; set it to the passphrase of {what}")
            }
        },
    };
    if passphrase.is_empty() {
        bail!(
            "the passphrase of {what} is empty; set {env} or the --passphrase-file to a \
             non-empty passphrase"
        );
    }
    Ok(SecretString::from(passphrase.as_str().to_owned()))
}

/// Reads a passphrase file, without one trailing newline (`\n` or `\r\n`).
fn read_file(path: &Path) -> anyhow::Result<Zeroizing<String>> {
    let cannot_read = |e: std::io::Error| {
        anyhow!(
            "cannot read the passphrase file {}: {e}; check --passphrase-file",
            path.display()
        )
    };
    let mut bytes = Zeroizing::new(Vec::new());
    File::open(path)
        .map_err(cannot_read)?
        .take(MAX_PASSPHRASE_FILE_LEN + 1)
        .read_to_end(&mut bytes)
        .map_err(cannot_read)?;
    if bytes.len() as u64 > MAX_PASSPHRASE_FILE_LEN {
        bail!(
            "the passphrase file {} is longer than {MAX_PASSPHRASE_FILE_LEN} bytes; is it the \
             right file?",
            path.display()
        );
    }
    let text = std::str::from_utf8(&bytes).map_err(|_| {
        anyhow!(
            "the passphrase file {} is not UTF-8 text; write the passphrase as text",
            path.display()
        )
    })?;
    let text = text
        .strip_suffix('\n')
        .map_or(text, |t| t.strip_suffix('\r').unwrap_or(t));
    Ok(Zeroizing::new(text.to_owned()))
}

#[cfg(test)]
mod tests {
    // Test code: a panic is the failure report.
    #![allow(clippy::unwrap_used)]

    use age::secrecy::ExposeSecret;

    use super::*;

    fn check(contents: &[u8], want: Option<&str>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pass");
        std::fs::write(&path, contents).unwrap();
        let args = PassphraseArgs {
            passphrase_file: Some(path),
        };
        let got = resolve(&args).ok();
        assert_eq!(
            got.as_ref().map(|p| p.expose_secret()),
            want,
            "{contents:?}"
        );
    }

    #[test]
    fn one_trailing_newline_is_dropped() {
        check(b"correct horse", Some("correct horse"));
        check(b"correct horse\n", Some("correct horse"));
        check(b"correct horse\r\n", Some("correct horse"));
        check(b"correct horse\n\n", Some("correct horse\n"));
        check(b" spaced ", Some(" spaced "));
        check(b"", None);
        check(b"\n", None);
        check(b"\xff\xfe", None);
        check(&[b'a'; 5000], None);
    }
}
