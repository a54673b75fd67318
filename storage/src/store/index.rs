//! The index: every SQL statement of the store. The schema lives in `migrations/`.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{ConnectOptions, Connection, FromRow, SqliteConnection, SqlitePool};

use super::NewBlob;
use crate::{GoneReason, Result, StoreStats};

/// Rows handled per sweep query.
pub(super) const SWEEP_BATCH: i64 = 256;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("src/store/migrations");

/// SQLite stores integers as `i64`; sizes and times are never negative.
pub(super) fn unsigned(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// The `i64` SQLite stores for `v` (saturating: limits beyond it mean "no limit").
pub(super) fn signed(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A blob's index row.
#[derive(Debug, FromRow)]
pub(super) struct BlobRow {
    pub id: String,
    pub size: i64,
    pub expires: i64,
    pub sender: String,
    pub sha256: Option<String>,
    /// 0 = partial upload, 1 = complete.
    pub state: i64,
    pub downloads: i64,
    pub last_progress: i64,
}

impl BlobRow {
    pub fn complete(&self) -> bool {
        self.state == 1
    }
}

/// What a counted download returns.
#[derive(Debug, FromRow)]
pub(super) struct CountedDownload {
    pub expires: i64,
    pub sender: String,
    pub sha256: Option<String>,
    pub downloads: i64,
    /// 0 = partial upload, 1 = complete.
    pub state: i64,
}

/// The totals an admission check compares against, and whether the id is taken.
#[derive(Debug, FromRow)]
pub(super) struct Occupancy {
    pub id_taken: bool,
    pub total: i64,
    pub partial: i64,
    pub by_sender: Option<i64>,
}

/// What crash recovery needs of a row.
#[derive(Debug, FromRow)]
pub(super) struct RecoveryRow {
    pub id: String,
    pub size: i64,
    pub state: i64,
    pub sha256: Option<String>,
}

/// The limits an insert must respect, all in bytes.
pub(super) struct Admission {
    pub capacity: u64,
    pub min_free: u64,
    pub available: u64,
    pub per_sender_quota: u64,
}

pub(super) struct Index {
    /// Reads. A pooled statement would first check its connection with a round trip to the
    /// connection's thread (`test_before_acquire`); a local database file cannot hang up, so
    /// that check is off.
    pool: SqlitePool,
    /// The two write connections, taken together: SQLite lets one writer in at a time and
    /// makes the others back off by sleeping (milliseconds); queueing here instead costs
    /// nothing. They are held, not pooled: sqlx pings a pooled connection before and after
    /// every statement, two more round trips to its thread per write.
    writes: tokio::sync::Mutex<Writers>,
}

/// The write connections of the index, opened when first needed (and again after sqlx
/// reports that a connection's thread is gone).
struct Writers {
    options: SqliteConnectOptions,
    /// For the writes other than completions (`synchronous=NORMAL`). One connection: its page
    /// cache stays valid from one write to the next, where several made most writes begin on
    /// a connection that had to drop its cache because another had written since.
    normal: Option<SqliteConnection>,
    /// `synchronous=FULL`, for the commits that mark uploads complete: a completion answered
    /// `201` survives a power loss (the other writes use NORMAL; losing one of them at worst
    /// loses progress that recovery reconciles with the files).
    durable: Option<SqliteConnection>,
    /// Set by [`Index::close`]: writes fail from then on, as they did on a closed pool.
    closed: bool,
}

impl Writers {
    /// The NORMAL connection.
    async fn normal(&mut self) -> sqlx::Result<&mut SqliteConnection> {
        if self.closed {
            return Err(sqlx::Error::PoolClosed);
        }
        let opts = &self.options;
        open_if_needed(&mut self.normal, || opts.clone()).await
    }

    /// The FULL connection.
    async fn durable(&mut self) -> sqlx::Result<&mut SqliteConnection> {
        if self.closed {
            return Err(sqlx::Error::PoolClosed);
        }
        let opts = &self.options;
        open_if_needed(&mut self.durable, || {
            opts.clone().synchronous(SqliteSynchronous::Full)
        })
        .await
    }

    /// Pass `res` on; a connection whose thread is gone is dropped (reopened by the next write).
    fn check<T>(&mut self, res: sqlx::Result<T>) -> Result<T> {
        if let Err(sqlx::Error::WorkerCrashed) = res {
            self.normal = None;
            self.durable = None;
        }
        Ok(res?)
    }
}

async fn open_if_needed(
    slot: &mut Option<SqliteConnection>,
    options: impl FnOnce() -> SqliteConnectOptions,
) -> sqlx::Result<&mut SqliteConnection> {
    if slot.is_none() {
        *slot = Some(options().connect().await?);
    }
    slot.as_mut()
        .ok_or_else(|| sqlx::Error::Protocol("index connection missing".into()))
}

/// Holds an exclusive lock on `<index>.migrate-lock` (created 0600) until dropped; waits for
/// another process holding it.
async fn migration_lock(index: &Path) -> Result<std::fs::File> {
    let mut name = index.as_os_str().to_owned();
    name.push(".migrate-lock");
    let path = std::path::PathBuf::from(name);
    let file = tokio::task::spawn_blocking(move || -> std::io::Result<std::fs::File> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)?;
        file.lock()?;
        Ok(file)
    })
    .await
    .map_err(std::io::Error::other)??;
    Ok(file)
}

