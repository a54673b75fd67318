//! The relay pool: transfers are spread round-robin over the relays that pass their health
//! check (`GET /healthz` → 200, over TLS for `https://` relays). A relay starts healthy; one
//! that fails a check gets no new transfers until it passes again.

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use msim_shared::tls::rustls::ClientConfig;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// One relay.
#[derive(Debug)]
pub struct Relay {
    /// Public base URL without trailing slash, e.g. `http://127.0.0.1:3215`: handed to clients.
    pub(crate) base: String,
    /// Host for `connect=`.
    pub(crate) host: String,
    /// Port for `port=`.
    pub(crate) port: u16,
    /// Where msim-chat itself checks the relay's health: the internal URL when one is given
    /// (`PUBLIC=INTERNAL`, e.g. inside a compose network), otherwise the public one.
    check: Endpoint,
    healthy: AtomicBool,
}

/// Host, port and scheme of a relay URL.
#[derive(Debug, Clone)]
struct Endpoint {
    base: String,
    host: String,
    port: u16,
    https: bool,
}

impl Endpoint {
    fn parse(url: &str, given: &str) -> Result<Endpoint, BadRelayUrl> {
        let base = url.trim_end_matches('/').to_owned();
        let bad = || BadRelayUrl(given.to_owned());
        let uri: http::Uri = base.parse().map_err(|_| bad())?;
        let host = uri.host().ok_or_else(bad)?.to_owned();
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(bad()),
        };
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        Ok(Endpoint {
            base,
            host,
            port,
            https,
        })
    }
}

impl Relay {
    /// Whether the last health check passed.
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// The URL of a transfer on this relay.
    pub(crate) fn transfer_url(&self, id: &str) -> String {
        format!("{}/v1/transfers/{}", self.base, id)
    }
}

/// A relay URL could not be used.
#[derive(Debug, thiserror::Error)]
#[error(
    "bad relay URL {0:?}: expected http(s)://host:port, or PUBLIC=INTERNAL \
     (the URL handed to clients = the URL msim-chat checks health at)"
)]
pub struct BadRelayUrl(pub String);

/// One `GET /healthz` request over `io`.
async fn get_healthz<S>(io: S, r: &Endpoint) -> Result<http::StatusCode, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("http: {e}"))?;
    let conn = tokio::spawn(conn);
    let authority = if r.host.contains(':') && !r.host.starts_with('[') {
        format!("[{}]:{}", r.host, r.port)
    } else {
        format!("{}:{}", r.host, r.port)
    };
    let req = http::Request::get("/healthz")
        .header(http::header::HOST, authority)
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("http: {e}"))?;
    let result = sender.send_request(req).await;
    conn.abort();
    result
        .map(|resp| resp.status())
        .map_err(|e| format!("http: {e}"))
}

/// The relays of this server.
#[derive(Debug, Default)]
pub struct RelayPool {
    relays: Vec<Arc<Relay>>,
    next: AtomicUsize,
    /// Trust for `https://` relays (None: the bundled default roots).
    tls: Option<Arc<ClientConfig>>,
}

impl RelayPool {
    /// A pool of the given relays: each a base URL (`http://relay1:3215`), or
    /// `PUBLIC=INTERNAL` — the URL handed to clients, then the URL where msim-chat checks
    /// the relay's health (a relay behind a public name or port mapping).
    pub fn new(urls: &[String]) -> Result<RelayPool, BadRelayUrl> {
        let mut relays = Vec::new();
        for u in urls {
            let (public, internal) = match u.split_once('=') {
                Some((public, internal)) => (public, internal),
                None => (u.as_str(), u.as_str()),
            };
            let public = Endpoint::parse(public, u)?;
            let check = Endpoint::parse(internal, u)?;
            relays.push(Arc::new(Relay {
                base: public.base,
                host: public.host,
                port: public.port,
                check,
                healthy: AtomicBool::new(true),
            }));
        }
        Ok(RelayPool {
            relays,
            next: AtomicUsize::new(0),
            tls: None,
        })
    }

    /// Sets the trust for `https://` relays (None: the bundled default roots).
    pub fn with_tls(mut self, tls: Option<Arc<ClientConfig>>) -> RelayPool {
        self.tls = tls;
        self
    }

    /// The relays.
    pub fn relays(&self) -> &[Arc<Relay>] {
        &self.relays
    }

    /// The next healthy relay, round-robin, without advancing the round robin; call
    /// [`RelayPool::used`] once it is really used (failed answers must not skew the rotation).
    pub(crate) fn peek(&self) -> Option<Arc<Relay>> {
        let n = self.relays.len();
        let start = self.next.load(Ordering::Relaxed);
        (0..n)
            .map(|k| &self.relays[(start + k) % n])
            .find(|r| r.healthy())
            .cloned()
    }

    /// Advances the round robin past `relay` (after [`RelayPool::peek`]).
    pub(crate) fn used(&self, relay: &Relay) {
        if let Some(i) = self.relays.iter().position(|r| r.base == relay.base) {
            self.next.store(i + 1, Ordering::Relaxed);
        }
    }

    /// Whether any relay is healthy now (does not advance the round robin).
    pub(crate) fn any_healthy(&self) -> bool {
        self.relays.iter().any(|r| r.healthy())
    }

    /// Checks every relay once.
    pub async fn check_all(&self, timeout: Duration) {
        for r in &self.relays {
            let result = match tokio::time::timeout(timeout, self.check(r, timeout)).await {
                Ok(r) => r,
                Err(_) => Err("health check timed out".to_owned()),
            };
            let ok = result.is_ok();
            let was = r.healthy.swap(ok, Ordering::Relaxed);
            match result {
                Ok(()) if !was => {
                    info!(relay = %r.base, checked = %r.check.base, "relay healthy again")
                }
                Err(e) if was => {
                    warn!(relay = %r.base, checked = %r.check.base, "relay unhealthy: no new transfers: {e}")
                }
                _ => {}
            }
        }
    }

    /// `GET /healthz` on a fresh connection (TLS for `https://`).
    async fn check(&self, r: &Relay, timeout: Duration) -> Result<(), String> {
        let r = &r.check;
        let host = r.host.trim_start_matches('[').trim_end_matches(']');
        let tcp = tokio::net::TcpStream::connect((host, r.port))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let status = if r.https {
            let config = self
                .tls
                .clone()
                .unwrap_or_else(msim_shared::tls::default_client_config);
            let tls = msim_shared::tls::connect(config, host, tcp, timeout)
                .await
                .map_err(|e| format!("TLS: {}", msim_shared::tls::describe(&e)))?;
            get_healthz(tls, r).await?
        } else {
            get_healthz(tcp, r).await?
        };
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("GET /healthz answered {status}"))
        }
    }

    /// Runs health checks every `every` until `stop` is cancelled.
    pub(crate) async fn health_loop(
        self: Arc<Self>,
        every: Duration,
        timeout: Duration,
        stop: CancellationToken,
    ) {
        if self.relays.is_empty() {
            return;
        }
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => self.check_all(timeout).await,
            }
        }
    }
}
