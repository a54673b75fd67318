use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use msim_storage::{
    BlobReader, BlobStore, GoneReason, ManualClock, NewBlob, StoreConfig, StoreError, SweepReport,
};
use sha2::{Digest, Sha256};

const T0: u64 = 1_700_000_000;

fn config(clock: &Arc<ManualClock>) -> StoreConfig {
    StoreConfig {
        capacity_bytes: 1 << 30,
        min_free_bytes: 0,
        per_sender_quota_bytes: 1 << 30,
        abandon_after: Duration::from_secs(600),
        reservation_idle: Duration::from_secs(120),
        clock: clock.clone(),
    }
}

async fn open(dir: &std::path::Path, clock: &Arc<ManualClock>) -> BlobStore {
    BlobStore::open(dir, config(clock)).await.expect("open")
}

fn new(id: &str, size: u64, expires: u64) -> NewBlob {
    NewBlob {
        id: id.into(),
        size,
        expires,
        sender: "alice@x".into(),
        sha256: None,
    }
}

fn hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Shorthands the store does not need: create a blob without writing to it (an upload that
/// stopped at once), and look a blob up and open a reader in one step.
trait StoreShorthands {
    async fn create(&self, new: NewBlob) -> msim_storage::Result<()>;
    async fn reader(&self, id: &str, start: u64, end: u64) -> msim_storage::Result<BlobReader>;
}

impl StoreShorthands for BlobStore {
    async fn create(&self, new: NewBlob) -> msim_storage::Result<()> {
        self.create_writer(new).await.map(drop)
    }

    async fn reader(&self, id: &str, start: u64, end: u64) -> msim_storage::Result<BlobReader> {
        let info = self.info(id).await?;
        self.reader_for(&info, start, end).await
    }
}

fn data(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 31 % 251) as u8).collect()
}

async fn read_all(store: &BlobStore, id: &str) -> Vec<u8> {
    let info = store.info(id).await.unwrap();
    let mut r = store.reader(id, 0, info.size).await.unwrap();
    let mut out = Vec::new();
    while let Some(c) = r.next_chunk(1 << 16).await.unwrap() {
        out.extend_from_slice(&c);
    }
    out
}

#[tokio::test]
async fn reader_follows_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let store = open(dir.path(), &clock).await;
    let body = data(300_000);
    store
        .create(new("a", body.len() as u64, T0 + 100))
        .await
        .unwrap();
    let mut w = store.writer("a").await.unwrap();
    let mut r = store.reader("a", 0, body.len() as u64).await.unwrap();
    let mut got = Vec::new();
    for chunk in body.chunks(100_000) {
        w.append(vec![Bytes::copy_from_slice(chunk)]).await.unwrap();
        // The reader gets exactly what has been written so far, before the upload ends.
        while got.len() < w.offset() as usize {
            let c = r.next_chunk(1 << 20).await.unwrap().unwrap();
            got.extend_from_slice(&c);
        }
        assert_eq!(got.len() as u64, w.offset());
    }
    // A reader waiting at the end of the written data is woken by completion.
    let waiter = tokio::spawn(async move { r.next_chunk(10).await.map(|c| c.is_none()) });
    let sha = w.finish().await.unwrap();
    assert!(waiter.await.unwrap().unwrap());
    assert_eq!(got, body);
    assert_eq!(sha, hex(&body));
    assert_eq!(read_all(&store, "a").await, body);
    let info = store.info("a").await.unwrap();
    assert!(info.complete);
    assert_eq!(info.sha256.as_deref(), Some(hex(&body).as_str()));
}

#[tokio::test]
async fn waiting_reader_is_woken_by_new_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let store = open(dir.path(), &clock).await;
    store.create(new("a", 10, T0 + 100)).await.unwrap();
    let mut r = store.reader("a", 0, 10).await.unwrap();
    let waiter = tokio::spawn(async move { r.next_chunk(100).await });
    let mut w = store.writer("a").await.unwrap();
    w.append(vec![Bytes::from_static(b"hello")]).await.unwrap();
    let c = waiter.await.unwrap().unwrap().unwrap();
    assert_eq!(&c[..], b"hello");
}

