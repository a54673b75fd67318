//! msim-chat's settings: one struct that is the command line (long flags, `MSIM_CHAT_*`
//! environment variables) and the TOML file's schema (keys = long flag names). Precedence:
//! flag > environment > file > the defaults of [`Config::default`]. [`ChatSettings::apply`]
//! validates them into the library [`Config`].

use crate::Config;
use msim_shared::settings::HumanDuration;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;

/// Default address of the chat protocol.
pub const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 3214);
/// Default address of the embedded relay.
pub const DEFAULT_EMBEDDED_RELAY_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 3215);

/// Every option of msim-chat; `None` = not set at this layer.
#[derive(Debug, Default, Clone, PartialEq, clap::Args, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", default, deny_unknown_fields)]
pub struct ChatSettings {
    /// Address to listen on [default: 127.0.0.1:3214].
    #[arg(long, env = "MSIM_CHAT_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// This server's domain (addresses are login@domain) [default: localhost].
    #[arg(long, env = "MSIM_CHAT_DOMAIN")]
    pub domain: Option<String>,
    /// Data directory: msim.db (SQLite), secret.key, relay.secret, relay/ [default: ./data].
    #[arg(long, env = "MSIM_CHAT_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// PostgreSQL database URL (postgres://user:password@host:port/db, or ?host=/socket/dir);
    /// several nodes may share one. Without it: SQLite in <data-dir>/msim.db.
    #[arg(long, env = "MSIM_CHAT_DATABASE_URL", value_name = "URL")]
    pub database: Option<String>,
    /// Relay base URL, e.g. http://relay1:3215 or https://relay1.example.org:3215 (repeatable),
    /// or PUBLIC=INTERNAL: the URL handed to clients, then the URL msim-chat checks health at
    /// (e.g. http://localhost:8215=http://relay1:3215). Without any, an embedded relay runs.
    #[arg(long = "relay", env = "MSIM_CHAT_RELAYS", value_delimiter = ',')]
    #[serde(rename = "relay", skip_serializing_if = "Vec::is_empty")]
    pub relays: Vec<String>,
    /// Listen address of the embedded relay [default: 127.0.0.1:3215].
    #[arg(long, env = "MSIM_CHAT_EMBEDDED_RELAY_LISTEN")]
    pub embedded_relay_listen: Option<SocketAddr>,
    /// Serve the embedded relay's GET /metrics on this separate address (keep it internal);
    /// without it the embedded relay serves no metrics.
    #[arg(
        long,
        env = "MSIM_CHAT_EMBEDDED_RELAY_METRICS_LISTEN",
        value_name = "ADDR"
    )]
    pub embedded_relay_metrics_listen: Option<SocketAddr>,
    /// Serve TLS with this certificate chain (PEM, leaf first); needs --tls-key. The embedded
    /// relay, if any, serves TLS with the same certificate.
    #[arg(long, env = "MSIM_CHAT_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long, env = "MSIM_CHAT_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// Extra CA certificate(s) (PEM) trusted for https:// relay health checks, besides the
    /// bundled public roots.
    #[arg(long, env = "MSIM_CHAT_RELAY_CA_FILE", value_name = "FILE")]
    pub relay_ca_file: Option<PathBuf>,
    /// URL of the embedded relay handed to clients [default: http(s)://<embedded-relay-listen>].
    /// With TLS its host must match the certificate.
    #[arg(long, env = "MSIM_CHAT_EMBEDDED_RELAY_URL", value_name = "URL")]
    pub embedded_relay_url: Option<String>,
    /// Relay token secret file (`kid:secret` lines) for external relays; otherwise the
    /// MSIM_RELAY_SECRET environment variable holds the secret text.
    #[arg(long, env = "MSIM_CHAT_RELAY_SECRET_FILE")]
    pub relay_secret_file: Option<PathBuf>,
    /// Refuse REGISTER (registration-closed).
    #[arg(long, env = "MSIM_CHAT_REGISTRATION_CLOSED")]
    pub registration_closed: Option<bool>,
    /// Minimum login length [default: 3].
    #[arg(long, env = "MSIM_CHAT_LOGIN_MIN")]
    pub login_min: Option<usize>,
    /// Maximum login length [default: 32].
    #[arg(long, env = "MSIM_CHAT_LOGIN_MAX")]
    pub login_max: Option<usize>,
    /// Minimum password length [default: 8].
    #[arg(long, env = "MSIM_CHAT_PASSWORD_MIN")]
    pub password_min: Option<usize>,
    /// Registrations one client address (IPv6: one /64) may make at once; 0 = unlimited
    /// [default: 5].
    #[arg(long, env = "MSIM_CHAT_REGISTER_BURST")]
    pub register_burst: Option<u32>,
    /// Registrations per client address refilled per hour [default: 5].
    #[arg(long, env = "MSIM_CHAT_REGISTER_PER_HOUR")]
    pub register_per_hour: Option<u32>,
    /// Registrations one network (IPv4 /24, IPv6 /48) may make at once; 0 = unlimited
    /// [default: 20].
    #[arg(long, env = "MSIM_CHAT_REGISTER_PREFIX_BURST")]
    pub register_prefix_burst: Option<u32>,
    /// Registrations per network refilled per hour [default: 20].
    #[arg(long, env = "MSIM_CHAT_REGISTER_PREFIX_PER_HOUR")]
    pub register_prefix_per_hour: Option<u32>,
    /// Lookups of unknown users (unknown-user, unknown-recipient) one account may make at
    /// once; 0 = unlimited [default: 20].
    #[arg(long, env = "MSIM_CHAT_DISCOVERY_BURST")]
    pub discovery_burst: Option<u32>,
    /// Lookups of unknown users per account refilled per hour [default: 20].
    #[arg(long, env = "MSIM_CHAT_DISCOVERY_PER_HOUR")]
    pub discovery_per_hour: Option<u32>,
    /// Maximum message text in bytes [default: 16384].
    #[arg(long, env = "MSIM_CHAT_MAX_TEXT")]
    pub max_text: Option<usize>,
    /// Maximum line length in bytes [default: 65536].
    #[arg(long, env = "MSIM_CHAT_MAX_LINE")]
    pub max_line: Option<usize>,
    /// Maximum file size offered through relays, bytes [default: 1073741824].
    #[arg(long, env = "MSIM_CHAT_MAX_FILE_SIZE")]
    pub max_file_size: Option<u64>,
    /// Maximum simultaneous connections [default: 25000].
    #[arg(long, env = "MSIM_CHAT_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Most open file offers (unanswered, or accepted in the last 10 min) per sender account
    /// [default: 16].
    #[arg(long, env = "MSIM_CHAT_MAX_OPEN_OFFERS")]
    pub max_open_offers: Option<u64>,
    /// Most bytes in open file offers per sender account [default: 4294967296].
    #[arg(long, env = "MSIM_CHAT_MAX_OFFERED_BYTES")]
    pub max_offered_bytes: Option<u64>,
    /// Most open file offers per client address (IPv4, IPv6 /64) [default: 64].
    #[arg(long, env = "MSIM_CHAT_MAX_OPEN_OFFERS_PER_ADDRESS")]
    pub max_open_offers_per_address: Option<u64>,
    /// Most bytes in open file offers per client address [default: 17179869184].
    #[arg(long, env = "MSIM_CHAT_MAX_OFFERED_BYTES_PER_ADDRESS")]
    pub max_offered_bytes_per_address: Option<u64>,
    /// Most users one user may block [default: 1000].
    #[arg(long, env = "MSIM_CHAT_MAX_BLOCKS")]
    pub max_blocks: Option<usize>,
    /// Refuse new messages (`storage-full`) when the data directory's file system has fewer
    /// free bytes than this; 0 = off [default: 67108864 (64 MiB)].
    #[arg(long, env = "MSIM_CHAT_MIN_FREE_SPACE")]
    pub min_free_space: Option<u64>,
    /// Most undelivered messages one recipient may have waiting (`recipient-queue-full`
    /// beyond); 0 = unlimited [default: 10000].
    #[arg(long, env = "MSIM_CHAT_MAX_PENDING_MESSAGES")]
    pub max_pending_messages: Option<u64>,
    /// Undelivered messages expire after this long; their senders get
    /// `MESSAGE-SEND-FAILED reason=expired` [default: 30days].
    #[arg(long, env = "MSIM_CHAT_MESSAGE_TTL")]
    pub message_ttl: Option<HumanDuration>,
    /// How long a delivered message's receipt data (id, sender, state; never its text) and
    /// undelivered read receipts are kept [default: 7days].
    #[arg(long, env = "MSIM_CHAT_RECEIPT_RETENTION")]
    pub receipt_retention: Option<HumanDuration>,
    /// How often the retention job runs (expiry, purge of delivered messages) [default: 60s].
    #[arg(long, env = "MSIM_CHAT_PURGE_INTERVAL")]
    pub purge_interval: Option<HumanDuration>,
    /// Unanswered file offers expire after this long [default: 24h].
    #[arg(long, env = "MSIM_CHAT_OFFER_TTL")]
    pub offer_ttl: Option<HumanDuration>,
    /// Close connections that have not logged in after this long [default: 30s].
    #[arg(long, env = "MSIM_CHAT_LOGIN_TIMEOUT")]
    pub login_timeout: Option<HumanDuration>,
    /// Longest delay imposed after failed logins [default: 5m].
    #[arg(long, env = "MSIM_CHAT_THROTTLE_MAX")]
    pub throttle_max: Option<HumanDuration>,
    /// Relay health-check period [default: 10s].
    #[arg(long, env = "MSIM_CHAT_RELAY_HEALTH_INTERVAL")]
    pub relay_health_interval: Option<HumanDuration>,
    /// Federation with other mSIM servers: off, allowlist (only --federation-allow domains)
    /// or open (all but --federation-deny); needs a key (`msim-chat federation keygen`)
    /// [default: off].
    #[arg(long, env = "MSIM_CHAT_FEDERATION", value_name = "off|allowlist|open")]
    pub federation: Option<crate::federation::Mode>,
    /// Domain allowed to federate in allowlist mode (repeatable).
    #[arg(
        long = "federation-allow",
        env = "MSIM_CHAT_FEDERATION_ALLOW",
        value_delimiter = ','
    )]
    #[serde(rename = "federation-allow", skip_serializing_if = "Vec::is_empty")]
    pub federation_allow: Vec<String>,
    /// Domain never federated with, in any mode (repeatable; deny wins over allow).
    #[arg(
        long = "federation-deny",
        env = "MSIM_CHAT_FEDERATION_DENY",
        value_delimiter = ','
    )]
    #[serde(rename = "federation-deny", skip_serializing_if = "Vec::is_empty")]
    pub federation_deny: Vec<String>,
    /// Address of the server-to-server listener (TLS) [default: 127.0.0.1:3216].
    #[arg(long, env = "MSIM_CHAT_S2S_LISTEN")]
    pub s2s_listen: Option<SocketAddr>,
    /// Also dial peers whose addresses are loopback or private (tests, private networks).
    #[arg(long, env = "MSIM_CHAT_S2S_ALLOW_PRIVATE")]
    pub s2s_allow_private: Option<bool>,
    /// Packets per second one peer domain may send us (counted per registrable domain: all
    /// names of one zone together), all its links to this node together; beyond it the peer
    /// is told to retry later (S2S-RETRY) [default: 2000].
    #[arg(long, env = "MSIM_CHAT_S2S_PEER_RATE", value_name = "N")]
    pub s2s_peer_rate: Option<u32>,
    /// Burst of packets a peer domain may send above --s2s-peer-rate [default: 10000].
    #[arg(long, env = "MSIM_CHAT_S2S_PEER_BURST", value_name = "N")]
    pub s2s_peer_burst: Option<u32>,
    /// Packets per second all peer domains together may send us; beyond it a domain within
    /// its fair share (this rate ÷ the domains sending) is still served, the others' links
    /// are read more slowly; 0 = unlimited [default: 20000].
    #[arg(long, env = "MSIM_CHAT_S2S_TOTAL_RATE", value_name = "N")]
    pub s2s_total_rate: Option<u32>,
    /// Burst of packets all peers together may send above --s2s-total-rate [default: 100000].
    #[arg(long, env = "MSIM_CHAT_S2S_TOTAL_BURST", value_name = "N")]
    pub s2s_total_burst: Option<u32>,
    /// DNS server (IP:PORT) for federation lookups instead of the system's resolver.
    #[arg(long, env = "MSIM_CHAT_DNS_SERVER", value_name = "IP:PORT")]
    pub dns_server: Option<SocketAddr>,
    /// With several nodes on one PostgreSQL database: how often each node records its heartbeat
    /// [default: 2s].
    #[arg(long, env = "MSIM_CHAT_CLUSTER_HEARTBEAT")]
    pub cluster_heartbeat: Option<HumanDuration>,
    /// With several nodes on one PostgreSQL database: a node silent for longer is declared
    /// dead and its users go offline; at least three heartbeats [default: 10s].
    #[arg(long, env = "MSIM_CHAT_CLUSTER_NODE_TIMEOUT")]
    pub cluster_node_timeout: Option<HumanDuration>,
    /// On PostgreSQL: the longest a group commit, a heartbeat or a listener check waits for
    /// the database before it counts as failed (a silent network) [default: 20s].
    #[arg(long, env = "MSIM_CHAT_DATABASE_TIMEOUT")]
    pub database_timeout: Option<HumanDuration>,
}

