//! Authenticated inbound links (PROTOCOL.md §12.5): at most `max_links_per_domain` per
//! registrable domain and `max_authenticated` in all. When all places are taken, a newcomer
//! takes the oldest link of the domain holding the most — if that domain holds at least two
//! more than the newcomer would — so the places are shared out evenly: a few dozen cheap
//! registrable domains, each at its own cap, cannot keep every other peer out (they used to
//! get `busy` for as long as the attacker kept its links alive).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

/// The places of all authenticated inbound links.
#[derive(Default)]
pub(crate) struct Links {
    state: Arc<Mutex<State>>,
    max_per_domain: usize,
    max_all: usize,
}

#[derive(Default)]
struct State {
    /// Per registrable domain, its links' ids and eviction signals, oldest first.
    per_domain: HashMap<String, VecDeque<(u64, CancellationToken)>>,
    all: usize,
    next_id: u64,
}

/// An authenticated inbound link's place; freed when dropped. [`LinkPlace::evicted`] completes
/// when another peer took it: the link should end (the peer may come back later).
pub(crate) struct LinkPlace {
    state: Arc<Mutex<State>>,
    domain: String,
    id: u64,
    evicted: CancellationToken,
}

impl Links {
    /// 0 = unbounded.
    pub(crate) fn new(max_per_domain: usize, max_all: usize) -> Links {
        Links {
            state: Arc::default(),
            max_per_domain,
            max_all,
        }
    }

    /// A place for a link of registrable domain `domain`; `Err` with the reason
    /// (`too-many-links`: that domain has all it may have; `busy`: the places are shared out
    /// evenly already) otherwise.
    pub(crate) fn take(&self, domain: &str) -> Result<LinkPlace, &'static str> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let held = s.per_domain.get(domain).map_or(0, VecDeque::len);
        if self.max_per_domain > 0 && held >= self.max_per_domain {
            return Err("too-many-links");
        }
        if self.max_all > 0 && s.all >= self.max_all {
            let richest = s
                .per_domain
                .iter()
                .max_by_key(|(_, l)| l.len())
                .filter(|(_, l)| l.len() >= held + 2)
                .map(|(d, _)| d.clone());
            let Some(richest) = richest else {
                return Err("busy");
            };
            s.evict_oldest(&richest);
        }
        let id = s.next_id;
        s.next_id += 1;
        let evicted = CancellationToken::new();
        s.per_domain
            .entry(domain.to_owned())
            .or_default()
            .push_back((id, evicted.clone()));
        s.all += 1;
        Ok(LinkPlace {
            state: self.state.clone(),
            domain: domain.to_owned(),
            id,
            evicted,
        })
    }

    /// Links held by `domain` (tests).
    #[cfg(test)]
    pub(crate) fn held(&self, domain: &str) -> usize {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.per_domain.get(domain).map_or(0, VecDeque::len)
    }
}

impl State {
    /// Frees `domain`'s oldest place at once (so the bound holds) and tells its link to end.
    fn evict_oldest(&mut self, domain: &str) {
        let Some(list) = self.per_domain.get_mut(domain) else {
            return;
        };
        if let Some((_, signal)) = list.pop_front() {
            signal.cancel();
            self.all -= 1;
        }
        if list.is_empty() {
            self.per_domain.remove(domain);
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
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let Some(list) = s.per_domain.get_mut(&self.domain) else {
            return;
        };
        // An evicted place was freed when it was evicted.
        let Some(at) = list.iter().position(|(id, _)| *id == self.id) else {
            return;
        };
        list.remove(at);
        if list.is_empty() {
            s.per_domain.remove(&self.domain);
        }
        s.all -= 1;
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

    #[test]
    fn links_are_bounded_per_domain_and_in_all() {
        let links = Links::new(2, 3);
        let a1 = links.take("evil.test").expect("a place");
        let _a2 = links.take("evil.test").expect("a place");
        assert_eq!(links.take("evil.test").err(), Some("too-many-links"));
        let _b = links.take("b.test").expect("a place");
        // Full, and evenly shared for one more of b: busy.
        assert_eq!(links.take("b.test").err(), Some("busy"));
        drop(a1);
        assert!(links.take("evil.test").is_ok());
    }

    #[test]
    fn a_newcomer_takes_the_oldest_link_of_the_domain_holding_the_most() {
        // 63 cheap domains × 8 links used to hold all 500 places: every other peer got busy.
        let links = Links::new(8, 500);
        let mut held = Vec::new();
        for d in 0..63 {
            for _ in 0..if d < 62 { 8 } else { 4 } {
                held.push(links.take(&format!("evil{d}.test")).expect("a place"));
            }
        }
        assert_eq!(held.len(), 500);
        assert!(held.iter().all(|p| p.evicted().now_or_never().is_none()));
        let honest = links.take("honest.test").expect("a fair place");
        assert_eq!(links.held("honest.test"), 1);
        // Exactly one attacker link was told to end, the oldest of a domain with 8.
        let evicted: Vec<_> = held
            .iter()
            .filter(|p| p.evicted().now_or_never().is_some())
            .collect();
        assert_eq!(evicted.len(), 1);
        let loser = evicted[0].domain.clone();
        assert_eq!(links.held(&loser), 7);
        // Dropping the evicted place frees nothing twice: still full, and the attacker cannot
        // take it back from a domain holding only one more than it; a domain at its cap is
        // refused as before.
        held.retain(|p| p.evicted().now_or_never().is_none());
        assert_eq!(links.take(&loser).err(), Some("busy"));
        let full = if loser == "evil0.test" {
            "evil1.test"
        } else {
            "evil0.test"
        };
        assert_eq!(links.take(full).err(), Some("too-many-links"));
        assert!(honest.evicted().now_or_never().is_none());
        // A second honest domain still gets in.
        assert!(links.take("other.test").is_ok());
    }
}
