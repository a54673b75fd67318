//! The PostgreSQL backend: a database that several msim-chat nodes may share. Opening (pools,
//! `synchronous_commit`, the migrations in `postgres/migrations`) and how a batch transaction
//! begins: [`lock_batch`] serialises the batches of every node and reserves the batch's
//! message sequence numbers (see the guarantees in `db/mod.rs`).

use super::{Backend, Db, DbError};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::PgConnection;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The transaction-level advisory lock every batch transaction takes first ("msimbtch").
pub(crate) const BATCH_LOCK: i64 = 0x6d73_696d_6274_6368;

/// Reader connections per node (the cluster's listener has one more of its own).
const READERS: u32 = 10;

/// The default of `--database-timeout`: the longest a batch (from taking the write
/// connection to its `COMMIT`'s answer), a heartbeat or a listener check waits for the
/// database. A silent network (packets dropped, no reset) would otherwise hang them until the
/// kernel gives the TCP connection up, a quarter of an hour later.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(20);

/// Longest wait for the outcome of a `COMMIT` whose answer was lost (see [`commit_status`]),
/// in database timeouts (120 s at the default).
pub(crate) const IN_DOUBT_TIMEOUTS: u32 = 6;

/// How long a transaction may sit idle before PostgreSQL ends it. A batch never waits between
/// its statements, so an idle batch transaction means a frozen node (SIGSTOP, a stalled VM, a
/// cut network): ending it releases [`BATCH_LOCK`], which every other node's writes wait for.
pub(crate) const IDLE_IN_TRANSACTION: &str = "10s";

/// How long a statement may wait for a lock. A session that holds [`BATCH_LOCK`] while busy
/// (a long statement, an operator's transaction) is not idle, so [`IDLE_IN_TRANSACTION`] does
/// not end it; the batches waiting behind it fail after this instead of waiting without end
/// (nothing in them was acknowledged: their clients get errors and may resend).
pub(crate) const LOCK_TIMEOUT: &str = "15s";

/// How long one statement may run (migrations excepted).
pub(crate) const STATEMENT_TIMEOUT: &str = "30s";

/// The server's side of a silent network (a node cut off or frozen): TCP keep-alive probes on
/// an idle session after 10 s, every 5 s, given up after 3 (its session, and any advisory
/// lock or `LISTEN` it holds, ended within about 25 s, not the kernel's two hours), and
/// unacknowledged data given up after 30 s (`tcp_user_timeout`, PostgreSQL 12 and later).
/// Ignored on Unix-domain sockets.
pub(crate) const SERVER_KEEPALIVES: [(&str, &str); 4] = [
    ("tcp_keepalives_idle", "10"),
    ("tcp_keepalives_interval", "5"),
    ("tcp_keepalives_count", "3"),
    ("tcp_user_timeout", "30000"),
];

/// The writer's statements touch rows by key (a batch's ids and recipients, at most a few
/// thousand): nested loops over the unique indexes. Planned early in a run, while the tables'
/// statistics still change, an acknowledgement was sometimes planned as a hash join over a
/// sequential scan of `messages` and kept that plan for the connection's life (45–65 ms per
/// batch instead of about 1: the slow mode of the eighth session's bimodal benchmark runs).
const WRITER_PLANNER: [(&str, &str); 2] = [("enable_hashjoin", "off"), ("enable_mergejoin", "off")];

/// The options of every connection: `synchronous_commit = on` whatever the server's default,
/// [`IDLE_IN_TRANSACTION`], [`LOCK_TIMEOUT`], [`STATEMENT_TIMEOUT`] and
/// [`SERVER_KEEPALIVES`].
pub(crate) fn connect_options(url: &str) -> Result<PgConnectOptions, sqlx::Error> {
    Ok(PgConnectOptions::from_str(url)?
        .options([
            ("synchronous_commit", "on"),
            ("idle_in_transaction_session_timeout", IDLE_IN_TRANSACTION),
            ("lock_timeout", LOCK_TIMEOUT),
            ("statement_timeout", STATEMENT_TIMEOUT),
        ])
        .options(SERVER_KEEPALIVES)
        .application_name("msim-chat"))
}

