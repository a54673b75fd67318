//! Unit tests that look inside the index and the live uploads.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::*;
use crate::ManualClock;

impl BlobStore {
    /// Create a blob without writing to it (an upload that stopped at once).
    pub(crate) async fn create(&self, new: NewBlob) -> Result<()> {
        self.create_writer(new).await.map(drop)
    }
}

/// The trigger-kept totals equal the sums over `blobs`.
async fn assert_totals(store: &BlobStore) {
    let pool = store.inner.index.pool();
    let (total, partial): (i64, i64) =
        sqlx::query_as("SELECT total, partial FROM totals WHERE k = 0")
            .fetch_one(pool)
            .await
            .expect("totals");
    let (t2, p2): (Option<i64>, Option<i64>) = sqlx::query_as(
        "SELECT SUM(size), SUM(CASE WHEN state = 0 THEN size ELSE 0 END) FROM blobs",
    )
    .fetch_one(pool)
    .await
    .expect("sums");
    assert_eq!((total, partial), (t2.unwrap_or(0), p2.unwrap_or(0)));
    let a: Vec<(String, i64)> =
        sqlx::query_as("SELECT sender, total FROM sender_totals ORDER BY sender")
            .fetch_all(pool)
            .await
            .expect("sender totals");
    let b: Vec<(String, i64)> = sqlx::query_as(
        "SELECT sender, SUM(CASE WHEN delivered = 0 THEN size ELSE 0 END) AS undelivered
         FROM blobs GROUP BY sender HAVING undelivered > 0 ORDER BY sender",
    )
    .fetch_all(pool)
    .await
    .expect("sender sums");
    assert_eq!(a, b);
}

fn blob(id: &str, size: u64, sender: &str) -> NewBlob {
    NewBlob {
        id: id.into(),
        size,
        expires: 2_000_000_000,
        sender: sender.into(),
        sha256: None,
    }
}

/// Default limits without the free-disk watermark (test machines' disks vary), on `clock`.
fn config(clock: &Arc<ManualClock>) -> StoreConfig {
    StoreConfig {
        min_free_bytes: 0,
        clock: clock.clone(),
        ..StoreConfig::default()
    }
}

#[tokio::test]
async fn totals_follow_every_change() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(ManualClock::new(1_700_000_000));
    let config = config(&clock);
    let store = BlobStore::open(dir.path(), config.clone())
        .await
        .expect("open");
    assert_totals(&store).await;
    store.create(blob("a", 3, "x")).await.expect("a");
    store.create(blob("b", 5, "x")).await.expect("b");
    store.create(blob("c", 7, "y")).await.expect("c");
    assert_totals(&store).await;
    let mut w = store.writer("a").await.expect("writer");
    w.append(vec![Bytes::from_static(b"abc")])
        .await
        .expect("append");
    w.finish().await.expect("finish");
    assert_totals(&store).await;
    // A delivered blob leaves its sender's total, once; a partial one cannot be delivered.
    // Only bytes handed out from the first one on count: the last byte alone does not.
    assert!(!store.record_served("a", 2, 3, 3).await.expect("last byte"));
    assert!(!store.record_served("a", 0, 1, 3).await.expect("first byte"));
    assert!(store.record_served("a", 1, 3, 3).await.expect("the rest"));
    assert!(!store.record_served("a", 0, 3, 3).await.expect("again"));
    assert!(!store.record_served("b", 0, 5, 5).await.expect("partial"));
    assert_totals(&store).await;
    let mut w = store.writer("b").await.expect("writer b");
    w.append(vec![Bytes::from_static(b"abcd")])
        .await
        .expect("append b");
    // Not all written: a download cannot have had the last byte.
    assert!(!store.record_served("b", 0, 5, 5).await.expect("4 of 5"));
    w.append(vec![Bytes::from_static(b"e")])
        .await
        .expect("append b");
    // All written, completion not committed yet (a download that followed it ends here).
    assert!(store.record_served("b", 0, 5, 5).await.expect("deliver b"));
    assert_totals(&store).await;
    w.finish().await.expect("finish b");
    assert_totals(&store).await;
    assert!(store.cancel("c").await.expect("cancel"));
    assert_totals(&store).await;
    store.create(blob("d", 11, "x")).await.expect("d");
    assert_totals(&store).await;
    // Rebuilt from `blobs` when the tables are missing (an index from before them, and so
    // from before migrations: no totals, no `delivered` column).
    for sql in [
        "DROP TRIGGER blobs_totals_insert",
        "DROP TRIGGER blobs_totals_delete",
        "DROP TRIGGER blobs_totals_update",
        "ALTER TABLE blobs DROP COLUMN served",
        "ALTER TABLE blobs DROP COLUMN delivered",
        "DROP TABLE totals",
        "DROP TABLE _sqlx_migrations",
    ] {
        sqlx::query(sql)
            .execute(store.inner.index.pool())
            .await
            .expect(sql);
    }
    store.close().await;
    let store = BlobStore::open(dir.path(), config).await.expect("reopen");
    assert_totals(&store).await;
    clock.advance(1_000_000_000);
    store.sweep().await.expect("sweep");
    assert_totals(&store).await;
    let (total,): (i64,) = sqlx::query_as("SELECT total FROM totals")
        .fetch_one(store.inner.index.pool())
        .await
        .expect("total");
    assert_eq!(total, 0);
}

