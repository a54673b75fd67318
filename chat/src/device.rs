//! Device cookies (OWASP "Slow Down Online Guessing Attacks with Device Cookies"): proof that
//! a device logged into a login before, so strangers' failures never lock it out.
//!
//! `CONNECT-OK device=` hands out `<nonce>.<expires>.<mac>`: 128 random bits (hex), the expiry
//! in Unix seconds and HMAC-SHA256 (hex) over the canonical login, the nonce and the expiry,
//! under a key derived from `<data-dir>/device.key` (made at first start, mode 0600; losing it
//! only makes every device log in once more without a cookie). Nothing is stored per issued
//! cookie: a cookie is
//! valid for exactly one login until it expires. A `CONNECT … device=` with a valid cookie
//! skips the address and login throttles (`throttle.rs`); instead the cookie has its own
//! failure budget, and after `max_failures` failures it is no longer trusted. Those failure
//! counts are the only state, in a bounded table ([`MAX_ENTRIES`]).

use crate::clock::Clock;
use crate::crypto::{create_secret, hex, random_bytes, read_secret, CryptoError};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

type HmacSha256 = Hmac<Sha256>;

/// Most cookies with failures remembered at once (about 64 bytes each).
pub(crate) const MAX_ENTRIES: usize = 100_000;
/// Longest `device=` value looked at; anything longer is ignored.
pub(crate) const MAX_COOKIE_LEN: usize = 160;

const NONCE: usize = 16;

/// The cookie key in `<data_dir>/device.key`, created (random, mode 0600) when missing.
pub(crate) fn load_or_create_key(data_dir: &Path) -> Result<[u8; 32], CryptoError> {
    let path = data_dir.join("device.key");
    match read_secret(&path)? {
        Some(key) => Ok(key),
        None => create_secret(&path),
    }
}

/// A cookie that verified: its nonce keys its failure count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Device([u8; NONCE]);

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    /// Unix seconds at which the cookie expires anyway.
    expires: i64,
    /// Micros of the last failure.
    last: i64,
}

/// Issues and checks device cookies.
#[derive(Debug)]
pub(crate) struct DeviceCookies {
    key: [u8; 32],
    clock: Clock,
    ttl: Duration,
    max_failures: u32,
    max_entries: usize,
    // A std mutex: critical sections are tiny and never held across an await.
    failures: Mutex<HashMap<Device, Failures>>,
}

fn unhex_into(s: &str, out: &mut [u8]) -> Option<()> {
    if s.len() != out.len() * 2 {
        return None;
    }
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(())
}

impl DeviceCookies {
    /// Cookies signed with a key derived from `secret` ([`load_or_create_key`]), valid for
    /// `ttl`, distrusted after `max_failures` failed logins.
    pub(crate) fn new(secret: &[u8; 32], clock: Clock, ttl: Duration, max_failures: u32) -> Self {
        let mut mac = HmacSha256::new_from_slice(secret).unwrap_or_else(|_| {
            // HMAC takes keys of any length.
            unreachable!("HMAC key length")
        });
        mac.update(b"msim-chat device cookie key v1");
        let key = mac.finalize().into_bytes().into();
        DeviceCookies {
            key,
            clock,
            ttl,
            max_failures: max_failures.max(1),
            max_entries: MAX_ENTRIES,
            failures: Mutex::default(),
        }
    }

    /// The same with a smaller failure table (tests of the bound).
    #[cfg(test)]
    pub(crate) fn with_capacity(mut self, max_entries: usize) -> Self {
        self.max_entries = max_entries.max(2);
        self
    }

