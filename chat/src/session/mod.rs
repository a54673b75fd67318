//! One connection: framing over the shared codec, the session state machine
//! (Greeting → Challenged → LoggedIn), timers and the bounded outgoing queue.
//!
//! Everything runs in one task per connection: a `select!` loop reads packets, drains the
//! session's queue (filled by the hub), fires timers (login timeout, keepalive, typing) and
//! watches for shutdown. Direct answers are buffered in `out` and flushed after each event with a
//! write timeout, so a client that stops reading is disconnected rather than buffered forever.

mod backlog;
mod login;
mod outbox;

pub(crate) use outbox::Outbox;

use crate::cmd::auth::Challenge;
use crate::cmd::context::{Ctx, Me, Reply};
use crate::cmd::messages::InFlight;
use crate::cmd::typing::Typing;
use crate::cmd::{self, Conn, Effect};
use crate::db::{DbError, Outcome};
use crate::hub::{Item, STREAMS};
use crate::server::Shared;
use futures::StreamExt;
use msim_shared::proto::{Body, ErrorLineTooLong, ErrorMalformed, ErrorRateLimited, Ping};
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
const PIPELINE: usize = 128;
/// Hub packets taken from the session's queue per loop iteration (one socket write for all).
const HUB_BATCH: usize = 64;

/// The write side of a connection (plain TCP or TLS).
type Writer<'a> = Box<dyn AsyncWrite + Send + Sync + Unpin + 'a>;

/// Why a connection ends early.
#[derive(Debug, thiserror::Error)]
enum SessionError {
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

/// A logged-in session's identity.
#[derive(Debug)]
struct LoggedIn {
    /// Canonical login.
    login: String,
    /// Hub session id.
    id: u64,
}

impl LoggedIn {
    fn me(&self) -> Me<'_> {
        Me {
            login: &self.login,
            session: self.id,
        }
    }
}

/// A connection's state. Login state machine: no login and no challenge (greeting), a
/// [`Challenge`] (`CONNECT-ACK` sent), then logged in.
struct Session<'a> {
    /// Server state.
    sh: Arc<Shared>,
    /// Client address.
    peer: SocketAddr,
    /// Set once logged in.
    login: Option<LoggedIn>,
    /// The login in progress, before `CONNECT-CONTINUE`.
    challenge: Option<Challenge>,
    /// Hub queue, once logged in.
    rx: Option<mpsc::Receiver<Item>>,
    /// Per stored stream, the high-water mark of the login backlog: live items at or below it
    /// were sent from the database and are dropped.
    marks: [i64; STREAMS],
    /// Typing notifications in progress.
    typing: Typing,
    /// Set to close the connection after flushing.
    closing: bool,
    /// A write failed or timed out: the stream is cut mid-packet, nothing more goes out.
    write_failed: bool,
    /// Pipelined messages awaiting their commit, in request order.
    pending: VecDeque<InFlight>,
    /// Request rate limit: (micro-tokens left, when last refilled in clock micros).
    bucket: Option<(u64, i64)>,
    out: Outbox,
    w: Writer<'a>,
    started: Instant,
    last_rx: Instant,
    pinged: bool,
}

impl<'a> Session<'a> {
    /// Queues a hub item unless the login backlog already contained it.
    fn push_item(&mut self, item: &Item) {
        if let Some((stream, seq)) = item.seq {
            if seq <= self.marks[stream as usize] {
                return;
            }
        }
        self.out.push_bytes(&item.bytes);
    }

