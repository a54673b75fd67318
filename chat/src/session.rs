//! One connection: framing over the shared codec, the session state machine
//! (Greeting → Challenged → LoggedIn), timers and the bounded outgoing queue.
//!
//! Everything runs in one task per connection: a `select!` loop reads packets, drains the
//! session's queue (filled by the hub), fires timers (login timeout, keepalive, typing) and
//! watches for shutdown. Direct answers are buffered in `out` and flushed after each event with a
//! write timeout, so a client that stops reading is disconnected rather than buffered forever.

use crate::cmd;
use crate::db::commit;
use crate::db::{DbError, Outcome, StoredMessage};
use crate::hub::{Item, STREAMS};
use crate::server::Shared;
use bytes::BytesMut;
use futures::StreamExt;
use msim_shared::proto::{
    Body, ErrorLineTooLong, ErrorMalformed, ErrorRateLimited, FieldReader, Ping, SendMessage,
};
use msim_shared::{Packet, PacketCodec, PacketError};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;
use tracing::debug;

/// Initial read buffer per connection (grows only for long lines).
const READ_CAPACITY: usize = 256;
/// Consecutive over-long lines tolerated before the connection is closed.
const MAX_TOO_LONG: u32 = 3;
/// Messages of one session submitted to the writer and not yet committed. While this many are
/// in flight the session stops reading its socket (back-pressure to the client).
pub const PIPELINE: usize = 128;
/// Hub packets taken from the session's queue per loop iteration (one socket write for all).
const HUB_BATCH: usize = 64;

/// The write side of a connection (plain TCP or TLS).
type Writer<'a> = Box<dyn AsyncWrite + Send + Sync + Unpin + 'a>;

/// A `MESSAGE` submitted to the group-commit writer, waiting for its commit.
#[derive(Debug)]
pub struct InFlight {
    /// Completes once committed.
    pub done: commit::Pending,
    /// The request's `ref=`.
    pub reference: Option<String>,
    /// The message as stored.
    pub message: StoredMessage,
    /// The recipient blocked the sender: answered as sent, never stored or delivered.
    pub discard: bool,
}

/// Why a connection ends early.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Socket error.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// The client did not take our data in time.
    #[error("write timed out")]
    WriteTimeout,
    /// An earlier write failed; the connection takes no more data.
    #[error("an earlier write failed")]
    WriteFailed,
}

/// Where the session is in the login state machine.
#[derive(Debug)]
pub enum State {
    /// Connected, not logged in.
    Greeting,
    /// `CONNECT-ACK` sent; waiting for `CONNECT-CONTINUE`.
    Challenged {
        /// Canonical login asked for.
        login: String,
        /// Sealed password (None: unknown login).
        sealed: Option<Vec<u8>>,
        /// The salt, good for this one attempt.
        salt: String,
        /// The `device=` cookie presented with `CONNECT`, if any (checked with the answer).
        device: Option<String>,
    },
    /// Logged in.
    LoggedIn {
        /// Canonical login.
        login: String,
        /// Hub session id.
        id: u64,
    },
}

/// A connection's state.
pub struct Session<'a> {
    /// Server state.
    pub sh: Arc<Shared>,
    /// Client address.
    pub peer: SocketAddr,
    /// Login state.
    pub state: State,
    /// Hub queue, once logged in.
    pub rx: Option<mpsc::Receiver<Item>>,
    /// Per stored stream, the high-water mark of the login backlog: live items at or below it
    /// were sent from the database and are dropped.
    pub marks: [i64; STREAMS],
    /// Typing notifications in progress: (recipient login, deadline).
    pub typing: Vec<(String, Instant)>,
    /// Set to close the connection after flushing.
    pub closing: bool,
    /// A write failed or timed out: the stream is cut mid-packet, nothing more goes out.
    write_failed: bool,
    /// Pipelined messages awaiting their commit, in request order.
    pub pending: VecDeque<InFlight>,
    /// Request rate limit: (micro-tokens left, when last refilled in clock micros).
    bucket: Option<(u64, i64)>,
    out: BytesMut,
    w: Writer<'a>,
    started: Instant,
    last_rx: Instant,
    pinged: bool,
}

impl<'a> Session<'a> {
    /// The logged-in login.
    pub fn login(&self) -> Option<&str> {
        match &self.state {
            State::LoggedIn { login, .. } => Some(login),
            _ => None,
        }
    }

    /// The hub id of this session.
    pub fn session_id(&self) -> Option<u64> {
        match &self.state {
            State::LoggedIn { id, .. } => Some(*id),
            _ => None,
        }
    }

    /// `login@domain` for a local login.
    pub fn addr(&self, login: &str) -> String {
        format!("{login}@{}", self.sh.config.domain)
    }

    /// Queues a direct answer to `req`, echoing its `ref=`.
    pub fn reply(&mut self, req: &Packet, p: Packet) {
        let p = p.with_opt("ref", req.reference().map(str::to_owned));
        self.push(&p);
    }

