//! Federation (PROTOCOL.md §12): users of different mSIM servers talk to each other.
//!
//! - [`keys`]: the server's Ed25519 key and the DNS TXT record format;
//! - [`dns`]: key, SRV and address lookups with timeouts and a bounded key cache;
//! - [`handshake`]: the signed challenge bound to the TLS session;
//! - [`inbound`]: the s2s listener and what a peer may send us;
//! - [`outbound`]: one dialer task per peer draining its durable queue;
//! - [`hooks`]: what the client commands call for remote addresses;
//! - [`subscriptions`]: remote contacts' presence and profile changes, sent only when asked;
//! - [`files`]: file offers across servers (the file stays on the sender's relay).

pub mod dns;
pub(crate) mod files;
pub mod handshake;
pub(crate) mod hooks;
pub(crate) mod inbound;
pub mod keys;
pub(crate) mod outbound;
pub mod policy;
pub(crate) mod queue;
pub(crate) mod subscriptions;
pub mod tls;

pub use policy::{FederationConfig, Mode};

use crate::server::Shared;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Live (never queued) packets waiting for a peer's link, e.g. typing.
const LIVE_QUEUE: usize = 64;

/// A live packet for a peer's link; a request carries where its answer goes.
pub(crate) struct Live {
    pub packet: msim_shared::Packet,
    pub reply: Option<tokio::sync::oneshot::Sender<msim_shared::Packet>>,
}

/// A peer's outbound side.
pub(crate) struct Peer {
    /// Woken when something is queued for the peer.
    pub wake: Arc<Notify>,
    /// Live packets; only filled while the link is up.
    pub live: mpsc::Sender<Live>,
    /// Whether the link is up (authenticated).
    pub up: Arc<std::sync::atomic::AtomicBool>,
    /// Requests waiting for an answer: the link is dialed (and kept) for them.
    pub wanted: Arc<std::sync::atomic::AtomicUsize>,
    /// The last attempt to reach the peer failed (requests fail at once until it is back).
    pub down: Arc<std::sync::atomic::AtomicBool>,
}

/// Federation state shared by the server.
pub struct Federation {
    /// Settings.
    pub config: FederationConfig,
    /// Our domain.
    pub domain: String,
    pub(crate) key: keys::ServerKey,
    pub(crate) dns: dns::Dns,
    pub(crate) tls_server: Arc<msim_shared::tls::rustls::ServerConfig>,
    pub(crate) tls_client: Arc<msim_shared::tls::rustls::ClientConfig>,
    peers: Mutex<HashMap<String, Peer>>,
    /// Message ids being stored from any inbound link (a resend on a new link waits).
    pub(crate) inflight: Mutex<std::collections::HashSet<String>>,
    /// When each local user last renewed its subscriptions (at most once a minute).
    pub(crate) renewals: subscriptions::Renewals,
    /// Cancelled at shutdown: stops the peer tasks.
    pub(crate) stop: CancellationToken,
    /// The outbound queue's writer (set at start).
    queue: std::sync::OnceLock<queue::QueueWriter>,
    /// The server's state, for the peer tasks (set at start; weak: the server owns us).
    shared: std::sync::OnceLock<std::sync::Weak<Shared>>,
}

impl std::fmt::Debug for Federation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Federation({})", self.domain)
    }
}

