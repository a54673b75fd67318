//! Followers of an upload and its SHA-256 check: the file's last byte is handed to a reader
//! only once the whole file is written and matches the declared SHA-256, so a download that
//! follows an upload failing its check never ends as if it were whole (PROTOCOL.md §11.5).

use crate::store_support;

use std::sync::Arc;

use bytes::Bytes;
use msim_storage::{GoneReason, ManualClock, StoreError};

use store_support::*;

/// Reads from `r` until it has `n` bytes or the blob's end.
async fn read_n(r: &mut msim_storage::BlobReader, n: usize) -> Vec<u8> {
    let mut got = Vec::new();
    while got.len() < n {
        match r.next_chunk(1 << 20).await.unwrap() {
            Some(c) => got.extend_from_slice(&c),
            None => break,
        }
    }
    got
}

#[tokio::test]
async fn a_follower_never_gets_the_last_byte_of_an_upload_that_fails_its_check() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let store = open(dir.path(), &clock).await;
    let declared = data(200_000);
    let mut sent = declared.clone();
    sent[150_000] ^= 1;
    let mut nb = new("m", declared.len() as u64, T0 + 100);
    nb.sha256 = Some(hex(&declared));
    let mut w = store.create_writer(nb).await.unwrap();
    let mut r = store.reader("m", 0, sent.len() as u64).await.unwrap();
    // Every byte is stored, but not yet checked: the reader stops one byte short.
    w.append(vec![Bytes::from(sent.clone())]).await.unwrap();
    let got = read_n(&mut r, sent.len() - 1).await;
    assert!(
        got == sent[..sent.len() - 1],
        "the follower got {} of {} bytes",
        got.len(),
        sent.len()
    );
    // The last byte is not handed over before the check.
    let waiter = tokio::spawn(async move { r.next_chunk(1 << 20).await });
    assert!(matches!(
        w.finish().await,
        Err(StoreError::ShaMismatch { .. })
    ));
    // The check failed: the download is aborted instead of completed.
    assert!(matches!(waiter.await.unwrap(), Err(StoreError::Expired)));
    assert!(matches!(
        store.info("m").await,
        Err(StoreError::Gone(GoneReason::Discarded))
    ));
}

#[tokio::test]
async fn a_follower_gets_a_small_checked_upload_whole() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let store = open(dir.path(), &clock).await;
    let body = data(200_000);
    let mut nb = new("p", body.len() as u64, T0 + 100);
    nb.sha256 = Some(hex(&body));
    let w = store.create_writer(nb).await.unwrap();
    let mut r = store.reader("p", 0, body.len() as u64).await.unwrap();
    let follower = tokio::spawn(async move { read_n(&mut r, usize::MAX).await });
    // The way a small upload completes: its buffers are written, checked and committed in
    // one step.
    let bufs = body.chunks(65_536).map(Bytes::copy_from_slice).collect();
    assert_eq!(w.finish_with(bufs).await.unwrap(), Some(hex(&body)));
    assert_eq!(follower.await.unwrap(), body);
    assert_eq!(read_all(&store, "p").await, body);
}

/// A small upload completes in one step (write, hash, check): its follower takes all but the
/// last byte from the written buffers while the hash is computed, and is aborted, never
/// completed, when the check fails.
#[tokio::test]
async fn a_small_upload_that_fails_its_check_streams_all_but_its_last_byte_then_aborts() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let store = open(dir.path(), &clock).await;
    let declared = data(100_000);
    let mut nb = new("q", declared.len() as u64, T0 + 100);
    nb.sha256 = Some(hex(&declared));
    let w = store.create_writer(nb).await.unwrap();
    let mut r = store.reader("q", 0, declared.len() as u64).await.unwrap();
    let follower = tokio::spawn(async move {
        let mut got = Vec::new();
        loop {
            match r.next_chunk(1 << 20).await {
                Ok(Some(c)) => got.extend_from_slice(&c),
                Ok(None) => return (got, None),
                Err(e) => return (got, Some(e)),
            }
        }
    });
    let mut sent = declared.clone();
    sent[0] ^= 1;
    assert!(matches!(
        w.finish_with(vec![Bytes::from(sent.clone())]).await,
        Err(StoreError::ShaMismatch { .. })
    ));
    let (got, end) = follower.await.unwrap();
    // The bytes were handed over before the check (a single-threaded runtime runs the woken
    // follower before the writer's task resumes) ...
    assert!(
        got == sent[..sent.len() - 1],
        "the follower got {} of {} bytes",
        got.len(),
        sent.len()
    );
    // ... but never the last one: the download is aborted instead of completed.
    assert!(matches!(end, Some(StoreError::Expired)), "{end:?}");
}
