//! The relay pool: transfers are spread round-robin over the relays that pass their health
//! check (`GET /healthz` → 200). A relay starts healthy; one that fails a check gets no new
//! transfers until it passes again.

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// One relay.
#[derive(Debug)]
pub struct Relay {
    /// Base URL without trailing slash, e.g. `http://127.0.0.1:3215`.
    pub base: String,
    /// Host for `connect=`.
    pub host: String,
    /// Port for `port=`.
    pub port: u16,
    healthy: AtomicBool,
}

impl Relay {
    /// Whether the last health check passed.
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// The URL of a transfer on this relay.
    pub fn transfer_url(&self, id: &str) -> String {
        format!("{}/v1/transfers/{}", self.base, id)
    }
}

/// A relay URL could not be used.
#[derive(Debug, thiserror::Error)]
#[error("bad relay URL {0:?}: expected http://host:port")]
pub struct BadRelayUrl(pub String);

/// The relays of this server.
#[derive(Debug, Default)]
pub struct RelayPool {
    relays: Vec<Arc<Relay>>,
    next: AtomicUsize,
}

impl RelayPool {
    /// A pool of the given base URLs.
    pub fn new(urls: &[String]) -> Result<RelayPool, BadRelayUrl> {
        let mut relays = Vec::new();
        for u in urls {
            let base = u.trim_end_matches('/').to_owned();
            let uri: http::Uri = base.parse().map_err(|_| BadRelayUrl(u.clone()))?;
            let host = uri.host().ok_or_else(|| BadRelayUrl(u.clone()))?.to_owned();
            let port = uri.port_u16().unwrap_or(match uri.scheme_str() {
                Some("https") => 443,
                _ => 80,
            });
            relays.push(Arc::new(Relay {
                base,
                host,
                port,
                healthy: AtomicBool::new(true),
            }));
        }
        Ok(RelayPool {
            relays,
            next: AtomicUsize::new(0),
        })
    }

    /// The relays.
    pub fn relays(&self) -> &[Arc<Relay>] {
        &self.relays
    }

    /// The next healthy relay, round-robin.
    pub fn pick(&self) -> Option<Arc<Relay>> {
        let n = self.relays.len();
        for _ in 0..n {
            let i = self.next.fetch_add(1, Ordering::Relaxed) % n;
            if self.relays[i].healthy() {
                return Some(self.relays[i].clone());
            }
        }
        None
    }

    /// The relay [`RelayPool::pick`] would return, without advancing the round robin; call
    /// [`RelayPool::used`] once it is really used (failed answers must not skew the rotation).
    pub fn peek(&self) -> Option<Arc<Relay>> {
        let n = self.relays.len();
        let start = self.next.load(Ordering::Relaxed);
        (0..n)
            .map(|k| &self.relays[(start + k) % n])
            .find(|r| r.healthy())
            .cloned()
    }

    /// Advances the round robin past `relay` (after [`RelayPool::peek`]).
    pub fn used(&self, relay: &Relay) {
        if let Some(i) = self.relays.iter().position(|r| r.base == relay.base) {
            self.next.store(i + 1, Ordering::Relaxed);
        }
    }

    /// Whether any relay is healthy now (does not advance the round robin).
    pub fn any_healthy(&self) -> bool {
        self.relays.iter().any(|r| r.healthy())
    }

    /// A relay by base URL (for offers accepted before a restart).
    pub fn by_base(&self, base: &str) -> Option<Arc<Relay>> {
        self.relays.iter().find(|r| r.base == base).cloned()
    }

    /// Checks every relay once.
    pub async fn check_all(&self, timeout: Duration) {
        let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        for r in &self.relays {
            let ok = match format!("{}/healthz", r.base).parse::<http::Uri>() {
                Ok(uri) => matches!(
                    tokio::time::timeout(timeout, client.get(uri)).await,
                    Ok(Ok(resp)) if resp.status().is_success()
                ),
                Err(_) => false,
            };
            let was = r.healthy.swap(ok, Ordering::Relaxed);
            if was != ok {
                if ok {
                    info!(relay = %r.base, "relay healthy again");
                } else {
                    warn!(relay = %r.base, "relay unhealthy: no new transfers");
                }
            }
        }
    }

    /// Runs health checks every `every` until `stop` is cancelled.
    pub async fn health_loop(
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
