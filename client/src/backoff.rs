//! Capped exponential backoff with jitter, for reconnecting after a lost connection and for
//! retrying interrupted transfers.
//!
//! The nominal delay starts at `initial` and doubles after every attempt up to `max`
//! (0.5 s, 1 s, 2 s, 4 s, 8 s, 16 s, 30 s, 30 s, … by default). The delay actually waited is
//! drawn uniformly from the upper half of the nominal delay ("equal jitter"), so that many
//! clients that lost the same server do not all come back at the same instant, while each
//! still waits at least half the nominal time.
//!
//! ```
//! use std::time::Duration;
//! let mut backoff = msim::backoff::Backoff::default();
//! let first = backoff.next_delay();
//! assert!(first >= Duration::from_millis(250) && first <= Duration::from_millis(500));
//! backoff.reset(); // after a successful reconnection
//! ```

use std::time::Duration;

/// Capped exponential backoff with jitter. See the [module documentation](self).
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

impl Default for Backoff {
    /// 0.5 s doubling up to 30 s.
    fn default() -> Self {
        Backoff::new(Duration::from_millis(500), Duration::from_secs(30))
    }
}

impl Backoff {
    /// A backoff starting at `initial` and capped at `max` (`max` is raised to `initial` if it
    /// is smaller).
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial,
            max: max.max(initial),
            attempt: 0,
        }
    }

    /// The nominal (un-jittered) delay before attempt number `attempt` (0-based):
    /// `min(initial × 2^attempt, max)`.
    pub fn nominal(&self, attempt: u32) -> Duration {
        // 2^31 × anything overflows long before it matters; saturate instead.
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.initial
            .checked_mul(factor)
            .map_or(self.max, |d| d.min(self.max))
    }

    /// How many delays were handed out since the last [`Backoff::reset`].
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The delay to wait before the next attempt, with random jitter; advances the schedule.
    pub fn next_delay(&mut self) -> Duration {
        self.next_delay_with(rand::random_range(0.0..=1.0))
    }

    /// Like [`Backoff::next_delay`] with the jitter given: `unit` in `0.0..=1.0` picks a point
    /// in the upper half of the nominal delay (0 → half of it, 1 → all of it). Values outside
    /// the range are clamped.
    pub fn next_delay_with(&mut self, unit: f64) -> Duration {
        let nominal = self.nominal(self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        let unit = if unit.is_nan() {
            1.0
        } else {
            unit.clamp(0.0, 1.0)
        };
        let half = nominal / 2;
        half + (nominal - half).mul_f64(unit)
    }

    /// Starts the schedule over (call it once a connection has proved healthy).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn nominal_schedule_doubles_from_half_a_second_and_caps_at_30_s() {
        let b = Backoff::default();
        let got: Vec<Duration> = (0..10).map(|a| b.nominal(a)).collect();
        assert_eq!(
            got,
            [
                ms(500),
                ms(1_000),
                ms(2_000),
                ms(4_000),
                ms(8_000),
                ms(16_000),
                ms(30_000),
                ms(30_000),
                ms(30_000),
                ms(30_000)
            ]
        );
        // No overflow for absurd attempt numbers.
        assert_eq!(b.nominal(64), ms(30_000));
        assert_eq!(b.nominal(u32::MAX), ms(30_000));
    }

    #[test]
    fn jitter_stays_in_the_upper_half_of_the_nominal_delay() {
        let mut b = Backoff::default();
        assert_eq!(b.next_delay_with(0.0), ms(250));
        assert_eq!(b.next_delay_with(1.0), ms(1_000));
        assert_eq!(b.next_delay_with(0.5), ms(1_500));
        assert_eq!(b.attempt(), 3);
        // Out-of-range and NaN jitter is clamped, never a panic.
        assert_eq!(b.next_delay_with(-3.0), ms(2_000));
        assert_eq!(b.next_delay_with(f64::NAN), ms(8_000));
        assert_eq!(b.next_delay_with(0.25), ms(10_000));
        // From here on the cap holds.
        for _ in 0..100 {
            let d = b.next_delay();
            assert!(d >= ms(15_000) && d <= ms(30_000), "{d:?}");
        }
    }

    #[test]
    fn random_delays_follow_the_schedule_and_reset_starts_over() {
        let mut b = Backoff::default();
        for attempt in 0..12 {
            let nominal = b.nominal(attempt);
            let d = b.next_delay();
            assert!(d >= nominal / 2 && d <= nominal, "attempt {attempt}: {d:?}");
        }
        b.reset();
        assert_eq!(b.attempt(), 0);
        let d = b.next_delay();
        assert!(d >= ms(250) && d <= ms(500), "{d:?}");
    }

    #[test]
    fn custom_bounds() {
        let b = Backoff::new(ms(100), ms(50));
        assert_eq!(b.nominal(0), ms(100));
        assert_eq!(b.nominal(5), ms(100));
        let b = Backoff::new(ms(100), ms(1_000));
        assert_eq!(b.nominal(3), ms(800));
        assert_eq!(b.nominal(4), ms(1_000));
    }
}
