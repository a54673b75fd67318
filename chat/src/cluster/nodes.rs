//! Nodes and presence in the database: each node's heartbeat row, the (login, node) rows of
//! users with sessions, and the leader's reaping of dead nodes.
//!
//! Presence transitions are decided under a transaction-level advisory lock per login
//! (`pg_advisory_xact_lock(PRESENCE_LOCKS, hashtext(login))`), taken by every writer of that
//! login's rows, so exactly one node sees "first session anywhere" and exactly one "last".

use super::NodeId;
use sqlx::PgPool;
use std::time::Duration;

/// First key of the per-login presence locks (two-key advisory lock form).
pub(super) const PRESENCE_LOCKS: i32 = 0x6d73_0001;

/// Registers `node` (a fresh row).
pub(crate) async fn register(pool: &PgPool, node: NodeId, name: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO cluster_nodes (node, name) VALUES ($1, $2) \
         ON CONFLICT (node) DO UPDATE SET heartbeat_at = clock_timestamp()",
    )
    .bind(node.0)
    .bind(name)
    .execute(pool)
    .await?;
    Ok(())
}

/// Records a heartbeat. `false`: the node's row is gone (it was declared dead while cut off)
/// and the caller must register again and re-add its users.
/// `fed`: how far the node's reader has got (messages, receipts), once it has started.
pub(crate) async fn heartbeat(
    pool: &PgPool,
    node: NodeId,
    fed: Option<(i64, i64)>,
) -> Result<bool, sqlx::Error> {
    let r = sqlx::query(
        "UPDATE cluster_nodes SET heartbeat_at = clock_timestamp(), \
         fed_messages = $2, fed_receipts = $3 WHERE node = $1",
    )
    .bind(node.0)
    .bind(fed.map(|f| f.0))
    .bind(fed.map(|f| f.1))
    .execute(pool)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Removes `node` and its presence rows at a clean shutdown; returns the logins that are now
/// offline everywhere. `limit`: see [`lock_login`].
pub(crate) async fn deregister(
    pool: &PgPool,
    node: NodeId,
    limit: Duration,
) -> Result<Vec<String>, sqlx::Error> {
    remove_nodes(&mut *pool.acquire().await?, &[node.0], node, limit).await
}

/// The last transition of a login (`cluster_presence_last`): whether it left the login
/// online, and the id of the change that made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Transition {
    pub(crate) online: bool,
    pub(crate) change: i64,
}

/// What one presence change of a login found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Changed {
    /// The login's last transition before this change.
    pub(crate) before: Option<Transition>,
    /// Its last transition after it (this change's own, if it made one).
    pub(crate) after: Option<Transition>,
    /// Whether this change made a transition (the first row stored or the last removed).
    pub(crate) made: bool,
}

/// Gives `login` a row on `node` (`online`) or removes it, as change `change` (a random id);
/// `limit`: see [`lock_login`]. A transition (first row anywhere, last row gone) is recorded
/// with `change` in the same transaction, so whoever asks later knows whose it was.
pub(crate) async fn set_presence(
    pool: &PgPool,
    node: NodeId,
    login: &str,
    online: bool,
    change: i64,
    limit: Duration,
) -> Result<Changed, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let changed = write_presence(&mut tx, node, login, online, change, limit).await?;
    tx.commit().await?;
    Ok(changed)
}

/// [`set_presence`]'s work in `tx` (tests commit a change in a transaction of their own).
pub(super) async fn write_presence(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    node: NodeId,
    login: &str,
    online: bool,
    change: i64,
    limit: Duration,
) -> Result<Changed, sqlx::Error> {
    lock_login(tx, login, limit).await?;
    let before: Option<(bool, i64)> =
        sqlx::query_as("SELECT online, change FROM cluster_presence_last WHERE login = $1")
            .bind(login)
            .fetch_optional(&mut **tx)
            .await?;
    let before = before.map(|(online, change)| Transition { online, change });
    let written = if online {
        "INSERT INTO cluster_presence (login, node) VALUES ($1, $2) ON CONFLICT DO NOTHING"
    } else {
        "DELETE FROM cluster_presence WHERE login = $1 AND node = $2"
    };
    let written = sqlx::query(written)
        .bind(login)
        .bind(node.0)
        .execute(&mut **tx)
        .await?
        .rows_affected();
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM cluster_presence WHERE login = $1")
        .bind(login)
        .fetch_one(&mut **tx)
        .await?;
    let made = written == 1 && if online { rows == 1 } else { rows == 0 };
    let mut after = before;
    if made {
        // The trigger on cluster_presence has moved the record's `xid` (what the other
        // nodes' readers look for) and created it if missing; the transition is ours.
        sqlx::query(
            "UPDATE cluster_presence_last SET online = $2, node = $3, change = $4 \
             WHERE login = $1",
        )
        .bind(login)
        .bind(online)
        .bind(node.0)
        .bind(change)
        .execute(&mut **tx)
        .await?;
        after = Some(Transition { online, change });
    }
    Ok(Changed {
        before,
        after,
        made,
    })
}

