//! Failed-login throttling (SECURITY.md, "Login hardening").
//!
//! Each failure doubles the delay before the next attempt is allowed, from `base` up to `max`.
//! Failures are forgotten one per `decay` without new failures, so there is never a permanent
//! lockout. Failures are counted
//!
//! - per login **and** address: a guesser at one address is slowed for that login;
//! - per address (IPv6: per /64): one address guessing many logins is slowed;
//! - per login, only for attempts from addresses that never logged into that login
//!   successfully: guessing from many addresses stays slow, while the user's own known
//!   addresses (and devices with a cookie, `device.rs`, which bypass this module) are not
//!   locked out by strangers' failures.
//!
//! Every table is bounded ([`MAX_ENTRIES`] keys): when full, entries whose penalty has decayed
//! (or, for known addresses, expired) are pruned, and if that is not enough the oldest half is
//! dropped.

use crate::clock::Clock;
use crate::rate::host_key;
use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

/// Most keys per table (each well under 100 bytes: a few MiB per table at most).
pub(crate) const MAX_ENTRIES: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    /// Micros of the last failure.
    last: i64,
}

/// Timing of the throttle.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Delays {
    /// Delay after the first failure.
    pub(crate) base: Duration,
    /// Longest delay.
    pub(crate) max: Duration,
    /// One failure is forgotten per this much time without failures.
    pub(crate) decay: Duration,
    /// How long an address stays known after a successful login from it.
    pub(crate) known_for: Duration,
}

/// Login throttling state.
#[derive(Debug)]
pub(crate) struct Throttle {
    clock: Clock,
    delays: Delays,
    max_entries: usize,
    // std mutexes: critical sections are tiny and never held across an await.
    login_addr: Mutex<HashMap<(String, IpAddr), Entry>>,
    addrs: Mutex<HashMap<IpAddr, Entry>>,
    logins: Mutex<HashMap<String, Entry>>,
    /// (login, address) → micros of the last successful login from there.
    known: Mutex<HashMap<(String, IpAddr), i64>>,
}

impl Delays {
    /// Failures still counted at `now` of `failures` whose last was at `last` (micros).
    pub(crate) fn remaining(&self, failures: u32, last: i64, now: i64) -> u32 {
        let decay = micros(self.decay).max(1);
        let forgotten = u32::try_from((now - last).max(0) / decay).unwrap_or(u32::MAX);
        failures.saturating_sub(forgotten)
    }

    /// The delay after `failures` failures.
    pub(crate) fn delay(&self, failures: u32) -> Duration {
        if failures == 0 {
            return Duration::ZERO;
        }
        let shift = (failures - 1).min(20);
        self.base.saturating_mul(1u32 << shift).min(self.max)
    }

    /// Past this long without failures an entry may be forgotten: its penalty has decayed to
    /// nothing (max 2^20 · base ≥ max).
    pub(crate) fn horizon(&self) -> i64 {
        micros(self.decay).saturating_mul(32)
    }
}

pub(crate) fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

impl Throttle {
    /// A throttle with the given delays.
    pub(crate) fn new(clock: Clock, delays: Delays) -> Throttle {
        Throttle::with_capacity(clock, delays, MAX_ENTRIES)
    }

    /// A throttle whose tables hold at most `max_entries` keys each.
    pub(crate) fn with_capacity(clock: Clock, delays: Delays, max_entries: usize) -> Throttle {
        Throttle {
            clock,
            delays,
            max_entries: max_entries.max(2),
            login_addr: Mutex::default(),
            addrs: Mutex::default(),
            logins: Mutex::default(),
            known: Mutex::default(),
        }
    }

    fn effective(&self, e: &Entry, now: i64) -> u32 {
        self.delays.remaining(e.failures, e.last, now)
    }

    fn delay(&self, failures: u32) -> Duration {
        self.delays.delay(failures)
    }

