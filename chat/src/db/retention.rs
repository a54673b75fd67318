//! Bounded message storage (PROTOCOL.md §5.6): the per-recipient cap on pending messages,
//! checked once per group-commit batch, and the retention step the server's purge job runs
//! through the writer — pending messages past their time to live expire, and what delivered
//! messages leave behind for read receipts (their text is already gone at acknowledgement) is
//! forgotten after the receipt retention. Each step removes a bounded number of rows, so the
//! writer is never held for long.

use super::batch::{placeholders, IN_CHUNK};
use super::Tx;
use super::{Db, DbError, Outcome, WriteOp};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Bound on the recipients [`PendingBounds`] remembers (forgotten all at once beyond it).
const MAX_BOUNDS: usize = 1_000_000;

/// Per recipient, an upper bound of their pending messages: the count last read from the
/// database plus every message let through since (acknowledgements, expiry and failed commits
/// only lower the true count). Only a recipient whose bound would reach the cap costs a query
/// (which replaces the bound with the true count), so the cap adds no round trip to most batches.
#[derive(Debug, Clone, Default)]
pub(super) struct PendingBounds(Arc<Mutex<HashMap<String, i64>>>);

impl PendingBounds {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, i64>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What one retention step removed.
#[derive(Debug, Clone, Default)]
pub(crate) struct Purged {
    /// Pending messages that expired, as `(id, sender)`: their senders are told.
    pub expired: Vec<(String, String)>,
    /// Delivered messages and receipts forgotten.
    pub forgotten: u64,
    /// Whether a kind hit the step's limit (run another step now).
    pub more: bool,
}

/// Operations of a batch that go on to be applied, with their positions.
type Kept = Vec<(usize, WriteOp)>;
/// Per position, the answer already decided (`None`: applied later).
type Decided = Vec<Option<Result<Outcome, DbError>>>;

impl Db {
    /// Answers [`Outcome::QueueFull`] for new messages whose recipient already has the most
    /// pending messages allowed (counting the batch's own earlier messages); the rest go on.
    /// Runs in the writer task only, between batches, on SQLite (one writer: its bounds in
    /// memory are exact upper bounds). On PostgreSQL every op goes on: several nodes write,
    /// so the cap is checked inside the batch transaction ([`Db::refuse_full_in_tx`]).
    pub(super) async fn refuse_full_queues(
        &self,
        ops: Vec<WriteOp>,
    ) -> Result<(Kept, Decided), DbError> {
        let cap = self.pending_cap;
        if cap <= 0
            || matches!(self.backend, super::Backend::Postgres(_))
            || !ops.iter().any(|op| matches!(op, WriteOp::InsertMessage(_)))
        {
            return Ok(keep_all(ops));
        }
        let in_batch = batch_counts(&ops);
        // Recipients whose bound (unknown: no bound) plus this batch's messages reach the cap.
        let recount: Vec<&str> = {
            let bounds = self.pending_bounds.lock();
            in_batch
                .iter()
                .filter(|(r, n)| bounds.get(**r).is_none_or(|b| b + **n > cap))
                .map(|(r, _)| *r)
                .collect()
        };
        let mut counts: HashMap<String, i64> = HashMap::with_capacity(recount.len());
        for chunk in recount.chunks(IN_CHUNK) {
            let sql = pending_count_sql(self.param_style(), chunk.len());
            let found: Vec<(String, i64)> = writes!(self, w => {
                let mut q = sqlx::query_as(sqlx::AssertSqlSafe(sql));
                for r in chunk {
                    q = q.bind(*r);
                }
                q.persistent(false).fetch_all(w).await
            })?;
            counts.extend(found);
        }
        let mut bounds = self.pending_bounds.lock();
        if bounds.len() + recount.len() > MAX_BOUNDS {
            bounds.clear();
        }
        for r in recount {
            bounds.insert(r.to_owned(), counts.get(r).copied().unwrap_or(0));
        }
        Ok(refuse_over(ops, &mut bounds, cap))
    }

