//! The cluster module against a real throwaway PostgreSQL (msim-testkit): several nodes (each
//! its own pool, hub and tasks, as separate processes would have) on one database, with a
//! test feed that allocates sequence numbers the way the backend must (under a table lock, so
//! commit order is sequence order).

#![allow(clippy::unwrap_used)] // Tests: a failed step is a failed test.

use super::*;
use crate::hub::{Item, Stream};
use bytes::Bytes;
use futures::future::BoxFuture;
use sqlx::postgres::PgPoolOptions;
use std::collections::BTreeMap;
use std::time::Instant;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(20);

fn fast() -> Timing {
    Timing {
        heartbeat: Duration::from_millis(100),
        node_timeout: Duration::from_millis(600),
        poll: Duration::from_millis(200),
        clock: crate::clock::Clock::system(),
        database_timeout: Duration::from_secs(5),
    }
}

async fn pool(url: &str) -> PgPool {
    PgPoolOptions::new()
        .max_connections(8)
        .connect(url)
        .await
        .expect("connect")
}

/// A stream of test items: (seq, origin, login, packet).
struct TestFeed(PgPool);

async fn feed_table(pool: &PgPool) {
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS test_items (seq BIGINT PRIMARY KEY, origin BIGINT NOT NULL, \
         login TEXT NOT NULL, packet TEXT NOT NULL)",
    )
    .execute(pool)
    .await
    .unwrap();
}

impl Feed for TestFeed {
    fn heads(&self) -> BoxFuture<'_, Result<Positions, sqlx::Error>> {
        Box::pin(async move {
            let max: i64 = sqlx::query_scalar("SELECT COALESCE(max(seq), 0) FROM test_items")
                .fetch_one(&self.0)
                .await?;
            Ok(Positions([max, 0, 0, 0]))
        })
    }

    fn after(
        &self,
        after: Positions,
        _want: [bool; crate::hub::STREAMS],
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<FeedItem>, sqlx::Error>> {
        Box::pin(async move {
            let rows: Vec<(i64, i64, String, String)> = sqlx::query_as(
                "SELECT seq, origin, login, packet FROM test_items WHERE seq > $1 \
                 ORDER BY seq LIMIT $2",
            )
            .bind(after.0[0])
            .bind(limit as i64)
            .fetch_all(&self.0)
            .await?;
            Ok(rows
                .into_iter()
                .map(|(seq, origin, login, packet)| FeedItem {
                    stream: Stream::Messages,
                    seq,
                    origin,
                    login,
                    bytes: Bytes::from(packet),
                })
                .collect())
        })
    }
}

/// One node: its pool, hub and cluster membership.
struct Node {
    pool: PgPool,
    hub: Arc<Hub>,
    cluster: Cluster,
    events: mpsc::Receiver<Event>,
}

async fn node(url: &str, name: &str) -> Node {
    node_with(url, name, fast()).await
}

/// A node whose reader only acts on notifications and listener reconnects: no timer.
async fn notified_node(url: &str, name: &str) -> Node {
    let timing = Timing {
        poll: Duration::from_secs(3600),
        ..fast()
    };
    node_with(url, name, timing).await
}

async fn node_with(url: &str, name: &str, timing: Timing) -> Node {
    let pool = pool(url).await;
    feed_table(&pool).await;
    let hub = Arc::new(Hub::default());
    let feed = Arc::new(TestFeed(pool.clone()));
    let (cluster, events) = Cluster::start(pool.clone(), hub.clone(), feed, timing, name)
        .await
        .expect("join");
    Node {
        pool,
        hub,
        cluster,
        events,
    }
}

