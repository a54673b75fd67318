//! Property tests: anything encoded decodes to itself, and no input makes the decoder panic.

use bytes::BytesMut;
use msim_shared::codec::Decoded;
use msim_shared::{percent, Fields, Packet, PacketCodec};
use proptest::prelude::*;
use tokio_util::codec::Decoder;

fn verb() -> impl Strategy<Value = String> {
    "[A-Z0-9-]{1,24}".prop_filter("list verbs need lists", |v| {
        !msim_shared::proto::carries_list(v)
    })
}

fn fields() -> impl Strategy<Value = Fields> {
    fields_between(0, 8)
}

/// A list record has at least one field: a blank line is not a record.
fn record() -> impl Strategy<Value = Fields> {
    fields_between(1, 8)
}

fn fields_between(min: usize, max: usize) -> impl Strategy<Value = Fields> {
    prop::collection::btree_map("[a-z0-9-]{1,12}", any::<String>(), min..max)
        .prop_map(|m| m.into_iter().collect())
}

fn decode_all(codec: &mut PacketCodec, buf: &mut BytesMut) -> Vec<Decoded> {
    let mut out = Vec::new();
    while let Some(item) = codec.decode(buf).unwrap() {
        out.push(item);
    }
    while let Some(item) = codec.decode_eof(buf).unwrap() {
        out.push(item);
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn any_value_round_trips(value in any::<String>()) {
        let encoded = percent::encode_to_string(&value);
        prop_assert!(!encoded.contains([' ', '\n', '\r', '\t']));
        prop_assert_eq!(percent::decode(encoded.as_bytes()).unwrap(), value);
    }

    #[test]
    fn values_with_protocol_characters_round_trip(
        value in prop::collection::vec(prop::sample::select(vec!['=', '%', ' ', '\n', '\r', '\t', '\0', '[', ']', 'a', 'Я', '\u{85}', '😀']), 0..40)
    ) {
        let value: String = value.into_iter().collect();
        let packet = Packet::new("MESSAGE").with("text", value.clone());
        let mut buf = BytesMut::new();
        PacketCodec::default().encode_packet(&packet, &mut buf);
        let items = decode_all(&mut PacketCodec::default(), &mut buf);
        prop_assert_eq!(items.len(), 1);
        prop_assert_eq!(items[0].as_ref().unwrap().get("text"), Some(value.as_str()));
    }

    #[test]
    fn any_packet_round_trips(verb in verb(), fields in fields()) {
        let packet = Packet { verb, fields, list: None };
        let mut buf = BytesMut::new();
        PacketCodec::default().encode_packet(&packet, &mut buf);
        let items = decode_all(&mut PacketCodec::default(), &mut buf);
        prop_assert_eq!(items, vec![Ok(packet)]);
    }

    #[test]
    fn any_list_round_trips(head in fields(), records in prop::collection::vec(record(), 0..6)) {
        let packet = Packet { verb: "CONTACT-UPDATED".into(), fields: head, list: Some(records) };
        let mut buf = BytesMut::new();
        PacketCodec::default().encode_packet(&packet, &mut buf);
        let items = decode_all(&mut PacketCodec::default(), &mut buf);
        prop_assert_eq!(items, vec![Ok(packet)]);
    }

    #[test]
    fn a_stream_of_packets_survives_any_split(
        packets in prop::collection::vec((verb(), fields()), 1..6),
        split in any::<prop::sample::Index>(),
    ) {
        let packets: Vec<Packet> = packets.into_iter().map(|(verb, fields)| Packet { verb, fields, list: None }).collect();
        let mut wire = BytesMut::new();
        for p in &packets {
            PacketCodec::default().encode_packet(p, &mut wire);
        }
        let at = split.index(wire.len() + 1);
        let mut codec = PacketCodec::default();
        let mut buf = BytesMut::from(&wire[..at]);
        let mut out = Vec::new();
        while let Some(item) = codec.decode(&mut buf).unwrap() {
            out.push(item);
        }
        buf.extend_from_slice(&wire[at..]);
        out.extend(decode_all(&mut codec, &mut buf));
        prop_assert_eq!(out, packets.into_iter().map(Ok).collect::<Vec<_>>());
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_stay_bounded(input in prop::collection::vec(any::<u8>(), 0..4096), max in 1usize..256) {
        let mut codec = PacketCodec::new(max);
        let mut buf = BytesMut::from(&input[..]);
        let items = decode_all(&mut codec, &mut buf);
        prop_assert!(buf.is_empty());
        for item in items.into_iter().flatten() {
            prop_assert!(item.to_wire().lines().all(|l| l.len() <= max * 3 + 64));
        }
    }

    #[test]
    fn protocol_looking_garbage_never_panics(
        lines in prop::collection::vec(prop::sample::select(vec![
            "[", "]", "", "CONTACT-UPDATED", "CONTACTS-GET-RESPONSE x=1", "id=1 name=a", "PING", "a=%", "x", "MESSAGE to=a text=b", "k=v k=v", "\r",
        ]), 0..30)
    ) {
        let wire = lines.join("\n");
        let mut codec = PacketCodec::default().with_max_records(3);
        let mut buf = BytesMut::from(wire.as_bytes());
        let _ = decode_all(&mut codec, &mut buf);
        prop_assert!(buf.is_empty());
    }
}
