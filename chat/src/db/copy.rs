//! `msim-chat db copy --from <SQLite> --to postgres://…`: moves an installation that outgrew
//! one machine to PostgreSQL, with everything it stores — users with their sealed passwords
//! (so the same `secret.key` opens them), profiles, contacts, presence consent, blocks,
//! pending and delivered messages, read receipts, offers and stored results, federation's
//! queue — and their sequence numbers, read in one SQLite transaction (one moment) and written
//! in one PostgreSQL transaction. Run it with msim-chat stopped (what a running server
//! acknowledges after that moment stays behind); the target must be empty (a second copy is
//! refused instead of mixing two installations).

use super::{Backend, Db, DbError};
use sqlx::{PgConnection, Row};
use std::path::Path;

/// A column's type, for moving its values.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Text,
    OptText,
    Int,
    OptInt,
    Bytes,
}

/// Every table, in an order that satisfies no constraint in particular (there are no foreign
/// keys), with its columns.
const TABLES: &[(&str, &[(&str, Kind)])] = {
    use Kind::*;
    &[
        (
            "users",
            &[
                ("login", Text),
                ("password", Bytes),
                ("name", Text),
                ("note", Text),
                ("last_seen", OptInt),
                ("created_at", Int),
                ("last_seen_visibility", Text),
            ],
        ),
        (
            "contacts",
            &[
                ("owner", Text),
                ("contact", Text),
                ("contact_local", OptText),
                ("name", OptText),
                ("grp", OptText),
            ],
        ),
        (
            "presence_subs",
            &[
                ("subject", Text),
                ("watcher", Text),
                ("state", Text),
                ("at", Int),
            ],
        ),
        ("blocks", &[("owner", Text), ("blocked", Text), ("at", Int)]),
        (
            "messages",
            &[
                ("seq", Int),
                ("id", Text),
                ("sender", Text),
                ("recipient", Text),
                ("at", Int),
                ("body", Text),
                ("pending", Int),
                ("read_at", OptInt),
            ],
        ),
        (
            "receipts",
            &[
                ("seq", Int),
                ("sender", Text),
                ("message_id", Text),
                ("reader", Text),
                ("at", Int),
            ],
        ),
        (
            "offers",
            &[
                ("seq", Int),
                ("id", Text),
                ("sender", Text),
                ("recipient", Text),
                ("filename", Text),
                ("size", Int),
                ("sha256", OptText),
                ("mime", OptText),
                ("created_at", Int),
                ("expires_at", Int),
                ("state", Text),
                ("relay", OptText),
                ("sender_addr", OptText),
                ("answered_at", OptInt),
            ],
        ),
        (
            "notices",
            &[
                ("seq", Int),
                ("login", Text),
                ("transfer_id", Text),
                ("expires_at", Int),
                ("kind", Text),
                ("reason", OptText),
                ("peer", OptText),
                ("filename", OptText),
                ("size", OptInt),
                ("relay_host", OptText),
                ("relay_port", OptInt),
                ("url", OptText),
                ("token", OptText),
                ("token_expires", OptInt),
                ("sha256", OptText),
                ("mime", OptText),
            ],
        ),
    ]
};

/// Federation's tables (PROTOCOL.md §12), which SQLite has only once federation has run: the
/// outbound queue holds messages whose senders already got `MESSAGE-SENT`.
const FEDERATION_TABLES: &[(&str, &[(&str, Kind)])] = {
    use Kind::*;
    &[
        (
            "fed_queue",
            &[
                ("seq", Int),
                ("peer", Text),
                ("line", Text),
                ("sender", Text),
                ("message_id", Text),
                ("expires_at", Int),
                ("merge_key", Text),
            ],
        ),
        (
            "fed_sent",
            &[
                ("id", Text),
                ("sender", Text),
                ("recipient", Text),
                ("at", Int),
            ],
        ),
        (
            "fed_subs",
            &[
                ("subject", Text),
                ("watcher", Text),
                ("peer", Text),
                ("at", Int),
            ],
        ),
        ("fed_seen", &[("peer", Text), ("id", Text), ("at", Int)]),
    ]
};

/// Rows read from SQLite and written to PostgreSQL per statement.
const PAGE: i64 = 500;

/// One value on its way.
enum Value {
    Text(Option<String>),
    Int(Option<i64>),
    Bytes(Vec<u8>),
}

