//! Stored items and live packets reach every session of a user, whichever node it is on,
//! exactly once.

use super::*;

/// A recipient's sessions on three nodes each get every message once (the sender's node
/// pushes to its own sessions, the other nodes read the store by position), and the sender's
/// other session on another node gets each carbon copy (a live-only packet) once.
#[tokio::test]
async fn every_session_of_a_recipient_gets_one_copy_on_every_node() {
    let Some(url) = database("one_copy").await else {
        return;
    };
    let n = nodes(&url, 3, &[]).await;
    let mut alice = n[0].user("alice").await;
    drop(n[1].user("bob").await);
    // (Node 0 learns meanwhile that alice is online on node 2: carbon copies are live
    // packets, published only for users online elsewhere.)
    let mut alice2 = n[2].session("alice").await;
    let mut bobs = Vec::new();
    for node in &n {
        bobs.push(node.session("bob").await);
    }
    let texts: Vec<String> = (0..40).map(|i| format!("m{i}")).collect();
    let ids = send_all(&mut alice, "bob", &texts).await;
    // The markers: committed after everything else, each from a node other than the
    // sessions' it closes.
    let mut marker_sender = n[1].session("alice").await;
    send_all(&mut marker_sender, "bob", &["end-b".into()]).await;
    send_all(&mut alice, "bob", &["end-a".into()]).await;
    for (i, bob) in bobs.iter_mut().enumerate() {
        // Node 1's session gets node 0's marker; the others node 1's.
        let marker = if i == 1 { "end-a" } else { "end-b" };
        let got = messages_until(bob, &ids, marker).await;
        exactly_once(&format!("bob on node {i}"), &got, &ids);
    }
    // Carbon copies for the sender's other session (node 2): live packets published by node 0
    // (and node 1's for the marker).
    let got = messages_until(&mut alice2, &ids, "end-b").await;
    exactly_once("alice's other session", &got, &ids);
}

/// Senders on every node at once, to two recipients with sessions on different nodes: every
/// recipient session gets every message once, each sender's in the order sent.
#[tokio::test]
async fn concurrent_senders_on_every_node_leave_no_gaps_or_duplicates() {
    let Some(url) = database("concurrent").await else {
        return;
    };
    let n = nodes(&url, 3, &[]).await;
    for login in ["bob", "carol"] {
        drop(n[0].user(login).await);
    }
    let mut senders = Vec::new();
    for (i, node) in n.iter().enumerate() {
        senders.push(node.user(&format!("sender{i}")).await);
    }
    let mut bob0 = n[0].session("bob").await;
    let mut bob2 = n[2].session("bob").await;
    let mut carol1 = n[1].session("carol").await;
    const EACH: usize = 60;
    let runs = senders.into_iter().enumerate().map(|(i, mut s)| {
        tokio::spawn(async move {
            let mut ids = (Vec::new(), Vec::new());
            // Interleaved: a run to bob, a run to carol, so batches mix recipients and nodes.
            for round in 0..3 {
                let to_bob: Vec<String> = (0..EACH / 3)
                    .map(|k| format!("s{i}-b{round}-{k}"))
                    .collect();
                let to_carol: Vec<String> = (0..EACH / 3)
                    .map(|k| format!("s{i}-c{round}-{k}"))
                    .collect();
                ids.0.extend(send_all(&mut s, "bob", &to_bob).await);
                ids.1.extend(send_all(&mut s, "carol", &to_carol).await);
            }
            (s, ids)
        })
    });
    let mut for_bob = Vec::new();
    let mut for_carol = Vec::new();
    let mut senders = Vec::new();
    for r in runs.collect::<Vec<_>>() {
        let (s, (b, c)) = r.await.unwrap();
        for_bob.extend(b);
        for_carol.extend(c);
        senders.push(s);
    }
    assert_eq!(for_bob.len(), 3 * EACH);
    // Markers from a node other than each session's.
    send_all(&mut senders[1], "bob", &["end-1".into()]).await;
    send_all(&mut senders[0], "carol", &["end-0".into()]).await;
    for (who, c, marker, want) in [
        ("bob on node 0", &mut bob0, "end-1", &for_bob),
        ("bob on node 2", &mut bob2, "end-1", &for_bob),
        ("carol on node 1", &mut carol1, "end-0", &for_carol),
    ] {
        let got = messages_until(c, want, marker).await;
        exactly_once(who, &got, want);
        // Each sender's messages in the order it sent them (its texts number them).
        for i in 0..3 {
            let mine: Vec<&str> = got
                .iter()
                .map(|(_, t)| t.as_str())
                .filter(|t| t.starts_with(&format!("s{i}-")))
                .collect();
            let mut sorted = mine.clone();
            sorted.sort_by_key(|t| {
                let (_, rest) = t.split_once('-').unwrap();
                let round: usize = rest[1..rest.find('-').unwrap()].parse().unwrap();
                let k: usize = rest.rsplit('-').next().unwrap().parse().unwrap();
                (round, k)
            });
            assert_eq!(mine, sorted, "{who}: s{i}'s messages out of order");
        }
    }
}

