//! The cache of peers' public keys by (domain, key id) (PROTOCOL.md §12.3), bounded so that a
//! peer cannot use it against us:
//!
//! - a key id names one key forever: once a key was seen under an id, another key published
//!   under the same id is refused (logged) for as long as the entry is remembered, which
//!   outlives its TTL (Synapse accepted a key replaced under the same id);
//! - a signature failing against a cached key refetches it at most once per
//!   [`KeyCacheBounds::refetch_interval`] (unbounded refetches on demand let a peer make us
//!   query DNS at will);
//! - at most [`KeyCacheBounds::per_domain`] ids per domain: a flood of unknown ids from one
//!   claimed domain evicts that domain's own entries only, never the whole cache.

use super::dns::{KeyAnswer, KeyCacheBounds};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tracing::warn;

/// One cached key id.
struct Entry {
    answer: KeyAnswer,
    /// Fresh until then (the record's TTL within bounds).
    until: Instant,
    /// When DNS was last asked for it.
    fetched: Instant,
    /// The key first seen under this id: any other is refused.
    pinned: Option<Vec<u8>>,
}

/// What the cache says about a key id.
pub(crate) enum Cached {
    /// A fresh answer: use it.
    Fresh(KeyAnswer),
    /// Ask DNS (unknown, expired, or a refetch that is allowed now).
    Fetch,
}

/// The cache.
pub(crate) struct KeyCache {
    bounds: KeyCacheBounds,
    domains: Mutex<Domains>,
}

#[derive(Default)]
struct Domains {
    by_domain: HashMap<String, HashMap<String, Entry>>,
    entries: usize,
}

