//! Authenticated inbound links (PROTOCOL.md §12.5): at most `max_links_per_domain` per
//! registrable domain, `max_links_per_network` per source network (IPv4 /24, IPv6 /48) and
//! `max_authenticated` in all. When all places are taken, a newcomer takes the oldest link of
//! the source network holding the most — if that network holds at least two more than the
//! newcomer's would — or else the oldest link of the address block (IPv4 /16, IPv6 /32)
//! holding the most, or else of the domain holding the most, on the same condition. So the
//! places are shared out evenly, first between networks, then between blocks, then between
//! domains: cheap registrable domains (PSL private suffixes), each at its cap, cannot keep
//! every other peer out, not even hundreds of them with one link each from one address (they
//! used to get `busy` for every peer for as long as they kept their links alive), nor from as
//! many /48s of one /32 (a hosting or LIR allocation is cheap) or /24s of one /16. The "two
//! more" keeps honest peers stable: an even share is never taken from again.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

/// The places of all authenticated inbound links.
#[derive(Default)]
pub(crate) struct Links {
    state: Arc<Mutex<State>>,
    max_per_domain: usize,
    max_per_network: usize,
    max_all: usize,
}

#[derive(Default)]
struct State {
    /// Every link by id: ids grow, so this is oldest first.
    links: BTreeMap<u64, Held>,
    per_domain: HashMap<String, usize>,
    per_network: HashMap<IpAddr, usize>,
    per_block: HashMap<IpAddr, usize>,
    next_id: u64,
}

struct Held {
    domain: String,
    network: IpAddr,
    block: IpAddr,
    evicted: CancellationToken,
}

/// An authenticated inbound link's place; freed when dropped. [`LinkPlace::evicted`] completes
/// when another peer took it: the link should end (the peer may come back later).
pub(crate) struct LinkPlace {
    state: Arc<Mutex<State>>,
    id: u64,
    evicted: CancellationToken,
}

/// The source network a link counts against: an IPv4 /24 or an IPv6 /48 (IPv4-mapped IPv6
/// as IPv4): one operator usually holds a whole one, so more addresses buy no more places.
pub(crate) fn network_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            IpAddr::from([a, b, c, 0])
        }
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => network_of(IpAddr::V4(v4)),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], 0, 0, 0, 0, 0))
            }
        },
    }
}

/// The address block a link's network belongs to, the level above [`network_of`] when places
/// are shared out: an IPv4 /16 or an IPv6 /32 (IPv4-mapped IPv6 as IPv4), the size of a
/// typical allocation to a provider, so its many networks count together.
pub(crate) fn block_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, _, _] = v4.octets();
            IpAddr::from([a, b, 0, 0])
        }
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => block_of(IpAddr::V4(v4)),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], 0, 0, 0, 0, 0, 0))
            }
        },
    }
}

impl Links {
    /// 0 = unbounded.
    pub(crate) fn new(max_per_domain: usize, max_per_network: usize, max_all: usize) -> Links {
        Links {
            state: Arc::default(),
            max_per_domain,
            max_per_network,
            max_all,
        }
    }

