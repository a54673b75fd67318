//! The blob store: a handle over the index, the files of `blobs/` and the live uploads.
//!
//! One concern per module: [`config`] (limits, public data types), [`index`] (all SQL),
//! [`live`] (state of uploads in progress), [`writer`] and [`sink`] (storing), [`reader`]
//! (reading and counting downloads), [`commit`] (the group commit of completions), [`sweep`]
//! and [`lapse`] (removals and tombstones), [`recovery`] (after a crash). The libc calls are in
//! `crate::disk`.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::{disk, valid_id, GoneReason, Result, StoreError};

mod commit;
mod config;
mod dir_lock;
mod direct;
mod index;
mod lapse;
mod layout;
mod live;
mod pace;
mod reader;
mod recovery;
mod sink;
mod sweep;
#[cfg(test)]
mod tests;
mod writer;

pub use config::{
    BlobInfo, NewBlob, StoreConfig, StoreStats, SweepReport, DEFAULT_DIRECT_WRITE_MIN,
    TOMBSTONE_MAX, TOMBSTONE_MIN_AGE, TOMBSTONE_RETENTION,
};
pub use layout::{blob_file, shard_of, SHARDS};
pub use live::Following;
pub use reader::BlobReader;
pub use sink::{BlobSink, SharedBudget};
pub use writer::{BlobWriter, Hashing};

use commit::CommitQueue;
use index::{unsigned, Admission, Index};
use layout::Layout;
use live::{LiveUploads, Phase};

/// How long a one-shot removal waits for the upload it was following to be committed.
const DOWNLOADED_WAIT: Duration = Duration::from_secs(60);

struct Inner {
    layout: Layout,
    index: Index,
    config: StoreConfig,
    live: LiveUploads,
    /// Completions waiting for their group commit (directory fsync + index update).
    commits: Mutex<CommitQueue>,
    /// The data directory's lock, held by a serving store ([`BlobStore::open`]) until it is
    /// closed or dropped.
    dir_lock: Mutex<Option<std::fs::File>>,
    /// Stored bytes read back to hash a resumed upload (see [`StoreStats::rehashed_bytes`]).
    rehashed: std::sync::atomic::AtomicU64,
}

/// A temporary blob store. Cheap to clone.
#[derive(Clone)]
pub struct BlobStore {
    inner: Arc<Inner>,
}

impl BlobStore {
    /// Open (creating if needed) the store in `dir` and run crash recovery: orphan files are
    /// removed and the index is reconciled with the files. Use this in the serving process.
    pub async fn open(dir: impl AsRef<Path>, config: StoreConfig) -> Result<BlobStore> {
        let dir = dir.as_ref().to_path_buf();
        let store = Self::open_without_recovery(&dir, config).await?;
        // Before recovery: a second serving process must not touch the files of a live one.
        let lock = tokio::task::spawn_blocking(move || dir_lock::lock(&dir))
            .await
            .map_err(io::Error::other)??;
        *store
            .inner
            .dir_lock
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(lock);
        store.recover().await?;
        Ok(store)
    }

    /// Open the store without recovery: safe while another process serves from the same
    /// directory (used by `msim-relay sweep`).
    pub async fn open_without_recovery(
        dir: impl AsRef<Path>,
        config: StoreConfig,
    ) -> Result<BlobStore> {
        let dir = dir.as_ref().to_path_buf();
        let blobs_dir = dir.join("blobs");
        let index = dir.join("index.sqlite");
        let layout = Layout::new(blobs_dir.clone());
        {
            let (layout, index) = (layout.clone(), index.clone());
            tokio::task::spawn_blocking(move || {
                disk::private_layout(&dir, &blobs_dir, &index)?;
                layout.create_shards()
            })
            .await
            .map_err(io::Error::other)??;
        }
        let index = Index::open(&index).await?;
        Ok(BlobStore {
            inner: Arc::new(Inner {
                layout,
                index,
                config,
                live: LiveUploads::default(),
                commits: Mutex::new(CommitQueue::default()),
                dir_lock: Mutex::new(None),
                rehashed: Default::default(),
            }),
        })
    }

    /// Current time from the store's clock.
    pub fn now(&self) -> u64 {
        self.inner.config.clock.now()
    }

    fn part_path(&self, id: &str) -> PathBuf {
        self.inner.layout.part_path(id)
    }
    fn blob_path(&self, id: &str) -> PathBuf {
        self.inner.layout.blob_path(id)
    }
    /// Whether an upload of `size` bytes writes with `O_DIRECT` (see
    /// [`StoreConfig::direct_write_min`]).
    fn writes_direct(&self, size: u64) -> bool {
        let min = self.inner.config.direct_write_min;
        min > 0 && size >= min
    }