/// Start-up failure.
#[derive(Debug, thiserror::Error)]
pub enum FederationError {
    /// The key.
    #[error(transparent)]
    Key(#[from] keys::KeyError),
    /// I/O (resolver, listener).
    #[error("federation: {0}")]
    Io(#[from] std::io::Error),
    /// TLS set-up.
    #[error("federation TLS: {0}")]
    Tls(String),
}

impl Federation {
    /// Loads the key and builds the resolver and TLS configurations.
    pub fn new(
        config: FederationConfig,
        domain: &str,
        data_dir: &std::path::Path,
        tls: Option<Arc<msim_shared::tls::rustls::ServerConfig>>,
    ) -> Result<Federation, FederationError> {
        let key = keys::load_newest(data_dir, domain)?;
        let dns = dns::Dns::new(config.dns_server, config.dns)?;
        let tls_server = match tls {
            Some(t) => t,
            None => tls::self_signed(domain).map_err(FederationError::Tls)?,
        };
        info!(%domain, kid = %key.kid, mode = ?config.mode, "federation on");
        Ok(Federation {
            config,
            domain: domain.to_owned(),
            key,
            dns,
            tls_server,
            tls_client: tls::any_certificate(),
            peers: Mutex::new(HashMap::new()),
            inflight: Mutex::new(Default::default()),
            renewals: Default::default(),
            stop: CancellationToken::new(),
            queue: std::sync::OnceLock::new(),
            shared: std::sync::OnceLock::new(),
        })
    }

    /// Wakes (starting if needed) the dialer of `peer`.
    pub(crate) fn wake(&self, peer: &str) {
        let Some(sh) = self.shared.get().and_then(std::sync::Weak::upgrade) else {
            return;
        };
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = peers.get(peer) {
            p.wake.notify_one();
            return;
        }
        let (tx, rx) = mpsc::channel(LIVE_QUEUE);
        let p = Peer {
            wake: Arc::new(Notify::new()),
            live: tx,
            up: Default::default(),
            wanted: Default::default(),
            down: Default::default(),
        };
        p.wake.notify_one();
        let task = outbound::PeerTask {
            sh: sh.clone(),
            peer: peer.to_owned(),
            wake: p.wake.clone(),
            up: p.up.clone(),
            wanted: p.wanted.clone(),
            down: p.down.clone(),
            live: rx,
            stop: self.stop.clone(),
        };
        peers.insert(peer.to_owned(), p);
        tokio::spawn(task.run());
    }

    /// Called by a peer task that found nothing to do and ends: later wakes start a new one.
    pub(crate) fn retire(&self, peer: &str, wake: &Arc<Notify>) {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        if peers.get(peer).is_some_and(|p| Arc::ptr_eq(&p.wake, wake)) {
            peers.remove(peer);
        }
    }

    /// The queue writer (federation has started).
    pub(crate) fn queue(&self) -> &queue::QueueWriter {
        self.queue.get().expect("federation started")
    }

    /// Sends a request to `peer` (dialing if needed) and waits for its answer, at most
    /// `within`; `None` when there was none (peer unreachable, busy or silent).
    pub(crate) async fn request(
        &self,
        peer: &str,
        packet: msim_shared::Packet,
        within: std::time::Duration,
    ) -> Option<msim_shared::Packet> {
        use std::sync::atomic::Ordering;
        self.wake(peer);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let wanted = {
            let peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
            let p = peers.get(peer)?;
            p.live
                .try_send(Live {
                    packet,
                    reply: Some(tx),
                })
                .ok()?;
            p.wake.notify_one();
            if p.down.load(Ordering::Relaxed) {
                // Unreachable at the last attempt: answer now; the request (its answer
                // discarded) still makes the peer task try again.
                return None;
            }
            p.wanted.fetch_add(1, Ordering::Relaxed);
            p.wanted.clone()
        };
        let answer = tokio::time::timeout(within, rx)
            .await
            .ok()
            .and_then(Result::ok);
        wanted.fetch_sub(1, Ordering::Relaxed);
        answer
    }

    /// Sends a live packet if the peer's link is up; otherwise it is dropped.
    pub(crate) fn send_live(&self, peer: &str, p: msim_shared::Packet) {
        let peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(peer) = peers.get(peer) {
            if peer.up.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = peer.live.try_send(Live {
                    packet: p,
                    reply: None,
                });
            }
        }
    }
}

/// Starts federation's background work: the s2s listener, the dialers of peers with queued
/// items, and the expiry job. Returns the tasks to await at shutdown.
pub(crate) async fn start(
    sh: Arc<Shared>,
) -> Result<Vec<tokio::task::JoinHandle<()>>, FederationError> {
    let Some(fed) = sh.federation.clone() else {
        return Ok(Vec::new());
    };
    let stop = fed.stop.clone();
    sh.db
        .federation_tables()
        .await
        .map_err(|e| FederationError::Io(std::io::Error::other(e)))?;
    let writer = queue::QueueWriter::start(sh.db.clone(), fed.config.queue_max_per_peer)
        .await
        .map_err(|e| FederationError::Io(std::io::Error::other(e)))?;
    let _ = fed.queue.set(writer);
    let _ = fed.shared.set(Arc::downgrade(&sh));
    let listener = match &fed.config.s2s_listener {
        Some(l) => {
            let l = l.try_clone()?;
            l.set_nonblocking(true)?;
            tokio::net::TcpListener::from_std(l)?
        }
        None => tokio::net::TcpListener::bind(fed.config.s2s_listen).await?,
    };
    info!(addr = ?listener.local_addr().ok(), "s2s listening");
    let mut tasks = vec![tokio::spawn(inbound::accept_loop(
        sh.clone(),
        listener,
        stop.clone(),
    ))];
    match sh.db.federation_peers().await {
        Ok(peers) => {
            for p in peers {
                fed.wake(&p);
            }
        }
        Err(e) => warn!("federation queue: {e}"),
    }
    tasks.push(tokio::spawn(outbound::expiry_loop(sh.clone(), stop)));
    Ok(tasks)
}
