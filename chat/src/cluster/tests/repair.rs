//! Repairs: the presence mirror follows the table without notes; reaping never stalls the
//! leader's heartbeat.

use super::*;

/// A presence note that never arrives (dropped on a full inbox) is repaired by the poll
/// tick's reload: the mirror follows the table, both ways.
#[tokio::test]
async fn presence_mirror_is_repaired_without_notes() {
    let Some(url) = msim_testkit::postgres::database("cluster mirror repair") else {
        return;
    };
    // Nobody is reaped during the test: only the test changes the table.
    let long = Timing {
        node_timeout: Duration::from_secs(3600),
        ..fast()
    };
    let a = node_with(&url, "a", long.clone()).await;
    let b = node_with(&url, "b", long).await;
    // a's listener is up and its start-up reload done once it hears b's note.
    let _carol = b.session("carol").await;
    wait_until("a never heard of carol", || a.hub.is_online("carol")).await;
    // Another node's rows written without any NOTIFY: what a lost note leaves behind.
    let other = NodeId::random().0;
    sqlx::query("INSERT INTO cluster_nodes (node, name) VALUES ($1, 'silent')")
        .bind(other)
        .execute(&a.pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO cluster_presence (login, node) VALUES ('eve', $1)")
        .bind(other)
        .execute(&a.pool)
        .await
        .unwrap();
    wait_until("the mirror never learnt eve is online", || {
        a.hub.is_online("eve")
    })
    .await;
    sqlx::query("DELETE FROM cluster_presence WHERE node = $1")
        .bind(other)
        .execute(&a.pool)
        .await
        .unwrap();
    wait_until("the mirror never learnt eve left", || {
        !a.hub.is_online("eve")
    })
    .await;
}

/// Inserts a node whose last heartbeat was an hour ago, with `login` on it.
async fn dead_node_with(pool: &PgPool, login: &str) -> i64 {
    let node = NodeId::random().0;
    // One statement: the reaper must never see the node without its user.
    sqlx::query(
        "WITH n AS (INSERT INTO cluster_nodes (node, name, heartbeat_at) \
         VALUES ($1, 'dead', clock_timestamp() - interval '1 hour') RETURNING node) \
         INSERT INTO cluster_presence (login, node) SELECT $2, node FROM n",
    )
    .bind(node)
    .bind(login)
    .execute(pool)
    .await
    .unwrap();
    node
}

async fn wait_reaped(pool: &PgPool, node: i64) {
    let deadline = Instant::now() + WAIT;
    loop {
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM cluster_nodes WHERE node = $1")
            .bind(node)
            .fetch_one(pool)
            .await
            .unwrap();
        if left == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "node {node:x} never reaped");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A server slow to take the offline events (the channel full) does not stop the leader's
/// heartbeats or reaping, and no reaped user is lost once it reads again.
#[tokio::test]
async fn a_full_event_channel_does_not_stall_the_leaders_heartbeat() {
    let Some(url) = msim_testkit::postgres::database("cluster full events") else {
        return;
    };
    let mut a = node(&url, "a").await;
    wait_until("a never became leader", || a.cluster.is_leader()).await;
    // Fills the channel (one slot in tests), then one more.
    let x1 = dead_node_with(&a.pool, "u1").await;
    wait_reaped(&a.pool, x1).await;
    let x2 = dead_node_with(&a.pool, "u2").await;
    wait_reaped(&a.pool, x2).await;
    // The leader still beats ...
    let beat = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT (extract(epoch FROM heartbeat_at) * 1e6)::bigint FROM cluster_nodes \
             WHERE node = $1",
        )
        .bind(a.cluster.node().0)
        .fetch_one(&a.pool)
        .await
        .unwrap()
    };
    let before = beat().await;
    let deadline = Instant::now() + WAIT;
    while beat().await <= before {
        assert!(Instant::now() < deadline, "the leader's heartbeat stopped");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // ... and reaps.
    let x3 = dead_node_with(&a.pool, "u3").await;
    wait_reaped(&a.pool, x3).await;
    let mut got = std::collections::BTreeSet::new();
    while got.len() < 3 {
        let ev = timeout(WAIT, a.events.recv())
            .await
            .expect("offline event")
            .unwrap();
        let Event::Offline(logins) = ev else {
            panic!("{ev:?}")
        };
        got.extend(logins);
    }
    assert_eq!(got, ["u1", "u2", "u3"].map(String::from).into());
}

/// Resumes a stopped PostgreSQL backend when dropped (also when the test fails).
pub(super) struct Stopped(u32);

impl Stopped {
    pub(super) fn stop(pid: u32) -> Stopped {
        signal("-STOP", pid);
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        signal("-CONT", self.0);
    }
}

fn signal(sig: &str, pid: u32) {
    let ok = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "kill {sig} {pid}");
}

/// A leader whose lock connection hangs (its backend frozen: what a cut network looks like
/// to the node) steps down within a bound instead of believing it leads for ever, which
/// would make two leaders once PostgreSQL ends the silent session.
#[tokio::test]
async fn a_leader_whose_connection_hangs_steps_down() {
    let Some(url) = msim_testkit::postgres::database("cluster hung leader") else {
        return;
    };
    let a = node(&url, "a").await;
    wait_until("a never became leader", || a.cluster.is_leader()).await;
    let pid: i32 = sqlx::query_scalar(
        // This test's database only: the other tests' leaders hold the same key in theirs.
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1 \
         AND ((classid::bigint << 32) | objid::bigint) = $1 \
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .bind(leader::LEADER_LOCK)
    .fetch_one(&a.pool)
    .await
    .unwrap();
    let frozen = Instant::now();
    let _resume = Stopped::stop(u32::try_from(pid).unwrap());
    wait_until("the hung leader never stepped down", || {
        !a.cluster.is_leader()
    })
    .await;
    // One heartbeat to the next check, half the (1 s minimum) idle timeout for its answer.
    let bound = fast().heartbeat + Duration::from_millis(500) + Duration::from_secs(1);
    assert!(frozen.elapsed() < bound, "took {:?}", frozen.elapsed());
}
