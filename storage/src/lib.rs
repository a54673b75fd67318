//! Temporary blob storage with a TTL for the mSIM relay.
//!
//! Layout of a store directory:
//!
//! - `index.sqlite` — the index (SQLite, WAL): one row per blob with its declared size, sender,
//!   optional SHA-256, expiry and state; indexed on expiry so a sweep costs O(expired).
//! - `blobs/<shard>/<id>.part` — an upload in progress (or interrupted, resumable); `<shard>` is
//!   one of 16 subdirectories, `00`–`0f`, chosen by a hash of the id ([`shard_of`]).
//! - `blobs/<shard>/<id>.blob` — a complete upload: the `.part` file is fsync'd, renamed and the
//!   directory fsync'd before the index says "complete", so a blob presented as complete always
//!   is. Files of a store from before the shards (directly in `blobs/`) are moved into their
//!   shards when the relay opens the store.
//!
//! - tombstones — one index row per removed transfer (id, why, when), so a request for it is
//!   answered "gone" at once and its id is never reused; swept after [`TOMBSTONE_RETENTION`],
//!   at most [`TOMBSTONE_MAX`] kept.
//!
//! A reader may start before the upload is complete: it follows the writer, waking on new bytes,
//! and fails if the upload is cancelled, swept or expires. A sweep may run from another process
//! (`msim-relay sweep` from cron) while the relay serves; the index is the source of truth and
//! every new request consults it.
#![warn(missing_docs, clippy::unwrap_used)]

mod disk;
mod error;
mod store;

pub use error::{GoneReason, StoreError};
/// The clock the store reads (it lives in msim-shared: token checks use it too).
pub use msim_shared::clock::{Clock, ManualClock, SystemClock};
/// `true` when `id` is a valid blob id (`[A-Za-z0-9-]{1,64}`, a transfer id), so it is safe
/// in a file name.
pub use msim_shared::token::valid_transfer_id as valid_id;
pub use store::{
    blob_file, shard_of, BlobInfo, BlobReader, BlobSink, BlobStore, BlobWriter, Following, Hashing,
    NewBlob, SharedBudget, StoreConfig, StoreStats, SweepReport, DEFAULT_DIRECT_WRITE_MIN, SHARDS,
    TOMBSTONE_MAX, TOMBSTONE_MIN_AGE, TOMBSTONE_RETENTION,
};

/// Result alias for this crate.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