impl Node {
    /// Commits messages for `login` like the backend's group commit: one transaction holding
    /// the allocation lock, then a local push, then the announcement.
    async fn commit(&self, login: &str, texts: &[String]) {
        let mut tx = self.pool.begin().await.unwrap();
        sqlx::query("LOCK TABLE test_items IN EXCLUSIVE MODE")
            .execute(&mut *tx)
            .await
            .unwrap();
        let base: i64 = sqlx::query_scalar("SELECT COALESCE(max(seq), 0) FROM test_items")
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        for (i, t) in texts.iter().enumerate() {
            sqlx::query(
                "INSERT INTO test_items (seq, origin, login, packet) VALUES ($1, $2, $3, $4)",
            )
            .bind(base + 1 + i as i64)
            .bind(self.cluster.node().0)
            .bind(login)
            .bind(t)
            .execute(&mut *tx)
            .await
            .unwrap();
        }
        tx.commit().await.unwrap();
        let top = base + texts.len() as i64;
        for (i, t) in texts.iter().enumerate() {
            let seq = base + 1 + i as i64;
            self.hub
                .send_seq(login, None, Stream::Messages, seq, &Bytes::from(t.clone()));
        }
        self.cluster.committed(Positions([top, 0, 0, 0]));
    }

    /// A session of `login` on this node.
    async fn session(&self, login: &str) -> mpsc::Receiver<Item> {
        let (tx, rx) = mpsc::channel(100_000);
        let (_, first) = self.hub.register(login, tx);
        if first {
            self.cluster.session_opened(login).await;
        }
        rx
    }
}

/// Receives until `want` items arrived (then checks that no more come for a moment).
async fn collect(rx: &mut mpsc::Receiver<Item>, want: usize) -> Vec<Item> {
    let mut got = Vec::new();
    while got.len() < want {
        match timeout(WAIT, rx.recv()).await {
            Ok(Some(i)) => got.push(i),
            other => panic!("got {} of {want} items, then {other:?}", got.len()),
        }
    }
    got
}

/// Asserts each seq 1..=n arrived exactly once and nothing else is queued after a full
/// catch-up round of every node.
async fn assert_exactly_once(items: &[Item], n: i64) {
    let mut seen = BTreeMap::new();
    for it in items {
        let (_, seq) = it.seq.expect("stored item");
        *seen.entry(seq).or_insert(0) += 1;
    }
    let dups: Vec<_> = seen.iter().filter(|(_, c)| **c > 1).collect();
    assert!(dups.is_empty(), "duplicates: {dups:?}");
    assert_eq!(seen.len() as i64, n, "missing items");
    assert_eq!(*seen.keys().next().unwrap(), 1);
    assert_eq!(*seen.keys().last().unwrap(), n);
}

/// Nothing more arrives within a few poll periods (the readers' timers have run meanwhile).
async fn assert_quiet(rx: &mut mpsc::Receiver<Item>) {
    let r = timeout(fast().poll * 4, rx.recv()).await;
    assert!(r.is_err(), "unexpected extra item: {r:?}");
}

fn texts(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("MESSAGE id={prefix}{i}")).collect()
}

#[tokio::test]
async fn recipient_sessions_on_other_nodes_each_get_one_copy() {
    let Some(url) = msim_testkit::postgres::database("cluster fan-out") else {
        return;
    };
    let a = notified_node(&url, "a").await;
    let b = notified_node(&url, "b").await;
    let c = notified_node(&url, "c").await;
    let mut on_b = b.session("bob").await;
    let mut on_b2 = b.session("bob").await;
    let mut on_c = c.session("bob").await;
    for chunk in 0..10 {
        a.commit("bob", &texts(&format!("m{chunk}-"), 10)).await;
    }
    for rx in [&mut on_b, &mut on_b2, &mut on_c] {
        let got = collect(rx, 100).await;
        assert_exactly_once(&got, 100).await;
        // In sequence order, as the store hands them out.
        let seqs: Vec<i64> = got.iter().map(|i| i.seq.unwrap().1).collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
        assert_quiet(rx).await;
    }
    // Node a has no session of bob: nothing was queued anywhere else.
    assert!(!a.hub.is_local("bob"));
    assert!(a.hub.is_online("bob"), "a sees bob online on b and c");
}

#[tokio::test]
async fn concurrent_senders_on_all_nodes_leave_no_gaps() {
    let Some(url) = msim_testkit::postgres::database("cluster concurrent senders") else {
        return;
    };
    let nodes = [
        notified_node(&url, "a").await,
        notified_node(&url, "b").await,
        notified_node(&url, "c").await,
    ];
    let mut sessions = Vec::new();
    for n in &nodes {
        sessions.push(n.session("bob").await);
    }
    let per_node = 20;
    let batch = 10;
    futures::future::join_all(nodes.iter().enumerate().map(|(k, n)| async move {
        for j in 0..per_node {
            n.commit("bob", &texts(&format!("n{k}-{j}-"), batch)).await;
        }
    }))
    .await;
    let total = (nodes.len() * per_node * batch) as i64;
    for rx in &mut sessions {
        let got = collect(rx, total as usize).await;
        assert_exactly_once(&got, total).await;
        assert_quiet(rx).await;
    }
}

