//! The listener's connection: replacing a silent listener must not cost the node a reader
//! connection.

use super::repair::Stopped;
use super::*;

/// The backends of `node`'s listener sessions other than `stopped`.
pub(super) async fn listener_pids(pool: &PgPool, node: NodeId, stopped: &[u32]) -> Vec<u32> {
    let pids: Vec<i32> =
        sqlx::query_scalar("SELECT pid FROM pg_stat_activity WHERE application_name = $1")
            .bind(nodes::listener_name(node))
            .fetch_all(pool)
            .await
            .unwrap();
    pids.into_iter()
        .map(|p| u32::try_from(p).unwrap())
        .filter(|p| !stopped.contains(p))
        .collect()
}

/// A listener whose backend stops answering (SIGSTOP: a silent network, as the node sees it)
/// is replaced; sqlx then sends `UNLISTEN *` on the old connection with no deadline. With the
/// listener on a reader-pool connection, each replacement left one reader slot held by that
/// hung `UNLISTEN`: three replacements left a pool of 8 with 4 (the 4th: the new listener's).
/// Now every slot can still be taken, and the node still hears the others.
#[tokio::test]
async fn replacing_a_silent_listener_keeps_the_reader_pool_whole() {
    let Some(url) = msim_testkit::postgres::database("cluster silent listener") else {
        return;
    };
    let a = node(&url, "a").await;
    let mut stopped: Vec<Stopped> = Vec::new();
    let mut stopped_pids: Vec<u32> = Vec::new();
    for round in 0..3 {
        let deadline = Instant::now() + WAIT;
        let pid = loop {
            if let Some(pid) = listener_pids(&a.pool, a.cluster.node(), &stopped_pids)
                .await
                .first()
            {
                break *pid;
            }
            assert!(Instant::now() < deadline, "no listener in round {round}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        stopped.push(Stopped::stop(pid));
        stopped_pids.push(pid);
    }
    // The third replacement is listening.
    let deadline = Instant::now() + WAIT;
    while listener_pids(&a.pool, a.cluster.node(), &stopped_pids)
        .await
        .is_empty()
    {
        assert!(Instant::now() < deadline, "the listener was not replaced");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Every reader slot can be taken at once (others' short uses end quickly).
    let all = async {
        let mut held = Vec::new();
        for _ in 0..8 {
            held.push(a.pool.acquire().await.unwrap());
        }
        held
    };
    let held = timeout(Duration::from_secs(10), all).await;
    assert!(
        held.is_ok(),
        "not all 8 reader slots could be taken: replaced listeners hold some"
    );
    drop(held);
    // The new listener works: a commit on another node reaches a session here.
    let b = node(&url, "b").await;
    let mut on_a = a.session("bob").await;
    b.commit("bob", &texts("after-", 3)).await;
    let got = collect(&mut on_a, 3).await;
    assert_exactly_once(&got, 3).await;
    drop(stopped);
}
