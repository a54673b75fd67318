//! A node that freezes while holding the batch lock does not stop the other nodes' writes.

use super::*;
use crate::db::{Outcome, WriteOp};
use sqlx::{Connection, Executor};

/// A "node" takes [`BATCH_LOCK`] in a transaction with our connection options and then does
/// nothing, like a process stopped mid-batch. Another node's batch must still commit: the
/// frozen transaction is ended after [`IDLE_IN_TRANSACTION`]. Without that timeout the second
/// batch waits as long as the frozen connection lives (hours, for a stopped process).
#[tokio::test]
async fn a_frozen_node_holding_the_batch_lock_is_cut_off() {
    let Some(url) = tokio::task::spawn_blocking(|| {
        msim_testkit::postgres::database("store: frozen node holding the batch lock")
    })
    .await
    .expect("cluster thread") else {
        return;
    };
    let live = Db::open_postgres(&url).await.expect("live node");
    let mut frozen = PgConnection::connect_with(&connect_options(&url).expect("options"))
        .await
        .expect("frozen node");
    frozen.execute("BEGIN").await.expect("begin");
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(BATCH_LOCK)
        .execute(&mut frozen)
        .await
        .expect("lock");
    // The frozen node now holds the lock and goes silent.
    let create = WriteOp::CreateUser {
        login: "alice".into(),
        sealed: vec![1; 8],
        now: 1,
    };
    let done = tokio::time::timeout(Duration::from_secs(60), live.apply_batch(vec![create]))
        .await
        .expect("the live node's batch still waits for the frozen node's lock")
        .expect("batch");
    assert!(matches!(done[0], Ok(Outcome::Done)), "{:?}", done[0]);
    // The frozen node's transaction was ended by the server.
    let after = frozen.execute("SELECT 1").await;
    assert!(after.is_err(), "the frozen transaction survived");
    live.close().await;
}

/// A node holding [`BATCH_LOCK`] while busy (a long statement: not idle, so
/// [`IDLE_IN_TRANSACTION`] does not apply) makes the other nodes' batches fail after
/// [`LOCK_TIMEOUT`] instead of waiting as long as the statement runs; once it is done, they
/// commit again.
#[tokio::test]
async fn a_busy_holder_of_the_batch_lock_fails_other_batches_in_bounded_time() {
    let Some(url) = tokio::task::spawn_blocking(|| {
        msim_testkit::postgres::database("store: busy node holding the batch lock")
    })
    .await
    .expect("cluster thread") else {
        return;
    };
    let live = Db::open_postgres(&url).await.expect("live node");
    // Without our options' statement timeout: an operator's session.
    let mut busy = PgConnection::connect(&url).await.expect("busy session");
    busy.execute("BEGIN").await.expect("begin");
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(BATCH_LOCK)
        .execute(&mut busy)
        .await
        .expect("lock");
    let sleeper = tokio::spawn(async move {
        let r = busy.execute("SELECT pg_sleep(45)").await.map(drop);
        (busy, r)
    });
    let create = |login: &str| WriteOp::CreateUser {
        login: login.into(),
        sealed: vec![1; 8],
        now: 1,
    };
    let failed = tokio::time::timeout(
        Duration::from_secs(40),
        live.apply_batch(vec![create("alice")]),
    )
    .await
    .expect("the batch waited for the busy session's lock without end");
    assert!(failed.is_err(), "{failed:?}");
    // The busy session ends (its statement is cancelled, its transaction rolled back).
    let (mut busy, _) = {
        let pid: (i32,) = sqlx::query_as(
            "SELECT pid FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(45)%' LIMIT 1",
        )
        .fetch_one(&mut PgConnection::connect(&url).await.expect("admin"))
        .await
        .expect("busy pid");
        sqlx::query("SELECT pg_cancel_backend($1)")
            .bind(pid.0)
            .execute(&mut PgConnection::connect(&url).await.expect("admin"))
            .await
            .expect("cancel");
        sleeper.await.expect("sleeper")
    };
    busy.execute("ROLLBACK").await.expect("rollback");
    let done = live
        .apply_batch(vec![create("bob")])
        .await
        .expect("batch after the lock was released");
    assert!(matches!(done[0], Ok(Outcome::Done)), "{:?}", done[0]);
    live.close().await;
}

/// Over TCP every connection asks the server for keep-alive probes and a user timeout, so the
/// server ends a silent node's sessions (its locks, its `LISTEN`) within seconds.
#[tokio::test]
async fn connections_ask_the_server_for_keepalives() {
    let Some(cluster) = tokio::task::spawn_blocking(|| {
        msim_testkit::postgres::PgCluster::start("store: server keep-alives")
    })
    .await
    .expect("cluster thread")
    .expect("cluster") else {
        return;
    };
    let url = cluster.create_database().expect("database");
    let name = url
        .rsplit('/')
        .next()
        .and_then(|t| t.split('?').next())
        .expect("database name");
    let db = Db::open_postgres(&cluster.tcp_url(name))
        .await
        .expect("opened over TCP");
    let pool = db.postgres_pool().expect("pool");
    for (setting, want) in SERVER_KEEPALIVES {
        let got: String = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SHOW {setting}")))
            .fetch_one(&pool)
            .await
            .expect("show");
        // Shown with a unit (`10s`, `30s`) or without, depending on the setting.
        let digits: String = got.chars().take_while(char::is_ascii_digit).collect();
        let want_s = want.parse::<u64>().expect("number");
        let ok = if setting == "tcp_user_timeout" {
            got == "30s" || digits == want
        } else {
            digits.parse::<u64>().ok() == Some(want_s)
        };
        assert!(ok, "{setting} = {got}, wanted {want}");
    }
    db.close().await;
}
