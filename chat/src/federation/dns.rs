//! DNS for federation (PROTOCOL.md §12.3): peers' keys from TXT `<kid>._msim-key.<domain>`,
//! their address from SRV `_msim-s2s._tcp.<domain>` or else the domain's A/AAAA on 3216.
//! Every lookup has a timeout. Keys are cached by (domain, kid) for the record's TTL within
//! [`KeyCacheBounds`]; absent and revoked keys are cached too (negative caching), for shorter
//! (the cache's defences are in [`super::key_cache`]).

use super::key_cache::{Cached, KeyCache};
use super::keys::{key_name, parse_txt, KeyRecord};
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::TokioResolver;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};
use tracing::warn;

/// Default s2s port, used without an SRV record.
pub const DEFAULT_S2S_PORT: u16 = 3216;
/// Most SRV targets tried.
const MAX_TARGETS: usize = 8;
/// Most addresses of one host tried.
const MAX_ADDRS_PER_HOST: usize = 4;
/// Most addresses tried in one attempt (each gets the handshake's deadline).
const MAX_ADDRS: usize = 8;

/// Lookup failure.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// The name has no such record.
    #[error("no {0} record for {1}")]
    NotFound(&'static str, String),
    /// The lookup failed or timed out (retry later).
    #[error("DNS lookup of {0} failed: {1}")]
    Failed(String, String),
}

/// How long key lookups are cached.
#[derive(Debug, Clone, Copy)]
pub struct KeyCacheBounds {
    /// Shortest time a found key is kept, whatever its TTL.
    pub min_ttl: Duration,
    /// Longest time a found key is kept.
    pub max_ttl: Duration,
    /// How long "no such key" or "revoked" is remembered.
    pub negative_ttl: Duration,
    /// Timeout of one lookup (all attempts).
    pub timeout: Duration,
    /// A key failing a signature is fetched again at most this often (per key id).
    pub refetch_interval: Duration,
    /// Most key ids cached per domain (a flood evicts that domain's entries only).
    pub per_domain: usize,
    /// Most cached key ids in all.
    pub max_entries: usize,
}

impl Default for KeyCacheBounds {
    fn default() -> Self {
        KeyCacheBounds {
            min_ttl: Duration::from_secs(60),
            max_ttl: Duration::from_secs(6 * 3600),
            negative_ttl: Duration::from_secs(60),
            timeout: Duration::from_secs(5),
            refetch_interval: Duration::from_secs(60),
            per_domain: 16,
            max_entries: 10_000,
        }
    }
}

/// A key lookup's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyAnswer {
    /// The public key.
    Key(Vec<u8>),
    /// Revoked (`p=` empty) or not published.
    NoKey,
}

/// The resolver with the key cache.
pub struct Dns {
    resolver: TokioResolver,
    bounds: KeyCacheBounds,
    keys: KeyCache,
}

impl std::fmt::Debug for Dns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Dns")
    }
}

impl Dns {
    /// A resolver using `server` (UDP and TCP) or, without one, the system's configuration.
    pub fn new(server: Option<SocketAddr>, bounds: KeyCacheBounds) -> std::io::Result<Dns> {
        let mut opts = ResolverOpts::default();
        opts.timeout = bounds.timeout;
        opts.attempts = 1;
        // Keys are cached here (so a failed signature can refetch exactly one name); the
        // resolver's own cache is kept small and bounded by the same TTL limits.
        opts.positive_max_ttl = Some(bounds.max_ttl);
        opts.negative_max_ttl = Some(bounds.negative_ttl);
        opts.cache_size = 0;
        let builder = match server {
            Some(addr) => {
                let conns = [ConnectionConfig::udp(), ConnectionConfig::tcp()]
                    .into_iter()
                    .map(|mut c| {
                        c.port = addr.port();
                        c
                    })
                    .collect();
                let ns = NameServerConfig::new(addr.ip(), true, conns);
                let config = ResolverConfig::from_parts(None, vec![], vec![ns]);
                TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
            }
            None => TokioResolver::builder_tokio().map_err(std::io::Error::other)?,
        };
        let resolver = builder
            .with_options(opts)
            .build()
            .map_err(std::io::Error::other)?;
        Ok(Dns {
            resolver,
            bounds,
            keys: KeyCache::new(bounds),
        })
    }

