//! Connection slots that slow clients cannot keep: when all are taken, a new connection takes
//! the slot of the connection that has gone longest without a request in progress (an
//! unfinished request head, an idle keep-alive connection whose last window was not above the
//! minimum rate, a download waiting for upload data that has not arrived, or a request moving
//! fewer than the minimum bytes per window, judged across request boundaries), which is
//! closed. Connections with a request in progress at a good rate keep their slots; when all
//! have one, a new connection gets one of [`HEALTH_SLOTS`] reserved slots, on which `/healthz`
//! (and `/metrics`) are answered at once while any other request waits for a transfer slot
//! (looking again as windows pass), so health checks answer even when every transfer slot is
//! taken.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};
use tokio_util::sync::CancellationToken;

type Open = Arc<Mutex<HashMap<u64, Arc<Conn>>>>;

/// Slots kept for health checks when every transfer slot is taken (a new connection that
/// finds them all taken too takes the one of the longest idle among them).
pub const HEALTH_SLOTS: usize = 4;

/// All connection slots of a listener.
pub struct Slots {
    free: Arc<Semaphore>,
    /// The [`HEALTH_SLOTS`].
    health: Arc<Semaphore>,
    open: Open,
    next_id: AtomicU64,
    min_rate: MinRate,
}

/// The least traffic (bytes read plus written) a connection with a request in progress must
/// move per window to keep its slot when slots are short; `bytes == 0` turns the check off.
#[derive(Debug, Clone, Copy)]
pub struct MinRate {
    /// Bytes per window.
    pub bytes: u64,
    /// The window.
    pub window: Duration,
}

/// Samples of a connection's traffic counter, taken every quarter window (by the slots'
/// ticker, and whenever the connection is judged) since the window was last restarted (the
/// connection opened, a request started after a window or more of idleness, a wait for upload
/// data started or ended; not at every request): a judgement compares the
/// counter with the newest sample at least a window old, so only the last window counts, not
/// everything since the state changed. The last verdict holds until a new one can be made, so
/// a connection judged slow stays evictable even when another was evicted in its place.
struct RateWindow {
    /// Oldest first; at most one is a window old or older (older ones say nothing new).
    samples: VecDeque<(Instant, u64)>,
    /// Whether the last full window judged was below the minimum; `None` until a window has
    /// passed since the last restart.
    slow: Option<bool>,
}

impl RateWindow {
    fn starting(now: Instant, traffic: u64) -> RateWindow {
        RateWindow {
            samples: VecDeque::from([(now, traffic)]),
            slow: None,
        }
    }

    /// Add a sample if the newest is a quarter window old, and forget those that are older
    /// than the newest one at least a window old.
    fn sample(&mut self, now: Instant, traffic: u64, window: Duration) {
        let due = self
            .samples
            .back()
            .is_none_or(|(at, _)| now.saturating_duration_since(*at) >= window / 4);
        if due {
            self.samples.push_back((now, traffic));
        }
        while self
            .samples
            .get(1)
            .is_some_and(|(at, _)| now.saturating_duration_since(*at) >= window)
        {
            self.samples.pop_front();
        }
    }
}

/// What the slot registry knows about one connection.
pub struct Conn {
    /// Requests in progress; a response counts until its body has been sent.
    busy: AtomicUsize,
    /// Of those, requests waiting for an upload's data (not sending anything): they do not
    /// protect the connection from eviction (a waiting download is resumed with `Range`).
    waiting: AtomicUsize,
    /// When the connection last had no request in progress (or opened).
    idle_since: Mutex<Instant>,
    /// Cancelled when a new connection takes this one's slot.
    evicted: CancellationToken,
    /// Bytes read from and written to the socket (counted by the connection's I/O).
    traffic: Arc<AtomicU64>,
    window: Mutex<RateWindow>,
    /// The slot's permit: a transfer slot's, or a health slot's until [`Slots::upgrade`].
    permit: Mutex<Option<OwnedSemaphorePermit>>,
    /// On a health slot: only `/healthz` and `/metrics` are served before an upgrade.
    health_only: AtomicBool,
    /// The minimum rate's window (see [`Conn::request`]).
    rate_window: Duration,
}

/// A taken slot; freed when dropped.
pub struct Slot {
    id: u64,
    open: Open,
    /// This connection's state.
    pub conn: Arc<Conn>,
}