    /// A place for a link of registrable domain `domain` coming from address `ip`; `Err` with
    /// the reason (`too-many-links`: that domain or source network has all it may have;
    /// `busy`: the places are shared out evenly already) otherwise.
    pub(crate) fn take(&self, domain: &str, ip: IpAddr) -> Result<LinkPlace, &'static str> {
        let network = network_of(ip);
        let block = block_of(ip);
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let held = s.per_domain.get(domain).copied().unwrap_or(0);
        let held_net = s.per_network.get(&network).copied().unwrap_or(0);
        let held_block = s.per_block.get(&block).copied().unwrap_or(0);
        if self.max_per_domain > 0 && held >= self.max_per_domain {
            return Err("too-many-links");
        }
        if self.max_per_network > 0 && held_net >= self.max_per_network {
            return Err("too-many-links");
        }
        if self.max_all > 0 && s.links.len() >= self.max_all {
            let victim = s
                .oldest_of_richest(&s.per_network, held_net, |h| &h.network)
                .or_else(|| s.oldest_of_richest(&s.per_block, held_block, |h| &h.block))
                .or_else(|| s.oldest_of_richest(&s.per_domain, held, |h| &h.domain));
            let Some(victim) = victim else {
                return Err("busy");
            };
            s.free(victim, true);
        }
        let id = s.next_id;
        s.next_id += 1;
        let evicted = CancellationToken::new();
        *s.per_domain.entry(domain.to_owned()).or_default() += 1;
        *s.per_network.entry(network).or_default() += 1;
        *s.per_block.entry(block).or_default() += 1;
        s.links.insert(
            id,
            Held {
                domain: domain.to_owned(),
                network,
                block,
                evicted: evicted.clone(),
            },
        );
        Ok(LinkPlace {
            state: self.state.clone(),
            id,
            evicted,
        })
    }

    /// Links held by `domain` (tests).
    #[cfg(test)]
    pub(crate) fn held(&self, domain: &str) -> usize {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.per_domain.get(domain).copied().unwrap_or(0)
    }
}

impl State {
    /// The oldest link of the group (network, block or domain) holding the most, if it holds at least
    /// two more than the newcomer's group (`newcomer_holds`) would after taking a place: less
    /// would only move the imbalance (and two honest peers would take turns evicting each other).
    fn oldest_of_richest<K: Eq + std::hash::Hash>(
        &self,
        counts: &HashMap<K, usize>,
        newcomer_holds: usize,
        key: impl Fn(&Held) -> &K,
    ) -> Option<u64> {
        let (richest, _) = counts
            .iter()
            .max_by_key(|(_, n)| **n)
            .filter(|(_, n)| **n >= newcomer_holds + 2)?;
        // At most `max_all` links: a scan is cheap, and only when the table is full.
        self.links
            .iter()
            .find(|(_, h)| key(h) == richest)
            .map(|(id, _)| *id)
    }

    /// Frees place `id` at once (so the bound holds); `evict`: tells its link to end.
    fn free(&mut self, id: u64, evict: bool) {
        let Some(h) = self.links.remove(&id) else {
            return;
        };
        if evict {
            h.evicted.cancel();
        }
        decrement(&mut self.per_domain, &h.domain);
        decrement(&mut self.per_network, &h.network);
        decrement(&mut self.per_block, &h.block);
    }
}

fn decrement<K: Eq + std::hash::Hash + Clone>(counts: &mut HashMap<K, usize>, key: &K) {
    if let Some(n) = counts.get_mut(key) {
        *n -= 1;
        if *n == 0 {
            counts.remove(key);
        }
    }
}

impl LinkPlace {
    /// Completes when another peer took this place.
    pub(crate) fn evicted(&self) -> WaitForCancellationFuture<'_> {
        self.evicted.cancelled()
    }
}

impl Drop for LinkPlace {
    fn drop(&mut self) {
        // An evicted place was freed when it was evicted (`free` finds nothing then).
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.free(self.id, false);
    }
}

/// When a peer refused for its number of links may come back (`S2S-RETRY retry-after=`).
pub(crate) const LINK_RETRY_SECS: u64 = 10;

