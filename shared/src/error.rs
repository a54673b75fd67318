//! Errors found while decoding packets.

/// Why a line or a list block could not be decoded. Each maps to a `reason=` code of
/// `ERROR-MALFORMED` (see PROTOCOL.md §2), except `LineTooLong`, which has its own packet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    #[error("a `%` is not followed by two hex digits")]
    BadEscape,
    #[error("a value does not decode to valid UTF-8")]
    InvalidUtf8,
    #[error("the verb is not [A-Z0-9-]+")]
    BadVerb,
    #[error("a key is not [a-z0-9-]+")]
    BadKey,
    #[error("a field is not key=value")]
    BadField,
    #[error("the key `{0}` appears more than once")]
    DuplicateKey(String),
    #[error("a list block ended without `]`")]
    UnterminatedList,
    #[error("a list block follows a packet that carries none")]
    UnexpectedList,
    #[error("`{0}` must be followed by a list block")]
    MissingList(String),
    #[error("a list block has more than {0} records")]
    ListTooLong(usize),
    #[error("the line is longer than {0} bytes")]
    LineTooLong(usize),
    #[error("a value contains a raw control character")]
    BadValue,
}

impl PacketError {
    /// The `reason=` code of `ERROR-MALFORMED` for this error.
    pub fn reason(&self) -> &'static str {
        match self {
            PacketError::BadEscape => "bad-escape",
            PacketError::InvalidUtf8 => "invalid-utf8",
            PacketError::BadVerb => "bad-verb",
            PacketError::BadKey => "bad-key",
            PacketError::BadField => "bad-field",
            PacketError::DuplicateKey(_) => "duplicate-key",
            PacketError::UnterminatedList => "unterminated-list",
            PacketError::UnexpectedList => "unexpected-list",
            PacketError::MissingList(_) => "missing-list",
            PacketError::ListTooLong(_) => "list-too-long",
            PacketError::LineTooLong(_) => "line-too-long",
            PacketError::BadValue => "bad-value",
        }
    }
}

/// Errors of the codec: a recoverable packet error is an item, I/O ends the stream.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
}
