//! Several nodes on one PostgreSQL database.

use super::*;

/// Several nodes on one PostgreSQL database (guarantees 2 and 3 of `db/mod.rs`): two `Db`s
/// write batches concurrently while a reader keeps taking marks; the messages at or below a
/// mark it has seen never change afterwards (no lower number becomes visible late), and in the
/// end every message is there once, each with its own number.
#[tokio::test]
async fn concurrent_nodes_never_fill_a_gap_below_a_seen_mark() {
    const BATCHES: usize = 40;
    const PER_BATCH: usize = 25;
    let Some(url) =
        tokio::task::spawn_blocking(|| msim_testkit::postgres::database("store: concurrent nodes"))
            .await
            .expect("cluster thread")
    else {
        return;
    };
    let a = Db::open_postgres(&url).await.expect("node a");
    let b = Db::open_postgres(&url).await.expect("node b");
    batch(&a, vec![user("alice"), user("bob")]).await;
    let node = |db: Db, name: &'static str| {
        tokio::spawn(async move {
            for i in 0..BATCHES {
                let ops = (0..PER_BATCH)
                    .map(|j| message(&format!("{name}-{i}-{j}"), "bob", name))
                    .collect();
                let r = db.apply_batch(ops).await.expect("batch");
                assert!(r.iter().all(|o| matches!(o, Ok(Outcome::Stored(_)))));
            }
        })
    };
    let started = std::time::Instant::now();
    let writers = [node(a.clone(), "a"), node(b.clone(), "b")];
    let count_upto = |mark: i64| {
        let a = a.clone();
        async move {
            a.pending_messages("bob", 0, mark, 1_000_000)
                .await
                .expect("read")
                .len()
        }
    };
    let mut seen: Vec<(i64, usize)> = Vec::new();
    while !writers.iter().all(|w| w.is_finished()) {
        let mark = a.marks().await.expect("marks").messages;
        seen.push((mark, count_upto(mark).await));
        // Every mark seen so far still bounds exactly what it bounded then.
        for &(m, n) in seen.iter().rev().take(3) {
            assert_eq!(
                count_upto(m).await,
                n,
                "a message below mark {m} appeared late"
            );
        }
    }
    for w in writers {
        w.await.expect("writer");
    }
    let elapsed = started.elapsed();
    let all = b
        .pending_messages("bob", 0, i64::MAX, 1_000_000)
        .await
        .expect("all");
    assert_eq!(all.len(), 2 * BATCHES * PER_BATCH);
    let mut seqs: Vec<i64> = all.iter().map(|m| m.seq).collect();
    seqs.dedup();
    assert_eq!(seqs.len(), all.len(), "duplicate sequence numbers");
    for &(m, n) in &seen {
        assert_eq!(
            count_upto(m).await,
            n,
            "a message below mark {m} appeared late"
        );
    }
    eprintln!(
        "two nodes: {} messages in {} batches each, {:?} ({} marks checked)",
        all.len(),
        BATCHES,
        elapsed,
        seen.len()
    );
    a.close().await;
    b.close().await;
}

/// Guarantee 1 on PostgreSQL: every connection commits with `synchronous_commit=on`, even on
/// a server whose default is off.
#[tokio::test]
async fn postgres_connections_commit_synchronously() {
    let Some(url) = tokio::task::spawn_blocking(|| {
        msim_testkit::postgres::database("store: synchronous_commit")
    })
    .await
    .expect("cluster thread") else {
        return;
    };
    let name = url.rsplit('/').next().and_then(|s| s.split('?').next());
    let cluster = msim_testkit::postgres::shared("store: synchronous_commit").expect("cluster");
    cluster
        .psql(
            "postgres",
            &format!(
                "ALTER DATABASE {} SET synchronous_commit = off",
                name.expect("name")
            ),
        )
        .expect("database default off");
    let db = Db::open_postgres(&url).await.expect("open");
    let on = ["on".to_owned(), "on".to_owned()];
    assert_eq!(db.synchronous_commit().await.expect("show"), Some(on));
    db.close().await;
}
