//! The blob store: index, writers, readers, sweeps.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{self, IoSlice, Read, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use sha2::{Digest, Sha256};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::SqlitePool;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};

use crate::{disk, valid_id, GoneReason, Result, StoreError};

mod lapse;

/// Bytes hashed per step when re-hashing a resumed upload's prefix.
const REHASH_CHUNK: usize = 1 << 20;
/// Rows handled per sweep query.
const SWEEP_BATCH: i64 = 256;
/// How often a waiting reader re-checks the index (for sweeps done by another process).
const READER_RECHECK: Duration = Duration::from_secs(5);
/// Recently written chunks kept in memory per live upload that has readers, so readers that
/// keep up with the writer get the writer's buffers without reading the file (zero-copy).
/// The last chunk stored is always kept (the writer's caller held it anyway).
const RECENT_BYTES: usize = 4 << 20;
/// Bound on [`RECENT_BYTES`] windows of all uploads together: beyond it, windows keep only
/// their last chunk.
const RECENT_BYTES_TOTAL: usize = 16 << 20;
/// Most bytes a [`BlobSink`] worker writes (and hashes) in one step.
const SINK_BATCH_BYTES: usize = 1 << 20;
/// Most buffers a [`BlobSink`] worker writes in one `writev`.
const SINK_BATCH_BUFS: usize = 64;
/// Batches at least this large are hashed and written in parallel (two blocking threads).
const PARALLEL_HASH_MIN: u64 = 128 << 10;
/// Start writeback of stored data every this many bytes, so the fsync at completion has
/// little left to flush (and dirty pages do not pile up).
const WRITEBACK_EVERY: u64 = 8 << 20;
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
/// How long a one-shot removal waits for the upload it was following to be committed.
const DOWNLOADED_WAIT: Duration = Duration::from_secs(60);
/// Most completions committed together (one directory fsync, one index statement).
const COMMIT_GROUP_MAX: usize = 128;

/// Source of "now" in unix seconds (injectable for tests).
pub trait Clock: Send + Sync + 'static {
    /// Current unix time in seconds.
    fn now(&self) -> u64;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }
}

