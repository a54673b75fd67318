//! Uploads written with `O_DIRECT` (`StoreConfig::direct_write_min`): sizes and batches that
//! are not multiples of the block size, a resume at an odd offset, readers of the file while it
//! is written, a reopened store; on the test directory's file system and on tmpfs.

use crate::store_support;

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use msim_storage::{BlobStore, ManualClock, StoreConfig};

use store_support::*;

/// Every upload of at least one byte is written direct.
fn direct_config(clock: &Arc<ManualClock>) -> StoreConfig {
    StoreConfig {
        direct_write_min: 1,
        ..config(clock)
    }
}

async fn read_range(store: &BlobStore, id: &str, start: u64, end: u64) -> Vec<u8> {
    let mut r = store.reader(id, start, end).await.unwrap();
    let mut out = Vec::new();
    while out.len() < (end - start) as usize {
        let c = r
            .next_chunk(1 << 16)
            .await
            .unwrap()
            .expect("bytes before the end");
        out.extend_from_slice(&c);
    }
    out
}

async fn odd_batches_resume_and_reopen(dir: &Path) {
    let clock = Arc::new(ManualClock::new(T0));
    let body = data((3 << 20) + 12_345);
    let size = body.len() as u64;
    let store = BlobStore::open(dir, direct_config(&clock)).await.unwrap();
    let mut w = store.create_writer(new("d", size, T0 + 100)).await.unwrap();
    // Batches smaller than a block, crossing blocks, larger than a staging buffer, in
    // several buffers each; a reader that starts later reads the file (no buffers kept for
    // it), and sees every acknowledged byte.
    let mut at = 0usize;
    for len in [1, 4095, 100_003, (1 << 20) + 7, 333] {
        let piece = &body[at..at + len];
        let third = len / 3;
        w.append(vec![
            Bytes::copy_from_slice(&piece[..third]),
            Bytes::copy_from_slice(&piece[third..]),
        ])
        .await
        .unwrap();
        at += len;
        assert_eq!(w.offset(), at as u64);
        assert_eq!(read_range(&store, "d", 0, at as u64).await, body[..at]);
    }
    // The writer goes away at an odd offset; the upload resumes there.
    drop(w);
    assert_ne!(at % 4096, 0);
    let mut w = store.writer("d").await.unwrap();
    assert_eq!(w.offset(), at as u64);
    // A follower from the middle, woken as the resumed writer appends.
    let mut follower = store.reader("d", at as u64 - 10, size).await.unwrap();
    let follow = tokio::spawn(async move {
        let mut got = Vec::new();
        while let Some(c) = follower.next_chunk(1 << 16).await.unwrap() {
            got.extend_from_slice(&c);
        }
        got
    });
    let rest = &body[at..];
    let split = rest.len() / 2 + 1;
    w.append(vec![Bytes::copy_from_slice(&rest[..split])])
        .await
        .unwrap();
    let sha = w
        .finish_with(vec![Bytes::copy_from_slice(&rest[split..])])
        .await
        .unwrap();
    assert_eq!(sha, Some(hex(&body)));
    assert_eq!(follow.await.unwrap(), body[at - 10..]);
    assert_eq!(read_all(&store, "d").await, body);
    store.close().await;
    // Reopened (recovery runs): served intact, also a Range in the middle.
    let store = BlobStore::open(dir, direct_config(&clock)).await.unwrap();
    assert!(store.info("d").await.unwrap().complete);
    assert_eq!(read_all(&store, "d").await, body);
    assert_eq!(
        read_range(&store, "d", 4_000, 1_000_001).await,
        body[4_000..1_000_001]
    );
    store.close().await;
}

#[tokio::test]
async fn direct_uploads_in_odd_batches_resume_at_an_odd_offset_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    odd_batches_resume_and_reopen(dir.path()).await;
}

/// tmpfs: Linux before 6.6 refuses `O_DIRECT` there (the store then writes buffered), later
/// ones accept it; either way every byte is stored.
#[tokio::test]
async fn direct_uploads_on_tmpfs() {
    let shm = Path::new("/dev/shm");
    if !shm.is_dir() {
        eprintln!("no /dev/shm: skipped");
        return;
    }
    let dir = tempfile::tempdir_in(shm).unwrap();
    odd_batches_resume_and_reopen(dir.path()).await;
}

/// A direct upload that fails its SHA-256 check is discarded like a buffered one.
#[tokio::test]
async fn a_direct_upload_with_a_wrong_hash_is_discarded() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let store = BlobStore::open(dir.path(), direct_config(&clock))
        .await
        .unwrap();
    let body = data(70_001);
    let mut blob = new("x", body.len() as u64, T0 + 100);
    blob.sha256 = Some(hex(b"something else"));
    let w = store.create_writer(blob).await.unwrap();
    assert!(w.finish_with(vec![Bytes::from(body)]).await.is_err());
    assert!(store.info("x").await.is_err());
    assert_eq!(stored_files(dir.path()), 0);
}
