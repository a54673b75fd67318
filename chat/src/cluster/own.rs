//! This node's own batches, as its reader needs them (review LOW 12). The reader skips the
//! items its own node committed: the sessions here pushed them when their batch was
//! answered. A batch answered "commit outcome unknown" was pushed by nobody, yet may have
//! committed: the commit writer hands its items over when it settles
//! (`db::commit::CommitHook::settled`), and the reader pushes those it then finds stored,
//! once. An own item above what the settled batches stored, read while a batch is running,
//! may be that batch's: it waits until the batch is settled (at most one batch's items: the
//! writer runs one batch at a time).

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
    pub(crate) fn settled(&self, heads: Positions, in_doubt: Vec<(usize, i64)>) {
        let wake = !in_doubt.is_empty();
        {
            let mut s = self.state();
            s.running = false;
            s.settled += 1;
            s.settled_heads.raise(&heads);
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
        if s.in_doubt.remove(&(item.stream as usize, item.seq)) {
            return true;
        }
        if s.running && item.seq > s.settled_heads.0[item.stream as usize] {
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
        if !s.running {
            s.in_doubt.retain(|(stream, seq)| *seq > passed.0[*stream]);
        }
        push
    }
}
