//! Login throttling and registration limits shared by the nodes of a cluster: the policy of
//! `crate::throttle` (failures double the delay, decay one per `decay`; counted per login and
//! address, per address, and per login for unknown addresses) and of `crate::rate` (token
//! buckets per host and per network), with the counters in database tables. Each change is
//! one atomic statement or one short transaction with row locks, so concurrent attempts on
//! different nodes are all counted. Rows carry an expiry after which they mean nothing; the
//! leader prunes them ([`prune`]), which bounds the tables by what was written within that
//! time.
//!
//! Each scope of `cluster_login_failures` is also capped ([`ROWS_PER_SCOPE`], counted by the
//! triggers of migration 0140): an attacker with many addresses (or logins) can fill it within
//! that time. A failure whose key has no row while its scope is full is counted on a coarser
//! shared key instead — the address's network (IPv4 /24, IPv6 /48), then one overflow row
//! per scope — and [`SharedThrottle::wait`] takes the longest wait of every level, so a full
//! table throttles more addresses (those sharing a network, then everyone without a row),
//! never fewer. No row is dropped early to make room. A user at an address known for their
//! login (a recent successful login) skips the shared rows, as it skips the login's count of
//! strangers' failures: a full table does not lock owners out.

use crate::rate::{host_key, prefix_key};
use crate::throttle::{micros, Delays};
use sqlx::PgPool;
use std::net::IpAddr;
use std::time::Duration;

const LOGIN_AT_ADDR: i16 = 0;
const ADDR: i16 = 1;
const LOGIN: i16 = 2;
/// Failures of a login from an address counted on the address's network (LOGIN_AT_ADDR full).
const LOGIN_AT_NET: i16 = 3;
/// Failures of an address counted on its network (ADDR full).
const ADDR_NET: i16 = 4;
/// The last level: one row per scope (key [`OVER_LOGIN_AT`], [`OVER_ADDR`], [`OVER_LOGIN`]).
const OVERFLOW: i16 = 5;
const OVER_LOGIN_AT: &str = "login at address";
const OVER_ADDR: &str = "address";
const OVER_LOGIN: &str = "login";
/// Most rows per capped scope of `cluster_login_failures` (as `crate::throttle::MAX_ENTRIES`).
pub(crate) const ROWS_PER_SCOPE: i64 = 100_000;
const BUCKET_HOST: i16 = 0;
const BUCKET_PREFIX: i16 = 1;
/// How long a large live packet stays in `cluster_events` (it is read within milliseconds).
const EVENT_KEEP_SECS: f64 = 60.0;
/// Most known addresses kept per login (the most recent ones): an attacker who logs in to
/// their own account from many addresses cannot grow the table past this per account.
pub(crate) const KNOWN_PER_LOGIN: i64 = 32;

/// The shared login throttle.
#[derive(Debug, Clone)]
pub(crate) struct SharedThrottle {
    pool: PgPool,
    delays: Delays,
    cap: i64,
}

fn pair_key(login: &str, ip: IpAddr) -> String {
    format!("{login} {ip}")
}

/// The keys a failure of `login` at `ip` (a host key) may be counted on, finest first, per
/// counted scope: (login at address, address, login).
fn levels(login: &str, ip: IpAddr) -> [Vec<(i16, String)>; 3] {
    let net = prefix_key(ip);
    [
        vec![
            (LOGIN_AT_ADDR, pair_key(login, ip)),
            (LOGIN_AT_NET, pair_key(login, net)),
            (OVERFLOW, OVER_LOGIN_AT.to_owned()),
        ],
        vec![
            (ADDR, ip.to_string()),
            (ADDR_NET, net.to_string()),
            (OVERFLOW, OVER_ADDR.to_owned()),
        ],
        vec![(LOGIN, login.to_owned()), (OVERFLOW, OVER_LOGIN.to_owned())],
    ]
}

/// Whether a row is skipped for an address known for the login: the login's count of
/// failures from unknown addresses, and the shared rows of a full table (whoever guesses a
/// login from an address that never logged into it still sees them).
fn skipped_when_known(scope: i16) -> bool {
    matches!(scope, LOGIN | LOGIN_AT_NET | ADDR_NET | OVERFLOW)
}

