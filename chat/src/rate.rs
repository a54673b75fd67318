//! Bounded tables of token buckets keyed by client address or account, and the address keys
//! they use: registration per address and per network prefix, lookups of unknown users per
//! account (SECURITY.md, "Registration" and "Account discovery").

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

/// Most keys one table holds (about 64 bytes each, so a few MiB at most).
pub(crate) const MAX_KEYS: usize = 100_000;

const MICROS_PER_HOUR: f64 = 3_600e6;

/// The key for "one host": an IPv4 address, or the /64 of an IPv6 address (one host usually
/// owns a whole /64). IPv4-mapped IPv6 addresses count as IPv4.
pub(crate) fn host_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
    }
}

/// The key for "one network": the /24 of an IPv4 address, the /48 of an IPv6 address.
pub(crate) fn prefix_key(ip: IpAddr) -> IpAddr {
    match host_key(ip) {
        IpAddr::V4(v4) => IpAddr::V4((u32::from(v4) & 0xffff_ff00).into()),
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !((1u128 << 80) - 1)).into()),
    }
}

/// A token bucket per key: `burst` tokens, refilled at `per_hour`. A bucket that has refilled
/// completely is the same as no bucket, so the table only holds keys that spent tokens
/// recently. `burst == 0` means unlimited.
#[derive(Debug)]
pub(crate) struct Buckets<K> {
    burst: f64,
    per_micro: f64,
    max_keys: usize,
    // A std mutex: critical sections are tiny and never held across an await.
    map: Mutex<HashMap<K, (f64, i64)>>,
}

impl<K: Hash + Eq + Clone> Buckets<K> {
    /// Buckets of `burst` tokens refilled at `per_hour` tokens per hour.
    pub(crate) fn new(burst: u32, per_hour: u32, max_keys: usize) -> Buckets<K> {
        Buckets {
            burst: f64::from(burst),
            per_micro: f64::from(per_hour) / MICROS_PER_HOUR,
            max_keys: max_keys.max(1),
            map: Mutex::new(HashMap::new()),
        }
    }

    /// Whether this table limits nothing.
    pub(crate) fn unlimited(&self) -> bool {
        self.burst == 0.0
    }

    fn level(&self, entry: Option<&(f64, i64)>, now: i64) -> f64 {
        match entry {
            None => self.burst,
            Some(&(tokens, at)) => {
                (tokens + (now - at).max(0) as f64 * self.per_micro).min(self.burst)
            }
        }
    }

    /// How long until `key` has a whole token: zero when it has one now.
    pub(crate) fn wait(&self, key: &K, now: i64) -> Duration {
        if self.unlimited() {
            return Duration::ZERO;
        }
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let level = self.level(map.get(key), now);
        if level >= 1.0 {
            return Duration::ZERO;
        }
        if self.per_micro <= 0.0 {
            return Duration::MAX;
        }
        Duration::from_micros(((1.0 - level) / self.per_micro).ceil() as u64)
    }

    /// Takes one token from `key`, even when that leaves the bucket in debt (several pipelined
    /// requests may pass [`Buckets::wait`] before the first is charged; each one is paid for).
    pub(crate) fn take(&self, key: K, now: i64) {
        if self.unlimited() {
            return;
        }
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= self.max_keys && !map.contains_key(&key) {
            self.make_room(&mut map, now);
        }
        let level = self.level(map.get(&key), now);
        // Debt is bounded so that a bucket always refills within a bounded time.
        map.insert(key, ((level - 1.0).max(-self.burst), now));
    }

    /// Drops buckets that are full again (equivalent to absent); when that is not enough, the
    /// fuller half (the keys that spent least recently lose the least).
    fn make_room(&self, map: &mut HashMap<K, (f64, i64)>, now: i64) {
        map.retain(|_, e| {
            let level = self.level(Some(e), now);
            level < self.burst
        });
        if map.len() < self.max_keys {
            return;
        }
        let mut levels: Vec<f64> = map.values().map(|e| self.level(Some(e), now)).collect();
        levels.sort_unstable_by(f64::total_cmp);
        let cut = levels[levels.len() / 2];
        map.retain(|_, e| self.level(Some(e), now) < cut);
        if map.len() >= self.max_keys {
            // All at the same level: drop any half rather than grow.
            let drop: Vec<K> = map.keys().take(map.len() / 2 + 1).cloned().collect();
            for k in drop {
                map.remove(&k);
            }
        }
    }

