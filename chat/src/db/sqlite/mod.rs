//! The SQLite backend: its files' modes, the pragmas, WAL checkpoints, the migrations
//! (`sqlite/migrations`), the message sequence counter and the one-trip batch (`hot`).

mod hot;
mod legacy;

use super::{Backend, Db, DbError};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::SqlitePool;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Creates the data directory with mode 0700 when it does not exist (an existing directory is
/// left as the operator set it up).
pub fn create_data_dir(dir: &Path) -> std::io::Result<()> {
    if dir.exists() {
        return Ok(());
    }
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(dir)
}

/// Creates `path` empty with mode 0600 if missing (an empty file is an empty SQLite database),
/// or restricts an existing one to 0600.
fn private_file(path: &Path) -> std::io::Result<()> {
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    drop(o.open(path)?);
    restrict(path)
}

/// Sets an existing file to mode 0600 (no-op when it does not exist).
fn restrict(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        match std::fs::metadata(path) {
            Ok(m) if m.permissions().mode() & 0o777 != 0o600 => {
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// Takes the data directory's lock (`<dir>/msim.lock`, 0600) for as long as the returned file
/// is open: one process at a time uses a SQLite store, so a second `msim-chat` or a `db copy`
/// started against a live server's directory is refused instead of copying a store that is
/// still changing or writing beside it. The kernel drops the lock when the process dies.
fn lock_data_dir(dir: &Path) -> Result<std::fs::File, DbError> {
    let path = dir.join("msim.lock");
    let mut o = std::fs::OpenOptions::new();
    o.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    let file = o.open(&path).map_err(DbError::Io)?;
    restrict(&path).map_err(DbError::Io)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(DbError::InUse(dir.display().to_string())),
        Err(std::fs::TryLockError::Error(e)) => Err(DbError::Io(e)),
    }
}

/// WAL size (frames, ~4 KiB each) beyond which the writer restarts the log.
pub(crate) const WAL_RESTART_FRAMES: u64 = 8192;

/// The SQLite store: a reader pool and the writer's own connection.
#[derive(Debug)]
pub(crate) struct Store {
    pub(super) pool: SqlitePool,
    pub(super) writes: SqlitePool,
    /// WAL size in frames at the last checkpoint.
    wal_frames: std::sync::atomic::AtomicU64,
    /// The last message sequence number handed out. The writer assigns `messages.seq` itself,
    /// in commit order, so a seq read after a commit bounds every message committed before it.
    message_seq: std::sync::atomic::AtomicI64,
    /// The data directory's lock, held while the store is open ([`lock_data_dir`]).
    _lock: Option<std::fs::File>,
}

impl Db {
    /// Opens (creating if needed) `<dir>/msim.db` in WAL mode and runs the migrations. The
    /// database file is created (or tightened) to mode 0600 before SQLite opens it; SQLite
    /// gives its `-wal` and `-shm` files the database file's mode.
    /// Holds the data directory's lock while open: a second opener (another server, `db copy`)
    /// gets [`DbError::InUse`].
    pub async fn open(dir: &Path) -> Result<Db, DbError> {
        let lock = lock_data_dir(dir)?;
        Db::open_sqlite(dir, Some(lock)).await
    }

    /// Opens the store beside a running server, without the data directory's lock: only for
    /// short operator writes that SQLite's own locking makes safe (`set-password`).
    pub async fn open_beside_server(dir: &Path) -> Result<Db, DbError> {
        Db::open_sqlite(dir, None).await
    }

    async fn open_sqlite(dir: &Path, lock: Option<std::fs::File>) -> Result<Db, DbError> {
        let file = dir.join("msim.db");
        private_file(&file).map_err(DbError::Io)?;
        for extra in ["msim.db-wal", "msim.db-shm"] {
            restrict(&dir.join(extra)).map_err(DbError::Io)?;
        }
        let opts = SqliteConnectOptions::new()
            .filename(dir.join("msim.db"))
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            // Commits never checkpoint (a checkpoint writes and syncs the database file, tens
            // of milliseconds that every waiting MESSAGE-SENT would pay); the server runs
            // [`Db::checkpoint`] from a background task instead.
            .pragma("wal_autocheckpoint", "0")
            .busy_timeout(Duration::from_secs(10));
        // Page cache per connection (negative: KiB). Readers serve short indexed lookups; the
        // writer's cache keeps the indexes it appends to warm.
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts.clone().pragma("cache_size", "-2048"))
            .await?;
        sqlx::migrate!("src/db/sqlite/migrations")
            .run(&pool)
            .await?;
        legacy::convert_notices(&pool).await?;
        // One connection that only the group-commit writer uses: its page cache stays warm
        // (another connection's commit would invalidate it).
        let writes = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(opts.pragma("cache_size", "-8192"))
            .await?;
        // Retention deletes old rows, so after a restart seqs may be handed out again: harmless,
        // they only order items for the sessions of one run (login marks, PROTOCOL.md §5.4).
        let (last,): (Option<i64>,) = sqlx::query_as("SELECT MAX(seq) FROM messages")
            .fetch_one(&pool)
            .await?;
        Ok(Db::with_backend(Backend::Sqlite(Arc::new(Store {
            pool,
            writes,
            wal_frames: Default::default(),
            message_seq: std::sync::atomic::AtomicI64::new(last.unwrap_or(0)),
            _lock: lock,
        }))))
    }

    /// `PRAGMA journal_mode` and `PRAGMA synchronous` (0 OFF, 1 NORMAL, 2 FULL, 3 EXTRA) of
    /// the connection that commits, and of the pool the readers use: lets tests check the
    /// durability docs/OPERATING.md promises. `None` on PostgreSQL.
    pub async fn durability(&self) -> Result<Option<[(String, i64); 2]>, DbError> {
        match &self.backend {
            Backend::Sqlite(s) => s.durability().await.map(Some),
            Backend::Postgres(_) => Ok(None),
        }
    }
}

impl Store {
    /// The next `n` message sequence numbers (the first is returned).
    pub(super) fn allocate_message_seqs(&self, n: usize) -> i64 {
        self.message_seq
            .fetch_add(n as i64, std::sync::atomic::Ordering::Relaxed)
            + 1
    }

    /// Copies committed WAL frames into the database file without blocking the writer
    /// (`PRAGMA wal_checkpoint(PASSIVE)`); the WAL is then reused from its start.
    pub(super) async fn checkpoint(&self) -> Result<(), DbError> {
        let (_, log, _): (i64, i64, i64) = sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)")
            .fetch_one(&self.pool)
            .await?;
        self.wal_frames
            .store(log.max(0) as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Under sustained writes a passive checkpoint never catches up to the end of the log, so
    /// the WAL would grow without bound. Called by the writer between batches: when the log
    /// passed [`WAL_RESTART_FRAMES`], checkpoints the (few) frames the background checkpoint
    /// has not copied yet and restarts the log from its beginning.
    pub(super) async fn restart_wal_if_large(&self) -> Result<(), DbError> {
        use std::sync::atomic::Ordering;
        if self.wal_frames.load(Ordering::Relaxed) < WAL_RESTART_FRAMES {
            return Ok(());
        }
        let (_, log, _): (i64, i64, i64) = sqlx::query_as("PRAGMA wal_checkpoint(RESTART)")
            .fetch_one(&self.writes)
            .await?;
        tracing::debug!(frames = log, "WAL restarted");
        self.wal_frames.store(0, Ordering::Relaxed);
        Ok(())
    }

    async fn durability(&self) -> Result<[(String, i64); 2], DbError> {
        let mut out: [(String, i64); 2] = Default::default();
        for (slot, pool) in out.iter_mut().zip([&self.writes, &self.pool]) {
            let mut conn = pool.acquire().await?;
            let (mode,): (String,) = sqlx::query_as("PRAGMA journal_mode")
                .fetch_one(&mut *conn)
                .await?;
            let (sync,): (i64,) = sqlx::query_as("PRAGMA synchronous")
                .fetch_one(&mut *conn)
                .await?;
            *slot = (mode, sync);
        }
        Ok(out)
    }

    pub(super) async fn close(&self) {
        self.writes.close().await;
        self.pool.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::{Db, DbError};

    #[tokio::test]
    async fn a_store_is_opened_by_one_owner_at_a_time() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = Db::open(dir.path()).await.expect("open");
        let second = Db::open(dir.path()).await;
        assert!(matches!(second, Err(DbError::InUse(_))), "{second:?}");
        // An operator write beside the owner does not take the lock.
        let beside = Db::open_beside_server(dir.path()).await.expect("beside");
        beside.close().await;
        first.close().await;
        drop(first);
        Db::open(dir.path())
            .await
            .expect("reopen after the owner is gone");
        let mode = {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(dir.path().join("msim.lock"))
                .expect("lock file")
                .permissions()
                .mode()
        };
        assert_eq!(mode & 0o777, 0o600);
    }
}
