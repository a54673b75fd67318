//! The hand-off to downloads that follow an upload: a download waiting before the upload
//! starts, or joining it mid-way, is found and counted in one index statement and takes the
//! writer's buffers; the download limits still hold, and an upload that stops mid-way never
//! leaves its follower with a body that looks whole.

use crate::support;

use std::time::Duration;

use msim_shared::clock::{Clock, SystemClock};
use msim_shared::token::{Capability, Direction};
use support::{connect_from, exchange, parse_response, utf8, Relay, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

fn payload(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 31 % 251) as u8).collect()
}

/// A token for `id` (`size` bytes) in `dir`, allowing `max` downloads.
fn token(relay: &Relay, id: &str, dir: Direction, size: u64, max: Option<u32>) -> String {
    relay.ring.sign(&Capability {
        transfer_id: id.into(),
        direction: dir,
        size,
        sha256: None,
        sender: "alice@example.com".into(),
        max_downloads: max,
        expires: SystemClock.now() + 3600,
    })
}

/// Send a `GET` of `id` from `source` on a connection of its own (closed after the answer).
async fn start_get(relay: &Relay, source: &str, id: &str, down: &str, range: &str) -> TcpStream {
    let mut s = connect_from(source, relay.addr).await.expect("connect");
    let head = format!(
        "GET /v1/transfers/{id} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {down}\r\n\
         {range}Connection: close\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.expect("send head");
    s
}

/// The whole answer on `s` (read to its end): status, `Content-Length` and the body bytes
/// that came, however many.
async fn read_answer(s: &mut TcpStream) -> (u16, Option<usize>, Vec<u8>) {
    let mut out = Vec::new();
    timeout(WAIT, async {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .expect("the answer ends");
    let end = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head: {}", utf8(&out)));
    let head = utf8(&out[..end]).to_ascii_lowercase();
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .map(|v| v.trim().parse().expect("content-length"));
    let (status, _) = parse_response(&out);
    (status, length, out[end + 4..].to_vec())
}

/// Open a `PUT` of `id` and send its head and `first` bytes of its body.
async fn start_put(relay: &Relay, id: &str, size: usize, first: &[u8]) -> TcpStream {
    let up = token(relay, id, Direction::Upload, size as u64, None);
    let mut s = TcpStream::connect(relay.addr).await.expect("connect");
    let head = format!(
        "PUT /v1/transfers/{id} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {up}\r\n\
         Content-Length: {size}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.expect("put head");
    s.write_all(first).await.expect("put body");
    s
}

#[tokio::test]
async fn downloads_waiting_before_the_upload_are_counted_once_each_and_the_limit_holds() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), true, |c| {
        c.wait_for_upload = Duration::from_secs(30);
    })
    .await;
    for (id, max) in [("pic-unlimited", None), ("pic-once", Some(1))] {
        let data = payload(200_000);
        let size = data.len() as u64;
        let down = token(&relay, id, Direction::Download, size, max);
        let mut a = start_get(&relay, "127.0.0.2", id, &down, "").await;
        let mut b = start_get(&relay, "127.0.0.3", id, &down, "").await;
        relay
            .wait_for_metric("msim_relay_downloads_waiting 2\n")
            .await;
        let up = token(&relay, id, Direction::Upload, size, None);
        let (status, body) = relay
            .request("PUT", &format!("/v1/transfers/{id}"), Some(&up), &data)
            .await;
        assert_eq!(status, 201, "{}", utf8(&body));
        let answers = [read_answer(&mut a).await, read_answer(&mut b).await];
        let whole = answers
            .iter()
            .filter(|(status, len, got)| *status == 200 && *len == Some(data.len()) && *got == data)
            .count();
        let refused = answers
            .iter()
            .filter(|(status, _, _)| *status == 410)
            .count();
        match max {
            None => assert_eq!(whole, 2, "{id}: both waiting downloads get the file"),
            Some(_) => {
                assert_eq!(
                    (whole, refused),
                    (1, 1),
                    "{id}: one download allowed, the other refused: {:?}",
                    answers.map(|(s, l, g)| (s, l, g.len()))
                );
                // The last allowed download removed the transfer once it was sent.
                let deadline = tokio::time::Instant::now() + WAIT;
                loop {
                    let (status, _) = relay
                        .request("GET", &format!("/v1/transfers/{id}"), Some(&down), b"")
                        .await;
                    assert_eq!(status, 410, "{id}: no further download");
                    let (status, _) = relay
                        .request("HEAD", &format!("/v1/transfers/{id}"), Some(&up), b"")
                        .await;
                    if status == 410 {
                        break;
                    }
                    assert!(tokio::time::Instant::now() < deadline, "never removed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }
    relay
        .wait_for_metric("msim_relay_downloads_waiting 0\n")
        .await;
    relay.stop().await;
}

#[tokio::test]
async fn a_download_joining_mid_upload_is_counted_and_gets_every_byte() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), true, |_| {}).await;
    // Above the size whose body is collected before it is stored: the first half is stored
    // (and followed) while the rest has not been sent.
    let data = payload(1 << 20);
    let size = data.len() as u64;
    let half = data.len() / 2;
    let mut put = start_put(&relay, "mid", data.len(), &data[..half]).await;
    relay
        .wait_for_metric(&format!("msim_relay_bytes_in_total {half}\n"))
        .await;
    let once = token(&relay, "mid", Direction::Download, size, Some(1));
    let mut get = start_get(&relay, "127.0.0.2", "mid", &once, "").await;
    // The download answers (and streams the first half) before the rest is sent.
    relay
        .wait_for_metric("msim_relay_downloads_active 1\n")
        .await;
    // A second download of the one-download token is refused while the first follows.
    let (status, body) = relay
        .request("GET", "/v1/transfers/mid", Some(&once), b"")
        .await;
    assert_eq!(status, 410, "{}", utf8(&body));
    put.write_all(&data[half..])
        .await
        .expect("rest of the body");
    let (status, _, body) = read_answer(&mut put).await;
    assert_eq!(status, 201, "{}", utf8(&body));
    let (status, len, got) = read_answer(&mut get).await;
    assert_eq!((status, len), (200, Some(data.len())));
    assert!(got == data, "the follower got every byte, in order");
    relay.stop().await;
}

#[tokio::test]
async fn an_upload_that_stops_mid_way_never_leaves_its_waiting_download_looking_whole() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), true, |c| {
        c.wait_for_upload = Duration::from_secs(30);
        c.body_idle_timeout = Duration::from_millis(300);
    })
    .await;
    // A picture (its body collected, then stored) and a larger file (stored as it arrives).
    for (id, n) in [("stop-small", 200_000), ("stop-large", 1 << 20)] {
        let data = payload(n);
        let size = data.len() as u64;
        let down = token(&relay, id, Direction::Download, size, None);
        let mut get = start_get(&relay, "127.0.0.2", id, &down, "").await;
        relay
            .wait_for_metric("msim_relay_downloads_waiting 1\n")
            .await;
        // The sender goes away after half of the body.
        let half = n / 2;
        let mut put = start_put(&relay, id, n, &data[..half]).await;
        put.shutdown().await.expect("shutdown");
        // Whatever it answers, once the relay closed the connection it has stored what came.
        let mut sink = Vec::new();
        let _ = timeout(WAIT, put.read_to_end(&mut sink))
            .await
            .expect("closed");
        // The waiting download never gets the whole file: it is cut short.
        let (status, len, got) = read_answer(&mut get).await;
        assert_eq!((status, len), (200, Some(n)), "{id}");
        assert!(got.len() < n, "{id}: a short body, not a whole one");
        assert!(
            got == data[..got.len()],
            "{id}: what came is the file's start"
        );
        // The upload resumes where it stopped; the download resumes with Range.
        let up = token(&relay, id, Direction::Upload, size, None);
        let stored = half;
        let (status, body) = exchange(
            relay.addr,
            format!(
                "PATCH /v1/transfers/{id} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {up}\r\n\
                 Upload-Offset: {stored}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                n - stored
            )
            .as_bytes(),
            &data[stored..],
        )
        .await;
        assert_eq!(status, 200, "{id}: {}", utf8(&body));
        let from = got.len();
        let mut rest = start_get(
            &relay,
            "127.0.0.2",
            id,
            &down,
            &format!("Range: bytes={from}-\r\n"),
        )
        .await;
        let (status, _, tail) = read_answer(&mut rest).await;
        assert_eq!(status, 206, "{id}");
        assert!(
            [got, tail].concat() == data,
            "{id}: resumed to the whole file"
        );
    }
    relay.stop().await;
}
