//! Blob store tests: restarts and recovery, sweeps, download limits and durable completion.

use crate::store_support;

use std::sync::Arc;

use bytes::Bytes;
use msim_storage::{BlobStore, GoneReason, ManualClock, StoreError, SweepReport};

use store_support::*;

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
    assert_eq!(w.finish().await.unwrap(), Some(declared));
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
    std::fs::remove_file(dir.path().join(msim_storage::blob_file("gone", false))).unwrap();
    // Orphans in the shards and, as an older relay left them, directly in blobs/.
    std::fs::write(
        dir.path().join(msim_storage::blob_file("orphan", true)),
        b"xx",
    )
    .unwrap();
    std::fs::write(
        dir.path().join(msim_storage::blob_file("orphan2", false)),
        b"xx",
    )
    .unwrap();
    std::fs::write(blobs.join("orphan3.blob"), b"xx").unwrap();
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
    assert_eq!(stored_files(dir.path()), 0);
    assert_eq!(store.stats().await.unwrap().blobs, 0);
}

/// A store written before `blobs/` had shard subdirectories: every file directly in `blobs/`.
/// After the upgrade its complete blobs are served, its interrupted upload resumes with its
/// bytes kept, and its files end up in the shards.
#[tokio::test]
async fn a_store_of_the_old_flat_layout_opens_with_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let body = data(3000);
    {
        let store = open(dir.path(), &clock).await;
        let w = store
            .create_writer(new("done", 3000, T0 + 100))
            .await
            .unwrap();
        w.finish_with(vec![Bytes::from(body.clone())])
            .await
            .unwrap();
        let mut w = store
            .create_writer(new("half", 3000, T0 + 100))
            .await
            .unwrap();
        w.append(vec![Bytes::from(body[..1000].to_vec())])
            .await
            .unwrap();
        drop(w);
        store.create_writer(new("swept", 3, T0 + 10)).await.unwrap();
        store.close().await;
    }
    // Turn it into the old layout: files directly in blobs/, no shard directories.
    let blobs = dir.path().join("blobs");
    for (id, complete) in [("done", true), ("half", false), ("swept", false)] {
        let name = format!("{id}.{}", if complete { "blob" } else { "part" });
        std::fs::rename(
            dir.path().join(msim_storage::blob_file(id, complete)),
            blobs.join(&name),
        )
        .unwrap();
    }
    for e in std::fs::read_dir(&blobs).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            std::fs::remove_dir(e.path()).unwrap();
        }
    }
    // A sweep from cron (no recovery) on the old layout removes an old file.
    clock.set(T0 + 10);
    let cron = BlobStore::open_without_recovery(dir.path(), config(&clock))
        .await
        .unwrap();
    assert_eq!(cron.sweep().await.unwrap().removed_blobs, 1);
    cron.close().await;
    assert!(!blobs.join("swept.part").exists());

    let store = open(dir.path(), &clock).await;
    assert_eq!(
        stored_files(dir.path()),
        2,
        "nothing lost, nothing left over"
    );
    assert!(dir
        .path()
        .join(msim_storage::blob_file("done", true))
        .exists());
    assert!(dir
        .path()
        .join(msim_storage::blob_file("half", false))
        .exists());
    assert!(store.info("done").await.unwrap().complete);
    assert_eq!(read_all(&store, "done").await, body);
    let info = store.info("half").await.unwrap();
    assert_eq!((info.committed, info.complete), (1000, false));
    let mut w = store.writer("half").await.unwrap();
    assert_eq!(w.offset(), 1000);
    w.append(vec![Bytes::from(body[1000..].to_vec())])
        .await
        .unwrap();
    w.finish().await.unwrap();
    assert_eq!(read_all(&store, "half").await, body);
    assert!(matches!(
        store.info("swept").await,
        Err(StoreError::Gone(GoneReason::Expired))
    ));
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
        assert_eq!(res.unwrap(), Some(hex(&body)));
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

/// The index commit of a completion and the fsync of its rename run side by side: a crash
/// can leave the row complete and the file still at its `.part` name (whole: it was fsync'd
/// before the commit began). Recovery finishes the rename and serves it.
#[tokio::test]
async fn a_committed_upload_whose_rename_was_lost_is_served_after_recovery() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let body = data(5000);
    {
        let store = open(dir.path(), &clock).await;
        let w = store.create_writer(new("c", 5000, T0 + 100)).await.unwrap();
        w.finish_with(vec![Bytes::from(body.clone())])
            .await
            .unwrap();
        store.close().await;
    }
    let (blob, part) = (
        dir.path().join(msim_storage::blob_file("c", true)),
        dir.path().join(msim_storage::blob_file("c", false)),
    );
    std::fs::rename(&blob, &part).unwrap();
    let store = open(dir.path(), &clock).await;
    let info = store.info("c").await.unwrap();
    assert!(info.complete);
    assert_eq!(read_all(&store, "c").await, body);
    assert!(blob.exists() && !part.exists());
    // A complete row whose `.part` is short is not whole: removed, never served.
    let w = store.create_writer(new("s", 5000, T0 + 100)).await.unwrap();
    w.finish_with(vec![Bytes::from(body.clone())])
        .await
        .unwrap();
    store.close().await;
    let (blob, part) = (
        dir.path().join(msim_storage::blob_file("s", true)),
        dir.path().join(msim_storage::blob_file("s", false)),
    );
    std::fs::rename(&blob, &part).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&part)
        .unwrap()
        .set_len(4999)
        .unwrap();
    let store = open(dir.path(), &clock).await;
    assert!(matches!(store.info("s").await, Err(StoreError::NotFound)));
    assert_eq!(stored_files(dir.path()), 1);
}

/// A write left running by a cancelled `append` keeps the upload claimed until it lands, so a
/// resumed writer starts after its bytes instead of writing the same offsets and then being
/// overwritten by it (the stored bytes would no longer match the hash the relay reports).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_appends_write_keeps_the_upload_claimed_until_it_lands() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let store = open(dir.path(), &clock).await;
    let piece = 128u64 << 20;
    store.create(new("c", 2 * piece, T0 + 100)).await.unwrap();
    let mut w = store.writer("c").await.unwrap();
    // Polled once (its blocking write of 128 MiB starts), then dropped: the client went away.
    let cancelled = tokio::time::timeout(
        std::time::Duration::ZERO,
        w.append(vec![Bytes::from(data(piece as usize))]),
    )
    .await;
    assert!(
        cancelled.is_err(),
        "a 128 MiB append cannot finish at its first poll"
    );
    drop(w);
    assert!(matches!(store.writer("c").await, Err(StoreError::Busy)));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let w = loop {
        match store.writer("c").await {
            Ok(w) => break w,
            Err(StoreError::Busy) if std::time::Instant::now() < deadline => {
                tokio::task::yield_now().await
            }
            Err(e) => panic!("the claim was not released once the write landed: {e}"),
        }
    };
    assert_eq!(w.offset(), piece);
}
