//! The group-commit batch: one transaction per batch, multi-row statements for runs of new
//! messages and acknowledgements, and a savepoint per other operation (and per multi-row
//! statement). The same code runs on either backend; how the transaction begins (and where
//! message sequence numbers come from) is per backend, and SQLite first tries its one-trip
//! batch (`sqlite::hot`). Failure handling is here too: see [`Db::apply_batch`].

use super::apply::apply;
use super::{Backend, Db, DbError, InDoubtOutcomes, Outcome, StoredMessage, Tx, WriteOp};

use std::collections::HashSet;

/// One answer per op of a batch, `None` until decided.
type Answers = Vec<Option<Result<Outcome, DbError>>>;

impl Db {
    /// Applies a batch of writes in one transaction and commits once. Runs of messages and
    /// acknowledgements (the hot path) are validated up front and written with one multi-row
    /// statement per chunk; every other op runs in its own savepoint, so a failing op does not
    /// fail the others. Returns one result per op, in order.
    ///
    /// An error that may have undone more than its own statement (a full disk, an I/O error,
    /// a lost connection, a failed `COMMIT`: the whole transaction may then be rolled back)
    /// fails the whole batch, and the write connection is replaced: whatever state the
    /// failure left it in (an open transaction that later "commits" would only release a
    /// savepoint of) goes with it.
    pub(crate) async fn apply_batch(
        &self,
        ops: Vec<WriteOp>,
    ) -> Result<Vec<Result<Outcome, DbError>>, DbError> {
        let r = match self.refuse_full_queues(ops).await {
            Ok((kept, mut out)) => {
                let (idx, ops): (Vec<usize>, Vec<WriteOp>) = kept.into_iter().unzip();
                match self.apply_batch_inner(ops).await {
                    Ok(done) => {
                        for (i, r) in idx.into_iter().zip(done) {
                            out[i] = Some(r);
                        }
                        Ok(out
                            .into_iter()
                            .map(|o| o.unwrap_or(Err(DbError::WriterGone)))
                            .collect())
                    }
                    // The outcomes in the order of the ops asked for (refused ones: none).
                    Err(DbError::InDoubt(e, InDoubtOutcomes(kept))) => {
                        let mut would = vec![None; out.len()];
                        for (i, o) in idx.into_iter().zip(kept) {
                            would[i] = o;
                        }
                        Err(DbError::InDoubt(e, InDoubtOutcomes(would)))
                    }
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        };
        if r.is_err() {
            // Users seen inside a transaction that did not commit may not exist.
            self.known_users().clear();
            match &self.backend {
                Backend::Sqlite(s) => {
                    if let Ok(conn) = s.writes.acquire().await {
                        let _ = conn.close().await;
                    }
                }
                // `apply_postgres_batch` has already dropped a connection it failed on.
                Backend::Postgres(_) => {}
            }
        }
        r
    }

    async fn apply_batch_inner(
        &self,
        mut ops: Vec<WriteOp>,
    ) -> Result<Vec<Result<Outcome, DbError>>, DbError> {
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        let messages = ops
            .iter()
            .filter(|op| matches!(op, WriteOp::InsertMessage(_)))
            .count();
        let started = std::time::Instant::now();
        let out = match &self.backend {
            Backend::Sqlite(s) => {
                if let Some(done) = self.apply_hot_batch(s, &mut ops).await? {
                    return Ok(done);
                }
                number_messages(&mut ops, s.allocate_message_seqs(messages));
                let mut tx = s.writes.begin().await?;
                let out = self.apply_ops(&mut Tx::Sqlite(&mut tx), ops).await?;
                tx.commit().await?;
                out
            }
            Backend::Postgres(s) => self.apply_postgres_batch(s, ops, messages).await?,
        };
        tracing::debug!(
            ops = out.len(),
            us = started.elapsed().as_micros() as u64,
            "batch"
        );
        Ok(out
            .into_iter()
            .map(|o| o.unwrap_or(Err(DbError::WriterGone)))
            .collect())
    }

    /// The PostgreSQL batch. Everything up to the `COMMIT`'s answer must happen within the
    /// database timeout: a silent network would hang it (and every write of this node behind
    /// it) until the kernel gives the connection up. Cut off before its `COMMIT` was sent, the
    /// batch did not commit (the server rolls it back when it ends the session); cut off
    /// while the `COMMIT` was on its way, it is in doubt like a `COMMIT` whose answer was lost,
    /// and its mark tells ([`super::postgres::commit_status`]). A connection that failed or
    /// timed out is taken out of the pool without a goodbye (sqlx would first ping it, with no
    /// deadline).
    async fn apply_postgres_batch(
        &self,
        s: &super::postgres::Store,
        mut ops: Vec<WriteOp>,
        messages: usize,
    ) -> Result<Answers, DbError> {
        use super::postgres::timed_out;
        let limit = s.timeout();
        let deadline = tokio::time::Instant::now() + limit;
        let mut conn = match tokio::time::timeout_at(deadline, s.writes.acquire()).await {
            Ok(conn) => conn?,
            Err(_) => return Err(timed_out().into()),
        };
        match tokio::time::timeout_at(deadline, s.restore_mark_row()).await {
            Ok(restored) => restored?,
            Err(_) => return Err(timed_out().into()),
        }
        let node = s.node.load(std::sync::atomic::Ordering::Relaxed);
        let mark = Some(s.next_mark());
        let durability = super::postgres::Durability::of(&ops);
        let work = async {
            let mut tx = sqlx::Connection::begin(&mut *conn).await?;
            // The batch lock first (every node's batches wait for it), which also reserves
            // numbers for all the batch's messages and stores the batch's mark (what tells,
            // if the COMMIT's answer is lost, whether it committed), and, for a batch of
            // acknowledgements alone, lets its COMMIT skip the fsync; then the pending cap is
            // checked under it. A refused message leaves a hole in the numbers.
            let locked =
                super::postgres::lock_batch_as(&mut tx, messages, node, mark, durability).await?;
            if mark.is_some() && locked.mark.is_none() {
                tracing::warn!("this writer's batch_marks row was purged: adding it again");
                s.mark_row_missing
                    .store(true, std::sync::atomic::Ordering::Relaxed);
            }
            number_messages(&mut ops, locked.first);
            let (idx, kept, mut refused) = if self.pending_cap > 0 && messages > 0 {
                let (kept, refused) = self.refuse_full_in_tx(&mut tx, ops).await?;
                let (idx, kept): (Vec<usize>, Vec<WriteOp>) = kept.into_iter().unzip();
                (Some(idx), kept, refused)
            } else {
                (None, ops, Vec::new())
            };
            let mut out = self.apply_ops(&mut Tx::Postgres(&mut tx), kept).await?;
            if let Some(idx) = idx {
                for (i, r) in idx.into_iter().zip(out) {
                    refused[i] = r;
                }
                out = refused;
            }
            Ok::<_, DbError>((tx, locked, out))
        };
        // (The transaction borrows `conn`: decided inside this block, acted on after it.)
        let outcome = {
            let done = tokio::time::timeout_at(deadline, work)
                .await
                .unwrap_or_else(|_| Err(timed_out().into()));
            match done {
                Ok((tx, locked, out)) => {
                    #[cfg(test)]
                    let (tx, locked) = match s.take_lost_commit() {
                        None => (tx, locked),
                        Some(commit) => {
                            // A fault injected by a test: the answer is lost, and so is
                            // the way to tell the outcome (as `commit_status` gives up).
                            let _ = if commit {
                                tx.commit().await
                            } else {
                                tx.rollback().await
                            };
                            let would = out.into_iter().map(|o| o.and_then(|r| r.ok())).collect();
                            return Err(DbError::InDoubt(
                                "injected: COMMIT answer lost".into(),
                                InDoubtOutcomes(would),
                            ));
                        }
                    };
                    match tokio::time::timeout_at(deadline, tx.commit()).await {
                        Ok(Ok(())) => Ok((out, None)),
                        Ok(Err(e)) => Ok((out, Some((e, locked)))),
                        Err(_) => Ok((out, Some((timed_out(), locked)))),
                    }
                }
                Err(e) => Err(e),
            }
        };
        let (out, lost) = match outcome {
            Ok(done) => done,
            Err(e) => {
                drop(conn.detach());
                return Err(e);
            }
        };
        if let Some((e, locked)) = lost {
            drop(conn.detach());
            // The COMMIT may have been carried out with its answer lost: what the clients
            // are told must match what is stored (a "failed" message that is in fact stored
            // would be sent again by its user, and arrive twice).
            match super::postgres::commit_status(&s.pool, &locked, limit, &s.stopping).await {
                Some(true) => {
                    tracing::warn!("batch COMMIT failed ({e}) but the transaction committed")
                }
                Some(false) => return Err(e.into()),
                None => {
                    let would = out.into_iter().map(|o| o.and_then(|r| r.ok())).collect();
                    return Err(DbError::InDoubt(e.to_string(), InDoubtOutcomes(would)));
                }
            }
        }
        Ok(out)
    }

    /// Applies the ops inside the open transaction `tx`.
    async fn apply_ops(&self, tx: &mut Tx<'_>, ops: Vec<WriteOp>) -> Result<Answers, DbError> {
        let mut out: Answers = Vec::with_capacity(ops.len());
        out.resize_with(ops.len(), || None);
        let mut bulk = Bulk::default();
        for (i, op) in ops.into_iter().enumerate() {
            match op {
                WriteOp::InsertMessage(m) => bulk.messages.push((i, m)),
                WriteOp::Ack { id, recipient } => bulk.acks.push((i, id, recipient)),
                op => {
                    self.flush_bulk(tx, &mut bulk, &mut out).await?;
                    let created = match &op {
                        WriteOp::CreateUser { login, .. } => Some(login.clone()),
                        _ => None,
                    };
                    savepoint(tx).await?;
                    match apply(tx, op).await {
                        Ok(o) => {
                            release(tx).await?;
                            if let (Some(login), Outcome::Done) = (created, &o) {
                                self.known_users().insert(login);
                            }
                            out[i] = Some(Ok(o));
                        }
                        Err(DbError::Sql(e)) if statement_only(&e) => {
                            roll_back(tx).await?;
                            out[i] = Some(Err(DbError::Sql(e)));
                        }
                        // The transaction itself may be gone: fail the batch.
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        self.flush_bulk(tx, &mut bulk, &mut out).await?;
        Ok(out)
    }

    pub(super) fn known_users(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.known.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// This node's id and how far its cluster reader has passed (PostgreSQL acknowledgements,
    /// `bulk::ack_messages`).
    fn ack_position(&self) -> (i64, i64) {
        match &self.backend {
            Backend::Postgres(s) => (
                s.node.load(std::sync::atomic::Ordering::Relaxed),
                s.passed.load(std::sync::atomic::Ordering::Relaxed),
            ),
            Backend::Sqlite(_) => (0, 0),
        }
    }

    /// Writes the accumulated messages and acknowledgements.
    async fn flush_bulk(
        &self,
        tx: &mut Tx<'_>,
        bulk: &mut Bulk,
        out: &mut [Option<Result<Outcome, DbError>>],
    ) -> Result<(), DbError> {
        if !bulk.messages.is_empty() {
            let messages = std::mem::take(&mut bulk.messages);
            // Which recipients exist: a cache of known users (users are never deleted), then
            // one query for the rest.
            let unknown: Vec<String> = {
                let known = self.known_users();
                let mut v: Vec<String> = messages
                    .iter()
                    .filter(|(_, m)| !known.contains(&m.recipient))
                    .map(|(_, m)| m.recipient.clone())
                    .collect();
                v.sort_unstable();
                v.dedup();
                v
            };
            for chunk in unknown.chunks(IN_CHUNK) {
                let sql = format!(
                    "SELECT login FROM users WHERE login IN ({})",
                    placeholders(tx.param_style(), chunk.len(), 1, 1)
                );
                let found: Vec<(String,)> = on!(tx, c => {
                    let mut q = sqlx::query_as(sqlx::AssertSqlSafe(sql));
                    for l in chunk {
                        q = q.bind(l);
                    }
                    q.persistent(false).fetch_all(c).await
                })?;
                let mut known = self.known_users();
                if known.len() > MAX_KNOWN_USERS {
                    known.clear();
                }
                known.extend(found.into_iter().map(|r| r.0));
            }
            let mut valid = Vec::with_capacity(messages.len());
            {
                let known = self.known_users();
                for (i, m) in messages {
                    if known.contains(&m.recipient) {
                        valid.push((i, m));
                    } else {
                        out[i] = Some(Ok(Outcome::UnknownUser));
                    }
                }
            }
            let rows = match tx {
                Tx::Sqlite(_) => ROW_CHUNK,
                Tx::Postgres(_) => super::postgres::bulk::ROWS,
            };
            let chunks = valid.len().div_ceil(rows);
            let mut acked = Vec::new();
            for (k, chunk) in valid.chunks(rows).enumerate() {
                // A message whose id is taken (the same message stored through another node
                // or link meanwhile) is skipped and answered alone: a unique violation would
                // fail the whole chunk, other users' messages too. Any other constraint
                // failure is rolled back on its own (to the savepoint); the transaction goes on.
                // On PostgreSQL the statement cannot raise one (its numbers were reserved under
                // the batch lock, no column is NULL, `messages` has no foreign key or check), so
                // it runs without the savepoint's two round trips: were it to fail after all,
                // the batch fails and its clients send again (nothing was acknowledged).
                let guarded = matches!(tx, Tx::Sqlite(_));
                if guarded {
                    savepoint(tx).await?;
                }
                let r: Result<Vec<i64>, sqlx::Error> = match tx {
                    Tx::Sqlite(c) => {
                        let sql = format!(
                            "INSERT INTO messages (seq, id, sender, recipient, at, body) VALUES {} \
                             ON CONFLICT (id) DO NOTHING RETURNING seq",
                            placeholders(ParamStyle::InOrder, chunk.len(), 6, 1)
                        );
                        let mut q = sqlx::query_as::<_, (i64,)>(sqlx::AssertSqlSafe(sql));
                        for (_, m) in chunk {
                            q = q
                                .bind(m.seq)
                                .bind(&m.id)
                                .bind(&m.sender)
                                .bind(&m.recipient)
                                .bind(m.at)
                                .bind(&m.text);
                        }
                        q.persistent(chunk.len() == ROW_CHUNK)
                            .fetch_all(&mut **c)
                            .await
                            .map(|rows| rows.into_iter().map(|(seq,)| seq).collect())
                    }
                    Tx::Postgres(c) => {
                        // The batch's acknowledgements ride along with its last insert.
                        if k + 1 == chunks && bulk.acks.len() <= rows {
                            acked = std::mem::take(&mut bulk.acks);
                        }
                        let (node, passed) = self.ack_position();
                        super::postgres::bulk::insert_messages_acking(
                            c, chunk, &acked, node, passed,
                        )
                        .await
                    }
                };
                let inserted = match r {
                    Ok(rows) => rows,
                    Err(e) => {
                        if !guarded || !statement_only(&e) {
                            return Err(e.into());
                        }
                        roll_back(tx).await?;
                        for (i, _) in chunk {
                            out[*i] = Some(Err(DbError::Sql(sqlx::Error::Protocol(e.to_string()))));
                        }
                        continue;
                    }
                };
                if guarded {
                    release(tx).await?;
                }
                let inserted: HashSet<i64> = inserted.into_iter().collect();
                for (i, m) in chunk {
                    out[*i] = Some(if inserted.contains(&m.seq) {
                        Ok(Outcome::Stored(m.seq))
                    } else {
                        Err(DbError::Sql(sqlx::Error::Protocol(format!(
                            "message id {} is already stored",
                            m.id
                        ))))
                    });
                }
            }
            for (i, _, _) in acked {
                out[i] = Some(Ok(Outcome::Done));
            }
        }
        if !bulk.acks.is_empty() {
            let acks = std::mem::take(&mut bulk.acks);
            let rows = match tx {
                Tx::Sqlite(_) => IN_CHUNK / 2,
                Tx::Postgres(_) => super::postgres::bulk::ROWS,
            };
            for chunk in acks.chunks(rows) {
                match tx {
                    Tx::Sqlite(c) => {
                        // `id IN (…)` uses the unique index; the second test keeps each id to
                        // its own recipient (logins never contain a space, so the pair is
                        // unambiguous).
                        let sql = format!(
                            "UPDATE messages SET pending = 0, body = '' WHERE id IN ({}) \
                             AND (id || ' ' || recipient) IN ({})",
                            placeholders(ParamStyle::InOrder, chunk.len(), 1, 1),
                            placeholders(ParamStyle::InOrder, chunk.len(), 1, chunk.len() + 1)
                        );
                        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
                        for (_, id, _) in chunk {
                            q = q.bind(id);
                        }
                        for (_, id, recipient) in chunk {
                            q = q.bind(format!("{id} {recipient}"));
                        }
                        q.persistent(false).execute(&mut **c).await?;
                    }
                    Tx::Postgres(c) => {
                        let (node, passed) = self.ack_position();
                        super::postgres::bulk::ack_messages(c, chunk, node, passed).await?;
                    }
                }
                for (i, _, _) in chunk {
                    out[*i] = Some(Ok(Outcome::Done));
                }
            }
        }
        Ok(())
    }
}

/// Rows per multi-row INSERT (6 parameters each, well under SQLite's parameter limit).
pub(super) const ROW_CHUNK: usize = 256;
/// Values per `IN (…)` list.
pub(super) const IN_CHUNK: usize = 1024;
/// Bound on the known-users cache (cleared when exceeded).
const MAX_KNOWN_USERS: usize = 1_000_000;

/// Hot-path writes of a batch waiting to be written together.
#[derive(Default)]
struct Bulk {
    messages: Vec<(usize, StoredMessage)>,
    acks: Vec<(usize, String, String)>,
}

/// Whether a failed statement was undone on its own, leaving the transaction intact (a row
/// violating a constraint). Any other failure (full disk, I/O, out of memory) may have rolled
/// back the whole transaction.
pub(super) fn statement_only(e: &sqlx::Error) -> bool {
    use sqlx::error::ErrorKind;
    matches!(e, sqlx::Error::Database(d) if matches!(
        d.kind(),
        ErrorKind::UniqueViolation
            | ErrorKind::ForeignKeyViolation
            | ErrorKind::NotNullViolation
            | ErrorKind::CheckViolation
    ))
}

/// How a backend names the N-th argument of a statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ParamStyle {
    /// `$N` (PostgreSQL).
    Numbered,
    /// `?`, taken in order (SQLite). sqlx-sqlite looks up the name of every `$N` argument, and
    /// SQLite finds a name by a linear scan, so binding a statement costs the square of its
    /// argument count: with `$N`, a 500-row insert spent a third of the server's CPU there.
    InOrder,
}

impl super::Tx<'_> {
    /// How this transaction's backend names arguments.
    pub(super) fn param_style(&self) -> ParamStyle {
        match self {
            super::Tx::Sqlite(_) => ParamStyle::InOrder,
            super::Tx::Postgres(_) => ParamStyle::Numbered,
        }
    }
}

impl super::Db {
    /// How this store's backend names arguments.
    pub(super) fn param_style(&self) -> ParamStyle {
        match self.backend {
            super::Backend::Sqlite(_) => ParamStyle::InOrder,
            super::Backend::Postgres(_) => ParamStyle::Numbered,
        }
    }
}

/// `($1, $2), ($3, $4)` for `rows` rows of `cols` columns (`$1, $2` for one column),
/// numbered from `first`; with [`ParamStyle::InOrder`] `(?, ?), (?, ?)`, so the statement's
/// other arguments must not be named, and the placeholders must come in argument order.
pub(super) fn placeholders(style: ParamStyle, rows: usize, cols: usize, first: usize) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(rows * cols * 6);
    let mut n = first;
    for k in 0..rows {
        if k > 0 {
            s.push_str(", ");
        }
        if cols > 1 {
            s.push('(');
        }
        for c in 0..cols {
            if c > 0 {
                s.push_str(", ");
            }
            match style {
                ParamStyle::Numbered => {
                    let _ = write!(s, "${n}");
                }
                ParamStyle::InOrder => s.push('?'),
            }
            n += 1;
        }
        if cols > 1 {
            s.push(')');
        }
    }
    s
}

/// Numbers the batch's new messages in op order from `first` (commit order: the caller holds
/// the backend's batch serialisation).
fn number_messages(ops: &mut [WriteOp], first: i64) {
    let mut next = first;
    for op in ops {
        if let WriteOp::InsertMessage(m) = op {
            m.seq = next;
            next += 1;
        }
    }
}

/// Opens the savepoint that one op (or one multi-row statement) runs in.
async fn savepoint(tx: &mut Tx<'_>) -> Result<(), sqlx::Error> {
    on!(tx, c => sqlx::query("SAVEPOINT op").execute(c).await.map(drop))
}

/// Keeps what was done since [`savepoint`].
async fn release(tx: &mut Tx<'_>) -> Result<(), sqlx::Error> {
    on!(tx, c => sqlx::query("RELEASE SAVEPOINT op").execute(c).await.map(drop))
}

/// Undoes what was done since [`savepoint`]; the transaction goes on.
async fn roll_back(tx: &mut Tx<'_>) -> Result<(), sqlx::Error> {
    on!(tx, c => {
        sqlx::query("ROLLBACK TO SAVEPOINT op").execute(&mut *c).await?;
        sqlx::query("RELEASE SAVEPOINT op").execute(c).await.map(drop)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_follow_the_backend_style() {
        assert_eq!(
            placeholders(ParamStyle::Numbered, 2, 2, 3),
            "($3, $4), ($5, $6)"
        );
        assert_eq!(placeholders(ParamStyle::Numbered, 2, 1, 1), "$1, $2");
        // SQLite: anonymous arguments, never `$N` (quadratic binding in sqlx-sqlite).
        assert_eq!(placeholders(ParamStyle::InOrder, 2, 2, 3), "(?, ?), (?, ?)");
        assert_eq!(placeholders(ParamStyle::InOrder, 3, 1, 1), "?, ?, ?");
    }
}