#[tokio::test]
async fn cancel_wakes_reader_and_writer_with_error() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let store = open(dir.path(), &clock).await;
    store.create(new("a", 10, T0 + 100)).await.unwrap();
    let mut w = store.writer("a").await.unwrap();
    w.append(vec![Bytes::from_static(b"abc")]).await.unwrap();
    let mut r = store.reader("a", 0, 10).await.unwrap();
    assert_eq!(&r.next_chunk(100).await.unwrap().unwrap()[..], b"abc");
    let waiter = tokio::spawn(async move { r.next_chunk(100).await });
    assert!(store.cancel("a").await.unwrap());
    assert!(matches!(waiter.await.unwrap(), Err(StoreError::Cancelled)));
    assert!(matches!(
        w.append(vec![Bytes::from_static(b"d")]).await,
        Err(StoreError::Cancelled)
    ));
    assert!(matches!(
        store.info("a").await,
        Err(StoreError::Gone(GoneReason::Cancelled))
    ));
    assert!(!dir.path().join("blobs/a.part").exists());
    assert!(matches!(
        store.cancel("a").await,
        Err(StoreError::Gone(GoneReason::Cancelled))
    ));
}

#[tokio::test]
async fn sweep_of_expired_partial_wakes_reader() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let store = open(dir.path(), &clock).await;
    store.create(new("a", 10, T0 + 10)).await.unwrap();
    let mut w = store.writer("a").await.unwrap();
    w.append(vec![Bytes::from_static(b"abc")]).await.unwrap();
    let mut r = store.reader("a", 3, 10).await.unwrap();
    let waiter = tokio::spawn(async move { r.next_chunk(100).await });
    clock.advance(10);
    let rep = store.sweep().await.unwrap();
    assert_eq!(
        rep,
        SweepReport {
            removed_blobs: 1,
            removed_bytes: 3,
            removed_partials: 1,
            removed_tombstones: 0,
            tombstones: 1,
        }
    );
    assert!(matches!(waiter.await.unwrap(), Err(StoreError::Expired)));
}

#[tokio::test]
async fn completed_blob_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let body = data(1 << 20);
    {
        let store = open(dir.path(), &clock).await;
        store
            .create(new("done", body.len() as u64, T0 + 100))
            .await
            .unwrap();
        let mut w = store.writer("done").await.unwrap();
        w.append(vec![Bytes::from(body.clone())]).await.unwrap();
        w.finish().await.unwrap();
        store.close().await;
    }
    let store = open(dir.path(), &clock).await;
    let info = store.info("done").await.unwrap();
    assert!(info.complete);
    assert_eq!(read_all(&store, "done").await, body);
    assert!(matches!(
        store.writer("done").await,
        Err(StoreError::AlreadyComplete)
    ));
}

#[tokio::test]
async fn partial_is_not_complete_after_restart_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let body = data(500_000);
    let declared = hex(&body);
    {
        let store = open(dir.path(), &clock).await;
        let mut nb = new("p", body.len() as u64, T0 + 100);
        nb.sha256 = Some(declared.clone());
        store.create(nb).await.unwrap();
        let mut w = store.writer("p").await.unwrap();
        w.append(vec![Bytes::copy_from_slice(&body[..200_000])])
            .await
            .unwrap();
        assert!(matches!(store.writer("p").await, Err(StoreError::Busy)));
        drop(w); // interrupted
        store.close().await;
    }
    let store = open(dir.path(), &clock).await;
    let info = store.info("p").await.unwrap();
    assert!(!info.complete);
    assert_eq!(info.committed, 200_000);
    let mut w = store.writer("p").await.unwrap();
    assert_eq!(w.offset(), 200_000);
    assert!(matches!(
        w.append(vec![Bytes::from(vec![0u8; 300_001])]).await,
        Err(StoreError::TooLarge)
    ));
    w.append(vec![Bytes::copy_from_slice(&body[200_000..])])
        .await
        .unwrap();
    // The hash covers the prefix written before the restart.
    assert_eq!(w.finish().await.unwrap(), declared);
    assert_eq!(read_all(&store, "p").await, body);
}

