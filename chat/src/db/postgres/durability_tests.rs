//! A batch of acknowledgements alone commits without waiting for the disk; every other batch
//! waits (`synchronous_commit` on), and the setting never outlives its transaction.

use super::*;
use sqlx::Executor;

async fn setting(c: &mut PgConnection) -> String {
    sqlx::query_scalar("SELECT current_setting('synchronous_commit')")
        .fetch_one(&mut *c)
        .await
        .expect("setting")
}

#[tokio::test]
async fn only_an_acknowledgement_batch_commits_without_the_fsync() {
    let Some(url) = tokio::task::spawn_blocking(|| {
        msim_testkit::postgres::database("store: durability of batches")
    })
    .await
    .expect("cluster thread") else {
        return;
    };
    let db = Db::open_postgres(&url).await.expect("open");
    let pool = db.postgres_pool().expect("PostgreSQL");
    let mut c = pool.acquire().await.expect("connection");
    assert_eq!(setting(&mut c).await, "on", "the server's setting");

    c.execute("BEGIN").await.expect("begin");
    lock_batch_as(&mut c, 0, 0, None, Durability::Buffers)
        .await
        .expect("lock");
    assert_eq!(setting(&mut c).await, "off");
    c.execute("COMMIT").await.expect("commit");
    // Local to that transaction: the next batch on the same connection waits for the disk.
    assert_eq!(setting(&mut c).await, "on");

    c.execute("BEGIN").await.expect("begin");
    lock_batch_as(&mut c, 2, 0, None, Durability::Disk)
        .await
        .expect("lock");
    assert_eq!(setting(&mut c).await, "on");
    c.execute("ROLLBACK").await.expect("rollback");
}

#[test]
fn only_batches_of_acknowledgements_skip_the_fsync() {
    use crate::db::WriteOp;
    let ack = || WriteOp::Ack {
        id: "m1".into(),
        recipient: "bob".into(),
    };
    assert_eq!(Durability::of(&[ack(), ack()]), Durability::Buffers);
    let seen = WriteOp::SetLastSeen {
        login: "bob".into(),
        at: 1,
    };
    assert_eq!(Durability::of(&[ack(), seen]), Durability::Disk);
    assert_eq!(
        Durability::of(&[WriteOp::DeleteReceipts(vec![1])]),
        Durability::Disk
    );
}