/// The PostgreSQL store: a reader pool and the writer's own connection.
#[derive(Debug)]
pub(crate) struct Store {
    pub(in crate::db) pool: PgPool,
    pub(in crate::db) writes: PgPool,
    /// This node's cluster id (0 until the cluster started), stored with every item a batch
    /// writes (`origin` columns).
    pub(in crate::db) node: AtomicI64,
    /// How far this node's cluster reader has pushed the messages of other nodes to its
    /// sessions (0: not yet): an acknowledgement at or below it may clear the body at once
    /// (`bulk::ack_messages`).
    pub(in crate::db) passed: AtomicI64,
    /// This process's row in `batch_marks` (random: unique among the writers of a database).
    pub(in crate::db) writer: i64,
    /// The last mark a batch stored there.
    pub(in crate::db) marks: AtomicI64,
    /// A batch found the row gone (purged by a node's start-up): the next batch first adds it
    /// again ([`Store::restore_mark_row`]).
    pub(in crate::db) mark_row_missing: AtomicBool,
    /// `--database-timeout`, in milliseconds.
    pub(in crate::db) timeout_ms: AtomicU64,
    /// Cancelled when the server stops: a lost `COMMIT`'s answer is then no longer waited for
    /// ([`commit_status`]).
    pub(in crate::db) stopping: CancellationToken,
    /// Tests: the next batches' `COMMIT` answers to lose, their outcome untold (each `true`:
    /// the batch commits, `false`: it does not).
    #[cfg(test)]
    pub(in crate::db) lost_commits: std::sync::Mutex<std::collections::VecDeque<bool>>,
}

#[cfg(test)]
impl Store {
    pub(in crate::db) fn take_lost_commit(&self) -> Option<bool> {
        self.lost_commits
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop_front()
    }
}

/// What a batch transaction stores to prove, later, that it committed (see [`commit_status`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::db) struct BatchMark {
    pub(in crate::db) writer: i64,
    pub(in crate::db) mark: i64,
}

impl Store {
    /// `--database-timeout`.
    pub(in crate::db) fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms.load(Ordering::Relaxed))
    }

    /// Adds this writer's `batch_marks` row again if a batch found it gone; until it is back,
    /// batches store no mark (a lost `COMMIT`'s answer is then in doubt, never guessed).
    pub(in crate::db) async fn restore_mark_row(&self) -> Result<(), sqlx::Error> {
        if self.mark_row_missing.load(Ordering::Relaxed) {
            add_writer(&self.pool, self.writer).await?;
            self.mark_row_missing.store(false, Ordering::Relaxed);
        }
        Ok(())
    }

    /// A mark no earlier batch of this writer used.
    pub(in crate::db) fn next_mark(&self) -> BatchMark {
        BatchMark {
            writer: self.writer,
            mark: self.marks.fetch_add(1, Ordering::Relaxed) + 1,
        }
    }
}

