//! The generic packet: `VERB key=value …`, optionally followed by a list block of records.

use crate::error::PacketError;
use crate::percent;

/// An ordered set of `key=value` fields with unique keys (a packet's fields or one list record).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fields {
    pairs: Vec<(String, String)>,
}

impl Fields {
    /// An empty set.
    pub fn new() -> Fields {
        Fields::default()
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Sets `key` to `value`, replacing an earlier value. `key` must be a valid key; keys come
    /// from the program, never from a peer (decoding validates those).
    pub fn set(&mut self, key: &str, value: impl Into<String>) {
        debug_assert!(is_valid_key(key), "invalid key {key:?}");
        let value = value.into();
        match self.pairs.iter_mut().find(|(k, _)| k == key) {
            Some(pair) => pair.1 = value,
            None => self.pairs.push((key.to_owned(), value)),
        }
    }

    /// Sets `key` when `value` is `Some`.
    pub fn set_opt(&mut self, key: &str, value: Option<impl Into<String>>) {
        if let Some(value) = value {
            self.set(key, value);
        }
    }

    /// Builder form of [`Fields::set`].
    pub fn with(mut self, key: &str, value: impl Into<String>) -> Fields {
        self.set(key, value);
        self
    }

    /// Removes `key`, returning its value.
    pub fn remove(&mut self, key: &str) -> Option<String> {
        let at = self.pairs.iter().position(|(k, _)| k == key)?;
        Some(self.pairs.remove(at).1)
    }

    /// The fields in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Number of fields.
    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    /// Whether there are no fields.
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// Parses space-separated `key=value` tokens.
    pub fn parse(line: &[u8]) -> Result<Fields, PacketError> {
        let mut fields = Fields::new();
        for token in line.split(|&b| b == b' ').filter(|t| !t.is_empty()) {
            let eq = token
                .iter()
                .position(|&b| b == b'=')
                .ok_or(PacketError::BadField)?;
            let (key, raw) = (&token[..eq], &token[eq + 1..]);
            if !is_valid_key_bytes(key) {
                return Err(PacketError::BadKey);
            }
            // Keys are ASCII by the check above.
            let key = String::from_utf8_lossy(key).into_owned();
            if fields.get(&key).is_some() {
                return Err(PacketError::DuplicateKey(key));
            }
            let value = percent::decode(raw)?;
            fields.pairs.push((key, value));
        }
        Ok(fields)
    }

    /// Appends ` key=value` for every field.
    pub fn encode(&self, out: &mut String) {
        for (key, value) in &self.pairs {
            out.push(' ');
            out.push_str(key);
            out.push('=');
            percent::encode(value, out);
        }
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Fields {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Fields {
        let mut fields = Fields::new();
        for (k, v) in iter {
            fields.set(&k.into(), v);
        }
        fields
    }
}

/// One packet: a verb, its fields, and a list block for the verbs that carry one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    pub verb: String,
    pub fields: Fields,
    pub list: Option<Vec<Fields>>,
}

impl Packet {
    /// A packet with no fields. `verb` comes from the program and must be valid.
    pub fn new(verb: &str) -> Packet {
        debug_assert!(is_valid_verb(verb), "invalid verb {verb:?}");
        Packet {
            verb: verb.to_owned(),
            fields: Fields::new(),
            list: None,
        }
    }

    /// Builder: sets a field.
    pub fn with(mut self, key: &str, value: impl Into<String>) -> Packet {
        self.fields.set(key, value);
        self
    }

    /// Builder: sets a field when present.
    pub fn with_opt(mut self, key: &str, value: Option<impl Into<String>>) -> Packet {
        self.fields.set_opt(key, value);
        self
    }

    /// Builder: attaches a list block.
    pub fn with_list(mut self, records: Vec<Fields>) -> Packet {
        self.list = Some(records);
        self
    }

    /// The value of a field.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields.get(key)
    }

    /// The `ref=` token, if any.
    pub fn reference(&self) -> Option<&str> {
        self.get("ref")
    }

    /// Parses one line (without its line ending) as a packet header; the list, if any, is
    /// attached by the codec.
    pub fn parse_line(line: &[u8]) -> Result<Packet, PacketError> {
        let (verb, rest) = match line.iter().position(|&b| b == b' ') {
            Some(at) => (&line[..at], &line[at + 1..]),
            None => (line, &[][..]),
        };
        if !is_valid_verb_bytes(verb) {
            return Err(PacketError::BadVerb);
        }
        Ok(Packet {
            verb: String::from_utf8_lossy(verb).into_owned(),
            fields: Fields::parse(rest)?,
            list: None,
        })
    }

    /// The packet as wire text: its line, and its list block when it has one, each line
    /// ending in `\n`.
    pub fn encode(&self, out: &mut String) {
        out.push_str(&self.verb);
        self.fields.encode(out);
        out.push('\n');
        if let Some(records) = &self.list {
            out.push_str("[\n");
            // A record without fields would be a blank line, which readers skip.
            for record in records.iter().filter(|r| !r.is_empty()) {
                let mut line = String::new();
                record.encode(&mut line);
                // Records carry no verb, so drop the leading separator.
                out.push_str(line.strip_prefix(' ').unwrap_or(&line));
                out.push('\n');
            }
            out.push_str("]\n");
        }
    }

    /// The packet as a wire string.
    pub fn to_wire(&self) -> String {
        let approx = self.verb.len()
            + self
                .fields
                .iter()
                .map(|(k, v)| k.len() + v.len() + 2)
                .sum::<usize>()
            + 1;
        let mut out = String::with_capacity(approx);
        self.encode(&mut out);
        out
    }
}

impl std::fmt::Display for Packet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.to_wire().trim_end())
    }
}

