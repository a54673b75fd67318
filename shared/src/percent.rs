//! Percent coding of field values.
//!
//! The `percent-encoding` crate always escapes non-ASCII bytes, which would triple the size of
//! every non-Latin message; the protocol only requires `%`, space and control characters to be
//! escaped, so encoding is done here. Decoding validates strictly (the crate passes bad escapes
//! through unchanged) and then lets the crate do the unescaping.

use crate::error::PacketError;

/// Whether `c` must be escaped in a value.
fn must_escape(c: char) -> bool {
    c == '%' || c == ' ' || c.is_control()
}

/// Encodes a value for the wire.
pub fn encode(value: &str, out: &mut String) {
    if !value.chars().any(must_escape) {
        out.push_str(value);
        return;
    }
    for c in value.chars() {
        if must_escape(c) {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push('%');
                out.push(char::from(HEX[usize::from(b >> 4)]));
                out.push(char::from(HEX[usize::from(b & 0x0f)]));
            }
        } else {
            out.push(c);
        }
    }
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// Encodes a value into a new string.
pub fn encode_to_string(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    encode(value, &mut out);
    out
}

/// Decodes a wire value. Every `%` must start a two-digit hex escape, raw control characters are
/// rejected, and the result must be valid UTF-8.
pub fn decode(raw: &[u8]) -> Result<String, PacketError> {
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'%' => {
                let ok = raw.len() >= i + 3
                    && raw[i + 1].is_ascii_hexdigit()
                    && raw[i + 2].is_ascii_hexdigit();
                if !ok {
                    return Err(PacketError::BadEscape);
                }
                i += 3;
            }
            b if b < 0x20 || b == 0x7f => return Err(PacketError::BadValue),
            _ => i += 1,
        }
    }
    // Most values carry no escape at all: copy them as they are.
    let bytes: Vec<u8> = if raw.contains(&b'%') {
        percent_encoding::percent_decode(raw).collect()
    } else {
        raw.to_vec()
    };
    String::from_utf8(bytes).map_err(|_| PacketError::InvalidUtf8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec(s: &str) -> Result<String, PacketError> {
        decode(s.as_bytes())
    }

    #[test]
    fn escapes_only_what_the_protocol_requires() {
        assert_eq!(encode_to_string("Hello world"), "Hello%20world");
        assert_eq!(encode_to_string("100%"), "100%25");
        assert_eq!(encode_to_string("a\r\nb\tc"), "a%0D%0Ab%09c");
        assert_eq!(encode_to_string("key=value"), "key=value");
        assert_eq!(encode_to_string("Привет"), "Привет");
        assert_eq!(encode_to_string("\u{7f}\u{85}"), "%7F%C2%85");
    }

    #[test]
    fn decodes_escapes_in_any_case() {
        assert_eq!(dec("Hello%20world").unwrap(), "Hello world");
        assert_eq!(dec("%d0%9f%D0%B8").unwrap(), "Пи");
        assert_eq!(dec("").unwrap(), "");
        assert_eq!(dec("a=b").unwrap(), "a=b");
    }

    #[test]
    fn rejects_bad_escapes() {
        for bad in ["%", "%4", "%G0", "abc%2", "%%20"] {
            assert_eq!(dec(bad), Err(PacketError::BadEscape), "{bad}");
        }
    }

    #[test]
    fn rejects_invalid_utf8() {
        assert_eq!(dec("%FF"), Err(PacketError::InvalidUtf8));
        assert_eq!(dec("%C3"), Err(PacketError::InvalidUtf8));
        assert_eq!(decode(b"\xff"), Err(PacketError::InvalidUtf8));
    }

    #[test]
    fn rejects_raw_control_characters() {
        assert_eq!(dec("a\tb"), Err(PacketError::BadValue));
        assert_eq!(dec("a\u{7f}"), Err(PacketError::BadValue));
    }
}