impl Index {
    /// Open (creating if needed) the index database at `path` and bring its schema up to date.
    pub async fn open(path: &Path) -> Result<Index> {
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .test_before_acquire(false)
            .connect_with(opts.clone())
            .await?;
        // A relay and a `sweep` process may open a new (or older) index at once. sqlx's SQLite
        // migrator takes no lock, so both would apply the same migrations and the loser's
        // bookkeeping insert would fail: they take turns under an exclusive lock on a file
        // beside the index instead.
        let lock = migration_lock(path).await?;
        let migrated = MIGRATOR.run(&pool).await;
        drop(lock);
        migrated.map_err(sqlx::Error::from)?;
        let mut writers = Writers {
            options: opts,
            normal: None,
            durable: None,
            closed: false,
        };
        // Opened now, so that a database the relay cannot write fails at start.
        writers.normal().await?;
        writers.durable().await?;
        Ok(Index {
            pool,
            writes: tokio::sync::Mutex::new(writers),
        })
    }

    pub async fn close(&self) {
        let mut w = self.writes.lock().await;
        w.closed = true;
        for conn in [w.durable.take(), w.normal.take()].into_iter().flatten() {
            let _ = conn.close().await;
        }
        drop(w);
        self.pool.close().await;
    }

    pub async fn blob(&self, id: &str) -> Result<Option<BlobRow>> {
        Ok(sqlx::query_as(
            "SELECT id, size, expires, sender, sha256, state, downloads, last_progress
             FROM blobs WHERE id = ?",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Why a removed transfer was removed, while its tombstone is kept.
    pub async fn tombstone(&self, id: &str) -> Result<Option<GoneReason>> {
        let r: Option<(i64,)> = sqlx::query_as("SELECT reason FROM tombstones WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(r.map(|(c,)| GoneReason::from_code(c)))
    }

    /// Insert the row of `new` if its id is free (no row, no tombstone) and `limits` admit it.
    /// Check and insert are one statement: atomic without a lock, also against another
    /// process; the totals are kept by triggers (O(1), not a table scan).
    pub async fn insert_if_admitted(
        &self,
        new: &NewBlob,
        now: u64,
        limits: &Admission,
    ) -> Result<bool> {
        let mut w = self.writes.lock().await;
        let res = sqlx::query(
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
        .bind(signed(new.size))
        .bind(signed(new.expires))
        .bind(&new.sender)
        .bind(&new.sha256)
        .bind(signed(now))
        .bind(signed(limits.capacity))
        .bind(signed(limits.min_free))
        .bind(signed(limits.available))
        .bind(signed(limits.per_sender_quota))
        .execute(w.normal().await?)
        .await;
        Ok(w.check(res)?.rows_affected() > 0)
    }

    /// The totals an insert of `id` by `sender` was checked against.
    pub async fn occupancy(&self, id: &str, sender: &str) -> Result<Occupancy> {
        Ok(sqlx::query_as(
            "SELECT EXISTS (SELECT 1 FROM blobs WHERE id = ?) AS id_taken, total, partial,
                    (SELECT total FROM sender_totals WHERE sender = ?) AS by_sender
             FROM totals WHERE k = 0",
        )
        .bind(id)
        .bind(sender)
        .fetch_one(&self.pool)
        .await?)
    }

    /// Delete the row of `id` (only if complete, with `complete_only`), leaving a tombstone
    /// with `reason` in the same transaction when given and the row existed. Returns whether
    /// the deleted row was complete, `None` if there was none.
    pub async fn delete(
        &self,
        id: &str,
        reason: Option<GoneReason>,
        now: u64,
        complete_only: bool,
    ) -> Result<Option<bool>> {
        let sql = if complete_only {
            "DELETE FROM blobs WHERE id = ? AND state = 1 RETURNING state"
        } else {
            "DELETE FROM blobs WHERE id = ? RETURNING state"
        };
        let mut w = self.writes.lock().await;
        let res = async {
            let mut tx = w.normal().await?.begin().await?;
            let state: Option<(i64,)> = sqlx::query_as(sql)
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
            if let (Some(_), Some(reason)) = (state, reason) {
                sqlx::query(
                    "INSERT OR REPLACE INTO tombstones (id, reason, removed) VALUES (?, ?, ?)",
                )
                .bind(id)
                .bind(reason.code())
                .bind(signed(now))
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok(state)
        }
        .await;
        Ok(w.check(res)?.map(|(s,)| s == 1))
    }

    /// Record that `id` made progress at `now` (restarts its abandonment clock).
    pub async fn set_progress(&self, id: &str, now: u64) -> Result<()> {
        let mut w = self.writes.lock().await;
        let res = sqlx::query("UPDATE blobs SET last_progress = ? WHERE id = ?")
            .bind(signed(now))
            .bind(id)
            .execute(w.normal().await?)
            .await;
        w.check(res)?;
        Ok(())
    }

    /// Mark `id` complete (recovery: its `.blob` file is there and whole).
    pub async fn mark_complete(&self, id: &str) -> Result<()> {
        let mut w = self.writes.lock().await;
        let res = sqlx::query("UPDATE blobs SET state = 1 WHERE id = ?")
            .bind(id)
            .execute(w.normal().await?)
            .await;
        w.check(res)?;
        Ok(())
    }

    /// Mark a group of `(id, sha256)` complete in one statement on the durable connection
    /// (`None`: not hashed, no SHA-256 stored); returns the ids whose rows were there.
    pub async fn commit_complete(
        &self,
        now: u64,
        group: &[(&str, Option<&str>)],
    ) -> Result<HashSet<String>> {
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
        let mut q = sqlx::query_as::<_, (String,)>(sqlx::AssertSqlSafe(sql)).bind(signed(now));
        for (id, sha256) in group {
            q = q.bind(*id).bind(*sha256);
        }
        let mut w = self.writes.lock().await;
        let res = q.fetch_all(w.durable().await?).await;
        let rows = w.check(res)?;
        Ok(rows.into_iter().map(|(id,)| id).collect())
    }

    /// Count a download unless `limit` have started; the new count, `None` if not counted.
    pub async fn count_download(&self, id: &str, limit: u32) -> Result<Option<u32>> {
        let mut w = self.writes.lock().await;
        let res: sqlx::Result<Option<(i64,)>> = sqlx::query_as(
            "UPDATE blobs SET downloads = downloads + 1 WHERE id = ? AND downloads < ?
             RETURNING downloads",
        )
        .bind(id)
        .bind(i64::from(limit))
        .fetch_optional(w.normal().await?)
        .await;
        Ok(w.check(res)?
            .map(|(n,)| u32::try_from(n).unwrap_or(u32::MAX)))
    }

    /// Count a download of `id` if it is `size` bytes, unexpired at `now`, under `limit` and
    /// complete, or (with `partial_too`) an upload in progress; with `deliver`, a complete one
    /// is marked delivered too. `None` (nothing counted) otherwise. One statement that both
    /// finds and counts: the hot path of a download, waiting or not.
    pub async fn count_ready_download(
        &self,
        id: &str,
        size: u64,
        now: u64,
        limit: u32,
        deliver: bool,
        partial_too: bool,
    ) -> Result<Option<CountedDownload>> {
        let mut w = self.writes.lock().await;
        let res = sqlx::query_as(
            "UPDATE blobs SET downloads = downloads + 1,
                 delivered = CASE WHEN ?5 AND state = 1 THEN 1 ELSE delivered END,
                 served = CASE WHEN ?5 AND state = 1 THEN size ELSE served END
             WHERE id = ?1 AND size = ?2 AND expires > ?3 AND downloads < ?4
               AND (state = 1 OR ?6)
             RETURNING expires, sender, sha256, downloads, state",
        )
        .bind(id)
        .bind(signed(size))
        .bind(signed(now))
        .bind(i64::from(limit))
        .bind(deliver)
        .bind(partial_too)
        .fetch_optional(w.normal().await?)
        .await;
        w.check(res)
    }

    /// Record that a download handed out bytes `start..end` of `id`: they extend the prefix
    /// served from byte 0 if they start inside it, and a prefix that reaches the blob's size
    /// marks it delivered (its sender's quota no longer counts it). The blob must be complete,
    /// or with `all_written` have its completion being committed. Whether it became delivered.
    pub async fn record_served(
        &self,
        id: &str,
        start: u64,
        end: u64,
        all_written: bool,
    ) -> Result<bool> {
        let mut w = self.writes.lock().await;
        let res: sqlx::Result<Option<(i64,)>> = sqlx::query_as(
            "UPDATE blobs SET served = MAX(served, ?2),
                 delivered = (MAX(served, ?2) >= size)
             WHERE id = ?1 AND delivered = 0 AND served >= ?3 AND (state = 1 OR ?4)
             RETURNING delivered",
        )
        .bind(id)
        .bind(signed(end))
        .bind(signed(start))
        .bind(all_written)
        .fetch_optional(w.normal().await?)
        .await;
        Ok(w.check(res)?.is_some_and(|(d,)| d == 1))
    }

    /// A batch of blobs expired at `now`, oldest first.
    pub async fn expired(&self, now: u64) -> Result<Vec<String>> {
        let ids: Vec<(String,)> =
            sqlx::query_as("SELECT id FROM blobs WHERE expires <= ? ORDER BY expires LIMIT ?")
                .bind(signed(now))
                .bind(SWEEP_BATCH)
                .fetch_all(&self.pool)
                .await?;
        Ok(ids.into_iter().map(|(id,)| id).collect())
    }

    /// A batch of partial uploads with no progress since `cutoff`, longest idle first.
    pub async fn idle_partials(&self, cutoff: u64) -> Result<Vec<String>> {
        let ids: Vec<(String,)> = sqlx::query_as(
            "SELECT id FROM blobs WHERE state = 0 AND last_progress <= ?
             ORDER BY last_progress LIMIT ?",
        )
        .bind(signed(cutoff))
        .bind(SWEEP_BATCH)
        .fetch_all(&self.pool)
        .await?;
        Ok(ids.into_iter().map(|(id,)| id).collect())
    }

    /// Delete up to `limit` of the oldest tombstones from at or before `upto`; how many went.
    pub async fn delete_oldest_tombstones(&self, upto: u64, limit: i64) -> Result<u64> {
        let mut w = self.writes.lock().await;
        let res = sqlx::query(
            "DELETE FROM tombstones WHERE id IN
                (SELECT id FROM tombstones WHERE removed <= ? ORDER BY removed LIMIT ?)",
        )
        .bind(signed(upto))
        .bind(limit)
        .execute(w.normal().await?)
        .await;
        Ok(w.check(res)?.rows_affected())
    }

    pub async fn tombstone_count(&self) -> Result<u64> {
        let (count,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM tombstones")
            .fetch_one(&self.pool)
            .await?;
        Ok(unsigned(count))
    }

    pub async fn stats(&self) -> Result<StoreStats> {
        let (n, bytes, complete): (i64, Option<i64>, Option<i64>) = sqlx::query_as(
            "SELECT COUNT(*), SUM(size), SUM(CASE WHEN state = 1 THEN 1 ELSE 0 END) FROM blobs",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(StoreStats {
            blobs: unsigned(n),
            declared_bytes: unsigned(bytes.unwrap_or(0)),
            complete_blobs: unsigned(complete.unwrap_or(0)),
            tombstones: self.tombstone_count().await?,
            rehashed_bytes: 0,
        })
    }

    /// Every row, as recovery reconciles them with the files.
    pub async fn all_rows(&self) -> Result<Vec<RecoveryRow>> {
        Ok(sqlx::query_as("SELECT id, size, state, sha256 FROM blobs")
            .fetch_all(&self.pool)
            .await?)
    }

    #[cfg(test)]
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// `PRAGMA synchronous` of the normal and the durable write connection.
    #[cfg(test)]
    pub async fn write_synchronous(&self) -> Result<(i64, i64)> {
        let mut w = self.writes.lock().await;
        let mut get = async |durable: bool| -> Result<i64> {
            let conn = if durable {
                w.durable().await?
            } else {
                w.normal().await?
            };
            let (n,): (i64,) = sqlx::query_as("PRAGMA synchronous").fetch_one(conn).await?;
            Ok(n)
        };
        Ok((get(false).await?, get(true).await?))
    }
}
