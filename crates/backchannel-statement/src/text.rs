//! Structured text: the only form in which statements carry prose.
//!
//! A text is a tree of numbered units with stable ids; each unit holds one or
//! more BCP 47 language-tagged strings. Every string is UTF-8 in Unicode
//! Normalization Form C. Bidirectional *override* and *isolate* controls
//! (U+202A–U+202E, U+2066–U+2069) are rejected, because they can make the
//! text a person sees differ from the bytes they sign; ZERO WIDTH NON-JOINER
//! (U+200C) is kept, because Persian spelling needs it. [`confusables`]
//! flags look-alike characters for any view of text about to be signed.

use backchannel_codec::{Decode, DecodeError, Encode, Reader, Writer};
use thiserror::Error;
use unicode_normalization::{IsNormalized, UnicodeNormalization, is_nfc_quick};

/// The most bytes one string of a unit may hold (64 KiB: a long article of
/// a treaty is a few KiB; more is a sign of abuse).
pub const MAX_STRING_BYTES: usize = 64 * 1024;
/// The most units one text may hold, counted over the whole tree.
pub const MAX_UNITS: usize = 10_000;
/// The deepest nesting of units (article › paragraph › sub-paragraph › … ).
pub const MAX_DEPTH: usize = 8;
/// The most language versions of one unit.
pub const MAX_LANGUAGES: usize = 8;
/// The longest unit number label ("12.3(b)(iv)").
pub const MAX_LABEL_BYTES: usize = 32;
/// The longest BCP 47 tag this format accepts (RFC 5646 §4.4.1 advises
/// that 35 characters hold every tag in practical use).
pub const MAX_LANGUAGE_TAG: usize = 35;

/// Why a text was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TextError {
    /// A string is not in Normalization Form C.
    #[error("text is not in Unicode NFC; normalize it before signing")]
    NotNfc,
    /// A bidi override or isolate control was found.
    #[error("text contains the bidirectional control U+{0:04X}, which can hide what is signed")]
    BidiControl(u32),
    /// Another control character (other than tab and newline) was found.
    #[error("text contains the control character U+{0:04X}")]
    ControlCharacter(u32),
    /// A language tag is not a well-formed BCP 47 tag.
    #[error("{0:?} is not a well-formed BCP 47 language tag")]
    BadLanguageTag(String),
    /// A limit was exceeded.
    #[error("{what} exceeds its limit of {max}")]
    TooLarge {
        /// What was too large.
        what: &'static str,
        /// The limit.
        max: usize,
    },
    /// Two units share an id, or one unit has two strings in one language.
    #[error("duplicate {0}")]
    Duplicate(&'static str),
    /// A unit has no strings.
    #[error("unit {0} holds no text")]
    EmptyUnit(u32),
}

/// Checks one string: NFC, no bidi override/isolate controls, no other
/// control characters except tab and line feed.
pub fn check_string(s: &str) -> Result<(), TextError> {
    if s.len() > MAX_STRING_BYTES {
        return Err(TextError::TooLarge {
            what: "a string",
            max: MAX_STRING_BYTES,
        });
    }
    for c in s.chars() {
        let cp = c as u32;
        if (0x202A..=0x202E).contains(&cp) || (0x2066..=0x2069).contains(&cp) {
            return Err(TextError::BidiControl(cp));
        }
        if c.is_control() && c != '\n' && c != '\t' {
            return Err(TextError::ControlCharacter(cp));
        }
    }
    let nfc = match is_nfc_quick(s.chars()) {
        IsNormalized::Yes => true,
        IsNormalized::No => false,
        IsNormalized::Maybe => s.nfc().eq(s.chars()),
    };
    if nfc { Ok(()) } else { Err(TextError::NotNfc) }
}

/// A well-formed BCP 47 language tag (RFC 5646 §2.1 syntax, checked
/// structurally: a 2–3 or 5–8 letter primary subtag, then 1–8 character
/// alphanumeric subtags), stored in its canonical case (lower case, region
/// upper case, script title case).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LanguageTag(String);

