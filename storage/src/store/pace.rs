//! Pacing an upload to the downloads that follow it. A follower that keeps within the recent
//! window takes the writer's own buffers; one that falls out of it reads every later byte back
//! from the file, which on a busy machine costs the relay about as much CPU again as the
//! upload itself, and slows the follower further (measured: BENCHMARKS.md, tenth session). So
//! a writer more than [`PACE_LAG`] ahead of its slowest follower in the window waits for it,
//! within bounds: waiting time is credited at a third of the time the writer spends not
//! waiting, at most [`PACE_BURST`] held (a sender is slowed by at most a third, and never held
//! for long), and a follower that has not moved for [`PACE_STALL`] (across wake-ups by other
//! followers) is not waited for again (a download that stalls, or a client that stopped
//! reading).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::live::LiveUpload;

/// How far a writer may run ahead of its slowest follower before it waits (half the recent
/// window, so a follower this far behind still finds the bytes in memory).
pub(super) const PACE_LAG: u64 = 2 << 20;
/// A follower that has not moved for this long is left behind.
const PACE_STALL: Duration = Duration::from_millis(100);
/// Waiting is credited at 1 / `PACE_SHARE` of the writer's time not spent waiting...
const PACE_SHARE: u32 = 3;
/// ...and at most this much credit is held (the longest a writer is held at a stretch).
const PACE_BURST: Duration = Duration::from_secs(1);

/// A reader following an upload: where it reads next.
#[derive(Debug)]
pub(super) struct Follower {
    pos: AtomicU64,
    /// The writer gave up waiting for it.
    left_behind: AtomicBool,
}

/// The followers of one live upload (one writer at a time paces itself to them).
#[derive(Default)]
pub(super) struct Followers {
    list: Mutex<Vec<Weak<Follower>>>,
    moved: Notify,
    writer_waiting: AtomicBool,
}

/// Clears the writer's waiting flag however the wait ends (a dropped `append` too).
struct Waiting<'a>(&'a AtomicBool);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

