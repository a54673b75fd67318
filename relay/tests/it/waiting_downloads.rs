//! Downloads that wait for upload data (an attacker's stalled upload, downloaded by the
//! hundred) cannot hold the relay's connection slots: a transfer gets a bounded number of
//! downloads at once, a waiting download is evicted like an idle connection when the slots are
//! full, and one that waited the body idle time is cut (the client resumes with `Range`).

use crate::support;

use std::time::Duration;

use msim_shared::token::Direction;
use support::{closed_within, connect_from, utf8, Relay, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// Create transfer `id` of `size` bytes and store only its first `sent` bytes (a `PATCH` from
/// offset 0), as an attacker stalling its own upload does.
async fn stalled_upload(relay: &Relay, id: &str, size: u64, data: &[u8]) {
    let up = relay.token(id, Direction::Upload, size);
    let head = format!(
        "PATCH /v1/transfers/{id} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {up}\r\n\
         Upload-Offset: 0\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        data.len()
    );
    let (status, body) = support::exchange(relay.addr, head.as_bytes(), data).await;
    assert_eq!(status, 204, "{}", utf8(&body));
}

/// A `GET` of `id` from `source`, read up to the end of its response head (and whatever body
/// came with it); the connection stays open. Returns the status.
async fn open_get(relay: &Relay, source: &str, id: &str, size: u64) -> (u16, TcpStream) {
    let down = relay.token(id, Direction::Download, size);
    let mut s = connect_from(source, relay.addr).await.expect("connect");
    let head = format!(
        "GET /v1/transfers/{id} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {down}\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.expect("send head");
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    timeout(WAIT, async {
        while !out.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut buf).await.expect("read");
            assert!(n > 0, "closed before the response head: {}", utf8(&out));
            out.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("response head in time");
    let status = utf8(&out[9..12]).parse().expect("status");
    (status, s)
}

#[tokio::test]
async fn downloads_waiting_on_stalled_uploads_from_many_addresses_leave_health_and_uploads_working()
{
    let dir = tempfile::tempdir().unwrap();
    // Sixteen slots; no help from the per-address cap or the idle cut.
    let relay = Relay::start(dir.path(), false, |c| {
        c.max_connections = 16;
        c.max_connections_per_address = 0;
        c.body_idle_timeout = Duration::from_secs(600);
    })
    .await;
    // Four stalled transfers, eight waiting downloads each (the per-transfer bound) from 32
    // addresses: twice the slots.
    let mut attack = Vec::new();
    for t in 0..4 {
        let id = format!("stalled-{t}");
        stalled_upload(&relay, &id, 2, b"x").await;
        for k in 0..8 {
            let source = format!("127.0.0.{}", 10 + t * 8 + k);
            let (status, s) = open_get(&relay, &source, &id, 2).await;
            assert_eq!(status, 200);
            attack.push(s);
        }
    }
    // The relay still answers and a legitimate transfer goes through.
    let (status, body) = timeout(WAIT, relay.request("GET", "/healthz", None, b""))
        .await
        .expect("/healthz answered while downloads wait on stalled uploads");
    assert_eq!((status, utf8(&body).as_str()), (200, "ok\n"));
    timeout(
        WAIT,
        relay.upload_and_download("legit", &vec![9u8; 300_000]),
    )
    .await
    .expect("a legitimate upload and download go through");
    drop(attack);
    relay.stop().await;
}

#[tokio::test]
async fn a_transfer_gets_a_bounded_number_of_downloads_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), false, |c| {
        c.max_downloads_per_transfer = 2;
        c.body_idle_timeout = Duration::from_secs(600);
    })
    .await;
    stalled_upload(&relay, "busy", 2, b"x").await;
    let (s1, first) = open_get(&relay, "127.0.0.2", "busy", 2).await;
    let (s2, _second) = open_get(&relay, "127.0.0.3", "busy", 2).await;
    assert_eq!((s1, s2), (200, 200));
    let (s3, _) = open_get(&relay, "127.0.0.4", "busy", 2).await;
    assert_eq!(
        s3, 429,
        "a third download of the transfer at once is refused"
    );
    // Other transfers are not affected.
    relay.upload_and_download("other", b"fine").await;
    // Once a download ends, another may start (the relay notices the closed connection
    // when it next writes or is cut; wait for it on a deadline).
    drop(first);
    let up = relay.token("busy", Direction::Upload, 2);
    let head = format!(
        "PATCH /v1/transfers/busy HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {up}\r\n\
         Upload-Offset: 1\r\nContent-Length: 1\r\nConnection: close\r\n\r\n"
    );
    let (status, _) = support::exchange(relay.addr, head.as_bytes(), b"y").await;
    assert_eq!(status, 200, "the upload completes");
    let down = relay.token("busy", Direction::Download, 2);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, body) = relay
            .request("GET", "/v1/transfers/busy", Some(&down), b"")
            .await;
        if status == 200 {
            assert_eq!(body, b"xy");
            break;
        }
        assert_eq!(status, 429, "{}", utf8(&body));
        assert!(tokio::time::Instant::now() < deadline, "place never freed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    relay.stop().await;
}

#[tokio::test]
async fn a_download_waiting_for_upload_data_is_cut_after_the_body_idle_time_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), false, |c| {
        c.body_idle_timeout = Duration::from_millis(300);
    })
    .await;
    stalled_upload(&relay, "slow", 3, b"ab").await;
    let (status, mut waiting) = open_get(&relay, "127.0.0.2", "slow", 3).await;
    assert_eq!(status, 200);
    // It gets what is stored (but the last byte, held for the SHA-256 check), then nothing:
    // cut with a short body.
    let took = closed_within(&mut waiting, WAIT)
        .await
        .expect("a download waiting for upload data is cut");
    assert!(took < Duration::from_secs(5), "cut after {took:?}");
    // The upload finishes; the download resumes with Range.
    let up = relay.token("slow", Direction::Upload, 3);
    let head = format!(
        "PATCH /v1/transfers/slow HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {up}\r\n\
         Upload-Offset: 2\r\nContent-Length: 1\r\nConnection: close\r\n\r\n"
    );
    let (status, _) = support::exchange(relay.addr, head.as_bytes(), b"c").await;
    assert_eq!(status, 200);
    let down = relay.token("slow", Direction::Download, 3);
    let head = format!(
        "GET /v1/transfers/slow HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {down}\r\n\
         Range: bytes=1-\r\nConnection: close\r\n\r\n"
    );
    let (status, body) = support::exchange(relay.addr, head.as_bytes(), b"").await;
    assert_eq!((status, body.as_slice()), (206, b"bc".as_slice()));
    relay.stop().await;
}