impl LanguageTag {
    /// Parses and canonicalises a tag such as `fa`, `ar-OM` or `en-Latn-US`.
    pub fn new(tag: &str) -> Result<Self, TextError> {
        let bad = || TextError::BadLanguageTag(tag.to_owned());
        if tag.is_empty() || tag.len() > MAX_LANGUAGE_TAG || !tag.is_ascii() {
            return Err(bad());
        }
        let mut out = Vec::new();
        for (i, sub) in tag.split('-').enumerate() {
            if sub.is_empty() || sub.len() > 8 || !sub.chars().all(|c| c.is_ascii_alphanumeric()) {
                return Err(bad());
            }
            if i == 0 {
                let ok_len = matches!(sub.len(), 2 | 3 | 5..=8);
                if !ok_len || !sub.chars().all(|c| c.is_ascii_alphabetic()) {
                    return Err(bad());
                }
                out.push(sub.to_ascii_lowercase());
            } else if sub.len() == 2 && sub.chars().all(|c| c.is_ascii_alphabetic()) {
                out.push(sub.to_ascii_uppercase());
            } else if sub.len() == 4 && sub.chars().all(|c| c.is_ascii_alphabetic()) {
                let lower = sub.to_ascii_lowercase();
                let mut s = lower[..1].to_ascii_uppercase();
                s.push_str(&lower[1..]);
                out.push(s);
            } else {
                out.push(sub.to_ascii_lowercase());
            }
        }
        Ok(Self(out.join("-")))
    }

    /// The canonical tag.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A string in one language.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LangString {
    language: LanguageTag,
    text: String,
}

impl LangString {
    /// Checks `text` (see [`check_string`]).
    pub fn new(language: LanguageTag, text: impl Into<String>) -> Result<Self, TextError> {
        let text = text.into();
        check_string(&text)?;
        Ok(Self { language, text })
    }

    /// The language.
    pub fn language(&self) -> &LanguageTag {
        &self.language
    }

    /// The text.
    pub fn text(&self) -> &str {
        &self.text
    }
}

/// A stable unit id: assigned when a unit is created, never reused within
/// one text, kept through renumbering and redrafting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UnitId(pub u32);

/// One numbered unit of a text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unit {
    /// Stable id.
    pub id: UnitId,
    /// The number shown ("1", "2.3", "(b)"); may change, the id does not.
    pub label: String,
    /// The unit's text, one string per language, sorted by language tag.
    pub strings: Vec<LangString>,
    /// Sub-units, in order.
    pub children: Vec<Unit>,
}

/// A tree of units: the body of a position, a draft, an agreement.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StructuredText {
    units: Vec<Unit>,
}

impl StructuredText {
    /// Checks the whole tree: limits, unique ids, one string per language
    /// per unit (sorted), every string checked.
    pub fn new(units: Vec<Unit>) -> Result<Self, TextError> {
        let mut ids = Vec::new();
        for u in &units {
            check_unit(u, 1, &mut ids)?;
        }
        ids.sort_unstable();
        if ids.windows(2).any(|w| w[0] == w[1]) {
            return Err(TextError::Duplicate("unit id"));
        }
        Ok(Self { units })
    }

    /// A text of one unit in one language: the common case of a short statement.
    pub fn single(language: LanguageTag, text: &str) -> Result<Self, TextError> {
        Self::new(vec![Unit {
            id: UnitId(1),
            label: String::new(),
            strings: vec![LangString::new(language, text)?],
            children: Vec::new(),
        }])
    }

    /// The top-level units.
    pub fn units(&self) -> &[Unit] {
        &self.units
    }

    /// Every string of the text, depth first.
    pub fn strings(&self) -> Vec<&LangString> {
        fn walk<'a>(u: &'a Unit, out: &mut Vec<&'a LangString>) {
            out.extend(u.strings.iter());
            for c in &u.children {
                walk(c, out);
            }
        }
        let mut out = Vec::new();
        for u in &self.units {
            walk(u, &mut out);
        }
        out
    }
}

