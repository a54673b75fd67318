//! Transfers in progress per token sender (attack H1 leftover): one account holding many
//! grants cannot take more than `max_requests_per_sender` connection slots with uploads, however
//! fast each one moves; other senders are unaffected, and a place frees when a transfer ends.

use crate::support;

use std::time::{Duration, Instant};

use msim_shared::clock::{Clock, SystemClock};
use msim_shared::token::{Capability, Direction};
use support::{utf8, Relay, WAIT};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const SIZE: u64 = 1 << 20;

fn mallory_token(relay: &Relay, id: &str) -> String {
    relay.ring.sign(&Capability {
        transfer_id: id.into(),
        direction: Direction::Upload,
        size: SIZE,
        sha256: None,
        sender: "mallory@example.com".into(),
        max_downloads: None,
        expires: SystemClock.now() + 3600,
    })
}

/// An upload of `id` that has sent its head and part of its body and stays open.
async fn held_upload(relay: &Relay, id: &str) -> TcpStream {
    let token = mallory_token(relay, id);
    let mut s = TcpStream::connect(relay.addr).await.unwrap();
    let head = format!(
        "PUT /v1/transfers/{id} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Length: {SIZE}\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&[b'm'; 4096]).await.unwrap();
    s
}

#[tokio::test]
async fn one_sender_cannot_hold_more_than_its_share_of_transfers_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), true, |c| {
        c.max_requests_per_sender = 2;
        // The slots are plenty and nobody is slow: only the per-sender bound applies.
        c.min_rate = 0;
    })
    .await;
    let first = held_upload(&relay, "m1").await;
    let second = held_upload(&relay, "m2").await;
    relay.wait_for_metric("msim_relay_uploads_active 2\n").await;
    let token = mallory_token(&relay, "m3");
    let body = vec![b'm'; SIZE as usize];
    let (status, answer) = relay
        .request("PUT", "/v1/transfers/m3", Some(&token), &body)
        .await;
    assert_eq!(status, 429, "{}", utf8(&answer));
    assert!(utf8(&answer).contains("too many transfers of this sender"));
    relay
        .wait_for_metric("msim_relay_refusals_total{reason=\"too_many_sender_requests\"} 1\n")
        .await;
    // Another sender (alice) uploads and downloads as usual.
    relay
        .upload_and_download("honest", &vec![7u8; 300_000])
        .await;
    // One of mallory's uploads ends: its place is free again (the relay sees the close soon).
    drop(first);
    relay.wait_for_metric("msim_relay_uploads_active 1\n").await;
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, answer) = relay
            .request("PUT", "/v1/transfers/m3", Some(&token), &body)
            .await;
        if status == 201 {
            break;
        }
        assert_eq!(status, 429, "{}", utf8(&answer));
        assert!(Instant::now() < deadline, "the place was never freed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(second);
    relay.stop().await;
}

/// A GET from `local` (a loopback address of its own) of `id`; returns the connection once the
/// response head has come, with the status. The body (the upload is held) keeps coming
/// slowly, so the download stays in progress while the connection is open.
async fn download_from(relay: &Relay, local: [u8; 4], id: &str) -> (TcpStream, u16) {
    let token = relay.token(id, Direction::Download, SIZE);
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind((local, 0).into()).unwrap();
    let mut s = socket.connect(relay.addr).await.unwrap();
    let head = format!(
        "GET /v1/transfers/{id} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(WAIT, tokio::io::AsyncReadExt::read(&mut s, &mut buf))
            .await
            .expect("a response head in time")
            .unwrap();
        assert!(n > 0, "closed before a response head");
        got.extend_from_slice(&buf[..n]);
    }
    let status = utf8(&got[9..12]).parse().unwrap();
    (s, status)
}

/// Attack 4, M1: a download token names the file's sender, not the downloader, so when
/// downloads were counted by sender alone, one recipient of a few of Alice's files holding
/// downloads open took every place and locked Alice's other recipients out with `429`. Now
/// downloads are counted per downloading address too: Mallory is held to his share, Bob is not.
#[tokio::test]
async fn one_recipient_cannot_take_the_places_of_a_senders_other_recipients() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), true, |c| {
        c.max_requests_per_sender = 2;
        c.min_rate = 0;
    })
    .await;
    // Two of Alice's files, their uploads begun and held: downloads of them stay open.
    let mut uploads = Vec::new();
    for id in ["a1", "a2"] {
        let token = relay.token(id, Direction::Upload, SIZE);
        let mut s = TcpStream::connect(relay.addr).await.unwrap();
        let head = format!(
            "PUT /v1/transfers/{id} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Length: {SIZE}\r\n\r\n"
        );
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(&[b'a'; 4096]).await.unwrap();
        uploads.push(s);
    }
    relay.wait_for_metric("msim_relay_uploads_active 2\n").await;
    let mallory = [127, 0, 0, 66];
    let mut open = Vec::new();
    for (from, id, expected, why) in [
        (mallory, "a1", 200, "Mallory's first"),
        (mallory, "a2", 200, "Mallory's second"),
        (
            mallory,
            "a1",
            429,
            "Mallory is held to his share of Alice's places",
        ),
        // Bob, at another address, downloads Alice's files as usual.
        (
            [127, 0, 0, 2],
            "a1",
            200,
            "Bob is not locked out by Mallory's downloads",
        ),
        ([127, 0, 0, 2], "a2", 200, "Bob's second"),
    ] {
        let (s, status) = download_from(&relay, from, id).await;
        assert_eq!(status, expected, "{why}");
        open.push(s);
    }
    drop(open);
    drop(uploads);
    relay.stop().await;
}

/// Attack 5: counted per address alone, the downloads of one sender's files had no bound for
/// a client with many addresses (an IPv6 /48 is 65,536 /64s): an account downloading its own
/// files from fresh addresses held as many slots as it liked. They are bounded over all
/// addresses too, at 8 times the bound of one address (16 here).
#[tokio::test]
async fn a_senders_files_downloaded_from_many_addresses_are_bounded_too() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), true, |c| {
        c.max_requests_per_sender = 2;
        c.max_downloads_per_transfer = 0;
        c.min_rate = 0;
    })
    .await;
    let mut uploads = Vec::new();
    for id in ["m1", "m2"] {
        let token = relay.token(id, Direction::Upload, SIZE);
        let mut s = TcpStream::connect(relay.addr).await.unwrap();
        let head = format!(
            "PUT /v1/transfers/{id} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Length: {SIZE}\r\n\r\n"
        );
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(&[b'm'; 4096]).await.unwrap();
        uploads.push(s);
    }
    relay.wait_for_metric("msim_relay_uploads_active 2\n").await;
    // Two downloads from each of eight addresses: the bound of each address, 16 in all.
    let mut open = Vec::new();
    for i in 0..16u8 {
        let id = if i % 2 == 0 { "m1" } else { "m2" };
        let (s, status) = download_from(&relay, [127, 0, 1, 10 + i / 2], id).await;
        assert_eq!(status, 200, "download {i}, within both bounds");
        open.push(s);
    }
    let (refused, status) = download_from(&relay, [127, 0, 1, 30], "m1").await;
    assert_eq!(
        status, 429,
        "a ninth address got a seventeenth download at once"
    );
    drop(open.pop());
    relay
        .wait_for_metric("msim_relay_downloads_active 15\n")
        .await;
    let (last, status) = download_from(&relay, [127, 0, 1, 31], "m2").await;
    assert_eq!(status, 200, "a finished download frees its place");
    drop((open, uploads, refused, last));
    relay.stop().await;
}