    fn wait_in<K: Hash + Eq>(&self, t: &Mutex<HashMap<K, Entry>>, key: &K, now: i64) -> Duration {
        let t = t.lock().unwrap_or_else(|e| e.into_inner());
        let Some(e) = t.get(key) else {
            return Duration::ZERO;
        };
        let until = e.last + micros(self.delay(self.effective(e, now)));
        Duration::from_micros(u64::try_from(until - now).unwrap_or(0))
    }

    fn fail_in<K: Hash + Eq>(&self, t: &Mutex<HashMap<K, Entry>>, key: K, now: i64) {
        let mut t = t.lock().unwrap_or_else(|e| e.into_inner());
        if t.len() >= self.max_entries && !t.contains_key(&key) {
            let horizon = self.delays.horizon();
            t.retain(|_, e| now - e.last < horizon);
            if t.len() >= self.max_entries {
                let mut lasts: Vec<i64> = t.values().map(|e| e.last).collect();
                lasts.sort_unstable();
                let cut = lasts[lasts.len() / 2];
                t.retain(|_, e| e.last > cut);
            }
        }
        let n = t.get(&key).map_or(0, |e| self.effective(e, now));
        t.insert(
            key,
            Entry {
                failures: n.saturating_add(1),
                last: now,
            },
        );
    }

    /// Whether `login` logged in successfully from `ip` within the known-address time.
    pub(crate) fn is_known(&self, login: &str, ip: IpAddr) -> bool {
        let now = self.clock.now_micros();
        let known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        known
            .get(&(login.to_owned(), host_key(ip)))
            .is_some_and(|&at| now - at < micros(self.delays.known_for))
    }

    /// How long `login` from `ip` (without a valid device cookie) must still wait; zero = may
    /// try now.
    pub(crate) fn wait(&self, login: &str, ip: IpAddr) -> Duration {
        let now = self.clock.now_micros();
        let ip = host_key(ip);
        let mut w = self
            .wait_in(&self.login_addr, &(login.to_owned(), ip), now)
            .max(self.wait_in(&self.addrs, &ip, now));
        if !self.is_known(login, ip) {
            w = w.max(self.wait_in(&self.logins, &login.to_owned(), now));
        }
        w
    }

    /// Records a failed attempt without a valid device cookie.
    pub(crate) fn failure(&self, login: &str, ip: IpAddr) {
        let now = self.clock.now_micros();
        let ip = host_key(ip);
        if !self.is_known(login, ip) {
            self.fail_in(&self.logins, login.to_owned(), now);
        }
        self.fail_in(&self.login_addr, (login.to_owned(), ip), now);
        self.fail_in(&self.addrs, ip, now);
    }

    /// Records a success: the failures of this login at this address are forgotten (and taken
    /// off the address's count) and the address becomes known for the login. Two counts are
    /// left to decay: the address's failures at other logins (otherwise one address could wipe
    /// its record by logging into an account of its own between guesses at others), and the
    /// login's count of failures from unknown addresses (otherwise every login of the victim
    /// would restart the strangers' delay at 1 s).
    pub(crate) fn success(&self, login: &str, ip: IpAddr) {
        let now = self.clock.now_micros();
        let ip = host_key(ip);
        let key = (login.to_owned(), ip);
        let own = self
            .login_addr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key)
            .map_or(0, |e| self.effective(&e, now));
        // The address's failures at this login are forgiven with it, no others.
        if own > 0 {
            let mut addrs = self.addrs.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(e) = addrs.get_mut(&ip) {
                e.failures = self.effective(e, now).saturating_sub(own);
                e.last = now;
            }
        }
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        if known.len() >= self.max_entries && !known.contains_key(&key) {
            let ttl = micros(self.delays.known_for);
            known.retain(|_, at| now - *at < ttl);
            if known.len() >= self.max_entries {
                let mut ats: Vec<i64> = known.values().copied().collect();
                ats.sort_unstable();
                let cut = ats[ats.len() / 2];
                known.retain(|_, at| *at > cut);
            }
        }
        known.insert(key, now);
    }

    /// Keys held per table: (login and address, address, login, known addresses). For tests
    /// of the bound.
    #[cfg(test)]
    pub(crate) fn sizes(&self) -> [usize; 4] {
        [
            len(&self.login_addr),
            len(&self.addrs),
            len(&self.logins),
            len(&self.known),
        ]
    }
}

