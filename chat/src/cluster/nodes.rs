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
    remove_nodes(&mut *pool.acquire().await?, &[node.0], limit).await
}

/// `login` got its first session on `node`; returns whether it is the first anywhere.
/// `limit`: see [`lock_login`].
pub(crate) async fn session_opened(
    pool: &PgPool,
    node: NodeId,
    login: &str,
    limit: Duration,
) -> Result<bool, sqlx::Error> {
    let mut tx = pool.begin().await?;
    lock_login(&mut tx, login, limit).await?;
    sqlx::query(
        "INSERT INTO cluster_presence (login, node) VALUES ($1, $2) ON CONFLICT DO NOTHING",
    )
    .bind(login)
    .bind(node.0)
    .execute(&mut *tx)
    .await?;
    let nodes: i64 = sqlx::query_scalar("SELECT count(*) FROM cluster_presence WHERE login = $1")
        .bind(login)
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(nodes == 1)
}

/// `login`'s last session on `node` ended; returns whether it was the last anywhere: its row
/// removed here and no other left, or with `repair` (an earlier close may have removed the
/// row without an answer, so nobody was told) no row left at all. `limit`: see
/// [`lock_login`].
pub(crate) async fn session_closed(
    pool: &PgPool,
    node: NodeId,
    login: &str,
    repair: bool,
    limit: Duration,
) -> Result<bool, sqlx::Error> {
    let mut tx = pool.begin().await?;
    lock_login(&mut tx, login, limit).await?;
    let removed = sqlx::query("DELETE FROM cluster_presence WHERE login = $1 AND node = $2")
        .bind(login)
        .bind(node.0)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM cluster_presence WHERE login = $1")
        .bind(login)
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok((removed == 1 || repair) && left == 0)
}

/// Every (login, node) with a session on a node other than `me`.
pub(crate) async fn online_elsewhere(
    pool: &PgPool,
    me: NodeId,
) -> Result<Vec<(String, i64)>, sqlx::Error> {
    sqlx::query_as("SELECT login, node FROM cluster_presence WHERE node <> $1")
        .bind(me.0)
        .fetch_all(pool)
        .await
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
    let offline = remove_nodes(&mut *conn, &dead, limit).await?;
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

/// Deletes `nodes` with their presence rows; returns the logins left without any session.
async fn remove_nodes(
    conn: &mut sqlx::PgConnection,
    nodes: &[i64],
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
    let offline: Vec<String> = sqlx::query_scalar(
        "SELECT l FROM unnest($1::text[]) AS l \
         WHERE NOT EXISTS (SELECT 1 FROM cluster_presence p WHERE p.login = l)",
    )
    .bind(&logins)
    .fetch_all(&mut *tx)
    .await?;
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

/// `limit` as a PostgreSQL duration setting (at least 1 ms: 0 would mean "no limit").
fn millis(limit: Duration) -> String {
    format!("{}ms", limit.as_millis().max(1))
}