    /// The index row of an unexpired blob, and when it last made progress.
    async fn live_row(&self, id: &str) -> Result<(BlobInfo, u64)> {
        if !valid_id(id) {
            return Err(StoreError::InvalidId);
        }
        let Some(row) = self.inner.index.blob(id).await? else {
            return Err(self.missing(id).await);
        };
        if unsigned(row.expires) <= self.now() {
            // Not swept yet, but gone all the same.
            return Err(StoreError::Gone(GoneReason::Expired));
        }
        let complete = row.complete();
        let size = unsigned(row.size);
        let info = BlobInfo {
            id: row.id,
            size,
            committed: if complete { size } else { 0 },
            complete,
            expires: unsigned(row.expires),
            sender: row.sender,
            sha256: row.sha256,
            downloads: u32::try_from(row.downloads).unwrap_or(u32::MAX),
        };
        Ok((info, unsigned(row.last_progress)))
    }

    /// Why `id` has no index row: [`StoreError::Gone`] if a tombstone remembers it, else
    /// [`StoreError::NotFound`] (never existed, or its tombstone was swept).
    async fn missing(&self, id: &str) -> StoreError {
        match self.tombstone(id).await {
            Ok(Some(reason)) => StoreError::Gone(reason),
            Ok(None) => StoreError::NotFound,
            Err(e) => e,
        }
    }

    /// The tombstone of a removed transfer: why it was removed.
    pub async fn tombstone(&self, id: &str) -> Result<Option<GoneReason>> {
        self.inner.index.tombstone(id).await
    }

