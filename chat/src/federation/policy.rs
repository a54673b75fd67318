//! Federation settings and who may federate (PROTOCOL.md §12.1, docs/OPERATING.md).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// `--federation off|allowlist|open`.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// No federation: remote addresses fail with `federation-disabled`.
    #[default]
    Off,
    /// Only the domains of the allow list (an empty list allows nobody).
    Allowlist,
    /// Every domain not on the deny list.
    Open,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Mode, String> {
        match s {
            "off" => Ok(Mode::Off),
            "allowlist" => Ok(Mode::Allowlist),
            "open" => Ok(Mode::Open),
            _ => Err(format!("{s:?}: expected off, allowlist or open")),
        }
    }
}

/// Federation configuration.
#[derive(Debug, Clone)]
pub struct FederationConfig {
    /// Off, allow list or open.
    pub mode: Mode,
    /// Domains allowed in `allowlist` mode (lower case).
    pub allow: Vec<String>,
    /// Domains always refused (deny wins over allow).
    pub deny: Vec<String>,
    /// Where the s2s listener binds.
    pub s2s_listen: SocketAddr,
    /// A listener already bound (tests bind port 0 and publish it in DNS); wins over
    /// `s2s_listen`.
    pub s2s_listener: Option<Arc<std::net::TcpListener>>,
    /// Port dialed when a peer has no SRV record (3216).
    pub default_port: u16,
    /// Dial peers that resolve to loopback/private/link-local addresses.
    pub allow_private: bool,
    /// DNS server to use instead of the system's.
    pub dns_server: Option<SocketAddr>,
    /// Key lookups: cache bounds and timeout.
    pub dns: super::dns::KeyCacheBounds,
    /// First retry delay of a peer's queue after a failed link (then doubled, jittered).
    pub retry_base: Duration,
    /// Longest retry delay (minutes, never hours).
    pub retry_max: Duration,
    /// A queued item not delivered within this time fails (`expired`).
    pub queue_ttl: Duration,
    /// Most queued items per peer; beyond it sending fails with `recipient-queue-full`.
    pub queue_max_per_peer: u64,
    /// Longest time for connect + TLS + the signed handshake.
    pub handshake_timeout: Duration,
    /// Most clock difference accepted in a handshake's `at=`.
    pub max_clock_skew: Duration,
    /// An outbound link with nothing to send is closed after this long.
    pub link_idle: Duration,
    /// Packets per second one inbound peer may send (bucket refill); 0 = unlimited.
    pub peer_rate: u32,
    /// Packets one inbound peer may send in a burst.
    pub peer_burst: u32,
    /// Most inbound s2s connections at once.
    pub max_inbound: usize,
}

impl Default for FederationConfig {
    fn default() -> Self {
        FederationConfig {
            mode: Mode::Off,
            allow: Vec::new(),
            deny: Vec::new(),
            s2s_listen: SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 3216),
            s2s_listener: None,
            default_port: super::dns::DEFAULT_S2S_PORT,
            allow_private: false,
            dns_server: None,
            dns: Default::default(),
            retry_base: Duration::from_secs(2),
            retry_max: Duration::from_secs(300),
            queue_ttl: Duration::from_secs(3 * 86_400),
            queue_max_per_peer: 100_000,
            handshake_timeout: Duration::from_secs(10),
            max_clock_skew: Duration::from_secs(300),
            link_idle: Duration::from_secs(120),
            peer_rate: 2_000,
            peer_burst: 10_000,
            max_inbound: 1_000,
        }
    }
}

impl FederationConfig {
    /// Whether federation runs at all.
    pub fn enabled(&self) -> bool {
        self.mode != Mode::Off
    }

    /// Whether `domain` may federate with us (deny wins; an empty allow list allows nobody).
    pub fn allows(&self, domain: &str) -> bool {
        let d = domain.to_ascii_lowercase();
        if self.deny.contains(&d) {
            return false;
        }
        match self.mode {
            Mode::Off => false,
            Mode::Allowlist => self.allow.contains(&d),
            Mode::Open => true,
        }
    }

    /// Whether dialing `addr` is allowed (private ranges only with `allow_private`).
    pub fn may_dial(&self, addr: &SocketAddr) -> bool {
        self.allow_private || is_public(addr.ip())
    }
}

/// Whether an address is globally routable (not loopback, private, link-local, unspecified,
/// multicast, CGNAT, documentation or unique-local).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
                || o[0] == 0
                || o[0] >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let s = v6.segments();
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || s[0] == 0x2001 && s[1] == 0x0db8)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deny_wins_and_empty_allowlist_allows_nobody() {
        let mut c = FederationConfig {
            mode: Mode::Allowlist,
            ..Default::default()
        };
        assert!(!c.allows("b.test"));
        c.allow = vec!["b.test".into()];
        assert!(c.allows("B.test"));
        c.deny = vec!["b.test".into()];
        assert!(!c.allows("b.test"));
        c.mode = Mode::Open;
        assert!(!c.allows("b.test") && c.allows("c.test"));
    }

    #[test]
    fn private_addresses_are_not_public() {
        for a in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.0.1",
            "169.254.1.1",
            "100.64.0.1",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "0.0.0.0",
        ] {
            assert!(!is_public(a.parse().expect("ip")), "{a}");
        }
        for a in ["8.8.8.8", "2a00:1450::1"] {
            assert!(is_public(a.parse().expect("ip")), "{a}");
        }
    }
}
