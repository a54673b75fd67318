//! A batch whose `COMMIT` PostgreSQL holds on to (its locks kept) while the answer is lost:
//! the writer ends it after [`HELD_QUESTIONS`] "still locked" answers, or at once when the
//! server stops, and tells the exact outcome.

use super::commit_status::HELD_QUESTIONS;
use super::commit_status_tests::{marked_batch, until_a_lock_is_waited_for};
use super::*;
use sqlx::{Connection, Executor};

/// Opens, on `c`, a batch transaction that stores mark 1 and stays open (its row locked).
async fn open_batch(c: &mut PgConnection, writer: i64) -> Locked {
    marked_batch(c, BatchMark { writer, mark: 1 }).await
}

/// A transaction that keeps its row locked past the questions' patience (the old loop waited
/// for it without end, every write of the node behind it) is ended after
/// [`HELD_QUESTIONS`] "still locked" answers and told as it ended: rolled back, so "did not
/// commit" (not "unknown").
#[tokio::test]
async fn a_batch_held_too_long_is_ended_and_told_exactly() {
    let Some(url) = tokio::task::spawn_blocking(|| {
        msim_testkit::postgres::database("store: commit status of a held batch")
    })
    .await
    .expect("cluster thread") else {
        return;
    };
    let db = Db::open_postgres(&url).await.expect("migrated");
    let pool = db.postgres_pool().expect("pool");
    let mut c = PgConnection::connect(&url).await.expect("connection");
    let held = open_batch(&mut c, 21).await;
    let limit = Duration::from_millis(200);
    let started = tokio::time::Instant::now();
    let asked = tokio::spawn({
        let pool = pool.clone();
        async move { commit_status(&pool, &held, limit, &CancellationToken::new()).await }
    });
    let told = tokio::time::timeout(Duration::from_secs(30), asked)
        .await
        .expect("a held batch is not waited for without end")
        .expect("task");
    assert_eq!(told, Some(false), "ended before its COMMIT: not committed");
    // Each question waits half the limit for the lock: the held ones were all asked.
    assert!(started.elapsed() >= limit / 2 * HELD_QUESTIONS);
    assert!(
        c.execute("COMMIT").await.is_err(),
        "the batch's backend still runs"
    );
    db.close().await;
}

/// The server stopping ends a held batch at once, while a question waits for its lock (here
/// up to 10 s), not after the held questions (30 s).
#[tokio::test]
async fn stopping_ends_a_held_batch_at_once() {
    let Some(url) = tokio::task::spawn_blocking(|| {
        msim_testkit::postgres::database("store: stopping while a batch is held")
    })
    .await
    .expect("cluster thread") else {
        return;
    };
    let db = Db::open_postgres(&url).await.expect("migrated");
    let pool = db.postgres_pool().expect("pool");
    let mut c = PgConnection::connect(&url).await.expect("connection");
    let held = open_batch(&mut c, 22).await;
    let stopping = CancellationToken::new();
    let asked = tokio::spawn({
        let (pool, stopping) = (pool.clone(), stopping.clone());
        async move { commit_status(&pool, &held, DEFAULT_TIMEOUT, &stopping).await }
    });
    until_a_lock_is_waited_for(&pool).await;
    stopping.cancel();
    let told = tokio::time::timeout(DEFAULT_TIMEOUT / 4, asked)
        .await
        .expect("stopping does not wait for the held batch")
        .expect("task");
    assert_eq!(told, Some(false));
    db.close().await;
}

/// The review's scenario through the real writer: every `COMMIT` waits for a synchronous
/// standby that is not there (PostgreSQL keeps the batch's locks while it waits, and no
/// timeout of the client ends that). The batch's answer times out; its backend is ended after
/// the held questions, which leaves its `COMMIT` done locally: the write is answered done, and
/// is stored. The old code waited for as long as the standby stayed away.
#[tokio::test]
async fn a_commit_waiting_for_a_missing_standby_is_ended_and_told_done() {
    use crate::db::{Outcome, WriteOp};
    let Some(cluster) = tokio::task::spawn_blocking(|| {
        msim_testkit::postgres::PgCluster::start("store: COMMIT waiting for a missing standby")
    })
    .await
    .expect("cluster thread")
    .expect("cluster") else {
        return;
    };
    let url = cluster.create_database().expect("database");
    let db = Db::open_postgres(&url).await.expect("migrated");
    db.set_database_timeout(Duration::from_millis(600));
    let mut admin = PgConnection::connect(&url).await.expect("connection");
    admin
        .execute("ALTER SYSTEM SET synchronous_standby_names = 'msim_standby_gone'")
        .await
        .expect("alter system");
    admin
        .execute("SELECT pg_reload_conf()")
        .await
        .expect("reload");
    // The setting is in force once a probe's COMMIT waits for the standby.
    let mut probe = PgConnection::connect(&url).await.expect("probe");
    let probe_pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut probe)
        .await
        .expect("pid");
    let probing = tokio::spawn(async move {
        loop {
            probe.execute("BEGIN").await.expect("begin");
            probe.execute("SELECT txid_current()").await.expect("xid");
            // Returns only while commits do not wait yet (or once the test ends the wait).
            if probe.execute("COMMIT").await.is_err() {
                return;
            }
        }
    });
    let waits = async {
        loop {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND wait_event = 'SyncRep'",
            )
            .bind(probe_pid)
            .fetch_one(&mut admin)
            .await
            .expect("activity");
            if n == 1 {
                break;
            }
            tokio::task::yield_now().await;
        }
    };
    // (Generous: the checkpointer applies the reload, slowly on a loaded machine.)
    tokio::time::timeout(Duration::from_secs(90), waits)
        .await
        .expect("commits wait for the missing standby");

    let create = WriteOp::CreateUser {
        login: "alice".into(),
        sealed: vec![1; 8],
        now: 1,
    };
    let done = tokio::time::timeout(Duration::from_secs(30), db.apply_batch(vec![create]))
        .await
        .expect("the writer is back within the held questions")
        .expect("batch");
    assert!(matches!(done[0], Ok(Outcome::Done)), "{:?}", done[0]);
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM users WHERE login = 'alice'")
        .fetch_one(&mut admin)
        .await
        .expect("users");
    assert_eq!(stored, 1, "answered done: stored");

    // The standby requirement lifted, the node writes again (the probe's wait ends too).
    admin
        .execute("ALTER SYSTEM RESET synchronous_standby_names")
        .await
        .expect("reset");
    admin
        .execute("SELECT pg_reload_conf()")
        .await
        .expect("reload");
    admin
        .execute(sqlx::AssertSqlSafe(format!(
            "SELECT pg_terminate_backend({probe_pid})"
        )))
        .await
        .expect("end probe");
    let _ = tokio::time::timeout(Duration::from_secs(30), probing).await;
    let create = WriteOp::CreateUser {
        login: "bob".into(),
        sealed: vec![1; 8],
        now: 1,
    };
    let done = tokio::time::timeout(Duration::from_secs(30), db.apply_batch(vec![create]))
        .await
        .expect("writes")
        .expect("batch");
    assert!(matches!(done[0], Ok(Outcome::Done)), "{:?}", done[0]);
    db.close().await;
    drop(cluster);
}
