//! The line codec: turns a byte stream into packets (with their list blocks) and back.
//!
//! A malformed line is not fatal: the decoder yields `Err(PacketError)` as an *item* and carries
//! on with the next line, so one bad packet never tears down a connection. Only I/O errors end
//! the stream. Every buffer is bounded: a line longer than the limit is reported once and
//! discarded as it arrives, and a list holds at most `max_records` records.

use bytes::{Buf, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use crate::error::PacketError;
use crate::packet::{Fields, Packet};

/// Default maximum line length in bytes, not counting the line ending.
pub const DEFAULT_MAX_LINE: usize = 64 * 1024;
/// Default maximum number of records in one list block.
pub const DEFAULT_MAX_RECORDS: usize = 10_000;

/// What the decoder is in the middle of.
#[derive(Debug)]
enum State {
    /// Between packets.
    Idle,
    /// Read the header of a list-carrying packet; the next line must be `[`.
    ExpectList(Packet),
    /// Inside a list block.
    InList(Packet, Vec<Fields>),
    /// Inside a list block that is being thrown away after an error, up to its `]`.
    Skipping,
    /// Throwing away the rest of an overlong line; then go on in `Skipping` or `Idle`.
    Discarding { then_skip: bool },
}

/// `tokio_util` codec for mSIM packets.
#[derive(Debug)]
pub struct PacketCodec {
    max_line: usize,
    max_records: usize,
    carries_list: fn(&str) -> bool,
    state: State,
    /// How far the buffer has already been searched for `\n`.
    scanned: usize,
}

impl Default for PacketCodec {
    fn default() -> Self {
        PacketCodec::new(DEFAULT_MAX_LINE)
    }
}

/// One decoded item: a packet, or the reason a line could not be decoded.
pub type Decoded = Result<Packet, PacketError>;

impl PacketCodec {
    /// A codec with the given line limit, recognising the protocol's list-carrying verbs.
    pub fn new(max_line: usize) -> PacketCodec {
        PacketCodec {
            max_line,
            max_records: DEFAULT_MAX_RECORDS,
            carries_list: crate::proto::carries_list,
            state: State::Idle,
            scanned: 0,
        }
    }

    /// Changes the maximum number of records in a list.
    pub fn with_max_records(mut self, max_records: usize) -> PacketCodec {
        self.max_records = max_records;
        self
    }

    /// The line limit.
    pub fn max_line(&self) -> usize {
        self.max_line
    }

    /// Finds the end of the next line, or reports that the line is already too long.
    fn next_line_end(&mut self, buf: &BytesMut) -> LineEnd {
        // A line may be max_line bytes plus "\r\n".
        let limit = buf.len().min(self.max_line + 2);
        match buf[self.scanned.min(limit)..limit]
            .iter()
            .position(|&b| b == b'\n')
        {
            Some(at) => {
                let end = self.scanned.min(limit) + at;
                self.scanned = 0;
                LineEnd::At(end)
            }
            None if buf.len() > self.max_line + 1 => {
                self.scanned = 0;
                LineEnd::TooLong
            }
            None => {
                self.scanned = limit;
                LineEnd::Incomplete
            }
        }
    }

    fn in_list(&self) -> bool {
        matches!(self.state, State::InList(..) | State::Skipping)
    }
}

enum LineEnd {
    At(usize),
    TooLong,
    Incomplete,
}

fn trim_line(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

impl Decoder for PacketCodec {
    type Item = Decoded;
    type Error = std::io::Error;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Decoded>, std::io::Error> {
        loop {
            if let State::Discarding { then_skip } = self.state {
                match buf.iter().position(|&b| b == b'\n') {
                    Some(at) => {
                        buf.advance(at + 1);
                        self.state = if then_skip {
                            State::Skipping
                        } else {
                            State::Idle
                        };
                        continue;
                    }
                    None => {
                        buf.clear();
                        return Ok(None);
                    }
                }
            }
            let end = match self.next_line_end(buf) {
                LineEnd::Incomplete => return Ok(None),
                LineEnd::TooLong => {
                    let then_skip = self.in_list();
                    self.state = State::Discarding { then_skip };
                    return Ok(Some(Err(PacketError::LineTooLong(self.max_line))));
                }
                LineEnd::At(end) => end,
            };
            let line = trim_line(&buf[..=end]);
            if line.len() > self.max_line {
                let then_skip = self.in_list();
                buf.advance(end + 1);
                self.state = if then_skip {
                    State::Skipping
                } else {
                    State::Idle
                };
                return Ok(Some(Err(PacketError::LineTooLong(self.max_line))));
            }
            let state = std::mem::replace(&mut self.state, State::Idle);
            match state {
                State::Idle => {
                    let result = match line {
                        b"" => None,
                        b"[" => {
                            self.state = State::Skipping;
                            Some(Err(PacketError::UnexpectedList))
                        }
                        b"]" => Some(Err(PacketError::UnexpectedList)),
                        _ => match Packet::parse_line(line) {
                            Ok(packet) if (self.carries_list)(&packet.verb) => {
                                self.state = State::ExpectList(packet);
                                None
                            }
                            other => Some(other),
                        },
                    };
                    buf.advance(end + 1);
                    if let Some(item) = result {
                        return Ok(Some(item));
                    }
                }
                State::ExpectList(packet) => match line {
                    b"" => {
                        buf.advance(end + 1);
                        self.state = State::ExpectList(packet);
                    }
                    b"[" => {
                        buf.advance(end + 1);
                        self.state = State::InList(packet, Vec::new());
                    }
                    // Leave the line in the buffer: it is read again as a packet.
                    _ => return Ok(Some(Err(PacketError::MissingList(packet.verb)))),
                },
                State::InList(mut packet, mut records) => {
                    let result = match line {
                        b"" => {
                            self.state = State::InList(packet, records);
                            None
                        }
                        b"]" => {
                            packet.list = Some(records);
                            Some(Ok(packet))
                        }
                        b"[" => {
                            self.state = State::Skipping;
                            Some(Err(PacketError::UnexpectedList))
                        }
                        _ if records.len() >= self.max_records => {
                            self.state = State::Skipping;
                            Some(Err(PacketError::ListTooLong(self.max_records)))
                        }
                        _ => match Fields::parse(line) {
                            Ok(record) => {
                                records.push(record);
                                self.state = State::InList(packet, records);
                                None
                            }
                            Err(e) => {
                                self.state = State::Skipping;
                                Some(Err(e))
                            }
                        },
                    };
                    buf.advance(end + 1);
                    if let Some(item) = result {
                        return Ok(Some(item));
                    }
                }
                State::Skipping => {
                    if line != b"]" {
                        self.state = State::Skipping;
                    }
                    buf.advance(end + 1);
                }
                State::Discarding { .. } => unreachable!("handled above"),
            }
        }
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Decoded>, std::io::Error> {
        if let Some(item) = self.decode(buf)? {
            return Ok(Some(item));
        }
        if !buf.is_empty() && !matches!(self.state, State::Discarding { .. }) {
            // A last line without its newline still counts as a line.
            buf.extend_from_slice(b"\n");
            if let Some(item) = self.decode(buf)? {
                return Ok(Some(item));
            }
        }
        buf.clear();
        match std::mem::replace(&mut self.state, State::Idle) {
            State::ExpectList(packet) => Ok(Some(Err(PacketError::MissingList(packet.verb)))),
            State::InList(..) | State::Skipping => Ok(Some(Err(PacketError::UnterminatedList))),
            State::Idle | State::Discarding { .. } => Ok(None),
        }
    }
}

impl PacketCodec {
    /// Appends a packet's wire form to `dst` without taking ownership of it.
    pub fn encode_packet(&self, packet: &Packet, dst: &mut BytesMut) {
        dst.extend_from_slice(packet.to_wire().as_bytes());
    }
}

// One Encoder impl only: a second (for `&Packet`) would make `SinkExt::flush` ambiguous.
impl Encoder<Packet> for PacketCodec {
    type Error = std::io::Error;

    fn encode(&mut self, packet: Packet, dst: &mut BytesMut) -> Result<(), std::io::Error> {
        self.encode_packet(&packet, dst);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(codec: &mut PacketCodec, input: &[u8]) -> Vec<Decoded> {
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        while let Some(item) = codec.decode(&mut buf).unwrap() {
            out.push(item);
        }
        while let Some(item) = codec.decode_eof(&mut buf).unwrap() {
            out.push(item);
        }
        out
    }

    fn verbs(items: &[Decoded]) -> Vec<String> {
        items
            .iter()
            .map(|i| match i {
                Ok(p) => p.verb.clone(),
                Err(e) => format!("!{}", e.reason()),
            })
            .collect()
    }

    #[test]
    fn decodes_lines_with_lf_and_crlf() {
        let mut c = PacketCodec::default();
        let items = decode_all(&mut c, b"PING\r\nPONG ref=1\n\nPING");
        assert_eq!(verbs(&items), ["PING", "PONG", "PING"]);
    }

    #[test]
    fn decodes_byte_by_byte() {
        let wire = b"CONTACTS-GET-RESPONSE ref=7\n[\nid=a@x name=A\nid=b@x\n]\nPING\n";
        let mut c = PacketCodec::default();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for &b in wire.iter() {
            buf.extend_from_slice(&[b]);
            while let Some(item) = c.decode(&mut buf).unwrap() {
                out.push(item.unwrap());
            }
        }
        assert_eq!(out.len(), 2);
        let list = out[0].list.as_ref().unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].get("name"), Some("A"));
        assert_eq!(out[0].reference(), Some("7"));
        assert_eq!(out[1].verb, "PING");
    }

    #[test]
    fn empty_list() {
        let mut c = PacketCodec::default();
        let items = decode_all(&mut c, b"CONTACTS-GET-RESPONSE\n[\n]\n");
        assert_eq!(items[0].as_ref().unwrap().list, Some(vec![]));
    }

    #[test]
    fn overlong_line_is_reported_once_and_skipped() {
        let mut c = PacketCodec::new(16);
        let mut input = b"MESSAGE text=".to_vec();
        input.extend(std::iter::repeat_n(b'a', 100));
        input.extend_from_slice(b"\nPING\n");
        let items = decode_all(&mut c, &input);
        assert_eq!(verbs(&items), ["!line-too-long", "PING"]);
    }

    #[test]
    fn overlong_line_arriving_in_pieces_uses_bounded_memory() {
        let mut c = PacketCodec::new(16);
        let mut buf = BytesMut::new();
        let mut errors = 0;
        for _ in 0..100 {
            buf.extend_from_slice(&[b'a'; 10]);
            while let Some(item) = c.decode(&mut buf).unwrap() {
                assert_eq!(item, Err(PacketError::LineTooLong(16)));
                errors += 1;
            }
            assert!(buf.len() <= 32, "buffer grew to {}", buf.len());
        }
        buf.extend_from_slice(b"\nPING\n");
        assert_eq!(c.decode(&mut buf).unwrap(), Some(Ok(Packet::new("PING"))));
        assert_eq!(errors, 1);
    }

    #[test]
    fn line_exactly_at_limit_is_accepted() {
        let mut c = PacketCodec::new(10);
        let items = decode_all(&mut c, b"X a=123456\r\nX a=1234567\n");
        assert_eq!(verbs(&items), ["X", "!line-too-long"]);
    }

    #[test]
    fn malformed_line_does_not_stop_the_stream() {
        let mut c = PacketCodec::default();
        let items = decode_all(&mut c, b"bad\nX a=%zz\nX a=1 a=2\nPING\n");
        assert_eq!(
            verbs(&items),
            ["!bad-verb", "!bad-escape", "!duplicate-key", "PING"]
        );
    }

    #[test]
    fn unexpected_list_is_skipped_whole() {
        let mut c = PacketCodec::default();
        let items = decode_all(&mut c, b"PING\n[\nid=1\nBAD LINE\n]\nPONG\n");
        assert_eq!(verbs(&items), ["PING", "!unexpected-list", "PONG"]);
    }

    #[test]
    fn missing_list_keeps_the_next_packet() {
        let mut c = PacketCodec::default();
        let items = decode_all(&mut c, b"CONTACT-UPDATED\nPING\n");
        assert_eq!(verbs(&items), ["!missing-list", "PING"]);
    }

    #[test]
    fn bad_record_skips_rest_of_list() {
        let mut c = PacketCodec::default();
        let items = decode_all(
            &mut c,
            b"CONTACT-UPDATED\n[\nid=1\nnovalue\nid=2\n]\nPING\n",
        );
        assert_eq!(verbs(&items), ["!bad-field", "PING"]);
    }

    #[test]
    fn list_too_long() {
        let mut c = PacketCodec::default().with_max_records(2);
        let items = decode_all(
            &mut c,
            b"CONTACT-UPDATED\n[\nid=1\nid=2\nid=3\nid=4\n]\nPING\n",
        );
        assert_eq!(verbs(&items), ["!list-too-long", "PING"]);
    }

    #[test]
    fn unterminated_list_at_eof() {
        let mut c = PacketCodec::default();
        let items = decode_all(&mut c, b"CONTACT-UPDATED\n[\nid=1\n");
        assert_eq!(verbs(&items), ["!unterminated-list"]);
        let mut c = PacketCodec::default();
        let items = decode_all(&mut c, b"CONTACT-UPDATED\n");
        assert_eq!(verbs(&items), ["!missing-list"]);
    }

    #[test]
    fn nested_list_is_an_error() {
        let mut c = PacketCodec::default();
        let items = decode_all(&mut c, b"CONTACT-UPDATED\n[\n[\n]\nPING\n");
        assert_eq!(verbs(&items), ["!unexpected-list", "PING"]);
    }

    #[test]
    fn encodes_packets() {
        let mut c = PacketCodec::default();
        let mut buf = BytesMut::new();
        c.encode(Packet::new("MESSAGE").with("text", "a b"), &mut buf)
            .unwrap();
        assert_eq!(&buf[..], b"MESSAGE text=a%20b\n");
    }
}
