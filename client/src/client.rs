//! The connection to an msim-chat server: requests with typed answers, pushed events as a
//! stream.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{SinkExt, Stream, StreamExt};
use msim_shared::proto::{
    Body, ConnectOk, ErrorBadState, ErrorLineTooLong, ErrorMalformed, ErrorNotImplemented, Event,
    FilePending, Pong, Request, UploadGrant,
};
use msim_shared::tls::rustls::ClientConfig;
use msim_shared::{Packet, PacketCodec};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, ToSocketAddrs};
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::{FramedRead, FramedWrite};

use crate::error::ClientError;
use crate::router::Router;

mod calls;
mod file_hash;
mod login;

pub use file_hash::HashWatch;

/// Connection settings.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// How long a request waits for its answer.
    pub request_timeout: Duration,
    /// Capacity of the event channel. When it is full the reader waits (back-pressure), so
    /// keep reading events or drop the [`Events`] handle.
    pub event_buffer: usize,
    /// Capacity of the outgoing packet queue.
    pub send_buffer: usize,
    /// Longest line accepted from the server, in bytes.
    pub max_line: usize,
    /// Trust for `tls://` servers and `https://` relays (None: the bundled public roots).
    /// Build it with `msim_shared::tls::client_config`; certificates are always verified.
    pub tls: Option<Arc<ClientConfig>>,
    /// Longest time the TLS handshake may take.
    pub tls_handshake_timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            request_timeout: Duration::from_secs(30),
            event_buffer: 256,
            send_buffer: 64,
            max_line: 4 * msim_shared::codec::DEFAULT_MAX_LINE,
            tls: None,
            tls_handshake_timeout: msim_shared::tls::HANDSHAKE_TIMEOUT,
        }
    }
}

/// Options of [`Client::login_with`].
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct LoginOptions {
    /// A device cookie from an earlier `CONNECT-OK` of the same login (PROTOCOL.md §4.3).
    pub device: Option<String>,
}

impl LoginOptions {
    /// Options presenting `device` (None: no cookie).
    pub fn with_device(device: Option<String>) -> LoginOptions {
        LoginOptions { device }
    }
}

/// Pushed events from the server: messages, receipts, typing, presence, contact updates, file
/// offers and grants not claimed by a waiting call, and error packets that answer no request.
///
/// Ends (`None`) when the connection closes. Implements [`Stream`].
#[derive(Debug)]
pub struct Events {
    rx: mpsc::Receiver<Event>,
}

impl Events {
    /// The next event, or `None` once the connection is closed.
    pub async fn recv(&mut self) -> Option<Event> {
        self.rx.recv().await
    }
}

impl Stream for Events {
    type Item = Event;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.rx.poll_recv(cx)
    }
}

struct Inner {
    out: mpsc::Sender<Packet>,
    router: Mutex<Router>,
    next_ref: AtomicU64,
    session: Mutex<Option<ConnectOk>>,
    options: ClientOptions,
    reader: tokio::task::AbortHandle,
    writer: tokio::task::AbortHandle,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.reader.abort();
        self.writer.abort();
    }
}

/// A connection to an msim-chat server. Cheap to clone; every clone shares the connection,
/// and requests from several tasks are pipelined (each carries its own `ref=`).
///
/// The connection closes when the last clone is dropped.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("session", &self.session())
            .finish_non_exhaustive()
    }
}

/// A file offer the server accepted (`SEND-FILE-PROXY-PENDING`); wait for the recipient's
/// answer with [`OutgoingOffer::answer`].
#[derive(Debug)]
pub struct OutgoingOffer {
    /// What the server said.
    pub pending: FilePending,
    client: Client,
}

impl OutgoingOffer {
    /// The transfer id.
    pub fn transfer_id(&self) -> &str {
        &self.pending.transfer_id
    }

    /// Waits until the recipient accepts (the upload grant, `SEND-FILE-PROXY-OK`) or the
    /// transfer is rejected or expires ([`ClientError::FileRejected`]). No timeout: wrap it
    /// in `tokio::time::timeout` to give up earlier than the offer's expiry.
    pub async fn answer(&self) -> Result<UploadGrant, ClientError> {
        let rx = self
            .client
            .router()
            .wait_transfer(&self.pending.transfer_id)
            .ok_or_else(|| ClientError::Protocol("too many watched transfers".into()))?;
        match rx.await.map_err(|_| ClientError::Closed)? {
            Event::UploadGrant(grant) => Ok(grant),
            Event::FileRejected(r) => Err(ClientError::FileRejected {
                transfer_id: r.transfer_id,
                reason: r.reason,
            }),
            other => Err(unexpected(&other)),
        }
    }
}

