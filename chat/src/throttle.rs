//! Failed-login throttling (per login and per client IP) and registration rate limiting.
//!
//! Each failure doubles the delay before the next attempt is allowed, from `base` up to `max`.
//! Failures are forgotten one per `decay` without new failures, so there is never a permanent
//! lockout. The maps are bounded: when full, entries whose penalty has fully decayed are pruned,
//! and if that is not enough the oldest half is dropped.

use crate::clock::Clock;
use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

const MAX_ENTRIES: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    /// Micros of the last failure.
    last: i64,
}

#[derive(Debug)]
struct Table<K> {
    map: HashMap<K, Entry>,
}

impl<K: Hash + Eq + Clone> Table<K> {
    fn effective(&self, e: &Entry, now: i64, decay: Duration) -> u32 {
        let decay = decay.as_micros().max(1) as i64;
        let forgotten = ((now - e.last).max(0) / decay) as u32;
        e.failures.saturating_sub(forgotten)
    }
}

/// Login throttling state.
#[derive(Debug)]
pub struct Throttle {
    clock: Clock,
    base: Duration,
    max: Duration,
    decay: Duration,
    // A std mutex: critical sections are tiny and never held across an await.
    logins: Mutex<Table<String>>,
    ips: Mutex<Table<IpAddr>>,
    register: Mutex<HashMap<IpAddr, (f64, i64)>>,
    register_burst: u32,
    register_per_minute: u32,
}

impl Throttle {
    /// A throttle with the given delays.
    pub fn new(
        clock: Clock,
        base: Duration,
        max: Duration,
        decay: Duration,
        register_burst: u32,
        register_per_minute: u32,
    ) -> Throttle {
        Throttle {
            clock,
            base,
            max,
            decay,
            logins: Mutex::new(Table {
                map: HashMap::new(),
            }),
            ips: Mutex::new(Table {
                map: HashMap::new(),
            }),
            register: Mutex::new(HashMap::new()),
            register_burst,
            register_per_minute,
        }
    }

    fn delay(&self, failures: u32) -> Duration {
        if failures == 0 {
            return Duration::ZERO;
        }
        let shift = (failures - 1).min(20);
        self.base.saturating_mul(1u32 << shift).min(self.max)
    }

    fn wait_in<K: Hash + Eq + Clone>(&self, t: &Mutex<Table<K>>, key: &K, now: i64) -> Duration {
        let t = t.lock().unwrap_or_else(|e| e.into_inner());
        let Some(e) = t.map.get(key) else {
            return Duration::ZERO;
        };
        let n = t.effective(e, now, self.decay);
        let until = e.last + self.delay(n).as_micros() as i64;
        Duration::from_micros((until - now).max(0) as u64)
    }

    /// How long `login` from `ip` must still wait (zero = may try now).
    pub fn wait(&self, login: &str, ip: IpAddr) -> Duration {
        let now = self.clock.now_micros();
        let a = self.wait_in(&self.logins, &login.to_owned(), now);
        let b = self.wait_in(&self.ips, &ip, now);
        a.max(b)
    }

    fn fail_in<K: Hash + Eq + Clone>(&self, t: &Mutex<Table<K>>, key: K, now: i64) {
        let mut t = t.lock().unwrap_or_else(|e| e.into_inner());
        if t.map.len() >= MAX_ENTRIES && !t.map.contains_key(&key) {
            let horizon = self.decay.as_micros() as i64 * 32;
            t.map.retain(|_, e| now - e.last < horizon);
            if t.map.len() >= MAX_ENTRIES {
                let mut lasts: Vec<i64> = t.map.values().map(|e| e.last).collect();
                lasts.sort_unstable();
                let cut = lasts[lasts.len() / 2];
                t.map.retain(|_, e| e.last > cut);
            }
        }
        let cur = t.map.get(&key).copied();
        let n = cur.map(|e| t.effective(&e, now, self.decay)).unwrap_or(0);
        t.map.insert(
            key,
            Entry {
                failures: n.saturating_add(1),
                last: now,
            },
        );
    }

    /// Records a failed attempt.
    pub fn failure(&self, login: &str, ip: IpAddr) {
        let now = self.clock.now_micros();
        self.fail_in(&self.logins, login.to_owned(), now);
        self.fail_in(&self.ips, ip, now);
    }

    /// Records a success: the login's failures are forgotten (the IP's decay normally).
    pub fn success(&self, login: &str) {
        let mut t = self.logins.lock().unwrap_or_else(|e| e.into_inner());
        t.map.remove(login);
    }

    /// Takes a registration token for `ip`; false when the IP is over its rate.
    pub fn allow_register(&self, ip: IpAddr) -> bool {
        if self.register_burst == 0 {
            return true;
        }
        let now = self.clock.now_micros();
        let mut m = self.register.lock().unwrap_or_else(|e| e.into_inner());
        if m.len() >= MAX_ENTRIES && !m.contains_key(&ip) {
            m.clear();
        }
        let burst = self.register_burst as f64;
        let (tokens, last) = m.get(&ip).copied().unwrap_or((burst, now));
        let refill = (now - last).max(0) as f64 / 60e6 * self.register_per_minute as f64;
        let tokens = (tokens + refill).min(burst);
        if tokens >= 1.0 {
            m.insert(ip, (tokens - 1.0, now));
            true
        } else {
            m.insert(ip, (tokens, now));
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_and_decays() {
        let clock = Clock::manual();
        let t = Throttle::new(
            clock.clone(),
            Duration::from_secs(1),
            Duration::from_secs(8),
            Duration::from_secs(60),
            0,
            0,
        );
        let ip: IpAddr = [10, 0, 0, 1].into();
        assert_eq!(t.wait("a", ip), Duration::ZERO);
        t.failure("a", ip);
        assert_eq!(t.wait("a", ip), Duration::from_secs(1));
        t.failure("a", ip);
        t.failure("a", ip);
        assert_eq!(t.wait("a", ip), Duration::from_secs(4));
        for _ in 0..10 {
            t.failure("a", ip);
        }
        assert_eq!(t.wait("a", ip), Duration::from_secs(8));
        // Another login from the same IP is throttled too.
        assert_eq!(t.wait("b", ip), Duration::from_secs(8));
        clock.advance(Duration::from_secs(8));
        assert_eq!(t.wait("a", ip), Duration::ZERO);
        // Decay: after a long quiet period failures are forgotten.
        clock.advance(Duration::from_secs(3600));
        t.failure("a", ip);
        assert_eq!(t.wait("a", ip), Duration::from_secs(1));
        t.success("a");
    }
}
