//! This node's own batches, as its reader needs them (review LOW 12). The reader skips the
//! items its own node committed: the sessions here pushed them when their batch was
//! answered. A batch answered "commit outcome unknown" was pushed by nobody, yet may have
//! committed: the commit writer hands its items over when it settles
//! (`db::commit::CommitHook::settled`), and the reader pushes those it then finds stored,
//! once. An own item above what the settled batches stored, read while a batch is running,
//! may be that batch's: it waits until the batch is settled (at most one batch's items: the
//! writer runs one batch at a time).
//!
//! Items in doubt are known by (stream, sequence number). After a failover to a standby that
//! lost a batch in doubt with its sequence numbers' advance, this node's next batch can reuse
//! them (review LOW 6a): a batch that stored items settles with the lowest number it stored
//! per stream, and the items in doubt at or above it are forgotten (a batch that committed
//! before it, in doubt or not, took lower numbers: batches commit one at a time, in number
//! order). An own item read while a batch runs waits for that batch to settle even when it
//! is in doubt, so that batch's answer is known before the item is pushed.

use super::fanout::{FeedItem, Positions};
use std::collections::HashSet;
use std::sync::Mutex;
use tokio::sync::Notify;
use tracing::warn;

/// Most items of batches in doubt remembered (the reader forgets those it has passed).
const IN_DOUBT_MAX: usize = 65_536;
/// Most own items waiting for their batch to settle.
const WAITING_MAX: usize = 16_384;

#[derive(Debug, Default)]
struct State {
    /// A batch is being applied.
    running: bool,
    /// Batches settled so far.
    settled: u64,
    /// The highest item the settled batches stored (or may have), per stream.
    settled_heads: Positions,
    /// (stream, seq) of items of batches in doubt not yet read.
    in_doubt: HashSet<(usize, i64)>,
    /// Own items read while the batch numbered `.0` (settled count then) ran.
    waiting: Vec<(u64, FeedItem)>,
}

/// This node's own batches: what the commit writer tells, what the reader asks.
#[derive(Debug, Default)]
pub(crate) struct OwnBatches {
    state: Mutex<State>,
    /// Wakes the reader when a batch in doubt settled.
    pub(super) in_doubt_settled: Notify,
}

impl OwnBatches {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The writer starts a batch.
    pub(crate) fn started(&self) {
        self.state().running = true;
    }

    /// The writer's batch is settled, having stored up to `heads`; `in_doubt`: its items if
    /// its outcome is unknown.
    /// `lows`: the lowest item it stored per stream (0: none), if it committed.
    pub(crate) fn settled(&self, heads: Positions, lows: Positions, in_doubt: Vec<(usize, i64)>) {
        let mut wake = !in_doubt.is_empty();
        {
            let mut s = self.state();
            // Items held for this batch are pushed (or dropped) at once, not at the next tick.
            wake |= !s.waiting.is_empty();
            s.running = false;
            s.settled += 1;
            s.settled_heads.raise(&heads);
            if !s.in_doubt.is_empty() && lows.0.iter().any(|l| *l > 0) {
                s.in_doubt
                    .retain(|(stream, seq)| lows.0[*stream] == 0 || *seq < lows.0[*stream]);
            }
            let room = IN_DOUBT_MAX.saturating_sub(s.in_doubt.len());
            if in_doubt.len() > room {
                warn!(
                    items = in_doubt.len() - room,
                    "cluster: too many items in doubt: some will not be pushed live"
                );
            }
            s.in_doubt.extend(in_doubt.into_iter().take(room));
        }
        if wake {
            self.in_doubt_settled.notify_one();
        }
    }

    /// Whether the reader pushes `item`, its own node's, just read: yes if its batch was in
    /// doubt. Kept for later if it may be the running batch's.
    pub(super) fn push_own(&self, item: &FeedItem) -> bool {
        let mut s = self.state();
        let key = (item.stream as usize, item.seq);
        if !s.running && s.in_doubt.remove(&key) {
            return true;
        }
        if s.running
            && (item.seq > s.settled_heads.0[item.stream as usize] || s.in_doubt.contains(&key))
        {
            if s.waiting.len() < WAITING_MAX {
                let batch = s.settled;
                s.waiting.push((batch, item.clone()));
            } else {
                warn!("cluster: too many own items waiting: one will not be pushed live");
            }
        }
        false
    }

