//! Leader job: forgets what no node needs any more. On one node an acknowledged (or read)
//! message loses its body at once and a receipt delivered live is deleted at once; in a
//! cluster other nodes' readers may not have pushed them to their sessions yet (a user's
//! second session on another node would get an empty message, or no receipt). So the store
//! only marks them (`db::messages::clear_body`, `delete_receipts`), every node records how far
//! its reader has got (`cluster_nodes.fed_*`, with its heartbeat), and this job clears the
//! bodies and deletes the receipts at or below the lowest position of all registered nodes. A
//! node whose reader has not reported yet holds everything back (NULL counts as 0); a dead
//! node stops holding anything back once it is reaped. An acknowledgement of a message every
//! node has already passed clears the body itself (`db::postgres::bulk::ack_messages`): this
//! job only sees the rest.

use sqlx::PgPool;

/// Rows changed per statement (the job repeats while a statement changed this many).
const STEP: i64 = 5000;
/// Most statements per run (the rest waits for the next run).
const MAX_STEPS: usize = 40;

/// One run; returns the bodies cleared and the receipts deleted.
pub(crate) async fn run(pool: &PgPool) -> Result<(u64, u64), sqlx::Error> {
    let (messages, receipts): (Option<i64>, Option<i64>) = sqlx::query_as(
        "SELECT min(COALESCE(fed_messages, 0)), min(COALESCE(fed_receipts, 0)) FROM cluster_nodes",
    )
    .fetch_one(pool)
    .await?;
    let (mut cleared, mut deleted) = (0, 0);
    if let Some(floor) = messages.filter(|f| *f > 0) {
        for _ in 0..MAX_STEPS {
            let n = sqlx::query(
                "UPDATE messages SET body = '' WHERE seq IN (SELECT seq FROM messages \
                 WHERE pending = 0 AND body <> '' AND seq <= $1 ORDER BY seq LIMIT $2)",
            )
            .bind(floor)
            .bind(STEP)
            .execute(pool)
            .await?
            .rows_affected();
            cleared += n;
            if n < STEP as u64 {
                break;
            }
        }
    }
    if let Some(floor) = receipts.filter(|f| *f > 0) {
        for _ in 0..MAX_STEPS {
            let n = sqlx::query(
                "DELETE FROM receipts WHERE seq IN (SELECT seq FROM receipts \
                 WHERE delivered = 1 AND seq <= $1 ORDER BY seq LIMIT $2)",
            )
            .bind(floor)
            .bind(STEP)
            .execute(pool)
            .await?
            .rows_affected();
            deleted += n;
            if n < STEP as u64 {
                break;
            }
        }
    }
    Ok((cleared, deleted))
}