/// Kills every LISTEN connection repeatedly while three nodes send: nothing is lost (the
/// readers catch up from their positions on reconnect) and nothing is doubled.
#[tokio::test]
async fn listener_killed_mid_traffic_loses_nothing() {
    let Some(url) = msim_testkit::postgres::database("cluster listener killed") else {
        return;
    };
    // No catch-up timer: only the reconnect's catch-up can recover what a dead listener missed.
    let nodes = [
        notified_node(&url, "a").await,
        notified_node(&url, "b").await,
    ];
    let mut on_b = nodes[1].session("bob").await;
    let admin = pool(&url).await;
    let listening = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND query ILIKE 'LISTEN%'",
        )
        .fetch_one(&admin)
        .await
        .unwrap()
    };
    // Waits until both listeners are (back) up, then kills them.
    let kill_listeners = || async {
        let deadline = Instant::now() + WAIT;
        while listening().await < 2 {
            assert!(Instant::now() < deadline, "listeners never (re)connected");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        sqlx::query_scalar::<_, bool>(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND query ILIKE 'LISTEN%'",
        )
        .fetch_all(&admin)
        .await
        .unwrap()
        .into_iter()
        .filter(|k| *k)
        .count()
    };
    let mut killed = 0;
    for j in 0..30 {
        nodes[0].commit("bob", &texts(&format!("k{j}-"), 5)).await;
        if j % 5 == 0 {
            killed += kill_listeners().await;
        }
    }
    assert!(killed > 0, "no listener was killed mid-traffic");
    let got = collect(&mut on_b, 150).await;
    assert_exactly_once(&got, 150).await;
    assert_quiet(&mut on_b).await;
}

