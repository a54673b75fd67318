//! Limits and the public data types of a store.

use std::sync::Arc;
use std::time::Duration;

use msim_shared::clock::{Clock, SystemClock};

/// How long a removed transfer's tombstone is kept: a request for it within this time is
/// answered "gone" (with the reason) at once. Seven days: longer than any token lifetime
/// msim-chat issues (24 h), so a token never outlives the tombstone of its transfer.
pub const TOMBSTONE_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// Most tombstones kept (a row each, about 100 bytes with its index): beyond it a sweep
/// removes the oldest first — but never one younger than [`TOMBSTONE_MIN_AGE`].
pub const TOMBSTONE_MAX: u64 = 200_000;
/// Tombstones younger than this are kept even beyond [`TOMBSTONE_MAX`]: a token may still be
/// valid for their transfer (msim-chat's tokens live 24 h), and without its tombstone the id
/// could be uploaded again — a second upload that a one-shot download token would accept.
pub const TOMBSTONE_MIN_AGE: Duration = Duration::from_secs(2 * 24 * 3600);

/// Limits and policies of a store.
#[derive(Clone)]
pub struct StoreConfig {
    /// Total declared bytes the store may hold (complete + in progress).
    pub capacity_bytes: u64,
    /// Free space the file system must keep after admitting an upload (watermark).
    pub min_free_bytes: u64,
    /// Declared bytes one sender may hold at once.
    pub per_sender_quota_bytes: u64,
    /// A partial upload with no progress for this long is removed by a sweep.
    pub abandon_after: Duration,
    /// A partial upload with no progress for this long is removed when an upload is refused
    /// for capacity, free disk or quota, and the upload is tried again: an idle reservation
    /// cannot keep real uploads out, yet stays resumable while nobody needs its room.
    /// Progress is counted in steps: this share of the bytes still to come at the pace that
    /// completes the upload before it expires.
    pub reservation_idle: Duration,
    /// Uploads of at least this many bytes write their whole blocks with `O_DIRECT` (no copy
    /// into the page cache) where the file system allows it; 0 turns it off. Smaller uploads
    /// stay in the page cache, where their downloads read them without the disk.
    pub direct_write_min: u64,
    /// Clock for expiry and progress times.
    pub clock: Arc<dyn Clock>,
}

/// Default of [`StoreConfig::direct_write_min`].
pub const DEFAULT_DIRECT_WRITE_MIN: u64 = 8 << 20;

impl std::fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreConfig")
            .field("capacity_bytes", &self.capacity_bytes)
            .field("min_free_bytes", &self.min_free_bytes)
            .field("per_sender_quota_bytes", &self.per_sender_quota_bytes)
            .field("abandon_after", &self.abandon_after)
            .field("reservation_idle", &self.reservation_idle)
            .field("direct_write_min", &self.direct_write_min)
            .finish_non_exhaustive()
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            capacity_bytes: 10 << 30,
            min_free_bytes: 1 << 30,
            per_sender_quota_bytes: 2 << 30,
            abandon_after: Duration::from_secs(3600),
            reservation_idle: Duration::from_secs(120),
            direct_write_min: DEFAULT_DIRECT_WRITE_MIN,
            clock: Arc::new(SystemClock),
        }
    }
}

/// A blob to create.
#[derive(Debug, Clone)]
pub struct NewBlob {
    /// Id, `[A-Za-z0-9-]{1,64}`.
    pub id: String,
    /// Declared size in bytes.
    pub size: u64,
    /// Expiry, unix seconds.
    pub expires: u64,
    /// Sender address (quota key).
    pub sender: String,
    /// Declared SHA-256 (lowercase hex), checked at completion.
    pub sha256: Option<String>,
}

/// What the index knows about a blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobInfo {
    /// Id.
    pub id: String,
    /// Declared size.
    pub size: u64,
    /// Bytes stored so far (the resume offset of an upload).
    pub committed: u64,
    /// Upload complete.
    pub complete: bool,
    /// Expiry, unix seconds.
    pub expires: u64,
    /// Sender address.
    pub sender: String,
    /// Declared SHA-256, or the computed one once complete.
    pub sha256: Option<String>,
    /// Downloads started so far.
    pub downloads: u32,
}

/// What a sweep removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Blobs removed (expired ones, complete or not, and abandoned partial uploads).
    pub removed_blobs: u64,
    /// Bytes of data files removed.
    pub removed_bytes: u64,
    /// Of `removed_blobs`, partial uploads (expired or abandoned).
    pub removed_partials: u64,
    /// Tombstones removed (older than [`TOMBSTONE_RETENTION`], or beyond [`TOMBSTONE_MAX`]).
    pub removed_tombstones: u64,
    /// Tombstones left after the sweep.
    pub tombstones: u64,
}

/// Totals from the index (and one counter of the serving process).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Blobs in the index.
    pub blobs: u64,
    /// Sum of declared sizes.
    pub declared_bytes: u64,
    /// Complete blobs.
    pub complete_blobs: u64,
    /// Tombstones of removed transfers.
    pub tombstones: u64,
    /// Stored bytes this process read back to hash resumed uploads (an upload resumed where
    /// its last request left off continues that request's hash instead).
    pub rehashed_bytes: u64,
}