impl SharedThrottle {
    pub(crate) fn new(pool: PgPool, delays: Delays) -> SharedThrottle {
        SharedThrottle::with_cap(pool, delays, ROWS_PER_SCOPE)
    }

    /// With at most `cap` rows per capped scope (tests use a small one).
    pub(crate) fn with_cap(pool: PgPool, delays: Delays, cap: i64) -> SharedThrottle {
        SharedThrottle { pool, delays, cap }
    }

    /// Whether `login` logged in successfully from `ip` within the known-address time.
    pub(crate) async fn is_known(
        &self,
        login: &str,
        ip: IpAddr,
        now: i64,
    ) -> Result<bool, sqlx::Error> {
        let at: Option<i64> = sqlx::query_scalar(
            "SELECT at_us FROM cluster_known_addresses WHERE login = $1 AND addr = $2",
        )
        .bind(login)
        .bind(host_key(ip).to_string())
        .fetch_optional(&self.pool)
        .await?;
        Ok(at.is_some_and(|at| now - at < micros(self.delays.known_for)))
    }

    /// How long `login` from `ip` must still wait; zero = may try now.
    #[cfg(test)]
    pub(crate) async fn wait(
        &self,
        login: &str,
        ip: IpAddr,
        now: i64,
    ) -> Result<Duration, sqlx::Error> {
        let known = self.is_known(login, ip, now).await?;
        self.wait_known(login, ip, now, known).await
    }

    /// How long `login` from `ip` must still wait (zero = may try now), `known` being
    /// [`SharedThrottle::is_known`]'s answer, already asked (a login attempt asks once).
    pub(crate) async fn wait_known(
        &self,
        login: &str,
        ip: IpAddr,
        now: i64,
        known: bool,
    ) -> Result<Duration, sqlx::Error> {
        let ip = host_key(ip);
        let (scopes, keys): (Vec<i16>, Vec<String>) =
            levels(login, ip).into_iter().flatten().unzip();
        let rows: Vec<(i16, i32, i64)> = sqlx::query_as(
            "SELECT scope, failures, last_us FROM cluster_login_failures \
             WHERE (scope, key) IN (SELECT * FROM unnest($1::int2[], $2::text[]))",
        )
        .bind(scopes)
        .bind(keys)
        .fetch_all(&self.pool)
        .await?;
        let mut wait = Duration::ZERO;
        for (scope, failures, last) in rows {
            if known && skipped_when_known(scope) {
                continue;
            }
            let n = self
                .delays
                .remaining(u32::try_from(failures).unwrap_or(0), last, now);
            let until = last + micros(self.delays.delay(n));
            wait = wait.max(Duration::from_micros(
                u64::try_from(until - now).unwrap_or(0),
            ));
        }
        Ok(wait)
    }

    /// Counts a failure on the first of `levels` that has a row or room for one (the last
    /// always takes it).
    async fn fail(&self, levels: &[(i16, String)], now: i64) -> Result<(), sqlx::Error> {
        for (i, (scope, key)) in levels.iter().enumerate() {
            let cap = if i + 1 == levels.len() {
                i64::MAX
            } else {
                self.cap
            };
            let counted = sqlx::query(
                "INSERT INTO cluster_login_failures (scope, key, failures, last_us, expires_us) \
                 SELECT $1, $2, 1, $3, $3 + $5 \
                 WHERE EXISTS (SELECT 1 FROM cluster_login_failures WHERE scope = $1 AND key = $2) \
                   OR (SELECT coalesce(sum(n), 0) FROM cluster_throttle_rows WHERE scope = $1) < $6 \
                 ON CONFLICT (scope, key) DO UPDATE SET \
                   failures = LEAST(GREATEST(cluster_login_failures.failures::bigint \
                     - GREATEST(EXCLUDED.last_us - cluster_login_failures.last_us, 0) / $4, 0) + 1, \
                     2147483647)::int, \
                   last_us = EXCLUDED.last_us, expires_us = EXCLUDED.expires_us",
            )
            .bind(scope)
            .bind(key)
            .bind(now)
            .bind(micros(self.delays.decay).max(1))
            .bind(self.delays.horizon())
            .bind(cap)
            .execute(&self.pool)
            .await?;
            if counted.rows_affected() > 0 {
                break;
            }
        }
        Ok(())
    }