#[tokio::test]
async fn recovery_removes_orphans_and_reconciles() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    {
        let store = open(dir.path(), &clock).await;
        store.create(new("gone", 5, T0 + 100)).await.unwrap();
        store.close().await;
    }
    let blobs = dir.path().join("blobs");
    std::fs::remove_file(blobs.join("gone.part")).unwrap();
    std::fs::write(blobs.join("orphan.blob"), b"xx").unwrap();
    std::fs::write(blobs.join("orphan2.part"), b"xx").unwrap();
    std::fs::write(blobs.join("junk.tmp"), b"xx").unwrap();
    let store = open(dir.path(), &clock).await;
    assert!(matches!(
        store.info("gone").await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store.info("orphan").await,
        Err(StoreError::NotFound)
    ));
    assert_eq!(std::fs::read_dir(&blobs).unwrap().count(), 0);
    assert_eq!(store.stats().await.unwrap().blobs, 0);
}

#[tokio::test]
async fn sweep_removes_only_expired_and_abandoned() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let store = open(dir.path(), &clock).await;
    for (id, exp) in [("e1", T0 + 10), ("e2", T0 + 20), ("keep", T0 + 10_000)] {
        store.create(new(id, 4, exp)).await.unwrap();
        let mut w = store.writer(id).await.unwrap();
        w.append(vec![Bytes::from_static(b"data")]).await.unwrap();
        w.finish().await.unwrap();
    }
    // A partial upload that keeps making progress, and one that stalls.
    store.create(new("active", 8, T0 + 10_000)).await.unwrap();
    store.create(new("stalled", 8, T0 + 10_000)).await.unwrap();
    let mut stalled = store.writer("stalled").await.unwrap();
    stalled
        .append(vec![Bytes::from_static(b"st")])
        .await
        .unwrap();
    drop(stalled);

    clock.set(T0 + 15);
    let rep = store.sweep().await.unwrap();
    assert_eq!(rep.removed_blobs, 1);
    assert_eq!(rep.removed_bytes, 4);
    assert!(matches!(
        store.info("e1").await,
        Err(StoreError::Gone(GoneReason::Expired))
    ));
    assert!(store.info("e2").await.is_ok());

    clock.set(T0 + 500);
    let mut active = store.writer("active").await.unwrap();
    active
        .append(vec![Bytes::from_static(b"ac")])
        .await
        .unwrap();
    clock.set(T0 + 700);
    let rep = store.sweep().await.unwrap();
    // e2 expired; "stalled" had no progress for 700 s > 600 s; "active" progressed at +500.
    assert_eq!(rep.removed_blobs, 2);
    assert_eq!(rep.removed_partials, 1);
    assert_eq!(rep.removed_bytes, 4 + 2);
    assert!(store.info("keep").await.is_ok());
    assert!(store.info("active").await.is_ok());
    assert!(matches!(
        store.info("stalled").await,
        Err(StoreError::Gone(GoneReason::Expired))
    ));
    assert_eq!(
        store.sweep().await.unwrap(),
        SweepReport {
            tombstones: 3,
            ..SweepReport::default()
        }
    );
}

