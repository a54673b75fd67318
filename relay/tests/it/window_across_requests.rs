//! The minimum rate is judged over a connection's last window across request boundaries
//! (attack H1 of the third outside review): one-byte `PATCH`es, each sent just before the
//! window ends, no longer restart the clock, so connections kept that way lose their slots;
//! an honest keep-alive client doing many small requests at a good rate keeps its slot.

use crate::support;

use std::time::Duration;

use msim_shared::token::Direction;
use support::{utf8, Relay, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::timeout;

const WINDOW: Duration = Duration::from_millis(300);

fn patch_head(id: &str, token: &str, offset: u64, len: usize, close: bool) -> String {
    let close = if close { "Connection: close\r\n" } else { "" };
    format!(
        "PATCH /v1/transfers/{id} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nUpload-Offset: {offset}\r\nContent-Length: {len}\r\n{close}\r\n"
    )
}

/// The attack: a `PATCH` of one byte whose byte, with the next `PATCH`'s head right behind
/// it, goes out just before each window ends. Reports `id` on `round` after each answered
/// request and on `closed` when the relay closes the connection.
async fn window_resetter(
    relay: &Relay,
    id: String,
    round: mpsc::UnboundedSender<String>,
    closed: mpsc::UnboundedSender<String>,
) -> tokio::task::JoinHandle<()> {
    let up = relay.token(&id, Direction::Upload, 1 << 20);
    let mut s = TcpStream::connect(relay.addr).await.unwrap();
    s.write_all(patch_head(&id, &up, 0, 1, false).as_bytes())
        .await
        .unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 4096];
        for offset in 1.. {
            // Pacing the attacker (80 % of a window), not synchronisation.
            tokio::time::sleep(WINDOW * 4 / 5).await;
            let next = format!("y{}", patch_head(&id, &up, offset, 1, false));
            if s.write_all(next.as_bytes()).await.is_err() {
                break;
            }
            match timeout(WAIT, s.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => {
                    assert!(buf.starts_with(b"HTTP/1.1 2"), "{}", utf8(&buf[..n]));
                    let _ = round.send(id.clone());
                }
                _ => break,
            }
        }
        let _ = closed.send(id);
    })
}

#[tokio::test]
async fn one_byte_patches_before_each_window_ends_lose_their_slots() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start_judging_rate(dir.path(), 4, 64 << 10, WINDOW).await;
    let (round_tx, mut rounds) = mpsc::unbounded_channel();
    let (closed_tx, mut closed) = mpsc::unbounded_channel();
    let mut attackers = Vec::new();
    for i in 0..4 {
        attackers.push(
            window_resetter(
                &relay,
                format!("reset{i}"),
                round_tx.clone(),
                closed_tx.clone(),
            )
            .await,
        );
    }
    // Every attacker has had a request answered and started the next: all slots are held.
    let mut started = std::collections::HashSet::new();
    while started.len() < 4 {
        let id = timeout(WAIT, rounds.recv())
            .await
            .expect("the attackers' requests are answered")
            .expect("round");
        started.insert(id);
    }
    let (status, body) = relay.request("GET", "/healthz", None, b"").await;
    assert_eq!((status, utf8(&body).as_str()), (200, "ok\n"));
    relay
        .upload_and_download("honest", &vec![7u8; 200_000])
        .await;
    timeout(WAIT, closed.recv())
        .await
        .expect("an attacker's connection was closed")
        .expect("attacker id");
    for a in attackers {
        a.abort();
    }
    relay.stop().await;
}

#[tokio::test]
async fn a_keep_alive_client_with_many_small_fast_requests_keeps_its_slot() {
    let dir = tempfile::tempdir().unwrap();
    // 8 KiB/s, over a longer window than the attack's so that a loaded test machine
    // slowing some requests down does not fail it.
    let relay = Relay::start_judging_rate(dir.path(), 1, 16 << 10, Duration::from_secs(2)).await;
    // 16 KiB per request every 25 ms (about 640 KiB/s, eighty times the minimum), idle most
    // of the time between requests: 2 MiB in 128 requests, about two windows.
    let data: Vec<u8> = (0..2u32 << 20).map(|i| (i % 251) as u8).collect();
    let up = relay.token("small", Direction::Upload, data.len() as u64);
    let (judged_tx, mut judged) = mpsc::unbounded_channel();
    let addr = relay.addr;
    let sent = data.clone();
    let client = tokio::spawn(async move {
        let mut s = TcpStream::connect(addr).await?;
        let started = std::time::Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(25));
        let parts: Vec<&[u8]> = sent.chunks(16 << 10).collect();
        let mut buf = [0u8; 4096];
        for (i, part) in parts.iter().enumerate() {
            tick.tick().await;
            let last = i + 1 == parts.len();
            let head = patch_head("small", &up, (i * (16 << 10)) as u64, part.len(), last);
            s.write_all(head.as_bytes()).await?;
            s.write_all(part).await?;
            let n = timeout(WAIT, s.read(&mut buf)).await??;
            if !buf[..n].starts_with(b"HTTP/1.1 2") {
                return Err(std::io::Error::other(format!(
                    "request {i}: {}",
                    utf8(&buf[..n])
                )));
            }
            // Past a window and a quarter the connection has been judged: the newcomer may come.
            if started.elapsed() >= Duration::from_millis(2500) {
                let _ = judged_tx.send(());
            }
        }
        Ok::<_, std::io::Error>(())
    });
    timeout(WAIT * 3, judged.recv())
        .await
        .expect("the client ran a window and a quarter")
        .expect("signal");
    // The only slot is held by a fast client: the newcomer waits until it is done.
    let mut newcomer = TcpStream::connect(relay.addr).await.unwrap();
    newcomer
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    timeout(WAIT * 3, client)
        .await
        .expect("the client finished")
        .unwrap()
        .expect("the client kept its connection");
    let mut out = Vec::new();
    timeout(WAIT, newcomer.read_to_end(&mut out))
        .await
        .expect("the newcomer was answered")
        .unwrap();
    let (status, body) = support::parse_response(&out);
    assert_eq!((status, utf8(&body).as_str()), (200, "ok\n"));
    relay
        .wait_for_metric("msim_relay_connections_evicted_total 0\n")
        .await;
    let down = relay.token("small", Direction::Download, data.len() as u64);
    let (status, got) = relay
        .request("GET", "/v1/transfers/small", Some(&down), b"")
        .await;
    assert_eq!(status, 200);
    assert!(got == data, "downloaded bytes differ");
    relay.stop().await;
}