    /// Queues a packet.
    pub fn push(&mut self, p: &Packet) {
        self.out.extend_from_slice(p.to_wire().as_bytes());
    }

    /// Queues encoded bytes.
    pub fn push_bytes(&mut self, b: &[u8]) {
        self.out.extend_from_slice(b);
    }

    /// Queues a hub item unless the login backlog already contained it.
    fn push_item(&mut self, item: &Item) {
        if let Some((stream, seq)) = item.seq {
            if seq <= self.marks[stream as usize] {
                return;
            }
        }
        self.out.extend_from_slice(&item.bytes);
    }

    /// Writes everything queued.
    pub async fn flush(&mut self) -> Result<(), SessionError> {
        if self.write_failed {
            self.out.clear();
            return Err(SessionError::WriteFailed);
        }
        if self.out.is_empty() {
            return Ok(());
        }
        let timeout = self.sh.config.write_timeout;
        // `flush` matters for TLS: tokio-rustls reports a write done once the bytes are in its
        // own buffer, which only a flush (or a later write) pushes to the socket. For plain TCP
        // it is a no-op.
        let write = async {
            self.w.write_all(&self.out).await?;
            self.w.flush().await
        };
        let result = match tokio::time::timeout(timeout, write).await {
            Ok(r) => r.map_err(SessionError::from),
            Err(_) => Err(SessionError::WriteTimeout),
        };
        if let Err(e) = result {
            // An unknown part of `out` reached the client: writing it again would repeat
            // packets and cut one in half. The connection is done; nothing more is written.
            self.out = BytesMut::new();
            self.write_failed = true;
            self.closing = true;
            return Err(e);
        }
        if self.out.capacity() > 8192 {
            self.out = BytesMut::new();
        } else {
            self.out.clear();
        }
        Ok(())
    }

    /// Waits for every pipelined message to be committed and answers them, so that the next
    /// answer keeps request order.
    pub async fn drain(&mut self) {
        while let Some(f) = self.pending.pop_front() {
            let r = f.done.await;
            cmd::messages::complete(self, f.reference, f.message, f.discard, r);
        }
    }

    /// Answers the pipelined messages that are already committed, oldest first.
    fn complete_ready(&mut self) {
        while let Some(front) = self.pending.front_mut() {
            let Some(r) = front.done.try_take() else {
                return;
            };
            if let Some(f) = self.pending.pop_front() {
                cmd::messages::complete(self, f.reference, f.message, f.discard, r);
            }
        }
    }

    /// Takes one request token; false when the connection is over its rate (a token bucket of
    /// `request_burst` tokens refilled at `request_rate` per second, on the server clock).
    fn take_token(&mut self) -> bool {
        const ONE: u64 = 1_000_000;
        let c = &self.sh.config;
        if c.request_rate == 0 {
            return true;
        }
        let now = c.clock.now_micros();
        let cap = u64::from(c.request_burst.max(1)) * ONE;
        let (tokens, at) = self.bucket.unwrap_or((cap, now));
        let elapsed = u64::try_from(now.saturating_sub(at)).unwrap_or(0);
        let tokens = tokens
            .saturating_add(elapsed.saturating_mul(u64::from(c.request_rate)))
            .min(cap);
        if tokens < ONE {
            self.bucket = Some((tokens, now));
            return false;
        }
        self.bucket = Some((tokens - ONE, now));
        true
    }

    /// Seconds until the next request token (at least 1).
    fn retry_after(&self) -> u64 {
        let rate = u64::from(self.sh.config.request_rate.max(1));
        let left = self.bucket.map_or(0, |b| b.0);
        (1_000_000u64.saturating_sub(left))
            .div_ceil(rate * 1_000_000)
            .max(1)
    }

    fn next_deadline(&self) -> Instant {
        let c = &self.sh.config;
        let mut d = self.last_rx + c.idle_timeout;
        if !self.pinged {
            d = d.min(self.last_rx + c.ping_after);
        }
        if self.login().is_none() {
            d = d.min(self.started + c.login_timeout);
        }
        for (_, t) in &self.typing {
            d = d.min(*t);
        }
        d
    }

    async fn on_timer(&mut self) {
        let now = Instant::now();
        let c = &self.sh.config;
        if self.login().is_none() && now >= self.started + c.login_timeout {
            debug!(peer = %self.peer, "login timeout");
            self.closing = true;
            return;
        }
        if now >= self.last_rx + c.idle_timeout {
            debug!(peer = %self.peer, "idle timeout");
            self.closing = true;
            return;
        }
        if !self.pinged && now >= self.last_rx + c.ping_after {
            self.pinged = true;
            self.push(&Ping.to_packet());
        }
        cmd::typing::expire(self, now);
    }
}

async fn front_done(pending: &mut VecDeque<InFlight>) -> Result<Outcome, DbError> {
    match pending.front_mut() {
        Some(f) => (&mut f.done).await,
        None => std::future::pending().await,
    }
}

