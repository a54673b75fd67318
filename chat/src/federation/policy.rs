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
    /// Most queued items per local sender (all peers together); beyond it, too.
    pub queue_max_per_sender: u64,
    /// Most peer domains one local user may have items queued for (well below `max_peers`).
    pub queue_max_peers_per_sender: u64,
    /// Most peer domains with queued items, and most peer tasks started for requests.
    pub max_peers: usize,
    /// Longest time for connect + TLS + the signed handshake.
    pub handshake_timeout: Duration,
    /// Most clock difference accepted in a handshake's `at=`.
    pub max_clock_skew: Duration,
    /// An outbound link with nothing to send is closed after this long.
    pub link_idle: Duration,
    /// Packets per second one registrable domain may send, all its inbound links (and
    /// subdomains) together (bucket refill); 0 = unlimited.
    pub peer_rate: u32,
    /// Packets one peer domain may send in a burst.
    pub peer_burst: u32,
    /// Packets per second all peers together may send (a global bucket beside each registrable
    /// domain's); 0 = unlimited.
    pub total_rate: u32,
    /// Packets all peers together may send in a burst.
    pub total_burst: u32,
    /// Most authenticated inbound links of one registrable domain (all its subdomains).
    pub max_links_per_domain: usize,
    /// Most authenticated inbound links from one source network (IPv4 /24, IPv6 /48), all
    /// domains together: cheap registrable domains from one operator share it; 0 = unlimited.
    pub max_links_per_network: usize,
    /// Most authenticated inbound links in all (the rest of `max_inbound` stays for handshakes).
    pub max_authenticated: usize,
    /// Most inbound s2s connections at once.
    pub max_inbound: usize,
    /// Most inbound s2s connections at once from one IP address (one /64 for IPv6) that have
    /// not authenticated yet.
    pub max_unauthenticated_per_ip: usize,
    /// Longest line before a peer has authenticated (the handshake's packets are small).
    pub unauthenticated_max_line: usize,
    /// How long a peer's message ids are remembered to refuse duplicates (at least the
    /// peers' resend window: their queues' time to live).
    pub dedupe_window: Duration,
    /// Most message ids remembered per peer (the oldest are forgotten first).
    pub dedupe_max_per_peer: u64,
    /// A remote watcher's subscription not renewed within this time lapses (PROTOCOL.md §12.9);
    /// our own are renewed every quarter of it for users online.
    pub subscription_lifetime: Duration,
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
            queue_max_per_sender: 10_000,
            queue_max_peers_per_sender: 100,
            max_peers: 10_000,
            handshake_timeout: Duration::from_secs(10),
            max_clock_skew: Duration::from_secs(300),
            link_idle: Duration::from_secs(120),
            peer_rate: 2_000,
            peer_burst: 10_000,
            total_rate: 20_000,
            total_burst: 100_000,
            max_links_per_domain: 8,
            max_links_per_network: 32,
            max_authenticated: 500,
            max_inbound: 1_000,
            max_unauthenticated_per_ip: 8,
            unauthenticated_max_line: 4096,
            dedupe_window: Duration::from_secs(7 * 86_400),
            dedupe_max_per_peer: 1_000_000,
            subscription_lifetime: Duration::from_secs(30 * 86_400),
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

/// Whether an address is globally routable: not loopback, private, link-local, unspecified,
/// broadcast, multicast, CGNAT (100.64/10), benchmarking (198.18/15), IETF (192.0.0/24),
/// documentation, reserved (240/4), unique-local, site-local, discard-only (100::/64), and no
/// IPv6 form that carries an IPv4 address a gateway would reach for us: IPv4-mapped and
/// -compatible (`::ffff:a.b.c.d`, `::a.b.c.d`), NAT64 (64:ff9b::/96, 64:ff9b:1::/48), 6to4
/// (2002::/16) and Teredo (2001::/32). Such peers are dialed only with `--s2s-allow-private`.
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
                || (o[0] == 198 && (o[1] & 0xfe) == 18)
                || (o[0] == 192 && o[1] == 0 && o[2] == 0)
                || (o[0] == 192 && o[1] == 88 && o[2] == 99)
                || o[0] == 0
                || o[0] >= 240)
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0] & 0xffc0) == 0xfec0
                || (s[0] == 0x2001 && s[1] == 0x0db8)
                || (s[0] == 0x2001 && s[1] == 0)
                || s[0] == 0x2002
                || (s[0] == 0x64 && s[1] == 0xff9b && (s[2] == 0 || s[2] == 1))
                || (s[0] == 0x100 && s[1..4] == [0, 0, 0])
                // ::/8: IPv4-mapped (::ffff:0:0/96), IPv4-compatible (::/96) and the rest.
                || (s[0] & 0xff00) == 0)
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
            "224.0.0.1",
            "239.255.255.250",
            "255.255.255.255",
            "100.127.255.254",
            "198.18.0.1",
            "192.0.0.8",
            "240.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:8.8.8.8",
            "::127.0.0.1",
            "64:ff9b::7f00:1",
            "64:ff9b:1::a00:1",
            "2002:7f00:1::1",
            "2001:0:4136:e378::1",
            "fec0::1",
            "ff02::1",
            "100::1",
            "2001:db8::1",
        ] {
            assert!(!is_public(a.parse().expect("ip")), "{a}");
        }
        for a in ["8.8.8.8", "2a00:1450::1"] {
            assert!(is_public(a.parse().expect("ip")), "{a}");
        }
    }
}