fn check_unit(u: &Unit, depth: usize, ids: &mut Vec<UnitId>) -> Result<(), TextError> {
    if depth > MAX_DEPTH {
        return Err(TextError::TooLarge {
            what: "nesting depth",
            max: MAX_DEPTH,
        });
    }
    ids.push(u.id);
    if ids.len() > MAX_UNITS {
        return Err(TextError::TooLarge {
            what: "the number of units",
            max: MAX_UNITS,
        });
    }
    if u.label.len() > MAX_LABEL_BYTES {
        return Err(TextError::TooLarge {
            what: "a unit label",
            max: MAX_LABEL_BYTES,
        });
    }
    check_string(&u.label)?;
    if u.strings.is_empty() {
        return Err(TextError::EmptyUnit(u.id.0));
    }
    if u.strings.len() > MAX_LANGUAGES {
        return Err(TextError::TooLarge {
            what: "the languages of a unit",
            max: MAX_LANGUAGES,
        });
    }
    if u.strings.windows(2).any(|w| w[0].language >= w[1].language) {
        return Err(TextError::Duplicate("language in a unit (or not sorted)"));
    }
    for s in &u.strings {
        check_string(&s.text)?;
    }
    for c in &u.children {
        check_unit(c, depth + 1, ids)?;
    }
    Ok(())
}

fn text_err(e: TextError) -> DecodeError {
    DecodeError::Invalid {
        field: "structured text",
        reason: match e {
            TextError::NotNfc => "not NFC",
            TextError::BidiControl(_) => "bidi control character",
            TextError::ControlCharacter(_) => "control character",
            TextError::BadLanguageTag(_) => "bad language tag",
            TextError::TooLarge { .. } => "over a limit",
            TextError::Duplicate(_) => "duplicate unit id or language",
            TextError::EmptyUnit(_) => "empty unit",
        },
    }
}

impl Encode for StructuredText {
    fn encode(&self, w: &mut Writer) {
        fn unit(u: &Unit, w: &mut Writer) {
            w.u32(u.id.0);
            w.text(&u.label);
            w.len(u.strings.len());
            for s in &u.strings {
                w.text(s.language.as_str());
                w.text(&s.text);
            }
            w.len(u.children.len());
            for c in &u.children {
                unit(c, w);
            }
        }
        w.len(self.units.len());
        for u in &self.units {
            unit(u, w);
        }
    }
}

impl Decode for StructuredText {
    const MIN_LEN: usize = 4;
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        fn unit(r: &mut Reader<'_>, depth: usize, count: &mut usize) -> Result<Unit, DecodeError> {
            *count += 1;
            if depth > MAX_DEPTH || *count > MAX_UNITS {
                return Err(text_err(TextError::TooLarge {
                    what: "text",
                    max: MAX_UNITS,
                }));
            }
            let id = UnitId(r.u32("unit id")?);
            let label = r.text("unit label", MAX_LABEL_BYTES)?.to_owned();
            let n = r.len("unit strings", MAX_LANGUAGES, 8)?;
            let mut strings = Vec::with_capacity(n);
            for _ in 0..n {
                let tag = r.text("language tag", MAX_LANGUAGE_TAG)?;
                let language = LanguageTag::new(tag).map_err(text_err)?;
                if language.as_str() != tag {
                    return Err(DecodeError::Invalid {
                        field: "language tag",
                        reason: "not in canonical case",
                    });
                }
                let text = r.text("unit text", MAX_STRING_BYTES)?;
                strings.push(LangString::new(language, text).map_err(text_err)?);
            }
            let n = r.len("unit children", MAX_UNITS, 16)?;
            let mut children = Vec::with_capacity(n);
            for _ in 0..n {
                children.push(unit(r, depth + 1, count)?);
            }
            Ok(Unit {
                id,
                label,
                strings,
                children,
            })
        }
        let n = r.len("units", MAX_UNITS, 16)?;
        let mut units = Vec::with_capacity(n);
        let mut count = 0;
        for _ in 0..n {
            units.push(unit(r, 1, &mut count)?);
        }
        StructuredText::new(units).map_err(text_err)
    }
}

