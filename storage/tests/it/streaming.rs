//! Blob store tests: readers following writers, cancellation, the upload sink, admission
//! limits and checksums.

use crate::store_support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use msim_storage::{BlobStore, GoneReason, ManualClock, StoreConfig, StoreError};

use store_support::*;

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
    let last = body.len() - 1;
    for chunk in body.chunks(100_000) {
        w.append(vec![Bytes::copy_from_slice(chunk)]).await.unwrap();
        // The reader gets what has been written so far, before the upload ends, except the
        // file's last byte: that one waits for the SHA-256 check.
        let ready = (w.offset() as usize).min(last);
        while got.len() < ready {
            let c = r.next_chunk(1 << 20).await.unwrap().unwrap();
            got.extend_from_slice(&c);
        }
        assert_eq!(got.len(), ready);
    }
    // A reader waiting for the last byte is woken by completion.
    let waiter = tokio::spawn(async move {
        let tail = r.next_chunk(10).await?;
        let end = r.next_chunk(10).await?;
        Ok::<_, StoreError>((tail, end))
    });
    let sha = w.finish().await.unwrap();
    let (tail, end) = waiter.await.unwrap().unwrap();
    got.extend_from_slice(&tail.unwrap());
    assert!(end.is_none());
    assert_eq!(got, body);
    assert_eq!(sha, Some(hex(&body)));
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
    assert!(!dir
        .path()
        .join(msim_storage::blob_file("a", false))
        .exists());
    assert!(matches!(
        store.cancel("a").await,
        Err(StoreError::Gone(GoneReason::Cancelled))
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
    assert_eq!(sha, Some(hex(&body)));
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
    assert_eq!(stored_files(dir.path()), 0);
}

/// A reader that looks a blob up while its upload is being created (the row is in the index,
/// the file not yet) follows the upload instead of failing with `NotFound`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_racing_the_uploads_creation_follows_it() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let store = open(dir.path(), &clock).await;
    let mut raced = 0;
    for n in 0..300 {
        let id = format!("r{n}");
        let creating = {
            let store = store.clone();
            let id = id.clone();
            tokio::spawn(async move { store.create_writer(new(&id, 3, T0 + 100)).await })
        };
        // Look the row up as soon as it exists, then open a reader at once.
        let info = loop {
            match store.info(&id).await {
                Ok(info) => break info,
                Err(StoreError::NotFound) => tokio::task::yield_now().await,
                Err(e) => panic!("{e}"),
            }
        };
        if !creating.is_finished() {
            raced += 1;
        }
        let mut r = store.reader_for(&info, 0, 3).await.unwrap_or_else(|e| {
            panic!("reader for {id} while its upload is created: {e}");
        });
        let w = creating.await.unwrap().unwrap();
        w.finish_with(vec![Bytes::from_static(b"abc")])
            .await
            .unwrap();
        let mut got = Vec::new();
        while let Some(c) = r.next_chunk(10).await.unwrap() {
            got.extend_from_slice(&c);
        }
        assert_eq!(got, b"abc");
    }
    eprintln!("{raced} of 300 readers opened while the upload was being created");
}
