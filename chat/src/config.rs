//! Server configuration (library side). `main.rs` builds it from flags, a TOML file and the
//! environment; tests build it with [`Config::for_tests`].

use crate::clock::Clock;
use msim_shared::tls::rustls::{ClientConfig, ServerConfig};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Everything the server needs to run. Its `Debug` leaves out the relay secret and the
/// database password, so a config printed into a log or a panic message leaks neither.
#[derive(Clone)]
pub struct Config {
    /// This server's domain (`login@domain`).
    pub domain: String,
    /// Directory holding `msim.db` and `secret.key`.
    pub data_dir: PathBuf,
    /// `postgres://…` URL of a PostgreSQL database (several nodes may share it); `None`:
    /// SQLite in `data_dir/msim.db`.
    pub database: Option<String>,
    /// Whether `REGISTER` is accepted.
    pub registration_open: bool,
    /// Minimum login length.
    pub login_min: usize,
    /// Maximum login length.
    pub login_max: usize,
    /// Minimum password length (characters).
    pub password_min: usize,
    /// Maximum password length (characters).
    pub password_max: usize,
    /// Maximum message text size in bytes.
    pub max_text: usize,
    /// Maximum line length in bytes, excluding the line ending (`\n` or `\r\n`), as in
    /// PROTOCOL.md §1.2.
    pub max_line: usize,
    /// Maximum file size for relay transfers.
    pub max_file_size: u64,
    /// Maximum simultaneous connections.
    pub max_connections: usize,
    /// Requests per second one connection may send on average (token bucket refill); beyond it
    /// requests are refused with `ERROR-RATE-LIMITED`. 0 = unlimited.
    pub request_rate: u32,
    /// Requests one connection may send in a burst (token bucket size).
    pub request_burst: u32,
    /// Maximum contacts per user.
    pub max_contacts: usize,
    /// Outgoing queue (packets) per logged-in session; a session that falls behind is closed.
    pub outbound_queue: usize,
    /// Close connections that have not logged in after this long.
    pub login_timeout: Duration,
    /// Send PING after this much silence.
    pub ping_after: Duration,
    /// Close after this much silence.
    pub idle_timeout: Duration,
    /// A write to a client that takes longer than this closes the connection.
    pub write_timeout: Duration,
    /// Server-side TYPING-END after this much silence.
    pub typing_timeout: Duration,
    /// Unanswered file offers expire after this long.
    pub offer_ttl: Duration,
    /// How often expired offers are swept.
    pub offer_sweep_interval: Duration,
    /// Validity of the relay capability tokens once a transfer is accepted.
    pub token_ttl: Duration,
    /// First throttling delay after a failed login.
    pub throttle_base: Duration,
    /// Longest throttling delay.
    pub throttle_max: Duration,
    /// One recorded failure is forgotten per this much time without failures.
    pub throttle_decay: Duration,
    /// How long an address from which a login succeeded stays known for that login (attempts
    /// from it are not held back by other addresses' failures).
    pub known_address_ttl: Duration,
    /// Lifetime of the device cookies handed out at `CONNECT-OK`.
    pub device_cookie_ttl: Duration,
    /// Failed logins after which a device cookie is no longer trusted.
    pub device_cookie_failures: u32,
    /// Registrations one client address (IPv6: one /64) may make in a burst (token bucket);
    /// 0 = unlimited.
    pub register_burst: u32,
    /// Registrations per address refilled per hour.
    pub register_per_hour: u32,
    /// Registrations one network (IPv4 /24, IPv6 /48) may make in a burst; 0 = unlimited.
    pub register_prefix_burst: u32,
    /// Registrations per network refilled per hour.
    pub register_prefix_per_hour: u32,
    /// Lookups of unknown users (`unknown-user`, `unknown-recipient`) one account may make in a
    /// burst; 0 = unlimited.
    pub discovery_burst: u32,
    /// Lookups of unknown users per account refilled per hour.
    pub discovery_per_hour: u32,
    /// TLS for the chat listener (None: plain TCP). Build it with
    /// `msim_shared::tls::server_config`.
    pub tls: Option<Arc<ServerConfig>>,
    /// Longest time a client may take for its TLS handshake.
    pub tls_handshake_timeout: Duration,
    /// Trust for `https://` relay health checks (None: the bundled default roots).
    pub relay_tls: Option<Arc<ClientConfig>>,
    /// Relay base URLs (`http://host:port` or `https://host:port`). Empty = no relay (file offers get `no-relay`).
    pub relays: Vec<String>,
    /// Relay token secret text (`kid:hex` lines, see `msim_shared::token`); must not be
    /// empty when `relays` is not (start-up refuses); with no relay it may be empty.
    pub relay_secret: String,
    /// Relay health-check period.
    pub relay_health_interval: Duration,
    /// Several nodes on PostgreSQL: how often a node records its heartbeat (and the leader
    /// checks its lock and reaps dead nodes).
    pub cluster_heartbeat: Duration,
    /// Several nodes on PostgreSQL: a node silent for longer is declared dead and its users
    /// go offline. At least three heartbeats (start-up refuses less).
    pub cluster_node_timeout: Duration,
    /// PostgreSQL: the longest a group commit, a heartbeat or a listener check may wait for
    /// the database (a silent network: see docs/OPERATING.md "Scaling out").
    pub database_timeout: Duration,
    /// Timeout of one health check.
    pub relay_health_timeout: Duration,
    /// Below this many free bytes on the data directory's file system, new messages (and
    /// other writes that store data) are refused with `storage-full`. 0 = no watermark.
    pub min_free_space: u64,
    /// How often free space is measured (one `statvfs`), at most.
    pub free_space_check_interval: Duration,
    /// Most pending (undelivered) messages one recipient may have; beyond it sending fails
    /// with `recipient-queue-full`. 0 = unlimited.
    pub max_pending_messages: u64,
    /// A pending message not delivered within this time expires (its sender learns it).
    pub message_ttl: Duration,
    /// What a delivered message leaves behind for read receipts (sender, id, state; never
    /// the text) and undelivered receipts are kept this long.
    pub receipt_retention: Duration,
    /// How often the retention job runs.
    pub purge_interval: Duration,
    /// Most rows of each kind one retention step removes (one writer transaction).
    pub purge_batch: u32,
    /// Source of wall-clock time.
    pub clock: Clock,
    /// Most users one user may block.
    pub max_blocks: usize,
    /// Most open presence requests one user may have waiting (further ones are dropped).
    pub max_presence_requests: usize,
    /// Limits on the open file offers of one account and one address.
    pub offer_quota: OfferQuota,
    /// Federation with other servers (off by default).
    pub federation: crate::federation::FederationConfig,
}