/// Whether a request may be handled while earlier messages are still being committed: it has
/// no direct answer whose order could change.
fn needs_no_drain(p: &Packet) -> bool {
    matches!(p.verb.as_str(), "MESSAGE-ACK" | "PONG")
}

async fn recv(rx: &mut Option<mpsc::Receiver<Item>>) -> Option<Item> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Serves one plain TCP connection until it closes or `shutdown` fires.
pub async fn serve(
    sh: Arc<Shared>,
    mut stream: TcpStream,
    peer: SocketAddr,
    shutdown: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let (r, w) = stream.split();
    serve_split(sh, r, Box::new(w), peer, shutdown).await;
}

/// Serves one connection over any byte stream (e.g. TLS) until it closes or `shutdown`
/// fires.
pub async fn serve_stream<S>(
    sh: Arc<Shared>,
    stream: S,
    peer: SocketAddr,
    shutdown: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Send + Sync,
{
    let (r, w) = tokio::io::split(stream);
    serve_split(sh, r, Box::new(w), peer, shutdown).await;
}

async fn serve_split<'a, R>(
    sh: Arc<Shared>,
    r: R,
    w: Writer<'a>,
    peer: SocketAddr,
    shutdown: CancellationToken,
) where
    R: AsyncRead + Send + Unpin + 'a,
{
    let codec = PacketCodec::new(sh.config.max_line).with_max_records(0);
    let mut frames = FramedRead::with_capacity(r, codec, READ_CAPACITY);
    let now = Instant::now();
    let mut s = Session {
        sh,
        peer,
        state: State::Greeting,
        rx: None,
        marks: [0; STREAMS],
        typing: Vec::new(),
        closing: false,
        write_failed: false,
        pending: VecDeque::new(),
        bucket: None,
        out: BytesMut::new(),
        w,
        started: now,
        last_rx: now,
        pinged: false,
    };
    let mut too_long = 0u32;
    loop {
        let deadline = s.next_deadline();
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            r = front_done(&mut s.pending) => {
                if let Some(f) = s.pending.pop_front() {
                    cmd::messages::complete(&mut s, f.reference, f.message, f.discard, r);
                }
                s.complete_ready();
            }
            msg = recv(&mut s.rx) => match msg {
                Some(item) => {
                    s.push_item(&item);
                    // Take what else is queued so it goes out in one write.
                    for _ in 1..HUB_BATCH {
                        match s.rx.as_mut().map(mpsc::Receiver::try_recv) {
                            Some(Ok(item)) => s.push_item(&item),
                            _ => break,
                        }
                    }
                }
                None => {
                    debug!(peer = %s.peer, "evicted (outgoing queue full)");
                    break;
                }
            },
            item = frames.next(), if s.pending.len() < PIPELINE => {
                match item {
                    None | Some(Err(_)) => break,
                    Some(Ok(decoded)) => {
                        s.last_rx = Instant::now();
                        s.pinged = false;
                        match decoded {
                            Ok(p) if !s.take_token() => {
                                too_long = 0;
                                s.drain().await;
                                let limited = ErrorRateLimited {
                                    verb: p.verb.clone(),
                                    retry_after: s.retry_after(),
                                };
                                s.reply(&p, limited.to_packet());
                            }
                            Ok(p) => {
                                too_long = 0;
                                if p.verb == SendMessage::VERB && s.login().is_some() {
                                    // Pipelined: answered when committed.
                                    match SendMessage::read(&FieldReader::new(&p)) {
                                        Ok(r) => Box::pin(cmd::messages::submit(&mut s, &p, r)).await,
                                        Err(e) => {
                                            s.drain().await;
                                            let e = ErrorMalformed::from_proto_error(&e);
                                            s.reply(&p, e.to_packet());
                                        }
                                    }
                                } else {
                                    if !needs_no_drain(&p) {
                                        s.drain().await;
                                    }
                                    Box::pin(cmd::dispatch(&mut s, p)).await;
                                }
                            }
                            Err(PacketError::LineTooLong(max)) => {
                                s.drain().await;
                                too_long += 1;
                                s.push(&ErrorLineTooLong { max: max as u64 }.to_packet());
                                if too_long >= MAX_TOO_LONG {
                                    s.closing = true;
                                }
                            }
                            Err(e) => {
                                // Only *consecutive* over-long lines close (§1.2).
                                too_long = 0;
                                s.drain().await;
                                s.push(&ErrorMalformed::from_packet_error(&e).to_packet());
                            }
                        }
                    }
                }
            }
            _ = tokio::time::sleep_until(deadline) => s.on_timer().await,
        }
        if let Err(e) = s.flush().await {
            debug!(peer = %s.peer, "write failed: {e}");
            break;
        }
        if s.closing {
            break;
        }
    }
    // Messages already submitted are committed anyway: deliver them before leaving.
    s.drain().await;
    Box::pin(cmd::auth::logout(&mut s)).await;
    let _ = s.flush().await;
    let _ = s.w.shutdown().await;
}