#[tokio::test]
async fn tombstones_remember_removals_and_are_swept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let t0 = 1_700_000_000;
    let clock = Arc::new(ManualClock::new(t0));
    let config = config(&clock);
    let store = BlobStore::open(dir.path(), config.clone())
        .await
        .expect("open");
    let gone = |r: Result<BlobInfo>| match r {
        Err(StoreError::Gone(reason)) => Some(reason),
        _ => None,
    };
    // Cancelled.
    store.create(blob("c", 3, "x")).await.expect("c");
    assert!(store.cancel("c").await.expect("cancel"));
    assert_eq!(gone(store.info("c").await), Some(GoneReason::Cancelled));
    // Discarded (SHA-256 mismatch).
    let mut bad = blob("d", 3, "x");
    bad.sha256 = Some("00".repeat(32));
    let w = store.create_writer(bad).await.expect("d");
    assert!(matches!(
        w.finish_with(vec![Bytes::from_static(b"abc")]).await,
        Err(StoreError::ShaMismatch { .. })
    ));
    assert_eq!(gone(store.info("d").await), Some(GoneReason::Discarded));
    // Downloaded (one-shot), then expired by a sweep from a second handle (cron).
    let w = store.create_writer(blob("o", 3, "x")).await.expect("o");
    w.finish_with(vec![Bytes::from_static(b"abc")])
        .await
        .expect("finish");
    assert!(store.remove_downloaded("o").await.expect("remove"));
    assert!(!store.remove_downloaded("o").await.expect("again"));
    assert_eq!(gone(store.info("o").await), Some(GoneReason::Downloaded));
    assert!(!dir.path().join(super::blob_file("o", true)).exists());
    let mut e = blob("e", 3, "x");
    e.expires = t0 + 10;
    store.create(e).await.expect("e");
    clock.set(t0 + 10);
    // Expired but not swept yet: gone already.
    assert_eq!(gone(store.info("e").await), Some(GoneReason::Expired));
    let cron = BlobStore::open_without_recovery(dir.path(), config)
        .await
        .expect("cron");
    let rep = cron.sweep().await.expect("sweep");
    assert_eq!((rep.removed_blobs, rep.tombstones), (1, 4));
    cron.close().await;
    assert_eq!(gone(store.info("e").await), Some(GoneReason::Expired));
    // An id is never reused.
    for id in ["c", "d", "o", "e"] {
        assert!(matches!(
            store.create(blob(id, 3, "x")).await,
            Err(StoreError::Gone(_))
        ));
    }
    assert!(matches!(
        store.record_download("c", None).await,
        Err(StoreError::Gone(GoneReason::Cancelled))
    ));
    assert!(matches!(
        store.cancel("d").await,
        Err(StoreError::Gone(GoneReason::Discarded))
    ));
    assert_eq!(store.stats().await.expect("stats").tombstones, 4);
    // Retention: kept until TOMBSTONE_RETENTION after the removal, then swept.
    clock.set(t0 + TOMBSTONE_RETENTION.as_secs() - 1);
    let rep = store.sweep().await.expect("sweep");
    assert_eq!((rep.removed_tombstones, rep.tombstones), (0, 4));
    clock.set(t0 + 10 + TOMBSTONE_RETENTION.as_secs());
    let rep = store.sweep().await.expect("sweep");
    assert_eq!((rep.removed_tombstones, rep.tombstones), (4, 0));
    assert!(matches!(store.info("c").await, Err(StoreError::NotFound)));
    // The count bound drops the oldest first.
    for (k, id) in ["k1", "k2", "k3"].into_iter().enumerate() {
        clock.set(t0 + 1_000_000 + k as u64);
        store.create(blob(id, 1, "x")).await.expect("create");
        store.cancel(id).await.expect("cancel");
    }
    // Young tombstones are kept even beyond the bound.
    let mut rep = SweepReport::default();
    store
        .sweep_tombstones(0, 2, 0, &mut rep)
        .await
        .expect("bound");
    assert_eq!((rep.removed_tombstones, rep.tombstones), (0, 3));
    let mut rep = SweepReport::default();
    let all_old = t0 + 2_000_000;
    store
        .sweep_tombstones(0, 2, all_old, &mut rep)
        .await
        .expect("bound");
    assert_eq!((rep.removed_tombstones, rep.tombstones), (1, 2));
    assert!(matches!(store.info("k1").await, Err(StoreError::NotFound)));
    assert!(matches!(store.info("k3").await, Err(StoreError::Gone(_))));
    assert_totals(&store).await;
}

