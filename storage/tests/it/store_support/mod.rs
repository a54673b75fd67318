//! Shared by the blob store tests: a store on a manual clock, blob and data shorthands.

use std::sync::Arc;
use std::time::Duration;

use msim_storage::{BlobReader, BlobStore, ManualClock, NewBlob, StoreConfig};
use sha2::{Digest, Sha256};

pub const T0: u64 = 1_700_000_000;

pub fn config(clock: &Arc<ManualClock>) -> StoreConfig {
    StoreConfig {
        capacity_bytes: 1 << 30,
        min_free_bytes: 0,
        per_sender_quota_bytes: 1 << 30,
        abandon_after: Duration::from_secs(600),
        reservation_idle: Duration::from_secs(120),
        direct_write_min: msim_storage::DEFAULT_DIRECT_WRITE_MIN,
        clock: clock.clone(),
    }
}

pub async fn open(dir: &std::path::Path, clock: &Arc<ManualClock>) -> BlobStore {
    BlobStore::open(dir, config(clock)).await.expect("open")
}

pub fn new(id: &str, size: u64, expires: u64) -> NewBlob {
    NewBlob {
        id: id.into(),
        size,
        expires,
        sender: "alice@x".into(),
        sha256: None,
    }
}

pub fn hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Shorthands the store does not need: create a blob without writing to it (an upload that
/// stopped at once), and look a blob up and open a reader in one step.
pub trait StoreShorthands {
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

pub fn data(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 31 % 251) as u8).collect()
}

pub async fn read_all(store: &BlobStore, id: &str) -> Vec<u8> {
    let info = store.info(id).await.unwrap();
    let mut r = store.reader(id, 0, info.size).await.unwrap();
    let mut out = Vec::new();
    while let Some(c) = r.next_chunk(1 << 16).await.unwrap() {
        out.extend_from_slice(&c);
    }
    out
}

/// Files under `blobs/` (in the shard subdirectories and, from an older layout, directly in it).
pub fn stored_files(dir: &std::path::Path) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir(dir.join("blobs")).expect("blobs/") {
        let e = e.expect("entry");
        if e.file_type().expect("type").is_dir() {
            n += std::fs::read_dir(e.path()).expect("shard").count();
        } else {
            n += 1;
        }
    }
    n
}