    /// Look up a blob. Expired blobs and removed ones with a tombstone are reported as
    /// [`StoreError::Gone`], unknown ones as [`StoreError::NotFound`].
    pub async fn info(&self, id: &str) -> Result<BlobInfo> {
        let (mut info, _) = self.live_row(id).await?;
        if !info.complete {
            info.committed = if let Some(live) = self.live_get(&info.id) {
                live.tx.borrow().written
            } else {
                match tokio::fs::metadata(self.part_path(&info.id)).await {
                    Ok(m) => m.len().min(info.size),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        // Completed since its row was read (its live entry ended and the file
                        // was renamed): that is no missing upload. Seen as a waiting download
                        // answered 404 once its upload had completed under it.
                        let (again, _) = self.live_row(id).await?;
                        if again.complete {
                            return Ok(again);
                        }
                        return Err(StoreError::NotFound);
                    }
                    Err(e) => return Err(e.into()),
                }
            };
        }
        Ok(info)
    }

    /// Insert the index row of a new blob if the admission checks pass.
    async fn insert(&self, new: &NewBlob) -> Result<()> {
        if !valid_id(&new.id) {
            return Err(StoreError::InvalidId);
        }
        let cfg = &self.inner.config;
        let mut avail = disk::available_bytes(self.inner.layout.blobs_dir())?;
        let mut attempts = 0;
        let mut lapsed = false;
        loop {
            let limits = Admission {
                capacity: cfg.capacity_bytes,
                min_free: cfg.min_free_bytes,
                available: avail,
                per_sender_quota: cfg.per_sender_quota_bytes,
            };
            let index = &self.inner.index;
            let inserted = index.insert_if_admitted(new, self.now(), &limits).await?;
            if inserted {
                break;
            }
            // Refused: say why, checking in the documented order.
            if let Some(reason) = self.tombstone(&new.id).await? {
                // A transfer id is never reused.
                return Err(StoreError::Gone(reason));
            }
            let occupancy = index.occupancy(&new.id, &new.sender).await?;
            if occupancy.id_taken {
                return Err(StoreError::AlreadyExists);
            }
            // Conservative: in-progress uploads may still need their whole declared size.
            let need = unsigned(occupancy.partial)
                .saturating_add(new.size)
                .saturating_add(cfg.min_free_bytes);
            let refusal = if unsigned(occupancy.total).saturating_add(new.size) > cfg.capacity_bytes
            {
                Some(StoreError::CapacityExceeded)
            } else if avail < need {
                Some(StoreError::LowDisk)
            } else if unsigned(occupancy.by_sender.unwrap_or(0)).saturating_add(new.size)
                > cfg.per_sender_quota_bytes
            {
                Some(StoreError::QuotaExceeded)
            } else {
                None
            };
            if let Some(refusal) = refusal {
                // Idle reservations give way to a real upload (once per request).
                if !lapsed && self.lapse_idle_reservations().await? > 0 {
                    lapsed = true;
                    avail = disk::available_bytes(self.inner.layout.blobs_dir())?;
                    continue;
                }
                return Err(refusal);
            }
            // The totals changed in between (an upload finished or was removed): try again.
            attempts += 1;
            if attempts >= 3 {
                return Err(StoreError::Busy);
            }
        }
        Ok(())
    }

    /// Delete the index row of `id` (returning whether it was complete, if it was there),
    /// leaving a tombstone with `reason` in the same transaction when given and the row existed.
    async fn delete_row(&self, id: &str, reason: Option<GoneReason>) -> Result<Option<bool>> {
        self.inner.index.delete(id, reason, self.now(), false).await
    }

    /// Cancel a transfer: readers and the writer get [`StoreError::Cancelled`], storage is
    /// freed, a tombstone remembers it. Returns whether it existed; a transfer removed
    /// earlier whose tombstone is still kept is [`StoreError::Gone`].
    pub async fn cancel(&self, id: &str) -> Result<bool> {
        if !valid_id(id) {
            return Err(StoreError::InvalidId);
        }
        let existed = self
            .delete_row(id, Some(GoneReason::Cancelled))
            .await?
            .is_some();
        self.live_end(id, Phase::Cancelled);
        self.remove_files(id).await?;
        if !existed {
            if let Some(reason) = self.tombstone(id).await? {
                return Err(StoreError::Gone(reason));
            }
        }
        Ok(existed)
    }

    /// Remove a complete blob after the last download its token allowed has completed, leaving
    /// a [`GoneReason::Downloaded`] tombstone. If the upload that download followed is still
    /// being committed, waits (bounded) for it first; a blob that is not complete then stays
    /// (until its TTL). Returns whether it was removed.
    pub async fn remove_downloaded(&self, id: &str) -> Result<bool> {
        if !valid_id(id) {
            return Err(StoreError::InvalidId);
        }
        self.settle(id).await;
        let removed = self
            .inner
            .index
            .delete(id, Some(GoneReason::Downloaded), self.now(), true)
            .await?
            .is_some();
        if removed {
            self.live_end(id, Phase::Gone);
            self.remove_files(id).await?;
        }
        Ok(removed)
    }

    /// Record that a download handed out bytes `start..end` of a blob of `size` bytes. Once
    /// the downloads have handed out every byte from the first one on (a resumed download
    /// continues where an earlier one stopped), the blob is delivered: it no longer counts
    /// against its sender's quota (it still counts against capacity and stays downloadable
    /// until it is removed). A range that starts after what was served so far counts for
    /// nothing, so asking for the last byte alone delivers nothing. The blob must be complete,
    /// or be an upload of `size` bytes in this process whose bytes up to `end` are written (a
    /// download that followed it ends before its commit; it is not waited for). Returns whether
    /// it became delivered.
    pub async fn record_served(&self, id: &str, start: u64, end: u64, size: u64) -> Result<bool> {
        if !valid_id(id) {
            return Err(StoreError::InvalidId);
        }
        let all_written = self.live_get(id).is_some_and(|live| {
            let p = *live.tx.borrow();
            matches!(p.phase, Phase::Writing | Phase::Complete) && p.written >= end.min(size)
        });
        self.inner
            .index
            .record_served(id, start, end, all_written)
            .await
    }

    /// Wait (bounded) until the upload of `id`, if one is live in this process, is no longer
    /// being written (committed, idle or removed).
    async fn settle(&self, id: &str) {
        if let Some(live) = self.live_get(id) {
            let mut rx = live.tx.subscribe();
            drop(live);
            let settled = rx.wait_for(|p| !matches!(p.phase, Phase::Writing));
            // A timeout or a closed channel: the index decides.
            let _ = tokio::time::timeout(DOWNLOADED_WAIT, settled).await;
        }
    }

    /// Remove the data files of `id` (also where a store from before the shards kept them);
    /// returns their bytes.
    async fn remove_files(&self, id: &str) -> Result<u64> {
        let [old_part, old_blob] = self.inner.layout.legacy_paths(id);
        let paths = [self.part_path(id), self.blob_path(id), old_part, old_blob];
        let n = tokio::task::spawn_blocking(move || -> io::Result<u64> {
            let mut bytes = 0;
            for p in paths {
                match std::fs::metadata(&p) {
                    Ok(m) => {
                        bytes += m.len();
                        match std::fs::remove_file(&p) {
                            Ok(()) => {}
                            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                            Err(e) => return Err(e),
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(bytes)
        })
        .await
        .map_err(io::Error::other)??;
        Ok(n)
    }

    /// Totals from the index, and this process's count of bytes read back for hashing.
    pub async fn stats(&self) -> Result<StoreStats> {
        let mut stats = self.inner.index.stats().await?;
        stats.rehashed_bytes = self
            .inner
            .rehashed
            .load(std::sync::atomic::Ordering::Relaxed);
        Ok(stats)
    }

    /// Close the index database.
    pub async fn close(&self) {
        self.inner.index.close().await;
        // Another relay may serve from the directory now.
        self.inner
            .dir_lock
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
    }
}
