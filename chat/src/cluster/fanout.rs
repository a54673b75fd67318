//! Cross-node fan-out over `LISTEN`/`NOTIFY` on channel [`CHANNEL`] (design in `super`; the
//! listening session in `super::listener`).
//!
//! Payloads (text, fields separated by one space, node ids in hex):
//! - `p NODE H0 H1 H2 H3 [T]`: NODE committed items up to these sequence positions, one per
//!   [`Stream`] (messages, receipts, offers, notices); T, when present, is the wall-clock
//!   time of the oldest commit announced, in µs since the Unix epoch (stage timings only:
//!   `super::stages`).
//! - `e NODE LOGIN PACKET`: a live-only packet for LOGIN's sessions (the encoded wire text).
//! - `x NODE ID`: the same, too large for a payload: row ID of `cluster_events`.
//! - `s NODE LOGIN 1|0`: LOGIN has (1) or no longer has (0) a session on NODE.
//! - `d NODE…`: these nodes were declared dead (their sessions are gone).
//! - `k NODE`: NODE's keep-alive, sent with each heartbeat: a listener that hears nothing
//!   at all (not even its own node's keep-alives) for a node timeout is on a dead connection.

use super::listener::{listen_loop, Announced, Note};
use super::mirror::Mirror;
pub(crate) use super::outbox::{notify, send_loop, Outbox};
use super::presence_read::PresenceCursor;
use super::stages::{since_us, Heard};
use super::NodeId;
use crate::hub::{Hub, Item, Stream, STREAMS};
use bytes::Bytes;
use futures::future::BoxFuture;
use sqlx::PgPool;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// The notification channel.
pub(crate) const CHANNEL: &str = "msim_cluster";
/// Largest live packet sent inside a NOTIFY payload (PostgreSQL's limit is 8000 bytes).
pub(crate) const INLINE_MAX: usize = 7000;
/// Notifications waiting for the reader; more are dropped (a positions notice is coalesced
/// separately and never lost this way).
const INBOX: usize = 4096;
/// Most items read per stream per query. A page that cannot be read within the statement
/// limit is halved until one can (down to one item), and doubled again after reads that take
/// under a quarter of the limit: a slow database slows the catch-up, it does not stop it.
const PAGE: usize = 1000;
/// Longest wait before reconnecting a lost listener.
pub(super) const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How long, in all, the reader may wait for room in sessions' full queues per page it
/// pushes. A reader catching up pushes a page at once, faster than any session drains; a
/// session whose queue stays full beyond this is disconnected as slow (as on one node), so
/// sessions that never read cannot stall this node's fan-out for more than this per page.
const ROOM_WAIT: Duration = Duration::from_millis(250);

/// Sequence positions, one per [`Stream`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Positions(pub(crate) [i64; STREAMS]);

impl Positions {
    /// Raises each position to at least `other`'s.
    pub(crate) fn raise(&mut self, other: &Positions) {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a = (*a).max(b);
        }
    }
}

/// A stored item as the reader sees it.
#[derive(Debug, Clone)]
pub(crate) struct FeedItem {
    pub(crate) stream: Stream,
    pub(crate) seq: i64,
    /// The node that committed it (and pushed it to its own sessions).
    pub(crate) origin: i64,
    /// The recipient.
    pub(crate) login: String,
    /// The encoded packet.
    pub(crate) bytes: Bytes,
}

/// The store's side of the fan-out (implemented by the PostgreSQL backend).
pub(crate) trait Feed: Send + Sync + 'static {
    /// The current positions: what is at or below them is not pushed by the reader (sessions
    /// that log in later read it as their backlog).
    fn heads(&self) -> BoxFuture<'_, Result<Positions, sqlx::Error>>;
    /// Up to `limit` items per stream with a sequence number above `after`'s, in sequence
    /// order per stream, for the streams `want` names. The backend's commit order equals
    /// sequence order across nodes, so nothing below a returned item can appear later.
    fn after(
        &self,
        after: Positions,
        want: [bool; STREAMS],
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<FeedItem>, sqlx::Error>>;
    /// These items of other nodes reached at least one session of this node (receipts are
    /// then marked delivered).
    fn delivered(&self, _items: Vec<(Stream, i64)>) {}
    /// This node's reader has pushed everything up to `pos` to its sessions.
    fn passed(&self, _pos: &Positions) {}
    /// The packet of this node's own item `seq` of `stream` for `login`, for a feed that
    /// leaves own items' bytes out of [`Feed::after`] (their sessions pushed them): needed
    /// when the item's batch was in doubt. `None`: the feed gives own items with their bytes.
    fn own_bytes<'a>(
        &'a self,
        _stream: Stream,
        _seq: i64,
        _login: &'a str,
    ) -> BoxFuture<'a, Result<Option<Bytes>, sqlx::Error>> {
        Box::pin(async { Ok(None) })
    }
}