/// Whether `url` names a PostgreSQL database.
pub(crate) fn is_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// `url` without its password (in the user part or as a `password`/`sslpassword` query
/// parameter), for messages and logs. A URL that does not parse is not shown at all: its
/// password could be anywhere in it.
pub(crate) fn redact(url: &str) -> String {
    let Ok(mut parsed) = url::Url::parse(url.trim()) else {
        return "<database URL that does not parse>".to_owned();
    };
    if parsed.password().is_some() {
        let _ = parsed.set_password(Some("***"));
    }
    let secret =
        |k: &str| k.eq_ignore_ascii_case("password") || k.eq_ignore_ascii_case("sslpassword");
    if parsed.query_pairs().any(|(k, _)| secret(&k)) {
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(k, v)| {
                let v = if secret(&k) {
                    "***".to_owned()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        parsed.query_pairs_mut().clear().extend_pairs(pairs);
    }
    parsed.to_string()
}

impl Db {
    /// Connects to the PostgreSQL database at `url` and runs the migrations (nodes starting
    /// together take turns: sqlx holds an advisory lock while migrating). Every connection
    /// runs with [`connect_options`].
    pub async fn open_postgres(url: &str) -> Result<Db, DbError> {
        let opts = connect_options(url)?;
        let pool = PgPoolOptions::new()
            .max_connections(READERS)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(opts.clone())
            .await?;
        // A migration may rebuild a large table: no statement timeout for it (a later
        // `-c statement_timeout` wins); waiting for another node's migration lock is bounded by
        // `lock_timeout` (start-up then fails).
        let migrating = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(opts.clone().options([("statement_timeout", "0")]))
            .await?;
        let migrated = sqlx::migrate!("src/db/postgres/migrations")
            .run(&migrating)
            .await;
        migrating.close().await;
        migrated?;
        let writes = PgPoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(opts.options(WRITER_PLANNER))
            .await?;
        // Rows of writers gone for a day (a live writer's batch updates its row; a live
        // writer idle that long whose row goes finds it missing: see `lock_batch_marked`).
        sqlx::query(
            "DELETE FROM batch_marks WHERE touched_at < clock_timestamp() - interval '1 day'",
        )
        .execute(&pool)
        .await?;
        let writer = rand::random::<i64>();
        add_writer(&pool, writer).await?;
        Ok(Db::with_backend(Backend::Postgres(Arc::new(Store {
            pool,
            writes,
            node: AtomicI64::new(0),
            passed: AtomicI64::new(0),
            writer,
            marks: AtomicI64::new(0),
            mark_row_missing: AtomicBool::new(false),
            timeout_ms: AtomicU64::new(DEFAULT_TIMEOUT.as_millis() as u64),
            stopping: CancellationToken::new(),
            #[cfg(test)]
            lost_commits: Default::default(),
        }))))
    }

    /// The readers' pool, on PostgreSQL (the cluster's connections come from it).
    pub(crate) fn postgres_pool(&self) -> Option<PgPool> {
        match &self.backend {
            Backend::Postgres(s) => Some(s.pool.clone()),
            Backend::Sqlite(_) => None,
        }
    }

    /// Tests: the next batch's `COMMIT` answer is lost, and whether it committed cannot be
    /// told (the writer answers "outcome unknown"); `committed`: whether it did.
    #[cfg(test)]
    pub(crate) fn lose_next_commit(&self, committed: bool) {
        if let Backend::Postgres(s) = &self.backend {
            s.lost_commits
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push_back(committed);
        }
    }

    /// Records `node` as the origin of every item this node's batches write from now on.
    pub(crate) fn set_node(&self, node: i64) {
        if let Backend::Postgres(s) = &self.backend {
            s.node.store(node, Ordering::Relaxed);
        }
    }

    /// Sets `--database-timeout` (PostgreSQL; see [`DEFAULT_TIMEOUT`]).
    pub(crate) fn set_database_timeout(&self, limit: Duration) {
        if let Backend::Postgres(s) = &self.backend {
            let ms = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX).max(1);
            s.timeout_ms.store(ms, Ordering::Relaxed);
        }
    }

    /// The server is stopping: a batch whose `COMMIT`'s answer was lost and whose transaction
    /// PostgreSQL still holds is ended now, not after [`commit_status::HELD_QUESTIONS`].
    pub(crate) fn stop_waiting(&self) {
        if let Backend::Postgres(s) = &self.backend {
            s.stopping.cancel();
        }
    }

    /// This node's cluster reader has pushed every message up to `seq` to its sessions.
    pub(crate) fn set_messages_passed(&self, seq: i64) {
        if let Backend::Postgres(s) = &self.backend {
            s.passed.fetch_max(seq, Ordering::Relaxed);
        }
    }

    /// `SHOW synchronous_commit` on the writer's connection and on a reader's (PostgreSQL
    /// only): lets tests check the durability docs/OPERATING.md promises.
    pub async fn synchronous_commit(&self) -> Result<Option<[String; 2]>, DbError> {
        let Backend::Postgres(s) = &self.backend else {
            return Ok(None);
        };
        let mut out: [String; 2] = Default::default();
        for (slot, pool) in out.iter_mut().zip([&s.writes, &s.pool]) {
            let (v,): (String,) = sqlx::query_as("SHOW synchronous_commit")
                .fetch_one(pool)
                .await?;
            *slot = v;
        }
        Ok(Some(out))
    }
}

impl Store {
    pub(in crate::db) async fn close(&self) {
        self.writes.close().await;
        self.pool.close().await;
    }
}

/// What [`lock_batch`] hands out.
pub(in crate::db) struct Locked {
    /// The first of the batch's message sequence numbers (0 when none were asked for).
    pub(in crate::db) first: i64,
    /// The transaction's id (for logs, and to check [`Locked::pid`] still runs it).
    pub(in crate::db) xid: i64,
    /// The process id of the transaction's backend: a transaction held for too long while its
    /// `COMMIT`'s answer is lost is ended with `pg_terminate_backend` ([`commit_status`]).
    pub(in crate::db) pid: i32,
    /// What the transaction stored to prove its commit ([`lock_batch_marked`]).
    pub(in crate::db) mark: Option<BatchMark>,
}

/// First statement of every batch transaction: takes [`BATCH_LOCK`] (held until the
/// transaction ends, after its commit is durable and visible), so the batches of all nodes run
/// one at a time, reserves `messages` consecutive message sequence numbers, sets `msim.node`
/// (the `origin` of the rows the batch writes) for the transaction, and returns the
/// transaction's id. Numbers handed out under the lock are higher than every number of an
/// earlier batch and become visible after them: commit order is sequence order.
pub(in crate::db) async fn lock_batch(
    tx: &mut PgConnection,
    messages: usize,
    node: i64,
) -> Result<Locked, sqlx::Error> {
    lock_batch_marked(tx, messages, node, None).await
}

/// Commits `writer`'s row in `batch_marks` (mark 0) before its first batch. A batch only
/// updates the row: were its first batch to insert it, [`commit_status`]'s `FOR SHARE` would
/// not wait for that uncommitted insert, find no row, and answer "did not commit" for a batch
/// that then commits (its messages answered as failed, sent again: duplicates).
pub(in crate::db) async fn add_writer(pool: &PgPool, writer: i64) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO batch_marks (writer, mark) VALUES ($1, 0) ON CONFLICT DO NOTHING")
        .bind(writer)
        .execute(pool)
        .await?;
    Ok(())
}