    /// Records a failed attempt without a valid device cookie.
    pub(crate) async fn failure(
        &self,
        login: &str,
        ip: IpAddr,
        now: i64,
    ) -> Result<(), sqlx::Error> {
        let ip = host_key(ip);
        let [login_at_addr, addr, per_login] = levels(login, ip);
        if !self.is_known(login, ip, now).await? {
            self.fail(&per_login, now).await?;
        }
        self.fail(&login_at_addr, now).await?;
        self.fail(&addr, now).await
    }

    /// Records a success, as `crate::throttle::Throttle::success`. Failures counted on a
    /// shared network or overflow row (the table was full) are left to decay: forgiving
    /// them would forgive the other addresses counted there.
    pub(crate) async fn success(
        &self,
        login: &str,
        ip: IpAddr,
        now: i64,
    ) -> Result<(), sqlx::Error> {
        let ip = host_key(ip);
        let mut tx = self.pool.begin().await?;
        let own: Option<(i32, i64)> = sqlx::query_as(
            "DELETE FROM cluster_login_failures WHERE scope = $1 AND key = $2 \
             RETURNING failures, last_us",
        )
        .bind(LOGIN_AT_ADDR)
        .bind(pair_key(login, ip))
        .fetch_optional(&mut *tx)
        .await?;
        let own = own.map_or(0, |(f, last)| {
            self.delays
                .remaining(u32::try_from(f).unwrap_or(0), last, now)
        });
        if own > 0 {
            let addr: Option<(i32, i64)> = sqlx::query_as(
                "SELECT failures, last_us FROM cluster_login_failures \
                 WHERE scope = $1 AND key = $2 FOR UPDATE",
            )
            .bind(ADDR)
            .bind(ip.to_string())
            .fetch_optional(&mut *tx)
            .await?;
            if let Some((f, last)) = addr {
                let left = self
                    .delays
                    .remaining(u32::try_from(f).unwrap_or(0), last, now)
                    .saturating_sub(own);
                sqlx::query(
                    "UPDATE cluster_login_failures SET failures = $3, last_us = $4, \
                     expires_us = $4 + $5 WHERE scope = $1 AND key = $2",
                )
                .bind(ADDR)
                .bind(ip.to_string())
                .bind(i32::try_from(left).unwrap_or(i32::MAX))
                .bind(now)
                .bind(self.delays.horizon())
                .execute(&mut *tx)
                .await?;
            }
        }
        sqlx::query(
            "INSERT INTO cluster_known_addresses (login, addr, at_us, expires_us) \
             VALUES ($1, $2, $3, $3 + $4) ON CONFLICT (login, addr) \
             DO UPDATE SET at_us = EXCLUDED.at_us, expires_us = EXCLUDED.expires_us",
        )
        .bind(login)
        .bind(ip.to_string())
        .bind(now)
        .bind(micros(self.delays.known_for))
        .execute(&mut *tx)
        .await?;
        // The oldest beyond the cap are forgotten (found through the primary key's login
        // prefix): a legitimate user's recent addresses stay known.
        sqlx::query(
            "DELETE FROM cluster_known_addresses WHERE login = $1 AND addr IN \
             (SELECT addr FROM cluster_known_addresses WHERE login = $1 \
              ORDER BY at_us DESC, addr OFFSET $2)",
        )
        .bind(login)
        .bind(KNOWN_PER_LOGIN)
        .execute(&mut *tx)
        .await?;
        tx.commit().await
    }
}

/// Registration limits shared by the nodes: `burst` tokens per host and per network,
/// refilled at `per_hour`; `burst == 0`: unlimited.
#[derive(Debug, Clone)]
pub(crate) struct SharedRegisterLimits {
    pool: PgPool,
    host: (f64, f64),
    prefix: (f64, f64),
}

const MICROS_PER_HOUR: f64 = 3_600_000_000.0;

