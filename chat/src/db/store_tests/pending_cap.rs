//! The pending-message cap (PROTOCOL.md §5.6) as acknowledgements, expiry and other nodes
//! change queues, and what full queues cost the other writers.

use super::*;
use std::time::{Duration, Instant};

fn ack(id: &str, recipient: &str) -> WriteOp {
    WriteOp::Ack {
        id: id.into(),
        recipient: recipient.into(),
    }
}

fn stored(r: &[Result<Outcome, DbError>]) -> Vec<bool> {
    r.iter()
        .map(|o| match o {
            Ok(Outcome::Stored(_)) => true,
            Ok(Outcome::QueueFull) => false,
            other => panic!("{other:?}"),
        })
        .collect()
}

/// A full queue takes messages again once one is acknowledged or expires, and only then.
#[tokio::test]
async fn a_full_queue_takes_messages_again_after_acks_and_expiry() {
    on_each_backend("store: queue cap after acks and expiry", |db| async move {
        let db = db.with_pending_cap(2);
        batch(&db, vec![user("alice"), user("bob")]).await;
        let at = |id: &str, at: i64| {
            WriteOp::InsertMessage(StoredMessage {
                seq: 0,
                id: id.into(),
                sender: "alice".into(),
                recipient: "bob".into(),
                at,
                text: id.into(),
            })
        };
        let r = batch(&db, vec![at("m1", 10), at("m2", 1_000), at("m3", 1_000)]).await;
        assert_eq!(stored(&r), [true, true, false]);
        batch(&db, vec![ack("m2", "bob")]).await;
        let r = batch(&db, vec![at("m4", 1_000), at("m5", 1_000)]).await;
        assert_eq!(stored(&r), [true, false]);
        let purge = WriteOp::Purge {
            expire_before: 500,
            forget_before: 0,
            limit: 10,
        };
        batch(&db, vec![purge]).await;
        let r = batch(&db, vec![at("m6", 1_000), at("m7", 1_000)]).await;
        assert_eq!(stored(&r), [true, false]);
        assert_eq!(pending(&db, "bob").await, ["m4", "m6"]);
    })
    .await;
}

/// Two nodes on one database share the cap: what one node stored or acknowledged counts for
/// the other.
#[tokio::test]
async fn nodes_share_the_cap() {
    let Some(url) = tokio::task::spawn_blocking(|| {
        msim_testkit::postgres::database("store: queue cap shared by two nodes")
    })
    .await
    .expect("cluster thread") else {
        return;
    };
    let a = Db::open_postgres(&url)
        .await
        .expect("node a")
        .with_pending_cap(2);
    let b = Db::open_postgres(&url)
        .await
        .expect("node b")
        .with_pending_cap(2);
    batch(&a, vec![user("alice"), user("bob")]).await;
    assert_eq!(
        stored(&batch(&a, vec![message("a1", "bob", "1")]).await),
        [true]
    );
    let r = batch(
        &b,
        vec![message("b1", "bob", "2"), message("b2", "bob", "3")],
    )
    .await;
    assert_eq!(stored(&r), [true, false]);
    batch(&a, vec![ack("b1", "bob")]).await;
    let r = batch(
        &b,
        vec![message("b3", "bob", "4"), message("b4", "bob", "5")],
    )
    .await;
    assert_eq!(stored(&r), [true, false]);
    a.close().await;
    b.close().await;
}

/// The attack: many queues filled to the cap (the attacker's own free accounts), then one
/// message to each of them in every batch. Every one is refused, and the check must cost
/// about the same as for empty queues: it runs under the lock every node's batches wait for.
/// Counting each recipient's pending messages read `cap` index entries per full recipient per
/// batch (here 1 500 000 entries, tenths of a second per batch); the counters take one
/// lookup each.
#[tokio::test]
async fn full_queues_do_not_slow_the_batches_down() {
    const QUEUES: i64 = 150;
    const CAP: i64 = 10_000;
    let Some(url) = tokio::task::spawn_blocking(|| {
        msim_testkit::postgres::database("store: full queues and the batch lock")
    })
    .await
    .expect("cluster thread") else {
        return;
    };
    let attacker = Db::open_postgres(&url)
        .await
        .expect("attacker's node")
        .with_pending_cap(CAP as u64);
    let other = Db::open_postgres(&url)
        .await
        .expect("other node")
        .with_pending_cap(CAP as u64);
    let pool = attacker.postgres_pool().expect("pool");
    let mut users = vec![user("alice"), user("bob")];
    users.extend((0..QUEUES).map(|q| user(&format!("q{q}"))));
    users.extend((0..QUEUES).map(|q| user(&format!("e{q}"))));
    batch(&attacker, users).await;
    // The queues filled as a client would fill them, only faster (in parts: each statement
    // runs under the store's statement timeout).
    for part in 0..QUEUES / 10 {
        sqlx::query(
            "INSERT INTO messages (seq, id, sender, recipient, at, body) \
             SELECT nextval('message_seq'), 'fill' || g, 'mallory', 'q' || (g % $1), 1, 'x' \
             FROM generate_series($2 * $3, ($2 + 10) * $3 - 1) g",
        )
        .bind(QUEUES)
        .bind(part * 10)
        .bind(CAP)
        .execute(&pool)
        .await
        .expect("fill");
    }
    // Index-only counting at its quickest: the visibility map is set.
    sqlx::query("VACUUM ANALYZE messages")
        .execute(&pool)
        .await
        .expect("vacuum");
    let to = |prefix: &'static str, round: usize| -> Vec<WriteOp> {
        (0..QUEUES)
            .map(|q| {
                message(
                    &format!("{prefix}{round}-{q}"),
                    &format!("{prefix}{q}"),
                    "x",
                )
            })
            .collect()
    };
    // The quickest of several rounds: the machine's noise only ever adds time.
    let (mut attack, mut normal) = (Duration::MAX, Duration::MAX);
    for round in 0..5 {
        let started = Instant::now();
        let r = batch(&attacker, to("q", round)).await;
        attack = attack.min(started.elapsed());
        assert!(stored(&r).iter().all(|s| !s), "a full queue took a message");
        // The same batch from another node to users with empty queues: stored.
        let started = Instant::now();
        let r = batch(&other, to("e", round)).await;
        normal = normal.min(started.elapsed());
        assert!(stored(&r).iter().all(|s| *s), "{r:?}");
    }
    eprintln!("quickest batch to full queues: {attack:?}, to empty queues: {normal:?}");
    // A few milliseconds with the counters, less than storing the same batch (debug build,
    // busy machine); ~0.4 s here before (counting the queues, also slowing the batches of
    // users with empty queues to ~0.25 s).
    assert!(
        attack < Duration::from_millis(100) && attack < normal * 3,
        "full queues slowed the batches down: {attack:?} (storing: {normal:?})"
    );
    attacker.close().await;
    other.close().await;
}
