//! A presence close whose answer came too late, but which committed (the flake of
//! `presence_is_cluster_wide_…` under load: node a announced bob offline after node b had).

use super::*;

/// bob on a and b; a's close is held up past a's database timeout, then commits; b's close
/// (queued first on bob's lock) empties bob and announces him offline. a's repair at its
/// next heartbeat must not announce him again. Today it does (`Event::Offline(["bob"])`):
/// the repair announces from the counts alone and cannot tell whether another node did.
/// Ignored until fixed (the fix: record in the database which change emptied a login).
#[tokio::test]
#[ignore = "known defect: duplicate offline announcement after a late close (issue 13)"]
async fn a_late_close_that_committed_is_not_announced_twice() {
    let Some(url) = msim_testkit::postgres::database("cluster presence late close") else {
        return;
    };
    // a gives up on a write after 300 ms; b waits for its answers.
    let t = Timing {
        node_timeout: Duration::from_secs(3600),
        database_timeout: Duration::from_millis(300),
        ..fast()
    };
    let mut a = node_with(&url, "a", t.clone()).await;
    let b = node_with(
        &url,
        "b",
        Timing {
            database_timeout: WAIT,
            ..t
        },
    )
    .await;
    let admin = pool(&url).await;
    let (on_a, _rx_a) = mpsc::channel(1);
    let (on_a, _) = a.hub.register("bob", on_a);
    assert!(a.cluster.session_opened("bob").await);
    let (on_b, _rx_b) = mpsc::channel(1);
    let (on_b, _) = b.hub.register("bob", on_b);
    assert!(!b.cluster.session_opened("bob").await);
    let mut hold = admin.begin().await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext('bob'))")
        .bind(nodes::PRESENCE_LOCKS)
        .execute(&mut *hold)
        .await
        .unwrap();
    // a's close and then b's queue on bob's lock; a's gives up (300 ms) while b's waits, so
    // b's is first in the queue, ahead of a's repairs (retried every heartbeat).
    a.hub.unregister("bob", on_a);
    b.hub.unregister("bob", on_b);
    let b = Arc::new(b);
    let a_closing = a.cluster.session_closed("bob");
    let b_closing = tokio::spawn({
        let b = b.clone();
        async move {
            tokio::task::yield_now().await;
            b.cluster.session_closed("bob").await
        }
    });
    assert!(!a_closing.await, "a's close was held up");
    let deadline = Instant::now() + WAIT;
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted",
        )
        .fetch_one(&admin)
        .await
        .unwrap();
        if waiting > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "b's close never waited for the lock"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // a's close "committed" after its answer timed out.
    sqlx::query("DELETE FROM cluster_presence WHERE login = 'bob' AND node = $1")
        .bind(a.cluster.node().0)
        .execute(&mut *hold)
        .await
        .unwrap();
    hold.commit().await.unwrap();
    assert!(b_closing.await.unwrap(), "b announces bob offline");
    // Thirty heartbeats: a's repair runs at the first ones.
    let ev = timeout(fast().heartbeat * 30, a.events.recv()).await;
    assert!(ev.is_err(), "a announced again: {ev:?}");
}