impl SharedRegisterLimits {
    pub(crate) fn new(pool: PgPool, host: (u32, u32), prefix: (u32, u32)) -> SharedRegisterLimits {
        let rate = |(burst, per_hour): (u32, u32)| {
            (f64::from(burst), f64::from(per_hour) / MICROS_PER_HOUR)
        };
        SharedRegisterLimits {
            pool,
            host: rate(host),
            prefix: rate(prefix),
        }
    }

    /// Takes a token from `ip`'s host and network buckets; false (nothing taken) when either
    /// is empty. One transaction locking both rows, always host first.
    pub(crate) async fn allow_register(&self, ip: IpAddr, now: i64) -> Result<bool, sqlx::Error> {
        let buckets = [
            (BUCKET_HOST, host_key(ip).to_string(), self.host),
            (BUCKET_PREFIX, prefix_key(ip).to_string(), self.prefix),
        ];
        let limited: Vec<_> = buckets.iter().filter(|b| b.2 .0 > 0.0).collect();
        if limited.is_empty() {
            return Ok(true);
        }
        let mut tx = self.pool.begin().await?;
        let mut levels = Vec::new();
        for (scope, key, (burst, per_micro)) in &limited {
            sqlx::query(
                "INSERT INTO cluster_buckets (scope, key, level, at_us, expires_us) \
                 VALUES ($1, $2, $3, $4, $4) ON CONFLICT DO NOTHING",
            )
            .bind(scope)
            .bind(key)
            .bind(burst)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            let (level, at): (f64, i64) = sqlx::query_as(
                "SELECT level, at_us FROM cluster_buckets WHERE scope = $1 AND key = $2 FOR UPDATE",
            )
            .bind(scope)
            .bind(key)
            .fetch_one(&mut *tx)
            .await?;
            levels.push((level + (now - at).max(0) as f64 * per_micro).min(*burst));
        }
        if levels.iter().any(|l| *l < 1.0) {
            tx.rollback().await?;
            return Ok(false);
        }
        for ((scope, key, (burst, per_micro)), level) in limited.iter().zip(levels) {
            let left = level - 1.0;
            // Full again after (burst - left) / rate: the row means nothing from then on.
            let refill = if *per_micro > 0.0 {
                ((burst - left) / per_micro)
                    .ceil()
                    .min(i64::MAX as f64 / 2.0) as i64
            } else {
                i64::MAX / 2
            };
            sqlx::query(
                "UPDATE cluster_buckets SET level = $3, at_us = $4, expires_us = $5 \
                 WHERE scope = $1 AND key = $2",
            )
            .bind(scope)
            .bind(key)
            .bind(left)
            .bind(now)
            .bind(now.saturating_add(refill))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(true)
    }
}

/// Most rows of each table one prune run deletes: a run stays short (well inside the
/// statement timeout) however large an attacker grew a table; the next runs take the rest.
const PRUNE_BATCH: i64 = 10_000;

/// Leader job: deletes rows of the shared tables that mean nothing any more at `now`, at most
/// [`PRUNE_BATCH`] per table and run (found through the expiry indexes of migration 0122).
/// One transaction whose statements and lock waits the database ends after `limit` (the
/// caller's own deadline; a row locked by a stuck transaction would otherwise hold the pool
/// connection up to the session's `lock_timeout`).
pub(crate) async fn prune(pool: &PgPool, now: i64, limit: Duration) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    super::nodes::bound(&mut tx, limit).await?;
    for table in [
        "cluster_login_failures",
        "cluster_known_addresses",
        "cluster_buckets",
    ] {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM {table} WHERE ctid IN \
             (SELECT ctid FROM {table} WHERE expires_us < $1 LIMIT $2)"
        )))
        .bind(now)
        .bind(PRUNE_BATCH)
        .execute(&mut *tx)
        .await?;
    }
    sqlx::query(
        "DELETE FROM cluster_events WHERE id IN (SELECT id FROM cluster_events \
         WHERE created_at < clock_timestamp() - make_interval(secs => $1) LIMIT $2)",
    )
    .bind(EVENT_KEEP_SECS)
    .bind(PRUNE_BATCH)
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}