/// Who is online on nodes other than `me`, as of a snapshot (see [`presence_since`]).
#[derive(Debug, Default)]
pub(crate) struct Seen {
    /// The snapshot the rows were read in (`pg_snapshot` text).
    pub(crate) snapshot: String,
    /// The logins read: every login (`None`), or only these (a change since the last read).
    pub(crate) logins: Option<Vec<String>>,
    /// Their (login, node) rows on other nodes.
    pub(crate) rows: Vec<(String, i64)>,
}

/// [`presence_since`]'s read of the logins changed since a snapshot: `$1` this node, `$2`
/// that snapshot, `$3` logins to read as well.
pub(super) const CHANGED_SINCE: &str = "WITH changed AS MATERIALIZED (\
    SELECT login FROM cluster_presence_last \
    WHERE xid >= pg_snapshot_xmin($2::pg_snapshot) \
    AND NOT pg_visible_in_snapshot(xid, $2::pg_snapshot) \
    UNION SELECT unnest($3::text[])) \
    SELECT pg_current_snapshot()::text, NULL::text, NULL::bigint \
    UNION ALL SELECT NULL, c.login, p.node FROM changed c \
    LEFT JOIN cluster_presence p ON p.login = c.login AND p.node <> $1";

/// Every (login, node) with a session on a node other than `me` (`since` = `None`), or only
/// those of the logins changed since the read in snapshot `since`: their records' `xid` was
/// not visible in it (committed after it, or still running then), so no change is missed
/// whatever the commit order. An idle cluster costs one index probe that finds nothing.
/// `recheck`: logins read as well, changed or not (only with `since`).
pub(crate) async fn presence_since(
    pool: &PgPool,
    me: NodeId,
    since: Option<&str>,
    recheck: &[String],
) -> Result<Seen, sqlx::Error> {
    // One statement: the snapshot and the rows come from the same snapshot.
    let rows: Vec<(Option<String>, Option<String>, Option<i64>)> = match since {
        None => {
            // Records whose xid lies in the future (restored from a dump or moved by logical
            // replication onto a server whose transaction counter is lower) would count as
            // changed on every read until rewritten, for ever for a user who stays online:
            // give them a current one (review LOW 7b). Costs an index probe that finds
            // nothing, normally. A record being changed right now is skipped (its change
            // gives it a current xid).
            sqlx::query(
                "UPDATE cluster_presence_last SET xid = pg_current_xact_id() WHERE login IN \
                 (SELECT login FROM cluster_presence_last \
                 WHERE xid >= pg_snapshot_xmax(pg_current_snapshot()) FOR UPDATE SKIP LOCKED)",
            )
            .execute(pool)
            .await?;
            sqlx::query_as(
                "SELECT pg_current_snapshot()::text, NULL::text, NULL::bigint \
                 UNION ALL SELECT NULL, login, node FROM cluster_presence WHERE node <> $1",
            )
            .bind(me.0)
            .fetch_all(pool)
            .await?
        }
        Some(since) => {
            sqlx::query_as(CHANGED_SINCE)
                .bind(me.0)
                .bind(since)
                .bind(recheck)
                .fetch_all(pool)
                .await?
        }
    };
    let mut seen = Seen {
        logins: since.map(|_| Vec::new()),
        ..Seen::default()
    };
    for (snapshot, login, node) in rows {
        match (snapshot, login, node) {
            (Some(snapshot), _, _) => seen.snapshot = snapshot,
            (None, Some(login), node) => {
                if let Some(logins) = seen.logins.as_mut() {
                    logins.push(login.clone());
                }
                if let Some(node) = node {
                    seen.rows.push((login, node));
                }
            }
            (None, None, _) => {}
        }
    }
    Ok(seen)
}

/// Leader job: removes nodes (other than `me`) whose heartbeat is older than `timeout` (by the database's
/// clock, so the nodes' clocks do not matter). Returns the dead nodes and the logins that
/// are now offline everywhere. `limit`: see [`lock_login`].
pub(crate) async fn reap(
    conn: &mut sqlx::PgConnection,
    me: NodeId,
    timeout: Duration,
    limit: Duration,
) -> Result<(Vec<i64>, Vec<String>), sqlx::Error> {
    // Never itself: the leader heartbeats just before reaping, and a leader whose own
    // heartbeat failed has no business declaring its sessions gone.
    let dead: Vec<i64> = sqlx::query_scalar(
        "SELECT node FROM cluster_nodes \
         WHERE heartbeat_at < clock_timestamp() - make_interval(secs => $1) AND node <> $2",
    )
    .bind(timeout.as_secs_f64())
    .bind(me.0)
    .fetch_all(&mut *conn)
    .await?;
    if dead.is_empty() {
        return Ok((dead, Vec::new()));
    }
    let offline = remove_nodes(&mut *conn, &dead, me, limit).await?;
    // A frozen node's listening session stays open but stops reading: PostgreSQL's
    // notification queue cannot shrink past it and fills up until every NOTIFY (every node's
    // commit announcements) fails. End its sessions; if the node wakes up, it reconnects.
    let names: Vec<String> = dead.iter().map(|n| listener_name(NodeId(*n))).collect();
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE application_name = ANY($1) AND pid <> pg_backend_pid()",
    )
    .bind(&names)
    .execute(&mut *conn)
    .await?;
    Ok((dead, offline))
}