/// A character that a reader could take for another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confusable {
    /// Byte offset in the string.
    pub offset: usize,
    /// The character found.
    pub found: char,
    /// What it may be taken for.
    pub looks_like: char,
    /// Why it matters.
    pub note: &'static str,
}

/// Arabic and Persian letters that render alike but are different code
/// points: a text signed in one and shown in the other is a different text.
const ARABIC_PERSIAN: &[(char, char, &str)] = &[
    (
        '\u{064A}',
        '\u{06CC}',
        "Arabic yeh (ي) where Persian yeh (ی) is usual",
    ),
    (
        '\u{06CC}',
        '\u{064A}',
        "Persian yeh (ی) where Arabic yeh (ي) is usual",
    ),
    (
        '\u{0643}',
        '\u{06A9}',
        "Arabic kaf (ك) where Persian keheh (ک) is usual",
    ),
    (
        '\u{06A9}',
        '\u{0643}',
        "Persian keheh (ک) where Arabic kaf (ك) is usual",
    ),
    (
        '\u{0649}',
        '\u{06CC}',
        "Arabic alef maksura (ى) looks like Persian yeh (ی)",
    ),
];

/// Cyrillic and Greek letters that look like Latin ones.
const LATIN_LOOKALIKES: &[(char, char)] = &[
    ('а', 'a'),
    ('е', 'e'),
    ('о', 'o'),
    ('р', 'p'),
    ('с', 'c'),
    ('у', 'y'),
    ('х', 'x'),
    ('і', 'i'),
    ('ј', 'j'),
    ('ѕ', 's'),
    ('һ', 'h'),
    ('ԁ', 'd'),
    ('ԛ', 'q'),
    ('ԝ', 'w'),
    ('А', 'A'),
    ('В', 'B'),
    ('Е', 'E'),
    ('К', 'K'),
    ('М', 'M'),
    ('Н', 'H'),
    ('О', 'O'),
    ('Р', 'P'),
    ('С', 'C'),
    ('Т', 'T'),
    ('Х', 'X'),
    ('І', 'I'),
    ('Ј', 'J'),
    ('Ѕ', 'S'),
    ('Α', 'A'),
    ('Β', 'B'),
    ('Ε', 'E'),
    ('Ζ', 'Z'),
    ('Η', 'H'),
    ('Ι', 'I'),
    ('Κ', 'K'),
    ('Μ', 'M'),
    ('Ν', 'N'),
    ('Ο', 'O'),
    ('Ρ', 'P'),
    ('Τ', 'T'),
    ('Υ', 'Y'),
    ('Χ', 'X'),
    ('ο', 'o'),
    ('ν', 'v'),
    ('α', 'a'),
];

