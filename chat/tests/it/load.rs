//! ≥100 concurrent clients exchanging messages: nothing lost, nothing duplicated.

use crate::common;
use common::{field, TestServer};
use std::collections::HashSet;

const CLIENTS: usize = 120;
const PER_CLIENT: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_clients_nothing_lost_or_duplicated() {
    let srv = TestServer::start().await;
    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        clients.push(srv.user(&format!("user{i}")).await);
    }
    let start = std::time::Instant::now();
    let mut tasks = Vec::new();
    for (i, mut c) in clients.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let to = format!("user{}", (i + 1) % CLIENTS);
            let from = format!("user{}@localhost", (i + CLIENTS - 1) % CLIENTS);
            for k in 0..PER_CLIENT {
                c.send(&format!("MESSAGE to={to} text={i}-{k}")).await;
            }
            let (mut sent, mut got) = (HashSet::new(), Vec::new());
            while sent.len() < PER_CLIENT || got.len() < PER_CLIENT {
                let l = c.line().await;
                if l.starts_with("MESSAGE-SENT ") {
                    assert!(
                        sent.insert(field(&l, "id").unwrap()),
                        "duplicate MESSAGE-SENT"
                    );
                } else if l.starts_with("MESSAGE ") {
                    assert_eq!(field(&l, "from").unwrap(), from);
                    got.push(field(&l, "text").unwrap());
                } else {
                    panic!("unexpected {l}");
                }
            }
            // In order, none lost or duplicated.
            let sender = (i + CLIENTS - 1) % CLIENTS;
            let want: Vec<String> = (0..PER_CLIENT).map(|k| format!("{sender}-{k}")).collect();
            assert_eq!(got, want);
            c.sync().await;
            sent
        }));
    }
    let mut all = HashSet::new();
    for t in tasks {
        for id in t.await.unwrap() {
            assert!(all.insert(id), "duplicate id");
        }
    }
    assert_eq!(all.len(), CLIENTS * PER_CLIENT);
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "{} durable messages in {secs:.2}s ({:.0}/s)",
        all.len(),
        all.len() as f64 / secs
    );
    srv.stop().await;
}