    /// PostgreSQL: the cap checked inside the batch transaction `tx`, which holds the batch
    /// lock (`lock_batch`), so no other node's batch commits meanwhile: the pending counts
    /// read here (`pending_counts`, kept by triggers) are exact for all nodes, and N nodes
    /// cannot let N times the cap through.
    pub(super) async fn refuse_full_in_tx(
        &self,
        tx: &mut sqlx::PgConnection,
        ops: Vec<WriteOp>,
    ) -> Result<(Kept, Decided), DbError> {
        let cap = self.pending_cap;
        if cap <= 0 || !ops.iter().any(|op| matches!(op, WriteOp::InsertMessage(_))) {
            return Ok(keep_all(ops));
        }
        let recipients: Vec<&str> = batch_counts(&ops).into_keys().collect();
        // One index lookup per recipient: the counters the triggers of migration 0121 keep
        // (counting the rows here cost up to the cap per recipient, under the lock).
        let found: Vec<(String, i64)> =
            sqlx::query_as("SELECT recipient, n FROM pending_counts WHERE recipient = ANY($1)")
                .bind(&recipients)
                .fetch_all(&mut *tx)
                .await?;
        let mut counts: HashMap<String, i64> = found.into_iter().collect();
        Ok(refuse_over(ops, &mut counts, cap))
    }
}

/// Every op goes on.
fn keep_all(ops: Vec<WriteOp>) -> (Kept, Decided) {
    let mut decided: Decided = Vec::with_capacity(ops.len());
    decided.resize_with(ops.len(), || None);
    (ops.into_iter().enumerate().collect(), decided)
}

/// New messages per recipient in the batch.
fn batch_counts(ops: &[WriteOp]) -> HashMap<&str, i64> {
    let mut in_batch: HashMap<&str, i64> = HashMap::new();
    for op in ops {
        if let WriteOp::InsertMessage(m) = op {
            *in_batch.entry(m.recipient.as_str()).or_insert(0) += 1;
        }
    }
    in_batch
}

/// Pending messages of `n` recipients (bound in order).
fn pending_count_sql(style: super::batch::ParamStyle, n: usize) -> String {
    format!(
        "SELECT recipient, COUNT(*) FROM messages WHERE pending = 1 \
         AND recipient IN ({}) GROUP BY recipient",
        placeholders(style, n, 1, 1)
    )
}

/// Refuses the new messages that would take their recipient's pending count (`counts`,
/// missing: none) past `cap`, counting the batch's earlier messages; `counts` is updated.
fn refuse_over(ops: Vec<WriteOp>, counts: &mut HashMap<String, i64>, cap: i64) -> (Kept, Decided) {
    let mut decided: Decided = Vec::with_capacity(ops.len());
    decided.resize_with(ops.len(), || None);
    let mut kept = Vec::with_capacity(ops.len());
    for (i, op) in ops.into_iter().enumerate() {
        if let WriteOp::InsertMessage(m) = &op {
            let n = counts.entry(m.recipient.clone()).or_insert(0);
            if *n >= cap {
                decided[i] = Some(Ok(Outcome::QueueFull));
                continue;
            }
            *n += 1;
        }
        kept.push((i, op));
    }
    (kept, decided)
}

/// One retention step inside the writer's transaction.
pub(super) async fn purge(
    tx: &mut Tx<'_>,
    expire_before: i64,
    forget_before: i64,
    limit: i64,
) -> Result<Purged, DbError> {
    let rows: Vec<(i64, String, String)> = on!(tx, c => sqlx::query_as(
        "SELECT seq, id, sender FROM messages WHERE pending = 1 AND at < $1 ORDER BY at LIMIT $2",
    )
    .bind(expire_before)
    .bind(limit)
    .fetch_all(c)
    .await)?;
    for chunk in rows.chunks(IN_CHUNK) {
        let sql = format!(
            "DELETE FROM messages WHERE seq IN ({})",
            placeholders(tx.param_style(), chunk.len(), 1, 1)
        );
        on!(tx, c => {
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (seq, _, _) in chunk {
                q = q.bind(*seq);
            }
            q.persistent(false).execute(c).await.map(|r| r.rows_affected())
        })?;
    }
    let mut more = rows.len() as i64 >= limit;
    let delivered = on!(tx, c => sqlx::query(
        "DELETE FROM messages WHERE seq IN \
         (SELECT seq FROM messages WHERE pending = 0 AND at < $1 LIMIT $2)",
    )
    .bind(forget_before)
    .bind(limit)
    .execute(c)
    .await.map(|r| r.rows_affected()))?;
    let receipts = on!(tx, c => sqlx::query(
        "DELETE FROM receipts WHERE seq IN (SELECT seq FROM receipts WHERE at < $1 LIMIT $2)",
    )
    .bind(forget_before)
    .bind(limit)
    .execute(c)
    .await.map(|r| r.rows_affected()))?;
    more |= delivered as i64 >= limit || receipts as i64 >= limit;
    Ok(Purged {
        expired: rows
            .into_iter()
            .map(|(_, id, sender)| (id, sender))
            .collect(),
        forgotten: delivered + receipts,
        more,
    })
}
