//! Cluster statements that the node gives up on are given up by the database as well: they
//! do not keep a pool connection (and the locks they hold or wait for) until the session's
//! own `lock_timeout` (15 s) or `statement_timeout` (30 s).

use super::*;
use sqlx::{Connection, Executor};

/// For `during`, checks that no backend of this database waits for a lock for longer than
/// `bound` (the node's retries keep starting new, short waits: that is fine).
async fn no_long_lock_waits(pool: &PgPool, during: Duration, bound: Duration, what: &str) {
    let end = Instant::now() + during;
    while Instant::now() < end {
        let longest: Option<f64> = sqlx::query_scalar(
            "SELECT max(extract(epoch FROM clock_timestamp() - query_start))::float8 \
             FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
             AND datname = current_database()",
        )
        .fetch_one(pool)
        .await
        .unwrap();
        let longest = Duration::from_secs_f64(longest.unwrap_or(0.0).max(0.0));
        assert!(
            longest < bound,
            "{what}: still waiting in the database after {longest:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// carol's presence lock is held by a stuck transaction: her presence change times out on
/// the node after a statement's limit (300 ms here), and the database stops waiting too,
/// well before its own 15 s lock_timeout.
#[tokio::test]
async fn a_presence_write_the_node_gave_up_on_stops_waiting_in_the_database() {
    let Some(url) = msim_testkit::postgres::database("cluster presence deadline") else {
        return;
    };
    let a = node(&url, "a").await;
    let mut stuck = sqlx::PgConnection::connect(&url).await.unwrap();
    stuck.execute("BEGIN").await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext('carol'))")
        .bind(nodes::PRESENCE_LOCKS)
        .execute(&mut stuck)
        .await
        .unwrap();
    let (tx, _rx) = mpsc::channel(10);
    let (_id, first) = a.hub.register("carol", tx);
    assert!(first);
    let started = Instant::now();
    assert!(
        !a.cluster.session_opened("carol").await,
        "nothing is announced while the row cannot be written"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the node waited"
    );
    // Never longer than about a statement limit (300 ms; the database's own: 15 s).
    no_long_lock_waits(
        &a.pool,
        Duration::from_secs(2),
        fast().statement() * 2 + Duration::from_millis(500),
        "the presence change",
    )
    .await;
    stuck.execute("ROLLBACK").await.unwrap();
    // The next heartbeat's reconcile writes carol's row.
    let deadline = Instant::now() + WAIT;
    loop {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM cluster_presence WHERE login = $1")
            .bind("carol")
            .fetch_one(&a.pool)
            .await
            .unwrap();
        if n == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "carol's row was never written");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An expired throttle row locked by a stuck transaction: the leader's prune gives up after
/// its limit, and the database with it.
#[tokio::test]
async fn a_prune_the_node_gave_up_on_stops_waiting_in_the_database() {
    let Some(url) = msim_testkit::postgres::database("cluster prune deadline") else {
        return;
    };
    let p = pool(&url).await;
    // The cluster tables.
    let _a = node(&url, "a").await;
    sqlx::query(
        "INSERT INTO cluster_login_failures (scope, key, failures, last_us, expires_us) \
         VALUES (1, 'stuck', 1, 0, 1)",
    )
    .execute(&p)
    .await
    .unwrap();
    let mut stuck = sqlx::PgConnection::connect(&url).await.unwrap();
    stuck.execute("BEGIN").await.unwrap();
    stuck
        .execute("SELECT * FROM cluster_login_failures WHERE key = 'stuck' FOR UPDATE")
        .await
        .unwrap();
    let limit = Duration::from_millis(300);
    let started = Instant::now();
    let pruned = crate::cluster::fanout::within(limit, throttle::prune(&p, 100, limit)).await;
    assert!(pruned.is_err(), "the locked row cannot be deleted");
    assert!(started.elapsed() < Duration::from_secs(5));
    no_long_lock_waits(
        &p,
        Duration::from_secs(2),
        limit * 2 + Duration::from_millis(500),
        "the prune",
    )
    .await;
    stuck.execute("ROLLBACK").await.unwrap();
    throttle::prune(&p, 100, WAIT).await.unwrap();
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM cluster_login_failures")
        .fetch_one(&p)
        .await
        .unwrap();
    assert_eq!(left, 0);
}