#[tokio::test]
async fn an_index_made_before_migrations_opens_with_its_data() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The index as the code before migrations left it: its schema (what the first migration
    // creates) with a complete blob and a tombstone, and no migration bookkeeping.
    std::fs::create_dir_all(dir.path().join("blobs")).expect("blobs");
    std::fs::write(dir.path().join("blobs/old.blob"), b"abc").expect("blob file");
    let opts = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(dir.path().join("index.sqlite"))
        .create_if_missing(true);
    let pool = sqlx::SqlitePool::connect_with(opts).await.expect("legacy");
    sqlx::raw_sql(include_str!("migrations/0001_initial.sql"))
        .execute(&pool)
        .await
        .expect("legacy schema");
    sqlx::raw_sql(
        "INSERT INTO blobs (id, size, expires, sender, state, last_progress, created)
             VALUES ('old', 3, 2000000000, 'x', 1, 1, 1);
         INSERT INTO tombstones (id, reason, removed) VALUES ('was', 1, 1);",
    )
    .execute(&pool)
    .await
    .expect("legacy rows");
    pool.close().await;

    let config = config(&Arc::new(ManualClock::new(1_700_000_000)));
    let store = BlobStore::open(dir.path(), config).await.expect("open");
    let info = store.info("old").await.expect("old blob kept");
    assert!(info.complete);
    assert_eq!(store.read_complete("old", 0, 3).await.expect("read"), "abc");
    // The file of the old layout (directly in blobs/) moved into its shard.
    assert!(!dir.path().join("blobs/old.blob").exists());
    assert!(dir.path().join(super::blob_file("old", true)).exists());
    assert!(matches!(store.info("was").await, Err(StoreError::Gone(_))));
    assert_totals(&store).await;
    let (version,): (i64,) = sqlx::query_as("SELECT MAX(version) FROM _sqlx_migrations")
        .fetch_one(store.inner.index.pool())
        .await
        .expect("migrations recorded");
    assert_eq!(version, 3, "up to the served column");
    store.close().await;
}

