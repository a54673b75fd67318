//! Feeds arbitrary bytes to the packet decoder in arbitrary pieces, then converts every packet to
//! both typed directions. Nothing may panic, the buffer must drain, and every decoded packet must
//! survive a re-encode/decode round trip.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use msim_shared::proto::{Event, Request};
use msim_shared::PacketCodec;
use tokio_util::codec::Decoder;

fuzz_target!(|data: &[u8]| {
    let (split, data) = match data.split_first() {
        Some((&s, rest)) => (usize::from(s), rest),
        None => return,
    };
    let mut codec = PacketCodec::new(256).with_max_records(8);
    let mut buf = BytesMut::new();
    let mut packets = Vec::new();
    let chunk = split.max(1);
    for piece in data.chunks(chunk) {
        buf.extend_from_slice(piece);
        while let Some(item) = codec.decode(&mut buf).expect("no io errors") {
            packets.extend(item.ok());
        }
    }
    while let Some(item) = codec.decode_eof(&mut buf).expect("no io errors") {
        packets.extend(item.ok());
    }
    assert!(buf.is_empty());
    for packet in packets {
        let _ = Request::from_packet(&packet);
        let _ = Event::from_packet(&packet);
        let mut wire = BytesMut::new();
        PacketCodec::default().encode_packet(&packet, &mut wire);
        let mut again = PacketCodec::default();
        let decoded = again.decode(&mut wire).expect("no io errors");
        let decoded = match decoded {
            Some(d) => Some(d),
            None => again.decode_eof(&mut wire).expect("no io errors"),
        };
        // Empty list records are dropped by the encoder, so compare without them.
        let mut expected = packet.clone();
        if let Some(list) = &mut expected.list {
            list.retain(|r| !r.is_empty());
        }
        assert_eq!(decoded, Some(Ok(expected)));
    }
});
