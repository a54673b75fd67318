//! Slots kept for health checks (attack H1 leftover): when every transfer slot holds a
//! transfer that keeps its slot (here: none has been running a window yet), `/healthz` still
//! answers at once, and a new transfer waits for a slot instead of being refused.

use crate::support;

use std::time::Duration;

use msim_shared::token::Direction;
use support::{utf8, Relay, WAIT};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::timeout;

const SIZE: u64 = 1 << 20;

/// An upload of `id` that has sent its head and part of its body and stays open.
async fn held_upload(relay: &Relay, id: &str) -> TcpStream {
    let token = relay.token(id, Direction::Upload, SIZE);
    let mut s = TcpStream::connect(relay.addr).await.unwrap();
    let head = format!(
        "PUT /v1/transfers/{id} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Length: {SIZE}\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&[b'h'; 4096]).await.unwrap();
    s
}

#[tokio::test]
async fn health_checks_answer_while_every_transfer_slot_is_taken() {
    let dir = tempfile::tempdir().unwrap();
    // Nobody is judged within the test: both uploads keep their slots.
    let relay = Relay::start_judging_rate(dir.path(), 2, 64 << 10, Duration::from_secs(600)).await;
    let first = held_upload(&relay, "u1").await;
    let second = held_upload(&relay, "u2").await;
    relay.wait_for_metric("msim_relay_uploads_active 2\n").await;
    // More checks than health slots, one after another (each closes its connection).
    for _ in 0..10 {
        let (status, body) = relay.request("GET", "/healthz", None, b"").await;
        assert_eq!((status, utf8(&body).as_str()), (200, "ok\n"));
    }
    // A new upload is not refused: it waits for a transfer slot, and gets one when an upload
    // ends.
    let data = vec![9u8; 100_000];
    let up = relay.token("later", Direction::Upload, data.len() as u64);
    let honest = tokio::spawn({
        let addr = relay.addr;
        let data = data.clone();
        async move {
            let head = format!(
                "PUT /v1/transfers/later HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {up}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                data.len()
            );
            support::exchange(addr, head.as_bytes(), &data).await
        }
    });
    // Health checks still answer while that upload waits on a health slot.
    let (status, _) = relay.request("GET", "/healthz", None, b"").await;
    assert_eq!(status, 200);
    assert!(
        !honest.is_finished(),
        "the upload got a slot no one gave up"
    );
    drop(first);
    let (status, body) = timeout(WAIT, honest)
        .await
        .expect("upload answered")
        .unwrap();
    assert_eq!(status, 201, "{}", utf8(&body));
    drop(second);
    relay.stop().await;
}
