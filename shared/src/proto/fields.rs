//! Reading typed values out of a packet's fields.

use time::OffsetDateTime;

use crate::packet::{Fields, Packet};
use crate::timestamp;

/// A field that is missing or has the wrong shape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    #[error("the field `{0}` is required")]
    MissingField(&'static str),
    #[error("the field `{0}` has an invalid value")]
    BadValue(&'static str),
    #[error("`{0}` must carry a list block")]
    MissingList(&'static str),
}

impl ProtoError {
    /// The `reason=` code of `ERROR-MALFORMED`.
    pub fn reason(&self) -> &'static str {
        match self {
            ProtoError::MissingField(_) => "missing-field",
            ProtoError::BadValue(_) => "bad-value",
            ProtoError::MissingList(_) => "missing-list",
        }
    }

    /// The field the error is about.
    pub fn field(&self) -> &'static str {
        match self {
            ProtoError::MissingField(f) | ProtoError::BadValue(f) | ProtoError::MissingList(f) => f,
        }
    }
}

/// Typed access to a packet's (or a list record's) fields.
pub struct FieldReader<'a> {
    fields: &'a Fields,
    list: Option<&'a [Fields]>,
}

impl<'a> FieldReader<'a> {
    /// Reads a packet.
    pub fn new(packet: &'a Packet) -> FieldReader<'a> {
        FieldReader {
            fields: &packet.fields,
            list: packet.list.as_deref(),
        }
    }

    /// Reads one list record.
    pub fn record(fields: &'a Fields) -> FieldReader<'a> {
        FieldReader { fields, list: None }
    }

    /// The packet's list block.
    pub fn list(&self, verb: &'static str) -> Result<&'a [Fields], ProtoError> {
        self.list.ok_or(ProtoError::MissingList(verb))
    }

    /// A required text field. U+0000 (`%00`) is refused: no store keeps it (PostgreSQL's
    /// `TEXT` cannot), so a value with it would fail the writes batched with it.
    pub fn text(&self, key: &'static str) -> Result<String, ProtoError> {
        match self.fields.get(key) {
            Some(v) if v.contains('\0') => Err(ProtoError::BadValue(key)),
            Some(v) => Ok(v.to_owned()),
            None => Err(ProtoError::MissingField(key)),
        }
    }

    /// An optional text field.
    pub fn opt_text(&self, key: &'static str) -> Option<String> {
        self.fields.get(key).map(str::to_owned)
    }

    /// A required unsigned number.
    pub fn number<T: std::str::FromStr>(&self, key: &'static str) -> Result<T, ProtoError> {
        let text = self.fields.get(key).ok_or(ProtoError::MissingField(key))?;
        parse_number(text).ok_or(ProtoError::BadValue(key))
    }

    /// An optional unsigned number.
    pub fn opt_number<T: std::str::FromStr>(
        &self,
        key: &'static str,
    ) -> Result<Option<T>, ProtoError> {
        self.fields
            .get(key)
            .map(|text| parse_number(text).ok_or(ProtoError::BadValue(key)))
            .transpose()
    }

    /// A required timestamp.
    pub fn time(&self, key: &'static str) -> Result<OffsetDateTime, ProtoError> {
        let text = self.fields.get(key).ok_or(ProtoError::MissingField(key))?;
        timestamp::parse(text).ok_or(ProtoError::BadValue(key))
    }

    /// A required `true` / `false`.
    pub fn flag(&self, key: &'static str) -> Result<bool, ProtoError> {
        match self.fields.get(key) {
            Some("true") => Ok(true),
            Some("false") => Ok(false),
            Some(_) => Err(ProtoError::BadValue(key)),
            None => Err(ProtoError::MissingField(key)),
        }
    }
}

/// Decimal digits only: no sign, no spaces, no `+`.
fn parse_number<T: std::str::FromStr>(text: &str) -> Option<T> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}