#[tokio::test]
async fn admission_limits() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let mut cfg = config(&clock);
    cfg.capacity_bytes = 1000;
    cfg.per_sender_quota_bytes = 600;
    let store = BlobStore::open(dir.path(), cfg).await.unwrap();
    store.create(new("a", 500, T0 + 100)).await.unwrap();
    assert!(matches!(
        store.create(new("a", 1, T0 + 100)).await,
        Err(StoreError::AlreadyExists)
    ));
    assert!(matches!(
        store.create(new("b", 200, T0 + 100)).await,
        Err(StoreError::QuotaExceeded)
    ));
    let mut other = new("c", 400, T0 + 100);
    other.sender = "bob@x".into();
    store.create(other).await.unwrap();
    let mut big = new("d", 101, T0 + 100);
    big.sender = "carol@x".into();
    assert!(matches!(
        store.create(big).await,
        Err(StoreError::CapacityExceeded)
    ));
    assert!(matches!(
        store.create(new("../x", 1, T0 + 100)).await,
        Err(StoreError::InvalidId)
    ));
    store.close().await;

    let mut cfg = config(&clock);
    cfg.min_free_bytes = u64::MAX / 4;
    let store = BlobStore::open(dir.path(), cfg).await.unwrap();
    assert!(matches!(
        store.create(new("e", 1, T0 + 100)).await,
        Err(StoreError::LowDisk)
    ));
}

#[tokio::test]
async fn sha_mismatch_discards_blob() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let store = open(dir.path(), &clock).await;
    let mut nb = new("s", 3, T0 + 100);
    nb.sha256 = Some(hex(b"abc"));
    store.create(nb).await.unwrap();
    let mut w = store.writer("s").await.unwrap();
    w.append(vec![Bytes::from_static(b"abd")]).await.unwrap();
    assert!(matches!(
        w.finish().await,
        Err(StoreError::ShaMismatch { .. })
    ));
    assert!(matches!(
        store.info("s").await,
        Err(StoreError::Gone(GoneReason::Discarded))
    ));
    assert_eq!(
        std::fs::read_dir(dir.path().join("blobs")).unwrap().count(),
        0
    );
}

#[tokio::test]
async fn download_limit_and_incomplete_finish() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let store = open(dir.path(), &clock).await;
    store.create(new("o", 3, T0 + 100)).await.unwrap();
    let mut w = store.writer("o").await.unwrap();
    w.append(vec![Bytes::from_static(b"ab")]).await.unwrap();
    assert!(matches!(
        w.finish().await,
        Err(StoreError::Incomplete {
            received: 2,
            size: 3
        })
    ));
    assert_eq!(store.record_download("o", Some(1)).await.unwrap(), 1);
    assert!(matches!(
        store.record_download("o", Some(1)).await,
        Err(StoreError::DownloadLimit)
    ));
    assert!(store.record_download("o", None).await.is_ok());
    assert!(matches!(
        store.record_download("nope", None).await,
        Err(StoreError::NotFound)
    ));
    // Expired blobs are not served even before a sweep.
    clock.set(T0 + 100);
    assert!(matches!(
        store.info("o").await,
        Err(StoreError::Gone(GoneReason::Expired))
    ));
}

#[tokio::test]
async fn sweep_from_another_handle_is_seen_by_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let server = open(dir.path(), &clock).await;
    server.create(new("x", 4, T0 + 10)).await.unwrap();
    let mut w = server.writer("x").await.unwrap();
    w.append(vec![Bytes::from_static(b"data")]).await.unwrap();
    w.finish().await.unwrap();
    // What `msim-relay sweep` does: its own pool on the same directory, no recovery.
    clock.set(T0 + 11);
    let cron = BlobStore::open_without_recovery(dir.path(), config(&clock))
        .await
        .unwrap();
    let rep = cron.sweep().await.unwrap();
    assert_eq!(rep.removed_blobs, 1);
    clock.set(T0);
    assert!(matches!(
        server.info("x").await,
        Err(StoreError::Gone(GoneReason::Expired))
    ));
    assert!(matches!(
        server.reader("x", 0, 4).await,
        Err(StoreError::Gone(GoneReason::Expired))
    ));
}

