//! Cluster-wide jobs run on one node: the holder of a session-level advisory lock on a
//! connection of its own. The lock is tied to that database session, so a node that dies
//! (kill -9, network cut) loses it when PostgreSQL ends the session: at once for a closed
//! socket, after `idle_session_timeout` (set to a few heartbeats) for a silent one. The
//! holder checks its connection every heartbeat; the others try to take the lock as often.
//! Two nodes may briefly both believe they lead (the old leader cut off until its next
//! check fails): the jobs are idempotent database updates, so a duplicate run is harmless.

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Advisory lock keys (one 64-bit keyspace; the per-login locks use the two-key form).
pub(crate) const LEADER_LOCK: i64 = 0x6d73_696d_0001;
pub(crate) const SCHEMA_LOCK: i64 = 0x6d73_696d_0002;

/// Whether this node leads now.
#[derive(Debug, Clone, Default)]
pub(crate) struct Leadership(Arc<AtomicBool>);

impl Leadership {
    /// Whether this node holds the lock (as of its last check).
    pub(crate) fn is_leader(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// The lock holder's connection.
struct Holder {
    conn: Option<PgConnection>,
    leads: bool,
}

impl Holder {
    /// One check: keeps or takes the lock. Returns whether this node leads.
    async fn check(&mut self, opts: &PgConnectOptions, heartbeat: Duration) -> bool {
        if let Some(conn) = self.conn.as_mut().filter(|_| self.leads) {
            // Held as long as the session answers (a lost session has freed the lock).
            match sqlx::query("SELECT 1").execute(&mut *conn).await {
                Ok(_) => return true,
                Err(e) => {
                    warn!("leader connection lost: {e}");
                    self.conn = None;
                    self.leads = false;
                }
            }
        }
        if self.conn.is_none() {
            match connect(opts, heartbeat).await {
                Ok(c) => self.conn = Some(c),
                Err(e) => {
                    warn!("leader connection: {e}");
                    return false;
                }
            }
        }
        let Some(conn) = &mut self.conn else {
            return false;
        };
        match sqlx::query_scalar::<_, bool>("SELECT pg_try_advisory_lock($1)")
            .bind(LEADER_LOCK)
            .fetch_one(&mut *conn)
            .await
        {
            Ok(got) => {
                self.leads = got;
                got
            }
            Err(e) => {
                warn!("leader lock: {e}");
                self.conn = None;
                self.leads = false;
                false
            }
        }
    }
}

/// A connection for the lock whose session PostgreSQL ends when the node goes silent.
async fn connect(
    opts: &PgConnectOptions,
    heartbeat: Duration,
) -> Result<PgConnection, sqlx::Error> {
    let mut conn = opts.connect().await?;
    // PostgreSQL 14+: end this session (freeing the lock) when it is idle for three heartbeats.
    let idle = (heartbeat * 3).as_millis().max(1000);
    if let Err(e) = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "SET idle_session_timeout = {idle}"
    )))
    .execute(&mut conn)
    .await
    {
        warn!("idle_session_timeout not available ({e}): a cut-off leader keeps the lock until TCP notices");
    }
    Ok(conn)
}

/// Runs the leadership loop until `stop`, keeping `leadership` up to date.
pub(crate) async fn run(
    opts: PgConnectOptions,
    heartbeat: Duration,
    leadership: Leadership,
    stop: CancellationToken,
) {
    let mut holder = Holder {
        conn: None,
        leads: false,
    };
    let mut tick = tokio::time::interval(heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let leads = holder.check(&opts, heartbeat).await;
        if leadership.0.swap(leads, Ordering::Relaxed) != leads {
            info!(leader = leads, "cluster leadership changed");
        }
    }
    leadership.0.store(false, Ordering::Relaxed);
    if let Some(conn) = holder.conn.take() {
        let _ = conn.close().await;
    }
}
