//! [`commit_status`]: the outcome of a batch transaction whose `COMMIT` lost its answer, read
//! from the writer's `batch_marks` row; a transaction PostgreSQL holds on to for too long (a
//! `COMMIT` waiting for a synchronous standby that is down) is ended first.

use super::{is_lock_timeout, timed_out, Locked, IN_DOUBT_TIMEOUTS};
use sqlx::postgres::PgPool;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// "Still locked" answers after which the batch's backend is ended (each question waits for
/// the lock half the database timeout: 30 s at the default), and, once it is ended, after
/// which the batch is given up as in doubt.
pub(crate) const HELD_QUESTIONS: u32 = 3;

/// The outcome of a batch transaction whose `COMMIT` failed without an answer (the
/// connection or the server went away while it ran), read from its writer's `batch_marks` row
/// on another connection: `Some(true)` if the row holds the batch's mark (it committed),
/// `Some(false)` if not, `None` if the batch stored no mark or the database could not be asked.
/// `FOR SHARE` waits while the transaction still runs (its backend has not noticed the loss
/// yet, or its `COMMIT` is still being carried out: it holds the row's lock), so the answer is
/// final.
///
/// Each question has `limit` to be answered (a silent network hangs it, not this loop). Only
/// questions that fail (no connection, no answer) count toward giving up, after
/// [`IN_DOUBT_TIMEOUTS`] × `limit` of them. A server that answers "the row is still locked"
/// is alive and the batch still running: giving up then would answer a batch that is about to
/// commit as failed (its messages sent again: duplicates). But it may run without end (a
/// `COMMIT` waiting for a synchronous standby that is down keeps its locks), and every write
/// of the node waits behind this: after [`HELD_QUESTIONS`] such answers, or at once when
/// `stopping` is cancelled, the batch's backend is ended (`pg_terminate_backend`: a `COMMIT`
/// waiting for a standby has committed locally and stays committed, anything else rolls
/// back), and the row asked again, which then tells the final outcome. Should the row still
/// be locked [`HELD_QUESTIONS`] more times, the batch is in doubt (`None`).
///
/// Transaction ids are not used to tell: after a crash or a failover, ids whose use never
/// reached the WAL are handed out again, and `txid_status` would then tell another
/// transaction's fate. (The id only confirms that the process ended is still the batch's.)
pub(in crate::db) async fn commit_status(
    pool: &PgPool,
    batch: &Locked,
    limit: Duration,
    stopping: &CancellationToken,
) -> Option<bool> {
    let mark = batch.mark?;
    let mut failing = limit * IN_DOUBT_TIMEOUTS;
    let mut pause = Duration::from_millis(50);
    let mut held = 0;
    let mut ended = false;
    loop {
        let started = tokio::time::Instant::now();
        let asking = ask_mark(pool, mark.writer, limit);
        tokio::pin!(asking);
        // Stopping ends the batch while the question waits for it: the question then gets
        // its answer (never cancelled half-way: its connection would be left mid-transaction).
        let asked = tokio::select! {
            asked = &mut asking => asked,
            _ = stopping.cancelled(), if !ended => {
                ended = end_backend(pool, batch, limit).await;
                asking.await
            }
        };
        match asked {
            Asked::Mark(stored) => return Some(stored == Some(mark.mark)),
            Asked::Held => {
                held += 1;
                pause = Duration::from_millis(50);
                if ended {
                    if held >= HELD_QUESTIONS {
                        warn!("batch transaction {} still holds its mark after it was ended: giving up", batch.xid);
                        return None;
                    }
                    continue;
                }
                if held >= HELD_QUESTIONS || stopping.is_cancelled() {
                    warn!(
                        "batch transaction {} still holds its mark: ending its backend {}",
                        batch.xid, batch.pid
                    );
                    if !end_backend(pool, batch, limit).await {
                        return None;
                    }
                    ended = true;
                    held = 0;
                } else {
                    debug!(
                        "batch transaction {} still holds its mark: waiting",
                        batch.xid
                    );
                }
                continue;
            }
            Asked::Failed(e) => {
                warn!(
                    "asking whether batch transaction {} committed: {e}",
                    batch.xid
                );
                if stopping.is_cancelled() {
                    return None;
                }
            }
        }
        let spent = started.elapsed() + pause;
        if spent >= failing {
            return None;
        }
        failing -= spent;
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stopping.cancelled() => return None,
        }
        pause = (pause * 2).min(Duration::from_secs(2));
    }
}

/// Ends the batch's backend, if it still runs the batch's transaction (its process id may
/// have been handed to another session since: the transaction id must match too). Whether
/// the batch's transaction is now over or ending (`false`: the database could not be asked).
async fn end_backend(pool: &PgPool, batch: &Locked, limit: Duration) -> bool {
    let mut conn = match tokio::time::timeout(limit, pool.acquire()).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            warn!("ending batch backend {}: {e}", batch.pid);
            return false;
        }
        Err(_) => return false,
    };
    // `backend_xid` is the 32-bit id; `txid_current()` adds the epoch above it.
    let ended = sqlx::query_scalar::<_, bool>(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE pid = $1 AND backend_xid::text::bigint = $2 % 4294967296",
    )
    .bind(batch.pid)
    .bind(batch.xid)
    .fetch_optional(&mut *conn);
    match tokio::time::timeout(limit, ended).await {
        Ok(Ok(Some(true))) => true,
        // Not found: the transaction has ended by itself since.
        Ok(Ok(None)) => true,
        Ok(Ok(Some(false))) => {
            warn!("PostgreSQL refused to end batch backend {}", batch.pid);
            false
        }
        Ok(Err(e)) => {
            warn!("ending batch backend {}: {e}", batch.pid);
            false
        }
        Err(_) => {
            drop(conn.detach());
            false
        }
    }
}

/// What one question of [`commit_status`] learnt.
enum Asked {
    /// The writer's row holds this mark (none: the row is gone).
    Mark(Option<i64>),
    /// The server answered that the row is still locked (the batch still runs).
    Held,
    /// No connection or no answer within the limit.
    Failed(sqlx::Error),
}

/// Reads `writer`'s mark under `FOR SHARE` on a connection of its own, all within `limit`.
/// The lock is waited for at most half of it (`lock_timeout`, local to the question), so a
/// live server answers "still locked" before the limit, and a silence means a failure.
async fn ask_mark(pool: &PgPool, writer: i64, limit: Duration) -> Asked {
    let mut conn = match tokio::time::timeout(limit, pool.acquire()).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => return Asked::Failed(e),
        Err(_) => return Asked::Failed(timed_out()),
    };
    let lock_wait = format!("{}ms", (limit / 2).as_millis().max(1));
    let asked = async {
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        sqlx::query("SELECT set_config('lock_timeout', $1, true)")
            .bind(&lock_wait)
            .execute(&mut *tx)
            .await?;
        let stored: Option<i64> =
            sqlx::query_scalar("SELECT mark FROM batch_marks WHERE writer = $1 FOR SHARE")
                .bind(writer)
                .fetch_optional(&mut *tx)
                .await?;
        tx.rollback().await?;
        Ok::<_, sqlx::Error>(stored)
    };
    match tokio::time::timeout(limit, asked).await {
        Ok(Ok(stored)) => Asked::Mark(stored),
        Ok(Err(e)) if is_lock_timeout(&e) => Asked::Held,
        Ok(Err(e)) => Asked::Failed(e),
        Err(_) => {
            // Out of the pool without a goodbye: its state is unknown, and a silent network
            // would hang sqlx's check of it.
            drop(conn.detach());
            Asked::Failed(timed_out())
        }
    }
}