/// Flags characters a reader could mistake for others, for any view of
/// text about to be signed:
/// - in a string tagged Persian (`fa`…), the Arabic forms of yeh and kaf,
///   and in one tagged Arabic (`ar`…), the Persian forms; in any other, both
///   when the string mixes them;
/// - Cyrillic or Greek look-alikes of Latin letters in a string that also
///   holds Latin letters (mixed-script words are the classic spoof).
pub fn confusables(s: &LangString) -> Vec<Confusable> {
    let lang = s.language.as_str();
    let primary = lang.split('-').next().unwrap_or("");
    let text = &s.text;
    let mut out = Vec::new();
    let has = |c: char| text.contains(c);
    let mixed_arabic = (has('\u{064A}') || has('\u{0643}')) && (has('\u{06CC}') || has('\u{06A9}'));
    for (offset, c) in text.char_indices() {
        for &(found, looks_like, note) in ARABIC_PERSIAN {
            if c != found {
                continue;
            }
            let persian_form = matches!(c, '\u{06CC}' | '\u{06A9}');
            let flag = match primary {
                "fa" | "prs" | "tg" => !persian_form,
                "ar" => persian_form,
                _ => mixed_arabic,
            };
            if flag {
                out.push(Confusable {
                    offset,
                    found,
                    looks_like,
                    note,
                });
            }
        }
    }
    let has_latin = text.chars().any(|c| c.is_ascii_alphabetic());
    if has_latin {
        for (offset, c) in text.char_indices() {
            if let Some(&(found, looks_like)) = LATIN_LOOKALIKES.iter().find(|(f, _)| *f == c) {
                out.push(Confusable {
                    offset,
                    found,
                    looks_like,
                    note: "non-Latin letter that looks like a Latin one, in Latin text",
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag(t: &str) -> LanguageTag {
        LanguageTag::new(t).unwrap_or_else(|e| panic!("{e}"))
    }

    fn check(input: &str, expect: Result<(), TextError>) {
        assert_eq!(check_string(input), expect, "input {input:?}");
    }

    #[test]
    fn strings() {
        check("Red Sea shipping", Ok(()));
        // Persian with ZERO WIDTH NON-JOINER (می‌خواهیم) is kept.
        check("می\u{200C}خواهیم", Ok(()));
        check("a\u{202E}b", Err(TextError::BidiControl(0x202E)));
        check("a\u{2066}b", Err(TextError::BidiControl(0x2066)));
        check("a\u{2069}b", Err(TextError::BidiControl(0x2069)));
        check("a\u{202A}b", Err(TextError::BidiControl(0x202A)));
        // "é" as e + combining acute is not NFC.
        check("e\u{0301}", Err(TextError::NotNfc));
        check("\u{00e9}", Ok(()));
        check("a\u{0007}", Err(TextError::ControlCharacter(7)));
        check("line\nnext\tcol", Ok(()));
    }

    #[test]
    fn language_tags() {
        assert_eq!(tag("EN-us").as_str(), "en-US");
        assert_eq!(tag("fa").as_str(), "fa");
        assert_eq!(tag("sr-latn-rs").as_str(), "sr-Latn-RS");
        for bad in ["", "e", "englishlanguage", "en_US", "1a", "en--US", "ع"] {
            assert!(LanguageTag::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn confusables_are_flagged() {
        let persian_with_arabic_yeh = LangString::new(tag("fa"), "آزادي").expect("valid");
        let flags = confusables(&persian_with_arabic_yeh);
        assert_eq!(flags.len(), 1);
        assert_eq!(flags[0].found, '\u{064A}');
        let clean = LangString::new(tag("fa"), "آزادی").expect("valid");
        assert!(confusables(&clean).is_empty());
        let arabic_with_persian_keheh = LangString::new(tag("ar"), "کتاب").expect("valid");
        assert_eq!(confusables(&arabic_with_persian_keheh)[0].found, '\u{06A9}');
        // "Oman" with a Cyrillic О.
        let spoof = LangString::new(tag("en"), "\u{041E}man").expect("valid");
        assert_eq!(confusables(&spoof)[0].looks_like, 'O');
        let plain = LangString::new(tag("en"), "Oman").expect("valid");
        assert!(confusables(&plain).is_empty());
        // All-Cyrillic text is not flagged.
        let russian = LangString::new(tag("ru"), "море").expect("valid");
        assert!(confusables(&russian).is_empty());
    }

    #[test]
    fn trees_round_trip_and_reject_duplicates() {
        let unit = |id, children| Unit {
            id: UnitId(id),
            label: format!("{id}"),
            strings: vec![
                LangString::new(tag("en"), "text").expect("valid"),
                LangString::new(tag("fa"), "متن").expect("valid"),
            ],
            children,
        };
        let t = StructuredText::new(vec![unit(1, vec![unit(2, vec![])]), unit(3, vec![])])
            .expect("valid tree");
        let bytes = t.to_canonical_bytes();
        assert_eq!(StructuredText::from_canonical_bytes(&bytes), Ok(t));
        assert_eq!(
            StructuredText::new(vec![unit(1, vec![unit(1, vec![])])]),
            Err(TextError::Duplicate("unit id"))
        );
        let mut deep = unit(100, vec![]);
        for i in 0..MAX_DEPTH as u32 {
            deep = unit(i, vec![deep]);
        }
        assert!(matches!(
            StructuredText::new(vec![deep]),
            Err(TextError::TooLarge { .. })
        ));
    }
}