/// Why a copy was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// Reading or writing.
    #[error(transparent)]
    Db(#[from] DbError),
    /// Reading or writing (SQL).
    #[error("database: {0}")]
    Sql(#[from] sqlx::Error),
    /// `--to` is not a PostgreSQL URL.
    #[error("--to must be a postgres:// URL")]
    NotPostgres,
    /// The target already holds data.
    #[error(
        "the target database already holds {1} row(s) in {0}: copy only into an empty database"
    )]
    NotEmpty(&'static str, i64),
    /// `--from` names no msim-chat database.
    #[error("{0} is not a msim-chat database (no such file)")]
    NoSource(String),
    /// The source holds no account: most likely the wrong `--from`.
    #[error(
        "the source database holds no user: nothing to copy (is --from the right data directory?)"
    )]
    EmptySource,
}

/// Copies the SQLite store at `from` (its data directory, or its `msim.db`) into the empty
/// PostgreSQL database at `to`; returns the rows copied per table.
pub async fn copy(from: &Path, to: &str) -> Result<Vec<(&'static str, u64)>, CopyError> {
    let (dir, file) = if from.is_dir() {
        (from, from.join("msim.db"))
    } else {
        (from.parent().unwrap_or(Path::new(".")), from.to_path_buf())
    };
    if !super::postgres::is_url(to) {
        return Err(CopyError::NotPostgres);
    }
    // Opening creates a missing database: a mistyped path must not copy an empty one.
    if file.file_name() != Some(std::ffi::OsStr::new("msim.db")) || !file.is_file() {
        return Err(CopyError::NoSource(file.display().to_string()));
    }
    let source = Db::open(dir).await?;
    let target = Db::open_postgres(to).await?;
    let r = copy_between(&source, &target).await;
    source.close().await;
    target.close().await;
    r
}

async fn copy_between(source: &Db, target: &Db) -> Result<Vec<(&'static str, u64)>, CopyError> {
    let (Backend::Sqlite(src), Backend::Postgres(dst)) = (&source.backend, &target.backend) else {
        return Err(CopyError::NotPostgres);
    };
    // Federation tables made by an older version get their newer columns first.
    source.federation_columns().await?;
    // One read transaction: every table as of one moment, whatever else writes meanwhile.
    let mut snapshot = src.pool.begin().await?;
    let (users,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM users")
        .fetch_one(&mut *snapshot)
        .await?;
    if users == 0 {
        return Err(CopyError::EmptySource);
    }
    let mut tables: Vec<&(&str, &[(&str, Kind)])> = TABLES.iter().collect();
    for t in FEDERATION_TABLES {
        let (n,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = $1")
                .bind(t.0)
                .fetch_one(&mut *snapshot)
                .await?;
        if n > 0 {
            tables.push(t);
        }
    }
    let mut tx = dst.writes.begin().await?;
    // Nodes that run anyway wait for the copy (its numbers come first).
    super::postgres::lock_batch(&mut tx, 0, 0).await?;
    for (table, _) in TABLES.iter().chain(FEDERATION_TABLES) {
        let (rows,): (i64,) =
            sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}")))
                .fetch_one(&mut *tx)
                .await?;
        if rows > 0 {
            return Err(CopyError::NotEmpty(table, rows));
        }
    }
    let mut counts = Vec::with_capacity(tables.len());
    for (table, cols) in tables {
        let names: Vec<&str> = cols.iter().map(|(n, _)| *n).collect();
        let select = format!(
            "SELECT rowid, {} FROM {table} WHERE rowid > $1 ORDER BY rowid LIMIT $2",
            names.join(", ")
        );
        let (mut after, mut copied) = (0i64, 0u64);
        loop {
            let rows = sqlx::query(sqlx::AssertSqlSafe(select.clone()))
                .bind(after)
                .bind(PAGE)
                .fetch_all(&mut *snapshot)
                .await?;
            let Some(last) = rows.last() else { break };
            after = last.try_get(0)?;
            let mut values = Vec::with_capacity(rows.len() * cols.len());
            for row in &rows {
                for (i, (_, kind)) in cols.iter().enumerate() {
                    values.push(match kind {
                        Kind::Text => Value::Text(Some(row.try_get(i + 1)?)),
                        Kind::OptText => Value::Text(row.try_get(i + 1)?),
                        Kind::Int => Value::Int(Some(row.try_get(i + 1)?)),
                        Kind::OptInt => Value::Int(row.try_get(i + 1)?),
                        Kind::Bytes => Value::Bytes(row.try_get(i + 1)?),
                    });
                }
            }
            insert(&mut tx, table, &names, rows.len(), values).await?;
            copied += rows.len() as u64;
        }
        counts.push((*table, copied));
    }
    // The sequences continue after the copied numbers.
    sqlx::query(
        "SELECT setval('message_seq', COALESCE((SELECT MAX(seq) FROM messages), 0) + 1, false)",
    )
    .execute(&mut *tx)
    .await?;
    for table in ["receipts", "offers", "notices", "fed_queue"] {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT setval(pg_get_serial_sequence('{table}', 'seq'), \
             COALESCE((SELECT MAX(seq) FROM {table}), 0) + 1, false)"
        )))
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    snapshot.rollback().await?;
    Ok(counts)
}