impl KeyCache {
    pub(crate) fn new(bounds: KeyCacheBounds) -> KeyCache {
        KeyCache {
            bounds,
            domains: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Domains> {
        self.domains.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `kid` of `domain` must be fetched. `refresh`: a signature failed against the
    /// cached key; DNS is asked again only if it was not asked within the refetch interval.
    pub(crate) fn get(&self, domain: &str, kid: &str, refresh: bool, now: Instant) -> Cached {
        let d = self.lock();
        let Some(e) = d.by_domain.get(domain).and_then(|k| k.get(kid)) else {
            return Cached::Fetch;
        };
        if e.until <= now {
            return Cached::Fetch;
        }
        if refresh && now.saturating_duration_since(e.fetched) >= self.bounds.refetch_interval {
            return Cached::Fetch;
        }
        Cached::Fresh(e.answer.clone())
    }

    /// Stores what DNS said (`ttl` already bounded) and returns what to believe: a key that
    /// differs from the one pinned under this id is refused, the pinned one is kept.
    pub(crate) fn store(
        &self,
        domain: &str,
        kid: &str,
        answer: KeyAnswer,
        ttl: Duration,
        now: Instant,
    ) -> KeyAnswer {
        let mut d = self.lock();
        let pinned = d
            .by_domain
            .get(domain)
            .and_then(|k| k.get(kid))
            .and_then(|e| e.pinned.clone());
        let answer = match (answer, &pinned) {
            (KeyAnswer::Key(new), Some(old)) if new != *old => {
                warn!(
                    %domain, %kid,
                    "federation: a different key was published under a key id already in use; \
                     refused (key ids are never reused: publish a new key under a new id)"
                );
                KeyAnswer::Key(old.clone())
            }
            (a, _) => a,
        };
        let pinned = match &answer {
            KeyAnswer::Key(k) => Some(k.clone()),
            KeyAnswer::NoKey => pinned,
        };
        let entry = Entry {
            answer: answer.clone(),
            until: now + ttl,
            fetched: now,
            pinned,
        };
        let known = d.by_domain.get(domain).is_some_and(|k| k.contains_key(kid));
        if !known {
            d.make_room(domain, self.bounds.per_domain, self.bounds.max_entries, now);
            d.entries += 1;
        }
        d.by_domain
            .entry(domain.to_owned())
            .or_default()
            .insert(kid.to_owned(), entry);
        answer
    }

    /// Number of cached entries.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().entries
    }
}

impl Domains {
    /// Frees a place for one more entry of `domain`: first among that domain's own entries
    /// (the one expiring first), then, when the whole cache is full, the expired entries, and
    /// if none, the entry expiring first anywhere.
    fn make_room(&mut self, domain: &str, per_domain: usize, max: usize, now: Instant) {
        if let Some(kids) = self.by_domain.get_mut(domain) {
            if kids.len() >= per_domain.max(1) {
                if let Some(k) = soonest(kids) {
                    kids.remove(&k);
                    self.entries -= 1;
                }
            }
        }
        if self.entries < max.max(1) {
            return;
        }
        let mut removed = 0;
        for kids in self.by_domain.values_mut() {
            let before = kids.len();
            kids.retain(|_, e| e.until > now);
            removed += before - kids.len();
        }
        self.entries -= removed;
        if self.entries >= max.max(1) {
            let victim = self
                .by_domain
                .iter()
                .filter_map(|(d, kids)| {
                    soonest(kids).map(|k| {
                        let e = &kids[&k];
                        ((e.pinned.is_some(), e.until), d.clone(), k)
                    })
                })
                .min();
            if let Some((_, d, k)) = victim {
                if let Some(kids) = self.by_domain.get_mut(&d) {
                    kids.remove(&k);
                    self.entries -= 1;
                }
            }
        }
        self.by_domain.retain(|_, kids| !kids.is_empty());
    }
}

/// The key id of `kids` to evict first: ids that never named a key before ids that did (their
/// pin is what refuses a replaced key), then the one expiring first.
fn soonest(kids: &HashMap<String, Entry>) -> Option<String> {
    kids.iter()
        .min_by_key(|(_, e)| (e.pinned.is_some(), e.until))
        .map(|(k, _)| k.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bounds(per_domain: usize, max_entries: usize) -> KeyCacheBounds {
        KeyCacheBounds {
            per_domain,
            max_entries,
            ..Default::default()
        }
    }

    #[test]
    fn a_key_replaced_under_its_id_is_refused() {
        let c = KeyCache::new(bounds(4, 10));
        let now = Instant::now();
        let ttl = Duration::from_secs(60);
        let k1 = KeyAnswer::Key(vec![1; 32]);
        assert_eq!(c.store("a.test", "k1", k1.clone(), ttl, now), k1);
        let later = now + Duration::from_secs(3600);
        // Expired, refetched: another key under the same id is not believed.
        assert_eq!(
            c.store("a.test", "k1", KeyAnswer::Key(vec![2; 32]), ttl, later),
            k1
        );
        // A revocation is; the pin survives it.
        assert_eq!(
            c.store("a.test", "k1", KeyAnswer::NoKey, ttl, later),
            KeyAnswer::NoKey
        );
        assert_eq!(
            c.store("a.test", "k1", KeyAnswer::Key(vec![3; 32]), ttl, later),
            k1
        );
    }

    #[test]
    fn refetches_are_rate_limited_per_id() {
        let c = KeyCache::new(KeyCacheBounds {
            refetch_interval: Duration::from_secs(60),
            ..Default::default()
        });
        let now = Instant::now();
        c.store(
            "a.test",
            "k1",
            KeyAnswer::Key(vec![1; 32]),
            Duration::from_secs(600),
            now,
        );
        assert!(matches!(
            c.get("a.test", "k1", false, now),
            Cached::Fresh(_)
        ));
        assert!(matches!(
            c.get("a.test", "k1", true, now + Duration::from_secs(1)),
            Cached::Fresh(_)
        ));
        assert!(matches!(
            c.get("a.test", "k1", true, now + Duration::from_secs(61)),
            Cached::Fetch
        ));
    }

    #[test]
    fn a_flood_of_ids_evicts_only_that_domains_entries() {
        let c = KeyCache::new(bounds(4, 8));
        let now = Instant::now();
        let key = KeyAnswer::Key(vec![1; 32]);
        // Even a key expiring before the flood's "no key" answers stays: ids that named a key
        // go last.
        c.store("good.test", "k1", key.clone(), Duration::from_secs(30), now);
        for i in 0..100 {
            c.store(
                "good.test",
                &format!("x{i}"),
                KeyAnswer::NoKey,
                Duration::from_secs(60),
                now,
            );
        }
        assert!(matches!(c.get("good.test", "k1", false, now), Cached::Fresh(k) if k == key));
        for i in 0..100 {
            c.store(
                "evil.test",
                &format!("x{i}"),
                KeyAnswer::NoKey,
                Duration::from_secs(60),
                now,
            );
        }
        assert!(c.len() <= 8);
        assert!(matches!(c.get("good.test", "k1", false, now), Cached::Fresh(k) if k == key));
        // Many domains: the whole cache stays bounded, expiring-first entries go first.
        for i in 0..100 {
            c.store(
                &format!("d{i}.test"),
                "x",
                KeyAnswer::NoKey,
                Duration::from_secs(60),
                now,
            );
        }
        assert!(c.len() <= 8);
        assert!(matches!(c.get("good.test", "k1", false, now), Cached::Fresh(k) if k == key));
    }
}
