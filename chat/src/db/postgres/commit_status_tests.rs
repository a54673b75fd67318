//! [`commit_status`]: what a writer whose `COMMIT` lost its answer learns from PostgreSQL.

use super::*;
use sqlx::{Connection, Executor};

/// Opens a batch transaction on `c` that stores `mark`, as the writer does (its row added
/// first, as `open_postgres` does).
pub(super) async fn marked_batch(c: &mut PgConnection, mark: BatchMark) -> Locked {
    sqlx::query("INSERT INTO batch_marks (writer, mark) VALUES ($1, 0) ON CONFLICT DO NOTHING")
        .bind(mark.writer)
        .execute(&mut *c)
        .await
        .expect("writer's row");
    c.execute("BEGIN").await.expect("begin");
    let locked = lock_batch_marked(c, 1, 0, Some(mark)).await.expect("lock");
    assert_eq!(locked.mark, Some(mark), "the mark was stored");
    locked
}

/// A server that never stops.
fn never() -> CancellationToken {
    CancellationToken::new()
}

fn store(db: &Db) -> &Store {
    match &db.backend {
        Backend::Postgres(s) => s,
        Backend::Sqlite(_) => unreachable!("a PostgreSQL database"),
    }
}

/// Waits (at most 30 s) until some transaction waits for another's row lock.
pub(super) async fn until_a_lock_is_waited_for(pool: &PgPool) {
    let waiting = async {
        loop {
            let n: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM pg_locks WHERE NOT granted AND locktype = 'transactionid'",
            )
            .fetch_one(pool)
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
}

/// A writer's very first batch, its COMMIT's answer lost while the transaction still runs:
/// the question must wait for it and tell "committed". When the first batch inserted the
/// writer's row, `FOR SHARE` did not wait for the uncommitted insert, found no row and told
/// "did not commit" at once: the batch then committed, its messages answered as failed and
/// sent again (duplicates).
#[tokio::test]
async fn a_writers_first_batch_is_waited_for() {
    let Some(url) = tokio::task::spawn_blocking(|| {
        msim_testkit::postgres::database("store: commit status of a writer's first batch")
    })
    .await
    .expect("cluster thread") else {
        return;
    };
    let db = Db::open_postgres(&url).await.expect("migrated");
    let pool = db.postgres_pool().expect("pool");
    let s = store(&db);
    let mut c = PgConnection::connect(&url).await.expect("connection");
    c.execute("BEGIN").await.expect("begin");
    let first = lock_batch_marked(&mut c, 1, 0, Some(s.next_mark()))
        .await
        .expect("lock");
    let asked = tokio::spawn({
        let pool = pool.clone();
        async move { commit_status(&pool, &first, DEFAULT_TIMEOUT, &never()).await }
    });
    until_a_lock_is_waited_for(&pool).await;
    assert!(!asked.is_finished());
    c.execute("COMMIT").await.expect("commit");
    let told = tokio::time::timeout(Duration::from_secs(30), asked)
        .await
        .expect("told once it ended")
        .expect("task");
    assert_eq!(told, Some(true));
    db.close().await;
}

/// A live writer's row purged (idle for a day when another node started): its next batch
/// stores no mark (a lost answer is then in doubt, not guessed "failed"), and the batch after
/// adds the row again and is marked.
#[tokio::test]
async fn a_purged_writer_row_is_added_again() {
    use crate::db::{Outcome, WriteOp};
    let Some(url) = tokio::task::spawn_blocking(|| {
        msim_testkit::postgres::database("store: a purged batch_marks row")
    })
    .await
    .expect("cluster thread") else {
        return;
    };
    let db = Db::open_postgres(&url).await.expect("migrated");
    let pool = db.postgres_pool().expect("pool");
    let writer = store(&db).writer;
    let row = || async {
        sqlx::query_scalar::<_, i64>("SELECT mark FROM batch_marks WHERE writer = $1")
            .bind(writer)
            .fetch_optional(&pool)
            .await
            .expect("row")
    };
    assert_eq!(row().await, Some(0), "the row is committed at start");
    sqlx::query("DELETE FROM batch_marks WHERE writer = $1")
        .bind(writer)
        .execute(&pool)
        .await
        .expect("purge");
    let create = |login: &str| WriteOp::CreateUser {
        login: login.into(),
        sealed: vec![1; 8],
        now: 1,
    };
    let done = db.apply_batch(vec![create("alice")]).await.expect("batch");
    assert!(matches!(done[0], Ok(Outcome::Done)), "{:?}", done[0]);
    assert_eq!(row().await, None, "an unmarked batch inserts nothing");
    let done = db.apply_batch(vec![create("bob")]).await.expect("batch");
    assert!(matches!(done[0], Ok(Outcome::Done)), "{:?}", done[0]);
    let mark = row().await.expect("the row is back");
    assert!(mark > 0, "the batch after stored its mark: {mark}");
    db.close().await;
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
        commit_status(&pool, &committed, DEFAULT_TIMEOUT, &never()).await,
        Some(true)
    );
    assert_eq!(
        commit_status(&pool, &rolled_back, DEFAULT_TIMEOUT, &never()).await,
        Some(false)
    );
    // A writer whose first batch did not commit still has its start-up row (mark 0).
    let first = marked_batch(&mut c, mark(8, 1)).await;
    c.execute("ROLLBACK").await.expect("rollback");
    assert_eq!(
        commit_status(&pool, &first, DEFAULT_TIMEOUT, &never()).await,
        Some(false)
    );
    // Without a mark nothing can be proven.
    let unmarked = Locked {
        mark: None,
        ..first
    };
    assert_eq!(
        commit_status(&pool, &unmarked, DEFAULT_TIMEOUT, &never()).await,
        None
    );

    let running = marked_batch(&mut c, mark(7, 3)).await;
    let asked = tokio::spawn({
        let pool = pool.clone();
        async move { commit_status(&pool, &running, DEFAULT_TIMEOUT, &never()).await }
    });
    // Still unknown while it runs: the question waits on the row the batch holds.
    until_a_lock_is_waited_for(&pool).await;
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
        pid: 0,
        mark: Some(mark(9, 1)),
    };
    let asked = tokio::spawn({
        let pool = pool.clone();
        async move { commit_status(&pool, &lost, DEFAULT_TIMEOUT, &never()).await }
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
        commit_status(&pool, &committed, DEFAULT_TIMEOUT, &never()).await,
        Some(true)
    );
    assert_eq!(
        commit_status(&pool, &open, DEFAULT_TIMEOUT, &never()).await,
        Some(false)
    );
    db.close().await;
    drop(cluster);
}
