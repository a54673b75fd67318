//! In-memory state of the partial uploads that have a writer or readers in this process.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use sha2::Sha256;
use tokio::sync::watch;

use super::pace::Followers;
use super::BlobStore;

/// Recently written chunks kept in memory per live upload that has readers, so readers that
/// keep up with the writer get the writer's buffers without reading the file (zero-copy).
/// The last chunk stored is always kept (the writer's caller held it anyway).
const RECENT_BYTES: usize = 4 << 20;
/// Bound on [`RECENT_BYTES`] windows of all uploads together: beyond it, windows keep only
/// their last chunk.
const RECENT_BYTES_TOTAL: usize = 16 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// A writer is appending.
    Writing,
    /// No writer connected; the upload may resume.
    Idle,
    /// All bytes stored.
    Complete,
    /// Cancelled.
    Cancelled,
    /// Expired, abandoned or discarded.
    Gone,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Progress {
    pub written: u64,
    pub phase: Phase,
    /// Every byte is written and the SHA-256 is checked (the declared one matched): readers
    /// that follow the upload may take its last byte. Until then they stop one byte short,
    /// so a download following an upload that fails its check never ends as if it were whole.
    pub verified: bool,
}

/// In-memory state of a partial upload that has a writer or readers in this process.
pub(super) struct LiveUpload {
    pub tx: watch::Sender<Progress>,
    pub writer_active: AtomicBool,
    /// The most recently stored chunks (only kept while readers follow the upload).
    recent: Mutex<RecentChunks>,
    /// The SHA-256 state of the stored bytes when the last hashing writer went away, and how
    /// many bytes it covers: a writer resuming at that offset continues it instead of reading
    /// the stored prefix back (each empty `PATCH` made the relay hash the whole prefix).
    resume_hash: Mutex<Option<(u64, Sha256)>>,
    /// The offset at the upload's last recorded progress (`u64::MAX`: none in this process).
    marked: AtomicU64,
    /// The readers following the upload, for the writer's pacing.
    pub followers: Followers,
}

/// A window of the most recently stored bytes of an upload, as the writer's own buffers.
pub(super) struct RecentChunks {
    /// Offset of the first byte of `chunks`.
    start: u64,
    chunks: VecDeque<Bytes>,
    bytes: usize,
    /// Bytes held by all windows of the store.
    total: Arc<AtomicUsize>,
}

impl Drop for RecentChunks {
    fn drop(&mut self) {
        self.clear();
    }
}

impl RecentChunks {
    fn end(&self) -> u64 {
        self.start + self.bytes as u64
    }

    /// Offset of the first byte held, if any (a follower before it reads the file).
    pub fn held_from(&self) -> Option<u64> {
        (!self.chunks.is_empty()).then_some(self.start)
    }

    fn new(total: Arc<AtomicUsize>) -> RecentChunks {
        RecentChunks {
            start: 0,
            chunks: VecDeque::new(),
            bytes: 0,
            total,
        }
    }

    pub fn clear(&mut self) {
        self.chunks.clear();
        self.total.fetch_sub(self.bytes, Ordering::Relaxed);
        self.bytes = 0;
    }

    /// Record `bufs`, stored at `offset`; keeps at most [`RECENT_BYTES`], but always the last
    /// chunk (it is in memory anyway until the writer's caller lets go of it).
    pub fn push(&mut self, offset: u64, bufs: &[Bytes]) {
        if self.chunks.is_empty() || self.end() != offset {
            self.clear();
            self.start = offset;
        }
        for b in bufs.iter().filter(|b| !b.is_empty()) {
            self.chunks.push_back(b.clone());
            self.bytes += b.len();
            self.total.fetch_add(b.len(), Ordering::Relaxed);
        }
        while self.chunks.len() > 1
            && (self.bytes > RECENT_BYTES
                || self.total.load(Ordering::Relaxed) > RECENT_BYTES_TOTAL)
        {
            let Some(b) = self.chunks.pop_front() else {
                break;
            };
            self.bytes -= b.len();
            self.total.fetch_sub(b.len(), Ordering::Relaxed);
            self.start += b.len() as u64;
        }
    }