    /// Keys held (for tests of the bound).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether no key is held.
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The rate limits of registration and account discovery.
#[derive(Debug)]
pub(crate) struct Limits {
    /// Registrations per host ([`host_key`]).
    pub(crate) register_host: Buckets<IpAddr>,
    /// Registrations per network ([`prefix_key`]).
    pub(crate) register_prefix: Buckets<IpAddr>,
    /// Lookups of unknown users per account.
    pub(crate) discovery: Buckets<String>,
}

impl Limits {
    /// The limits of `config`.
    pub(crate) fn new(config: &crate::Config) -> Limits {
        Limits {
            register_host: Buckets::new(config.register_burst, config.register_per_hour, MAX_KEYS),
            register_prefix: Buckets::new(
                config.register_prefix_burst,
                config.register_prefix_per_hour,
                MAX_KEYS,
            ),
            discovery: Buckets::new(config.discovery_burst, config.discovery_per_hour, MAX_KEYS),
        }
    }

    /// Takes a registration token from `ip`'s host and network; false (nothing taken) when
    /// either is out of tokens.
    pub(crate) fn allow_register(&self, ip: IpAddr, now: i64) -> bool {
        let (host, prefix) = (host_key(ip), prefix_key(ip));
        if !self.register_host.wait(&host, now).is_zero()
            || !self.register_prefix.wait(&prefix, now).is_zero()
        {
            return false;
        }
        self.register_host.take(host, now);
        self.register_prefix.take(prefix, now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3_600_000_000;

    #[test]
    fn burst_then_refill_per_hour() {
        let b = Buckets::new(3, 6, 10);
        let now = 1_000 * HOUR;
        for _ in 0..3 {
            assert_eq!(b.wait(&"a", now), Duration::ZERO);
            b.take("a", now);
        }
        // Empty: one token every 10 minutes.
        assert_eq!(b.wait(&"a", now), Duration::from_secs(600));
        assert_eq!(b.wait(&"b", now), Duration::ZERO);
        assert_eq!(b.wait(&"a", now + HOUR / 6), Duration::ZERO);
        // Refilled to the burst, no more.
        assert_eq!(b.wait(&"a", now + 10 * HOUR), Duration::ZERO);
    }

    #[test]
    fn debt_is_paid_and_bounded() {
        let b = Buckets::new(2, 60, 10);
        let now = 1_000 * HOUR;
        for _ in 0..10 {
            b.take("a", now);
        }
        // Level -2 (bounded at -burst): three tokens to earn back, one a minute.
        assert_eq!(b.wait(&"a", now), Duration::from_secs(180));
    }

    #[test]
    fn table_stays_bounded() {
        let b = Buckets::new(1, 1, 100);
        let now = 1_000 * HOUR;
        for i in 0..10_000u32 {
            b.take(i, now + i64::from(i));
            assert!(b.len() <= 100);
        }
        // The most recent spender is still limited.
        assert!(b.wait(&9_999, now + 10_000) > Duration::ZERO);
    }

    #[test]
    fn unlimited_holds_nothing() {
        let b = Buckets::new(0, 0, 10);
        for i in 0..100u32 {
            b.take(i, 0);
            assert_eq!(b.wait(&i, 0), Duration::ZERO);
        }
        assert!(b.is_empty());
    }

    #[test]
    fn address_keys() {
        let v4: IpAddr = "192.0.2.77".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
        assert_eq!(host_key(v4), v4);
        assert_eq!(prefix_key(v4), IpAddr::from([192, 0, 2, 0]));
        let v6: IpAddr = "2001:db8:1:2:3:4:5:6".parse().unwrap_or(v4);
        assert_eq!(host_key(v6).to_string(), "2001:db8:1:2::");
        assert_eq!(prefix_key(v6).to_string(), "2001:db8:1::");
        let mapped: IpAddr = "::ffff:192.0.2.77".parse().unwrap_or(v4);
        assert_eq!(host_key(mapped), v4);
    }
}
