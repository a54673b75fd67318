//! Pins the exact wire lines of PROTOCOL.md's worked transcripts (§13) to the shared packet
//! types. Round-trip tests encode and decode with the same code, so a field renamed on both
//! sides would pass them; here every packet of the document must decode into its typed struct
//! (no unknown verb, no missing field) and encode back to the very bytes the document shows.

use bytes::BytesMut;
use msim_shared::proto::{Event, Request};
use msim_shared::{Packet, PacketCodec};
use tokio_util::codec::Decoder;

const PROTOCOL: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../PROTOCOL.md"));

/// One side of one session in one transcript block: the lines in order.
#[derive(Debug)]
struct Stream {
    section: String,
    session: String,
    from_client: bool,
    lines: Vec<String>,
}

/// The `<<` / `>>` lines of every code block of §13, grouped per session and direction.
fn transcripts() -> Vec<Stream> {
    let start = PROTOCOL.find("## 13. Worked transcripts").unwrap();
    let end = PROTOCOL[start..].find("\n## ").unwrap() + start;
    let mut streams: Vec<Stream> = Vec::new();
    let mut section = String::new();
    let mut in_code = false;
    for line in PROTOCOL[start..end].lines() {
        if let Some(title) = line.strip_prefix("### ") {
            section = title.to_string();
        }
        if line.starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if !in_code {
            continue;
        }
        let (session, rest) = match line.find("<< ").or_else(|| line.find(">> ")) {
            Some(at) => (line[..at].trim().to_string(), &line[at..]),
            None => continue,
        };
        if session.contains(' ') || session.starts_with("//") {
            continue; // prose inside a block
        }
        let from_client = rest.starts_with("<<");
        let text = rest[3..].to_string();
        let stream = streams
            .iter_mut()
            .rev()
            .find(|s| s.section == section && s.session == session && s.from_client == from_client);
        match stream {
            Some(s) => s.lines.push(text),
            None => streams.push(Stream {
                section: section.clone(),
                session,
                from_client,
                lines: vec![text],
            }),
        }
    }
    streams
}

/// A value shortened in the document with `…` (a token, a salt) stands for some real value:
/// it is replaced by `X`, so that the line is real wire bytes again and every key, its order
/// and every other value are still checked exactly.
fn unshorten(line: &str) -> String {
    line.split(' ')
        .map(|word| match word.split_once('=') {
            Some((key, value)) if value.contains('…') => format!("{key}=X"),
            _ => word.to_string(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Packets of a stream, each with the exact text it had.
fn packets(stream: &Stream) -> Vec<(String, Result<Packet, String>)> {
    let mut codec = PacketCodec::default();
    let mut out = Vec::new();
    let mut pending = String::new();
    for line in &stream.lines {
        let line = &unshorten(line);
        pending.push_str(line);
        pending.push('\n');
        let mut buf = BytesMut::from(pending.as_bytes());
        match codec.decode(&mut buf) {
            Ok(Some(Ok(p))) => {
                assert!(buf.is_empty(), "{}: trailing bytes", stream.section);
                out.push((std::mem::take(&mut pending), Ok(p)));
            }
            Ok(Some(Err(e))) => out.push((std::mem::take(&mut pending), Err(e.to_string()))),
            Ok(None) => {} // a list block continues
            Err(e) => panic!("{}: {e}", stream.section),
        }
        codec = PacketCodec::default();
    }
    assert!(
        pending.is_empty(),
        "{}: unfinished {pending:?}",
        stream.section
    );
    out
}

/// The typed form's encoding, with the request's `ref` put back where the packet had it.
fn typed_wire(p: &Packet, from_client: bool) -> Result<String, String> {
    let mut typed = if from_client {
        match Request::from_packet(p).map_err(|e| e.to_string())? {
            Request::Unknown(_) => return Err(format!("unknown request verb {}", p.verb)),
            r => r.to_packet(),
        }
    } else {
        match Event::from_packet(p).map_err(|e| e.to_string())? {
            Event::Unknown(_) => return Err(format!("unknown event verb {}", p.verb)),
            e => e.to_packet(),
        }
    };
    if let Some(r) = p.reference() {
        typed.fields.set("ref", r);
    }
    Ok(typed.to_wire())
}

#[test]
fn every_transcript_packet_is_exactly_what_the_types_encode() {
    let streams = transcripts();
    let mut checked = 0;
    let mut failures = Vec::new();
    for stream in &streams {
        // §13.7 shows what clients must not send; only the server's answers are pinned there.
        let malformed_allowed = stream.from_client && stream.section.starts_with("13.7");
        for (wire, packet) in packets(stream) {
            let result = packet.and_then(|p| typed_wire(&p, stream.from_client));
            match result {
                Ok(encoded) if encoded == wire => checked += 1,
                Ok(encoded) => failures.push(format!(
                    "{} ({}): the document says\n  {wire:?}\nthe types encode\n  {encoded:?}",
                    stream.section, stream.session
                )),
                Err(_) if malformed_allowed => {}
                Err(e) => failures.push(format!(
                    "{} ({}): {wire:?}: {e}",
                    stream.section, stream.session
                )),
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // Every section's blocks were found (a renamed heading would silently check nothing).
    assert!(checked >= 80, "only {checked} packets checked");
}