/// The `application_name` of `node`'s listening session.
pub(crate) fn listener_name(node: NodeId) -> String {
    format!("msim-chat node {}", node.0)
}

/// Deletes `nodes` with their presence rows; returns the logins left without any session
/// (transitions recorded as `by`'s, which announces them).
async fn remove_nodes(
    conn: &mut sqlx::PgConnection,
    nodes: &[i64],
    by: NodeId,
    limit: Duration,
) -> Result<Vec<String>, sqlx::Error> {
    let mut tx = sqlx::Connection::begin(conn).await?;
    bound(&mut tx, limit).await?;
    let mut logins: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT login FROM cluster_presence WHERE node = ANY($1)")
            .bind(nodes)
            .fetch_all(&mut *tx)
            .await?;
    // Sorted, so two reapers (or a reaper and a shutdown) lock in the same order.
    logins.sort();
    for login in &logins {
        lock_login(&mut tx, login, limit).await?;
    }
    sqlx::query("DELETE FROM cluster_presence WHERE node = ANY($1)")
        .bind(nodes)
        .execute(&mut *tx)
        .await?;
    sqlx::query("DELETE FROM cluster_nodes WHERE node = ANY($1)")
        .bind(nodes)
        .execute(&mut *tx)
        .await?;
    // A login left without rows: the transition is `by`'s.
    let mut offline: Vec<String> = sqlx::query_scalar(
        "UPDATE cluster_presence_last l SET online = false, node = $2, change = $3 \
         WHERE login = ANY($1) \
         AND NOT EXISTS (SELECT 1 FROM cluster_presence p WHERE p.login = l.login) \
         RETURNING login",
    )
    .bind(&logins)
    .bind(by.0)
    .bind(change_id())
    .fetch_all(&mut *tx)
    .await?;
    offline.sort();
    tx.commit().await?;
    Ok(offline)
}

/// Takes `login`'s presence lock in `tx`, which from then on waits at most `limit` for a lock
/// and runs each statement for at most `limit` (local to `tx`; the statement taking the lock
/// is bounded by the session's `statement_timeout`). The node gives up on a statement after
/// its own deadline; without these the database kept waiting (up to its `lock_timeout`, 15 s,
/// or `statement_timeout`, 30 s), holding the pool connection and the login's lock meanwhile.
async fn lock_login(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    login: &str,
    limit: Duration,
) -> Result<(), sqlx::Error> {
    // The materialised CTE runs first: the lock is waited for under the new lock_timeout.
    sqlx::query(
        "WITH bounded AS MATERIALIZED (SELECT set_config('lock_timeout', $3, true), \
         set_config('statement_timeout', $3, true)) \
         SELECT pg_advisory_xact_lock($1, hashtext($2)) FROM bounded",
    )
    .bind(PRESENCE_LOCKS)
    .bind(login)
    .bind(millis(limit))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Bounds every later statement of `tx`, and its lock waits, by `limit` (see [`lock_login`]).
pub(crate) async fn bound(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    limit: Duration,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "SELECT set_config('lock_timeout', $1, true), set_config('statement_timeout', $1, true)",
    )
    .bind(millis(limit))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// A fresh change id (random, never 0: see [`set_presence`]).
pub(crate) fn change_id() -> i64 {
    i64::from_le_bytes(crate::crypto::random_bytes::<8>()) | 1
}

/// Deletes records of logins offline for longer than `keep` (at most `batch` per run; a
/// change's id matters for seconds), within `limit` (PostgreSQL's own timeouts too). Records
/// locked by a running presence change are skipped, not waited for. The cutoff is `now()`
/// (stable, unlike `clock_timestamp()`): the partial index on `at` is used.
pub(crate) async fn prune_last(
    conn: &mut sqlx::PgConnection,
    keep: Duration,
    batch: i64,
    limit: Duration,
) -> Result<u64, sqlx::Error> {
    use sqlx::Connection;
    let mut tx = conn.begin().await?;
    bound(&mut tx, limit).await?;
    let r = sqlx::query(
        "DELETE FROM cluster_presence_last \
         WHERE login IN (SELECT login FROM cluster_presence_last WHERE NOT online \
         AND at < now() - make_interval(secs => $1) LIMIT $2 FOR UPDATE SKIP LOCKED)",
    )
    .bind(keep.as_secs_f64())
    .bind(batch)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(r.rows_affected())
}

/// `limit` as a PostgreSQL duration setting (at least 1 ms: 0 would mean "no limit").
fn millis(limit: Duration) -> String {
    format!("{}ms", limit.as_millis().max(1))
}
