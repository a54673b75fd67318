//! `msim receive`'s downloads: several at once, each on its own. One transfer that fails
//! (a wrong hash, a cancelled or expired transfer) gets a failure line and the others go on;
//! one that makes no progress for [`NO_PROGRESS`] is given up, so a sender that stalls its
//! upload cannot hold the receiver. Transfers accepted by an earlier run that did not finish
//! are resumed from their download grant, which the server sends again at login.
//!
//! Fairness: at most [`MAX_PER_SENDER`] downloads per sender run at once, and a download that
//! moves too little while other offers wait is paused and queued behind them (round robin), so
//! senders that drip their uploads cannot hold the slots while honest files wait. Free slots
//! go in turns: one to the first offer in the queue (a paused download reaches the front, so
//! offers arriving after it cannot keep it waiting), the next to an offer whose sender has
//! nothing running or paused (however many paused drips wait, a new sender's file starts
//! within the next two starts). A download with every byte in that only waits for the
//! sender's hash holds no slot. A download paused
//! [`MAX_PAUSES`] times is given up for this run (each turn costs one of the grant's
//! downloads on the relay); its `.part` stays and the next `msim receive` resumes it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use futures::stream::{FuturesUnordered, StreamExt};
use msim::proto::{DownloadGrant, FileOffered};
use msim::{Client, HashWatch};

use super::files::{accept, download_one, hash_watch, staging_path};
use super::Ctx;
use crate::error::Interrupted;
use crate::output::json::FileLine;

/// Downloads at once; further accepted offers wait their turn.
pub const MAX_DOWNLOADS: usize = 4;

/// Downloads from one sender at once, so one account cannot take every slot.
pub const MAX_PER_SENDER: usize = 2;

/// A download that has received nothing for this long is given up (the relay itself cuts a
/// download waiting for upload data after its body idle time, 60 s by default, and the
/// download is resumed a few times before that).
pub const NO_PROGRESS: Duration = Duration::from_secs(180);

/// A download that moved less than [`SLOW_BYTES`] in [`SLOW_WINDOW`] while other offers wait
/// for a slot is paused (its `.part` and grant kept) and queued behind them: senders that drip
/// their uploads take turns with the others instead of holding the slots.
pub const SLOW_WINDOW: Duration = Duration::from_secs(30);
pub const SLOW_BYTES: u64 = 64 << 10;

/// Pauses after which a download is given up for this run: every turn is one more `GET`,
/// which the relay counts against the grant's downloads (64 for a one-to-one transfer), so
/// a file that keeps being paused stops well before it could exhaust them.
pub const MAX_PAUSES: u32 = 16;

/// The environment variables that change [`SLOW_WINDOW`] (milliseconds), [`SLOW_BYTES`] and
/// [`MAX_PAUSES`] (for tests, which cannot wait 30 s).
const SLOW_WINDOW_ENV: &str = "MSIM_RECEIVE_SLOW_WINDOW_MS";
const SLOW_BYTES_ENV: &str = "MSIM_RECEIVE_SLOW_BYTES";
const MAX_PAUSES_ENV: &str = "MSIM_RECEIVE_MAX_PAUSES";

/// How a download ended without an error.
pub enum Ended {
    /// Received, renamed and reported.
    Finished,
    /// Too slow while others waited: to go on later from its `.part`.
    Paused,
}

/// How one download is moving, and whether others wait for its slot.
#[derive(Clone)]
pub struct Pace {
    /// When it last moved, over all its turns.
    pub activity: Activity,
    /// Bytes it has (the most reported), and when its current turn started.
    done: Arc<AtomicU64>,
    turn_start: Arc<AtomicU64>,
    /// Times it was paused.
    pauses: Arc<AtomicU32>,
    others_wait: Arc<AtomicBool>,
    window: Duration,
    min_bytes: u64,
    /// Set once every byte is in (what is left is the wait for the sender's hash and the
    /// rename), and the download slots that frees.
    received_all: Arc<AtomicBool>,
    freed: Arc<FreedSlots>,
}

/// Downloads that have every byte and only wait for the sender's hash (up to 10 s): they
/// hold no download slot, so senders that never declare the hash of their files cannot keep
/// the slots with tiny files (attack 5).
#[derive(Default)]
struct FreedSlots {
    count: AtomicUsize,
    notify: tokio::sync::Notify,
}

