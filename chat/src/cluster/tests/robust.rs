//! Presence changes that race, and a leader whose own heartbeats fail (review MED 5, LOW 11).

use super::*;

/// How many presence rows `login` has in the database.
async fn rows(pool: &PgPool, login: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM cluster_presence WHERE login = $1")
        .bind(login)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Session 1 of bob closes while session 2 opens on the same node, and the database sees the
/// open's change before the close's: bob keeps his row (the other nodes keep seeing him
/// online and forwarding to him), and nobody is told he went offline or came online.
#[tokio::test]
async fn a_close_racing_an_open_keeps_the_presence_row() {
    let Some(url) = msim_testkit::postgres::database("cluster presence race") else {
        return;
    };
    let a = node(&url, "a").await;
    let (tx1, _rx1) = mpsc::channel(10);
    let (id1, first) = a.hub.register("bob", tx1);
    assert!(first);
    assert!(
        a.cluster.session_opened("bob").await,
        "first session anywhere"
    );
    // Session 1 leaves the hub, session 2 joins it...
    assert!(
        a.hub.unregister("bob", id1),
        "session 1 was the last in the hub"
    );
    let (tx2, _rx2) = mpsc::channel(10);
    let (_id2, first) = a.hub.register("bob", tx2);
    assert!(first, "session 2 is the first in the hub again");
    // ... and session 2's change reaches the database before session 1's.
    let online = a.cluster.session_opened("bob").await;
    let offline = a.cluster.session_closed("bob").await;
    assert!(!online, "bob was online all along: no second ONLINE");
    assert!(!offline, "bob is still connected: no OFFLINE");
    assert_eq!(rows(&a.pool, "bob").await, 1, "bob lost his presence row");
}

/// A leader whose heartbeats hang (here: its row locked by another transaction) while its lock
/// connection still answers gives the jobs up; a healthy node takes them.
#[tokio::test]
async fn a_leader_whose_heartbeats_fail_steps_down() {
    let Some(url) = msim_testkit::postgres::database("cluster sick leader") else {
        return;
    };
    let a = node(&url, "a").await;
    let deadline = Instant::now() + WAIT;
    while !a.cluster.is_leader() {
        assert!(Instant::now() < deadline, "a never became leader");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let b = node(&url, "b").await;
    let admin = pool(&url).await;
    let mut hold = admin.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM cluster_nodes WHERE node = $1 FOR UPDATE")
        .bind(a.cluster.node().0)
        .execute(&mut *hold)
        .await
        .unwrap();
    let deadline = Instant::now() + WAIT;
    while a.cluster.is_leader() || !b.cluster.is_leader() {
        assert!(
            Instant::now() < deadline,
            "the sick leader kept the jobs (a leads: {}, b leads: {})",
            a.cluster.is_leader(),
            b.cluster.is_leader()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    hold.rollback().await.unwrap();
}

/// An account logging in from ever new addresses keeps at most `KNOWN_PER_LOGIN` known
/// addresses in the shared table: the most recent ones, so its owner's current address stays
/// known.
#[tokio::test]
async fn known_addresses_are_capped_per_login() {
    let Some(url) = msim_testkit::postgres::database("cluster known cap") else {
        return;
    };
    let p = pool(&url).await;
    ensure_schema(&p).await.unwrap();
    let delays = crate::throttle::Delays {
        base: Duration::from_secs(1),
        max: Duration::from_secs(300),
        decay: Duration::from_secs(600),
        known_for: Duration::from_secs(3600),
    };
    let t = throttle::SharedThrottle::new(p.clone(), delays);
    let now = 1_000_000_000_000;
    let many = throttle::KNOWN_PER_LOGIN + 20;
    for k in 0..many {
        let ip: std::net::IpAddr = format!("10.0.{}.{}", k / 200, k % 200 + 1).parse().unwrap();
        t.success("mallory", ip, now + k).await.unwrap();
    }
    let owner: std::net::IpAddr = "198.51.100.1".parse().unwrap();
    t.success("alice", owner, now).await.unwrap();
    let rows: i64 =
        sqlx::query_scalar("SELECT count(*) FROM cluster_known_addresses WHERE login = 'mallory'")
            .fetch_one(&p)
            .await
            .unwrap();
    assert_eq!(rows, throttle::KNOWN_PER_LOGIN);
    let newest: std::net::IpAddr = format!("10.0.{}.{}", (many - 1) / 200, (many - 1) % 200 + 1)
        .parse()
        .unwrap();
    let oldest: std::net::IpAddr = "10.0.0.1".parse().unwrap();
    assert!(t.is_known("mallory", newest, now + many).await.unwrap());
    assert!(!t.is_known("mallory", oldest, now + many).await.unwrap());
    // Another account is untouched.
    assert!(t.is_known("alice", owner, now + many).await.unwrap());
}

/// A presence write whose answer timed out but which committed (here: held up by the login's
/// lock until the node gave up, then the row stored as the write would have), and the user
/// leaves at once. The node must not trust its own idea of the row: the close writes anyway,
/// the row goes and the user is announced offline everywhere. Before, the close saw "no row
/// stored, none wanted" and did nothing: the row stayed as long as the node lived, other
/// nodes showed the user online, and later logins were never announced.
#[tokio::test]
async fn a_timed_out_presence_write_that_committed_is_repaired() {
    let Some(url) = msim_testkit::postgres::database("cluster presence in doubt") else {
        return;
    };
    // No heartbeat after the first (no reconcile to hide the defect), nobody reaped.
    let quiet = Timing {
        heartbeat: Duration::from_secs(3600),
        node_timeout: Duration::from_secs(3600),
        database_timeout: Duration::from_millis(300),
        ..fast()
    };
    let a = node_with(&url, "a", quiet.clone()).await;
    let b = node_with(&url, "b", quiet).await;
    let admin = pool(&url).await;
    let mut hold = admin.begin().await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext('alice'))")
        .bind(nodes::PRESENCE_LOCKS)
        .execute(&mut *hold)
        .await
        .unwrap();
    let (tx, _rx) = mpsc::channel(10);
    let (id, first) = a.hub.register("alice", tx);
    assert!(first);
    assert!(
        !a.cluster.session_opened("alice").await,
        "the write was held up: nothing announced"
    );
    // The write "committed" after all.
    sqlx::query("INSERT INTO cluster_presence (login, node) VALUES ('alice', $1)")
        .bind(a.cluster.node().0)
        .execute(&mut *hold)
        .await
        .unwrap();
    hold.commit().await.unwrap();
    wait_until("b never saw alice online", || b.hub.is_online("alice")).await;
    assert!(a.hub.unregister("alice", id));
    a.cluster.session_closed("alice").await;
    let deadline = Instant::now() + WAIT;
    while rows(&a.pool, "alice").await != 0 {
        assert!(
            Instant::now() < deadline,
            "alice left but her presence row stayed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    wait_until("b still shows alice online", || !b.hub.is_online("alice")).await;
}
