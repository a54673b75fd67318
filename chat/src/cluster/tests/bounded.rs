//! Cluster statements that used to wait without a bound, or longer than a node may go without
//! a heartbeat (review LOW 6 and 9).

use super::*;

/// A node leaving while its rows are locked (a stuck transaction; a silent network looks the
/// same) stops within the statement bound. Before, `stop` waited as long as the lock was
/// held: the server's shutdown hung.
#[tokio::test]
async fn leaving_the_cluster_is_bounded() {
    let Some(url) = msim_testkit::postgres::database("cluster bounded stop") else {
        return;
    };
    let timing = Timing {
        database_timeout: Duration::from_millis(300),
        ..fast()
    };
    let a = node_with(&url, "a", timing).await;
    let admin = pool(&url).await;
    let mut hold = admin.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM cluster_nodes WHERE node = $1 FOR UPDATE")
        .bind(a.cluster.node().0)
        .execute(&mut *hold)
        .await
        .unwrap();
    let left = timeout(WAIT, a.cluster.stop()).await;
    assert!(left.is_ok(), "stop waited for the locked row");
    hold.rollback().await.unwrap();
}

/// The leader's reaping held up (a dead node's user's presence lock held) does not stop its own heartbeats
/// for longer than a statement may take. Before, reaping had the whole database timeout (5 s
/// here, 20 s by default: over the node timeout), all that time without a heartbeat.
#[tokio::test]
async fn a_stuck_reap_does_not_hold_the_leaders_heartbeats() {
    let Some(url) = msim_testkit::postgres::database("cluster bounded reap") else {
        return;
    };
    let a = node(&url, "a").await;
    wait_until("a never became leader", || a.cluster.is_leader()).await;
    let admin = pool(&url).await;
    // The dead node's user's presence lock is held: the reap waits for it.
    let mut hold = admin.begin().await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext('zed'))")
        .bind(nodes::PRESENCE_LOCKS)
        .execute(&mut *hold)
        .await
        .unwrap();
    sqlx::query(
        "WITH n AS (INSERT INTO cluster_nodes (node, name, heartbeat_at) \
         VALUES ($1, 'dead', clock_timestamp() - interval '1 hour') RETURNING node) \
         INSERT INTO cluster_presence (login, node) SELECT 'zed', node FROM n",
    )
    .bind(NodeId::random().0)
    .execute(&admin)
    .await
    .unwrap();
    // Seconds since the node's last heartbeat (the database's clock).
    let age = || async {
        sqlx::query_scalar::<_, f64>(
            "SELECT extract(epoch FROM clock_timestamp() - heartbeat_at)::float8 \
             FROM cluster_nodes WHERE node = $1",
        )
        .bind(a.cluster.node().0)
        .fetch_one(&admin)
        .await
        .unwrap()
    };
    // Watch the heartbeats for longer than one stuck reap took before: the longest gap.
    let mut gap = 0.0f64;
    let until = Instant::now() + Duration::from_secs(7);
    while Instant::now() < until {
        gap = gap.max(age().await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    hold.rollback().await.unwrap();
    assert!(
        gap < fast().node_timeout.as_secs_f64() * 3.0,
        "the leader went {gap:.2} s without a heartbeat"
    );
}

/// Many local logins to store (thousands of users after a re-registration, or a slow
/// database) do not stop the node's heartbeats. Before, the reconcile ran inside the heartbeat
/// loop, one login after another (a few round trips each): seconds without a heartbeat, over
/// the node timeout.
#[tokio::test]
async fn a_long_reconcile_does_not_hold_the_heartbeats() {
    let Some(url) = msim_testkit::postgres::database("cluster bounded reconcile") else {
        return;
    };
    let a = node(&url, "a").await;
    let admin = pool(&url).await;
    const USERS: i64 = 600;
    let mut sessions = Vec::new();
    for i in 0..USERS {
        // In the hub without a presence change of their own: the reconcile stores them.
        let (tx, rx) = mpsc::channel(1);
        a.hub.register(&format!("user{i}"), tx);
        sessions.push(rx);
    }
    // Seconds since the node's last heartbeat (the database's clock).
    let age = || async {
        sqlx::query_scalar::<_, f64>(
            "SELECT extract(epoch FROM clock_timestamp() - heartbeat_at)::float8 \
             FROM cluster_nodes WHERE node = $1",
        )
        .bind(a.cluster.node().0)
        .fetch_one(&admin)
        .await
        .unwrap()
    };
    let stored = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM cluster_presence WHERE node = $1")
            .bind(a.cluster.node().0)
            .fetch_one(&admin)
            .await
            .unwrap()
    };
    let (deadline, mut gap) = (Instant::now() + WAIT, 0.0f64);
    while stored().await < USERS {
        assert!(Instant::now() < deadline, "the rows were never all stored");
        gap = gap.max(age().await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        gap < fast().node_timeout.as_secs_f64() * 2.0,
        "the node went {gap:.2} s without a heartbeat"
    );
}
