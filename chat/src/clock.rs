//! Wall clock used for timestamps, throttling and offer expiry.
//!
//! Production uses the system clock. Tests use a manual clock they advance explicitly, so
//! throttling and expiry are tested without sleeping.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;

/// A source of "now".
#[derive(Debug, Clone, Default)]
pub struct Clock {
    manual: Option<Arc<AtomicI64>>,
}

impl Clock {
    /// The system clock.
    pub fn system() -> Clock {
        Clock { manual: None }
    }

    /// A clock that starts at the current time and only moves by [`Clock::advance`].
    pub fn manual() -> Clock {
        let now = OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000;
        Clock {
            manual: Some(Arc::new(AtomicI64::new(now as i64))),
        }
    }

    /// Moves a manual clock forward (no effect on the system clock).
    pub fn advance(&self, by: Duration) {
        if let Some(m) = &self.manual {
            m.fetch_add(by.as_micros() as i64, Ordering::SeqCst);
        }
    }

    /// Current UTC time.
    pub fn now(&self) -> OffsetDateTime {
        match &self.manual {
            None => OffsetDateTime::now_utc(),
            Some(m) => {
                let micros = m.load(Ordering::SeqCst) as i128;
                OffsetDateTime::from_unix_timestamp_nanos(micros * 1_000)
                    .unwrap_or(OffsetDateTime::UNIX_EPOCH)
            }
        }
    }

    /// Current time in microseconds since the epoch (for ordering and arithmetic).
    pub fn now_micros(&self) -> i64 {
        (self.now().unix_timestamp_nanos() / 1_000) as i64
    }
}

/// Epoch microseconds as a date-time.
pub(crate) fn datetime(micros: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(micros as i128 * 1_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}