/// `S2S-RETRY` for a link refused or given up for the number of links (`reason`).
pub(crate) fn link_retry(reason: &str) -> msim_shared::Packet {
    let after = LINK_RETRY_SECS.to_string();
    msim_shared::Packet::new("S2S-RETRY")
        .with("retry-after", after)
        .with("reason", reason)
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    const ONE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("an address")
    }

    #[test]
    fn links_are_bounded_per_domain_and_in_all() {
        let links = Links::new(2, 0, 3);
        let a1 = links.take("evil.test", ONE).expect("a place");
        let _a2 = links.take("evil.test", ONE).expect("a place");
        assert_eq!(links.take("evil.test", ONE).err(), Some("too-many-links"));
        let _b = links.take("b.test", ONE).expect("a place");
        // Full, and evenly shared for one more of b: busy.
        assert_eq!(links.take("b.test", ONE).err(), Some("busy"));
        drop(a1);
        assert!(links.take("evil.test", ONE).is_ok());
    }

    #[test]
    fn a_newcomer_takes_the_oldest_link_of_the_domain_holding_the_most() {
        // 63 cheap domains × 8 links used to hold all 500 places: every other peer got busy.
        let links = Links::new(8, 0, 500);
        let mut held = Vec::new();
        for d in 0..63 {
            for _ in 0..if d < 62 { 8 } else { 4 } {
                held.push(links.take(&format!("evil{d}.test"), ONE).expect("a place"));
            }
        }
        assert_eq!(held.len(), 500);
        assert!(held.iter().all(|p| p.evicted().now_or_never().is_none()));
        let honest = links.take("honest.test", ONE).expect("a fair place");
        assert_eq!(links.held("honest.test"), 1);
        // Exactly one attacker link was told to end, the oldest of a domain with 8.
        let evicted: Vec<_> = held
            .iter()
            .filter(|p| p.evicted().now_or_never().is_some())
            .collect();
        assert_eq!(evicted.len(), 1);
        let loser = (0..62)
            .map(|d| format!("evil{d}.test"))
            .find(|d| links.held(d) == 7)
            .expect("a domain cut to 7");
        assert_eq!(links.held(&loser), 7);
        // Dropping the evicted place frees nothing twice: still full, and the attacker cannot
        // take it back from a domain holding only one more than it; a domain at its cap is
        // refused as before.
        held.retain(|p| p.evicted().now_or_never().is_none());
        assert_eq!(links.take(&loser, ONE).err(), Some("busy"));
        let full = if loser == "evil0.test" {
            "evil1.test"
        } else {
            "evil0.test"
        };
        assert_eq!(links.take(full, ONE).err(), Some("too-many-links"));
        assert!(honest.evicted().now_or_never().is_none());
        // A second honest domain still gets in.
        assert!(links.take("other.test", ONE).is_ok());
    }

    #[test]
    fn many_domains_from_one_address_cannot_keep_another_network_out() {
        // Attack M3: 500 cheap domains with one link each, all from one address, filled the
        // table; the domain rule never fired (each held 1) and every other peer got busy.
        let links = Links::new(8, 0, 500);
        let mut evil: Vec<_> = (0..500)
            .map(|d| links.take(&format!("evil{d}.test"), ONE).expect("a place"))
            .collect();
        let elsewhere: IpAddr = ip("198.51.100.7");
        let honest = links.take("honest.test", elsewhere).expect("a fair place");
        // The oldest link of the richest network was told to end.
        assert!(evil[0].evicted().now_or_never().is_some());
        assert!(evil[1..]
            .iter()
            .all(|p| p.evicted().now_or_never().is_none()));
        evil.remove(0);
        // The attacker cannot take it back; the honest peer gets its second link.
        assert_eq!(links.take("evil0.test", ONE).err(), Some("busy"));
        let _second = links.take("honest.test", elsewhere).expect("a place");
        assert!(honest.evicted().now_or_never().is_none());
    }

    #[test]
    fn many_domains_from_the_48s_of_one_32_cannot_keep_another_network_out() {
        // The review's IPv6 variant of attack M3: 500 cheap domains, each from its own /48 of
        // one /32. Every network and every domain held 1: neither rule fired, all got busy.
        let links = Links::new(8, 32, 500);
        let from = |d: u16| ip(&format!("2001:db8:{d:x}::1"));
        let mut evil: Vec<_> = (0..500)
            .map(|d| {
                links
                    .take(&format!("evil{d}.test"), from(d))
                    .expect("a place")
            })
            .collect();
        let elsewhere = ip("2001:db9:1::7");
        let honest = links.take("honest.test", elsewhere).expect("a fair place");
        assert!(evil[0].evicted().now_or_never().is_some());
        assert!(evil[1..]
            .iter()
            .all(|p| p.evicted().now_or_never().is_none()));
        evil.remove(0);
        // Another /48 of the same /32 cannot take it back; the honest peer gets a second.
        assert_eq!(links.take("evil0.test", from(600)).err(), Some("busy"));
        let _second = links.take("honest.test", elsewhere).expect("a place");
        assert!(honest.evicted().now_or_never().is_none());
        // The same with IPv4: /24s of one /16.
        let links = Links::new(8, 32, 250);
        let _evil: Vec<_> = (0..250)
            .map(|d| {
                let at = ip(&format!("198.18.{d}.1"));
                links.take(&format!("evil{d}.test"), at).expect("a place")
            })
            .collect();
        assert!(links.take("honest.test", ip("203.0.113.5")).is_ok());
    }

    #[test]
    fn blocks_are_ipv4_16s_and_ipv6_32s() {
        assert_eq!(block_of(ip("192.0.2.77")), ip("192.0.0.0"));
        assert_eq!(block_of(ip("2001:db8:1:2::3")), ip("2001:db8::"));
        assert_eq!(block_of(ip("::ffff:192.0.2.77")), ip("192.0.0.0"));
        assert_ne!(block_of(ip("2001:db8::1")), block_of(ip("2001:db9::1")));
    }

    #[test]
    fn peers_sharing_a_block_keep_an_even_share() {
        // Two honest peers in two /24s of one /16 and one elsewhere: once the blocks hold an
        // even share, nobody takes from anybody.
        let links = Links::new(8, 0, 4);
        let (a, b, c) = (ip("192.0.2.1"), ip("192.0.3.1"), ip("203.0.113.1"));
        let held: Vec<_> = [a, b, c, c]
            .iter()
            .enumerate()
            .map(|(i, at)| links.take(&format!("p{i}.test"), *at).expect("a place"))
            .collect();
        for _ in 0..5 {
            assert_eq!(links.take("p0.test", a).err(), Some("busy"));
            assert_eq!(links.take("p2.test", c).err(), Some("busy"));
        }
        assert!(held.iter().all(|p| p.evicted().now_or_never().is_none()));
    }

    #[test]
    fn links_are_bounded_per_source_network() {
        let links = Links::new(8, 2, 0);
        let _a = links.take("a.test", ip("192.0.2.1")).expect("a place");
        let _b = links.take("b.test", ip("192.0.2.200")).expect("a place");
        // Another address of the same /24, another domain: still that network's.
        let c = links.take("c.test", ip("192.0.2.9"));
        assert_eq!(c.err(), Some("too-many-links"));
        assert!(links.take("c.test", ip("192.0.3.9")).is_ok());
        // IPv6 counts by /48; IPv4-mapped as IPv4.
        let _d = links
            .take("d.test", ip("2001:db8:1:1::1"))
            .expect("a place");
        let _e = links
            .take("e.test", ip("2001:db8:1:ffff::2"))
            .expect("a place");
        let f = links.take("f.test", ip("2001:db8:1:2::3"));
        assert_eq!(f.err(), Some("too-many-links"));
        assert!(links.take("f.test", ip("2001:db8:2::3")).is_ok());
        let mapped = links.take("g.test", ip("::ffff:192.0.2.77"));
        assert_eq!(mapped.err(), Some("too-many-links"));
    }

    #[test]
    fn two_honest_peers_settle_on_an_even_share_without_flapping() {
        let links = Links::new(8, 0, 4);
        let (na, nb): (IpAddr, IpAddr) = (ip("192.0.2.1"), ip("203.0.113.1"));
        let mut a: Vec<_> = (0..4)
            .map(|_| links.take("a.test", na).expect("a place"))
            .collect();
        let b1 = links.take("b.test", nb).expect("a place");
        let b2 = links.take("b.test", nb).expect("a place");
        assert_eq!((links.held("a.test"), links.held("b.test")), (2, 2));
        // Even now: neither takes from the other again, however often they retry.
        a.retain(|p| p.evicted().now_or_never().is_none());
        assert_eq!(a.len(), 2);
        for _ in 0..10 {
            assert_eq!(links.take("a.test", na).err(), Some("busy"));
            assert_eq!(links.take("b.test", nb).err(), Some("busy"));
        }
        assert!(a
            .iter()
            .chain([&b1, &b2])
            .all(|p| p.evicted().now_or_never().is_none()));
    }
}
