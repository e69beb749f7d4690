//! Domain-separation contexts.

/// A domain-separation string, prefixed to every signed or hashed message.
///
/// The set of contexts is fixed by the crates that define them and is
/// **prefix-free** (no context is a prefix of another; a test in
/// `backchannel-statement` checks the whole set), so `context ‖ message` is
/// unambiguous without a separator. `docs/formats.md` lists every context.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Context(&'static str);

impl Context {
    /// The empty context, for the one kind of message signed bare: C2SP
    /// signed notes (checkpoints, and `cosignature/v1` messages), whose
    /// signatures other C2SP tools must verify. They stay separated from
    /// every other context because a note's text begins with its origin, and
    /// `backchannel-tlog` refuses any origin that begins with `backchannel/`,
    /// while every other signed message begins with `backchannel/v1/`.
    pub const C2SP_SIGNED_NOTE: Context = Context("");

    /// Declares a context. It must start with `backchannel/v1/` and hold only
    /// lower-case ASCII letters, digits, `-` and `/`; a violation fails to compile when
    /// used in a `const`.
    pub const fn new(s: &'static str) -> Self {
        let b = s.as_bytes();
        let prefix = b"backchannel/v1/";
        assert!(b.len() > prefix.len(), "context too short");
        let mut i = 0;
        while i < prefix.len() {
            assert!(b[i] == prefix[i], "context must start with backchannel/v1/");
            i += 1;
        }
        while i < b.len() {
            let c = b[i];
            assert!(
                c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'/',
                "context may hold only a-z, 0-9, '-' and '/'"
            );
            i += 1;
        }
        Self(s)
    }

    /// The context string.
    pub const fn as_str(&self) -> &'static str {
        self.0
    }

    /// The context's bytes.
    pub const fn as_bytes(&self) -> &'static [u8] {
        self.0.as_bytes()
    }
}

impl std::fmt::Display for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}
