//! The blob store: index, writers, readers, sweeps.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use sha2::{Digest, Sha256};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::SqlitePool;
use tokio::sync::watch;

use crate::{disk, valid_id, Result, StoreError};

/// Bytes hashed per step when re-hashing a resumed upload's prefix.
const REHASH_CHUNK: usize = 1 << 20;
/// Rows handled per sweep query.
const SWEEP_BATCH: i64 = 256;
/// How often a waiting reader re-checks the index (for sweeps done by another process).
const READER_RECHECK: Duration = Duration::from_secs(5);

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
}

struct Inner {
    dir: PathBuf,
    blobs_dir: PathBuf,
    pool: SqlitePool,
    config: StoreConfig,
    /// Live partial uploads. A std mutex: held only for map lookups, never across an await.
    live: Mutex<HashMap<String, Arc<Live>>>,
    /// Serialises admission checks so two uploads cannot both pass a limit.
    admit: tokio::sync::Mutex<()>,
}

/// A temporary blob store. Cheap to clone.
#[derive(Clone)]
pub struct BlobStore {
    inner: Arc<Inner>,
}

type Row = (String, i64, i64, String, Option<String>, i64, i64);

fn u(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}
fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
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
        tokio::fs::create_dir_all(&blobs_dir).await?;
        let opts = SqliteConnectOptions::new()
            .filename(dir.join("index.sqlite"))
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts)
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
        Ok(BlobStore {
            inner: Arc::new(Inner {
                dir,
                blobs_dir,
                pool,
                config,
                live: Mutex::new(HashMap::new()),
                admit: tokio::sync::Mutex::new(()),
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
            live.tx.send_modify(|p| p.phase = phase);
        }
    }

    async fn row(&self, id: &str) -> Result<Option<Row>> {
        Ok(sqlx::query_as::<_, Row>(
            "SELECT id, size, expires, sender, sha256, state, downloads FROM blobs WHERE id = ?",
        )
        .bind(id)
        .fetch_optional(&self.inner.pool)
        .await?)
    }

    /// Look up a blob. Expired blobs are reported as [`StoreError::NotFound`].
    pub async fn info(&self, id: &str) -> Result<BlobInfo> {
        if !valid_id(id) {
            return Err(StoreError::InvalidId);
        }
        let (id, size, expires, sender, sha256, state, downloads) =
            self.row(id).await?.ok_or(StoreError::NotFound)?;
        if u(expires) <= self.now() {
            return Err(StoreError::NotFound);
        }
        let complete = state == 1;
        let committed = if complete {
            u(size)
        } else if let Some(live) = self.live_get(&id) {
            live.tx.borrow().written
        } else {
            match tokio::fs::metadata(self.part_path(&id)).await {
                Ok(m) => m.len().min(u(size)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(StoreError::NotFound),
                Err(e) => return Err(e.into()),
            }
        };
        Ok(BlobInfo {
            id,
            size: u(size),
            committed,
            complete,
            expires: u(expires),
            sender,
            sha256,
            downloads: u32::try_from(downloads).unwrap_or(u32::MAX),
        })
    }

    /// Create a blob for an upload after the admission checks (capacity, free-disk watermark,
    /// sender quota), in that order.
    pub async fn create(&self, new: NewBlob) -> Result<()> {
        if !valid_id(&new.id) {
            return Err(StoreError::InvalidId);
        }
        let cfg = &self.inner.config;
        let _admit = self.inner.admit.lock().await;
        if self.row(&new.id).await?.is_some() {
            return Err(StoreError::AlreadyExists);
        }
        let (total, partial): (Option<i64>, Option<i64>) = sqlx::query_as(
            "SELECT SUM(size), SUM(CASE WHEN state = 0 THEN size ELSE 0 END) FROM blobs",
        )
        .fetch_one(&self.inner.pool)
        .await?;
        let total = u(total.unwrap_or(0));
        if total.saturating_add(new.size) > cfg.capacity_bytes {
            return Err(StoreError::CapacityExceeded);
        }
        let avail = disk::available_bytes(&self.inner.blobs_dir)?;
        // Conservative: in-progress uploads may still need their whole declared size.
        let need = u(partial.unwrap_or(0))
            .saturating_add(new.size)
            .saturating_add(cfg.min_free_bytes);
        if avail < need {
            return Err(StoreError::LowDisk);
        }
        let (by_sender,): (Option<i64>,) =
            sqlx::query_as("SELECT SUM(size) FROM blobs WHERE sender = ?")
                .bind(&new.sender)
                .fetch_one(&self.inner.pool)
                .await?;
        if u(by_sender.unwrap_or(0)).saturating_add(new.size) > cfg.per_sender_quota_bytes {
            return Err(StoreError::QuotaExceeded);
        }
        let now = self.now();
        sqlx::query(
            "INSERT INTO blobs (id, size, expires, sender, sha256, state, downloads, last_progress, created)
             VALUES (?, ?, ?, ?, ?, 0, 0, ?, ?)",
        )
        .bind(&new.id)
        .bind(i(new.size))
        .bind(i(new.expires))
        .bind(&new.sender)
        .bind(&new.sha256)
        .bind(i(now))
        .bind(i(now))
        .execute(&self.inner.pool)
        .await?;
        let part = self.part_path(&new.id);
        let res = tokio::task::spawn_blocking(move || File::create(part).map(drop)).await;
        match res {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                self.delete_row(&new.id).await.ok();
                Err(e.into())
            }
            Err(e) => {
                self.delete_row(&new.id).await.ok();
                Err(io::Error::other(e).into())
            }
        }
    }

    async fn delete_row(&self, id: &str) -> Result<Option<i64>> {
        let r: Option<(i64,)> = sqlx::query_as("DELETE FROM blobs WHERE id = ? RETURNING state")
            .bind(id)
            .fetch_optional(&self.inner.pool)
            .await?;
        Ok(r.map(|(s,)| s))
    }

    /// Open a writer appending at the current offset (0 for a fresh upload, the stored length
    /// for a resumed one; the prefix is re-hashed so the final SHA-256 covers the whole file).
    pub async fn writer(&self, id: &str) -> Result<BlobWriter> {
        let info = self.info(id).await?;
        if info.complete {
            return Err(StoreError::AlreadyComplete);
        }
        let part2 = self.part_path(id);
        let live = self.live_get_or_insert(id, || info.committed);
        if live.writer_active.swap(true, Ordering::SeqCst) {
            return Err(StoreError::Busy);
        }
        let guard = WriterGuard {
            store: self.clone(),
            id: id.to_owned(),
            live: live.clone(),
            armed: true,
        };
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
        sqlx::query("UPDATE blobs SET last_progress = ? WHERE id = ?")
            .bind(i(now))
            .bind(id)
            .execute(&self.inner.pool)
            .await?;
        Ok(BlobWriter {
            guard,
            file: Some(file),
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
        let end = end.min(info.size);
        let start = start.min(end);
        let rx = if info.complete {
            None
        } else {
            let live = self.live_get_or_insert(id, || info.committed);
            Some(live.tx.subscribe())
        };
        let (part, blob) = (self.part_path(id), self.blob_path(id));
        let complete = info.complete;
        let opened = tokio::task::spawn_blocking(move || -> io::Result<(File, bool)> {
            if !complete {
                match File::open(&part) {
                    Ok(f) => return Ok((f, false)),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
            // Completed meanwhile (renamed) or complete from the start.
            File::open(&blob).map(|f| (f, true))
        })
        .await
        .map_err(io::Error::other)?;
        let (file, is_complete) = match opened {
            Ok(v) => v,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(StoreError::NotFound),
            Err(e) => return Err(e.into()),
        };
        Ok(BlobReader {
            store: self.clone(),
            id: id.to_owned(),
            file: Arc::new(file),
            pos: start,
            end,
            rx: if is_complete { None } else { rx },
        })
    }

    /// Count a download; fails with [`StoreError::DownloadLimit`] once `limit` downloads have
    /// started.
    pub async fn record_download(&self, id: &str, limit: Option<u32>) -> Result<u32> {
        let limit = i64::from(limit.unwrap_or(u32::MAX));
        let r: Option<(i64,)> = sqlx::query_as(
            "UPDATE blobs SET downloads = downloads + 1 WHERE id = ? AND downloads < ? RETURNING downloads",
        )
        .bind(id)
        .bind(limit)
        .fetch_optional(&self.inner.pool)
        .await?;
        match r {
            Some((n,)) => Ok(u32::try_from(n).unwrap_or(u32::MAX)),
            None if self.row(id).await?.is_some() => Err(StoreError::DownloadLimit),
            None => Err(StoreError::NotFound),
        }
    }

    /// Cancel a transfer: readers and the writer get [`StoreError::Cancelled`], storage is
    /// freed. Returns whether it existed.
    pub async fn cancel(&self, id: &str) -> Result<bool> {
        if !valid_id(id) {
            return Err(StoreError::InvalidId);
        }
        let existed = self.delete_row(id).await?.is_some();
        self.live_end(id, Phase::Cancelled);
        self.remove_files(id).await?;
        Ok(existed)
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
        if report.removed_blobs > 0 {
            tracing::info!(
                removed_blobs = report.removed_blobs,
                removed_bytes = report.removed_bytes,
                removed_partials = report.removed_partials,
                "sweep"
            );
        }
        Ok(report)
    }

    async fn sweep_one(&self, id: &str, report: &mut SweepReport) -> Result<()> {
        let state = self.delete_row(id).await?;
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
        Ok(StoreStats {
            blobs: u(n),
            declared_bytes: u(bytes.unwrap_or(0)),
            complete_blobs: u(complete.unwrap_or(0)),
        })
    }

    /// Close the index database.
    pub async fn close(&self) {
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
                self.delete_row(&id).await?;
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
                self.delete_row(&id).await?;
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
            self.live.writer_active.store(false, Ordering::SeqCst);
            self.live.tx.send_modify(|p| {
                if p.phase == Phase::Writing {
                    p.phase = Phase::Idle;
                }
            });
        }
    }
}

/// Appends to one blob. Dropping it without [`BlobWriter::finish`] leaves a resumable partial
/// upload.
pub struct BlobWriter {
    guard: WriterGuard,
    file: Option<File>,
    hasher: Option<Sha256>,
    offset: u64,
    size: u64,
    sha256: Option<String>,
    last_touch: u64,
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

    /// Append buffers (written in one blocking step; no fsync). Readers are woken.
    pub async fn append(&mut self, bufs: Vec<Bytes>) -> Result<()> {
        self.check_alive()?;
        let n: u64 = bufs.iter().map(|b| b.len() as u64).sum();
        if n > self.size - self.offset {
            return Err(StoreError::TooLarge);
        }
        if n == 0 {
            return Ok(());
        }
        let (Some(mut file), Some(mut hasher)) = (self.file.take(), self.hasher.take()) else {
            return Err(io::Error::other("writer failed earlier").into());
        };
        let (file, hasher, res) = tokio::task::spawn_blocking(move || {
            let mut res = Ok(());
            for b in &bufs {
                if let Err(e) = file.write_all(b) {
                    res = Err(e);
                    break;
                }
                hasher.update(b);
            }
            (file, hasher, res)
        })
        .await
        .map_err(io::Error::other)?;
        res?;
        self.file = Some(file);
        self.hasher = Some(hasher);
        self.offset += n;
        let offset = self.offset;
        self.guard.live.tx.send_modify(|p| p.written = offset);
        let now = self.guard.store.now();
        if now != self.last_touch {
            self.last_touch = now;
            sqlx::query("UPDATE blobs SET last_progress = ? WHERE id = ?")
                .bind(i(now))
                .bind(&self.guard.id)
                .execute(&self.guard.store.inner.pool)
                .await?;
        }
        Ok(())
    }

    /// Complete the upload: check the size and declared SHA-256 (a mismatch discards the
    /// blob), fsync, rename to `.blob`, fsync the directory, mark complete. Returns the
    /// lowercase hex SHA-256.
    pub async fn finish(mut self) -> Result<String> {
        self.check_alive()?;
        if self.offset != self.size {
            return Err(StoreError::Incomplete {
                received: self.offset,
                size: self.size,
            });
        }
        let (Some(file), Some(hasher)) = (self.file.take(), self.hasher.take()) else {
            return Err(io::Error::other("writer failed earlier").into());
        };
        let actual = hex(&hasher.finalize());
        let store = self.guard.store.clone();
        let id = self.guard.id.clone();
        if let Some(expected) = self.sha256.clone() {
            if expected != actual {
                drop(file);
                store.delete_row(&id).await?;
                store.live_end(&id, Phase::Gone);
                store.remove_files(&id).await?;
                return Err(StoreError::ShaMismatch { expected, actual });
            }
        }
        let (part, blob, dir) = (
            store.part_path(&id),
            store.blob_path(&id),
            store.inner.blobs_dir.clone(),
        );
        tokio::task::spawn_blocking(move || -> io::Result<()> {
            file.sync_data()?;
            drop(file);
            std::fs::rename(&part, &blob)?;
            File::open(&dir)?.sync_all()
        })
        .await
        .map_err(io::Error::other)??;
        let r =
            sqlx::query("UPDATE blobs SET state = 1, sha256 = ?, last_progress = ? WHERE id = ?")
                .bind(&actual)
                .bind(i(store.now()))
                .bind(&id)
                .execute(&store.inner.pool)
                .await?;
        if r.rows_affected() == 0 {
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
        let want = (avail_end - self.pos).min(max as u64);
        let n = usize::try_from(want).unwrap_or(max);
        let file = self.file.clone();
        let pos = self.pos;
        let buf = tokio::task::spawn_blocking(move || -> io::Result<BytesMut> {
            let mut buf = BytesMut::zeroed(n);
            let mut filled = 0;
            while filled < n {
                let r = file.read_at(&mut buf[filled..], pos + filled as u64)?;
                if r == 0 {
                    break;
                }
                filled += r;
            }
            buf.truncate(filled);
            Ok(buf)
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
        Ok(Some(buf.freeze()))
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
                    self.rx = None;
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
                            self.rx = None;
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
                            self.rx = None;
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