#[tokio::test]
async fn sink_pipelines_and_followers_get_every_byte() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let store = open(dir.path(), &clock).await;
    let body = data(3_000_000);
    store
        .create(new("s", body.len() as u64, T0 + 100))
        .await
        .unwrap();
    // Two followers: one reading as it goes, one starting at an offset.
    let mut r1 = store.reader("s", 0, body.len() as u64).await.unwrap();
    let mut r2 = store
        .reader("s", 1_000_001, body.len() as u64)
        .await
        .unwrap();
    let follow1 = tokio::spawn(async move {
        let mut got = Vec::new();
        while let Some(c) = r1.next_chunk(1 << 16).await.unwrap() {
            got.extend_from_slice(&c);
        }
        got
    });
    let follow2 = tokio::spawn(async move {
        let mut got = Vec::new();
        while let Some(c) = r2.next_chunk(100_000).await.unwrap() {
            got.extend_from_slice(&c);
        }
        got
    });
    let budget = msim_storage::SharedBudget::new(1 << 20);
    let mut sink = store
        .writer("s")
        .await
        .unwrap()
        .sink(300_000, Some(budget.clone()));
    for chunk in body.chunks(70_001) {
        sink.push(Bytes::copy_from_slice(chunk)).await.unwrap();
    }
    assert_eq!(sink.accepted(), body.len() as u64);
    // More than declared is refused without storing anything.
    assert!(matches!(
        sink.push(Bytes::from_static(b"x")).await,
        Err(StoreError::TooLarge)
    ));
    let w = sink.close().await.unwrap();
    assert_eq!(w.offset(), body.len() as u64);
    assert_eq!(budget.available(), 1 << 20, "all budget returned");
    let sha = w.finish().await.unwrap();
    assert_eq!(sha, hex(&body));
    assert_eq!(follow1.await.unwrap(), body);
    assert_eq!(follow2.await.unwrap(), &body[1_000_001..]);
    assert_eq!(read_all(&store, "s").await, body);
}

#[tokio::test]
async fn sink_reports_cancel_and_keeps_budget() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let store = open(dir.path(), &clock).await;
    store.create(new("c", 1 << 20, T0 + 100)).await.unwrap();
    let budget = msim_storage::SharedBudget::new(1 << 20);
    let mut sink = store
        .writer("c")
        .await
        .unwrap()
        .sink(1 << 16, Some(budget.clone()));
    sink.push(Bytes::from(vec![1u8; 1000])).await.unwrap();
    assert!(store.cancel("c").await.unwrap());
    // Pushing eventually fails once the storing side has seen the cancel; close says why.
    let mut failed = false;
    for _ in 0..32 {
        if sink.push(Bytes::from(vec![2u8; 1 << 14])).await.is_err() {
            failed = true;
            break;
        }
    }
    assert!(failed, "pushes keep failing after a cancel");
    assert!(matches!(sink.close().await, Err(StoreError::Cancelled)));
    assert_eq!(budget.available(), 1 << 20, "all budget returned");
}

