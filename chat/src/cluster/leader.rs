//! Cluster-wide jobs run on one node: the holder of a session-level advisory lock on a
//! connection of its own. The lock is tied to that database session, so a node that dies
//! (kill -9, network cut) loses it when PostgreSQL ends the session: at once for a closed
//! socket, after `idle_session_timeout` (set to a few heartbeats) for a silent one. The
//! holder checks its connection every heartbeat; the others try to take the lock as often.
//! Every statement on that connection has a deadline of half the idle timeout: a leader cut
//! off (or whose backend hangs) steps down at most a heartbeat plus that deadline after its
//! last good check, before PostgreSQL ends its session and another node can take the lock.
//! Two nodes may still both run a job at the hand-over (a job started just before the cut):
//! the jobs are idempotent database updates, so a duplicate run is harmless.
//!
//! A leader whose own heartbeats fail (its pool cut off, its statements hanging) while its
//! lock connection still answers steps down too: it releases the lock and does not take it
//! again before a heartbeat of its goes through, so a healthy node runs the jobs.

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Advisory lock keys (one 64-bit keyspace; the per-login locks use the two-key form).
pub(crate) const LEADER_LOCK: i64 = 0x6d73_696d_0001;

/// Whether this node leads now, and whether it may.
#[derive(Debug, Clone)]
pub(crate) struct Leadership {
    leads: Arc<AtomicBool>,
    /// Whether this node's last heartbeat went through.
    healthy: Arc<AtomicBool>,
}

impl Default for Leadership {
    fn default() -> Leadership {
        Leadership {
            leads: Arc::new(AtomicBool::new(false)),
            // The node has just registered: its database answered.
            healthy: Arc::new(AtomicBool::new(true)),
        }
    }
}

impl Leadership {
    /// Whether this node holds the lock (as of its last check).
    pub(crate) fn is_leader(&self) -> bool {
        self.leads.load(Ordering::Relaxed)
    }

    /// Records whether this node's last heartbeat went through.
    pub(crate) fn set_healthy(&self, ok: bool) {
        self.healthy.store(ok, Ordering::Relaxed);
    }

    fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }
}

/// The lock holder's connection.
struct Holder {
    conn: Option<PgConnection>,
    leads: bool,
}

impl Holder {
    /// One check: keeps or takes the lock (gives it up while `healthy` is false). Returns
    /// whether this node leads.
    async fn check(&mut self, opts: &PgConnectOptions, heartbeat: Duration, healthy: bool) -> bool {
        let deadline = idle_timeout(heartbeat) / 2;
        if !healthy {
            if let Some(mut conn) = self.conn.take().filter(|_| self.leads) {
                warn!("this node's heartbeats fail: stepping down as leader");
                let unlock = sqlx::query("SELECT pg_advisory_unlock($1)")
                    .bind(LEADER_LOCK)
                    .execute(&mut conn);
                match timeout(deadline, unlock).await {
                    // Unlocked: the connection may stay for later.
                    Ok(Ok(_)) => self.conn = Some(conn),
                    // Dropped: the server frees the lock when it hears of it, or when its
                    // idle timeout ends the session.
                    Ok(Err(e)) => warn!("leader unlock: {e}"),
                    Err(_) => warn!("leader unlock: no answer within {deadline:?}"),
                }
            }
            self.leads = false;
            return false;
        }
        if let Some(conn) = self.conn.as_mut().filter(|_| self.leads) {
            // Held as long as the session answers in time (a lost session has freed the lock;
            // a silent one will be ended by the server: step down before that happens).
            match timeout(deadline, sqlx::query("SELECT 1").execute(&mut *conn)).await {
                Ok(Ok(_)) => return true,
                Ok(Err(e)) => warn!("leader connection lost: {e}"),
                Err(_) => warn!("leader connection silent for {deadline:?}: stepping down"),
            }
            // Dropping the connection closes its socket: the server frees the lock at once
            // if it hears it, else when its idle timeout ends the session.
            self.conn = None;
            self.leads = false;
        }
        if self.conn.is_none() {
            match timeout(deadline, connect(opts, heartbeat)).await {
                Ok(Ok(c)) => self.conn = Some(c),
                Ok(Err(e)) => {
                    warn!("leader connection: {e}");
                    return false;
                }
                Err(_) => {
                    warn!("leader connection: no answer within {deadline:?}");
                    return false;
                }
            }
        }
        let Some(conn) = &mut self.conn else {
            return false;
        };
        let lock = sqlx::query_scalar::<_, bool>("SELECT pg_try_advisory_lock($1)")
            .bind(LEADER_LOCK)
            .fetch_one(&mut *conn);
        match timeout(deadline, lock)
            .await
            .unwrap_or_else(|_| Err(sqlx::Error::Io(std::io::ErrorKind::TimedOut.into())))
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
    let idle = idle_timeout(heartbeat).as_millis();
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

/// How long the lock's session may be silent before PostgreSQL ends it (three heartbeats, at
/// least a second).
fn idle_timeout(heartbeat: Duration) -> Duration {
    (heartbeat * 3).max(Duration::from_secs(1))
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
        let leads = holder.check(&opts, heartbeat, leadership.healthy()).await;
        if leadership.leads.swap(leads, Ordering::Relaxed) != leads {
            info!(leader = leads, "cluster leadership changed");
        }
    }
    leadership.leads.store(false, Ordering::Relaxed);
    if let Some(conn) = holder.conn.take() {
        let _ = conn.close().await;
    }
}