/// The defect of acknowledging on one node: bob's session on node 0 acknowledges and reads a
/// message while node 1 (frozen with SIGSTOP) has not read it yet; alice's session there has
/// not got the receipt either. Before the fix the acknowledgement cleared the body and the
/// delivered receipt was deleted, so node 1 then pushed an empty message and no receipt.
/// Now both stay until every node's reader has passed them.
#[tokio::test]
async fn a_lagging_node_still_pushes_what_another_session_acknowledged() {
    let Some(url) = database("lagging").await else {
        return;
    };
    // A long node timeout: the frozen node must not be reaped meanwhile (a node cut off for
    // longer is dead, and its sessions get what it missed at their next login only).
    let n = nodes(&url, 2, &["--cluster-node-timeout", "60s"]).await;
    let mut alice = n[0].user("alice").await;
    drop(n[0].user("bob").await);
    let mut bob0 = n[0].session("bob").await;
    let mut bob1 = n[1].session("bob").await;
    let mut alice1 = n[1].session("alice").await;
    n[1].signal("STOP");
    let ids = send_all(&mut alice, "bob", &["hello".into()]).await;
    let id = &ids[0];
    let m = bob0.expect_skip("MESSAGE").await;
    assert_eq!(field(&m, "id").as_ref(), Some(id));
    bob0.send(&format!("MESSAGE-ACK id={id}")).await;
    bob0.send(&format!("MESSAGE-READ id={id}")).await;
    // The receipt reached alice on node 0: the read (after the acknowledgement) is committed,
    // and the receipt was recorded delivered right after it was queued for her.
    let r = alice.expect_skip("MESSAGE-READ").await;
    assert_eq!(field(&r, "id").as_ref(), Some(id));
    // One more commit after that record (the writer takes requests in order).
    send_all(&mut alice, "alice", &["sync".into()]).await;
    n[1].signal("CONT");
    let m = bob1.expect_skip("MESSAGE").await;
    assert_eq!(field(&m, "id").as_ref(), Some(id));
    assert_eq!(field(&m, "text").as_deref(), Some("hello"));
    // alice's session on node 1: the receipt (stored, by position) and the copy of her note.
    let r = alice1.expect_skip("MESSAGE-READ").await;
    assert_eq!(field(&r, "id").as_ref(), Some(id));
    assert_eq!(field(&r, "by").as_deref(), Some("bob@localhost"));
}

/// A node that was held up (SIGSTOP) catches up a burst larger than a session's outgoing
/// queue (256 items) in one page. Before, the reader pushed the page at once and the
/// recipient's session, reading normally, was disconnected as a slow reader; now the reader
/// waits (briefly, within a budget) for room, and the session gets everything once.
#[tokio::test]
async fn a_node_catching_up_a_burst_keeps_its_reading_sessions() {
    let Some(url) = database("burst").await else {
        return;
    };
    let n = nodes(&url, 2, &["--cluster-node-timeout", "60s"]).await;
    let mut alice = n[0].user("alice").await;
    drop(n[0].user("bob").await);
    let mut bob = n[1].session("bob").await;
    n[1].signal("STOP");
    let texts: Vec<String> = (0..700).map(|i| format!("burst{i}")).collect();
    let mut ids = Vec::new();
    for chunk in texts.chunks(100) {
        ids.extend(send_all(&mut alice, "bob", chunk).await);
    }
    send_all(&mut alice, "bob", &["end-0".into()]).await;
    n[1].signal("CONT");
    let got = messages_until(&mut bob, &ids, "end-0").await;
    exactly_once("bob", &got, &ids);
}

/// The body of `id` and whether the message is still pending, straight from the database.
async fn stored(pool: &sqlx::PgPool, id: &str) -> (String, i16) {
    sqlx::query_as("SELECT body, pending FROM messages WHERE id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Waits until the acknowledgement of `id` is committed; returns the body left then.
async fn body_once_acknowledged(pool: &sqlx::PgPool, id: &str) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (body, pending) = stored(pool, id).await;
        if pending == 0 {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{id} never acknowledged"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An acknowledgement clears the text itself when every node has already pushed the message
/// (the committing node did at once, the acknowledging node's reader delivered it), instead of
/// a third write of the row by the leader's scrub (one heartbeat later: a minute here, so the
/// scrub cannot be what clears it). Before, the text stayed until the scrub. A node that has
/// not recorded passing the message still holds it back (its sessions may need it).
#[tokio::test]
async fn an_acknowledgement_clears_the_text_when_every_node_has_passed_it() {
    let Some(url) = database("ack_clears").await else {
        return;
    };
    let slow = [
        "--cluster-heartbeat",
        "60s",
        "--cluster-node-timeout",
        "300s",
    ];
    let n = nodes(&url, 2, &slow).await;
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let mut alice = n[0].user("alice").await;
    drop(n[0].user("bob").await);
    let mut bob = n[1].session("bob").await;
    let ids = send_all(&mut alice, "bob", &["first".into()]).await;
    let m = bob.expect_skip("MESSAGE").await;
    assert_eq!(field(&m, "text").as_deref(), Some("first"));
    bob.send(&format!("MESSAGE-ACK id={}", ids[0])).await;
    assert_eq!(body_once_acknowledged(&pool, &ids[0]).await, "");
    // A third node whose recorded position (at its start, then not for a minute) is below the
    // next message: the text stays for the scrub.
    let _third = Node::start(&url, Some(&n[0].key()), &slow).await;
    let ids = send_all(&mut alice, "bob", &["second".into()]).await;
    let m = bob.expect_skip("MESSAGE").await;
    assert_eq!(field(&m, "text").as_deref(), Some("second"));
    bob.send(&format!("MESSAGE-ACK id={}", ids[0])).await;
    assert_eq!(body_once_acknowledged(&pool, &ids[0]).await, "second");
}