#[tokio::test]
async fn concurrent_creates_never_overshoot_capacity() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let cfg = StoreConfig {
        capacity_bytes: 10 * 1000,
        ..config(&clock)
    };
    let store = BlobStore::open(dir.path(), cfg).await.unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..40 {
        let store = store.clone();
        tasks.spawn(async move { store.create(new(&format!("b{n}"), 1000, T0 + 100)).await });
    }
    let (mut ok, mut full) = (0, 0);
    while let Some(r) = tasks.join_next().await {
        match r.unwrap() {
            Ok(()) => ok += 1,
            Err(StoreError::CapacityExceeded) => full += 1,
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!((ok, full), (10, 30));
    assert_eq!(store.stats().await.unwrap().declared_bytes, 10 * 1000);
    assert!(matches!(
        store.create(new("b0", 1, T0 + 100)).await,
        Err(StoreError::AlreadyExists)
    ));
}

#[tokio::test]
async fn a_cancelled_read_leaves_the_reader_usable() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let store = open(dir.path(), &clock).await;
    let body = data(500_000);
    store
        .create(new("r", body.len() as u64, T0 + 100))
        .await
        .unwrap();
    let mut w = store.writer("r").await.unwrap();
    w.append(vec![Bytes::from(body.clone())]).await.unwrap();
    w.finish().await.unwrap();
    let mut r = store.reader("r", 0, body.len() as u64).await.unwrap();
    // Polled once (the file read starts), then dropped; it may have finished in that poll.
    let first = tokio::time::timeout(Duration::ZERO, r.next_chunk(1 << 16)).await;
    let skipped = match first {
        Ok(c) => c.unwrap().map_or(0, |c| c.len()),
        Err(_) => 0,
    };
    let mut got = Vec::new();
    while let Some(c) = r.next_chunk(1 << 16).await.unwrap() {
        got.extend_from_slice(&c);
    }
    assert_eq!(got, &body[skipped..], "continues where it was");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_completions_are_grouped_durable_and_visible_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let store = open(dir.path(), &clock).await;
    let n = 48;
    let mut tasks = tokio::task::JoinSet::new();
    for k in 0..n {
        let store = store.clone();
        tasks.spawn(async move {
            let id = format!("group-{k}");
            let body = data(1000 + k * 977);
            let mut new = new(&id, body.len() as u64, T0 + 3600);
            // Some declare their SHA-256, one declares a wrong one (discarded, the others not).
            if k % 3 == 0 {
                new.sha256 = Some(hex(&body));
            }
            if k == 7 {
                new.sha256 = Some(hex(b"something else"));
            }
            let w = store.create_writer(new).await.unwrap();
            // Half finish with their last bytes, half append first and finish empty.
            let res = if k % 2 == 0 {
                w.finish_with(vec![Bytes::from(body.clone())]).await
            } else {
                let mut w = w;
                let (a, b) = body.split_at(body.len() / 2);
                w.append(vec![Bytes::copy_from_slice(a)]).await.unwrap();
                w.finish_with(vec![Bytes::copy_from_slice(b)]).await
            };
            (id, body, res)
        });
    }
    let mut done = Vec::new();
    while let Some(r) = tasks.join_next().await {
        let (id, body, res) = r.unwrap();
        if id == "group-7" {
            assert!(
                matches!(res, Err(StoreError::ShaMismatch { .. })),
                "{res:?}"
            );
            assert!(matches!(
                store.info(&id).await,
                Err(StoreError::Gone(GoneReason::Discarded))
            ));
            continue;
        }
        assert_eq!(res.unwrap(), hex(&body));
        // Visible as complete as soon as finish returns.
        let info = store.info(&id).await.unwrap();
        assert!(info.complete);
        assert_eq!(info.sha256.as_deref(), Some(hex(&body).as_str()));
        done.push((id, body));
    }
    assert_eq!(done.len(), n - 1);
    store.close().await;
    drop(store);
    let store = open(dir.path(), &clock).await;
    for (id, body) in &done {
        let info = store.info(id).await.unwrap();
        assert!(info.complete, "{id} complete after restart");
        assert_eq!(info.sha256.as_deref(), Some(hex(body).as_str()));
        assert_eq!(read_all(&store, id).await, *body);
    }
    assert!(matches!(
        store.info("group-7").await,
        Err(StoreError::Gone(GoneReason::Discarded))
    ));
    assert_eq!(store.stats().await.unwrap().complete_blobs, (n - 1) as u64);
    // A finish that does not complete the blob stores the bytes and says so.
    let w = store
        .create_writer(new("short", 10, T0 + 3600))
        .await
        .unwrap();
    let res = w.finish_with(vec![Bytes::from_static(b"abc")]).await;
    assert!(
        matches!(
            res,
            Err(StoreError::Incomplete {
                received: 3,
                size: 10
            })
        ),
        "{res:?}"
    );
    assert_eq!(store.info("short").await.unwrap().committed, 3);
}
