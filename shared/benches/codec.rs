//! Packet encode/decode and token sign/verify throughput.

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use msim_shared::proto::{Message, Request, SendMessage};
use msim_shared::token::{Capability, Direction, Keyring};
use msim_shared::{timestamp, Packet, PacketCodec};
use std::hint::black_box;
use tokio_util::codec::Decoder;

fn message() -> Packet {
    use msim_shared::proto::Body;
    Message {
        id: "0193c4d2-7d1e-7c3a-9f1e-2b7c9d0e4a11".into(),
        from: "alice@example.com".into(),
        to: "bob@example.com".into(),
        at: timestamp::now(),
        text: "Hello Bob, here is the picture of the cat I promised — 100% fluffy!".into(),
    }
    .to_packet()
}

fn codec(c: &mut Criterion) {
    let packet = message();
    let wire = packet.to_wire();
    let mut group = c.benchmark_group("packet");
    group.throughput(Throughput::Elements(1));
    group.bench_function("encode", |b| {
        let codec = PacketCodec::default();
        let mut buf = BytesMut::with_capacity(4096);
        b.iter(|| {
            buf.clear();
            codec.encode_packet(black_box(&packet), &mut buf);
        })
    });
    group.bench_function("decode", |b| {
        let mut codec = PacketCodec::default();
        b.iter_batched(
            || BytesMut::from(wire.as_bytes()),
            |mut buf| codec.decode(&mut buf).unwrap(),
            BatchSize::SmallInput,
        )
    });
    let send = "MESSAGE to=bob@example.com text=Hello%20Bob ref=42\n";
    group.bench_function("decode+typed request", |b| {
        let mut codec = PacketCodec::default();
        b.iter_batched(
            || BytesMut::from(send.as_bytes()),
            |mut buf| {
                let p = codec.decode(&mut buf).unwrap().unwrap().unwrap();
                let r = Request::from_packet(&p).unwrap();
                assert!(matches!(r, Request::SendMessage(SendMessage { .. })));
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn tokens(c: &mut Criterion) {
    let keyring = Keyring::from_secret_text(&msim_shared::token::generate_secret_text()).unwrap();
    let cap = Capability {
        transfer_id: "0193c4d2-7d1e-7c3a-9f1e-2b7c9d0e4a11".into(),
        direction: Direction::Upload,
        size: 128_000,
        sha256: None,
        sender: "alice@example.com".into(),
        max_downloads: None,
        expires: u64::MAX / 2,
    };
    let token = keyring.sign(&cap);
    let mut group = c.benchmark_group("token");
    group.bench_function("sign", |b| b.iter(|| keyring.sign(black_box(&cap))));
    group.bench_function("verify", |b| {
        b.iter(|| keyring.verify(black_box(&token), 0).unwrap())
    });
    group.finish();
}

criterion_group!(benches, codec, tokens);
criterion_main!(benches);