    /// Up to `max` bytes at `pos` (not past `end`), without copying, if still held.
    pub fn get(&self, pos: u64, end: u64, max: usize) -> Option<Bytes> {
        if pos < self.start || pos >= self.end() || pos >= end {
            return None;
        }
        let mut at = self.start;
        for c in &self.chunks {
            let c_end = at + c.len() as u64;
            if pos < c_end {
                let from = usize::try_from(pos - at).ok()?;
                let want = (c_end.min(end) - pos).min(max as u64);
                let want = usize::try_from(want).ok()?;
                return Some(c.slice(from..from + want));
            }
            at = c_end;
        }
        None
    }
}

impl LiveUpload {
    pub fn recent(&self) -> std::sync::MutexGuard<'_, RecentChunks> {
        self.recent.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn resume_hash(&self) -> std::sync::MutexGuard<'_, Option<(u64, Sha256)>> {
        self.resume_hash.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The offset at the last recorded progress, or `offset` (a writer's start) if none is
    /// known.
    pub fn marked(&self, offset: u64) -> u64 {
        let marked = self.marked.load(Ordering::Relaxed);
        if marked > offset {
            self.mark(offset);
            return offset;
        }
        marked
    }

    /// Progress was recorded with `offset` bytes stored.
    pub fn mark(&self, offset: u64) {
        self.marked.store(offset, Ordering::Relaxed);
    }

    /// Keep `hasher`, the hash of the first `offset` stored bytes, for the next writer.
    pub fn save_hash(&self, offset: u64, hasher: Sha256) {
        *self.resume_hash() = Some((offset, hasher));
    }

    /// The saved hash state if it covers exactly the first `offset` bytes (taken: one writer
    /// at a time continues it; one for another offset is dropped).
    pub fn take_hash(&self, offset: u64) -> Option<Sha256> {
        // Offsets only grow: a state for another offset is stale.
        match self.resume_hash().take() {
            Some((at, hasher)) if at == offset => Some(hasher),
            _ => None,
        }
    }
}

/// The live uploads of a store, by id. A std mutex: held only for map lookups, never across
/// an await.
#[derive(Default)]
pub(super) struct LiveUploads {
    map: Mutex<HashMap<String, Arc<LiveUpload>>>,
    /// Bytes held by the recent-chunk windows of all live uploads.
    recent_total: Arc<AtomicUsize>,
}

impl LiveUploads {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<LiveUpload>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Taken by a download before it counts itself: while it is held, the upload it is about to
/// follow (if one is in progress here) keeps what it stores in memory, so the reader the
/// download opens next takes the writer's buffers instead of reading the file.
pub struct Following {
    _rx: Option<watch::Receiver<Progress>>,
}

impl BlobStore {
    /// See [`Following`]; holds nothing when `id` has no upload in progress here.
    pub fn follow(&self, id: &str) -> Following {
        Following {
            _rx: self.live_get(id).map(|l| l.tx.subscribe()),
        }
    }

    pub(super) fn live_get(&self, id: &str) -> Option<Arc<LiveUpload>> {
        self.inner.live.map().get(id).cloned()
    }

    pub(super) fn live_get_or_insert(
        &self,
        id: &str,
        written: impl FnOnce() -> u64,
    ) -> Arc<LiveUpload> {
        let live = &self.inner.live;
        live.map()
            .entry(id.to_owned())
            .or_insert_with(|| {
                Arc::new(LiveUpload {
                    tx: watch::channel(Progress {
                        written: written(),
                        phase: Phase::Idle,
                        verified: false,
                    })
                    .0,
                    writer_active: AtomicBool::new(false),
                    recent: Mutex::new(RecentChunks::new(live.recent_total.clone())),
                    resume_hash: Mutex::new(None),
                    marked: AtomicU64::new(u64::MAX),
                    followers: Followers::default(),
                })
            })
            .clone()
    }

    /// End a live entry: readers and writer see `phase`.
    pub(super) fn live_end(&self, id: &str, phase: Phase) {
        let live = self.inner.live.map().remove(id);
        if let Some(live) = live {
            live.recent().clear();
            live.tx.send_modify(|p| p.phase = phase);
        }
    }
}