/// The settings that are not [`Config`] fields: where to listen and how to reach the relays.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The library configuration (without relays, relay secret and relay TLS: they depend on
    /// whether the embedded relay runs).
    pub config: Config,
    /// Protocol listen address.
    pub listen: SocketAddr,
    /// TLS certificate chain and key files, both or neither.
    pub tls_files: Option<(PathBuf, PathBuf)>,
}

impl ChatSettings {
    /// Validates the settings into a [`Config`]; unset options keep [`Config::default`].
    /// TLS files are named here, loaded by the caller.
    pub fn resolve(&self) -> anyhow::Result<Resolved> {
        let mut c = Config::default();
        if let Some(v) = &self.domain {
            c.domain = v.to_ascii_lowercase();
        }
        if let Some(v) = &self.data_dir {
            c.data_dir = v.clone();
        }
        if let Some(v) = self.database.as_deref().map(str::trim) {
            if !v.is_empty() && !crate::db::postgres::is_url(v) {
                anyhow::bail!("--database must be a postgres:// or postgresql:// URL");
            }
            c.database = (!v.is_empty()).then(|| v.to_owned());
        }
        if let Some(closed) = self.registration_closed {
            c.registration_open = !closed;
        }
        let set = |field: &mut usize, v: Option<usize>| *field = v.unwrap_or(*field);
        set(&mut c.login_min, self.login_min);
        set(&mut c.login_max, self.login_max);
        set(&mut c.password_min, self.password_min);
        set(&mut c.max_text, self.max_text);
        set(&mut c.max_line, self.max_line);
        set(&mut c.max_connections, self.max_connections);
        set(&mut c.max_blocks, self.max_blocks);
        let set = |field: &mut u32, v: Option<u32>| *field = v.unwrap_or(*field);
        set(&mut c.register_burst, self.register_burst);
        set(&mut c.register_per_hour, self.register_per_hour);
        set(&mut c.register_prefix_burst, self.register_prefix_burst);
        set(
            &mut c.register_prefix_per_hour,
            self.register_prefix_per_hour,
        );
        set(&mut c.discovery_burst, self.discovery_burst);
        set(&mut c.discovery_per_hour, self.discovery_per_hour);
        let set = |field: &mut u64, v: Option<u64>| *field = v.unwrap_or(*field);
        set(&mut c.max_file_size, self.max_file_size);
        set(&mut c.min_free_space, self.min_free_space);
        set(&mut c.max_pending_messages, self.max_pending_messages);
        let quota = &mut c.offer_quota;
        set(&mut quota.per_account, self.max_open_offers);
        set(&mut quota.bytes_per_account, self.max_offered_bytes);
        set(&mut quota.per_address, self.max_open_offers_per_address);
        set(
            &mut quota.bytes_per_address,
            self.max_offered_bytes_per_address,
        );
        let set = |field: &mut std::time::Duration, v: Option<HumanDuration>| {
            if let Some(v) = v {
                *field = v.0;
            }
        };
        set(&mut c.message_ttl, self.message_ttl);
        set(&mut c.receipt_retention, self.receipt_retention);
        set(&mut c.purge_interval, self.purge_interval);
        set(&mut c.offer_ttl, self.offer_ttl);
        set(&mut c.login_timeout, self.login_timeout);
        set(&mut c.throttle_max, self.throttle_max);
        set(&mut c.relay_health_interval, self.relay_health_interval);
        let f = &mut c.federation;
        if let Some(m) = self.federation {
            f.mode = m;
        }
        // Policy compares canonical domains (lower case, no port, no trailing dot).
        let domains = |list: &[String], flag: &str| {
            list.iter()
                .map(|d| {
                    crate::federation::domain::canonical_domain(d)
                        .ok_or_else(|| anyhow::anyhow!("--{flag} {d:?}: not a domain name"))
                })
                .collect::<anyhow::Result<Vec<String>>>()
        };
        f.allow = domains(&self.federation_allow, "federation-allow")?;
        f.deny = domains(&self.federation_deny, "federation-deny")?;
        if let Some(a) = self.s2s_listen {
            f.s2s_listen = a;
        }
        if let Some(p) = self.s2s_allow_private {
            f.allow_private = p;
        }
        if let Some(n) = self.s2s_peer_rate {
            f.peer_rate = n;
        }
        if let Some(n) = self.s2s_peer_burst {
            f.peer_burst = n;
        }
        if let Some(n) = self.s2s_total_rate {
            f.total_rate = n;
        }
        if let Some(n) = self.s2s_total_burst {
            f.total_burst = n;
        }
        f.dns_server = self.dns_server;
        set(&mut c.cluster_heartbeat, self.cluster_heartbeat);
        set(&mut c.cluster_node_timeout, self.cluster_node_timeout);
        set(&mut c.database_timeout, self.database_timeout);
        if c.database_timeout.is_zero() {
            anyhow::bail!("--database-timeout must be more than 0");
        }
        if c.cluster_heartbeat.is_zero() {
            anyhow::bail!("--cluster-heartbeat must be more than 0");
        }
        // Fewer than three missed heartbeats would declare a merely slow node dead.
        if c.cluster_node_timeout < c.cluster_heartbeat * 3 {
            anyhow::bail!(
                "--cluster-node-timeout must be at least three --cluster-heartbeat periods"
            );
        }
        let tls_files =
            msim_shared::settings::tls_files(self.tls_cert.clone(), self.tls_key.clone())?;
        Ok(Resolved {
            config: c,
            listen: self.listen.unwrap_or(DEFAULT_LISTEN),
            tls_files,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Every key of the file reaches its [`Config`] field (the same file is checked against
    /// docs/OPERATING.md and `print-config` in tests/settings.rs).
    #[test]
    fn every_key_reaches_the_config() {
        let settings: ChatSettings =
            toml::from_str(include_str!("../tests/data/every-key.toml")).expect("every-key.toml");
        let r = settings.resolve().expect("valid settings");
        let c = &r.config;
        assert_eq!(r.listen, "127.0.0.2:4001".parse().expect("address"));
        assert_eq!(
            r.tls_files,
            Some(("/etc/msim/chat.pem".into(), "/etc/msim/chat.key".into()))
        );
        assert_eq!(c.domain, "example.org");
        assert_eq!(c.data_dir, PathBuf::from("/srv/msim"));
        assert_eq!(
            c.database.as_deref(),
            Some("postgres://msim@db.example.org:5432/msim")
        );
        assert!(!c.registration_open);
        assert_eq!((c.login_min, c.login_max, c.password_min), (4, 40, 12));
        assert_eq!((c.max_text, c.max_line), (2000, 9000));
        assert_eq!(c.max_file_size, 5_000_000);
        assert_eq!(c.max_connections, 777);
        assert_eq!(c.offer_ttl, Duration::from_secs(7200));
        let q = &c.offer_quota;
        assert_eq!((q.per_account, q.bytes_per_account), (7, 7_000_000));
        assert_eq!((q.per_address, q.bytes_per_address), (17, 17_000_000));
        assert_eq!(c.max_blocks, 99);
        assert_eq!(c.min_free_space, 123_456);
        assert_eq!(c.max_pending_messages, 555);
        assert_eq!(c.message_ttl, Duration::from_secs(3 * 86400));
        assert_eq!(c.receipt_retention, Duration::from_secs(2 * 86400));
        assert_eq!(c.purge_interval, Duration::from_secs(45));
        assert_eq!(c.login_timeout, Duration::from_secs(12));
        assert_eq!(c.throttle_max, Duration::from_secs(420));
        assert_eq!((c.register_burst, c.register_per_hour), (6, 11));
        assert_eq!(
            (c.register_prefix_burst, c.register_prefix_per_hour),
            (21, 22)
        );
        assert_eq!((c.discovery_burst, c.discovery_per_hour), (23, 24));
        assert_eq!(c.relay_health_interval, Duration::from_secs(3));
        let f = &c.federation;
        assert_eq!(f.mode, crate::federation::Mode::Allowlist);
        assert_eq!(
            (f.allow.clone(), f.deny.clone()),
            (
                vec!["b.example".to_owned()],
                vec!["evil.example".to_owned()]
            )
        );
        assert_eq!(f.s2s_listen, "127.0.0.2:4004".parse().expect("address"));
        assert!(f.allow_private);
        assert_eq!((f.peer_rate, f.peer_burst), (25, 26));
        assert_eq!((f.total_rate, f.total_burst), (27, 28));
        assert_eq!(
            f.dns_server,
            Some("127.0.0.53:53".parse().expect("address"))
        );
        assert_eq!(c.cluster_heartbeat, Duration::from_secs(1));
        assert_eq!(c.cluster_node_timeout, Duration::from_secs(5));
        assert_eq!(c.database_timeout, Duration::from_secs(7));
        // The relay keys are used by main.rs (embedded relay or external relays).
        assert_eq!(settings.relays.len(), 2);
        assert_eq!(
            settings.embedded_relay_listen,
            Some("127.0.0.2:4002".parse().expect("address"))
        );
        assert_eq!(
            settings.embedded_relay_metrics_listen,
            Some("127.0.0.2:4003".parse().expect("address"))
        );
        assert!(settings.embedded_relay_url.is_some());
        assert!(settings.relay_ca_file.is_some() && settings.relay_secret_file.is_some());
    }

    #[test]
    fn no_settings_keep_the_library_defaults() {
        let r = ChatSettings::default().resolve().expect("valid");
        let d = Config::default();
        assert_eq!(r.listen, DEFAULT_LISTEN);
        assert_eq!(r.config.domain, d.domain);
        assert_eq!(r.config.max_text, d.max_text);
        assert_eq!(r.config.message_ttl, d.message_ttl);
        assert!(r.config.registration_open);
        assert!(r.tls_files.is_none());
        assert!(r.config.database.is_none());
    }

    /// `--database` takes a PostgreSQL URL; anything else is refused at start, not guessed.
    /// A node timeout shorter than three heartbeats would declare slow nodes dead: refused.
    #[test]
    fn cluster_timing_is_checked() {
        let with = |heartbeat: &str, timeout: &str| ChatSettings {
            cluster_heartbeat: Some(heartbeat.parse().expect("duration")),
            cluster_node_timeout: Some(timeout.parse().expect("duration")),
            ..ChatSettings::default()
        };
        let r = with("1s", "3s").resolve().expect("three heartbeats");
        assert_eq!(r.config.cluster_node_timeout, Duration::from_secs(3));
        assert!(with("2s", "5s").resolve().is_err());
        assert!(with("0s", "5s").resolve().is_err());
        let d = ChatSettings::default().resolve().expect("defaults");
        let timing = crate::cluster::Timing::from_config(&d.config);
        assert_eq!(timing.heartbeat, Duration::from_secs(2));
        assert_eq!(timing.node_timeout, Duration::from_secs(10));
    }

    #[test]
    fn database_must_be_a_postgres_url() {
        let with = |url: &str| ChatSettings {
            database: Some(url.into()),
            ..ChatSettings::default()
        };
        assert!(with("mysql://db/msim").resolve().is_err());
        assert!(with("/var/lib/msim.db").resolve().is_err());
        let r = with("postgresql://db/msim").resolve().expect("postgres");
        assert_eq!(r.config.database.as_deref(), Some("postgresql://db/msim"));
        assert!(with("").resolve().expect("empty").config.database.is_none());
    }

    #[test]
    fn federation_lists_hold_canonical_domains() {
        let s: ChatSettings =
            toml::from_str("federation-deny = [\"Evil.Example.:3216\"]").expect("toml");
        let c = s.resolve().expect("resolves").config;
        assert_eq!(c.federation.deny, vec!["evil.example".to_owned()]);
        let s: ChatSettings = toml::from_str("federation-allow = [\"10.0.0.1\"]").expect("toml");
        assert!(s.resolve().is_err(), "an IP address is not a domain");
    }
}
