//! What happens when a node's listening connection or the node itself goes away.

use super::*;

/// `pg_terminate_backend` of every node's `LISTEN` connection while messages flow from node 0
/// to bob on node 1: the notifications sent meanwhile are lost, the listener reconnects and
/// catches up by position, and bob gets every message once.
#[tokio::test]
async fn killing_the_listening_connections_mid_traffic_loses_nothing() {
    let Some(url) = database("listener").await else {
        return;
    };
    let mut n = nodes(&url, 2, &[]).await;
    let mut alice = n[0].user("alice").await;
    drop(n[0].user("bob").await);
    let mut bob = n[1].session("bob").await;
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let connects: Vec<usize> = n.iter_mut().map(|node| node.count_log(LISTENING)).collect();
    let first: Vec<String> = (0..100).map(|i| format!("a{i}")).collect();
    let mut ids = send_all(&mut alice, "bob", &first).await;
    // Mid-traffic: the next run is on its way while the listeners are cut.
    let second: Vec<String> = (0..100).map(|i| format!("b{i}")).collect();
    let mut batch = String::new();
    for t in &second {
        batch.push_str(&format!("MESSAGE to=bob text={t}\n"));
    }
    alice.send_raw(batch.as_bytes()).await;
    let killed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND query LIKE 'LISTEN%' \
         AND pid <> pg_backend_pid()",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(killed.len() >= 2, "both nodes listen: {killed:?}");
    while ids.len() < first.len() + second.len() {
        let l = alice.line().await;
        assert!(!l.starts_with("MESSAGE-SEND-FAILED"), "{l}");
        if l.starts_with("MESSAGE-SENT ") {
            ids.push(field(&l, "id").unwrap());
        }
    }
    // Both listeners came back (and caught up).
    for (node, before) in n.iter_mut().zip(connects) {
        node.wait_log_nth(LISTENING, before + 1).await;
    }
    let third: Vec<String> = (0..50).map(|i| format!("c{i}")).collect();
    ids.extend(send_all(&mut alice, "bob", &third).await);
    send_all(&mut alice, "bob", &["end-0".into()]).await;
    let got = messages_until(&mut bob, &ids, "end-0").await;
    exactly_once("bob", &got, &ids);
}

/// kill -9 of a node: its user goes offline for a watcher on another node within the node
/// timeout (plus a heartbeat or two), every message it answered `MESSAGE-SENT` is stored, and
/// the other node takes over the periodic jobs (here: message expiry, whose result reaches
/// the sender).
#[tokio::test]
async fn a_killed_node_goes_offline_and_another_takes_over() {
    let Some(url) = database("killed").await else {
        return;
    };
    // Node 0 leads (started first). Pending messages expire after 8 s.
    let jobs = ["--message-ttl", "8s", "--purge-interval", "200ms"];
    let mut n = nodes(&url, 2, &jobs).await;
    let mut bob = n[0].user("bob").await;
    // (Node 1 learns meanwhile that bob is online on node 0, so it pushes him its requests.)
    let mut alice = n[1].user("alice").await;
    drop(n[1].user("carol").await);
    drop(n[1].user("dave").await);
    // alice watches bob (approved).
    alice.send("CONTACTS-ADD id=bob").await;
    alice.expect("CONTACTS-ADD-OK").await;
    bob.expect_skip("PRESENCE-REQUEST").await;
    bob.send("PRESENCE-APPROVE id=alice").await;
    bob.expect("PRESENCE-APPROVE-OK").await;
    let l = alice.expect_skip("CONTACT-UPDATED").await;
    assert_eq!(l, "CONTACT-UPDATED");
    assert_eq!(alice.list().await, vec!["id=bob@localhost presence=online"]);
    // bob's messages to carol (offline), answered by node 0, which then dies.
    let texts: Vec<String> = (0..50).map(|i| format!("k{i}")).collect();
    let ids = send_all(&mut bob, "carol", &texts).await;
    let killed = std::time::Instant::now();
    n[0].kill().await;
    // alice is told bob went offline.
    alice.expect_skip("CONTACT-UPDATED").await;
    let update = alice.list().await;
    let gone = killed.elapsed();
    assert!(
        update[0].starts_with("id=bob@localhost presence=20"),
        "{update:?}"
    );
    let bound = NODE_TIMEOUT + HEARTBEAT * 3 + Duration::from_secs(3);
    assert!(gone < bound, "offline after {gone:?}, bound {bound:?}");
    // Nothing acknowledged is lost: carol gets all of it on node 1.
    let mut carol = n[1].session("carol").await;
    let mut got = Vec::new();
    while got.len() < ids.len() {
        let l = carol.expect_skip("MESSAGE").await;
        got.push((field(&l, "id").unwrap(), field(&l, "text").unwrap()));
    }
    exactly_once("carol", &got, &ids);
    for (id, _) in &got {
        carol.send(&format!("MESSAGE-ACK id={id}")).await;
    }
    // Node 1 runs the jobs now: a message to dave (offline) expires and alice is told.
    let lost = send_all(&mut alice, "dave", &["too-late".into()]).await;
    let failed = loop {
        let l = alice.try_line_within(WAIT).await.expect("connected");
        if l.starts_with("MESSAGE-SEND-FAILED") {
            break l;
        }
    };
    assert_eq!(field(&failed, "id"), Some(lost[0].clone()));
    assert_eq!(field(&failed, "reason").as_deref(), Some("expired"));
    n[1].wait_log(&["cluster leadership changed", "leader=true"])
        .await;
}