    /// The waiting items whose batch has settled in doubt (to push); the others whose batch
    /// settled are dropped (pushed by their sessions). Then forgets the items in doubt the
    /// reader has passed without finding them (their batch did not commit).
    pub(super) fn settled_items(&self, passed: &Positions) -> Vec<FeedItem> {
        let mut s = self.state();
        let settled = s.settled;
        let waiting = std::mem::take(&mut s.waiting);
        let mut push = Vec::new();
        for (batch, item) in waiting {
            if batch >= settled {
                s.waiting.push((batch, item));
            } else if s.in_doubt.remove(&(item.stream as usize, item.seq)) {
                push.push(item);
            }
        }
        // Also while a batch runs (under sustained writes the writer is nearly always busy,
        // and these piled up to the cap): no lower number appears late. Not those waiting.
        if !s.in_doubt.is_empty() {
            let held: HashSet<(usize, i64)> = s
                .waiting
                .iter()
                .map(|(_, item)| (item.stream as usize, item.seq))
                .collect();
            s.in_doubt
                .retain(|key| key.1 > passed.0[key.0] || held.contains(key));
        }
        push
    }
}

#[cfg(test)]
impl OwnBatches {
    /// How many items in doubt are remembered.
    pub(super) fn in_doubt_len(&self) -> usize {
        self.state().in_doubt.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sustained writes: every batch settles in doubt without having committed (its numbers
    /// are taken by later batches) and the reader, passing them, finds the next batch always
    /// running. The items in doubt stay few; before, they were forgotten only between batches
    /// and piled up to the cap (review LOW 6b), after which none was pushed live.
    #[test]
    fn items_in_doubt_passed_are_forgotten_while_batches_run() {
        let own = OwnBatches::default();
        let mut seq = 0;
        for _ in 0..(IN_DOUBT_MAX / 10) {
            own.started();
            let items: Vec<(usize, i64)> = (1..=20).map(|i| (0, seq + i)).collect();
            seq += 20;
            own.settled(Positions([seq, 0, 0, 0]), Positions::default(), items);
            own.started();
            assert!(own.settled_items(&Positions([seq, 0, 0, 0])).is_empty());
        }
        assert_eq!(own.in_doubt_len(), 0);
    }

    fn item(seq: i64) -> FeedItem {
        FeedItem {
            stream: crate::hub::Stream::Messages,
            seq,
            origin: 1,
            login: "bob".to_owned(),
            bytes: bytes::Bytes::from_static(b"MESSAGE\n"),
        }
    }

    /// A batch in doubt lost in a failover with its numbers: the next batch, answered,
    /// stores items under the same numbers. The reader must not push them (their sessions
    /// did), whether it reads them while that batch runs or after (review LOW 6a).
    #[test]
    fn an_answered_batch_reusing_the_numbers_of_one_in_doubt_is_not_pushed() {
        for read_while_running in [true, false] {
            let own = OwnBatches::default();
            own.started();
            own.settled(
                Positions([12, 0, 0, 0]),
                Positions::default(),
                vec![(0, 11), (0, 12)],
            );
            own.started();
            if read_while_running {
                assert!(!own.push_own(&item(11)));
                assert!(!own.push_own(&item(12)));
            }
            own.settled(
                Positions([12, 0, 0, 0]),
                Positions([11, 0, 0, 0]),
                Vec::new(),
            );
            if !read_while_running {
                assert!(!own.push_own(&item(11)));
                assert!(!own.push_own(&item(12)));
            }
            assert!(own.settled_items(&Positions([12, 0, 0, 0])).is_empty());
            assert_eq!(own.in_doubt_len(), 0);
        }
        // Legitimate: a batch in doubt that committed, read while the next (answered) one
        // runs, is pushed once that one settles.
        let own = OwnBatches::default();
        own.started();
        own.settled(
            Positions([12, 0, 0, 0]),
            Positions::default(),
            vec![(0, 11), (0, 12)],
        );
        own.started();
        assert!(!own.push_own(&item(11)));
        assert!(!own.push_own(&item(12)));
        own.settled(
            Positions([14, 0, 0, 0]),
            Positions([13, 0, 0, 0]),
            Vec::new(),
        );
        let pushed: Vec<i64> = own
            .settled_items(&Positions([12, 0, 0, 0]))
            .iter()
            .map(|i| i.seq)
            .collect();
        assert_eq!(pushed, vec![11, 12]);
        assert_eq!(own.in_doubt_len(), 0);
    }
}