#[tokio::test]
async fn completions_commit_with_synchronous_full() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = BlobStore::open(dir.path(), StoreConfig::default())
        .await
        .expect("open");
    // 2 = FULL: the WAL is fsync'd by the commit that marks an upload complete.
    let (normal, full) = store.inner.index.write_synchronous().await.expect("pragma");
    assert_eq!(full, 2, "completion commits use synchronous=FULL");
    assert_eq!(normal, 1, "other writes stay NORMAL");
    let (reads,): (i64,) = sqlx::query_as("PRAGMA synchronous")
        .fetch_one(store.inner.index.pool())
        .await
        .expect("pragma");
    assert_eq!(reads, 1);
    store.close().await;
}

#[tokio::test]
async fn idle_reservation_lapses_only_when_room_is_needed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(ManualClock::new(1_000_000));
    let config = StoreConfig {
        capacity_bytes: 1000,
        reservation_idle: Duration::from_secs(120),
        ..config(&clock)
    };
    let store = BlobStore::open(dir.path(), config).await.expect("open");
    let mut w = store
        .create_writer(blob("idle", 900, "mallory"))
        .await
        .expect("create");
    w.append(vec![Bytes::from_static(b"x")])
        .await
        .expect("append");
    drop(w);
    // Recent progress: the reservation holds.
    clock.advance(119);
    assert!(matches!(
        store.create(blob("real", 500, "alice")).await,
        Err(StoreError::CapacityExceeded)
    ));
    // Resumed and moving at its pace (a byte here: it expires in decades), it holds.
    let mut held = store.writer("idle").await.expect("resumable");
    clock.advance(100);
    held.append(vec![Bytes::from_static(b"y")])
        .await
        .expect("append");
    clock.advance(100);
    assert!(matches!(
        store.create(blob("real", 500, "alice")).await,
        Err(StoreError::CapacityExceeded)
    ));
    // No progress for longer than reservation_idle: it gives way, also with its writer
    // attached (a connection sending a byte now and then held it for its lifetime).
    clock.advance(21);
    store
        .create(blob("real", 500, "alice"))
        .await
        .expect("admitted");
    assert!(matches!(store.info("idle").await, Err(StoreError::Gone(_))));
    assert!(held.append(vec![Bytes::from_static(b"z")]).await.is_err());
    store.close().await;
}

/// Attack 5: opening a writer recorded progress, so an empty request every minute kept a
/// reservation that sent nothing; and a byte now and then counted as progress whatever the
/// size. Progress now needs the pace that completes the upload before it expires.
#[tokio::test]
async fn only_bytes_at_the_uploads_pace_keep_its_reservation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(ManualClock::new(1_000_000));
    let config = StoreConfig {
        capacity_bytes: 100 << 20,
        reservation_idle: Duration::from_secs(120),
        ..config(&clock)
    };
    let store = BlobStore::open(dir.path(), config).await.expect("open");
    // Expires in 24 h: 90 MiB must move at 1/720 of it (128 KiB) per two minutes.
    let mut hoard = blob("hoard", 90 << 20, "mallory");
    hoard.expires = store.now() + 86_400;
    let mut w = store.create_writer(hoard).await.expect("create");
    w.append(vec![Bytes::from(vec![1u8; 1000])])
        .await
        .expect("append");
    drop(w);
    for _ in 0..3 {
        clock.advance(100);
        // An empty request, and a writer sending a little: neither is progress.
        drop(store.writer("hoard").await.expect("resumable"));
        let mut w = store.writer("hoard").await.expect("resumable");
        w.append(vec![Bytes::from(vec![2u8; 1000])])
            .await
            .expect("append");
        drop(w);
    }
    store
        .create(blob("real", 20 << 20, "alice"))
        .await
        .expect("the hoard gave way");
    assert!(matches!(
        store.info("hoard").await,
        Err(StoreError::Gone(_))
    ));
    assert!(store.cancel("real").await.expect("cancel"));

    // An upload at its pace keeps its reservation, also when it comes in requests that are
    // each below the step (100 KiB per two minutes here).
    let mut steady = blob("steady", 70 << 20, "bob");
    steady.expires = store.now() + 86_400;
    let mut w = store.create_writer(steady).await.expect("create");
    for _ in 0..3 {
        clock.advance(100);
        for _ in 0..2 {
            drop(w);
            w = store.writer("steady").await.expect("resumable");
            w.append(vec![Bytes::from(vec![3u8; 64 << 10])])
                .await
                .expect("append");
        }
    }
    clock.advance(100);
    assert!(matches!(
        store.create(blob("late", 40 << 20, "carol")).await,
        Err(StoreError::CapacityExceeded)
    ));
    assert!(store.info("steady").await.is_ok());
    drop(w);
    store.close().await;
}