    /// Writes everything queued.
    async fn flush(&mut self) -> Result<(), SessionError> {
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
            self.w.write_all(self.out.bytes()).await?;
            self.w.flush().await
        };
        let result = match tokio::time::timeout(timeout, write).await {
            Ok(r) => r.map_err(SessionError::from),
            Err(_) => Err(SessionError::WriteTimeout),
        };
        // On failure an unknown part reached the client: writing it again would repeat
        // packets and cut one in half. The connection is done; nothing more is written.
        self.out.clear();
        if let Err(e) = result {
            self.write_failed = true;
            self.closing = true;
            return Err(e);
        }
        Ok(())
    }

    /// Answers one committed (or failed) pipelined message.
    fn complete(&mut self, f: InFlight, r: Result<Outcome, DbError>) {
        let sh = self.sh.clone();
        let Some(me) = self.login.as_ref().map(LoggedIn::me) else {
            return;
        };
        cmd::messages::complete(&Ctx::new(&sh), me, &mut self.typing, &mut self.out, f, r);
    }

    /// Waits for every pipelined message to be committed and answers them, so that the next
    /// answer keeps request order.
    async fn drain(&mut self) {
        while let Some(mut f) = self.pending.pop_front() {
            let r = (&mut f.done).await;
            self.complete(f, r);
        }
    }

    /// Answers the pipelined messages that are already committed, oldest first.
    fn complete_ready(&mut self) {
        while let Some(front) = self.pending.front_mut() {
            let Some(r) = front.done.try_take() else {
                return;
            };
            if let Some(f) = self.pending.pop_front() {
                self.complete(f, r);
            }
        }
    }

    /// Handles one decoded line: the rate limit, request order, then [`cmd::dispatch`].
    async fn request(&mut self, p: Packet) {
        if !self.take_token() {
            self.drain().await;
            let limited = ErrorRateLimited {
                verb: p.verb.clone(),
                retry_after: self.retry_after(),
            };
            return Reply::to(&mut self.out, &p).send(limited.to_packet());
        }
        let pipelined = cmd::is_pipelined(&p, self.login.is_some());
        if !pipelined && !needs_no_drain(&p) {
            self.drain().await;
        }
        let sh = self.sh.clone();
        let conn = Conn {
            out: &mut self.out,
            peer: self.peer,
            me: self.login.as_ref().map(LoggedIn::me),
            challenge: &mut self.challenge,
            typing: &mut self.typing,
        };
        match Box::pin(cmd::dispatch(&sh, conn, &p)).await {
            Effect::Done => {}
            Effect::Submitted(f) => self.pending.push_back(f),
            Effect::AfterDrain(reply, answer) => {
                self.drain().await;
                Reply::resume(&mut self.out, reply).send(answer);
            }
            Effect::LoggedIn { login, reply } => Box::pin(self.log_in(login, reply)).await,
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
        if self.login.is_none() {
            d = d.min(self.started + c.login_timeout);
        }
        if let Some(t) = self.typing.next_deadline() {
            d = d.min(t);
        }
        d
    }

    fn on_timer(&mut self) {
        let now = Instant::now();
        let sh = self.sh.clone();
        let c = &sh.config;
        if self.login.is_none() && now >= self.started + c.login_timeout {
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
            self.out.push(&Ping.to_packet());
        }
        if let Some(l) = &self.login {
            self.typing.expire(&Ctx::new(&sh), &l.login, now);
        }
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
pub(crate) async fn serve(
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
pub(crate) async fn serve_stream<S>(
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
        login: None,
        challenge: None,
        rx: None,
        marks: [0; STREAMS],
        typing: Typing::default(),
        closing: false,
        write_failed: false,
        pending: VecDeque::new(),
        bucket: None,
        out: Outbox::default(),
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
                    s.complete(f, r);
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
                            Ok(p) => {
                                too_long = 0;
                                s.request(p).await;
                            }
                            Err(PacketError::LineTooLong(max)) => {
                                s.drain().await;
                                too_long += 1;
                                s.out.push(&ErrorLineTooLong { max: max as u64 }.to_packet());
                                if too_long >= MAX_TOO_LONG {
                                    s.closing = true;
                                }
                            }
                            Err(e) => {
                                // Only *consecutive* over-long lines close (§1.2).
                                too_long = 0;
                                s.drain().await;
                                s.out.push(&ErrorMalformed::from_packet_error(&e).to_packet());
                            }
                        }
                    }
                }
            }
            _ = tokio::time::sleep_until(deadline) => s.on_timer(),
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
    Box::pin(s.log_out()).await;
    let _ = s.flush().await;
    let _ = s.w.shutdown().await;
}
