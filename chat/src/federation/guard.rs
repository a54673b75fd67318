//! What bounds a peer before and after it authenticates (PROTOCOL.md §12.5, SECURITY.md):
//!
//! - before: at most `max_unauthenticated_per_ip` connections at once from one address (one
//!   /64 for IPv6) that have not finished the handshake, so one host cannot take the
//!   listener's slots (the global `max_inbound` cap alone let it lock out every peer);
//! - after: one token bucket per registrable domain shared by all its links and subdomains, so
//!   opening more links, or using more names of one DNS zone, does not multiply its rate; one
//!   bucket for all peers together; at most a few authenticated links per registrable domain,
//!   a few dozen per source network (IPv4 /24, IPv6 /48) and a bound on all of them (PROTOCOL.md §12.5).

use super::links::{LinkPlace, Links};
use super::FederationConfig;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Most peer domains with a bucket; beyond it buckets that refilled are dropped first.
const MAX_BUCKETS: usize = 10_000;

/// The limits.
pub(crate) struct Guard {
    unauthenticated: Arc<Mutex<HashMap<IpAddr, usize>>>,
    max_per_ip: usize,
    buckets: Mutex<HashMap<String, Bucket>>,
    rate: f64,
    burst: f64,
    /// All peers together.
    total: Mutex<Bucket>,
    /// Each domain's fair share of `total_rate` (see [`Guard::take`]).
    shares: Mutex<Shares>,
    total_rate: f64,
    total_burst: f64,
    links: Links,
}

/// Per registrable domain, a bucket refilled at `total_rate ÷ active` (domains that sent in the
/// last second, counted once a second): a domain sending within that share is never refused
/// because all peers together are over `total_rate`, so a few domains flooding just under
/// their own limit cannot shut every other peer out.
#[derive(Default)]
struct Shares {
    buckets: HashMap<String, Bucket>,
    /// Domains that sent since `counted`, and in the second before.
    active: usize,
    counted: Option<Instant>,
}

/// Why a packet was not admitted, and the seconds to wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Limited {
    /// The domain's own bucket is empty: it is told to retry later.
    Peer(u64),
    /// All peers together are over their rate and this domain over its fair share: its link
    /// is read more slowly (back-pressure), not closed.
    Total(u64),
}

/// A token bucket.
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// An unauthenticated connection's place; freed when dropped.
pub(crate) struct Unauthenticated {
    map: Arc<Mutex<HashMap<IpAddr, usize>>>,
    key: IpAddr,
}

impl Drop for Unauthenticated {
    fn drop(&mut self) {
        let mut m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.key);
            }
        }
    }
}

/// The address a limit counts: IPv4 as is, IPv6 by its /64 (one host usually has a whole /64).
fn ip_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

impl Guard {
    pub(crate) fn new(c: &FederationConfig) -> Guard {
        Guard {
            unauthenticated: Arc::default(),
            max_per_ip: c.max_unauthenticated_per_ip,
            buckets: Mutex::default(),
            rate: f64::from(c.peer_rate),
            burst: f64::from(c.peer_burst.max(1)),
            total: Mutex::new(Bucket {
                tokens: f64::from(c.total_burst.max(1)),
                at: Instant::now(),
            }),
            shares: Mutex::default(),
            total_rate: f64::from(c.total_rate),
            total_burst: f64::from(c.total_burst.max(1)),
            links: Links::new(
                c.max_links_per_domain,
                c.max_links_per_network,
                c.max_authenticated,
            ),
        }
    }