/// A clock set by hand (tests).
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    /// A clock reading `now`.
    pub fn new(now: u64) -> Self {
        ManualClock(AtomicU64::new(now))
    }
    /// Set the time.
    pub fn set(&self, now: u64) {
        self.0.store(now, Ordering::SeqCst);
    }
    /// Move the time forward.
    pub fn advance(&self, secs: u64) {
        self.0.fetch_add(secs, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

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
    /// A partial upload with no progress and no writer attached for this long is removed when
    /// an upload is refused for capacity, free disk or quota, and the upload is tried again:
    /// an idle reservation cannot keep real uploads out, yet stays resumable while nobody
    /// needs its room.
    pub reservation_idle: Duration,
    /// Clock for expiry and progress times.
    pub clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreConfig")
            .field("capacity_bytes", &self.capacity_bytes)
            .field("min_free_bytes", &self.min_free_bytes)
            .field("per_sender_quota_bytes", &self.per_sender_quota_bytes)
            .field("abandon_after", &self.abandon_after)
            .field("reservation_idle", &self.reservation_idle)
            .finish_non_exhaustive()
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            capacity_bytes: 10 << 30,
            min_free_bytes: 1 << 30,
            per_sender_quota_bytes: 1 << 30,
            abandon_after: Duration::from_secs(3600),
            reservation_idle: Duration::from_secs(120),
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

/// Totals from the index.
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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
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
struct Progress {
    written: u64,
    phase: Phase,
}

/// In-memory state of a partial upload that has a writer or readers in this process.
struct Live {
    tx: watch::Sender<Progress>,
    writer_active: AtomicBool,
    /// The most recently stored chunks (only kept while readers follow the upload).
    recent: Mutex<Recent>,
}

/// A window of the most recently stored bytes of an upload, as the writer's own buffers.
struct Recent {
    /// Offset of the first byte of `chunks`.
    start: u64,
    chunks: VecDeque<Bytes>,
    bytes: usize,
    /// Bytes held by all windows of the store.
    total: Arc<AtomicUsize>,
}

impl Drop for Recent {
    fn drop(&mut self) {
        self.clear();
    }
}

impl Recent {
    fn end(&self) -> u64 {
        self.start + self.bytes as u64
    }

    fn new(total: Arc<AtomicUsize>) -> Recent {
        Recent {
            start: 0,
            chunks: VecDeque::new(),
            bytes: 0,
            total,
        }
    }

    fn clear(&mut self) {
        self.chunks.clear();
        self.total.fetch_sub(self.bytes, Ordering::Relaxed);
        self.bytes = 0;
    }

    /// Record `bufs`, stored at `offset`; keeps at most [`RECENT_BYTES`], but always the last
    /// chunk (it is in memory anyway until the writer's caller lets go of it).
    fn push(&mut self, offset: u64, bufs: &[Bytes]) {
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
    fn get(&self, pos: u64, end: u64, max: usize) -> Option<Bytes> {
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

impl Live {
    fn recent(&self) -> std::sync::MutexGuard<'_, Recent> {
        self.recent.lock().unwrap_or_else(|e| e.into_inner())
    }
}

struct Inner {
    dir: PathBuf,
    blobs_dir: PathBuf,
    pool: SqlitePool,
    /// One connection with `synchronous=FULL` for the commits that mark uploads complete: a
    /// completion answered `201` survives a power loss (the other writes use NORMAL; losing
    /// one of them at worst loses progress that recovery reconciles with the files).
    durable: SqlitePool,
    config: StoreConfig,
    /// Live partial uploads. A std mutex: held only for map lookups, never across an await.
    live: Mutex<HashMap<String, Arc<Live>>>,
    /// Bytes held by the recent-chunk windows of all live uploads.
    recent_total: Arc<AtomicUsize>,
    /// Taken around every write to the index: SQLite lets one writer in at a time and makes
    /// the others back off by sleeping (milliseconds); queueing here instead costs nothing.
    writes: tokio::sync::Mutex<()>,
    /// Completions waiting for their group commit (directory fsync + index update).
    commits: Mutex<CommitQueue>,
}

/// Uploads whose data is fsync'd and renamed to `.blob`, waiting for the directory fsync and
/// the index update that make the completion durable; one task commits them in groups.
#[derive(Default)]
struct CommitQueue {
    pending: Vec<PendingCommit>,
    /// A commit task is running (it takes whatever is pending when it starts a group).
    running: bool,
}

struct PendingCommit {
    id: String,
    sha256: String,
    /// Whether the index row was still there (not swept or cancelled meanwhile).
    done: tokio::sync::oneshot::Sender<std::result::Result<bool, String>>,
}

/// A temporary blob store. Cheap to clone.
#[derive(Clone)]
pub struct BlobStore {
    inner: Arc<Inner>,
}

type Row = (String, i64, i64, String, Option<String>, i64, i64, i64);

fn u(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}
fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Create the `totals` and `sender_totals` tables (declared bytes in all, of partial uploads,
/// and per sender) and the triggers that keep them in step with `blobs`, filling them from
/// `blobs` the first time. Admission checks then read two rows instead of summing the table.
async fn init_totals(pool: &SqlitePool) -> Result<()> {
    let mut conn = pool.acquire().await?;
    // IMMEDIATE: a relay and a `sweep` process opening at once do not both fill the tables.
    sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await?;
    let res = async {
        for stmt in [
            "CREATE TABLE IF NOT EXISTS totals (
                k INTEGER PRIMARY KEY NOT NULL CHECK (k = 0),
                total INTEGER NOT NULL,
                partial INTEGER NOT NULL
            )",
            "CREATE TABLE IF NOT EXISTS sender_totals (
                sender TEXT PRIMARY KEY NOT NULL,
                total INTEGER NOT NULL
            ) WITHOUT ROWID",
            "CREATE TRIGGER IF NOT EXISTS blobs_totals_insert AFTER INSERT ON blobs BEGIN
                UPDATE totals SET total = total + NEW.size,
                    partial = partial + (CASE WHEN NEW.state = 0 THEN NEW.size ELSE 0 END)
                    WHERE k = 0;
                INSERT OR IGNORE INTO sender_totals (sender, total) VALUES (NEW.sender, 0);
                UPDATE sender_totals SET total = total + NEW.size WHERE sender = NEW.sender;
            END",
            "CREATE TRIGGER IF NOT EXISTS blobs_totals_delete AFTER DELETE ON blobs BEGIN
                UPDATE totals SET total = total - OLD.size,
                    partial = partial - (CASE WHEN OLD.state = 0 THEN OLD.size ELSE 0 END)
                    WHERE k = 0;
                UPDATE sender_totals SET total = total - OLD.size WHERE sender = OLD.sender;
                DELETE FROM sender_totals WHERE sender = OLD.sender AND total <= 0;
            END",
            "CREATE TRIGGER IF NOT EXISTS blobs_totals_update
             AFTER UPDATE OF size, state, sender ON blobs BEGIN
                UPDATE totals SET total = total - OLD.size + NEW.size,
                    partial = partial - (CASE WHEN OLD.state = 0 THEN OLD.size ELSE 0 END)
                        + (CASE WHEN NEW.state = 0 THEN NEW.size ELSE 0 END)
                    WHERE k = 0;
                UPDATE sender_totals SET total = total - OLD.size WHERE sender = OLD.sender;
                DELETE FROM sender_totals WHERE sender = OLD.sender AND total <= 0;
                INSERT OR IGNORE INTO sender_totals (sender, total) VALUES (NEW.sender, 0);
                UPDATE sender_totals SET total = total + NEW.size WHERE sender = NEW.sender;
            END",
        ] {
            sqlx::query(stmt).execute(&mut *conn).await?;
        }
        let (have,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM totals")
            .fetch_one(&mut *conn)
            .await?;
        if have == 0 {
            sqlx::query(
                "INSERT INTO totals (k, total, partial)
                 SELECT 0, COALESCE(SUM(size), 0),
                        COALESCE(SUM(CASE WHEN state = 0 THEN size ELSE 0 END), 0)
                 FROM blobs",
            )
            .execute(&mut *conn)
            .await?;
            sqlx::query("DELETE FROM sender_totals")
                .execute(&mut *conn)
                .await?;
            sqlx::query(
                "INSERT INTO sender_totals (sender, total)
                 SELECT sender, SUM(size) FROM blobs GROUP BY sender",
            )
            .execute(&mut *conn)
            .await?;
        }
        Ok::<_, sqlx::Error>(())
    }
    .await;
    match res {
        Ok(()) => {
            sqlx::query("COMMIT").execute(&mut *conn).await?;
            Ok(())
        }
        Err(e) => {
            let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
            Err(e.into())
        }
    }
}

impl BlobStore {
    /// Open (creating if needed) the store in `dir` and run crash recovery: orphan files are
    /// removed and the index is reconciled with the files. Use this in the serving process.
    pub async fn open(dir: impl AsRef<Path>, config: StoreConfig) -> Result<BlobStore> {
        let store = Self::open_without_recovery(dir, config).await?;
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
        {
            let (dir, blobs_dir, index) = (dir.clone(), blobs_dir.clone(), index.clone());
            tokio::task::spawn_blocking(move || disk::private_layout(&dir, &blobs_dir, &index))
                .await
                .map_err(io::Error::other)??;
        }
        let opts = SqliteConnectOptions::new()
            .filename(index)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts.clone())
            .await?;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS blobs (
                id TEXT PRIMARY KEY NOT NULL,
                size INTEGER NOT NULL,
                expires INTEGER NOT NULL,
                sender TEXT NOT NULL,
                sha256 TEXT,
                state INTEGER NOT NULL DEFAULT 0,
                downloads INTEGER NOT NULL DEFAULT 0,
                last_progress INTEGER NOT NULL,
                created INTEGER NOT NULL
            )",
        )
        .execute(&pool)
        .await?;
        sqlx::query("CREATE INDEX IF NOT EXISTS blobs_expires ON blobs(expires)")
            .execute(&pool)
            .await?;
        sqlx::query("CREATE INDEX IF NOT EXISTS blobs_partial ON blobs(state, last_progress)")
            .execute(&pool)
            .await?;
        sqlx::query("CREATE INDEX IF NOT EXISTS blobs_sender ON blobs(sender)")
            .execute(&pool)
            .await?;
        // Removed transfers: `reason` is a `GoneReason` code, `removed` unix seconds.
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS tombstones (
                id TEXT PRIMARY KEY NOT NULL,
                reason INTEGER NOT NULL,
                removed INTEGER NOT NULL
            ) WITHOUT ROWID",
        )
        .execute(&pool)
        .await?;
        sqlx::query("CREATE INDEX IF NOT EXISTS tombstones_removed ON tombstones(removed)")
            .execute(&pool)
            .await?;
        init_totals(&pool).await?;
        let durable = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(opts.synchronous(SqliteSynchronous::Full))
            .await?;
        Ok(BlobStore {
            inner: Arc::new(Inner {
                dir,
                blobs_dir,
                pool,
                durable,
                config,
                live: Mutex::new(HashMap::new()),
                recent_total: Arc::new(AtomicUsize::new(0)),
                writes: tokio::sync::Mutex::new(()),
                commits: Mutex::new(CommitQueue::default()),
            }),
        })
    }

    /// The store directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Current time from the store's clock.
    pub fn now(&self) -> u64 {
        self.inner.config.clock.now()
    }

    fn part_path(&self, id: &str) -> PathBuf {
        self.inner.blobs_dir.join(format!("{id}.part"))
    }
    fn blob_path(&self, id: &str) -> PathBuf {
        self.inner.blobs_dir.join(format!("{id}.blob"))
    }

    fn live_get(&self, id: &str) -> Option<Arc<Live>> {
        self.inner
            .live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
    }

    fn live_get_or_insert(&self, id: &str, written: impl FnOnce() -> u64) -> Arc<Live> {
        let mut map = self.inner.live.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(id.to_owned())
            .or_insert_with(|| {
                Arc::new(Live {
                    tx: watch::channel(Progress {
                        written: written(),
                        phase: Phase::Idle,
                    })
                    .0,
                    writer_active: AtomicBool::new(false),
                    recent: Mutex::new(Recent::new(self.inner.recent_total.clone())),
                })
            })
            .clone()
    }

    /// End a live entry: readers and writer see `phase`.
    fn live_end(&self, id: &str, phase: Phase) {
        let live = self
            .inner
            .live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        if let Some(live) = live {
            live.recent().clear();
            live.tx.send_modify(|p| p.phase = phase);
        }
    }

    async fn row(&self, id: &str) -> Result<Option<Row>> {
        Ok(sqlx::query_as::<_, Row>(
            "SELECT id, size, expires, sender, sha256, state, downloads, last_progress FROM blobs WHERE id = ?",
        )
        .bind(id)
        .fetch_optional(&self.inner.pool)
        .await?)
    }

    /// The index row of an unexpired blob, and when it last made progress.
    async fn live_row(&self, id: &str) -> Result<(BlobInfo, u64)> {
        if !valid_id(id) {
            return Err(StoreError::InvalidId);
        }
        let Some((id, size, expires, sender, sha256, state, downloads, last_progress)) =
            self.row(id).await?
        else {
            return Err(self.missing(id).await);
        };
        if u(expires) <= self.now() {
            // Not swept yet, but gone all the same.
            return Err(StoreError::Gone(GoneReason::Expired));
        }
        let complete = state == 1;
        let info = BlobInfo {
            id,
            size: u(size),
            committed: if complete { u(size) } else { 0 },
            complete,
            expires: u(expires),
            sender,
            sha256,
            downloads: u32::try_from(downloads).unwrap_or(u32::MAX),
        };
        Ok((info, u(last_progress)))
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
        let r: Option<(i64,)> = sqlx::query_as("SELECT reason FROM tombstones WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.inner.pool)
            .await?;
        Ok(r.map(|(c,)| GoneReason::from_code(c)))
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
                        return Err(StoreError::NotFound)
                    }
                    Err(e) => return Err(e.into()),
                }
            };
        }
        Ok(info)
    }

    /// Create a blob for an upload after the admission checks (capacity, free-disk watermark,
    /// sender quota), in that order.
    pub async fn create(&self, new: NewBlob) -> Result<()> {
        self.insert(&new).await?;
        let part = self.part_path(&new.id);
        let res = tokio::task::spawn_blocking(move || {
            disk::private_file_options()
                .write(true)
                .create(true)
                .truncate(true)
                .open(part)
                .map(drop)
        })
        .await;
        match res {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                self.delete_row(&new.id, None).await.ok();
                Err(e.into())
            }
            Err(e) => {
                self.delete_row(&new.id, None).await.ok();
                Err(io::Error::other(e).into())
            }
        }
    }

    /// Become the one writer of `id` (a new live entry starts at offset 0); `Busy` if another
    /// writer is attached. The guard releases the claim when dropped.
    fn claim_writer(&self, id: &str) -> Result<(Arc<Live>, WriterGuard)> {
        let live = self.live_get_or_insert(id, || 0);
        if live.writer_active.swap(true, Ordering::SeqCst) {
            return Err(StoreError::Busy);
        }
        let guard = WriterGuard {
            store: self.clone(),
            id: id.to_owned(),
            live: live.clone(),
            armed: true,
        };
        Ok((live, guard))
    }

    /// [`BlobStore::create`] and [`BlobStore::writer`] in one step, for a fresh upload: saves
    /// an index lookup and a file-system round trip.
    pub async fn create_writer(&self, new: NewBlob) -> Result<BlobWriter> {
        self.insert(&new).await?;
        let id = new.id.as_str();
        let (live, guard) = self.claim_writer(id)?;
        let part = self.part_path(id);
        let opened = tokio::task::spawn_blocking(move || {
            disk::private_file_options()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(part)
        })
        .await
        .map_err(io::Error::other)
        .and_then(|r| r);
        let file = match opened {
            Ok(f) => f,
            Err(e) => {
                drop(guard);
                self.delete_row(id, None).await.ok();
                self.live_end(id, Phase::Gone);
                return Err(e.into());
            }
        };
        live.tx.send_modify(|p| {
            p.written = 0;
            p.phase = Phase::Writing;
        });
        Ok(BlobWriter {
            guard,
            core: Some(Core {
                file,
                written: 0,
                writeback_from: 0,
            }),
            hasher: Some(Sha256::new()),
            offset: 0,
            size: new.size,
            sha256: new.sha256,
            // `insert` set the progress time.
            last_touch: self.now(),
        })
    }

    /// Insert the index row of a new blob if the admission checks pass.
    async fn insert(&self, new: &NewBlob) -> Result<()> {
        if !valid_id(&new.id) {
            return Err(StoreError::InvalidId);
        }
        let cfg = &self.inner.config;
        let mut avail = disk::available_bytes(&self.inner.blobs_dir)?;
        let mut attempts = 0;
        let mut lapsed = false;
        loop {
            // Check and insert in one statement: atomic without a lock, also against another
            // process; the totals are kept by triggers (O(1), not a table scan).
            let now = self.now();
            let writing = self.inner.writes.lock().await;
            let inserted = sqlx::query(
                "INSERT INTO blobs
                    (id, size, expires, sender, sha256, state, downloads, last_progress, created)
                 SELECT ?1, ?2, ?3, ?4, ?5, 0, 0, ?6, ?6 FROM totals t
                 WHERE t.k = 0
                   AND NOT EXISTS (SELECT 1 FROM blobs WHERE id = ?1)
                   AND NOT EXISTS (SELECT 1 FROM tombstones WHERE id = ?1)
                   AND t.total + ?2 <= ?7
                   AND t.partial + ?2 + ?8 <= ?9
                   AND COALESCE((SELECT total FROM sender_totals WHERE sender = ?4), 0) + ?2
                       <= ?10",
            )
            .bind(&new.id)
            .bind(i(new.size))
            .bind(i(new.expires))
            .bind(&new.sender)
            .bind(&new.sha256)
            .bind(i(now))
            .bind(i(cfg.capacity_bytes))
            .bind(i(cfg.min_free_bytes))
            .bind(i(avail))
            .bind(i(cfg.per_sender_quota_bytes))
            .execute(&self.inner.pool)
            .await?
            .rows_affected()
                > 0;
            drop(writing);
            if inserted {
                break;
            }
            // Refused: say why, checking in the documented order.
            if let Some(reason) = self.tombstone(&new.id).await? {
                // A transfer id is never reused.
                return Err(StoreError::Gone(reason));
            }
            let (exists, total, partial, by_sender): (i64, i64, i64, Option<i64>) = sqlx::query_as(
                "SELECT EXISTS (SELECT 1 FROM blobs WHERE id = ?), total, partial,
                            (SELECT total FROM sender_totals WHERE sender = ?)
                     FROM totals WHERE k = 0",
            )
            .bind(&new.id)
            .bind(&new.sender)
            .fetch_one(&self.inner.pool)
            .await?;
            if exists != 0 {
                return Err(StoreError::AlreadyExists);
            }
            // Conservative: in-progress uploads may still need their whole declared size.
            let need = u(partial)
                .saturating_add(new.size)
                .saturating_add(cfg.min_free_bytes);
            let refusal = if u(total).saturating_add(new.size) > cfg.capacity_bytes {
                Some(StoreError::CapacityExceeded)
            } else if avail < need {
                Some(StoreError::LowDisk)
            } else if u(by_sender.unwrap_or(0)).saturating_add(new.size)
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
                    avail = disk::available_bytes(&self.inner.blobs_dir)?;
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

    /// Delete the index row of `id` (returning its state if it was there), leaving a tombstone
    /// with `reason` in the same transaction when given and the row existed.
    async fn delete_row(&self, id: &str, reason: Option<GoneReason>) -> Result<Option<i64>> {
        self.delete_row_if(id, reason, false).await
    }

    /// [`BlobStore::delete_row`]; with `complete_only`, only a complete blob's row.
    async fn delete_row_if(
        &self,
        id: &str,
        reason: Option<GoneReason>,
        complete_only: bool,
    ) -> Result<Option<i64>> {
        let sql = if complete_only {
            "DELETE FROM blobs WHERE id = ? AND state = 1 RETURNING state"
        } else {
            "DELETE FROM blobs WHERE id = ? RETURNING state"
        };
        let _writing = self.inner.writes.lock().await;
        let mut tx = self.inner.pool.begin().await?;
        let r: Option<(i64,)> = sqlx::query_as(sql)
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
        if let (Some(_), Some(reason)) = (r, reason) {
            sqlx::query("INSERT OR REPLACE INTO tombstones (id, reason, removed) VALUES (?, ?, ?)")
                .bind(id)
                .bind(reason.code())
                .bind(i(self.now()))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(r.map(|(s,)| s))
    }

    /// Open a writer appending at the current offset (0 for a fresh upload, the stored length
    /// for a resumed one; the prefix is re-hashed so the final SHA-256 covers the whole file).
    pub async fn writer(&self, id: &str) -> Result<BlobWriter> {
        let (info, last_progress) = self.live_row(id).await?;
        if info.complete {
            return Err(StoreError::AlreadyComplete);
        }
        let part2 = self.part_path(id);
        // A new entry starts at 0 (a lower bound); the real offset is published below.
        let (live, guard) = self.claim_writer(id)?;
        let size = info.size;
        let opened = tokio::task::spawn_blocking(move || -> io::Result<(File, Sha256, u64)> {
            let mut f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&part2)?;
            let len = f.metadata()?.len();
            if len > size {
                f.set_len(size)?;
            }
            let len = len.min(size);
            let mut hasher = Sha256::new();
            let mut buf = vec![0u8; REHASH_CHUNK];
            let mut left = len;
            while left > 0 {
                let n = usize::try_from(left.min(REHASH_CHUNK as u64)).unwrap_or(REHASH_CHUNK);
                f.read_exact(&mut buf[..n])?;
                hasher.update(&buf[..n]);
                left -= n as u64;
            }
            // The cursor is now at `len`: appends continue from there.
            Ok((f, hasher, len))
        })
        .await
        .map_err(io::Error::other)?;
        let (file, hasher, offset) = match opened {
            Ok(v) => v,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(StoreError::NotFound),
            Err(e) => return Err(e.into()),
        };
        live.tx.send_modify(|p| {
            p.written = offset;
            p.phase = Phase::Writing;
        });
        let now = self.now();
        if last_progress != now {
            // Restart the abandonment clock (already current right after `create`).
            let _writing = self.inner.writes.lock().await;
            sqlx::query("UPDATE blobs SET last_progress = ? WHERE id = ?")
                .bind(i(now))
                .bind(id)
                .execute(&self.inner.pool)
                .await?;
        }
        Ok(BlobWriter {
            guard,
            core: Some(Core {
                file,
                written: offset,
                writeback_from: offset,
            }),
            hasher: Some(hasher),
            offset,
            size,
            sha256: info.sha256,
            last_touch: now,
        })
    }

    /// Open a reader for bytes `start..end` (`end` ≤ declared size). If the upload is still in
    /// progress the reader follows the writer.
    pub async fn reader(&self, id: &str, start: u64, end: u64) -> Result<BlobReader> {
        let info = self.info(id).await?;
        self.reader_for(&info, start, end).await
    }

    /// Like [`BlobStore::reader`], for a blob just looked up with [`BlobStore::info`] (saves
    /// the second lookup). A blob completed or removed since is handled as by `reader`.
    pub async fn reader_for(&self, info: &BlobInfo, start: u64, end: u64) -> Result<BlobReader> {
        let id = info.id.as_str();
        let end = end.min(info.size);
        let start = start.min(end);
        let live = if info.complete {
            None
        } else {
            Some(self.live_get_or_insert(id, || info.committed))
        };
        let rx = live.as_ref().map(|l| l.tx.subscribe());
        let (part, blob) = (self.part_path(id), self.blob_path(id));
        let complete = info.complete;
        let opened = tokio::task::spawn_blocking(move || -> io::Result<(File, bool)> {
            let (f, done) = 'open: {
                if !complete {
                    match File::open(&part) {
                        Ok(f) => break 'open (f, false),
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => return Err(e),
                    }
                }
                // Completed meanwhile (renamed) or complete from the start.
                (File::open(&blob)?, true)
            };
            Ok((f, done))
        })
        .await
        .map_err(io::Error::other)?;
        let (file, is_complete) = match opened {
            Ok(v) => v,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(self.missing(id).await),
            Err(e) => return Err(e.into()),
        };
        Ok(BlobReader {
            store: self.clone(),
            id: id.to_owned(),
            file: Arc::new(file),
            pos: start,
            end,
            rx: if is_complete { None } else { rx },
            live: if is_complete { None } else { live },
        })
    }

    /// Count a download; fails with [`StoreError::DownloadLimit`] once `limit` downloads have
    /// started.
    pub async fn record_download(&self, id: &str, limit: Option<u32>) -> Result<u32> {
        let limit = i64::from(limit.unwrap_or(u32::MAX));
        let writing = self.inner.writes.lock().await;
        let r: Option<(i64,)> = sqlx::query_as(
            "UPDATE blobs SET downloads = downloads + 1 WHERE id = ? AND downloads < ? RETURNING downloads",
        )
        .bind(id)
        .bind(limit)
        .fetch_optional(&self.inner.pool)
        .await?;
        drop(writing);
        match r {
            Some((n,)) => Ok(u32::try_from(n).unwrap_or(u32::MAX)),
            None if self.row(id).await?.is_some() => Err(StoreError::DownloadLimit),
            None => Err(self.missing(id).await),
        }
    }

    /// Count a download of a complete, unexpired blob of `size` bytes in one index statement
    /// and return its info; `None` (nothing counted) if the blob is not like that or the
    /// download limit is reached; the caller then takes the general path
    /// ([`BlobStore::info`], [`BlobStore::record_download`]), which says why.
    pub async fn record_complete_download(
        &self,
        id: &str,
        limit: Option<u32>,
        size: u64,
    ) -> Result<Option<BlobInfo>> {
        if !valid_id(id) {
            return Err(StoreError::InvalidId);
        }
        let limit = i64::from(limit.unwrap_or(u32::MAX));
        let writing = self.inner.writes.lock().await;
        let r: Option<(i64, String, Option<String>, i64)> = sqlx::query_as(
            "UPDATE blobs SET downloads = downloads + 1
             WHERE id = ? AND state = 1 AND size = ? AND expires > ? AND downloads < ?
             RETURNING expires, sender, sha256, downloads",
        )
        .bind(id)
        .bind(i(size))
        .bind(i(self.now()))
        .bind(limit)
        .fetch_optional(&self.inner.pool)
        .await?;
        drop(writing);
        Ok(r.map(|(expires, sender, sha256, downloads)| BlobInfo {
            id: id.to_owned(),
            size,
            committed: size,
            complete: true,
            expires: u(expires),
            sender,
            sha256,
            downloads: u32::try_from(downloads).unwrap_or(u32::MAX),
        }))
    }

    /// Bytes `start..end` of a complete blob, read at once (open and read in one blocking
    /// step): for small downloads.
    pub async fn read_complete(&self, id: &str, start: u64, end: u64) -> Result<Bytes> {
        if !valid_id(id) {
            return Err(StoreError::InvalidId);
        }
        let blob = self.blob_path(id);
        let want = usize::try_from(end.saturating_sub(start))
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "range too large"))?;
        let read = tokio::task::spawn_blocking(move || -> io::Result<Vec<u8>> {
            let f = File::open(&blob)?;
            read_at_most(&f, start, want)
        })
        .await
        .map_err(io::Error::other)?;
        let buf = match read {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(self.missing(id).await),
            Err(e) => return Err(e.into()),
        };
        if buf.len() != want {
            // Truncated underneath: never serve a short body as if it were whole.
            return Err(StoreError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "blob file shorter than expected",
            )));
        }
        Ok(Bytes::from(buf))
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
        if let Some(live) = self.live_get(id) {
            let mut rx = live.tx.subscribe();
            drop(live);
            let settled = rx.wait_for(|p| !matches!(p.phase, Phase::Writing));
            // A timeout or a closed channel: the index below decides.
            let _ = tokio::time::timeout(DOWNLOADED_WAIT, settled).await;
        }
        let removed = self
            .delete_row_if(id, Some(GoneReason::Downloaded), true)
            .await?
            .is_some();
        if removed {
            self.live_end(id, Phase::Gone);
            self.remove_files(id).await?;
        }
        Ok(removed)
    }

    /// Make the completion of `id` durable: its data is fsync'd and it is renamed to `.blob`;
    /// what is left is the fsync of `blobs/` and marking it complete in the index. Completions
    /// arriving at about the same time share one directory fsync and one index statement.
    /// Returns `false` if the index row is gone (swept or cancelled meanwhile).
    async fn commit_complete(&self, id: &str, sha256: &str) -> Result<bool> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let lead = {
            let mut q = self.inner.commits.lock().unwrap_or_else(|e| e.into_inner());
            q.pending.push(PendingCommit {
                id: id.to_owned(),
                sha256: sha256.to_owned(),
                done: tx,
            });
            !std::mem::replace(&mut q.running, true)
        };
        if lead {
            // A task of its own: a caller that goes away does not strand the others.
            let store = self.clone();
            tokio::spawn(async move { store.run_commits().await });
        }
        match rx.await {
            Ok(Ok(updated)) => Ok(updated),
            Ok(Err(e)) => Err(io::Error::other(e).into()),
            Err(_) => Err(io::Error::other("commit task failed").into()),
        }
    }

    /// Commit pending completions, a group at a time, until none are left.
    async fn run_commits(&self) {
        loop {
            let group: Vec<PendingCommit> = {
                let mut q = self.inner.commits.lock().unwrap_or_else(|e| e.into_inner());
                if q.pending.is_empty() {
                    q.running = false;
                    return;
                }
                let n = q.pending.len().min(COMMIT_GROUP_MAX);
                q.pending.drain(..n).collect()
            };
            let res = self.commit_group(&group).await;
            for p in group {
                let r = match &res {
                    Ok(updated) => Ok(updated.contains(&p.id)),
                    Err(e) => Err(e.to_string()),
                };
                let _ = p.done.send(r);
            }
        }
    }

    /// One directory fsync (covers every rename of the group), then one index statement
    /// marking the group complete. Returns the ids whose rows were updated.
    async fn commit_group(
        &self,
        group: &[PendingCommit],
    ) -> Result<std::collections::HashSet<String>> {
        let dir = self.inner.blobs_dir.clone();
        tokio::task::spawn_blocking(move || File::open(&dir)?.sync_all())
            .await
            .map_err(io::Error::other)??;
        let mut sql =
            String::from("UPDATE blobs SET state = 1, last_progress = ?1, sha256 = CASE id");
        for k in 0..group.len() {
            let (a, b) = (2 + 2 * k, 3 + 2 * k);
            sql.push_str(&format!(" WHEN ?{a} THEN ?{b}"));
        }
        sql.push_str(" END WHERE id IN (");
        for k in 0..group.len() {
            if k > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!("?{}", 2 + 2 * k));
        }
        sql.push_str(") RETURNING id");
        let mut q = sqlx::query_as::<_, (String,)>(sqlx::AssertSqlSafe(sql)).bind(i(self.now()));
        for p in group {
            q = q.bind(&p.id).bind(&p.sha256);
        }
        let writing = self.inner.writes.lock().await;
        let rows = q.fetch_all(&self.inner.durable).await?;
        drop(writing);
        Ok(rows.into_iter().map(|(id,)| id).collect())
    }

    async fn remove_files(&self, id: &str) -> Result<u64> {
        let paths = [self.part_path(id), self.blob_path(id)];
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

    /// Remove expired blobs and abandoned partial uploads. Uses the expiry index, so the cost
    /// is proportional to what is removed, not to the store size.
    pub async fn sweep(&self) -> Result<SweepReport> {
        let now = self.now();
        let mut report = SweepReport::default();
        loop {
            let ids: Vec<(String,)> =
                sqlx::query_as("SELECT id FROM blobs WHERE expires <= ? ORDER BY expires LIMIT ?")
                    .bind(i(now))
                    .bind(SWEEP_BATCH)
                    .fetch_all(&self.inner.pool)
                    .await?;
            if ids.is_empty() {
                break;
            }
            for (id,) in ids {
                self.sweep_one(&id, &mut report).await?;
            }
        }
        let cutoff = now.saturating_sub(self.inner.config.abandon_after.as_secs());
        loop {
            let ids: Vec<(String,)> = sqlx::query_as(
                "SELECT id FROM blobs WHERE state = 0 AND last_progress <= ? ORDER BY last_progress LIMIT ?",
            )
            .bind(i(cutoff))
            .bind(SWEEP_BATCH)
            .fetch_all(&self.inner.pool)
            .await?;
            if ids.is_empty() {
                break;
            }
            for (id,) in ids {
                self.sweep_one(&id, &mut report).await?;
            }
        }
        let retention = TOMBSTONE_RETENTION.as_secs();
        let young = now.saturating_sub(TOMBSTONE_MIN_AGE.as_secs());
        self.sweep_tombstones(
            now.saturating_sub(retention),
            TOMBSTONE_MAX,
            young,
            &mut report,
        )
        .await?;
        if report.removed_blobs > 0 || report.removed_tombstones > 0 {
            tracing::info!(
                removed_blobs = report.removed_blobs,
                removed_bytes = report.removed_bytes,
                removed_partials = report.removed_partials,
                removed_tombstones = report.removed_tombstones,
                tombstones = report.tombstones,
                "sweep"
            );
        }
        Ok(report)
    }

    /// Remove tombstones from at or before `cutoff`, then the oldest beyond `max` among those
    /// from at or before `evictable`.
    async fn sweep_tombstones(
        &self,
        cutoff: u64,
        max: u64,
        evictable: u64,
        report: &mut SweepReport,
    ) -> Result<()> {
        loop {
            let n = self.delete_oldest_tombstones(cutoff, SWEEP_BATCH).await?;
            report.removed_tombstones += n;
            if n == 0 {
                break;
            }
        }
        loop {
            let (count,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM tombstones")
                .fetch_one(&self.inner.pool)
                .await?;
            let count = u(count);
            report.tombstones = count;
            if count <= max {
                return Ok(());
            }
            let excess = i(count - max).min(SWEEP_BATCH);
            let n = self.delete_oldest_tombstones(evictable, excess).await?;
            report.removed_tombstones += n;
            if n == 0 {
                tracing::warn!(
                    tombstones = report.tombstones,
                    max,
                    "more recent tombstones than the bound: all are younger than the minimum age and kept"
                );
                return Ok(());
            }
        }
    }

    /// Delete up to `limit` of the oldest tombstones from at or before `upto`; how many went.
    async fn delete_oldest_tombstones(&self, upto: u64, limit: i64) -> Result<u64> {
        let _writing = self.inner.writes.lock().await;
        Ok(sqlx::query(
            "DELETE FROM tombstones WHERE id IN
                (SELECT id FROM tombstones WHERE removed <= ? ORDER BY removed LIMIT ?)",
        )
        .bind(i(upto))
        .bind(limit)
        .execute(&self.inner.pool)
        .await?
        .rows_affected())
    }

    async fn sweep_one(&self, id: &str, report: &mut SweepReport) -> Result<()> {
        let state = self.delete_row(id, Some(GoneReason::Expired)).await?;
        self.live_end(id, Phase::Gone);
        let bytes = if valid_id(id) {
            self.remove_files(id).await?
        } else {
            0
        };
        if let Some(state) = state {
            report.removed_blobs += 1;
            report.removed_bytes += bytes;
            if state == 0 {
                report.removed_partials += 1;
            }
        }
        Ok(())
    }

    /// Totals from the index.
    pub async fn stats(&self) -> Result<StoreStats> {
        let (n, bytes, complete): (i64, Option<i64>, Option<i64>) = sqlx::query_as(
            "SELECT COUNT(*), SUM(size), SUM(CASE WHEN state = 1 THEN 1 ELSE 0 END) FROM blobs",
        )
        .fetch_one(&self.inner.pool)
        .await?;
        let (tombstones,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM tombstones")
            .fetch_one(&self.inner.pool)
            .await?;
        Ok(StoreStats {
            blobs: u(n),
            declared_bytes: u(bytes.unwrap_or(0)),
            complete_blobs: u(complete.unwrap_or(0)),
            tombstones: u(tombstones),
        })
    }

    /// Close the index database.
    pub async fn close(&self) {
        self.inner.durable.close().await;
        self.inner.pool.close().await;
    }

    /// Reconcile the index with the files after a crash or restart.
    async fn recover(&self) -> Result<()> {
        let rows: Vec<(String, i64, i64)> = sqlx::query_as("SELECT id, size, state FROM blobs")
            .fetch_all(&self.inner.pool)
            .await?;
        let dir = self.inner.blobs_dir.clone();
        // (name, len) of every file in blobs/.
        let files: HashMap<String, u64> =
            tokio::task::spawn_blocking(move || -> io::Result<HashMap<String, u64>> {
                let mut m = HashMap::new();
                for e in std::fs::read_dir(&dir)? {
                    let e = e?;
                    let len = e.metadata()?.len();
                    m.insert(e.file_name().to_string_lossy().into_owned(), len);
                }
                Ok(m)
            })
            .await
            .map_err(io::Error::other)??;
        let mut keep: std::collections::HashSet<String> = Default::default();
        let now = self.now();
        for (id, size, state) in rows {
            let size = u(size);
            let blob = files.get(&format!("{id}.blob")).copied();
            let part = files.get(&format!("{id}.part")).copied();
            let ok_blob = blob == Some(size);
            if !valid_id(&id) {
                self.delete_row(&id, None).await?;
                continue;
            }
            if ok_blob {
                if state != 1 {
                    // Crashed between the rename and the index update: the rename only happens
                    // after the data is fsync'd and verified, so it is complete.
                    sqlx::query("UPDATE blobs SET state = 1 WHERE id = ?")
                        .bind(&id)
                        .execute(&self.inner.pool)
                        .await?;
                }
                keep.insert(format!("{id}.blob"));
            } else if state == 0 && part.is_some_and(|l| l <= size) {
                // Interrupted upload: keep it resumable; restart the abandonment clock.
                sqlx::query("UPDATE blobs SET last_progress = ? WHERE id = ?")
                    .bind(i(now))
                    .bind(&id)
                    .execute(&self.inner.pool)
                    .await?;
                keep.insert(format!("{id}.part"));
            } else {
                tracing::warn!(id, "recovery: index entry without usable data, removed");
                self.delete_row(&id, None).await?;
            }
        }
        let dir = self.inner.blobs_dir.clone();
        let removed = tokio::task::spawn_blocking(move || -> io::Result<usize> {
            let mut n = 0;
            for name in files.keys() {
                if !keep.contains(name) {
                    std::fs::remove_file(dir.join(name))?;
                    n += 1;
                }
            }
            File::open(&dir)?.sync_all()?;
            Ok(n)
        })
        .await
        .map_err(io::Error::other)??;
        if removed > 0 {
            tracing::info!(removed, "recovery: removed orphan files");
        }
        Ok(())
    }
}

/// Marks the live entry writer-free when a writer goes away.
struct WriterGuard {
    store: BlobStore,
    id: String,
    live: Arc<Live>,
    armed: bool,
}

impl Drop for WriterGuard {
    fn drop(&mut self) {
        if self.armed {
            self.live.recent().clear();
            self.live.writer_active.store(false, Ordering::SeqCst);
            self.live.tx.send_modify(|p| {
                if p.phase == Phase::Writing {
                    p.phase = Phase::Idle;
                }
            });
        }
    }
}

/// The open data file of a writer.
struct Core {
    file: File,
    /// Bytes in the file.
    written: u64,
    /// Start of the range whose writeback has not been started yet.
    writeback_from: u64,
}

impl Core {
    /// Append `bufs` (one `writev` where possible) and start writeback when due. Blocking.
    fn write(&mut self, bufs: &[Bytes]) -> io::Result<()> {
        write_all_vectored(&mut self.file, bufs)?;
        self.written += bufs.iter().map(|b| b.len() as u64).sum::<u64>();
        if self.written - self.writeback_from >= WRITEBACK_EVERY {
            start_writeback(&self.file, self.writeback_from, self.written);
            self.writeback_from = self.written;
        }
        Ok(())
    }
}

fn hash(mut hasher: Sha256, bufs: &[Bytes]) -> Sha256 {
    for b in bufs {
        hasher.update(b);
    }
    hasher
}

fn write_all_vectored(file: &mut File, bufs: &[Bytes]) -> io::Result<()> {
    let mut slices: Vec<IoSlice<'_>> = bufs
        .iter()
        .filter(|b| !b.is_empty())
        .map(|b| IoSlice::new(b))
        .collect();
    let mut rest = &mut slices[..];
    while !rest.is_empty() {
        match file.write_vectored(rest) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut rest, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Ask the kernel to start writing `from..to` of `file` back to disk, without waiting
/// (best effort; the fsync at completion is what guarantees durability).
#[cfg(target_os = "linux")]
fn start_writeback(file: &File, from: u64, to: u64) {
    let (Ok(off), Ok(len)) = (i64::try_from(from), i64::try_from(to - from)) else {
        return;
    };
    // SAFETY: plain syscall on a file descriptor we own; no memory is passed.
    let _ =
        unsafe { libc::sync_file_range(file.as_raw_fd(), off, len, libc::SYNC_FILE_RANGE_WRITE) };
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_file: &File, _from: u64, _to: u64) {}

/// Appends to one blob. Dropping it without [`BlobWriter::finish`] leaves a resumable partial
/// upload.
pub struct BlobWriter {
    guard: WriterGuard,
    core: Option<Core>,
    hasher: Option<Sha256>,
    offset: u64,
    size: u64,
    sha256: Option<String>,
    last_touch: u64,
}

fn writer_failed() -> StoreError {
    io::Error::other("writer failed earlier").into()
}

impl BlobWriter {
    /// Bytes stored so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Declared size.
    pub fn size(&self) -> u64 {
        self.size
    }

    fn check_alive(&self) -> Result<()> {
        match self.guard.live.tx.borrow().phase {
            Phase::Cancelled => Err(StoreError::Cancelled),
            Phase::Gone => Err(StoreError::Expired),
            _ => Ok(()),
        }
    }

    /// Append buffers (hashed and written in one blocking step; no fsync). Readers are woken.
    pub async fn append(&mut self, bufs: Vec<Bytes>) -> Result<()> {
        self.check_alive()?;
        let n: u64 = bufs.iter().map(|b| b.len() as u64).sum();
        if n > self.size - self.offset {
            return Err(StoreError::TooLarge);
        }
        if n == 0 {
            return Ok(());
        }
        let (Some(mut core), Some(hasher)) = (self.core.take(), self.hasher.take()) else {
            return Err(writer_failed());
        };
        let at = core.written;
        let (core, hasher, bufs) = if n >= PARALLEL_HASH_MIN {
            // Hashing and writing in parallel: a large batch costs the slower of the two.
            let shared = bufs.clone();
            let hashing = tokio::task::spawn_blocking(move || hash(hasher, &shared));
            let writing = tokio::task::spawn_blocking(move || {
                let res = core.write(&bufs);
                (core, bufs, res)
            });
            let (hashed, written) = tokio::join!(hashing, writing);
            let hasher = hashed.map_err(io::Error::other)?;
            let (core, bufs, res) = written.map_err(io::Error::other)?;
            res?;
            (core, hasher, bufs)
        } else {
            let (core, hasher, bufs, res) = tokio::task::spawn_blocking(move || {
                let hasher = hash(hasher, &bufs);
                let res = core.write(&bufs);
                (core, hasher, bufs, res)
            })
            .await
            .map_err(io::Error::other)?;
            res?;
            (core, hasher, bufs)
        };
        // Tell readers: followers that keep up take these very buffers.
        let live = &self.guard.live;
        if live.tx.receiver_count() > 0 {
            live.recent().push(at, &bufs);
        }
        let written = core.written;
        live.tx.send_modify(|p| p.written = written);
        self.offset = written;
        self.core = Some(core);
        self.hasher = Some(hasher);
        self.touch().await
    }

    /// Record progress in the index (at most once per clock second).
    async fn touch(&mut self) -> Result<()> {
        let now = self.guard.store.now();
        if now != self.last_touch {
            self.last_touch = now;
            let _writing = self.guard.store.inner.writes.lock().await;
            sqlx::query("UPDATE blobs SET last_progress = ? WHERE id = ?")
                .bind(i(now))
                .bind(&self.guard.id)
                .execute(&self.guard.store.inner.pool)
                .await?;
        }
        Ok(())
    }

    /// Turn this writer into a pipelined sink: buffers pushed into it are hashed and written by
    /// a separate task (off the caller's task) while the caller receives more. At most `limit`
    /// bytes of this upload wait or are being written at a time, and, with `shared`, they also
    /// take permits (one per byte) from that pool, which bounds all uploads together.
    /// [`BlobSink::push`] waits for room.
    pub fn sink(self, limit: usize, shared: Option<SharedBudget>) -> BlobSink {
        let limit = limit.clamp(1, u32::MAX as usize);
        let own = Arc::new(Semaphore::new(limit));
        let (tx, rx) = mpsc::unbounded_channel();
        let accepted = self.offset;
        let size = self.size;
        let task = tokio::spawn(drain_sink(self, rx, own.clone()));
        BlobSink {
            tx: Some(tx),
            own,
            shared,
            limit,
            accepted,
            size,
            task,
        }
    }

    /// Complete the upload: check the size and declared SHA-256 (a mismatch discards the
    /// blob), fsync, rename to `.blob`, fsync the directory, mark complete. Returns the
    /// lowercase hex SHA-256.
    pub async fn finish(self) -> Result<String> {
        self.finish_with(Vec::new()).await
    }

    /// Append the last buffers and complete the upload as [`BlobWriter::finish`] does: the
    /// write, the hash, the SHA-256 check, the fsync and the rename happen in one blocking
    /// step; the directory fsync and the index update are shared with completions finishing
    /// at about the same time. Returns only once the completion is durable. If `bufs` do not
    /// complete the blob they are appended and [`StoreError::Incomplete`] is returned.
    pub async fn finish_with(mut self, bufs: Vec<Bytes>) -> Result<String> {
        self.check_alive()?;
        let n: u64 = bufs.iter().map(|b| b.len() as u64).sum();
        if n > self.size - self.offset {
            return Err(StoreError::TooLarge);
        }
        if self.offset + n != self.size {
            self.append(bufs).await?;
            return Err(StoreError::Incomplete {
                received: self.offset,
                size: self.size,
            });
        }
        let (Some(mut core), Some(hasher)) = (self.core.take(), self.hasher.take()) else {
            return Err(writer_failed());
        };
        let store = self.guard.store.clone();
        let id = self.guard.id.clone();
        let (part, blob) = (store.part_path(&id), store.blob_path(&id));
        let expected = self.sha256.clone();
        // Ok(Ok(sha)): stored durably and renamed; Ok(Err(sha)): SHA-256 mismatch.
        let stored = tokio::task::spawn_blocking(
            move || -> io::Result<std::result::Result<String, String>> {
                let hasher = hash(hasher, &bufs);
                if !bufs.is_empty() {
                    core.write(&bufs)?;
                }
                let actual = hex(&hasher.finalize());
                if expected.as_ref().is_some_and(|e| *e != actual) {
                    return Ok(Err(actual));
                }
                core.file.sync_data()?;
                drop(core);
                std::fs::rename(&part, &blob)?;
                Ok(Ok(actual))
            },
        )
        .await
        .map_err(io::Error::other)??;
        let actual = match stored {
            Ok(actual) => actual,
            Err(actual) => {
                let expected = self.sha256.clone().unwrap_or_default();
                store.delete_row(&id, Some(GoneReason::Discarded)).await?;
                store.live_end(&id, Phase::Gone);
                store.remove_files(&id).await?;
                return Err(StoreError::ShaMismatch { expected, actual });
            }
        };
        self.offset = self.size;
        if !store.commit_complete(&id, &actual).await? {
            // Swept or cancelled meanwhile.
            store.live_end(&id, Phase::Gone);
            store.remove_files(&id).await?;
            return Err(StoreError::Expired);
        }
        self.guard.live.tx.send_modify(|p| {
            p.written = p.written.max(self.offset);
            p.phase = Phase::Complete;
        });
        store.live_end(&id, Phase::Complete);
        Ok(actual)
    }
}

/// A pool of bytes that several [`BlobSink`]s draw from: bounds the memory of all uploads
/// together. Cheap to clone (clones share the pool).
#[derive(Clone, Debug)]
pub struct SharedBudget {
    sem: Arc<Semaphore>,
    total: u32,
}

impl SharedBudget {
    /// A pool of `total` bytes (at most `u32::MAX`).
    pub fn new(total: usize) -> SharedBudget {
        let total = u32::try_from(total.max(1)).unwrap_or(u32::MAX);
        SharedBudget {
            sem: Arc::new(Semaphore::new(total as usize)),
            total,
        }
    }

    /// Bytes not taken right now.
    pub fn available(&self) -> usize {
        self.sem.available_permits()
    }
}

/// A queued buffer and the budget it holds until it is stored.
struct Queued {
    data: Bytes,
    _own: OwnedSemaphorePermit,
    _shared: Option<OwnedSemaphorePermit>,
}

/// The storing side of a [`BlobSink`]: takes whatever has arrived (up to a batch) and stores
/// it in one blocking step, so batches grow when storing is the slower side.
async fn drain_sink(
    mut writer: BlobWriter,
    mut rx: mpsc::UnboundedReceiver<Queued>,
    own: Arc<Semaphore>,
) -> Result<BlobWriter> {
    let res = async {
        let mut batch = Vec::with_capacity(SINK_BATCH_BUFS);
        let mut held = Vec::with_capacity(SINK_BATCH_BUFS);
        while let Some(q) = rx.recv().await {
            let mut bytes = q.data.len();
            batch.push(q.data.clone());
            held.push(q);
            while bytes < SINK_BATCH_BYTES && batch.len() < SINK_BATCH_BUFS {
                match rx.try_recv() {
                    Ok(q) => {
                        bytes += q.data.len();
                        batch.push(q.data.clone());
                        held.push(q);
                    }
                    Err(_) => break,
                }
            }
            writer.append(std::mem::take(&mut batch)).await?;
            // Stored: give the budget back.
            held.clear();
        }
        Ok(())
    }
    .await;
    // Wakes a producer waiting for room; its push fails and it collects the error here.
    // Whatever is still queued is dropped with `rx`, returning its budget.
    own.close();
    res.map(|()| writer)
}

/// A [`BlobWriter`] fed through a bounded queue; see [`BlobWriter::sink`].
pub struct BlobSink {
    tx: Option<mpsc::UnboundedSender<Queued>>,
    own: Arc<Semaphore>,
    shared: Option<SharedBudget>,
    limit: usize,
    accepted: u64,
    size: u64,
    task: tokio::task::JoinHandle<Result<BlobWriter>>,
}

impl BlobSink {
    /// Bytes accepted so far (stored or queued), counting from the start of the blob.
    pub fn accepted(&self) -> u64 {
        self.accepted
    }

    /// Queue `data` for storing; waits while the queue is full. An error means storing has
    /// stopped: [`BlobSink::close`] says why.
    pub async fn push(&mut self, data: Bytes) -> Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        if data.len() as u64 > self.size - self.accepted {
            return Err(StoreError::TooLarge);
        }
        let stopped = || StoreError::Io(io::Error::other("storing stopped"));
        // A buffer larger than the limit takes the whole limit (it is stored on its own).
        let permits = u32::try_from(data.len().min(self.limit)).unwrap_or(u32::MAX);
        let own = self
            .own
            .clone()
            .acquire_many_owned(permits)
            .await
            .map_err(|_| stopped())?;
        let shared = match &self.shared {
            Some(pool) => Some(
                pool.sem
                    .clone()
                    .acquire_many_owned(permits.min(pool.total))
                    .await
                    .map_err(|_| stopped())?,
            ),
            None => None,
        };
        let n = data.len() as u64;
        let tx = self.tx.as_ref().ok_or_else(stopped)?;
        tx.send(Queued {
            data,
            _own: own,
            _shared: shared,
        })
        .map_err(|_| stopped())?;
        self.accepted += n;
        Ok(())
    }

    /// Wait until everything queued is stored; returns the writer (with its exact offset), or
    /// the error that stopped storing (the upload then stays resumable at what was stored).
    pub async fn close(mut self) -> Result<BlobWriter> {
        self.tx = None;
        (&mut self.task).await.map_err(io::Error::other)?
    }
}

/// Read up to `want` bytes at `pos` (fewer only at the end of the file), into a buffer that is
/// not zeroed first.
fn read_at_most(file: &File, pos: u64, want: usize) -> io::Result<Vec<u8>> {
    let mut buf: Vec<u8> = Vec::with_capacity(want);
    while buf.len() < want {
        let at = i64::try_from(pos + buf.len() as u64)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset too large"))?;
        let left = want - buf.len();
        let spare = &mut buf.spare_capacity_mut()[..left];
        // SAFETY: `spare` is writable memory of `spare.len()` bytes owned by `buf`; pread
        // writes at most that many bytes into it and reports how many.
        let n = unsafe {
            libc::pread(
                file.as_raw_fd(),
                spare.as_mut_ptr().cast(),
                spare.len(),
                at as libc::off_t,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            break;
        }
        let n = usize::try_from(n).unwrap_or(0);
        // SAFETY: pread initialised the first `n` bytes of the spare capacity.
        unsafe { buf.set_len(buf.len() + n) };
    }
    Ok(buf)
}

fn hex(b: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        let _ = write!(s, "{x:02x}");
    }
    s
}

/// Reads a range of a blob, following the writer while the upload is in progress.
pub struct BlobReader {
    store: BlobStore,
    id: String,
    file: Arc<File>,
    pos: u64,
    end: u64,
    rx: Option<watch::Receiver<Progress>>,
    /// The live upload (while following it): recent chunks are taken from memory.
    live: Option<Arc<Live>>,
}

impl BlobReader {
    /// Bytes left to read.
    pub fn remaining(&self) -> u64 {
        self.end - self.pos
    }

    /// The next chunk of at most `max` bytes; `None` at the end of the range. Waits for the
    /// writer when it is behind; fails if the upload is cancelled, expires or is swept.
    pub async fn next_chunk(&mut self, max: usize) -> Result<Option<Bytes>> {
        if self.pos >= self.end {
            return Ok(None);
        }
        let avail_end = self.wait_available().await?;
        let max = max.max(1);
        // Caught up with the writer: take its buffers (no file read, no copy).
        if let Some(live) = &self.live {
            if let Some(b) = live.recent().get(self.pos, avail_end, max) {
                self.pos += b.len() as u64;
                return Ok(Some(b));
            }
        }
        let want = (avail_end - self.pos).min(max as u64);
        let file = self.file.clone();
        let pos = self.pos;
        // Positional reads: cancelling this future (the read finishes on its own) leaves the
        // reader usable.
        let buf = tokio::task::spawn_blocking(move || {
            read_at_most(&file, pos, usize::try_from(want).unwrap_or(0))
        })
        .await
        .map_err(io::Error::other)??;
        if buf.is_empty() {
            // The writer said the bytes were there; the file is shorter: truncated underneath.
            return Err(StoreError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "blob file shorter than expected",
            )));
        }
        self.pos += buf.len() as u64;
        Ok(Some(Bytes::from(buf)))
    }

    fn stop_following(&mut self) {
        self.rx = None;
        self.live = None;
    }

    /// Wait until bytes past `pos` are stored; return how far we may read.
    async fn wait_available(&mut self) -> Result<u64> {
        let Some(rx) = self.rx.as_mut() else {
            return Ok(self.end);
        };
        loop {
            let p = *rx.borrow_and_update();
            match p.phase {
                Phase::Cancelled => return Err(StoreError::Cancelled),
                Phase::Gone => return Err(StoreError::Expired),
                Phase::Complete => {
                    self.stop_following();
                    return Ok(self.end);
                }
                Phase::Writing | Phase::Idle => {}
            }
            if p.written > self.pos {
                return Ok(p.written.min(self.end));
            }
            match tokio::time::timeout(READER_RECHECK, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => {
                    // Sender dropped after the entry ended; the last value tells why.
                    let p = *rx.borrow();
                    return match p.phase {
                        Phase::Complete => {
                            self.stop_following();
                            Ok(self.end)
                        }
                        Phase::Cancelled => Err(StoreError::Cancelled),
                        _ => Err(StoreError::Expired),
                    };
                }
                Err(_) => {
                    // Nothing for a while: make sure nobody (e.g. a cron sweep in another
                    // process) removed the blob.
                    match self.store.info(&self.id).await {
                        Ok(i) if i.complete => {
                            self.stop_following();
                            return Ok(self.end);
                        }
                        Ok(_) => {}
                        Err(StoreError::NotFound) => return Err(StoreError::Expired),
                        Err(e) => return Err(e),
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The trigger-kept totals equal the sums over `blobs`.
    async fn assert_totals(store: &BlobStore) {
        let pool = &store.inner.pool;
        let (total, partial): (i64, i64) =
            sqlx::query_as("SELECT total, partial FROM totals WHERE k = 0")
                .fetch_one(pool)
                .await
                .expect("totals");
        let (t2, p2): (Option<i64>, Option<i64>) = sqlx::query_as(
            "SELECT SUM(size), SUM(CASE WHEN state = 0 THEN size ELSE 0 END) FROM blobs",
        )
        .fetch_one(pool)
        .await
        .expect("sums");
        assert_eq!((total, partial), (t2.unwrap_or(0), p2.unwrap_or(0)));
        let a: Vec<(String, i64)> =
            sqlx::query_as("SELECT sender, total FROM sender_totals ORDER BY sender")
                .fetch_all(pool)
                .await
                .expect("sender totals");
        let b: Vec<(String, i64)> = sqlx::query_as(
            "SELECT sender, SUM(size) FROM blobs GROUP BY sender HAVING SUM(size) > 0 ORDER BY sender",
        )
        .fetch_all(pool)
        .await
        .expect("sender sums");
        assert_eq!(a, b);
    }

    fn blob(id: &str, size: u64, sender: &str) -> NewBlob {
        NewBlob {
            id: id.into(),
            size,
            expires: 2_000_000_000,
            sender: sender.into(),
            sha256: None,
        }
    }

    #[tokio::test]
    async fn totals_follow_every_change() {
        let dir = tempfile::tempdir().expect("tempdir");
        let clock = Arc::new(ManualClock::new(1_700_000_000));
        let config = StoreConfig {
            min_free_bytes: 0,
            clock: clock.clone(),
            ..StoreConfig::default()
        };
        let store = BlobStore::open(dir.path(), config.clone())
            .await
            .expect("open");
        assert_totals(&store).await;
        store.create(blob("a", 3, "x")).await.expect("a");
        store.create(blob("b", 5, "x")).await.expect("b");
        store.create(blob("c", 7, "y")).await.expect("c");
        assert_totals(&store).await;
        let mut w = store.writer("a").await.expect("writer");
        w.append(vec![Bytes::from_static(b"abc")])
            .await
            .expect("append");
        w.finish().await.expect("finish");
        assert_totals(&store).await;
        assert!(store.cancel("c").await.expect("cancel"));
        assert_totals(&store).await;
        // Rebuilt from `blobs` when the tables are missing (an index from before them).
        sqlx::query("DROP TABLE totals")
            .execute(&store.inner.pool)
            .await
            .expect("drop");
        store.close().await;
        let store = BlobStore::open(dir.path(), config).await.expect("reopen");
        assert_totals(&store).await;
        clock.advance(1_000_000_000);
        store.sweep().await.expect("sweep");
        assert_totals(&store).await;
        let (total,): (i64,) = sqlx::query_as("SELECT total FROM totals")
            .fetch_one(&store.inner.pool)
            .await
            .expect("total");
        assert_eq!(total, 0);
    }

    #[tokio::test]
    async fn tombstones_remember_removals_and_are_swept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t0 = 1_700_000_000;
        let clock = Arc::new(ManualClock::new(t0));
        let config = StoreConfig {
            min_free_bytes: 0,
            clock: clock.clone(),
            ..StoreConfig::default()
        };
        let store = BlobStore::open(dir.path(), config.clone())
            .await
            .expect("open");
        let gone = |r: Result<BlobInfo>| match r {
            Err(StoreError::Gone(reason)) => Some(reason),
            _ => None,
        };
        // Cancelled.
        store.create(blob("c", 3, "x")).await.expect("c");
        assert!(store.cancel("c").await.expect("cancel"));
        assert_eq!(gone(store.info("c").await), Some(GoneReason::Cancelled));
        // Discarded (SHA-256 mismatch).
        let mut bad = blob("d", 3, "x");
        bad.sha256 = Some("00".repeat(32));
        let w = store.create_writer(bad).await.expect("d");
        assert!(matches!(
            w.finish_with(vec![Bytes::from_static(b"abc")]).await,
            Err(StoreError::ShaMismatch { .. })
        ));
        assert_eq!(gone(store.info("d").await), Some(GoneReason::Discarded));
        // Downloaded (one-shot), then expired by a sweep from a second handle (cron).
        let w = store.create_writer(blob("o", 3, "x")).await.expect("o");
        w.finish_with(vec![Bytes::from_static(b"abc")])
            .await
            .expect("finish");
        assert!(store.remove_downloaded("o").await.expect("remove"));
        assert!(!store.remove_downloaded("o").await.expect("again"));
        assert_eq!(gone(store.info("o").await), Some(GoneReason::Downloaded));
        assert!(!dir.path().join("blobs/o.blob").exists());
        let mut e = blob("e", 3, "x");
        e.expires = t0 + 10;
        store.create(e).await.expect("e");
        clock.set(t0 + 10);
        // Expired but not swept yet: gone already.
        assert_eq!(gone(store.info("e").await), Some(GoneReason::Expired));
        let cron = BlobStore::open_without_recovery(dir.path(), config)
            .await
            .expect("cron");
        let rep = cron.sweep().await.expect("sweep");
        assert_eq!((rep.removed_blobs, rep.tombstones), (1, 4));
        cron.close().await;
        assert_eq!(gone(store.info("e").await), Some(GoneReason::Expired));
        // An id is never reused.
        for id in ["c", "d", "o", "e"] {
            assert!(matches!(
                store.create(blob(id, 3, "x")).await,
                Err(StoreError::Gone(_))
            ));
        }
        assert!(matches!(
            store.record_download("c", None).await,
            Err(StoreError::Gone(GoneReason::Cancelled))
        ));
        assert!(matches!(
            store.cancel("d").await,
            Err(StoreError::Gone(GoneReason::Discarded))
        ));
        assert_eq!(store.stats().await.expect("stats").tombstones, 4);
        // Retention: kept until TOMBSTONE_RETENTION after the removal, then swept.
        clock.set(t0 + TOMBSTONE_RETENTION.as_secs() - 1);
        let rep = store.sweep().await.expect("sweep");
        assert_eq!((rep.removed_tombstones, rep.tombstones), (0, 4));
        clock.set(t0 + 10 + TOMBSTONE_RETENTION.as_secs());
        let rep = store.sweep().await.expect("sweep");
        assert_eq!((rep.removed_tombstones, rep.tombstones), (4, 0));
        assert!(matches!(store.info("c").await, Err(StoreError::NotFound)));
        // The count bound drops the oldest first.
        for (k, id) in ["k1", "k2", "k3"].into_iter().enumerate() {
            clock.set(t0 + 1_000_000 + k as u64);
            store.create(blob(id, 1, "x")).await.expect("create");
            store.cancel(id).await.expect("cancel");
        }
        // Young tombstones are kept even beyond the bound.
        let mut rep = SweepReport::default();
        store
            .sweep_tombstones(0, 2, 0, &mut rep)
            .await
            .expect("bound");
        assert_eq!((rep.removed_tombstones, rep.tombstones), (0, 3));
        let mut rep = SweepReport::default();
        let all_old = t0 + 2_000_000;
        store
            .sweep_tombstones(0, 2, all_old, &mut rep)
            .await
            .expect("bound");
        assert_eq!((rep.removed_tombstones, rep.tombstones), (1, 2));
        assert!(matches!(store.info("k1").await, Err(StoreError::NotFound)));
        assert!(matches!(store.info("k3").await, Err(StoreError::Gone(_))));
        assert_totals(&store).await;
    }
}
