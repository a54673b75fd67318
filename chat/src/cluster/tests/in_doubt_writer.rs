//! Batches in doubt through the real commit writer (review LOW 9): a `COMMIT` whose answer is
//! lost, its outcome untold, injected into the PostgreSQL store. The writer must hand the
//! batch's items to the cluster's reader (`CommitHook::started`/`settled`); the
//! `in_doubt` tests called those by hand, so removing the writer's calls went unnoticed.

use super::*;
use crate::db::commit::{HookSlot, Writer};
use crate::db::space::Watermark;
use crate::db::{Db, DbError, Outcome, StoredMessage, WriteOp};

/// A node on the real store: its writer, and the cluster hooked to it as the server does.
struct StoreNode {
    db: Db,
    writer: Writer,
    hub: Arc<Hub>,
    cluster: Cluster,
}

async fn store_node(url: &str) -> StoreNode {
    let db = Db::open_postgres(url).await.expect("migrated");
    let space = Watermark::new(&std::env::temp_dir(), 0, Duration::from_secs(3600));
    let hook = HookSlot::default();
    let (writer, _task) = Writer::start(db.clone(), space, hook.clone());
    let hub = Arc::new(Hub::default());
    let feed = StoreFeed::new(db.clone(), writer.clone(), "localhost".to_owned());
    // (Its own commits' notes do not wake its reader: its poll tick does.)
    let timing = fast();
    let pool = db.postgres_pool().expect("postgres");
    let (cluster, _events) = Cluster::start(pool, hub.clone(), Arc::new(feed), timing, "b")
        .await
        .expect("join");
    db.set_node(cluster.node().0);
    let _ = hook.set(cluster.commit_hook());
    StoreNode {
        db,
        writer,
        hub,
        cluster,
    }
}

fn message(id: &str) -> WriteOp {
    WriteOp::InsertMessage(StoredMessage {
        seq: 0,
        id: id.to_owned(),
        sender: "alice".to_owned(),
        recipient: "bob".to_owned(),
        at: 1,
        text: format!("text of {id}"),
    })
}

/// Waits until the node's reader has passed message `seq` (its heartbeat tells).
async fn until_passed(n: &StoreNode, seq: i64) {
    let pool = n.db.postgres_pool().unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        let fed: Option<i64> =
            sqlx::query_scalar("SELECT fed_messages FROM cluster_nodes WHERE node = $1")
                .bind(n.cluster.node().0)
                .fetch_one(&pool)
                .await
                .unwrap();
        if fed.is_some_and(|f| f >= seq) {
            return;
        }
        assert!(Instant::now() < deadline, "the reader never passed {seq}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The writer's answer to a batch in doubt.
fn in_doubt(r: &Result<Outcome, DbError>) -> bool {
    r.as_ref()
        .is_err_and(|e| e.to_string().contains("commit outcome unknown"))
}

#[tokio::test]
async fn the_writers_batches_in_doubt_reach_the_reader() {
    let Some(url) = msim_testkit::postgres::database("cluster writer in doubt") else {
        return;
    };
    let n = store_node(&url).await;
    let pool = n.db.postgres_pool().unwrap();
    sqlx::query(
        "INSERT INTO users (login, password, created_at) \
         VALUES ('alice', '\\x00', 1), ('bob', '\\x00', 1)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let (tx, mut bob) = mpsc::channel(100);
    n.hub.register("bob", tx);
    // 1. In doubt, committed: nobody answered it, the reader pushes it, once.
    n.db.lose_next_commit(true);
    let r = n.writer.write(message("m1")).await;
    assert!(in_doubt(&r), "{r:?}");
    let got = collect(&mut bob, 1).await;
    assert!(
        String::from_utf8_lossy(&got[0].bytes).contains("id=m1"),
        "{got:?}"
    );
    let m1 = got[0].seq.unwrap().1;
    // 2. In doubt, not committed, and its numbers' advance lost too (a failover to a
    //    standby that had not received it): the next batch, answered, reuses its number.
    //    Its sessions push it; the reader must not (it did: a second copy).
    let before: i64 = sqlx::query_scalar("SELECT last_value FROM message_seq")
        .fetch_one(&pool)
        .await
        .unwrap();
    n.db.lose_next_commit(false);
    let r = n.writer.write(message("m2")).await;
    assert!(in_doubt(&r), "{r:?}");
    sqlx::query("SELECT setval('message_seq', $1)")
        .bind(before)
        .execute(&pool)
        .await
        .unwrap();
    let m3 = match n.writer.write(message("m3")).await {
        Ok(Outcome::Stored(seq)) => seq,
        r => panic!("{r:?}"),
    };
    assert_eq!(m3, m1 + 1, "m3 took m2's number");
    until_passed(&n, m3).await;
    assert_quiet(&mut bob).await;
    // 3. Nothing is left remembered.
    assert_eq!(n.cluster.outbox.own.in_doubt_len(), 0);
    n.cluster.stop().await;
    drop(n.writer);
    n.db.close().await;
}
