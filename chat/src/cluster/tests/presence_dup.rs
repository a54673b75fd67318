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

/// Commits in `hold` (which holds bob's presence lock) `node`'s changes of bob, each
/// `(online, change id)`, as `nodes::set_presence` makes them: changes that committed after
/// their node gave up on them.
async fn commit_late(
    mut hold: sqlx::Transaction<'static, sqlx::Postgres>,
    node: NodeId,
    changes: &[(bool, i64)],
) {
    for (online, change) in changes {
        nodes::write_presence(&mut hold, node, "bob", *online, *change, WAIT)
            .await
            .unwrap();
    }
    hold.commit().await.unwrap();
}

/// Commits in `hold` `node`'s close `change` of bob (see [`commit_late`]).
async fn commit_late_close(
    hold: sqlx::Transaction<'static, sqlx::Postgres>,
    node: NodeId,
    change: i64,
) {
    commit_late(hold, node, &[(false, change)]).await;
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

/// bob opens and closes his only session, on a; both changes are held up past a's database
/// timeout, then both commit: bob went online and offline again, and nobody announced
/// either. The watchers saw him offline throughout. a's repair may say so once more (it
/// cannot know what the watchers saw without guessing from a view another node's change can
/// make stale: a guess hid real changes, review of the presence fixes, item 1), but it must
/// never announce him online, nor repeat itself.
#[tokio::test]
async fn two_late_changes_that_undid_each_other_never_announce_the_wrong_state() {
    let Some(url) = msim_testkit::postgres::database("cluster presence late open and close") else {
        return;
    };
    let (mut a, b, admin) = two_nodes(&url).await;
    let hold = hold_lock(&admin).await;
    let (on_a, _rx_a) = mpsc::channel(1);
    let (on_a, _) = a.hub.register("bob", on_a);
    assert!(
        !a.cluster.session_opened("bob").await,
        "a's open was held up"
    );
    let opened = *a.cluster.presence.unanswered("bob").last().unwrap();
    a.hub.unregister("bob", on_a);
    assert!(
        !a.cluster.session_closed("bob").await,
        "a's close was held up"
    );
    let closed = *a.cluster.presence.unanswered("bob").last().unwrap();
    assert_ne!(opened, closed);
    commit_late(hold, a.cluster.node(), &[(true, opened), (false, closed)]).await;
    let got = events_for_thirty_beats(&mut a).await;
    assert!(
        got.iter()
            .all(|e| matches!(e, Event::Offline(l) if l == &["bob".to_owned()])),
        "a announced: {got:?}"
    );
    assert!(got.len() <= 1, "a repeated itself: {got:?}");
    assert!(
        a.cluster.presence.unanswered("bob").is_empty(),
        "a repaired"
    );
    drop(b);
}