    fn mac(&self, login: &str, nonce: &[u8; NONCE], expires: i64) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC key length"));
        // Length-prefixed: no two (login, nonce, expiry) triples sign the same bytes.
        mac.update(&(login.len() as u64).to_be_bytes());
        mac.update(login.as_bytes());
        mac.update(nonce);
        mac.update(&expires.to_be_bytes());
        mac
    }

    fn now_secs(&self) -> i64 {
        self.clock.now_micros().div_euclid(1_000_000)
    }

    /// A new cookie for canonical `login`.
    pub(crate) fn issue(&self, login: &str) -> String {
        let nonce = random_bytes::<NONCE>();
        let ttl = i64::try_from(self.ttl.as_secs()).unwrap_or(i64::MAX / 2);
        let expires = self.now_secs().saturating_add(ttl);
        let tag = self.mac(login, &nonce, expires).finalize().into_bytes();
        format!("{}.{expires}.{}", hex(&nonce), hex(&tag))
    }

    /// The device of `cookie` when it is a valid, unexpired cookie for canonical `login` that
    /// has not used up its failures; None otherwise (the attempt is then an ordinary one).
    pub(crate) fn verify(&self, login: &str, cookie: &str) -> Option<Device> {
        if cookie.len() > MAX_COOKIE_LEN {
            return None;
        }
        let mut parts = cookie.split('.');
        let (n, e, t) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || e.is_empty() || !e.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let mut nonce = [0u8; NONCE];
        unhex_into(n, &mut nonce)?;
        let mut tag = [0u8; 32];
        unhex_into(t, &mut tag)?;
        let expires: i64 = e.parse().ok()?;
        // Constant-time comparison.
        self.mac(login, &nonce, expires).verify_slice(&tag).ok()?;
        if expires <= self.now_secs() {
            return None;
        }
        let device = Device(nonce);
        let failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        match failures.get(&device) {
            Some(f) if f.count >= self.max_failures => None,
            _ => Some(device),
        }
    }

    /// Counts a failed login made with `device`'s cookie. The entry is kept for at most one
    /// cookie lifetime (by then the cookie has expired anyway).
    pub(crate) fn failure(&self, device: Device) {
        let now = self.clock.now_micros();
        let expires = self
            .now_secs()
            .saturating_add(i64::try_from(self.ttl.as_secs()).unwrap_or(i64::MAX / 2));
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= self.max_entries && !map.contains_key(&device) {
            self.make_room(&mut map, now);
        }
        let f = map.entry(device).or_insert(Failures {
            count: 0,
            expires,
            last: now,
        });
        f.count = f.count.saturating_add(1);
        f.last = now;
    }

    /// A successful login with `device`'s cookie: its failures are forgotten.
    pub(crate) fn success(&self, device: Device) {
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(&device);
    }

    /// Drops entries of cookies that have expired anyway, then cookies still trusted (losing
    /// a count gives that cookie a few more tries), then the oldest half.
    fn make_room(&self, map: &mut HashMap<Device, Failures>, now: i64) {
        let now_secs = now.div_euclid(1_000_000);
        map.retain(|_, f| f.expires > now_secs);
        if map.len() < self.max_entries {
            return;
        }
        let max = self.max_failures;
        map.retain(|_, f| f.count >= max);
        if map.len() < self.max_entries {
            return;
        }
        let mut lasts: Vec<i64> = map.values().map(|f| f.last).collect();
        lasts.sort_unstable();
        let cut = lasts[lasts.len() / 2];
        map.retain(|_, f| f.last > cut);
    }

    /// Cookies with failures remembered (tests of the bound).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cookies(clock: &Clock) -> DeviceCookies {
        DeviceCookies::new(&[7; 32], clock.clone(), Duration::from_secs(3600), 3)
    }

    #[test]
    fn bound_to_login_key_and_time() {
        let clock = Clock::manual();
        let c = cookies(&clock);
        let cookie = c.issue("alice");
        assert!(c.verify("alice", &cookie).is_some());
        assert!(c.verify("bob", &cookie).is_none());
        let other = DeviceCookies::new(&[8; 32], clock.clone(), Duration::from_secs(3600), 3);
        assert!(other.verify("alice", &cookie).is_none());
        // Tampering with any part breaks it.
        let mut parts: Vec<String> = cookie.split('.').map(str::to_owned).collect();
        let later = (parts[1].parse::<i64>().unwrap_or(0) + 1000).to_string();
        parts[1] = later;
        assert!(c.verify("alice", &parts.join(".")).is_none());
        for bad in ["", "x", "..", &format!("{cookie}.0"), &"a".repeat(500)] {
            assert!(c.verify("alice", bad).is_none(), "{bad}");
        }
        clock.advance(Duration::from_secs(3600));
        assert!(c.verify("alice", &cookie).is_none());
    }

    #[test]
    fn failures_use_up_a_cookie() {
        let clock = Clock::manual();
        let c = cookies(&clock);
        let cookie = c.issue("alice");
        let other = c.issue("alice");
        let Some(d) = c.verify("alice", &cookie) else {
            panic!("valid cookie refused");
        };
        c.failure(d);
        c.failure(d);
        c.success(d);
        c.failure(d);
        c.failure(d);
        assert!(c.verify("alice", &cookie).is_some());
        c.failure(d);
        assert!(c.verify("alice", &cookie).is_none());
        // Another device of the same login is unaffected.
        assert!(c.verify("alice", &other).is_some());
    }

    #[test]
    fn failure_table_stays_bounded() {
        let clock = Clock::manual();
        let c = cookies(&clock).with_capacity(100);
        let keep = c.issue("victim");
        let Some(victim) = c.verify("victim", &keep) else {
            panic!("valid cookie refused");
        };
        for _ in 0..3 {
            c.failure(victim);
        }
        for i in 0..10_000 {
            let cookie = c.issue(&format!("u{i}"));
            if let Some(d) = c.verify(&format!("u{i}"), &cookie) {
                c.failure(d);
            }
            clock.advance(Duration::from_micros(10));
            assert!(c.len() <= 100);
        }
        // Distrusted cookies are the last to be forgotten.
        assert!(c.verify("victim", &keep).is_none());
    }
}
