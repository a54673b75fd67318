//! [`commit_status`]: what a writer whose `COMMIT` lost its answer learns from PostgreSQL.

use super::*;
use sqlx::{Connection, Executor};

/// Opens a batch transaction on `c` that stores `mark`, as the writer does.
async fn marked_batch(c: &mut PgConnection, mark: BatchMark) -> Locked {
    c.execute("BEGIN").await.expect("begin");
    lock_batch_marked(c, 1, 0, Some(mark)).await.expect("lock")
}

fn mark(writer: i64, mark: i64) -> BatchMark {
    BatchMark { writer, mark }
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
    let db = Db::open_postgres(&url).await.expect("migrated");
    let pool = db.postgres_pool().expect("pool");
    let mut c = PgConnection::connect(&url).await.expect("connection");
    let committed = marked_batch(&mut c, mark(7, 1)).await;
    c.execute("COMMIT").await.expect("commit");
    let rolled_back = marked_batch(&mut c, mark(7, 2)).await;
    c.execute("ROLLBACK").await.expect("rollback");
    assert_eq!(
        commit_status(&pool, &committed, DEFAULT_TIMEOUT).await,
        Some(true)
    );
    assert_eq!(
        commit_status(&pool, &rolled_back, DEFAULT_TIMEOUT).await,
        Some(false)
    );
    // A writer whose first batch did not commit has no row at all.
    let first = marked_batch(&mut c, mark(8, 1)).await;
    c.execute("ROLLBACK").await.expect("rollback");
    assert_eq!(
        commit_status(&pool, &first, DEFAULT_TIMEOUT).await,
        Some(false)
    );
    // Without a mark nothing can be proven.
    let unmarked = Locked {
        mark: None,
        ..first
    };
    assert_eq!(commit_status(&pool, &unmarked, DEFAULT_TIMEOUT).await, None);

    let running = marked_batch(&mut c, mark(7, 3)).await;
    let asked = tokio::spawn({
        let pool = pool.clone();
        async move { commit_status(&pool, &running, DEFAULT_TIMEOUT).await }
    });
    // Still unknown while it runs: the question waits on the row the batch holds.
    let waiting = async {
        loop {
            let n: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM pg_locks WHERE NOT granted AND locktype = 'transactionid'",
            )
            .fetch_one(&pool)
            .await
            .expect("locks");
            if n > 0 {
                break;
            }
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), waiting)
        .await
        .expect("the question waits for the running batch");
    assert!(!asked.is_finished());
    c.execute("COMMIT").await.expect("commit");
    let told = tokio::time::timeout(Duration::from_secs(30), asked)
        .await
        .expect("told once it ended")
        .expect("task");
    assert_eq!(told, Some(true));
    db.close().await;
}

/// After a crash, transaction ids that never reached the WAL are handed out again. A batch
/// whose id is one of those (here: an id not handed out yet, as the server sees it after
/// recovery) must not be told "committed" when another transaction commits with that id.
/// The old check (`txid_status`, retried while "in the future") answered `Some(true)` here.
#[tokio::test]
async fn a_reused_transaction_id_is_not_taken_for_the_batch() {
    let Some(url) = tokio::task::spawn_blocking(|| {
        msim_testkit::postgres::database("store: commit status with a reused transaction id")
    })
    .await
    .expect("cluster thread") else {
        return;
    };
    let db = Db::open_postgres(&url).await.expect("migrated");
    let pool = db.postgres_pool().expect("pool");
    let mut c = PgConnection::connect(&url).await.expect("connection");
    let next: i64 = sqlx::query_scalar("SELECT txid_current()")
        .fetch_one(&mut c)
        .await
        .expect("txid");
    // The lost batch: its id and mark as the writer remembers them; nothing of it is stored.
    let lost = Locked {
        first: 1,
        xid: next + 3,
        mark: Some(mark(9, 1)),
    };
    let asked = tokio::spawn({
        let pool = pool.clone();
        async move { commit_status(&pool, &lost, DEFAULT_TIMEOUT).await }
    });
    // Other transactions (heartbeats, other nodes' batches) take the next ids.
    for _ in 0..5 {
        c.execute("BEGIN").await.expect("begin");
        sqlx::query("SELECT txid_current()")
            .execute(&mut c)
            .await
            .expect("txid");
        c.execute("COMMIT").await.expect("commit");
    }
    let told = tokio::time::timeout(Duration::from_secs(30), asked)
        .await
        .expect("told")
        .expect("task");
    assert_ne!(
        told,
        Some(true),
        "a batch that never committed was told committed"
    );
    assert_eq!(told, Some(false));
    db.close().await;
}

/// A real crash (immediate stop: no shutdown checkpoint, recovery at start): a batch that
/// committed before it is told committed, one still open when the server died is told it did
/// not commit, though other transactions committed since the restart.
#[tokio::test]
async fn after_a_crash_the_marks_tell_what_committed() {
    let Some(mut cluster) = tokio::task::spawn_blocking(|| {
        msim_testkit::postgres::PgCluster::start("store: commit status after a crash")
    })
    .await
    .expect("cluster thread")
    .expect("cluster") else {
        return;
    };
    let url = cluster.create_database().expect("database");
    let db = Db::open_postgres(&url).await.expect("migrated");
    let mut c = PgConnection::connect(&url).await.expect("connection");
    let committed = marked_batch(&mut c, mark(5, 1)).await;
    c.execute("COMMIT").await.expect("commit");
    let open = marked_batch(&mut c, mark(5, 2)).await;
    db.close().await;
    // SIGQUIT: immediate shutdown, as a crash.
    let pid = cluster.pid() as libc::pid_t;
    // SAFETY: sending a signal to the test's own PostgreSQL server.
    unsafe { libc::kill(pid, libc::SIGQUIT) };
    let cluster = tokio::task::spawn_blocking(move || {
        cluster.restart().expect("restart");
        cluster
    })
    .await
    .expect("restart thread");
    assert!(
        c.execute("COMMIT").await.is_err(),
        "the connection survived"
    );
    let db = Db::open_postgres(&url).await.expect("reopened");
    let pool = db.postgres_pool().expect("pool");
    let mut c = PgConnection::connect(&url).await.expect("connection");
    for _ in 0..5 {
        sqlx::query("SELECT txid_current()")
            .execute(&mut c)
            .await
            .expect("txid");
    }
    assert_eq!(
        commit_status(&pool, &committed, DEFAULT_TIMEOUT).await,
        Some(true)
    );
    assert_eq!(
        commit_status(&pool, &open, DEFAULT_TIMEOUT).await,
        Some(false)
    );
    db.close().await;
    drop(cluster);
}
