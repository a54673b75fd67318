//! A batch answered "commit outcome unknown" that did commit (review LOW 12): nobody on its
//! node pushed it, and the node's reader skipped it as its own. Now the commit writer hands
//! its items to the reader when it settles, which pushes those it finds stored, once.

use super::*;

/// Stores messages for `login` as node `n`'s batch (sequence numbers as in `Node::commit`)
/// without pushing them or announcing them: a batch whose answer never came.
async fn store_unanswered(n: &Node, login: &str, texts: &[String]) -> Vec<i64> {
    let mut tx = n.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE test_items IN EXCLUSIVE MODE")
        .execute(&mut *tx)
        .await
        .unwrap();
    let base: i64 = sqlx::query_scalar("SELECT COALESCE(max(seq), 0) FROM test_items")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    let mut seqs = Vec::new();
    for (i, t) in texts.iter().enumerate() {
        let seq = base + 1 + i as i64;
        sqlx::query("INSERT INTO test_items (seq, origin, login, packet) VALUES ($1, $2, $3, $4)")
            .bind(seq)
            .bind(n.cluster.node().0)
            .bind(login)
            .bind(t)
            .execute(&mut *tx)
            .await
            .unwrap();
        seqs.push(seq);
    }
    tx.commit().await.unwrap();
    seqs
}

/// Waits until `n`'s reader has recorded (with a heartbeat) that it passed `seq`.
async fn until_read(n: &Node, seq: i64) {
    let deadline = Instant::now() + WAIT;
    loop {
        let fed: Option<i64> =
            sqlx::query_scalar("SELECT fed_messages FROM cluster_nodes WHERE node = $1")
                .bind(n.cluster.node().0)
                .fetch_one(&n.pool)
                .await
                .unwrap();
        if fed.is_some_and(|f| f >= seq) {
            return;
        }
        assert!(Instant::now() < deadline, "the reader never passed {seq}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn in_doubt(seqs: &[i64]) -> Vec<(usize, i64)> {
    seqs.iter()
        .map(|s| (Stream::Messages as usize, *s))
        .collect()
}

/// What the commit writer tells when a batch storing `seqs` settles in doubt.
fn settle_in_doubt(hook: &Arc<dyn crate::db::commit::CommitHook>, seqs: &[i64]) {
    let top = seqs.iter().copied().max().unwrap_or(0);
    hook.settled([top, 0, 0, 0], [0; 4], in_doubt(seqs));
}

#[tokio::test]
async fn a_batch_in_doubt_that_committed_reaches_its_own_nodes_sessions_once() {
    let Some(url) = msim_testkit::postgres::database("cluster batch in doubt") else {
        return;
    };
    // Only notifications wake the readers: each step below decides when b's reader reads.
    let a = notified_node(&url, "a").await;
    let b = notified_node(&url, "b").await;
    let mut bob = b.session("bob").await;
    let hook = b.cluster.commit_hook();
    // 1. b's reader reads the batch while it still runs (its answer is awaited), then the
    //    batch settles in doubt.
    hook.started();
    let first = store_unanswered(&b, "bob", &texts("doubt-a-", 3)).await;
    a.commit("carol", &texts("wake-1-", 1)).await;
    until_read(&b, first[2] + 1).await;
    settle_in_doubt(&hook, &first);
    // 2. The batch settles in doubt before b's reader reads it.
    hook.started();
    let second = store_unanswered(&b, "bob", &texts("doubt-b-", 2)).await;
    settle_in_doubt(&hook, &second);
    a.commit("carol", &texts("wake-2-", 1)).await;
    // 3. A batch answered as usual: its sessions pushed it; the reader must not again.
    hook.started();
    b.commit("bob", &texts("answered-", 2)).await;
    let top: i64 = sqlx::query_scalar("SELECT max(seq) FROM test_items")
        .fetch_one(&b.pool)
        .await
        .unwrap();
    hook.settled([top, 0, 0, 0], [top - 1, 0, 0, 0], Vec::new());
    a.commit("carol", &texts("wake-3-", 1)).await;
    // 4. A batch in doubt that did not commit: nothing to push. Its number goes to a's next
    //    batch; b's reader passes it and forgets it.
    hook.started();
    settle_in_doubt(&hook, &[top + 2]);
    a.commit("carol", &texts("wake-4-", 1)).await;
    until_read(&b, top + 2).await;
    let got = collect(&mut bob, 7).await;
    let mut seqs: Vec<i64> = got.iter().map(|i| i.seq.unwrap().1).collect();
    seqs.sort();
    let mut want: Vec<i64> = first.iter().chain(&second).copied().collect();
    let answered: Vec<i64> = got
        .iter()
        .filter(|i| i.bytes.starts_with(b"MESSAGE id=answered-"))
        .map(|i| i.seq.unwrap().1)
        .collect();
    assert_eq!(answered.len(), 2, "{got:?}");
    want.extend(answered);
    want.sort();
    assert_eq!(seqs, want, "each once: {got:?}");
    assert_quiet(&mut bob).await;
    wait_until("b never forgot the batch that did not commit", || {
        b.cluster.outbox.own.in_doubt_len() == 0
    })
    .await;
}