/// Whether `verb` matches `[A-Z0-9-]+`.
pub fn is_valid_verb(verb: &str) -> bool {
    is_valid_verb_bytes(verb.as_bytes())
}

/// Whether `key` matches `[a-z0-9-]+`.
pub fn is_valid_key(key: &str) -> bool {
    is_valid_key_bytes(key.as_bytes())
}

fn is_valid_verb_bytes(verb: &[u8]) -> bool {
    !verb.is_empty()
        && verb
            .iter()
            .all(|&b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'-')
}

fn is_valid_key_bytes(key: &[u8]) -> bool {
    !key.is_empty()
        && key
            .iter()
            .all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_verb_and_fields() {
        let p = Packet::parse_line(b"MESSAGE to=bob@x text=Hello%20world").unwrap();
        assert_eq!(p.verb, "MESSAGE");
        assert_eq!(p.get("to"), Some("bob@x"));
        assert_eq!(p.get("text"), Some("Hello world"));
        assert_eq!(p.fields.len(), 2);
    }

    #[test]
    fn verb_alone_and_extra_spaces() {
        assert_eq!(Packet::parse_line(b"PING").unwrap(), Packet::new("PING"));
        let p = Packet::parse_line(b"PING  ref=1 ").unwrap();
        assert_eq!(p.reference(), Some("1"));
    }

    #[test]
    fn value_may_contain_equals_and_be_empty() {
        let p = Packet::parse_line(b"X a=b=c d=").unwrap();
        assert_eq!(p.get("a"), Some("b=c"));
        assert_eq!(p.get("d"), Some(""));
    }

    #[test]
    fn rejects_bad_verbs() {
        for bad in [&b""[..], b"message", b"MES_SAGE", b" PING", b"P\xc3\xa9"] {
            assert_eq!(
                Packet::parse_line(bad),
                Err(PacketError::BadVerb),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn rejects_bad_keys_fields_and_duplicates() {
        assert_eq!(Packet::parse_line(b"X Key=1"), Err(PacketError::BadKey));
        assert_eq!(Packet::parse_line(b"X =1"), Err(PacketError::BadKey));
        assert_eq!(Packet::parse_line(b"X k_1=1"), Err(PacketError::BadKey));
        assert_eq!(Packet::parse_line(b"X novalue"), Err(PacketError::BadField));
        assert_eq!(
            Packet::parse_line(b"X a=1 a=2"),
            Err(PacketError::DuplicateKey("a".into()))
        );
    }

    #[test]
    fn rejects_bad_values() {
        assert_eq!(Packet::parse_line(b"X a=%2"), Err(PacketError::BadEscape));
        assert_eq!(
            Packet::parse_line(b"X a=%ff"),
            Err(PacketError::InvalidUtf8)
        );
    }

    #[test]
    fn encodes_lists() {
        let p = Packet::new("CONTACTS-GET-RESPONSE").with_list(vec![
            Fields::new()
                .with("id", "m1kc@klfd.com")
                .with("note", "Something optional"),
            Fields::new()
                .with("id", "solkin@klfd.com")
                .with("group", "Work/Mobile"),
        ]);
        assert_eq!(
            p.to_wire(),
            "CONTACTS-GET-RESPONSE\n[\nid=m1kc@klfd.com note=Something%20optional\nid=solkin@klfd.com group=Work/Mobile\n]\n"
        );
    }

    #[test]
    fn set_replaces() {
        let f = Fields::new().with("a", "1").with("a", "2");
        assert_eq!(f.len(), 1);
        assert_eq!(f.get("a"), Some("2"));
    }
}