/// Limits on open file offers (PROTOCOL.md §10.2): an offer is open while unanswered and
/// unexpired, and for `upload_window` after its acceptance.
#[derive(Debug, Clone, Copy)]
pub struct OfferQuota {
    /// Most open offers per sender account.
    pub per_account: u64,
    /// Most bytes in open offers per sender account.
    pub bytes_per_account: u64,
    /// Most open offers per client address (IPv4 address or IPv6 /64).
    pub per_address: u64,
    /// Most bytes in open offers per client address.
    pub bytes_per_address: u64,
    /// How long an accepted offer still counts as open.
    pub upload_window: Duration,
}

impl Default for OfferQuota {
    fn default() -> OfferQuota {
        OfferQuota {
            per_account: 16,
            bytes_per_account: 4 << 30,
            per_address: 64,
            bytes_per_address: 16 << 30,
            upload_window: Duration::from_secs(600),
        }
    }
}

impl Default for Config {
    fn default() -> Config {
        Config {
            domain: "localhost".into(),
            data_dir: PathBuf::from("./data"),
            database: None,
            registration_open: true,
            login_min: 3,
            login_max: 32,
            password_min: 8,
            password_max: 1024,
            max_text: 16 * 1024,
            max_line: 65_536,
            max_file_size: 1 << 30,
            max_connections: 25_000,
            max_contacts: 1_000,
            request_rate: 5_000,
            request_burst: 10_000,
            outbound_queue: 256,
            login_timeout: Duration::from_secs(30),
            ping_after: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(120),
            write_timeout: Duration::from_secs(30),
            typing_timeout: Duration::from_secs(10),
            offer_ttl: Duration::from_secs(24 * 3600),
            offer_sweep_interval: Duration::from_secs(30),
            token_ttl: Duration::from_secs(24 * 3600),
            throttle_base: Duration::from_secs(1),
            throttle_max: Duration::from_secs(300),
            throttle_decay: Duration::from_secs(600),
            known_address_ttl: Duration::from_secs(30 * 86_400),
            device_cookie_ttl: Duration::from_secs(90 * 86_400),
            device_cookie_failures: 5,
            register_burst: 5,
            register_per_hour: 5,
            register_prefix_burst: 20,
            register_prefix_per_hour: 20,
            discovery_burst: 20,
            discovery_per_hour: 20,
            tls: None,
            tls_handshake_timeout: msim_shared::tls::HANDSHAKE_TIMEOUT,
            relay_tls: None,
            relays: Vec::new(),
            relay_secret: String::new(),
            relay_health_interval: Duration::from_secs(10),
            relay_health_timeout: Duration::from_secs(3),
            cluster_heartbeat: Duration::from_secs(2),
            cluster_node_timeout: Duration::from_secs(10),
            database_timeout: Duration::from_secs(20),
            min_free_space: 64 << 20,
            free_space_check_interval: Duration::from_secs(1),
            max_pending_messages: 10_000,
            message_ttl: Duration::from_secs(30 * 24 * 3600),
            receipt_retention: Duration::from_secs(7 * 24 * 3600),
            purge_interval: Duration::from_secs(60),
            purge_batch: 1_000,
            clock: Clock::system(),
            max_blocks: 1_000,
            max_presence_requests: 1_000,
            offer_quota: OfferQuota::default(),
            federation: Default::default(),
        }
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secret = if self.relay_secret.is_empty() {
            "<none>"
        } else {
            "<redacted>"
        };
        f.debug_struct("Config")
            .field("domain", &self.domain)
            .field("data_dir", &self.data_dir)
            .field(
                "database",
                &self.database.as_deref().map(crate::db::redact_database_url),
            )
            .field("registration_open", &self.registration_open)
            .field("tls", &self.tls.is_some())
            .field("relays", &self.relays)
            .field("relay_secret", &secret)
            .field("max_connections", &self.max_connections)
            .field("max_file_size", &self.max_file_size)
            .field("offer_quota", &self.offer_quota)
            .field("federation", &self.federation)
            .finish_non_exhaustive()
    }
}

impl Config {
    /// A configuration for tests: data in `data_dir`, a manual clock, short timers, and no
    /// registration limit (tests register many users from 127.0.0.1).
    pub fn for_tests(data_dir: impl Into<PathBuf>) -> Config {
        Config {
            data_dir: data_dir.into(),
            clock: Clock::manual(),
            relay_secret: String::new(),
            register_burst: 0,
            register_prefix_burst: 0,
            // Tests must not depend on the host's free disk space; the watermark has its own.
            min_free_space: 0,
            ..Config::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Config;

    #[test]
    fn debug_output_never_shows_the_relay_secret_or_the_database_password() {
        let config = Config {
            relay_secret: "k1:00112233445566778899aabbccddeeff".into(),
            database: Some("postgres://msim:hunter2hunter2@db.example/msim".into()),
            ..Config::default()
        };
        let shown = format!("{config:?}");
        assert!(
            !shown.contains("00112233445566778899aabbccddeeff"),
            "{shown}"
        );
        assert!(!shown.contains("hunter2hunter2"), "{shown}");
        assert!(shown.contains("db.example"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }
}
