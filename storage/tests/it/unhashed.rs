//! Writers that do not hash (`Hashing::OnlyToCheck`): a blob without a declared SHA-256 is
//! stored and served whole without one; a declared SHA-256 is still checked.

use crate::store_support;

use std::sync::Arc;

use bytes::Bytes;
use msim_storage::{Hashing, ManualClock, StoreError};

use store_support::*;

#[tokio::test]
async fn an_undeclared_blob_completes_without_a_sha256_also_when_resumed() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let store = open(dir.path(), &clock).await;
    let body = data(600_000);
    let size = body.len() as u64;
    let mut w = store
        .create_writer_hashing(new("u", size, T0 + 100), Hashing::OnlyToCheck)
        .await
        .unwrap();
    w.append(vec![Bytes::copy_from_slice(&body[..250_000])])
        .await
        .unwrap();
    drop(w);
    let mut w = store
        .writer_hashing("u", Hashing::OnlyToCheck)
        .await
        .unwrap();
    assert_eq!(w.offset(), 250_000);
    w.append(vec![Bytes::copy_from_slice(&body[250_000..500_000])])
        .await
        .unwrap();
    let sha = w
        .finish_with(vec![Bytes::copy_from_slice(&body[500_000..])])
        .await
        .unwrap();
    assert_eq!(sha, None);
    let info = store.info("u").await.unwrap();
    assert!(info.complete);
    assert_eq!(info.sha256, None);
    assert_eq!(read_all(&store, "u").await, body);
}

#[tokio::test]
async fn a_hashing_resume_of_an_unhashed_prefix_hashes_the_whole_file() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let store = open(dir.path(), &clock).await;
    let body = data(300_000);
    let mut w = store
        .create_writer_hashing(new("m", body.len() as u64, T0 + 100), Hashing::OnlyToCheck)
        .await
        .unwrap();
    w.append(vec![Bytes::copy_from_slice(&body[..100_000])])
        .await
        .unwrap();
    drop(w);
    let w = store.writer("m").await.unwrap();
    let sha = w
        .finish_with(vec![Bytes::copy_from_slice(&body[100_000..])])
        .await
        .unwrap();
    assert_eq!(sha, Some(hex(&body)));
    assert_eq!(store.info("m").await.unwrap().sha256, Some(hex(&body)));
}

#[tokio::test]
async fn a_declared_sha256_is_checked_by_a_writer_asked_not_to_hash() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let store = open(dir.path(), &clock).await;
    let body = data(400_000);
    let mut declared = new("d", body.len() as u64, T0 + 100);
    declared.sha256 = Some(hex(b"something else"));
    let mut w = store
        .create_writer_hashing(declared, Hashing::OnlyToCheck)
        .await
        .unwrap();
    w.append(vec![Bytes::copy_from_slice(&body[..200_000])])
        .await
        .unwrap();
    drop(w);
    let w = store
        .writer_hashing("d", Hashing::OnlyToCheck)
        .await
        .unwrap();
    let res = w
        .finish_with(vec![Bytes::copy_from_slice(&body[200_000..])])
        .await;
    assert!(
        matches!(res, Err(StoreError::ShaMismatch { ref actual, .. }) if *actual == hex(&body)),
        "{res:?}"
    );
    assert!(store.info("d").await.is_err());
}