#[tokio::test]
async fn a_relay_and_a_sweep_opening_a_new_index_at_once_both_succeed() {
    for _ in 0..5 {
        let dir = tempfile::tempdir().expect("tempdir");
        let clock = Arc::new(ManualClock::new(1_700_000_000));
        let (serving, sweeping) = tokio::join!(
            BlobStore::open(dir.path(), config(&clock)),
            BlobStore::open_without_recovery(dir.path(), config(&clock)),
        );
        let (serving, sweeping) = (serving.expect("relay"), sweeping.expect("sweep"));
        // Known issue (see the session note): a sweep right after both opened a brand-new
        // index at once can rarely get SQLITE_BUSY; what this test is about is that both
        // opens succeed and the index works, so the sweep may be tried again.
        let mut swept = sweeping.sweep().await;
        for _ in 0..3 {
            if swept.is_ok() {
                break;
            }
            swept = sweeping.sweep().await;
        }
        swept.expect("sweep");
        serving.create(blob("a", 1, "x")).await.expect("create");
        assert_totals(&serving).await;
        sweeping.close().await;
        serving.close().await;
    }
}

/// The write connections are held, not pooled: a write whose caller went away midway (a
/// request dropped by its client) must leave them usable and the index consistent.
#[tokio::test]
async fn writes_dropped_midway_leave_the_index_consistent_and_writable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(ManualClock::new(1_700_000_000));
    let store = BlobStore::open(dir.path(), config(&clock))
        .await
        .expect("open");
    let index = &store.inner.index;
    for polls in 0..8 {
        let id = format!("d{polls}");
        store.create(blob(&id, 3, "x")).await.expect("create");
        // Poll the removal (a transaction of two statements) `polls` times, then drop it.
        {
            let mut removal =
                std::pin::pin!(index.delete(&id, Some(GoneReason::Cancelled), store.now(), false));
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            for _ in 0..polls {
                if removal.as_mut().poll(&mut cx).is_ready() {
                    break;
                }
                tokio::task::yield_now().await;
            }
        }
        // Whatever happened, it happened whole: the row without a tombstone, or the tombstone
        // without the row.
        let row = index.blob(&id).await.expect("row").is_some();
        let tombstone = index.tombstone(&id).await.expect("tombstone").is_some();
        assert!(row != tombstone, "{id}: row {row}, tombstone {tombstone}");
        // And the next writes on the same connections go through.
        store
            .create(blob(&format!("n{polls}"), 3, "x"))
            .await
            .expect("next write");
        let done = index
            .commit_complete(store.now(), &[(&format!("n{polls}"), Some("00"))])
            .await
            .expect("durable write");
        assert_eq!(done.len(), 1);
        assert_totals(&store).await;
    }
    store.close().await;
}

#[tokio::test]
async fn writes_fail_after_close() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(ManualClock::new(1_700_000_000));
    let store = BlobStore::open(dir.path(), config(&clock))
        .await
        .expect("open");
    store.create(blob("a", 3, "x")).await.expect("before close");
    store.close().await;
    assert!(store.create(blob("b", 3, "x")).await.is_err());
    assert!(store.cancel("a").await.is_err());
}
