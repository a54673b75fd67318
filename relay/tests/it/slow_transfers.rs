//! The minimum transfer rate: uploads that drip a byte now and then (never idle long enough to
//! be cut by the body idle time) cannot keep every connection slot; an honest transfer above
//! the minimum keeps its slot while drippers give theirs up.

use crate::support;

use std::net::SocketAddr;
use std::time::Duration;

use msim_shared::token::Direction;
use support::{closed_within, parse_response, utf8, Relay, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::timeout;

/// Declared size of a dripping upload.
const DRIP_SIZE: u64 = 1 << 20;

/// A `PUT` that sends its head and then one byte every 50 ms (the attack: always under the
/// body idle time, far under any useful rate). When the relay closes the connection, the task
/// sends `id` on `closed` and ends.
async fn dripper(relay: &Relay, id: &str, closed: mpsc::UnboundedSender<String>) -> JoinHandle<()> {
    let up = relay.token(id, Direction::Upload, DRIP_SIZE);
    let mut s = TcpStream::connect(relay.addr).await.unwrap();
    let head = format!(
        "PUT /v1/transfers/{id} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {up}\r\nContent-Length: {DRIP_SIZE}\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let id = id.to_owned();
    tokio::spawn(async move {
        // Pacing the attacker, not synchronisation: a closed connection ends the loop.
        while s.write_all(b"x").await.is_ok()
            && closed_within(&mut s, Duration::from_millis(50))
                .await
                .is_none()
        {}
        let _ = closed.send(id);
    })
}

/// Upload `data` with one `PUT`, sending `chunk` bytes every `every` (a slow but honest
/// link); the response status.
async fn paced_upload(
    addr: SocketAddr,
    token: String,
    id: String,
    data: Vec<u8>,
    chunk: usize,
    every: Duration,
) -> (u16, Vec<u8>) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "PUT /v1/transfers/{id} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        data.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut tick = tokio::time::interval(every);
    for part in data.chunks(chunk) {
        tick.tick().await;
        s.write_all(part).await.unwrap();
    }
    let mut out = Vec::new();
    timeout(WAIT, s.read_to_end(&mut out))
        .await
        .expect("answer to the paced upload")
        .unwrap();
    parse_response(&out)
}

#[tokio::test]
async fn dripping_uploads_in_every_slot_leave_health_and_transfers_working() {
    let dir = tempfile::tempdir().unwrap();
    // Neither the head deadline nor the body idle time helps: only the minimum rate.
    let relay =
        Relay::start_judging_rate(dir.path(), 4, 64 << 10, Duration::from_millis(300)).await;
    let (closed_tx, mut closed) = mpsc::unbounded_channel();
    let mut drips = Vec::new();
    for i in 0..4 {
        drips.push(dripper(&relay, &format!("drip{i}"), closed_tx.clone()).await);
    }
    relay.wait_for_metric("msim_relay_uploads_active 4\n").await;
    // Every slot holds a dripping upload; the relay stays reachable and useful.
    let (status, body) = relay.request("GET", "/healthz", None, b"").await;
    assert_eq!((status, utf8(&body).as_str()), (200, "ok\n"));
    relay
        .upload_and_download("honest", &vec![7u8; 200_000])
        .await;
    // The slots came from drippers, which were closed: resume one to completion.
    let id = timeout(WAIT, closed.recv())
        .await
        .expect("a dripper was cut")
        .expect("dripper id");
    let up = relay.token(&id, Direction::Upload, DRIP_SIZE);
    let path = format!("/v1/transfers/{id}");
    let offset = upload_offset(&relay, &path, &up).await;
    let rest = vec![b'x'; (DRIP_SIZE - offset) as usize];
    let head = format!(
        "PATCH {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {up}\r\nUpload-Offset: {offset}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        rest.len()
    );
    let (status, body) = support::exchange(relay.addr, head.as_bytes(), &rest).await;
    assert_eq!(status, 200, "{}", utf8(&body));
    let down = relay.token(&id, Direction::Download, DRIP_SIZE);
    let (status, got) = relay.request("GET", &path, Some(&down), b"").await;
    assert_eq!(status, 200);
    assert_eq!(got, vec![b'x'; DRIP_SIZE as usize]);
    for d in drips {
        d.abort();
    }
    relay.stop().await;
}

#[tokio::test]
async fn a_slow_honest_upload_above_the_minimum_keeps_its_slot_under_pressure() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start_judging_rate(dir.path(), 2, 64 << 10, Duration::from_secs(1)).await;
    // About 640 KiB/s, ten times the minimum (a phone on a slow link); 2 MiB in all.
    let data: Vec<u8> = (0..2u32 << 20).map(|i| (i % 253) as u8).collect();
    let up = relay.token("phone", Direction::Upload, data.len() as u64);
    let honest = tokio::spawn(paced_upload(
        relay.addr,
        up,
        "phone".into(),
        data.clone(),
        32 << 10,
        Duration::from_millis(50),
    ));
    let (closed_tx, mut closed) = mpsc::unbounded_channel();
    let drip = dripper(&relay, "drip", closed_tx).await;
    relay.wait_for_metric("msim_relay_uploads_active 2\n").await;
    // New connections keep coming while both slots are taken: each must be served, and only
    // ever at the dripper's expense.
    let mut served = 0;
    while !honest.is_finished() {
        let (status, _) = relay.request("GET", "/healthz", None, b"").await;
        assert_eq!(status, 200);
        served += 1;
    }
    assert!(served > 0);
    let (status, body) = honest.await.unwrap();
    assert_eq!(status, 201, "{}", utf8(&body));
    timeout(WAIT, closed.recv())
        .await
        .expect("the dripper was closed");
    drip.await.unwrap();
    let down = relay.token("phone", Direction::Download, data.len() as u64);
    let (status, got) = relay
        .request("GET", "/v1/transfers/phone", Some(&down), b"")
        .await;
    assert_eq!(status, 200);
    assert!(got == data, "downloaded bytes differ");
    relay.stop().await;
}

/// `Upload-Offset` of the transfer at `path` (from `HEAD`).
async fn upload_offset(relay: &Relay, path: &str, token: &str) -> u64 {
    let head = format!(
        "HEAD {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    );
    let mut s = TcpStream::connect(relay.addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    timeout(WAIT, s.read_to_end(&mut out))
        .await
        .expect("HEAD answered")
        .unwrap();
    let text = utf8(&out).to_ascii_lowercase();
    text.lines()
        .find_map(|l| l.strip_prefix("upload-offset: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no Upload-Offset in {text}"))
}