    /// The public key `kid` of `domain`, from the cache if fresh. `refresh`: a signature
    /// failed against the cached key; DNS is asked again at most once per refetch interval.
    pub async fn key(&self, domain: &str, kid: &str, refresh: bool) -> Result<KeyAnswer, DnsError> {
        if let Cached::Fresh(answer) = self.keys.get(domain, kid, refresh, Instant::now()) {
            return Ok(answer);
        }
        let name = format!("{}.", key_name(kid, domain));
        // Keys are cached here only: a lookup always asks the server.
        self.resolver
            .clear_lookup_cache(&*name, hickory_resolver::proto::rr::RecordType::TXT);
        let lookup = tokio::time::timeout(self.bounds.timeout, self.resolver.txt_lookup(&*name))
            .await
            .map_err(|_| DnsError::Failed(name.clone(), "timed out".into()))?;
        let (answer, ttl) = match lookup {
            Ok(l) => {
                // The records' own TTL (the resolver's view may be clamped by its options).
                let ttl = Duration::from_secs(
                    l.answers()
                        .iter()
                        .map(|r| u64::from(r.ttl))
                        .min()
                        .unwrap_or(0),
                );
                let records = l.answers().iter().filter_map(|r| match &r.data {
                    RData::TXT(txt) => {
                        let value: Vec<u8> = txt
                            .txt_data
                            .iter()
                            .flat_map(|s| s.iter().copied())
                            .collect();
                        parse_txt(&String::from_utf8_lossy(&value))
                    }
                    _ => None,
                });
                let found = key_of(records, &name);
                let ttl = match found {
                    KeyAnswer::Key(_) => ttl.clamp(self.bounds.min_ttl, self.bounds.max_ttl),
                    KeyAnswer::NoKey => self.bounds.negative_ttl,
                };
                (found, ttl)
            }
            Err(e) if e.is_no_records_found() || e.is_nx_domain() => {
                (KeyAnswer::NoKey, self.bounds.negative_ttl)
            }
            Err(e) => return Err(DnsError::Failed(name, e.to_string())),
        };
        Ok(self.keys.store(domain, kid, answer, ttl, Instant::now()))
    }

    /// Where `domain`'s s2s port may be, in the order to try: every SRV target by priority
    /// and, within a priority, in weighted random order (RFC 2782), then the domain's own
    /// addresses on `default_port` ([`DEFAULT_S2S_PORT`]). A target that does not resolve is
    /// skipped; the dialer tries each address with its own timeout.
    pub async fn s2s_addrs(
        &self,
        domain: &str,
        default_port: u16,
    ) -> Result<Vec<SocketAddr>, DnsError> {
        let srv_name = format!("_msim-s2s._tcp.{domain}.");
        let srv = tokio::time::timeout(self.bounds.timeout, self.resolver.srv_lookup(&*srv_name))
            .await
            .map_err(|_| DnsError::Failed(srv_name.clone(), "timed out".into()));
        let mut targets: Vec<Target> = Vec::new();
        match srv {
            Ok(Ok(l)) => {
                for r in l.answers() {
                    if let RData::SRV(s) = &r.data {
                        targets.push(Target {
                            priority: s.priority,
                            weight: s.weight,
                            host: s.target.to_ascii(),
                            port: s.port,
                        });
                    }
                }
            }
            Ok(Err(e)) if e.is_no_records_found() || e.is_nx_domain() => {}
            // No SRV answer at all: the domain's own addresses may still work.
            Ok(Err(e)) => warn!(%domain, "SRV lookup failed: {e}"),
            Err(e) => warn!(%domain, "{e}"),
        }
        // RFC 2782: a single "." target means "no service here".
        if targets.len() == 1 && targets[0].host == "." {
            return Err(DnsError::NotFound("SRV", srv_name));
        }
        let mut hosts: Vec<(String, u16)> = srv_order(targets)
            .into_iter()
            .filter(|t| t.host != ".")
            .take(MAX_TARGETS)
            .map(|t| (t.host, t.port))
            .collect();
        let own = (format!("{domain}."), default_port);
        if !hosts.contains(&own) {
            hosts.push(own);
        }
        let mut addrs: Vec<SocketAddr> = Vec::new();
        let mut last = DnsError::NotFound("A/AAAA", domain.to_owned());
        for (host, port) in hosts {
            match self.ips(&host).await {
                Ok(ips) => {
                    for ip in ips.into_iter().take(MAX_ADDRS_PER_HOST) {
                        let a = SocketAddr::new(ip, port);
                        if !addrs.contains(&a) {
                            addrs.push(a);
                        }
                    }
                }
                Err(e) => last = e,
            }
        }
        if addrs.is_empty() {
            return Err(last);
        }
        addrs.truncate(MAX_ADDRS);
        Ok(addrs)
    }