impl Pace {
    /// Every byte is in: the slot is free for another download.
    pub fn received_all(&self) {
        if !self.received_all.swap(true, Ordering::Relaxed) {
            self.freed.count.fetch_add(1, Ordering::Relaxed);
            self.freed.notify.notify_one();
        }
    }

    /// The download ended (or was paused): a slot it freed is counted no more.
    fn ended(&self) {
        if self.received_all.swap(false, Ordering::Relaxed) {
            self.freed.count.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// The download has `done` bytes: whether that is more than before.
    pub fn moved_to(&self, done: u64) -> bool {
        self.done.fetch_max(done, Ordering::Relaxed) < done
    }

    /// A paused download starts again: one that moved in its last turn has not stalled while
    /// it waited in the queue (one that did not still is given up after [`NO_PROGRESS`]).
    fn new_turn(&self) {
        let done = self.done.load(Ordering::Relaxed);
        if self.turn_start.swap(done, Ordering::Relaxed) < done {
            self.activity.touch();
        }
    }

    /// Completes at the end of a window in which the download moved less than the minimum
    /// while offers waited for a slot.
    pub async fn too_slow_while_others_wait(&self) {
        let mut before = self.done.load(Ordering::Relaxed);
        loop {
            tokio::time::sleep(self.window).await;
            let now = self.done.load(Ordering::Relaxed);
            if now.saturating_sub(before) < self.min_bytes
                && self.others_wait.load(Ordering::Relaxed)
            {
                return;
            }
            before = now;
        }
    }
}

/// How a queued offer starts downloading.
enum Start {
    /// Accepted now.
    Accept,
    /// A grant of a transfer accepted by an earlier run.
    Resume(DownloadGrant),
    /// Paused by us: its grant and sender-hash watch kept.
    Paused(DownloadGrant, Option<HashWatch>, Pace),
}

type Job<'a> = Pin<
    Box<
        dyn Future<
                Output = (
                    FileOffered,
                    DownloadGrant,
                    Option<HashWatch>,
                    Pace,
                    Result<Ended>,
                ),
            > + 'a,
    >,
>;

/// The accepted offers of one `receive`: downloading, or waiting for their turn.
pub struct Jobs<'a> {
    running: FuturesUnordered<Job<'a>>,
    /// Accepted offers, grants of transfers accepted before (to resume) and paused
    /// downloads, in turn.
    queued: VecDeque<(FileOffered, Start)>,
    /// Transfers queued or downloading.
    known: HashSet<String>,
    /// Downloads running per sender.
    per_sender: HashMap<String, usize>,
    /// Whether a queued offer could start if a slot were free (read by the running ones).
    others_wait: Arc<AtomicBool>,
    /// Running downloads that only wait for the sender's hash.
    freed: Arc<FreedSlots>,
    window: Duration,
    min_bytes: u64,
    max_pauses: u32,
    failed: u64,
    /// Whether the next start goes to the first queued offer in turn (else to a sender with
    /// nothing running or paused): the two alternate.
    in_turn_next: bool,
}

impl Default for Jobs<'_> {
    fn default() -> Self {
        let env = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
        Jobs {
            running: FuturesUnordered::new(),
            queued: VecDeque::new(),
            known: HashSet::new(),
            per_sender: HashMap::new(),
            others_wait: Arc::default(),
            freed: Arc::default(),
            window: env(SLOW_WINDOW_ENV)
                .map(Duration::from_millis)
                .filter(|w| !w.is_zero())
                .unwrap_or(SLOW_WINDOW),
            min_bytes: env(SLOW_BYTES_ENV).unwrap_or(SLOW_BYTES),
            max_pauses: env(MAX_PAUSES_ENV)
                .and_then(|n| u32::try_from(n).ok())
                .filter(|n| *n > 0)
                .unwrap_or(MAX_PAUSES),
            failed: 0,
            in_turn_next: false,
        }
    }
}

impl<'a> Jobs<'a> {
    /// `offer` was accepted by the user: it downloads when there is room.
    pub fn queue(&mut self, offer: FileOffered) {
        if self.known.insert(offer.transfer_id.clone()) {
            self.queued.push_back((offer, Start::Accept));
        }
    }

