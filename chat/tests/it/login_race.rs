//! Login while messages and file offers are being sent: every item reaches the new session
//! exactly once, either from the login backlog or live (PROTOCOL.md §5.4).

use crate::common;
use common::{field, Client, TestServer, PASSWORD};
use std::collections::HashMap;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const ITERATIONS: usize = 60;
const MESSAGES: usize = 40;
const OFFERS: usize = 5;

/// A fake relay answering every request with 200 (health checks).
async fn fake_relay() -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let resp = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok";
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    url
}

/// The burst: `MESSAGES` messages and `OFFERS` offers to `to`, as request lines.
fn burst(to: &str) -> Vec<String> {
    let mut lines = Vec::new();
    for i in 0..MESSAGES {
        lines.push(format!("MESSAGE to={to} text=m{i}\n"));
        if i % (MESSAGES / OFFERS) == 0 {
            lines.push(format!(
                "SEND-FILE-PROXY to={to} filename=f{i}.jpg size=10\n"
            ));
        }
    }
    lines
}

/// Reads the confirmations of a burst; returns the message and transfer ids.
async fn confirmations(a: &mut Client) -> (Vec<String>, Vec<String>) {
    let (mut msgs, mut offers) = (Vec::new(), Vec::new());
    while msgs.len() < MESSAGES || offers.len() < OFFERS {
        let l = a.line().await;
        if l.starts_with("MESSAGE-SENT ") {
            msgs.push(field(&l, "id").unwrap());
        } else if l.starts_with("SEND-FILE-PROXY-PENDING ") {
            offers.push(field(&l, "transfer-id").unwrap());
        } else {
            panic!("unexpected answer {l:?}");
        }
    }
    (msgs, offers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_during_traffic_delivers_each_item_exactly_once() {
    let relay = fake_relay().await;
    let srv = TestServer::start_with(|c| {
        c.relays = vec![relay];
        c.relay_secret = msim_shared::token::generate_secret_text();
        // 300 offers stay unanswered here: beyond the default open-offer quota, which is not
        // what this test is about.
        c.offer_quota.per_account = (ITERATIONS * OFFERS) as u64;
        c.offer_quota.per_address = (ITERATIONS * OFFERS) as u64;
    })
    .await;
    let mut a = srv.user("alice").await;
    for it in 0..ITERATIONS {
        let bob = format!("bob{it}");
        let mut reg = srv.client().await;
        reg.send(&format!("REGISTER login={bob} password={PASSWORD}"))
            .await;
        reg.expect("REGISTER-OK").await;
        drop(reg);
        // Bob is challenged; his CONNECT-CONTINUE goes out in the middle of alice's burst, at a
        // different point each iteration.
        let mut b = srv.client().await;
        b.send(&format!("CONNECT login={bob}")).await;
        let salt = field(&b.expect("CONNECT-ACK").await, "salt").unwrap();
        let hash = msim_chat::crypto::challenge_hash(&salt, PASSWORD.as_bytes());
        let lines = burst(&bob);
        let split = (it * 7) % lines.len();
        a.send_raw(lines[..split].concat().as_bytes()).await;
        b.send(&format!("CONNECT-CONTINUE hash={hash}")).await;
        a.send_raw(lines[split..].concat().as_bytes()).await;
        let ((msgs, offers), ok) = tokio::join!(confirmations(&mut a), b.line());
        assert!(ok.starts_with("CONNECT-OK "), "{ok}");
        // Everything alice sent is stored and was handed to the hub before her confirmations,
        // so it is ahead of the PONG (backlog or live).
        b.send("PING ref=sync").await;
        let mut seen: HashMap<String, usize> = HashMap::new();
        loop {
            let l = b.line().await;
            if l == "PONG ref=sync" {
                break;
            }
            let key = if l.starts_with("MESSAGE ") {
                field(&l, "id").unwrap()
            } else if l.starts_with("SEND-FILE-PROXY-REQUEST ") {
                field(&l, "transfer-id").unwrap()
            } else {
                continue;
            };
            *seen.entry(key).or_default() += 1;
        }
        for id in msgs.iter().chain(&offers) {
            assert_eq!(seen.get(id), Some(&1), "iteration {it}: item {id} count");
        }
        assert_eq!(seen.len(), MESSAGES + OFFERS, "iteration {it}: extra items");
    }
    srv.stop().await;
}
