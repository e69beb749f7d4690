//! The recovery sheet: a member's identity key as 24 words to print, made
//! when the key is (`members join --recovery-sheet`).
//!
//! The words are the BIP-39 English encoding of the key's 32-byte Ed25519
//! seed (256 bits and an 8-bit checksum, so a mistyped word is almost
//! always caught). Whoever holds the sheet holds the member's identity: it
//! re-issues the member key on a new home (`members join --from-sheet`),
//! whose device certificate the party's talks authority then seats. It is
//! as secret as the key — printed, kept offline, never photographed.
//! Without a sheet, the talks authority certifies a new identity key for
//! the same member after its own check (`members recover`), and the old
//! one is revoked.
//!
//! ```text
//! Backchannel recovery sheet (keep it printed and offline; it IS your identity key)
//! talks     <32 hex digits>
//! party     <name>
//! member    <name> (<principal, 32 hex digits>)
//! identity  <key id, 64 hex digits>
//! words:
//!  1 word    2 word    3 word    4 word
//!  …
//! ```
//!
//! [`parse`] reads the words after the `words:` line (or every word of a
//! file without one), ignoring the numbers; the `identity` line, when
//! present, must name the key the words give, and `talks` and `member` are
//! returned for the caller to check against its invitation.

use backchannel_codec::{PrincipalId, TalksId};
use backchannel_crypto::{SecretKey, Signer as _};
use thiserror::Error;
use zeroize::Zeroizing;

/// Words on a sheet.
pub const SHEET_WORDS: usize = 24;

/// The largest sheet read, in bytes.
pub const MAX_SHEET: usize = 16 * 1024;

/// The sheet for `identity`, the identity key of `member` (`principal`) of
/// `party` in `talks`.
pub fn sheet(
    talks: TalksId,
    party: &str,
    member: &str,
    principal: PrincipalId,
    identity: &SecretKey,
) -> Zeroizing<String> {
    let seed = identity.seed();
    // 32 bytes is a valid BIP-39 entropy length: this cannot fail.
    let words: Vec<&'static str> = match bip39::Mnemonic::from_entropy(&seed[..]) {
        Ok(m) => m.words().collect(),
        Err(_) => Vec::new(),
    };
    let mut out = Zeroizing::new(String::with_capacity(1024));
    out.push_str(
        "Backchannel recovery sheet (keep it printed and offline; it IS your identity key)\n",
    );
    out.push_str(&format!("talks     {}\n", talks.to_hex()));
    out.push_str(&format!("party     {}\n", one_line(party)));
    out.push_str(&format!(
        "member    {} ({})\n",
        one_line(member),
        principal.to_hex()
    ));
    out.push_str(&format!(
        "identity  {}\n",
        identity.public_key().id().to_hex()
    ));
    out.push_str("words:\n");
    for (i, w) in words.iter().enumerate() {
        out.push_str(&format!("{:>2} {:<9}", i + 1, w));
        out.push(if i % 4 == 3 { '\n' } else { ' ' });
    }
    out
}

/// Names on the sheet stay on their line.
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// What a sheet gives back.
pub struct Recovered {
    /// The identity key.
    pub identity: SecretKey,
    /// The talks the sheet names, if it does.
    pub talks: Option<TalksId>,
    /// The member's principal the sheet names, if it does.
    pub principal: Option<PrincipalId>,
}

/// Why a sheet does not read.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SheetError {
    /// Too long to be a sheet.
    #[error("it is longer than a recovery sheet ({MAX_SHEET} bytes)")]
    TooLong,
    /// Not 24 words.
    #[error("it has {0} words, not {SHEET_WORDS}; type every word of the sheet, in order")]
    WordCount(usize),
    /// A word not in the list.
    #[error("word {index} ({word:?}) is not a recovery word; check its spelling on the sheet")]
    UnknownWord {
        /// 1-based.
        index: usize,
        /// As typed.
        word: String,
    },
    /// The checksum does not match: a word is wrong or two are swapped.
    #[error(
        "the words do not check out (a word is wrong, or two are swapped); compare them with the sheet again"
    )]
    Checksum,
    /// The words give another key than the sheet's `identity` line.
    #[error("the words give the key {got}, but the sheet names {want}; a word is wrong")]
    OtherKey {
        /// From the words.
        got: String,
        /// From the sheet.
        want: String,
    },
    /// A header line does not read.
    #[error("its {0} line does not read; copy it as the sheet shows it, or leave it out")]
    Header(&'static str),
}

