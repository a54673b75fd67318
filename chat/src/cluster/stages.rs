//! Timing of the cross-node path, stage by stage (debug log, target
//! `msim_chat::cluster::stages`): the committing node stamps its positions notice with the
//! commit's wall-clock time (an optional last field of `p`, ignored by nodes that do not read
//! it), and the reading node reports, per read that a notice started, how long the notice took
//! to arrive, how long it waited for the reader, and the read's and the push's times.
//! Nodes of one cluster on different machines compare clocks here: only `heard_us` depends on
//! them, and it is a diagnostic, never used for a decision.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Microseconds since the Unix epoch (0 if the clock is before it).
pub(super) fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros().min(u64::MAX as u128) as u64)
        .unwrap_or(0)
}

/// The oldest positions notice not yet read: when it was committed (its sender's stamp, if
/// any) and when this node's listener heard it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Heard {
    pub(super) committed_us: Option<u64>,
    pub(super) at: Instant,
    pub(super) at_us: u64,
}

impl Heard {
    /// Heard now; `committed_us` from the notice.
    pub(super) fn now(committed_us: Option<u64>) -> Heard {
        Heard {
            committed_us,
            at: Instant::now(),
            at_us: unix_us(),
        }
    }

    /// From the sender's commit to this node hearing the notice (µs; `None` without a stamp).
    pub(super) fn transit_us(&self) -> Option<u64> {
        self.committed_us.map(|c| self.at_us.saturating_sub(c))
    }
}

/// Microseconds since `t`.
pub(super) fn since_us(t: Instant) -> u64 {
    t.elapsed().as_micros().min(u64::MAX as u128) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transit_needs_a_stamp() {
        let h = Heard::now(None);
        assert_eq!(h.transit_us(), None);
        let h = Heard::now(Some(h.at_us.saturating_sub(1500)));
        assert!(h.transit_us().is_some_and(|t| t >= 1500));
    }
}