#[cfg(test)]
fn len<K, V>(m: &Mutex<HashMap<K, V>>) -> usize {
    m.lock().unwrap_or_else(|e| e.into_inner()).len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delays() -> Delays {
        Delays {
            base: Duration::from_secs(1),
            max: Duration::from_secs(8),
            decay: Duration::from_secs(60),
            known_for: Duration::from_secs(30 * 86_400),
        }
    }

    #[test]
    fn backoff_grows_caps_and_decays() {
        let clock = Clock::manual();
        let t = Throttle::new(clock.clone(), delays());
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
        // Another login from the same address is throttled too.
        assert_eq!(t.wait("b", ip), Duration::from_secs(8));
        clock.advance(Duration::from_secs(8));
        assert_eq!(t.wait("a", ip), Duration::ZERO);
        // Decay: after a long quiet period failures are forgotten.
        clock.advance(Duration::from_secs(3600));
        t.failure("a", ip);
        assert_eq!(t.wait("a", ip), Duration::from_secs(1));
    }

    #[test]
    fn strangers_do_not_lock_out_a_known_address() {
        let clock = Clock::manual();
        let t = Throttle::new(clock.clone(), delays());
        let home: IpAddr = [10, 0, 0, 1].into();
        t.success("victim", home);
        for i in 2..50u8 {
            t.failure("victim", [10, 0, 1, i].into());
        }
        assert_eq!(t.wait("victim", home), Duration::ZERO);
        // A new address is held back by the login's failures.
        assert_eq!(
            t.wait("victim", [10, 0, 2, 1].into()),
            Duration::from_secs(8)
        );
        // Failures from the known address count for it, not for the login.
        t.failure("victim", home);
        assert_eq!(t.wait("victim", home), Duration::from_secs(1));
        t.success("victim", home);
        assert_eq!(t.wait("victim", home), Duration::ZERO);
        // A guess at another login from home is not forgiven by the victim's success.
        t.failure("other", home);
        t.success("victim", home);
        assert_eq!(t.wait("victim", home), Duration::from_secs(1));
        // The strangers' failures were not cleared by the victim's success: they decay.
        assert_eq!(
            t.wait("victim", [10, 0, 2, 1].into()),
            Duration::from_secs(8)
        );
        clock.advance(Duration::from_secs(60 * 48));
        assert_eq!(t.wait("victim", [10, 0, 2, 1].into()), Duration::ZERO);
        // Known addresses expire.
        clock.advance(Duration::from_secs(31 * 86_400));
        assert!(!t.is_known("victim", home));
    }

    #[test]
    fn ipv6_counts_per_64() {
        let t = Throttle::new(Clock::manual(), delays());
        let a: IpAddr = "2001:db8:0:1::1".parse().unwrap_or([0, 0, 0, 0].into());
        let b: IpAddr = "2001:db8:0:1::2".parse().unwrap_or([0, 0, 0, 0].into());
        t.failure("x", a);
        assert_eq!(t.wait("y", b), Duration::from_secs(1));
    }

    #[test]
    fn tables_stay_bounded() {
        let clock = Clock::manual();
        let t = Throttle::with_capacity(clock.clone(), delays(), 1_000);
        for i in 0..20_000u32 {
            let ip = IpAddr::from(i.to_be_bytes());
            t.failure(&format!("u{i}"), ip);
            t.success(&format!("k{i}"), ip);
            clock.advance(Duration::from_millis(1));
            assert!(t.sizes().iter().all(|&n| n <= 1_000), "{:?}", t.sizes());
        }
        // The most recent failures are still remembered.
        let last = IpAddr::from(19_999u32.to_be_bytes());
        assert!(t.wait("u19999", last) > Duration::ZERO);
    }
}