/// `f`, or a timed-out error after `limit` (a silent network must not hang a cluster task).
pub(crate) async fn within<T>(
    limit: Duration,
    f: impl std::future::Future<Output = Result<T, sqlx::Error>>,
) -> Result<T, sqlx::Error> {
    tokio::time::timeout(limit, f)
        .await
        .unwrap_or_else(|_| Err(crate::db::postgres::timed_out()))
}

/// The node's reader: pushes other nodes' items and live packets to this node's sessions.
pub(crate) struct Reader {
    pub(crate) pool: PgPool,
    pub(crate) me: NodeId,
    pub(crate) hub: Arc<Hub>,
    pub(crate) feed: Arc<dyn Feed>,
    pub(crate) mirror: Arc<Mirror>,
    pub(crate) poll: Duration,
    /// Where the reader's positions are published for the heartbeat (`None` until it
    /// starts): what every node has passed may be scrubbed.
    pub(crate) fed: Arc<Mutex<Option<Positions>>>,
    /// Where the reader starts: the feed's heads when the node joined (read before any
    /// session could load a backlog, so nothing committed after that is skipped).
    pub(crate) start: Positions,
    /// A listener that hears nothing for longer is replaced (see [`listen_loop`]).
    pub(crate) silence: Duration,
    /// The deadline of each of the reader's statements.
    pub(crate) statement: Duration,
    /// Set while the reader's listener is listening (see [`listen_loop`]).
    pub(crate) listening: tokio::sync::watch::Sender<bool>,
    /// This node's own batches: their items in doubt are pushed here (see `super::own`).
    pub(crate) own: Arc<super::own::OwnBatches>,
}

