//! Pacing an upload to the downloads that follow it. A follower that keeps within the recent
//! window takes the writer's own buffers; one that falls out of it reads every later byte back
//! from the file, which on a busy machine costs the relay about as much CPU again as the
//! upload itself, and slows the follower further (measured: BENCHMARKS.md, tenth session). So
//! a writer more than [`PACE_LAG`] ahead of its slowest follower in the window waits for it,
//! but only so long: at most a third of the writer's time in all (a sender is never slowed by
//! more than half again), and a follower that does not move for [`PACE_STEP`] is not waited
//! for again (a download that stalls, or a client that stopped reading).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::time::Instant;

use tokio::sync::Notify;

/// How far a writer may run ahead of its slowest follower before it waits (half the recent
/// window, so a follower this far behind still finds the bytes in memory).
pub(super) const PACE_LAG: u64 = 2 << 20;
/// Longest single wait; a follower that has not moved in that time is left behind.
const PACE_STEP: Duration = Duration::from_millis(100);
/// A writer waits at most 1 / `PACE_SHARE` of its time.
const PACE_SHARE: u32 = 3;

/// A reader following an upload: where it reads next.
#[derive(Debug)]
pub(super) struct Follower {
    pos: AtomicU64,
    /// The writer gave up waiting for it.
    left_behind: AtomicBool,
}

/// The followers of one live upload, for the writer's pacing.
#[derive(Default)]
pub(super) struct Followers {
    list: Mutex<Vec<Weak<Follower>>>,
    moved: Notify,
    writer_waiting: AtomicBool,
}

impl Followers {
    fn list(&self) -> std::sync::MutexGuard<'_, Vec<Weak<Follower>>> {
        self.list.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new follower reading from `pos`; it leaves when the returned handle is dropped.
    pub fn join(&self, pos: u64) -> Arc<Follower> {
        let follower = Arc::new(Follower {
            pos: AtomicU64::new(pos),
            left_behind: AtomicBool::new(false),
        });
        let mut list = self.list();
        list.retain(|w| w.strong_count() > 0);
        list.push(Arc::downgrade(&follower));
        follower
    }

    /// `follower` reads from `pos` now.
    pub fn moved(&self, follower: &Follower, pos: u64) {
        follower.pos.store(pos, Ordering::SeqCst);
        if self.writer_waiting.load(Ordering::SeqCst) {
            self.moved.notify_one();
        }
    }

    /// The slowest follower at or past `floor` that the writer still waits for.
    fn slowest(&self, floor: u64) -> Option<(Arc<Follower>, u64)> {
        let mut list = self.list();
        list.retain(|w| w.strong_count() > 0);
        list.iter()
            .filter_map(Weak::upgrade)
            .filter(|f| !f.left_behind.load(Ordering::Relaxed))
            .map(|f| {
                let pos = f.pos.load(Ordering::SeqCst);
                (f, pos)
            })
            .filter(|(_, pos)| *pos >= floor)
            .min_by_key(|(_, pos)| *pos)
    }
}

/// A writer's pacing account: how long it has existed and waited.
pub(super) struct Pacer {
    started: Instant,
    waited: Duration,
}

impl Pacer {
    pub fn new() -> Pacer {
        Pacer {
            started: Instant::now(),
            waited: Duration::ZERO,
        }
    }

    /// Time spent waiting for followers so far.
    pub fn waited(&self) -> Duration {
        self.waited
    }

    /// With `written` bytes stored, wait (within the budget) until the slowest follower that
    /// still reads from memory (at or past `window_start`) is at most [`PACE_LAG`] behind.
    /// Cancel-safe.
    pub async fn pace(&mut self, followers: &Followers, written: u64, window_start: u64) {
        loop {
            let Some((slowest, pos)) = followers.slowest(window_start) else {
                return;
            };
            if written.saturating_sub(pos) <= PACE_LAG {
                return;
            }
            let budget = (self.started.elapsed() / PACE_SHARE).saturating_sub(self.waited);
            if budget.is_zero() {
                return;
            }
            let step = budget.min(PACE_STEP);
            followers.writer_waiting.store(true, Ordering::SeqCst);
            // A move stored before the flag was seen is read here; one after it notifies.
            if written.saturating_sub(slowest.pos.load(Ordering::SeqCst)) <= PACE_LAG {
                followers.writer_waiting.store(false, Ordering::SeqCst);
                continue;
            }
            let began = Instant::now();
            let woken = tokio::time::timeout(step, followers.moved.notified())
                .await
                .is_ok();
            followers.writer_waiting.store(false, Ordering::SeqCst);
            self.waited += began.elapsed();
            if !woken && step == PACE_STEP && slowest.pos.load(Ordering::SeqCst) == pos {
                slowest.left_behind.store(true, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn no_followers_no_wait() {
        let followers = Followers::default();
        let mut pacer = Pacer::new();
        tokio::time::advance(Duration::from_secs(1)).await;
        pacer.pace(&followers, 100 << 20, 0).await;
        assert_eq!(pacer.waited(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_follower_is_waited_for_once() {
        let followers = Followers::default();
        let f = followers.join(0);
        let mut pacer = Pacer::new();
        tokio::time::advance(Duration::from_secs(10)).await;
        pacer.pace(&followers, 8 << 20, 0).await;
        assert_eq!(pacer.waited(), PACE_STEP);
        // Left behind: the next batches do not wait for it.
        pacer.pace(&followers, 9 << 20, 0).await;
        assert_eq!(pacer.waited(), PACE_STEP);
        drop(f);
    }

    #[tokio::test(start_paused = true)]
    async fn followers_out_of_the_window_or_close_are_not_waited_for() {
        let followers = Followers::default();
        let _far = followers.join(0);
        let _near = followers.join(7 << 20);
        let mut pacer = Pacer::new();
        tokio::time::advance(Duration::from_secs(10)).await;
        pacer.pace(&followers, 8 << 20, 4 << 20).await;
        assert_eq!(pacer.waited(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn the_budget_is_a_third_of_the_writers_time() {
        let followers = Followers::default();
        let f = followers.join(0);
        let mut pacer = Pacer::new();
        tokio::time::advance(Duration::from_millis(90)).await;
        pacer.pace(&followers, 8 << 20, 0).await;
        // Waits shorter than a step: the follower is not given up, the budget is spent.
        assert!(pacer.waited() * PACE_SHARE <= pacer.started.elapsed());
        assert!(pacer.waited() >= Duration::from_millis(40));
        assert!(!f.left_behind.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn a_follower_that_catches_up_releases_the_writer() {
        let followers = Arc::new(Followers::default());
        let f = followers.join(0);
        let mut pacer = Pacer::new();
        pacer.started = Instant::now()
            .checked_sub(Duration::from_secs(30))
            .expect("30 s after boot");
        let reader = {
            let followers = followers.clone();
            tokio::spawn(async move {
                let mut pos = 0;
                while pos < 6 << 20 {
                    pos += 64 << 10;
                    followers.moved(&f, pos);
                    tokio::task::yield_now().await;
                }
                f
            })
        };
        pacer.pace(&followers, 8 << 20, 0).await;
        let f = reader.await.expect("reader");
        assert!(8 << 20 <= f.pos.load(Ordering::SeqCst) + PACE_LAG);
        assert!(!f.left_behind.load(Ordering::SeqCst));
    }
}