/// One multi-row `INSERT` of `rows` rows.
async fn insert(
    tx: &mut PgConnection,
    table: &str,
    names: &[&str],
    rows: usize,
    values: Vec<Value>,
) -> Result<(), sqlx::Error> {
    let sql = format!(
        "INSERT INTO {table} ({}) VALUES {}",
        names.join(", "),
        super::batch::placeholders(super::batch::ParamStyle::Numbered, rows, names.len(), 1)
    );
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
    for v in values {
        q = match v {
            Value::Text(t) => q.bind(t),
            Value::Int(i) => q.bind(i),
            Value::Bytes(b) => q.bind(b),
        };
    }
    q.persistent(false).execute(tx).await.map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::{
        NoticeBody, Offer, OfferLimits, OfferState, Outcome, PrivacyOp, StoredMessage, WriteOp,
    };
    use msim_shared::proto::FileRejection;

    fn ops() -> Vec<WriteOp> {
        let user = |login: &str| WriteOp::CreateUser {
            login: login.into(),
            sealed: format!("sealed-{login}").into_bytes(),
            now: 5,
        };
        let message = |id: &str, to: &str| {
            WriteOp::InsertMessage(StoredMessage {
                seq: 0,
                id: id.into(),
                sender: "alice".into(),
                recipient: to.into(),
                at: 10,
                text: format!("text of {id}"),
            })
        };
        let offer = Offer {
            id: "t1".into(),
            sender: "alice".into(),
            recipient: "bob".into(),
            filename: "f.bin".into(),
            size: 3,
            sha256: None,
            mime: None,
            created_at: 10,
            expires_at: i64::MAX,
            state: OfferState::Pending,
            relay: None,
        };
        vec![
            user("alice"),
            user("bob"),
            user("carol"),
            WriteOp::AddContact {
                owner: "alice".into(),
                contact: "bob@localhost".into(),
                contact_local: Some("bob".into()),
                name: Some("Bobby".into()),
                group: Some("work".into()),
                max: 10,
            },
            WriteOp::UpdateProfile {
                login: "bob".into(),
                name: Some("Bob".into()),
                note: Some("away".into()),
            },
            WriteOp::Privacy(PrivacyOp::Subscribe {
                watcher: "alice".into(),
                subject: "carol".into(),
                now: 6,
                max_requests: 10,
            }),
            WriteOp::Privacy(PrivacyOp::Block {
                owner: "carol".into(),
                blocked: "bob".into(),
                now: 7,
                max: 10,
            }),
            message("m1", "bob"),
            message("m2", "bob"),
            message("m3", "carol"),
            WriteOp::MarkRead {
                id: "m3".into(),
                reader: "carol".into(),
                at: 20,
            },
            WriteOp::Privacy(PrivacyOp::CreateOffer {
                offer: Box::new(offer),
                addr: "127.0.0.1".into(),
                limits: OfferLimits {
                    account_count: 9,
                    account_bytes: 99,
                    addr_count: 9,
                    addr_bytes: 99,
                    accepted_since: 0,
                },
            }),
            WriteOp::AddNotices(vec![crate::db::Notice {
                login: "alice".into(),
                transfer_id: "t0".into(),
                body: NoticeBody::rejected("t0", FileRejection::Rejected),
                expires_at: i64::MAX,
            }]),
        ]
    }

    /// What a user sees of the store, to compare source and copy.
    async fn view(db: &Db) -> String {
        let marks = db.marks().await.expect("marks");
        let mut out = format!("{marks:?}\n");
        for login in ["alice", "bob", "carol"] {
            out += &format!(
                "{login}: {:?} {:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n",
                db.password(login).await.expect("password"),
                db.profile(login).await.expect("profile"),
                db.contacts(login).await.expect("contacts"),
                db.pending_messages(login, 0, marks.messages, 100)
                    .await
                    .expect("messages"),
                db.pending_receipts(login, marks.receipts)
                    .await
                    .expect("receipts"),
                db.pending_offers(login, 0, marks.offers)
                    .await
                    .expect("offers"),
                db.pending_notices(login, 0, marks.notices)
                    .await
                    .expect("notices"),
                db.presence_requests(login).await.expect("requests"),
                db.blocked_by(login).await.expect("blocks"),
            );
        }
        out
    }

    /// Everything a user can see comes across unchanged, numbers included, and the copy goes
    /// on numbering after them; a second copy into the same database is refused.
    #[tokio::test]
    async fn a_sqlite_store_is_copied_whole_into_postgres() {
        let Some(url) = tokio::task::spawn_blocking(|| msim_testkit::postgres::database("db copy"))
            .await
            .expect("cluster thread")
        else {
            return;
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let source = Db::open(dir.path()).await.expect("sqlite");
        let r = source.apply_batch(ops()).await.expect("batch");
        assert!(r.iter().all(|o| o.is_ok()), "{r:?}");
        // A federated installation: a message queued for a remote server, acknowledged to
        // its sender, must come across.
        source.federation_tables().await.expect("federation tables");
        source
            .federation_apply(
                &[crate::db::QueueWrite::Add {
                    peer: "b.example".into(),
                    line: "S2S-MESSAGE id=q1".into(),
                    sender: "alice".into(),
                    message_id: "q1".into(),
                    recipient: "zed@b.example".into(),
                    at: 11,
                    expires_at: i64::MAX,
                    merge_key: String::new(),
                }],
                Default::default(),
            )
            .await
            .expect("queued");
        let before = view(&source).await;
        source.close().await;
        drop(source);

        // A mistyped --from is refused (it would have created an empty database), and so is
        // an installation without users.
        match copy(&dir.path().join("no-such-dir"), &url).await {
            Err(CopyError::NoSource(_)) => {}
            other => panic!("copied a missing source: {other:?}"),
        }
        let empty = tempfile::tempdir().expect("tempdir");
        Db::open(empty.path()).await.expect("empty").close().await;
        match copy(empty.path(), &url).await {
            Err(CopyError::EmptySource) => {}
            other => panic!("copied an empty source: {other:?}"),
        }

        let counts = copy(&dir.path().join("msim.db"), &url).await.expect("copy");
        let count = |t: &str| counts.iter().find(|(n, _)| *n == t).map(|c| c.1);
        assert_eq!(count("users"), Some(3));
        assert_eq!(count("messages"), Some(3));
        assert_eq!(count("receipts"), Some(1));
        assert_eq!(count("fed_queue"), Some(1));
        assert_eq!(count("fed_sent"), Some(1));

        let target = Db::open_postgres(&url).await.expect("postgres");
        assert_eq!(view(&target).await, before);
        let queued = target
            .federation_queued("b.example", 0, 10)
            .await
            .expect("queue");
        assert_eq!(queued.len(), 1);
        assert_eq!(queued[0].message_id, "q1");
        let marks = target.marks().await.expect("marks");
        let r = target
            .apply_batch(vec![WriteOp::InsertMessage(StoredMessage {
                seq: 0,
                id: "after".into(),
                sender: "bob".into(),
                recipient: "alice".into(),
                at: 30,
                text: "after the move".into(),
            })])
            .await
            .expect("batch");
        assert!(
            matches!(r[0], Ok(Outcome::Stored(seq)) if seq > marks.messages),
            "{r:?}"
        );
        target.close().await;

        match copy(dir.path(), &url).await {
            Err(CopyError::NotEmpty("users", 3)) => {}
            other => panic!("copied twice: {other:?}"),
        }
    }
}