impl Drop for OutgoingOffer {
    fn drop(&mut self) {
        self.client
            .router()
            .disarm_transfer(&self.pending.transfer_id);
    }
}

pub(crate) fn unexpected(event: &Event) -> ClientError {
    ClientError::Protocol(format!("unexpected answer {}", event.verb()))
}

/// Turns an `ERROR-…` answer into an error; other events pass through.
fn check_error(event: Event) -> Result<Event, ClientError> {
    match event {
        Event::ErrorRateLimited(e) => Err(ClientError::RateLimited(e.retry_after)),
        Event::ErrorNotLoggedIn(_) => Err(ClientError::NotLoggedIn),
        Event::ErrorMalformed(e) => Err(ClientError::Server {
            verb: ErrorMalformed::VERB.into(),
            detail: match e.detail {
                Some(d) => format!("{} ({d})", e.reason),
                None => e.reason,
            },
        }),
        Event::ErrorBadState(e) => Err(ClientError::Server {
            verb: ErrorBadState::VERB.into(),
            detail: e.verb,
        }),
        Event::ErrorNotImplemented(e) => Err(ClientError::Server {
            verb: ErrorNotImplemented::VERB.into(),
            detail: e.verb,
        }),
        Event::ErrorLineTooLong(e) => Err(ClientError::Server {
            verb: ErrorLineTooLong::VERB.into(),
            detail: format!("max {}", e.max),
        }),
        other => Ok(other),
    }
}

/// A sent request's answer, to wait for.
pub(crate) struct Answer<'a> {
    rx: oneshot::Receiver<Event>,
    _guard: PendingGuard<'a>,
}

impl Answer<'_> {
    /// The answer within the request timeout (an error packet as an error).
    pub(crate) async fn answer(self) -> Result<Event, ClientError> {
        let timeout = self._guard.client.inner.options.request_timeout;
        let answer = tokio::time::timeout(timeout, self.rx)
            .await
            .map_err(|_| ClientError::Timeout)?
            .map_err(|_| ClientError::Closed)?;
        check_error(answer)
    }
}

/// Removes a pending request from the router when its caller stops waiting.
struct PendingGuard<'a> {
    client: &'a Client,
    reference: String,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.client.router().forget(&self.reference);
    }
}

impl Client {
    /// Connects to a server (`host:port`) with default options. Returns the client and the
    /// stream of pushed events; drop the [`Events`] if you do not want them.
    pub async fn connect(addr: impl ToSocketAddrs) -> Result<(Client, Events), ClientError> {
        Client::connect_with(addr, ClientOptions::default()).await
    }

