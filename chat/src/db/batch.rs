//! The group-commit batch: one transaction per batch, the one-round-trip path for the common
//! batch (new messages and acknowledgements), multi-row statements for runs of them, and a
//! savepoint per other operation. Failure handling is here too: see [`Db::apply_batch`].

use super::apply::apply;
use super::{Db, DbError, Outcome, StoredMessage, WriteOp};

use sqlx::{Sqlite, Transaction};
use std::collections::HashSet;

impl Db {
    /// Applies a batch of writes in one transaction and commits once. Runs of messages and
    /// acknowledgements (the hot path) are validated up front and written with one multi-row
    /// statement per chunk; every other op runs in its own savepoint, so a failing op does not
    /// fail the others. Returns one result per op, in order.
    ///
    /// An error that may have undone more than its own statement (a full disk, an I/O error,
    /// a failed `COMMIT`: SQLite may then roll back the whole transaction) fails the whole
    /// batch, and the write connection is replaced: whatever state the failure left it in (an
    /// open transaction that later "commits" would only release a savepoint of) goes with it.
    pub(crate) async fn apply_batch(
        &self,
        ops: Vec<WriteOp>,
    ) -> Result<Vec<Result<Outcome, DbError>>, DbError> {
        let r = match self.refuse_full_queues(ops).await {
            Ok((kept, mut out)) => {
                let (idx, ops): (Vec<usize>, Vec<WriteOp>) = kept.into_iter().unzip();
                self.apply_batch_inner(ops).await.map(|done| {
                    for (i, r) in idx.into_iter().zip(done) {
                        out[i] = Some(r);
                    }
                    out.into_iter()
                        .map(|o| o.unwrap_or(Err(DbError::WriterGone)))
                        .collect()
                })
            }
            Err(e) => Err(e),
        };
        if r.is_err() {
            // Users seen inside a transaction that did not commit may not exist.
            self.known_users().clear();
            if let Ok(conn) = self.writes.acquire().await {
                let _ = conn.close().await;
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
        if let Some(done) = self.apply_hot_batch(&mut ops).await? {
            return Ok(done);
        }
        let n = ops.len();
        let mut out: Vec<Option<Result<Outcome, DbError>>> = Vec::with_capacity(n);
        out.resize_with(n, || None);
        let started = std::time::Instant::now();
        let mut tx = self.writes.begin().await?;
        let mut bulk = Bulk::default();
        for (i, op) in ops.into_iter().enumerate() {
            match op {
                WriteOp::InsertMessage(mut m) => {
                    m.seq = self.next_message_seq();
                    bulk.messages.push((i, m));
                }
                WriteOp::Ack { id, recipient } => bulk.acks.push((i, id, recipient)),
                op => {
                    self.flush_bulk(&mut tx, &mut bulk, &mut out).await?;
                    let created = match &op {
                        WriteOp::CreateUser { login, .. } => Some(login.clone()),
                        _ => None,
                    };
                    let mut sp = sqlx::Connection::begin(&mut *tx).await?;
                    match apply(&mut sp, op).await {
                        Ok(o) => {
                            sp.commit().await?;
                            if let (Some(login), Outcome::Done) = (created, &o) {
                                self.known_users().insert(login);
                            }
                            out[i] = Some(Ok(o));
                        }
                        Err(DbError::Sql(e)) if statement_only(&e) => {
                            sp.rollback().await?;
                            out[i] = Some(Err(DbError::Sql(e)));
                        }
                        // The transaction itself may be gone: fail the batch.
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        self.flush_bulk(&mut tx, &mut bulk, &mut out).await?;
        let applied = started.elapsed();
        tx.commit().await?;
        tracing::debug!(
            ops = n,
            apply_us = applied.as_micros() as u64,
            commit_us = (started.elapsed() - applied).as_micros() as u64,
            "batch"
        );
        Ok(out
            .into_iter()
            .map(|o| o.unwrap_or(Err(DbError::WriterGone)))
            .collect())
    }

    /// The common batch — only new messages to known users and acknowledgements, each kind
    /// fitting one statement — in a single round trip to SQLite's thread: `BEGIN IMMEDIATE`,
    /// the multi-row `INSERT`, the `UPDATE` of acknowledged messages and `COMMIT` as one
    /// multi-statement query (sqlx binds `?` parameters across its statements in order). The
    /// general path takes four round trips for the same work, each a wake-up of another thread;
    /// at moderate rates those hand-offs, not SQLite, were most of a batch's time. `None`: the
    /// batch is not of that kind, or the query failed (rolled back, nothing written); the
    /// caller then takes the general path, which reports errors per operation.
    ///
    /// A failure other than a constraint on one row (a full disk, I/O) is returned as an
    /// error: the batch fails as a whole.
    async fn apply_hot_batch(
        &self,
        ops: &mut [WriteOp],
    ) -> Result<Option<Vec<Result<Outcome, DbError>>>, DbError> {
        let (mut messages, mut acks) = (0usize, 0usize);
        {
            let known = self.known_users();
            for op in ops.iter() {
                match op {
                    WriteOp::InsertMessage(m) if known.contains(&m.recipient) => messages += 1,
                    WriteOp::Ack { .. } => acks += 1,
                    _ => return Ok(None),
                }
            }
        }
        if messages > ROW_CHUNK || acks > IN_CHUNK / 2 || messages + acks == 0 {
            return Ok(None);
        }
        let mut sql = String::from("BEGIN IMMEDIATE;");
        if messages > 0 {
            sql.push_str(&format!(
                "INSERT INTO messages (seq, id, sender, recipient, at, body) VALUES {};",
                placeholders(messages, 6)
            ));
        }
        if acks > 0 {
            sql.push_str(&format!(
                "UPDATE messages SET pending = 0, body = '' WHERE id IN ({}) \
                 AND (id || ' ' || recipient) IN ({});",
                placeholders(acks, 1),
                placeholders(acks, 1)
            ));
        }
        sql.push_str("COMMIT;");
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for op in ops.iter_mut() {
            if let WriteOp::InsertMessage(m) = op {
                m.seq = self.next_message_seq();
                q = q
                    .bind(m.seq)
                    .bind(m.id.clone())
                    .bind(m.sender.clone())
                    .bind(m.recipient.clone())
                    .bind(m.at)
                    .bind(m.text.clone());
            }
        }
        let ack_pairs = ops.iter().filter_map(|op| match op {
            WriteOp::Ack { id, recipient } => Some((id, recipient)),
            _ => None,
        });
        let (ids, pairs): (Vec<_>, Vec<_>) = ack_pairs
            .map(|(id, recipient)| (id.clone(), format!("{id} {recipient}")))
            .unzip();
        for id in ids {
            q = q.bind(id);
        }
        for pair in pairs {
            q = q.bind(pair);
        }
        let started = std::time::Instant::now();
        let mut conn = self.writes.acquire().await?;
        let persistent = messages == ROW_CHUNK;
        if let Err(e) = q.persistent(persistent).execute(&mut *conn).await {
            if !statement_only(&e) {
                return Err(e.into());
            }
            tracing::debug!("one-trip batch failed, taking the general path: {e}");
            // A failure after BEGIN leaves the transaction open: close it before retrying.
            sqlx::query("ROLLBACK").execute(&mut *conn).await?;
            return Ok(None);
        }
        tracing::debug!(
            ops = ops.len(),
            commit_us = started.elapsed().as_micros() as u64,
            "batch (one trip)"
        );
        Ok(Some(
            ops.iter()
                .map(|op| match op {
                    WriteOp::InsertMessage(m) => Ok(Outcome::Stored(m.seq)),
                    _ => Ok(Outcome::Done),
                })
                .collect(),
        ))
    }

    fn next_message_seq(&self) -> i64 {
        self.message_seq
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1
    }

    fn known_users(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.known.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes the accumulated messages and acknowledgements.
    async fn flush_bulk(
        &self,
        tx: &mut Transaction<'_, Sqlite>,
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
                    placeholders(chunk.len(), 1)
                );
                let mut q = sqlx::query_as::<_, (String,)>(sqlx::AssertSqlSafe(sql));
                for l in chunk {
                    q = q.bind(l);
                }
                let found = q.persistent(false).fetch_all(&mut **tx).await?;
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
            for chunk in valid.chunks(ROW_CHUNK) {
                let sql = format!(
                    "INSERT INTO messages (seq, id, sender, recipient, at, body) VALUES {}",
                    placeholders(chunk.len(), 6)
                );
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
                for (_, m) in chunk {
                    q = q
                        .bind(m.seq)
                        .bind(&m.id)
                        .bind(&m.sender)
                        .bind(&m.recipient)
                        .bind(m.at)
                        .bind(&m.text);
                }
                // A constraint failure is rolled back on its own; the transaction goes on.
                let r = q
                    .persistent(chunk.len() == ROW_CHUNK)
                    .execute(&mut **tx)
                    .await;
                if let Err(e) = r {
                    if !statement_only(&e) {
                        return Err(e.into());
                    }
                    for (i, _) in chunk {
                        out[*i] = Some(Err(DbError::Sql(sqlx::Error::Protocol(e.to_string()))));
                    }
                    continue;
                }
                for (i, m) in chunk {
                    out[*i] = Some(match &r {
                        Ok(_) => Ok(Outcome::Stored(m.seq)),
                        Err(e) => Err(DbError::Sql(sqlx::Error::Protocol(e.to_string()))),
                    });
                }
            }
        }
        if !bulk.acks.is_empty() {
            let acks = std::mem::take(&mut bulk.acks);
            for chunk in acks.chunks(IN_CHUNK / 2) {
                // `id IN (…)` uses the unique index; the second test keeps each id to its own
                // recipient (logins never contain a space, so the pair is unambiguous).
                let sql = format!(
                    "UPDATE messages SET pending = 0, body = '' WHERE id IN ({}) \
                     AND (id || ' ' || recipient) IN ({})",
                    placeholders(chunk.len(), 1),
                    placeholders(chunk.len(), 1)
                );
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
                for (_, id, _) in chunk {
                    q = q.bind(id);
                }
                for (_, id, recipient) in chunk {
                    q = q.bind(format!("{id} {recipient}"));
                }
                q.persistent(false).execute(&mut **tx).await?;
                for (i, _, _) in chunk {
                    out[*i] = Some(Ok(Outcome::Done));
                }
            }
        }
        Ok(())
    }
}

/// Rows per multi-row INSERT (6 parameters each, well under SQLite's parameter limit).
const ROW_CHUNK: usize = 256;
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
fn statement_only(e: &sqlx::Error) -> bool {
    use sqlx::error::ErrorKind;
    matches!(e, sqlx::Error::Database(d) if matches!(
        d.kind(),
        ErrorKind::UniqueViolation
            | ErrorKind::ForeignKeyViolation
            | ErrorKind::NotNullViolation
            | ErrorKind::CheckViolation
    ))
}

/// `(?, ?), (?, ?)` for `rows` rows of `cols` columns (`?, ?` for one column).
pub(super) fn placeholders(rows: usize, cols: usize) -> String {
    let row = if cols == 1 {
        String::new()
    } else {
        format!("({})", vec!["?"; cols].join(", "))
    };
    let mut s = String::with_capacity(rows * (row.len() + 2));
    for k in 0..rows {
        if k > 0 {
            s.push_str(", ");
        }
        if cols == 1 {
            s.push('?');
        } else {
            s.push_str(&row);
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(id: &str, recipient: &str, text: &str) -> WriteOp {
        WriteOp::InsertMessage(StoredMessage {
            seq: 0,
            id: id.into(),
            sender: "alice".into(),
            recipient: recipient.into(),
            at: 1,
            text: text.into(),
        })
    }

    fn user(login: &str) -> WriteOp {
        WriteOp::CreateUser {
            login: login.into(),
            sealed: vec![1, 2, 3],
            now: 1,
        }
    }

    async fn pending(db: &Db, login: &str) -> Vec<String> {
        db.pending_messages(login, 0, i64::MAX, 100)
            .await
            .expect("pending")
            .into_iter()
            .map(|m| m.text)
            .collect()
    }

    /// Messages and acknowledgements to known users go through the one-round-trip path, and
    /// what it stores is what the general path would have stored.
    #[tokio::test]
    async fn hot_batches_store_messages_and_acks_in_one_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Db::open(dir.path()).await.expect("open");
        let r = db
            .apply_batch(vec![user("alice"), user("bob")])
            .await
            .expect("users");
        assert!(r.iter().all(|o| matches!(o, Ok(Outcome::Done))));

        let mut hot = vec![message("m1", "bob", "one"), message("m2", "bob", "two")];
        let done = db
            .apply_hot_batch(&mut hot)
            .await
            .expect("no failure")
            .expect("one trip taken");
        let seqs: Vec<i64> = done
            .iter()
            .map(|o| match o {
                Ok(Outcome::Stored(seq)) => *seq,
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert!(seqs[0] < seqs[1]);
        assert_eq!(pending(&db, "bob").await, ["one", "two"]);

        // An acknowledgement and a new message together; an ack naming the wrong recipient
        // changes nothing.
        let mut hot = vec![
            WriteOp::Ack {
                id: "m1".into(),
                recipient: "bob".into(),
            },
            WriteOp::Ack {
                id: "m2".into(),
                recipient: "alice".into(),
            },
            message("m3", "bob", "three"),
        ];
        let done = db
            .apply_hot_batch(&mut hot)
            .await
            .expect("no failure")
            .expect("one trip taken");
        assert!(matches!(done[0], Ok(Outcome::Done)));
        assert!(matches!(done[2], Ok(Outcome::Stored(_))));
        assert_eq!(pending(&db, "bob").await, ["two", "three"]);
    }

    /// Batches the one-trip path does not cover, or that fail in it, take the general path,
    /// which answers each operation on its own.
    #[tokio::test]
    async fn other_batches_and_failures_take_the_general_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Db::open(dir.path()).await.expect("open");
        db.apply_batch(vec![user("alice"), user("bob")])
            .await
            .expect("users");

        // Not a hot batch: an unknown recipient, or another kind of operation.
        assert!(db
            .apply_hot_batch(&mut [message("x1", "nobody", "lost")])
            .await
            .expect("no failure")
            .is_none());
        assert!(db
            .apply_hot_batch(&mut [user("carol")])
            .await
            .expect("no failure")
            .is_none());
        let r = db
            .apply_batch(vec![
                message("x1", "nobody", "lost"),
                message("x2", "bob", "kept"),
            ])
            .await
            .expect("batch");
        assert!(matches!(r[0], Ok(Outcome::UnknownUser)));
        assert!(matches!(r[1], Ok(Outcome::Stored(_))));

        // A duplicate id fails the one-trip query: rolled back, nothing of it is stored, and
        // the general path reports the failure for the messages of that statement.
        let r = db
            .apply_batch(vec![
                message("x2", "bob", "again"),
                message("x3", "bob", "new"),
            ])
            .await
            .expect("batch");
        assert!(r.iter().all(|o| o.is_err()), "{r:?}");
        assert_eq!(pending(&db, "bob").await, ["kept"]);

        // The connection is usable afterwards (no transaction left open).
        let r = db
            .apply_batch(vec![message("x4", "bob", "after")])
            .await
            .expect("batch");
        assert!(matches!(r[0], Ok(Outcome::Stored(_))));
        assert_eq!(pending(&db, "bob").await, ["kept", "after"]);
    }
}
