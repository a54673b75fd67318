//! Migration 0170: the indexes that find messages by `pending` hold only the rows asked about,
//! so an acknowledgement adds no entry to the index of waiting messages, and every query that
//! finds messages by `pending` still reads them through an index.

use super::*;
use crate::db::{Outcome, StoredMessage, WriteOp};

fn message(n: usize) -> WriteOp {
    WriteOp::InsertMessage(StoredMessage {
        seq: 0,
        id: format!("m{n:04}"),
        sender: "alice".into(),
        recipient: "bob".into(),
        at: 1_000 + n as i64,
        text: "hi".into(),
    })
}

/// The index each query is planned on (sequential scans off: the test table is small).
async fn index_of(pool: &PgPool, query: &str) -> String {
    let mut c = pool.acquire().await.expect("connection");
    sqlx::query("SET enable_seqscan = off")
        .execute(&mut *c)
        .await
        .expect("set");
    let plan: Vec<(String,)> = sqlx::query_as(sqlx::AssertSqlSafe(format!("EXPLAIN {query}")))
        .fetch_all(&mut *c)
        .await
        .expect("explain");
    sqlx::query("RESET enable_seqscan")
        .execute(&mut *c)
        .await
        .expect("reset");
    plan.into_iter()
        .map(|(l,)| l)
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test]
async fn acknowledgements_leave_the_index_of_waiting_messages() {
    let Some(url) = tokio::task::spawn_blocking(|| {
        msim_testkit::postgres::database("store: partial indexes of pending messages")
    })
    .await
    .expect("cluster thread") else {
        return;
    };
    let db = Db::open_postgres(&url).await.expect("open");
    let users = ["alice", "bob"].map(|l| WriteOp::CreateUser {
        login: l.into(),
        sealed: vec![1; 8],
        now: 1,
    });
    db.apply_batch(users.into()).await.expect("users");
    let sent = db
        .apply_batch((0..300).map(message).collect())
        .await
        .expect("messages");
    assert!(sent.iter().all(|o| matches!(o, Ok(Outcome::Stored(_)))));
    let acks = (0..200)
        .map(|n| WriteOp::Ack {
            id: format!("m{n:04}"),
            recipient: "bob".into(),
        })
        .collect();
    db.apply_batch(acks).await.expect("acks");
    let waiting = db
        .pending_messages("bob", 0, i64::MAX, 1_000)
        .await
        .expect("catch-up");
    assert_eq!(waiting.len(), 100);
    assert_eq!(waiting[0].id, "m0200");

    let pool = db.postgres_pool().expect("PostgreSQL");
    // Dead row versions gone: what is left in each index is what it holds for live rows.
    sqlx::query("VACUUM (INDEX_CLEANUP ON) messages")
        .execute(&pool)
        .await
        .expect("vacuum");
    let entries: Vec<(String, f32)> = sqlx::query_as(
        "SELECT relname::text, reltuples FROM pg_class WHERE relname IN \
         ('messages_waiting', 'messages_waiting_age', 'messages_delivered_age') ORDER BY relname",
    )
    .fetch_all(&pool)
    .await
    .expect("index sizes");
    assert_eq!(
        entries,
        vec![
            ("messages_delivered_age".to_owned(), 200.0),
            ("messages_waiting".to_owned(), 100.0),
            ("messages_waiting_age".to_owned(), 100.0),
        ]
    );

    // Catch-up and pending counts (reads.rs, retention.rs), expiry, forgetting delivered
    // messages and the scrub (retention.rs, cluster/scrub.rs).
    for (query, index) in [
        (
            "SELECT seq FROM messages WHERE recipient = 'bob' AND pending = 1 \
             AND seq > 0 AND seq <= 1000 ORDER BY seq LIMIT 10",
            "messages_waiting",
        ),
        (
            // The login's probe (`Db::login_marks`).
            "SELECT EXISTS (SELECT 1 FROM messages WHERE recipient = 'bob' AND pending = 1)",
            "messages_waiting",
        ),
        (
            "SELECT recipient, COUNT(*) FROM messages WHERE pending = 1 \
             AND recipient IN ('bob') GROUP BY recipient",
            "messages_waiting",
        ),
        (
            "SELECT seq FROM messages WHERE pending = 1 AND at < 2000 ORDER BY at LIMIT 10",
            "messages_waiting_age",
        ),
        (
            "SELECT seq FROM messages WHERE pending = 0 AND at < 2000 LIMIT 10",
            "messages_delivered_age",
        ),
    ] {
        let plan = index_of(&pool, query).await;
        assert!(plan.contains(index), "{query}\n{plan}");
    }
    db.close().await;
}