    /// Connects with explicit options.
    pub async fn connect_with(
        addr: impl ToSocketAddrs,
        options: ClientOptions,
    ) -> Result<(Client, Events), ClientError> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Client::from_stream(stream, options))
    }

    /// Connects to a server given as `HOST:PORT` (plain TCP) or `tls://HOST:PORT` (TLS; the
    /// certificate is verified for HOST against `options.tls`, or the bundled public roots).
    pub async fn connect_to(
        server: &str,
        options: ClientOptions,
    ) -> Result<(Client, Events), ClientError> {
        match ServerAddr::parse(server)? {
            ServerAddr::Plain(addr) => Client::connect_with(addr.as_str(), options).await,
            ServerAddr::Tls { host, addr } => {
                let stream = TcpStream::connect(addr.as_str()).await?;
                stream.set_nodelay(true)?;
                let config = options
                    .tls
                    .clone()
                    .unwrap_or_else(msim_shared::tls::default_client_config);
                let tls =
                    msim_shared::tls::connect(config, &host, stream, options.tls_handshake_timeout)
                        .await
                        .map_err(|e| tls_error(&host, &e))?;
                Ok(Client::from_stream(tls, options))
            }
        }
    }

    /// Runs the protocol over an already connected byte stream (a TCP socket, a TLS stream).
    pub fn from_stream<S>(stream: S, options: ClientOptions) -> (Client, Events)
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (read, write) = tokio::io::split(stream);
        let (out_tx, mut out_rx) = mpsc::channel::<Packet>(options.send_buffer.max(1));
        let (event_tx, event_rx) = mpsc::channel(options.event_buffer.max(1));

        let mut sink = FramedWrite::new(write, PacketCodec::new(options.max_line));
        let writer = tokio::spawn(async move {
            while let Some(packet) = out_rx.recv().await {
                tracing::trace!(%packet, "send");
                if let Err(error) = sink.send(packet).await {
                    tracing::debug!(%error, "write failed");
                    break;
                }
            }
        });

        let inner = Arc::new_cyclic(|weak: &std::sync::Weak<Inner>| {
            let weak = weak.clone();
            let pong_tx = out_tx.clone();
            let frames = FramedRead::new(read, PacketCodec::new(options.max_line));
            let reader = tokio::spawn(read_loop(frames, weak, pong_tx, event_tx));
            Inner {
                out: out_tx,
                router: Mutex::new(Router::default()),
                next_ref: AtomicU64::new(1),
                session: Mutex::new(None),
                options,
                reader: reader.abort_handle(),
                writer: writer.abort_handle(),
            }
        });
        (Client { inner }, Events { rx: event_rx })
    }

    fn router(&self) -> MutexGuard<'_, Router> {
        // A panic while holding the lock cannot leave the router inconsistent in a way that
        // matters more than losing the connection, so recover the guard.
        self.inner
            .router
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The session's capabilities after a successful [`Client::login`].
    pub fn session(&self) -> Option<ConnectOk> {
        self.inner
            .session
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The canonical address after login.
    pub fn me(&self) -> Option<String> {
        self.session().map(|s| s.login)
    }

    /// The device cookie the server handed out at login (`CONNECT-OK device=`), to present
    /// with [`LoginOptions::device`] next time. Secret: store it like a password (mode 0600).
    pub fn device_cookie(&self) -> Option<String> {
        self.session().and_then(|s| s.device)
    }

    fn new_ref(&self) -> String {
        format!("c{}", self.inner.next_ref.fetch_add(1, Ordering::Relaxed))
    }

    async fn send_packet(&self, packet: Packet) -> Result<(), ClientError> {
        self.inner
            .out
            .send(packet)
            .await
            .map_err(|_| ClientError::Closed)
    }

    /// Sends a request with a fresh `ref=` and waits for one of `expects` (or an error
    /// packet, returned as an error).
    pub(crate) async fn request(
        &self,
        request: impl Into<Request>,
        expects: &'static [&'static str],
    ) -> Result<Event, ClientError> {
        self.send_request(request, expects).await?.answer().await
    }

    /// Sends a request with a fresh `ref=` (queued behind every packet sent before);
    /// [`Answer::answer`] then waits for one of `expects`.
    pub(crate) async fn send_request(
        &self,
        request: impl Into<Request>,
        expects: &'static [&'static str],
    ) -> Result<Answer<'_>, ClientError> {
        let request = request.into();
        let reference = self.new_ref();
        let mut packet = request.to_packet();
        packet.fields.set("ref", reference.as_str());
        let rx = self.router().register(&reference, request.verb(), expects);
        let guard = PendingGuard {
            client: self,
            reference,
        };
        self.send_packet(packet).await?;
        Ok(Answer { rx, _guard: guard })
    }

    /// Sends a request that has no success answer, then a `PING` as a barrier: the server
    /// handles a connection's packets in order, so a failure answer arrives before the
    /// `PONG`. Returns the failure answer, if any.
    async fn request_no_ack(
        &self,
        request: impl Into<Request>,
        failures: &'static [&'static str],
    ) -> Result<Option<Event>, ClientError> {
        let request = request.into();
        let reference = self.new_ref();
        let mut packet = request.to_packet();
        packet.fields.set("ref", reference.as_str());
        let mut rx = self.router().register(&reference, request.verb(), failures);
        let _guard = PendingGuard {
            client: self,
            reference,
        };
        self.send_packet(packet).await?;
        self.ping().await?;
        match rx.try_recv() {
            Ok(event) => check_error(event).map(Some),
            Err(oneshot::error::TryRecvError::Empty) => Ok(None),
            Err(oneshot::error::TryRecvError::Closed) => Err(ClientError::Closed),
        }
    }

    /// Sends a request without waiting for anything.
    async fn notify(&self, request: impl Into<Request>) -> Result<(), ClientError> {
        self.send_packet(request.into().to_packet()).await
    }
}

