//! DNS for federation (PROTOCOL.md §12.3): peers' keys from TXT `<kid>._msim-key.<domain>`,
//! their address from SRV `_msim-s2s._tcp.<domain>` or else the domain's A/AAAA on 3216.
//! Every lookup has a timeout. Keys are cached by (domain, kid) for the record's TTL within
//! [`KeyCacheBounds`]; absent and revoked keys are cached too (negative caching), for shorter.

use super::keys::{key_name, parse_txt, KeyRecord};
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::TokioResolver;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Default s2s port, used without an SRV record.
pub const DEFAULT_S2S_PORT: u16 = 3216;
/// Most cached keys (oldest-expiring evicted beyond it).
const KEY_CACHE_MAX: usize = 10_000;

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
}

impl Default for KeyCacheBounds {
    fn default() -> Self {
        KeyCacheBounds {
            min_ttl: Duration::from_secs(60),
            max_ttl: Duration::from_secs(6 * 3600),
            negative_ttl: Duration::from_secs(60),
            timeout: Duration::from_secs(5),
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
    keys: Mutex<HashMap<(String, String), (KeyAnswer, Instant)>>,
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
            keys: Mutex::new(HashMap::new()),
        })
    }

    /// The public key `kid` of `domain`, from the cache unless `refresh`.
    pub async fn key(&self, domain: &str, kid: &str, refresh: bool) -> Result<KeyAnswer, DnsError> {
        let cache_key = (domain.to_owned(), kid.to_owned());
        if !refresh {
            let keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((answer, until)) = keys.get(&cache_key) {
                if *until > Instant::now() {
                    return Ok(answer.clone());
                }
            }
        }
        let name = format!("{}.", key_name(kid, domain));
        // Keys are cached here only: a lookup always asks the server.
        self.resolver
            .clear_lookup_cache(&*name, hickory_resolver::proto::rr::RecordType::TXT);
        let lookup = tokio::time::timeout(self.bounds.timeout, self.resolver.txt_lookup(&*name))
            .await
            .map_err(|_| DnsError::Failed(name.clone(), "timed out".into()))?;
        let now = Instant::now();
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
                let mut found = KeyAnswer::NoKey;
                for r in l.answers() {
                    if let RData::TXT(txt) = &r.data {
                        let value: Vec<u8> = txt
                            .txt_data
                            .iter()
                            .flat_map(|s| s.iter().copied())
                            .collect();
                        match parse_txt(&String::from_utf8_lossy(&value)) {
                            Some(KeyRecord::Key(k)) => found = KeyAnswer::Key(k),
                            // A revocation wins over any key published beside it.
                            Some(KeyRecord::Revoked) => {
                                found = KeyAnswer::NoKey;
                                break;
                            }
                            None => {}
                        }
                    }
                }
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
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        if keys.len() >= KEY_CACHE_MAX {
            keys.retain(|_, (_, until)| *until > now);
            if keys.len() >= KEY_CACHE_MAX {
                keys.clear();
            }
        }
        keys.insert(cache_key, (answer.clone(), now + ttl));
        Ok(answer)
    }

    /// Where `domain`'s s2s port is: the SRV targets in priority order (the first one that
    /// resolves), else the domain's own addresses on `default_port` ([`DEFAULT_S2S_PORT`]).
    pub async fn s2s_addrs(
        &self,
        domain: &str,
        default_port: u16,
    ) -> Result<Vec<SocketAddr>, DnsError> {
        let srv_name = format!("_msim-s2s._tcp.{domain}.");
        let srv = tokio::time::timeout(self.bounds.timeout, self.resolver.srv_lookup(&*srv_name))
            .await
            .map_err(|_| DnsError::Failed(srv_name.clone(), "timed out".into()))?;
        let mut targets: Vec<(u16, String, u16)> = Vec::new();
        match srv {
            Ok(l) => {
                for r in l.answers() {
                    if let RData::SRV(s) = &r.data {
                        targets.push((s.priority, s.target.to_ascii(), s.port));
                    }
                }
            }
            Err(e) if e.is_no_records_found() || e.is_nx_domain() => {}
            Err(e) => return Err(DnsError::Failed(srv_name, e.to_string())),
        }
        // RFC 2782: a single "." target means "no service here".
        if targets.len() == 1 && targets[0].1 == "." {
            return Err(DnsError::NotFound("SRV", srv_name));
        }
        targets.sort_by_key(|t| t.0);
        if targets.is_empty() {
            targets.push((0, format!("{domain}."), default_port));
        }
        let mut last = DnsError::NotFound("A/AAAA", domain.to_owned());
        for (_, host, port) in targets.into_iter().take(8) {
            match self.ips(&host).await {
                Ok(ips) if !ips.is_empty() => {
                    return Ok(ips
                        .into_iter()
                        .map(|ip| SocketAddr::new(ip, port))
                        .collect())
                }
                Ok(_) => {}
                Err(e) => last = e,
            }
        }
        Err(last)
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
