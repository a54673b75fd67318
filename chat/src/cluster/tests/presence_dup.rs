//! A presence change whose answer came too late, but which committed (the flake of
//! `presence_is_cluster_wide_…` under load: node a announced bob offline after node b had).
//! Each transition is announced once: by the change that made it, or by its node's repair if
//! that change got no answer.

use super::*;

/// Two nodes: a gives up on a database answer after 300 ms, b waits for its answers.
async fn two_nodes(url: &str) -> (Node, Arc<Node>, PgPool) {
    let t = Timing {
        node_timeout: Duration::from_secs(3600),
        database_timeout: Duration::from_millis(300),
        ..fast()
    };
    let a = node_with(url, "a", t.clone()).await;
    let b = node_with(
        url,
        "b",
        Timing {
            database_timeout: WAIT,
            ..t
        },
    )
    .await;
    (a, Arc::new(b), pool(url).await)
}

/// Takes bob's presence lock: every node's change of bob waits for it.
async fn hold_lock(admin: &PgPool) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut hold = admin.begin().await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext('bob'))")
        .bind(nodes::PRESENCE_LOCKS)
        .execute(&mut *hold)
        .await
        .unwrap();
    hold
}

/// Carries out in `hold` what `node`'s close `change` of bob does (`nodes::set_presence`),
/// then commits it: that close committed after its node gave up on it.
async fn commit_late_close(
    mut hold: sqlx::Transaction<'static, sqlx::Postgres>,
    node: NodeId,
    change: i64,
) {
    sqlx::query("DELETE FROM cluster_presence WHERE login = 'bob' AND node = $1")
        .bind(node.0)
        .execute(&mut *hold)
        .await
        .unwrap();
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM cluster_presence WHERE login = 'bob'")
        .fetch_one(&mut *hold)
        .await
        .unwrap();
    let made = rows == 0;
    sqlx::query(
        "INSERT INTO cluster_presence_last (login, online, node, change, xid) \
         VALUES ('bob', $1, $2, $3, pg_current_xact_id()) \
         ON CONFLICT (login) DO UPDATE SET xid = EXCLUDED.xid, \
         online = CASE WHEN $4 THEN EXCLUDED.online ELSE cluster_presence_last.online END, \
         node = CASE WHEN $4 THEN EXCLUDED.node ELSE cluster_presence_last.node END, \
         change = CASE WHEN $4 THEN EXCLUDED.change ELSE cluster_presence_last.change END",
    )
    .bind(rows > 0)
    .bind(node.0)
    .bind(if made { change } else { 0 })
    .bind(made)
    .execute(&mut *hold)
    .await
    .unwrap();
    hold.commit().await.unwrap();
}

/// Waits until some presence change waits for bob's lock.
async fn until_waiting_for_the_lock(admin: &PgPool) {
    let deadline = Instant::now() + WAIT;
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted",
        )
        .fetch_one(admin)
        .await
        .unwrap();
        if waiting > 0 {
            return;
        }
        assert!(Instant::now() < deadline, "nothing waits for the lock");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Every event node `n` sends within thirty heartbeats (its repairs run at the first ones).
async fn events_for_thirty_beats(n: &mut Node) -> Vec<Event> {
    let mut got = Vec::new();
    let until = tokio::time::Instant::now() + fast().heartbeat * 30;
    while let Ok(Some(ev)) = tokio::time::timeout_at(until, n.events.recv()).await {
        got.push(ev);
    }
    got
}

/// bob on a and b; a's close is held up past a's database timeout, then commits; b's close
/// (queued first on bob's lock) empties bob and announces him offline. a's repair at its
/// next heartbeat must not announce him again. It did (`Event::Offline(["bob"])`): the
/// repair announced from the counts alone and could not tell whether another node had.
#[tokio::test]
async fn a_late_close_that_committed_is_not_announced_twice() {
    let Some(url) = msim_testkit::postgres::database("cluster presence late close") else {
        return;
    };
    let (mut a, b, admin) = two_nodes(&url).await;
    let (on_a, _rx_a) = mpsc::channel(1);
    let (on_a, _) = a.hub.register("bob", on_a);
    assert!(a.cluster.session_opened("bob").await);
    let (on_b, _rx_b) = mpsc::channel(1);
    let (on_b, _) = b.hub.register("bob", on_b);
    assert!(!b.cluster.session_opened("bob").await);
    let hold = hold_lock(&admin).await;
    // a's close and then b's queue on bob's lock; a's gives up (300 ms) while b's waits, so
    // b's is first in the queue, ahead of a's repairs (retried every heartbeat).
    a.hub.unregister("bob", on_a);
    b.hub.unregister("bob", on_b);
    let a_closing = a.cluster.session_closed("bob");
    let b_closing = tokio::spawn({
        let b = b.clone();
        async move {
            tokio::task::yield_now().await;
            b.cluster.session_closed("bob").await
        }
    });
    assert!(!a_closing.await, "a's close was held up");
    let change = *a.cluster.presence.unanswered("bob").last().unwrap();
    until_waiting_for_the_lock(&admin).await;
    // a's close "committed" after its answer timed out (bob still on b: no transition).
    commit_late_close(hold, a.cluster.node(), change).await;
    assert!(b_closing.await.unwrap(), "b announces bob offline");
    let got = events_for_thirty_beats(&mut a).await;
    assert!(got.is_empty(), "a announced again: {got:?}");
    assert!(
        a.cluster.presence.unanswered("bob").is_empty(),
        "a repaired"
    );
}

/// bob on a only; a's close is held up past a's database timeout, then commits: it emptied
/// bob, and nobody announced it. a's repair announces bob offline, once.
#[tokio::test]
async fn a_late_close_that_emptied_the_login_is_announced_once_by_the_repair() {
    let Some(url) = msim_testkit::postgres::database("cluster presence late last close") else {
        return;
    };
    let (mut a, b, admin) = two_nodes(&url).await;
    let (on_a, _rx_a) = mpsc::channel(1);
    let (on_a, _) = a.hub.register("bob", on_a);
    assert!(a.cluster.session_opened("bob").await);
    let hold = hold_lock(&admin).await;
    a.hub.unregister("bob", on_a);
    assert!(
        !a.cluster.session_closed("bob").await,
        "a's close was held up"
    );
    let change = *a.cluster.presence.unanswered("bob").last().unwrap();
    commit_late_close(hold, a.cluster.node(), change).await;
    let got = events_for_thirty_beats(&mut a).await;
    let offline: Vec<&Event> = got
        .iter()
        .filter(|e| matches!(e, Event::Offline(l) if l == &["bob".to_owned()]))
        .collect();
    assert_eq!(offline.len(), 1, "{got:?}");
    assert_eq!(got.len(), 1, "{got:?}");
    drop(b);
}