/// Reads a sheet (as [`sheet`] writes it, or its words alone).
pub fn parse(text: &str) -> Result<Recovered, SheetError> {
    if text.len() > MAX_SHEET {
        return Err(SheetError::TooLong);
    }
    let mut talks = None;
    let mut principal = None;
    let mut want: Option<String> = None;
    let mut words_text: Option<Zeroizing<String>> = None;
    let mut all_words = Zeroizing::new(String::new());
    for line in text.lines() {
        let trimmed = line.trim();
        if let Some(w) = words_text.as_mut() {
            w.push(' ');
            w.push_str(trimmed);
            continue;
        }
        if trimmed.eq_ignore_ascii_case("words:") {
            words_text = Some(Zeroizing::new(String::new()));
            continue;
        }
        let (head, rest) = trimmed
            .split_once(char::is_whitespace)
            .unwrap_or((trimmed, ""));
        let rest = rest.trim().to_ascii_lowercase();
        let rest = rest.as_str();
        match head.to_ascii_lowercase().as_str() {
            "talks" => {
                talks = Some(TalksId::from_hex(rest).map_err(|_| SheetError::Header("talks"))?);
            }
            "member" => {
                let hex = rest
                    .rsplit_once('(')
                    .and_then(|(_, h)| h.strip_suffix(')'))
                    .ok_or(SheetError::Header("member"))?;
                principal =
                    Some(PrincipalId::from_hex(hex).map_err(|_| SheetError::Header("member"))?);
            }
            "identity" => {
                let hex = rest.to_ascii_lowercase();
                if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
                    return Err(SheetError::Header("identity"));
                }
                want = Some(hex);
            }
            _ => {
                all_words.push(' ');
                all_words.push_str(trimmed);
            }
        }
    }
    let source = words_text.unwrap_or(all_words);
    let words: Zeroizing<Vec<String>> = Zeroizing::new(
        source
            .split_whitespace()
            .filter(|t| !t.chars().all(|c| c.is_ascii_digit()))
            .map(str::to_ascii_lowercase)
            .collect(),
    );
    if words.len() != SHEET_WORDS {
        return Err(SheetError::WordCount(words.len()));
    }
    let list = bip39::Language::English;
    for (i, w) in words.iter().enumerate() {
        if list.find_word(w).is_none() {
            return Err(SheetError::UnknownWord {
                index: i + 1,
                word: w.clone(),
            });
        }
    }
    let joined = Zeroizing::new(words.join(" "));
    let mnemonic =
        bip39::Mnemonic::parse_in_normalized(list, &joined).map_err(|_| SheetError::Checksum)?;
    let (entropy, len) = mnemonic.to_entropy_array();
    let entropy = Zeroizing::new(entropy);
    let seed: [u8; 32] = entropy[..len]
        .try_into()
        .map_err(|_| SheetError::WordCount(words.len()))?;
    let seed = Zeroizing::new(seed);
    // A seed whose key is of small order cannot come from a real key.
    let identity = SecretKey::from_seed(&seed).map_err(|_| SheetError::Checksum)?;
    let got = identity.public_key().id().to_hex();
    if let Some(want) = want
        && want != got
    {
        return Err(SheetError::OtherKey { got, want });
    }
    Ok(Recovered {
        identity,
        talks,
        principal,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SecretKey {
        SecretKey::from_seed(&[0x42; 32]).expect("a key")
    }

    fn written() -> String {
        sheet(
            TalksId([1; 16]),
            "United States",
            "US envoy",
            PrincipalId([2; 16]),
            &key(),
        )
        .to_string()
    }

    /// Each case: a change to the written sheet, and what reading it gives.
    fn check(edit: impl Fn(String) -> String, want: Result<(), SheetError>) {
        let got = parse(&edit(written())).map(|r| {
            assert_eq!(r.identity.public_key(), key().public_key());
            assert_eq!(r.talks, Some(TalksId([1; 16])));
            assert_eq!(r.principal, Some(PrincipalId([2; 16])));
        });
        assert_eq!(got, want);
    }

    #[test]
    fn sheets_read_back() {
        check(|s| s, Ok(()));
        check(|s| s.to_uppercase().replace("WORDS:", "words:"), Ok(()));
        // Words alone, without the header, give the key too.
        let words: String = written().split("words:").nth(1).expect("words").to_owned();
        let r = parse(&words).expect("words alone");
        assert_eq!(r.identity.public_key(), key().public_key());
        assert_eq!(r.talks, None);
    }

    #[test]
    fn bad_sheets_say_why() {
        let first_word = |s: &String| {
            s.split("words:")
                .nth(1)
                .unwrap()
                .split_whitespace()
                .nth(1)
                .unwrap()
                .to_owned()
        };
        check(
            |s| {
                let w = first_word(&s);
                s.replacen(&format!(" 1 {w}"), " 1 zzzz", 1)
            },
            Err(SheetError::UnknownWord {
                index: 1,
                word: "zzzz".into(),
            }),
        );
        check(
            |s| {
                let w = first_word(&s);
                let other = if w == "abandon" { "ability" } else { "abandon" };
                s.replacen(&format!(" 1 {w}"), &format!(" 1 {other}"), 1)
            },
            Err(SheetError::Checksum),
        );
        check(|s| format!("{s} extra"), Err(SheetError::WordCount(25)));
        check(
            |s| s.replace(&key().public_key().id().to_hex(), &"ab".repeat(32)),
            Err(SheetError::OtherKey {
                got: key().public_key().id().to_hex(),
                want: "ab".repeat(32),
            }),
        );
        check(
            |s| s.replace("talks     ", "talks     zz"),
            Err(SheetError::Header("talks")),
        );
        check(|_| "x".repeat(MAX_SHEET + 1), Err(SheetError::TooLong));
        check(|_| String::new(), Err(SheetError::WordCount(0)));
    }
}