/// [`lock_batch`], also storing `mark` in the writer's `batch_marks` row (see [`add_writer`])
/// in the same statement (no extra round trip), after the lock is taken: if the `COMMIT`'s
/// answer is lost, [`commit_status`] reads the row to learn whether the batch committed. If
/// the row is gone the batch stores nothing and its [`Locked::mark`] is `None`.
pub(in crate::db) async fn lock_batch_marked(
    tx: &mut PgConnection,
    messages: usize,
    node: i64,
    mark: Option<BatchMark>,
) -> Result<Locked, sqlx::Error> {
    lock_batch_as(tx, messages, node, mark, Durability::Disk).await
}

/// What a batch's `COMMIT` waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::db) enum Durability {
    /// The disk (`synchronous_commit` as configured: on): everything a client is answered for.
    Disk,
    /// Only the WAL buffers (`synchronous_commit = off` for this transaction): for batches of
    /// acknowledgements alone, which nobody is answered for and which are best effort
    /// (PROTOCOL.md §5.5: a database crash just after may deliver those messages again).
    /// The batch lock is then held for the statements only, not for an fsync, so the
    /// other nodes' batches (a sender's messages) wait less behind a recipient's acks.
    Buffers,
}

impl Durability {
    /// What a batch of `ops` waits for: the disk, unless it holds only acknowledgements.
    pub(in crate::db) fn of(ops: &[crate::db::WriteOp]) -> Durability {
        if ops
            .iter()
            .all(|op| matches!(op, crate::db::WriteOp::Ack { .. }))
        {
            Durability::Buffers
        } else {
            Durability::Disk
        }
    }
}