    async fn ips(&self, host: &str) -> Result<Vec<IpAddr>, DnsError> {
        let lookup = tokio::time::timeout(self.bounds.timeout, self.resolver.lookup_ip(host))
            .await
            .map_err(|_| DnsError::Failed(host.to_owned(), "timed out".into()))?;
        match lookup {
            Ok(l) => Ok(l.iter().take(16).collect()),
            Err(e) if e.is_no_records_found() || e.is_nx_domain() => Ok(Vec::new()),
            Err(e) => Err(DnsError::Failed(host.to_owned(), e.to_string())),
        }
    }
}

/// One SRV record.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    priority: u16,
    weight: u16,
    host: String,
    port: u16,
}

/// RFC 2782's order: lowest priority first; within a priority, repeatedly pick one at random
/// with probability proportional to its weight (weight-0 records rarely first).
fn srv_order(mut targets: Vec<Target>) -> Vec<Target> {
    targets.sort_by_key(|t| (t.priority, t.weight));
    let mut out = Vec::with_capacity(targets.len());
    while !targets.is_empty() {
        let p = targets[0].priority;
        let n = targets.iter().take_while(|t| t.priority == p).count();
        let mut group: Vec<Target> = targets.drain(..n).collect();
        while !group.is_empty() {
            let total: u64 = group.iter().map(|t| u64::from(t.weight)).sum();
            let pick = rand::random_range(0..=total);
            let mut running = 0u64;
            let i = group
                .iter()
                .position(|t| {
                    running += u64::from(t.weight);
                    running >= pick
                })
                .unwrap_or(0);
            out.push(group.remove(i));
        }
    }
    out
}

/// What a key name's TXT records say: a revocation wins over keys published beside it; two
/// different keys under one id are ambiguous and refused (an attacker who can add a record
/// must not win by ordering); no msim record is no key.
fn key_of(records: impl Iterator<Item = KeyRecord>, name: &str) -> KeyAnswer {
    let mut found: Option<Vec<u8>> = None;
    for r in records {
        match r {
            KeyRecord::Revoked => return KeyAnswer::NoKey,
            KeyRecord::Key(k) => match &found {
                Some(f) if *f != k => {
                    warn!(%name, "federation: several different keys under one key id; refused");
                    return KeyAnswer::NoKey;
                }
                _ => found = Some(k),
            },
        }
    }
    found.map_or(KeyAnswer::NoKey, KeyAnswer::Key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(priority: u16, weight: u16, host: &str) -> Target {
        Target {
            priority,
            weight,
            host: host.into(),
            port: 1,
        }
    }

    #[test]
    fn srv_targets_go_by_priority_then_weight() {
        for _ in 0..50 {
            let order = srv_order(vec![
                t(10, 0, "c"),
                t(0, 5, "a"),
                t(0, 5, "b"),
                t(20, 1, "d"),
            ]);
            let hosts: Vec<&str> = order.iter().map(|t| t.host.as_str()).collect();
            assert_eq!(hosts.len(), 4);
            assert!(
                hosts[..2].contains(&"a") && hosts[..2].contains(&"b"),
                "{hosts:?}"
            );
            assert_eq!(&hosts[2..], ["c", "d"]);
        }
    }

    #[test]
    fn several_different_keys_under_one_id_are_refused() {
        let (a, b) = (KeyRecord::Key(vec![1; 32]), KeyRecord::Key(vec![2; 32]));
        assert_eq!(
            key_of([a.clone()].into_iter(), "n"),
            KeyAnswer::Key(vec![1; 32])
        );
        assert_eq!(
            key_of([a.clone(), a.clone()].into_iter(), "n"),
            KeyAnswer::Key(vec![1; 32])
        );
        assert_eq!(key_of([a.clone(), b].into_iter(), "n"), KeyAnswer::NoKey);
        assert_eq!(
            key_of([a, KeyRecord::Revoked].into_iter(), "n"),
            KeyAnswer::NoKey
        );
    }
}