/// A TLS handshake failure as a [`ClientError`].
pub(crate) fn tls_error(host: &str, e: &std::io::Error) -> ClientError {
    ClientError::Tls {
        host: host.to_owned(),
        message: msim_shared::tls::describe(e),
        certificate: msim_shared::tls::is_certificate_error(e),
    }
}

/// A server address: `HOST:PORT` or `tls://HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerAddr {
    /// Plain TCP to `HOST:PORT`.
    Plain(String),
    /// TLS to `addr` (`HOST:PORT`), the certificate checked for `host`.
    Tls {
        /// The host name (or IP address) the certificate must be valid for.
        host: String,
        /// `HOST:PORT` to connect to.
        addr: String,
    },
}

impl ServerAddr {
    /// Parses `HOST:PORT` or `tls://HOST:PORT` (IPv6 hosts in brackets).
    pub fn parse(server: &str) -> Result<ServerAddr, ClientError> {
        let bad = |why: &str| {
            ClientError::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("bad server address {server:?}: {why}"),
            ))
        };
        let Some(rest) = server.strip_prefix("tls://") else {
            if server.contains("://") {
                return Err(bad("expected HOST:PORT or tls://HOST:PORT"));
            }
            return Ok(ServerAddr::Plain(server.to_owned()));
        };
        let rest = rest.trim_end_matches('/');
        let (host, port) = rest
            .rsplit_once(':')
            .ok_or_else(|| bad("expected tls://HOST:PORT"))?;
        if host.is_empty() || host.contains('/') {
            return Err(bad("expected tls://HOST:PORT"));
        }
        port.parse::<u16>().map_err(|_| bad("bad port"))?;
        Ok(ServerAddr::Tls {
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            addr: rest.to_owned(),
        })
    }
}

/// The connection's reader: answers PINGs, routes replies, forwards events.
async fn read_loop<R: AsyncRead + Unpin>(
    mut frames: FramedRead<R, PacketCodec>,
    inner: std::sync::Weak<Inner>,
    out: mpsc::Sender<Packet>,
    events: mpsc::Sender<Event>,
) {
    let mut events = Some(events);
    while let Some(item) = frames.next().await {
        let packet = match item {
            Ok(Ok(packet)) => packet,
            Ok(Err(error)) => {
                tracing::warn!(%error, "malformed packet from the server");
                continue;
            }
            Err(error) => {
                tracing::debug!(%error, "read failed");
                break;
            }
        };
        tracing::trace!(%packet, "recv");
        let event = match Event::from_packet(&packet) {
            Ok(event) => event,
            Err(error) => {
                tracing::warn!(%error, verb = %packet.verb, "undecodable packet from the server");
                continue;
            }
        };
        if let Event::Ping(_) = event {
            let pong = Packet::new(Pong::VERB).with_opt("ref", packet.reference());
            if out.send(pong).await.is_err() {
                break;
            }
            continue;
        }
        let Some(inner) = inner.upgrade() else { break };
        let routed = inner
            .router
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .route(&packet, event);
        drop(inner);
        if let (Some(event), Some(tx)) = (routed, events.as_ref()) {
            if tx.send(event).await.is_err() {
                // Nobody listens; keep routing replies.
                events = None;
            }
        }
    }
    // Pending requests see their senders dropped (ClientError::Closed).
    if let Some(inner) = inner.upgrade() {
        inner
            .router
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .close();
    }
}

#[cfg(test)]
mod tests {
    use super::ServerAddr;

    #[test]
    fn server_addresses() {
        assert_eq!(
            ServerAddr::parse("127.0.0.1:3214").ok(),
            Some(ServerAddr::Plain("127.0.0.1:3214".into()))
        );
        assert_eq!(
            ServerAddr::parse("tls://chat.example.org:3214").ok(),
            Some(ServerAddr::Tls {
                host: "chat.example.org".into(),
                addr: "chat.example.org:3214".into()
            })
        );
        assert_eq!(
            ServerAddr::parse("tls://[::1]:3214").ok(),
            Some(ServerAddr::Tls {
                host: "::1".into(),
                addr: "[::1]:3214".into()
            })
        );
        for bad in [
            "tls://host",
            "tls://:3214",
            "tls://host:port",
            "https://host:3214",
        ] {
            assert!(ServerAddr::parse(bad).is_err(), "{bad}");
        }
    }
}
