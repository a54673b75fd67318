//! [`commit_status`]: what a writer whose `COMMIT` lost its answer learns from PostgreSQL.

use super::*;
use sqlx::{Connection, Executor};

async fn xid(c: &mut PgConnection) -> i64 {
    sqlx::query_scalar("SELECT txid_current()")
        .fetch_one(c)
        .await
        .expect("txid")
}

/// Committed, rolled back, and still running until it commits: each is told as it is, and a
/// transaction in progress is waited for (as after a connection lost mid-COMMIT, whose
/// backend has not noticed yet).
#[tokio::test]
async fn a_lost_commit_is_told_as_it_ended() {
    let Some(url) = tokio::task::spawn_blocking(|| {
        msim_testkit::postgres::database("store: commit status of a lost COMMIT")
    })
    .await
    .expect("cluster thread") else {
        return;
    };
    let pool = PgPool::connect(&url).await.expect("pool");
    let mut c = PgConnection::connect(&url).await.expect("connection");
    c.execute("BEGIN").await.expect("begin");
    let committed = xid(&mut c).await;
    c.execute("COMMIT").await.expect("commit");
    c.execute("BEGIN").await.expect("begin");
    let rolled_back = xid(&mut c).await;
    c.execute("ROLLBACK").await.expect("rollback");
    assert_eq!(commit_status(&pool, committed).await, Some(true));
    assert_eq!(commit_status(&pool, rolled_back).await, Some(false));

    c.execute("BEGIN").await.expect("begin");
    let running = xid(&mut c).await;
    let asked = tokio::spawn({
        let pool = pool.clone();
        async move { commit_status(&pool, running).await }
    });
    // Still unknown while it runs: the question is still open once PostgreSQL has been asked.
    let in_progress: Option<String> = sqlx::query_scalar("SELECT txid_status($1)")
        .bind(running)
        .fetch_one(&pool)
        .await
        .expect("status");
    assert_eq!(in_progress.as_deref(), Some("in progress"));
    assert!(!asked.is_finished());
    c.execute("COMMIT").await.expect("commit");
    let told = tokio::time::timeout(Duration::from_secs(30), asked)
        .await
        .expect("told once it ended")
        .expect("task");
    assert_eq!(told, Some(true));
}