    /// A place for an authenticated inbound link of registrable domain `domain` from `ip`
    /// (see [`Links::take`]).
    pub(crate) fn link(&self, domain: &str, ip: IpAddr) -> Result<LinkPlace, &'static str> {
        self.links.take(domain, ip)
    }

    /// A place for a new unauthenticated connection from `ip`, or `None` when that address
    /// has all it may have.
    pub(crate) fn admit(&self, ip: IpAddr) -> Option<Unauthenticated> {
        let key = ip_key(ip);
        let mut m = self
            .unauthenticated
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let n = m.entry(key).or_default();
        if self.max_per_ip > 0 && *n >= self.max_per_ip {
            return None;
        }
        *n += 1;
        Some(Unauthenticated {
            map: self.unauthenticated.clone(),
            key,
        })
    }

    /// Takes one packet from the bucket of registrable domain `peer`, then from the one of all
    /// peers, or else from `peer`'s fair share of it.
    pub(crate) fn take(&self, peer: &str) -> Result<(), Limited> {
        self.take_peer(peer).map_err(Limited::Peer)?;
        if self.total_rate <= 0.0 {
            return Ok(());
        }
        let now = Instant::now();
        let within_share = self.take_share(peer, now);
        let mut b = self.total.lock().unwrap_or_else(|e| e.into_inner());
        match refill_and_take(&mut b, self.total_rate, self.total_burst, now) {
            Ok(()) => Ok(()),
            Err(_) if within_share => Ok(()),
            Err(wait) => Err(Limited::Total(wait)),
        }
    }

    /// Takes one packet from `peer`'s fair share (every packet counts, admitted by the global
    /// bucket or not); whether there was one.
    fn take_share(&self, peer: &str, now: Instant) -> bool {
        let mut s = self.shares.lock().unwrap_or_else(|e| e.into_inner());
        let stale = s
            .counted
            .is_none_or(|at| now.duration_since(at).as_secs_f64() >= 1.0);
        if stale {
            // Domains that sent in the last two seconds stay; the rest are forgotten.
            s.buckets
                .retain(|_, b| now.duration_since(b.at).as_secs_f64() < 2.0);
            s.active = s.buckets.len().max(1);
            s.counted = Some(now);
        }
        if !s.buckets.contains_key(peer) && s.buckets.len() >= MAX_BUCKETS {
            return false;
        }
        let rate = self.total_rate / (s.active as f64);
        let burst = rate.max(1.0);
        let b = s.buckets.entry(peer.to_owned()).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        refill_and_take(b, rate, burst, now).is_ok()
    }

    fn take_peer(&self, peer: &str) -> Result<(), u64> {
        if self.rate <= 0.0 {
            return Ok(());
        }
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if !buckets.contains_key(peer) && buckets.len() >= MAX_BUCKETS {
            let (rate, burst) = (self.rate, self.burst);
            buckets.retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * rate < burst);
            if buckets.len() >= MAX_BUCKETS {
                return Err(1);
            }
        }
        let b = buckets.entry(peer.to_owned()).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        refill_and_take(b, self.rate, self.burst, now)
    }
}

/// Refills `b` up to now, then takes one token; `Err(seconds)` until one is there.
fn refill_and_take(b: &mut Bucket, rate: f64, burst: f64, now: Instant) -> Result<(), u64> {
    b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * rate).min(burst);
    b.at = now;
    if b.tokens < 1.0 {
        return Err(((1.0 - b.tokens) / rate).ceil().max(1.0) as u64);
    }
    b.tokens -= 1.0;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unauthenticated_places_per_address_are_bounded_and_freed() {
        let g = Guard::new(&FederationConfig {
            max_unauthenticated_per_ip: 2,
            ..Default::default()
        });
        let a: IpAddr = "192.0.2.1".parse().expect("ip");
        let first = g.admit(a).expect("a place");
        let _second = g.admit(a).expect("a place");
        assert!(g.admit(a).is_none());
        // Another address, and another /64, are not affected; the same /64 is.
        assert!(g.admit("192.0.2.2".parse().expect("ip")).is_some());
        let _v6 = g
            .admit("2001:db8::1".parse().expect("ip"))
            .expect("a place");
        let _v6b = g
            .admit("2001:db8::2".parse().expect("ip"))
            .expect("a place");
        assert!(g.admit("2001:db8::3".parse().expect("ip")).is_none());
        assert!(g.admit("2001:db8:0:1::1".parse().expect("ip")).is_some());
        drop(first);
        assert!(g.admit(a).is_some());
    }

    #[test]
    fn one_bucket_per_peer_domain() {
        let g = Guard::new(&FederationConfig {
            peer_rate: 1,
            peer_burst: 3,
            ..Default::default()
        });
        for _ in 0..3 {
            assert!(g.take("c.test").is_ok());
        }
        assert_eq!(g.take("c.test"), Err(Limited::Peer(1)));
        assert!(g.take("d.test").is_ok());
    }

    #[test]
    fn one_bucket_for_all_peers_together() {
        let g = Guard::new(&FederationConfig {
            peer_rate: 100,
            peer_burst: 100,
            total_rate: 1,
            total_burst: 4,
            ..Default::default()
        });
        // One domain takes the whole burst, then is over its share (the rate: alone).
        for _ in 0..4 {
            assert!(g.take("a.test").is_ok());
        }
        assert_eq!(g.take("a.test"), Err(Limited::Total(1)));
        // Another domain, within its fair share, is not refused.
        assert!(g.take("b.test").is_ok());
    }
}