impl Reader {
    /// Runs until `stop`. Starts from the feed's current heads.
    pub(crate) async fn run(self, stop: CancellationToken) {
        let heads = Arc::new(Mutex::new(Announced::default()));
        let wake = Arc::new(Notify::new());
        let (tx, mut inbox) = mpsc::channel(INBOX);
        let mut cursor = PresenceCursor::default();
        tokio::spawn(listen_loop(
            self.pool.clone(),
            self.me,
            heads.clone(),
            wake.clone(),
            tx,
            cursor.dropped.clone(),
            self.silence,
            self.statement,
            self.listening.clone(),
            stop.clone(),
        ));
        let mut pos = self.start;
        let mut page = PAGE;
        self.publish(&pos);
        let mut tick = tokio::time::interval(self.poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        const ALL: [bool; STREAMS] = [true; STREAMS];
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {
                    // Presence notes dropped on a full inbox (or on a full outbox, or whose
                    // NOTIFY failed) are repaired here: the table is the truth, the notes only
                    // make it quick. Only the logins changed since the last read are read
                    // (and those of the notes applied since: see `PresenceCursor`).
                    self.reload_presence(&mut cursor).await;
                    self.catch_up(&mut pos, ALL, &mut page, None).await;
                }
                _ = self.own.in_doubt_settled.notified() => {
                    self.catch_up(&mut pos, ALL, &mut page, None).await;
                }
                _ = wake.notified() => {
                    let (announced, heard) = {
                        let mut a = heads.lock().unwrap_or_else(|e| e.into_inner());
                        (a.heads, a.first.take())
                    };
                    let mut want = [false; STREAMS];
                    for (s, w) in want.iter_mut().enumerate() {
                        *w = announced.0[s] > pos.0[s];
                    }
                    if want.contains(&true) {
                        self.catch_up(&mut pos, want, &mut page, heard).await;
                    }
                }
                note = inbox.recv() => match note {
                    Some(Note::Connected) => {
                        info!("cluster listener connected: catching up");
                        // Everything: the database may have restarted (a crash hands out
                        // transaction ids again, and snapshots taken before it mean nothing).
                        cursor.reset();
                        self.reload_presence(&mut cursor).await;
                        self.catch_up(&mut pos, ALL, &mut page, None).await;
                    }
                    Some(note) => {
                        if let Note::Presence { login, .. } = &note {
                            cursor.applied(login);
                        }
                        self.apply(note).await;
                    }
                    None => return,
                },
            }
        }
    }

    /// Pushes every item above `pos` that another node committed to its recipients'
    /// sessions here, advancing `pos`, `page` items per stream and query at most (see
    /// [`PAGE`]). On an error `pos` keeps what was pushed; the next notification or tick
    /// retries. `heard`: the notice that started this read, for the stage timings.
    async fn catch_up(
        &self,
        pos: &mut Positions,
        mut want: [bool; STREAMS],
        page: &mut usize,
        heard: Option<Heard>,
    ) {
        let waited_us = heard.map(|h| since_us(h.at));
        let (mut read_us, mut push_us, mut items_read) = (0, 0, 0);
        loop {
            let started = tokio::time::Instant::now();
            let read = within(self.statement, self.feed.after(*pos, want, *page)).await;
            read_us += since_us(started.into_std());
            let items = match read {
                Ok(items) => items,
                Err(e) if is_timeout(&e) && *page > 1 => {
                    *page = (*page / 2).max(1);
                    warn!("cluster reader: {e}; reading {} items at a time", *page);
                    continue;
                }
                Err(e) => {
                    warn!("cluster reader: {e}");
                    break;
                }
            };
            let full = *page;
            if started.elapsed() < self.statement / 4 && *page < PAGE {
                *page = (*page * 2).min(PAGE);
            }
            let mut per_stream = [0usize; STREAMS];
            let mut delivered = Vec::new();
            let mut room_wait = ROOM_WAIT;
            let pushing = std::time::Instant::now();
            items_read += items.len();
            for it in &items {
                let s = it.stream as usize;
                per_stream[s] += 1;
                if it.seq <= pos.0[s] {
                    continue;
                }
                pos.0[s] = it.seq;
                // Empty bytes: nothing to push (a scrubbed body), only the position moves.
                // This node's own items were pushed by their sessions, unless their batch's
                // outcome was unknown (the feed may have left their bytes out).
                let bytes = if it.origin != self.me.0 {
                    it.bytes.clone()
                } else if self.own.push_own(it) {
                    self.own_bytes(it).await
                } else {
                    Bytes::new()
                };
                if !bytes.is_empty() {
                    let item = Item {
                        seq: Some((it.stream, it.seq)),
                        bytes,
                    };
                    if self.push(&it.login, item, &mut room_wait).await > 0 {
                        delivered.push((it.stream, it.seq));
                    }
                }
            }
            push_us += since_us(pushing);
            if !delivered.is_empty() {
                self.feed.delivered(delivered);
            }
            // Only full pages may have more behind them.
            for (w, n) in want.iter_mut().zip(per_stream) {
                *w = *w && n >= full;
            }
            if !want.contains(&true) {
                break;
            }
        }
        // Own items read while their batch ran, which turned out in doubt.
        let late = self.own.settled_items(pos);
        let mut delivered = Vec::new();
        let mut room_wait = ROOM_WAIT;
        for it in late {
            let bytes = self.own_bytes(&it).await;
            if bytes.is_empty() {
                continue;
            }
            let item = Item {
                seq: Some((it.stream, it.seq)),
                bytes,
            };
            if self.push(&it.login, item, &mut room_wait).await > 0 {
                delivered.push((it.stream, it.seq));
            }
        }
        if !delivered.is_empty() {
            self.feed.delivered(delivered);
        }
        self.publish(pos);
        if let Some(h) = heard {
            debug!(
                target: "msim_chat::cluster::stages",
                heard_us = h.transit_us(),
                waited_us,
                read_us,
                push_us,
                items = items_read,
                "announced items read"
            );
        }
    }

    /// The packet of this node's own item `it` (in doubt, so nobody pushed it): its bytes, or
    /// the feed's if it left them out; empty if there is nothing to push or on an error.
    async fn own_bytes(&self, it: &FeedItem) -> Bytes {
        if !it.bytes.is_empty() {
            return it.bytes.clone();
        }
        match within(
            self.statement,
            self.feed.own_bytes(it.stream, it.seq, &it.login),
        )
        .await
        {
            Ok(Some(bytes)) => bytes,
            Ok(None) => Bytes::new(),
            Err(e) => {
                warn!("cluster reader: an item in doubt is not pushed live: {e}");
                Bytes::new()
            }
        }
    }

    /// Queues `item` for every session of `login` on this node, waiting for room in a full
    /// queue out of `room_wait` (what is left of it is left in it); returns how many got it.
    async fn push(&self, login: &str, item: Item, room_wait: &mut Duration) -> usize {
        let mut n = 0;
        for (id, tx) in self.hub.local_queues(login) {
            match tx.try_send(item.clone()) {
                Ok(()) => n += 1,
                Err(mpsc::error::TrySendError::Full(item)) => {
                    let started = tokio::time::Instant::now();
                    match tokio::time::timeout(*room_wait, tx.send(item)).await {
                        Ok(Ok(())) => n += 1,
                        Ok(Err(_)) => {} // the session is gone
                        Err(_) => self.hub.evict(login, id),
                    }
                    *room_wait = room_wait.saturating_sub(started.elapsed());
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
        n
    }

    /// Makes `pos` the positions the heartbeat records.
    fn publish(&self, pos: &Positions) {
        self.feed.passed(pos);
        *self.fed.lock().unwrap_or_else(|e| e.into_inner()) = Some(*pos);
    }

    /// Brings the mirror in line with the presence table: all of it, or the logins changed
    /// since the last read and those of the notes applied since (see `PresenceCursor`). On an
    /// error the mirror and `cursor` stay as they are (the next read covers what this one
    /// missed).
    async fn reload_presence(&self, cursor: &mut PresenceCursor) {
        let next = cursor.next();
        let (since, recheck) = match &next {
            Some((seen, recheck)) => (Some(seen.as_str()), recheck.as_slice()),
            None => (None, &[][..]),
        };
        let read_at = std::time::Instant::now();
        let read = super::nodes::presence_since(&self.pool, self.me, since, recheck);
        match within(self.statement, read).await {
            Ok(read) => {
                let full = read.logins.is_none();
                match read.logins {
                    None => self.mirror.replace(read.rows, read_at),
                    Some(logins) => self.mirror.update(&logins, read.rows, read_at),
                }
                cursor.done(read.snapshot, full);
            }
            Err(e) => warn!("cluster: reloading presence: {e}"),
        }
    }

    async fn apply(&self, note: Note) {
        match note {
            Note::Connected => {}
            Note::Live { login, bytes } => {
                self.hub
                    .deliver_local(&login, None, &Item { seq: None, bytes });
            }
            Note::LiveRow(id) => {
                let read = sqlx::query_as("SELECT login, packet FROM cluster_events WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&self.pool);
                let row: Result<Option<(String, Vec<u8>)>, _> = within(self.statement, read).await;
                match row {
                    Ok(Some((login, packet))) => {
                        let item = Item {
                            seq: None,
                            bytes: Bytes::from(packet),
                        };
                        self.hub.deliver_local(&login, None, &item);
                    }
                    Ok(None) => debug!(id, "cluster event already pruned"),
                    Err(e) => warn!("cluster event {id}: {e}"),
                }
            }
            Note::Presence { node, login, on } => self.mirror.set(&login, node, on),
            Note::Dead(nodes) => self.mirror.drop_nodes(&nodes),
        }
    }
}

/// Whether `e` is a statement that ran out of time (ours or the server's `statement_timeout`).
fn is_timeout(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(io) => io.kind() == std::io::ErrorKind::TimedOut,
        sqlx::Error::Database(d) => d.code().as_deref() == Some("57014"),
        _ => false,
    }
}