    /// A download grant pushed without our asking (at login, for an offer accepted before):
    /// resumed when an earlier run left its partial download in `out`, else ignored (a
    /// transfer finished before, or one another device of the user accepted).
    pub fn resume(&mut self, grant: DownloadGrant, out: &Path) {
        let mut part = staging_path(out, &grant.transfer_id).into_os_string();
        part.push(".part");
        if !Path::new(&part).exists() || !self.known.insert(grant.transfer_id.clone()) {
            return;
        }
        let offer = FileOffered {
            transfer_id: grant.transfer_id.clone(),
            from: grant.from.clone(),
            filename: grant.filename.clone(),
            size: grant.size,
            expires: grant.expires,
            sha256: grant.sha256.clone(),
            mime: grant.mime.clone(),
        };
        self.queued.push_back((offer, Start::Resume(grant)));
    }

    /// Nothing downloading or waiting.
    pub fn is_idle(&self) -> bool {
        self.running.is_empty() && self.queued.is_empty()
    }

    /// Whether `sender` may start another download.
    fn sender_has_room(&self, sender: &str) -> bool {
        self.per_sender.get(sender).copied().unwrap_or(0) < MAX_PER_SENDER
    }

    /// Whether `sender` has a download running or paused.
    fn sender_is_busy(&self, sender: &str) -> bool {
        self.per_sender.contains_key(sender)
            || self
                .queued
                .iter()
                .any(|(o, start)| o.from == sender && matches!(start, Start::Paused(..)))
    }

    /// The queued offer to start next. Starts alternate: one goes to the first offer in turn
    /// whose sender has room, so a paused download queued at the back reaches the front
    /// however many offers of new senders arrive after it (they went first every time and
    /// starved it: attack 5, L2); the next to the first offer whose sender has nothing running
    /// or paused (a new sender is not kept behind the paused downloads of others), else the
    /// first in turn.
    fn next_to_start(&self) -> Option<usize> {
        let in_turn = self
            .queued
            .iter()
            .position(|(offer, _)| self.sender_has_room(&offer.from));
        if self.in_turn_next {
            return in_turn;
        }
        self.queued
            .iter()
            .position(|(offer, _)| !self.sender_is_busy(&offer.from))
            .or(in_turn)
    }

    /// Accept waiting offers and start their downloads while there is room, in the order of
    /// [`Jobs::next_to_start`].
    pub async fn start_queued(&mut self, ctx: &'a Ctx<'a>, client: &'a Client, out: &'a Path) {
        while self.slots_taken() < MAX_DOWNLOADS {
            let Some(next) = self.next_to_start() else {
                break;
            };
            let Some((offer, start)) = self.queued.remove(next) else {
                break;
            };
            self.in_turn_next = !self.in_turn_next;
            let accepted = match start {
                // Resumed: a hash the sender declared is pushed again after the grant, but
                // may have passed already; then the file is reported NOT verified.
                Start::Resume(grant) => hash_watch(client, &offer).map(|w| (grant, w, None)),
                Start::Paused(grant, watch, pace) => {
                    pace.new_turn();
                    Ok((grant, watch, Some(pace)))
                }
                Start::Accept => accept(client, &offer).await.map(|(g, w)| (g, w, None)),
            };
            match accepted {
                Ok((grant, watch, pace)) => {
                    *self.per_sender.entry(offer.from.clone()).or_default() += 1;
                    let pace = pace.unwrap_or_else(|| Pace {
                        activity: Activity::new(),
                        done: Arc::default(),
                        turn_start: Arc::default(),
                        pauses: Arc::default(),
                        others_wait: self.others_wait.clone(),
                        window: self.window,
                        min_bytes: self.min_bytes,
                        received_all: Arc::default(),
                        freed: self.freed.clone(),
                    });
                    self.running.push(Box::pin(async move {
                        let r = download_one(ctx, &offer, &grant, out, watch.as_ref(), &pace).await;
                        if matches!(r, Ok(Ended::Finished)) {
                            // Handled: the grant need not come again at later logins (§10.6;
                            // a failure only means it does, and is then ignored: no partial
                            // file).
                            let _ = client.file_done(&offer.transfer_id).await;
                        }
                        (offer, grant, watch, pace, r)
                    }))
                }
                Err(e) => {
                    self.known.remove(&offer.transfer_id);
                    // Only an interruption stops `receive`; it is seen at the next select.
                    let _ = self.failed(ctx, &offer, &e);
                }
            }
        }
        let waiting = self
            .queued
            .iter()
            .any(|(offer, _)| self.sender_has_room(&offer.from));
        self.others_wait.store(waiting, Ordering::Relaxed);
    }