/// The connection a request arrived on (a request extension), for [`Conn::waiting`].
#[derive(Clone)]
pub struct ConnOf(pub Arc<Conn>);

/// The client's address as the per-address cap counts it (IPv6 by its /64), a request
/// extension.
#[derive(Clone, Copy)]
pub struct PeerOf(pub std::net::IpAddr);

/// Marks a request in progress on its connection until dropped.
pub struct Busy(Arc<Conn>);

/// Marks a request as waiting for upload data until dropped (see [`Conn::waiting`]).
pub struct Waiting(Arc<Conn>);

impl Slots {
    /// `n` slots (at least 1). With a minimum rate, a task samples every connection's
    /// traffic each quarter window while the slots exist (needs a Tokio runtime).
    pub fn new(n: usize, min_rate: MinRate) -> Slots {
        let open: Open = Arc::default();
        if min_rate.bytes > 0 {
            tokio::spawn(sample_every_quarter_window(
                Arc::downgrade(&open),
                min_rate.window,
            ));
        }
        Slots {
            free: Arc::new(Semaphore::new(n.max(1))),
            health: Arc::new(Semaphore::new(HEALTH_SLOTS)),
            open,
            next_id: AtomicU64::new(0),
            min_rate,
        }
    }

    /// A slot for a new connection: a free one, else the slot of the connection that has
    /// been without a request longest (that connection is closed; `true` is returned with
    /// the slot), else wait until a connection ends or one falls below the minimum rate.
    /// `None` only if the slots were closed (they are not).
    pub async fn acquire(&self) -> Option<(Slot, bool)> {
        let (permit, evicted, health_only) = match self.free.clone().try_acquire_owned() {
            Ok(p) => (p, false, false),
            Err(TryAcquireError::NoPermits | TryAcquireError::Closed) => {
                if self.evict_longest_idle(false) {
                    let p = self.free.clone().acquire_owned().await.ok()?;
                    (p, true, false)
                } else if let Ok(p) = self.health.clone().try_acquire_owned() {
                    (p, false, true)
                } else if self.evict_longest_idle(true) {
                    let p = self.health.clone().acquire_owned().await.ok()?;
                    (p, true, true)
                } else {
                    // Every health slot has a request in progress (answered at once).
                    tokio::select! {
                        p = self.transfer_permit() => {
                            let (p, evicted) = p?;
                            (p, evicted, false)
                        }
                        p = self.health.clone().acquire_owned() => (p.ok()?, false, true),
                    }
                }
            }
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let conn = Arc::new(Conn {
            busy: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            idle_since: Mutex::new(now),
            evicted: CancellationToken::new(),
            traffic: Arc::default(),
            window: Mutex::new(RateWindow::starting(now, 0)),
            permit: Mutex::new(Some(permit)),
            health_only: AtomicBool::new(health_only),
            rate_window: self.min_rate.window,
        });
        lock(&self.open).insert(id, conn.clone());
        let slot = Slot {
            id,
            open: self.open.clone(),
            conn,
        };
        Some((slot, evicted))
    }

    /// A transfer slot's permit: a free one, else that of a connection closed for it, else
    /// wait for one (looking again for a connection to close a few times per window).
    /// `None` only if the slots were closed (they are not).
    async fn transfer_permit(&self) -> Option<(OwnedSemaphorePermit, bool)> {
        if let Ok(p) = self.free.clone().try_acquire_owned() {
            return Some((p, false));
        }
        let mut evicted = self.evict_longest_idle(false);
        // A connection busy now may fall below the minimum rate later: look again a few
        // times per window while waiting.
        let recheck = (self.min_rate.window / 4).max(Duration::from_millis(10));
        loop {
            tokio::select! {
                p = self.free.clone().acquire_owned() => return Some((p.ok()?, evicted)),
                () = tokio::time::sleep(recheck), if !evicted && self.min_rate.bytes > 0 => {
                    evicted = self.evict_longest_idle(false);
                }
            }
        }
    }

    /// Move `conn` from its health slot to a transfer slot (waiting for one as a new
    /// connection would), before it serves anything but a health check; `true` when a
    /// connection was closed for it.
    pub async fn upgrade(&self, conn: &Conn) -> bool {
        if !conn.health_only.load(Ordering::SeqCst) {
            return false;
        }
        let Some((permit, evicted)) = self.transfer_permit().await else {
            return false;
        };
        // The health slot's permit is dropped here: free for the next health check.
        *lock(&conn.permit) = Some(permit);
        conn.health_only.store(false, Ordering::SeqCst);
        evicted
    }

    /// Close the connection, among those on transfer slots (or on health slots), that has
    /// gone longest without a request in progress (other than one waiting for upload data,
    /// or one below the minimum rate); `false` when every such connection has one.
    fn evict_longest_idle(&self, on_health_slots: bool) -> bool {
        let open = lock(&self.open);
        let now = Instant::now();
        let victim = open
            .values()
            .filter(|c| c.health_only.load(Ordering::SeqCst) == on_health_slots)
            .filter(|c| c.evictable(self.min_rate, now) && !c.evicted.is_cancelled())
            .min_by_key(|c| *lock(&c.idle_since));
        match victim {
            Some(c) => {
                c.evicted.cancel();
                true
            }
            None => false,
        }
    }
}

/// Sample the traffic of every open connection each quarter `window`, until the slots are
/// dropped, so a judgement always finds a sample about a window old.
async fn sample_every_quarter_window(
    open: std::sync::Weak<Mutex<HashMap<u64, Arc<Conn>>>>,
    window: Duration,
) {
    let mut tick = tokio::time::interval((window / 4).max(Duration::from_millis(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(open) = open.upgrade() else { return };
        let conns: Vec<Arc<Conn>> = lock(&open).values().cloned().collect();
        drop(open);
        let now = Instant::now();
        for c in conns {
            c.sample(window, now);
        }
    }
}

impl Conn {
    /// Whether the connection is on a health slot (see [`Slots::upgrade`]).
    pub fn health_only(&self) -> bool {
        self.health_only.load(Ordering::SeqCst)
    }

    /// A request starts on this connection. The rate window goes on across requests, so
    /// short requests one after another cannot keep a window from ever completing (one byte
    /// per `PATCH`, just before each window ends). Only a connection that has been idle for a
    /// whole window starts afresh: it was evictable all that time, and its pause should not
    /// condemn the request it starts now.
    pub fn request(self: &Arc<Self>) -> Busy {
        let idle_for = Instant::now().saturating_duration_since(*lock(&self.idle_since));
        if self.busy.load(Ordering::SeqCst) == 0 && idle_for >= self.rate_window {
            self.restart_window();
        }
        self.busy.fetch_add(1, Ordering::SeqCst);
        Busy(self.clone())
    }

    /// The counter the connection's I/O adds its bytes to.
    pub fn traffic(&self) -> Arc<AtomicU64> {
        self.traffic.clone()
    }

    /// Measure the rate from now on (a change of state: the previous window says nothing
    /// about the new one).
    fn restart_window(&self) {
        *lock(&self.window) =
            RateWindow::starting(Instant::now(), self.traffic.load(Ordering::SeqCst));
    }

    /// Take a sample of the traffic counter (see [`RateWindow`]).
    fn sample(&self, window: Duration, now: Instant) {
        let traffic = self.traffic.load(Ordering::SeqCst);
        lock(&self.window).sample(now, traffic, window);
    }

    /// A request in progress moved less than `min.bytes` per `min.window` over the last
    /// window (measured from the newest sample at least a window old, so between one and
    /// one and a quarter windows): a fast start cannot cover a later trickle, nor a slow start
    /// condemn a request that is fast now. Before a window has passed since the last change
    /// of state, the last verdict holds.
    fn too_slow(&self, min: MinRate, now: Instant) -> bool {
        min.bytes > 0 && self.verdict(min, now).unwrap_or(false)
    }

    /// The last window's verdict (`Some(true)`: below the minimum), made now if a window has
    /// passed; `None` if none was made since the window was last restarted.
    fn verdict(&self, min: MinRate, now: Instant) -> Option<bool> {
        let traffic = self.traffic.load(Ordering::SeqCst);
        let mut w = lock(&self.window);
        w.sample(now, traffic, min.window);
        let Some(&(from, bytes_then)) = w
            .samples
            .front()
            .filter(|(at, _)| now.saturating_duration_since(*at) >= min.window)
        else {
            return w.slow;
        };
        let elapsed = now.saturating_duration_since(from);
        let moved = traffic.saturating_sub(bytes_then);
        // moved / elapsed < bytes / window, without division.
        let slow =
            u128::from(moved) * min.window.as_nanos() < u128::from(min.bytes) * elapsed.as_nanos();
        w.slow = Some(slow);
        w.slow
    }

    /// A request on this connection waits for upload data that has not arrived: until the
    /// mark is dropped the connection may be evicted as if idle (idle from now on).
    pub fn waiting(self: &Arc<Self>) -> Waiting {
        self.restart_window();
        *lock(&self.idle_since) = Instant::now();
        self.waiting.fetch_add(1, Ordering::SeqCst);
        Waiting(self.clone())
    }

    /// Requests in progress below the minimum rate, or none in progress (other than ones
    /// waiting for upload data) unless the last full window was judged above the minimum:
    /// a keep-alive connection between two requests of a fast client keeps its slot, but only
    /// until its last window (idle time counting as no traffic) falls below the minimum; a
    /// new connection, or one not yet judged since it opened or started waiting, is evictable
    /// at once.
    fn evictable(&self, min: MinRate, now: Instant) -> bool {
        // `busy` first: a wait that ends between the two loads is seen as busy.
        let busy = self.busy.load(Ordering::SeqCst);
        if busy <= self.waiting.load(Ordering::SeqCst) {
            return min.bytes == 0 || self.verdict(min, now) != Some(false);
        }
        self.too_slow(min, now)
    }

    /// Completes when a new connection has taken this one's slot.
    pub async fn evicted(&self) {
        self.evicted.cancelled().await
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        // Idle from now on; the stamp is set before the count drops so an eviction never
        // sees a connection idle with an old stamp.
        *lock(&self.0.idle_since) = Instant::now();
        self.0.busy.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.restart_window();
        self.0.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        lock(&self.open).remove(&self.id);
        // The connection has ended: its slot is free even while requests hold `conn`.
        lock(&self.conn.permit).take();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFF: MinRate = MinRate {
        bytes: 0,
        window: Duration::from_secs(30),
    };

    #[tokio::test]
    async fn a_full_house_evicts_the_longest_idle_connection_never_a_busy_one() {
        let slots = Slots::new(2, OFF);
        let (a, evicted) = slots.acquire().await.expect("slot");
        assert!(!evicted);
        let (b, _) = slots.acquire().await.expect("slot");
        let busy = b.conn.request();
        // a (idle) gives way to c.
        let taking = tokio::spawn({
            let slots = Arc::new(slots);
            async move {
                let (c, evicted) = slots.acquire().await.expect("slot");
                (slots, c, evicted)
            }
        });
        a.conn.evicted().await;
        assert!(!b.conn.evicted.is_cancelled(), "busy connection kept");
        drop(a);
        let (slots, c, evicted) = taking.await.expect("task");
        assert!(evicted);
        // b busy, c idle: c goes next; once b's request ends, b is idle since later than c.
        drop(busy);
        assert!(slots.evict_longest_idle(false));
        assert!(c.conn.evicted.is_cancelled());
        assert!(!b.conn.evicted.is_cancelled());
    }

    #[tokio::test]
    async fn a_slow_request_stays_evictable_after_another_was_evicted_fast_ones_never() {
        let window = Duration::from_secs(10);
        let min = MinRate {
            bytes: 1000,
            window,
        };
        let slots = Slots::new(3, min);
        let (slow_a, _) = slots.acquire().await.expect("slot");
        let (slow_b, _) = slots.acquire().await.expect("slot");
        let (fast, _) = slots.acquire().await.expect("slot");
        let _busy = [&slow_a, &slow_b, &fast].map(|s| s.conn.request());
        let start = Instant::now();
        // The fast connection moves its bytes; the slow ones almost nothing.
        fast.conn.traffic().fetch_add(10_000, Ordering::SeqCst);
        slow_a.conn.traffic().fetch_add(10, Ordering::SeqCst);
        let early = start + window / 2;
        assert!(
            !slow_a.conn.evictable(min, early),
            "not judged before a full window"
        );
        let judged = start + window;
        // Judged as of one window later: both slow ones are evictable.
        let verdicts: Vec<bool> = [&slow_a, &slow_b, &fast]
            .iter()
            .map(|s| s.conn.evictable(min, judged))
            .collect();
        assert_eq!(verdicts, [true, true, false]);
        // The verdict holds within the next window (another connection was evicted first).
        let soon = judged + window / 2;
        assert!(slow_b.conn.evictable(min, soon));
        assert!(!fast.conn.evictable(min, soon));
    }
}