impl Followers {
    fn list(&self) -> std::sync::MutexGuard<'_, Vec<Weak<Follower>>> {
        self.list.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new follower reading from `pos`; it leaves when the returned handle is dropped
    /// (then call [`Followers::wake`]; [`Following`] does both).
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
        self.wake();
    }

    /// Let a waiting writer look again (a follower moved or left).
    pub fn wake(&self) {
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

/// A reader's place among the followers of a live upload (with the upload, whose recent
/// chunks it takes). Dropping it leaves, and a writer waiting for it looks again at once.
pub(super) struct Following {
    pub live: Arc<LiveUpload>,
    me: Option<Arc<Follower>>,
}

impl Following {
    /// Follow `live` from `pos`.
    pub fn new(live: Arc<LiveUpload>, pos: u64) -> Following {
        let me = Some(live.followers.join(pos));
        Following { live, me }
    }

    /// This follower reads from `pos` now.
    pub fn moved(&self, pos: u64) {
        if let Some(me) = &self.me {
            self.live.followers.moved(me, pos);
        }
    }
}

impl Drop for Following {
    fn drop(&mut self) {
        // Gone from the list first, so the woken writer no longer sees it.
        drop(self.me.take());
        self.live.followers.wake();
    }
}

/// A writer's pacing account.
pub(super) struct Pacer {
    /// Waiting time the writer may still spend, and when it was last credited.
    credit: Duration,
    credited: Instant,
    /// The slowest follower seen last, at which position, since when.
    watched: Option<(Weak<Follower>, u64, Instant)>,
    waited: Duration,
}

impl Pacer {
    pub fn new() -> Pacer {
        Pacer {
            credit: Duration::ZERO,
            credited: Instant::now(),
            watched: None,
            waited: Duration::ZERO,
        }
    }

    /// Time spent waiting for followers so far.
    pub fn waited(&self) -> Duration {
        self.waited
    }

    fn refill(&mut self) {
        let now = Instant::now();
        self.credit = (self.credit + (now - self.credited) / PACE_SHARE).min(PACE_BURST);
        self.credited = now;
    }

    /// Since when `follower` has been at `pos` (now, if it moved or is another one).
    fn still_since(&mut self, follower: &Arc<Follower>, pos: u64) -> Instant {
        if let Some((w, at, since)) = &self.watched {
            if *at == pos && std::ptr::eq(w.as_ptr(), Arc::as_ptr(follower)) {
                return *since;
            }
        }
        let now = Instant::now();
        self.watched = Some((Arc::downgrade(follower), pos, now));
        now
    }

    /// With `written` bytes stored, wait (within the credit) until the slowest follower that
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
            let still = self.still_since(&slowest, pos).elapsed();
            if still >= PACE_STALL {
                slowest.left_behind.store(true, Ordering::Relaxed);
                self.watched = None;
                continue;
            }
            self.refill();
            if self.credit.is_zero() {
                return;
            }
            let step = self.credit.min(PACE_STALL - still);
            let waiting = Waiting(&followers.writer_waiting);
            waiting.0.store(true, Ordering::SeqCst);
            // A move stored before the flag was seen is read here; one after it notifies.
            if slowest.pos.load(Ordering::SeqCst) != pos {
                continue;
            }
            let began = Instant::now();
            let _ = tokio::time::timeout(step, followers.moved.notified()).await;
            drop(waiting);
            let spent = began.elapsed();
            self.waited += spent;
            // Time spent waiting earns no credit.
            self.credit = self.credit.saturating_sub(spent);
            self.credited = Instant::now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pacer whose writer has been running for `secs` without waiting.
    fn running_pacer(secs: u64) -> Pacer {
        let mut pacer = Pacer::new();
        pacer.credit = (Duration::from_secs(secs) / PACE_SHARE).min(PACE_BURST);
        pacer
    }

    #[tokio::test(start_paused = true)]
    async fn no_followers_no_wait() {
        let followers = Followers::default();
        let mut pacer = running_pacer(10);
        pacer.pace(&followers, 100 << 20, 0).await;
        assert_eq!(pacer.waited(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_follower_is_waited_for_once() {
        let followers = Followers::default();
        let f = followers.join(0);
        let mut pacer = running_pacer(10);
        pacer.pace(&followers, 8 << 20, 0).await;
        assert_eq!(pacer.waited(), PACE_STALL);
        assert!(f.left_behind.load(Ordering::SeqCst));
        // Left behind: the next batches do not wait for it.
        pacer.pace(&followers, 9 << 20, 0).await;
        assert_eq!(pacer.waited(), PACE_STALL);
    }

    #[tokio::test(start_paused = true)]
    async fn another_followers_moves_do_not_keep_a_stalled_one_waited_for() {
        let followers = Arc::new(Followers::default());
        let stalled = followers.join(0);
        // A second download close behind the writer, moving every 10 ms: each move wakes the
        // writer, which must still give up on the stalled one after PACE_STALL.
        let moving = followers.join(7 << 20);
        let mover = {
            let followers = followers.clone();
            tokio::spawn(async move {
                for i in 1..=50u64 {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    followers.moved(&moving, (7 << 20) + i);
                }
            })
        };
        let mut pacer = running_pacer(10);
        pacer.pace(&followers, 8 << 20, 0).await;
        assert!(stalled.left_behind.load(Ordering::SeqCst));
        assert_eq!(pacer.waited(), PACE_STALL);
        mover.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn stalls_are_counted_across_calls() {
        let followers = Followers::default();
        let f = followers.join(0);
        let mut pacer = Pacer::new();
        // No credit yet: 30 ms of writing gives 10 ms of waiting each time.
        for _ in 0..10 {
            tokio::time::advance(Duration::from_millis(30)).await;
            pacer.pace(&followers, 8 << 20, 0).await;
        }
        assert!(f.left_behind.load(Ordering::SeqCst));
        assert!(pacer.waited() <= Duration::from_millis(100));
    }

    #[tokio::test(start_paused = true)]
    async fn followers_out_of_the_window_or_close_are_not_waited_for() {
        let followers = Followers::default();
        let _far = followers.join(0);
        let _near = followers.join(7 << 20);
        let mut pacer = running_pacer(10);
        pacer.pace(&followers, 8 << 20, 4 << 20).await;
        assert_eq!(pacer.waited(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_is_credited_at_a_third_of_the_writers_time_and_at_most_a_burst() {
        let followers = Arc::new(Followers::default());
        let f = followers.join(0);
        // A follower that moves (a little) every 50 ms, never catching up: always waited for.
        let creeper = {
            let followers = followers.clone();
            tokio::spawn(async move {
                let mut pos = 0;
                loop {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    pos += 1;
                    followers.moved(&f, pos);
                }
            })
        };
        let mut pacer = Pacer::new();
        tokio::time::advance(Duration::from_millis(90)).await;
        pacer.pace(&followers, 8 << 20, 0).await;
        // 90 ms of writing: 30 ms of waiting (the waits earn nothing).
        assert_eq!(pacer.waited(), Duration::from_millis(30));
        // An hour of writing without waiting: at most a burst's worth of credit.
        tokio::time::advance(Duration::from_secs(3600)).await;
        // Let the creeper take its due step (it moved within the hour, so it is not stalled).
        for _ in 0..4 {
            tokio::task::yield_now().await;
        }
        pacer.pace(&followers, 8 << 20, 0).await;
        assert_eq!(pacer.waited(), Duration::from_millis(30) + PACE_BURST);
        creeper.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_follower_that_catches_up_releases_the_writer() {
        let followers = Arc::new(Followers::default());
        let f = followers.join(0);
        let reader = {
            let followers = followers.clone();
            tokio::spawn(async move {
                let mut pos = 0;
                while pos < 6 << 20 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    pos += 64 << 10;
                    followers.moved(&f, pos);
                }
                f
            })
        };
        let mut pacer = running_pacer(30);
        pacer.pace(&followers, 8 << 20, 0).await;
        // Released when the follower came within PACE_LAG (6 MiB at 64 KiB a millisecond).
        assert_eq!(pacer.waited(), Duration::from_millis(96));
        let f = reader.await.expect("reader");
        assert!(!f.left_behind.load(Ordering::SeqCst));
    }

    #[tokio::test(start_paused = true)]
    async fn a_follower_leaving_releases_the_writer_at_once() {
        let followers = Arc::new(Followers::default());
        let f = followers.join(0);
        let leaver = {
            let followers = followers.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                drop(f);
                followers.wake();
            })
        };
        let mut pacer = running_pacer(30);
        pacer.pace(&followers, 8 << 20, 0).await;
        assert_eq!(pacer.waited(), Duration::from_millis(20));
        leaver.await.expect("leaver");
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_wait_clears_the_writers_flag() {
        let followers = Followers::default();
        let _f = followers.join(0);
        let mut pacer = running_pacer(30);
        let wait = pacer.pace(&followers, 8 << 20, 0);
        let _ = tokio::time::timeout(Duration::from_millis(10), wait).await;
        assert!(!followers.writer_waiting.load(Ordering::SeqCst));
    }
}
