//! SQLite's one-trip batch: the common batch (new messages to known users and
//! acknowledgements) as one multi-statement query.

use super::Store;
use crate::db::batch::{placeholders, statement_only, ParamStyle, IN_CHUNK, ROW_CHUNK};
use crate::db::{Db, DbError, Outcome, WriteOp};

impl Db {
    /// The common batch — only new messages to known users and acknowledgements, each kind
    /// fitting one statement — in a single round trip to SQLite's thread: `BEGIN IMMEDIATE`,
    /// the multi-row `INSERT`, the `UPDATE` of acknowledged messages and `COMMIT` as one
    /// multi-statement query (its `?` arguments, in order, span the whole query). The
    /// general path takes four round trips for the same work, each a wake-up of another thread;
    /// at moderate rates those hand-offs, not SQLite, were most of a batch's time. `None`: the
    /// batch is not of that kind, or the query failed (rolled back, nothing written); the
    /// caller then takes the general path, which reports errors per operation.
    ///
    /// A failure other than a constraint on one row (a full disk, I/O) is returned as an
    /// error: the batch fails as a whole.
    pub(in crate::db) async fn apply_hot_batch(
        &self,
        store: &Store,
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
                placeholders(ParamStyle::InOrder, messages, 6, 1)
            ));
        }
        if acks > 0 {
            sql.push_str(&format!(
                "UPDATE messages SET pending = 0, body = '' WHERE id IN ({}) \
                 AND (id || ' ' || recipient) IN ({});",
                placeholders(ParamStyle::InOrder, acks, 1, 6 * messages + 1),
                placeholders(ParamStyle::InOrder, acks, 1, 6 * messages + acks + 1)
            ));
        }
        sql.push_str("COMMIT;");
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        let mut seq = store.allocate_message_seqs(messages);
        for op in ops.iter_mut() {
            if let WriteOp::InsertMessage(m) = op {
                m.seq = seq;
                seq += 1;
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
        let mut conn = store.writes.acquire().await?;
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::{Backend, StoredMessage};

    fn sqlite(db: &Db) -> &Store {
        match &db.backend {
            Backend::Sqlite(s) => s,
            Backend::Postgres(_) => unreachable!("a SQLite database"),
        }
    }

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
            .apply_hot_batch(sqlite(&db), &mut hot)
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
            .apply_hot_batch(sqlite(&db), &mut hot)
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
            .apply_hot_batch(sqlite(&db), &mut [message("x1", "nobody", "lost")])
            .await
            .expect("no failure")
            .is_none());
        assert!(db
            .apply_hot_batch(sqlite(&db), &mut [user("carol")])
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

        // A duplicate id fails the one-trip query: rolled back, and the general path stores
        // the batch again, failing only the message whose id is taken.
        let r = db
            .apply_batch(vec![
                message("x2", "bob", "again"),
                message("x3", "bob", "new"),
            ])
            .await
            .expect("batch");
        assert!(r[0].is_err(), "{r:?}");
        assert!(matches!(r[1], Ok(Outcome::Stored(_))), "{r:?}");
        assert_eq!(pending(&db, "bob").await, ["kept", "new"]);

        // The connection is usable afterwards (no transaction left open).
        let r = db
            .apply_batch(vec![message("x4", "bob", "after")])
            .await
            .expect("batch");
        assert!(matches!(r[0], Ok(Outcome::Stored(_))));
        assert_eq!(pending(&db, "bob").await, ["kept", "new", "after"]);
    }
}