#[tokio::test]
async fn live_packets_and_presence_cross_nodes() {
    let Some(url) = msim_testkit::postgres::database("cluster live packets") else {
        return;
    };
    let a = node(&url, "a").await;
    let b = node(&url, "b").await;
    assert!(!a.hub.is_online("bob"));
    let mut on_b = b.session("bob").await;
    // a learns that bob is online on b.
    let deadline = Instant::now() + WAIT;
    while !a.hub.is_online("bob") {
        assert!(Instant::now() < deadline, "presence never reached node a");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let small = Bytes::from_static(b"TYPING-STARTED from=alice@localhost\n");
    let large = Bytes::from(format!("PROFILE-UPDATED about={}\n", "x".repeat(20_000)));
    assert_eq!(a.hub.send("bob", &small), 0, "no session of bob on a");
    a.hub.send("bob", &large);
    let got = collect(&mut on_b, 2).await;
    assert_eq!(got[0].bytes, small);
    assert_eq!(
        got[1].bytes, large,
        "the large packet came through cluster_events"
    );
    assert!(got.iter().all(|i| i.seq.is_none()));
    // Nobody online elsewhere: nothing is published at all.
    a.hub.send("carol", &small);
    assert_quiet(&mut on_b).await;
    // A clean stop takes the node's users offline (the caller announces them).
    assert_eq!(b.cluster.stop().await, vec!["bob".to_owned()]);
    let deadline = Instant::now() + WAIT;
    while a.hub.is_online("bob") {
        assert!(Instant::now() < deadline, "a still sees bob online");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn presence_is_cluster_wide_and_a_dead_nodes_users_go_offline_within_the_bound() {
    let Some(url) = msim_testkit::postgres::database("cluster presence") else {
        return;
    };
    let mut a = node(&url, "a").await;
    let b = node(&url, "b").await;
    let c = node(&url, "c").await;
    // First and last session anywhere, decided once.
    let (on_a, _rx_a) = mpsc::channel(1);
    let (on_a, _) = a.hub.register("bob", on_a);
    assert!(a.cluster.session_opened("bob").await);
    let (on_b, _rx_b) = mpsc::channel(1);
    let (on_b, _) = b.hub.register("bob", on_b);
    assert!(!b.cluster.session_opened("bob").await);
    a.hub.unregister("bob", on_a);
    assert!(!a.cluster.session_closed("bob").await);
    b.hub.unregister("bob", on_b);
    assert!(b.cluster.session_closed("bob").await);
    // Carol on c only, dave on c and b.
    let _carol = c.session("carol").await;
    let _dave_c = c.session("dave").await;
    let _dave_b = b.session("dave").await;
    let deadline = Instant::now() + WAIT;
    while !a.hub.is_online("carol") {
        assert!(Instant::now() < deadline, "presence never reached a");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Node a leads (it started first and holds the lock): make sure before the crash.
    let deadline = Instant::now() + WAIT;
    while !a.cluster.is_leader() {
        assert!(Instant::now() < deadline, "a never became leader");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let died = Instant::now();
    c.cluster.crash().await;
    // The leader reaps c and reports carol (not dave: he is still on b) offline.
    let ev = timeout(WAIT, a.events.recv())
        .await
        .expect("offline event")
        .unwrap();
    let Event::Offline(logins) = ev else {
        panic!("{ev:?}")
    };
    assert_eq!(logins, vec!["carol".to_owned()]);
    let bound = fast().node_timeout + fast().heartbeat * 3;
    assert!(
        died.elapsed() < bound + Duration::from_secs(1),
        "took {:?}",
        died.elapsed()
    );
    let deadline = Instant::now() + WAIT;
    while a.hub.is_online("carol") || b.hub.is_online("carol") {
        assert!(Instant::now() < deadline, "mirrors still show carol online");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(a.hub.is_online("dave"));
}

#[tokio::test]
async fn periodic_jobs_leader_is_taken_over_when_it_dies() {
    let Some(url) = msim_testkit::postgres::database("cluster leadership") else {
        return;
    };
    let a = node(&url, "a").await;
    let b = node(&url, "b").await;
    let deadline = Instant::now() + WAIT;
    while !(a.cluster.is_leader() || b.cluster.is_leader()) {
        assert!(Instant::now() < deadline, "nobody leads");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Exactly one leader, for several heartbeats.
    for _ in 0..5 {
        assert!(a.cluster.is_leader() != b.cluster.is_leader());
        tokio::time::sleep(fast().heartbeat).await;
    }
    let (dead, survivor) = if a.cluster.is_leader() {
        (a, b)
    } else {
        (b, a)
    };
    dead.cluster.crash().await;
    let died = Instant::now();
    while !survivor.cluster.is_leader() {
        assert!(died.elapsed() < WAIT, "leadership never moved");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Bound: the lock is free when the dead node's session ends and is taken at the next
    // check (one heartbeat); plus scheduling slack on a loaded machine.
    let bound = fast().heartbeat * 2 + Duration::from_secs(1);
    assert!(died.elapsed() < bound, "took {:?}", died.elapsed());
}

/// An attacker spreading password guesses over nodes is slowed as if all hit one node.
#[tokio::test]
async fn login_throttle_and_register_limits_are_shared_by_nodes() {
    use crate::throttle::Delays;
    let Some(url) = msim_testkit::postgres::database("cluster throttle") else {
        return;
    };
    let (p1, p2) = (pool(&url).await, pool(&url).await);
    ensure_schema(&p1).await.unwrap();
    let delays = Delays {
        base: Duration::from_secs(1),
        max: Duration::from_secs(300),
        decay: Duration::from_secs(600),
        known_for: Duration::from_secs(3600),
    };
    let n1 = throttle::SharedThrottle::new(p1.clone(), delays);
    let n2 = throttle::SharedThrottle::new(p2.clone(), delays);
    let attacker: std::net::IpAddr = "203.0.113.7".parse().unwrap();
    let owner: std::net::IpAddr = "198.51.100.1".parse().unwrap();
    let now = 1_000_000_000_000;
    n1.success("alice", owner, now).await.unwrap();
    // Three guesses: one on node 1, two on node 2 (concurrently).
    n1.failure("alice", attacker, now).await.unwrap();
    let (r1, r2) = tokio::join!(
        n2.failure("alice", attacker, now),
        n2.failure("alice", attacker, now)
    );
    r1.unwrap();
    r2.unwrap();
    // Either node makes the attacker wait as after three failures: 4 s.
    for n in [&n1, &n2] {
        assert_eq!(
            n.wait("alice", attacker, now).await.unwrap(),
            Duration::from_secs(4)
        );
        // The same attacker at another login from the same address: the address count.
        assert_eq!(
            n.wait("bob", attacker, now).await.unwrap(),
            Duration::from_secs(4)
        );
        // The owner's known address is not slowed by the strangers' failures.
        assert_eq!(n.wait("alice", owner, now).await.unwrap(), Duration::ZERO);
    }
    // Decay as on one node: one failure forgotten per 600 s.
    let later = now + 600_000_000;
    assert_eq!(
        n2.wait("alice", attacker, later).await.unwrap(),
        Duration::ZERO
    );
    n2.failure("alice", attacker, later).await.unwrap();
    assert_eq!(
        n1.wait("alice", attacker, later).await.unwrap(),
        Duration::from_secs(4)
    );

    // Registrations: burst 5 per host, shared; 20 concurrent attempts over two nodes.
    let l1 = throttle::SharedRegisterLimits::new(p1.clone(), (5, 5), (20, 20));
    let l2 = throttle::SharedRegisterLimits::new(p2.clone(), (5, 5), (20, 20));
    let results = futures::future::join_all((0..20).map(|i| {
        let l = if i % 2 == 0 { l1.clone() } else { l2.clone() };
        async move { l.allow_register(attacker, now).await.unwrap() }
    }))
    .await;
    assert_eq!(results.iter().filter(|ok| **ok).count(), 5);
    // A token back after 12 minutes (5 per hour), on either node.
    assert!(l2
        .allow_register(attacker, now + 720_000_000)
        .await
        .unwrap());
    assert!(!l1
        .allow_register(attacker, now + 720_000_000)
        .await
        .unwrap());
    // Another host of the same /24 still has its own five.
    let neighbour: std::net::IpAddr = "203.0.113.8".parse().unwrap();
    assert!(l1.allow_register(neighbour, now).await.unwrap());
    // Pruning keeps live rows.
    throttle::prune(&p1, later, WAIT).await.unwrap();
    assert_eq!(
        n1.wait("alice", attacker, later).await.unwrap(),
        Duration::from_secs(4)
    );
    // ... and removes what has decayed.
    let far = later + delays.horizon() + 1;
    throttle::prune(&p1, far, WAIT).await.unwrap();
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM cluster_login_failures")
        .fetch_one(&p1)
        .await
        .unwrap();
    assert_eq!(left, 0);
}

/// However many expired rows an attacker piled up, one prune run deletes a bounded number
/// (the rest go in later runs), and live rows stay.
#[tokio::test]
async fn pruning_deletes_expired_rows_in_bounded_runs() {
    let Some(url) = msim_testkit::postgres::database("cluster prune") else {
        return;
    };
    let p = pool(&url).await;
    ensure_schema(&p).await.unwrap();
    sqlx::query(
        "INSERT INTO cluster_buckets (scope, key, level, at_us, expires_us) \
         SELECT 1, 'k' || g, 0, 0, CASE WHEN g <= 25000 THEN 10 ELSE 1000 END \
         FROM generate_series(1, 25010) g",
    )
    .execute(&p)
    .await
    .unwrap();
    let left = |p: PgPool| async move {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM cluster_buckets")
            .fetch_one(&p)
            .await
            .unwrap();
        n
    };
    throttle::prune(&p, 100, WAIT).await.unwrap();
    assert_eq!(left(p.clone()).await, 15_010);
    throttle::prune(&p, 100, WAIT).await.unwrap();
    throttle::prune(&p, 100, WAIT).await.unwrap();
    assert_eq!(left(p.clone()).await, 10);
}

/// Waits until `cond` holds, failing with `what` after [`WAIT`].
async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

mod bounded;
mod catch_up;
mod deadlines;
mod idle_cost;
mod in_doubt;
mod in_doubt_writer;
mod listener;
mod live_after_login;
mod presence_dup;
mod presence_future_xid;
mod presence_online;
mod presence_stale;
mod prune_last;
mod repair;
mod robust;
mod startup;
mod throttle_cap;
