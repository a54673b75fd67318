//! One connection: framing over the shared codec, the session state machine
//! (Greeting → Challenged → LoggedIn), timers and the bounded outgoing queue.
//!
//! Everything runs in one task per connection: a `select!` loop reads packets, drains the
//! session's queue (filled by the hub), fires timers (login timeout, keepalive, typing) and
//! watches for shutdown. Direct answers are buffered in `out` and flushed after each event with a
//! write timeout, so a client that stops reading is disconnected rather than buffered forever.

use crate::cmd;
use crate::server::Shared;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use msim_shared::{Packet, PacketCodec, PacketError};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::WriteHalf;
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

/// Why a connection ends early.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Socket error.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// The client did not take our data in time.
    #[error("write timed out")]
    WriteTimeout,
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
    pub rx: Option<mpsc::Receiver<Bytes>>,
    /// Typing notifications in progress: (recipient login, deadline).
    pub typing: Vec<(String, Instant)>,
    /// Set to close the connection after flushing.
    pub closing: bool,
    out: BytesMut,
    w: WriteHalf<'a>,
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

    /// Writes everything queued.
    pub async fn flush(&mut self) -> Result<(), SessionError> {
        if self.out.is_empty() {
            return Ok(());
        }
        let timeout = self.sh.config.write_timeout;
        match tokio::time::timeout(timeout, self.w.write_all(&self.out)).await {
            Ok(r) => r?,
            Err(_) => return Err(SessionError::WriteTimeout),
        }
        if self.out.capacity() > 8192 {
            self.out = BytesMut::new();
        } else {
            self.out.clear();
        }
        Ok(())
    }

    /// Sends `ERROR-MALFORMED reason=missing-field` and returns None when `key` is absent.
    pub fn require<'p>(&mut self, req: &'p Packet, key: &str) -> Option<&'p str> {
        let v = req.get(key);
        if v.is_none() {
            self.reply(
                req,
                Packet::new("ERROR-MALFORMED")
                    .with("reason", "missing-field")
                    .with("detail", key),
            );
        }
        v
    }

    /// Sends `ERROR-MALFORMED reason=bad-value detail=key`.
    pub fn bad_value(&mut self, req: &Packet, key: &str) {
        self.reply(
            req,
            Packet::new("ERROR-MALFORMED")
                .with("reason", "bad-value")
                .with("detail", key),
        );
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
            self.push(&Packet::new("PING"));
        }
        cmd::typing::expire(self, now);
    }
}

async fn recv(rx: &mut Option<mpsc::Receiver<Bytes>>) -> Option<Bytes> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Serves one connection until it closes or `shutdown` fires.
pub async fn serve(
    sh: Arc<Shared>,
    mut stream: TcpStream,
    peer: SocketAddr,
    shutdown: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let codec = PacketCodec::new(sh.config.max_line).with_max_records(0);
    let (r, w) = stream.split();
    let mut frames = FramedRead::with_capacity(r, codec, READ_CAPACITY);
    let now = Instant::now();
    let mut s = Session {
        sh,
        peer,
        state: State::Greeting,
        rx: None,
        typing: Vec::new(),
        closing: false,
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
            item = frames.next() => {
                match item {
                    None | Some(Err(_)) => break,
                    Some(Ok(decoded)) => {
                        s.last_rx = Instant::now();
                        s.pinged = false;
                        match decoded {
                            Ok(p) => {
                                too_long = 0;
                                Box::pin(cmd::dispatch(&mut s, p)).await;
                            }
                            Err(PacketError::LineTooLong(max)) => {
                                too_long += 1;
                                s.push(&Packet::new("ERROR-LINE-TOO-LONG").with("max", max.to_string()));
                                if too_long >= MAX_TOO_LONG {
                                    s.closing = true;
                                }
                            }
                            Err(e) => {
                                s.push(&Packet::new("ERROR-MALFORMED")
                                    .with("reason", e.reason())
                                    .with("detail", e.to_string()));
                            }
                        }
                    }
                }
            }
            msg = recv(&mut s.rx) => match msg {
                Some(b) => s.push_bytes(&b),
                None => {
                    debug!(peer = %s.peer, "evicted (outgoing queue full)");
                    break;
                }
            },
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
    Box::pin(cmd::auth::logout(&mut s)).await;
    let _ = s.flush().await;
    let _ = s.w.shutdown().await;
}