/// [`lock_batch_marked`], with the batch's [`Durability`].
pub(in crate::db) async fn lock_batch_as(
    tx: &mut PgConnection,
    messages: usize,
    node: i64,
    mark: Option<BatchMark>,
    durability: Durability,
) -> Result<Locked, sqlx::Error> {
    let n = messages as i64;
    // The materialised CTE is read (the lock taken) before the select list is computed, and
    // before the mark is written (the insert reads it).
    let marked = if mark.is_some() {
        ", marked AS (UPDATE batch_marks SET mark = $5, touched_at = clock_timestamp() \
         FROM locked WHERE writer = $4 RETURNING 1)"
    } else {
        ""
    };
    let stored = if mark.is_some() {
        "(SELECT count(*) FROM marked)"
    } else {
        "0::bigint"
    };
    let select = if n == 0 {
        format!("SELECT $2::bigint, txid_current(), pg_backend_pid(), {stored} FROM locked")
    } else {
        format!(
            "SELECT setval('message_seq', nextval('message_seq') + $2 - 1), txid_current(), \
             pg_backend_pid(), {stored} FROM locked"
        )
    };
    let asynchronous = match durability {
        Durability::Disk => "",
        Durability::Buffers => ", set_config('synchronous_commit', 'off', true)",
    };
    let sql = format!(
        "WITH locked AS MATERIALIZED (SELECT pg_advisory_xact_lock($1), \
         set_config('msim.node', $3, true){asynchronous}){marked} {select}"
    );
    let mut q = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(BATCH_LOCK)
        .bind(n)
        .bind(node.to_string());
    if let Some(m) = mark {
        q = q.bind(m.writer).bind(m.mark);
    }
    let (last, xid, pid, stored): (i64, i64, i32, i64) = q.fetch_one(tx).await?;
    Ok(Locked {
        first: if n == 0 { 0 } else { last - n + 1 },
        xid,
        pid,
        mark: mark.filter(|_| stored == 1),
    })
}

/// Whether `e` is PostgreSQL's "lock not available" (`lock_timeout` expired).
pub(crate) fn is_lock_timeout(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.code().as_deref() == Some("55P03"))
}

/// The error of a statement that got no answer within `--database-timeout`.
pub(crate) fn timed_out() -> sqlx::Error {
    sqlx::Error::Io(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "no answer from the database within --database-timeout",
    ))
}

pub(in crate::db) mod bulk;
mod commit_status;
pub(in crate::db) use commit_status::commit_status;
#[cfg(test)]
mod commit_status_tests;
#[cfg(test)]
mod durability_tests;
#[cfg(test)]
mod frozen_node_tests;
#[cfg(test)]
mod held_commit_tests;
#[cfg(test)]
mod partial_index_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_recognised_and_redacted() {
        assert!(is_url("postgres://u@h/db"));
        assert!(is_url("postgresql://h/db"));
        assert!(!is_url("sqlite://x"));
        assert_eq!(
            redact("postgres://msim:s3cret@db:5432/msim"),
            "postgres://msim:***@db:5432/msim"
        );
        assert_eq!(redact("postgres://msim@db/msim"), "postgres://msim@db/msim");
        assert_eq!(redact("postgres://db/msim"), "postgres://db/msim");
        // A password given as a query parameter, and one holding a raw `@`.
        let shown = redact("postgres://msim@db/msim?sslmode=require&password=s3cret");
        assert!(
            !shown.contains("s3cret") && shown.contains("sslmode=require"),
            "{shown}"
        );
        assert_eq!(
            redact("postgres://msim:pa@ss@db/msim"),
            "postgres://msim:***@db/msim"
        );
        assert_eq!(
            redact("postgres://msim:s3cret@db:5432"),
            "postgres://msim:***@db:5432"
        );
        assert!(!redact("postgres://u:s3cret@[::1").contains("s3cret"));
    }
}