    /// Download slots taken: running downloads but those that only wait for a hash.
    fn slots_taken(&self) -> usize {
        self.running
            .len()
            .saturating_sub(self.freed.count.load(Ordering::Relaxed))
    }

    /// Completes when a download has ended (a failure is reported, a paused one queued
    /// again) or has freed its slot (every byte in); never without downloads.
    pub async fn next_done(&mut self, ctx: &Ctx<'_>) {
        if self.running.is_empty() {
            return std::future::pending().await;
        }
        let next = tokio::select! {
            next = self.running.next() => next,
            () = self.freed.notify.notified() => return,
        };
        let Some((offer, grant, watch, pace, r)) = next else {
            return;
        };
        pace.ended();
        if let Some(n) = self.per_sender.get_mut(&offer.from) {
            *n -= 1;
            if *n == 0 {
                self.per_sender.remove(&offer.from);
            }
        }
        match r {
            Ok(Ended::Paused)
                if pace.pauses.fetch_add(1, Ordering::Relaxed) + 1 >= self.max_pauses =>
            {
                self.known.remove(&offer.transfer_id);
                let e = anyhow!(
                    "given up after {} pauses (each moved less than {} bytes in {} ms while \
                     other files waited); its partial download is kept and the next `msim \
                     receive` resumes it",
                    self.max_pauses,
                    self.min_bytes,
                    self.window.as_millis()
                );
                let _ = self.failed(ctx, &offer, &e);
            }
            Ok(Ended::Paused) => {
                ctx.out.notice(|| {
                    format!(
                        "Paused {} from {}: too slow while other files wait; it goes on later.",
                        offer.filename, offer.from
                    )
                });
                self.queued
                    .push_back((offer, Start::Paused(grant, watch, pace)));
            }
            Ok(Ended::Finished) => {
                self.known.remove(&offer.transfer_id);
            }
            Err(e) => {
                self.known.remove(&offer.transfer_id);
                let _ = self.failed(ctx, &offer, &e);
            }
        }
    }

    /// Report that `offer` failed with `error` (an interruption is passed on instead).
    pub fn failed(
        &mut self,
        ctx: &Ctx<'_>,
        offer: &FileOffered,
        error: &anyhow::Error,
    ) -> Result<()> {
        if error.is::<Interrupted>() {
            return Err(anyhow!(Interrupted));
        }
        self.failed += 1;
        let text = format!("{error:#}");
        let line = FileLine::Failed {
            ok: false,
            transfer_id: &offer.transfer_id,
            from: &offer.from,
            filename: &offer.filename,
            error: &text,
        };
        ctx.out.print(&line, || {
            format!("Failed: {} from {}: {text}", offer.filename, offer.from)
        });
        Ok(())
    }

    /// How `receive` ends after `handled` offers: an error if any of them failed.
    pub fn result(&self, handled: u64) -> Result<()> {
        match self.failed {
            0 => Ok(()),
            n => Err(anyhow!("{n} of {handled} transfers failed")),
        }
    }
}

/// When a download last made progress.
#[derive(Clone)]
pub struct Activity(Arc<Mutex<Instant>>);

impl Activity {
    pub fn new() -> Activity {
        Activity(Arc::new(Mutex::new(Instant::now())))
    }

    /// Progress now.
    pub fn touch(&self) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    /// Completes once there has been no progress for `limit`.
    pub async fn stalled(&self, limit: Duration) {
        loop {
            let last = *self.0.lock().unwrap_or_else(|p| p.into_inner());
            let due = last + limit;
            if Instant::now() >= due {
                return;
            }
            tokio::time::sleep_until(due.into()).await;
        }
    }
}
