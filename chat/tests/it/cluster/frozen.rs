//! A node frozen (SIGSTOP, a stalled VM) is reaped, and its sessions with PostgreSQL are ended:
//! its listening session, which stopped reading, would otherwise keep PostgreSQL's
//! notification queue from shrinking until every node's NOTIFY fails.

use super::*;
use sqlx::PgPool;

/// Backends whose last statement was a LISTEN: one per node's listener.
async fn listeners(pool: &PgPool) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity \
         WHERE datname = current_database() AND query LIKE 'LISTEN%'",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

async fn wait_listeners(pool: &PgPool, n: i64, what: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while listeners(pool).await != n {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_frozen_node_is_reaped_and_its_listener_ended() {
    let Some(url) = database("frozen").await else {
        return;
    };
    let mut n = nodes(&url, 2, &[]).await;
    n[1].wait_log(LISTENING).await;
    let pool = PgPool::connect(&url).await.unwrap();
    wait_listeners(&pool, 2, "two listeners").await;
    n[1].signal("STOP");
    n[0].wait_log(&["dead nodes reaped"]).await;
    wait_listeners(&pool, 1, "the frozen node's listener was not ended").await;
    // Woken up, it registers again and listens again; the cluster works as before.
    n[1].signal("CONT");
    wait_listeners(&pool, 2, "the woken node listens again").await;
    let mut bob = n[0].user("bob").await;
    let mut alice = n[1].user("alice").await;
    let ids = send_all(&mut alice, "bob", &["after-the-freeze".into()]).await;
    let got = loop {
        let l = bob.line().await;
        if l.starts_with("MESSAGE ") {
            break l;
        }
    };
    assert_eq!(field(&got, "id"), Some(ids[0].clone()));
    pool.close().await;
}
