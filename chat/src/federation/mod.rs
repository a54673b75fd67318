//! Federation (PROTOCOL.md §12): users of different mSIM servers talk to each other.
//!
//! - [`keys`]: the server's Ed25519 key and the DNS TXT record format;
//! - [`domain`]: the one canonical form of a domain name;
//! - [`dns`]: key, SRV and address lookups with timeouts; [`key_cache`] bounds and pins keys;
//! - [`handshake`]: the signed challenge bound to the TLS session;
//! - [`inbound`]: the s2s listener and what a peer may send us; [`guard`] limits
//!   unauthenticated connections per address and packets per peer domain;
//! - [`outbound`]: one dialer task per peer draining its durable queue;
//! - [`hooks`]: what the client commands call for remote addresses;
//! - [`subscriptions`]: remote contacts' presence and profile changes, sent only when asked;
//! - [`files`]: file offers across servers (the file stays on the sender's relay).

pub(crate) mod answers;
pub mod dns;
pub mod domain;
pub(crate) mod drain;
pub(crate) mod file_refusals;
pub(crate) mod files;
mod grant_url;
pub(crate) mod guard;
pub mod handshake;
pub(crate) mod hooks;
pub(crate) mod inbound;
pub(crate) mod key_cache;
pub mod keys;
pub(crate) mod links;
pub(crate) mod outbound;
pub mod policy;
pub(crate) mod queue;
pub(crate) mod sub_lifetime;
pub(crate) mod subscriptions;
pub mod tls;

pub use policy::{FederationConfig, Mode};

use crate::server::Shared;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
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
    /// Counts wakes (bumped under the peers lock): a task retires only if none came since it
    /// last looked at the queue, so a wake-up cannot fall between its look and its exit.
    pub wakes: Arc<AtomicU64>,
    /// Live packets; only filled while the link is up.
    pub live: mpsc::Sender<Live>,
    /// Whether the link is up (authenticated).
    pub up: Arc<std::sync::atomic::AtomicBool>,
    /// Requests waiting for an answer: the link is dialed (and kept) for them.
    pub wanted: Arc<std::sync::atomic::AtomicUsize>,
    /// The last attempt to reach the peer failed (requests fail at once until it is back).
    pub down: Arc<std::sync::atomic::AtomicBool>,
}

impl Peer {
    /// Wakes the task (call with the peers lock held).
    fn poke(&self) {
        self.wakes.fetch_add(1, Ordering::SeqCst);
        self.wake.notify_one();
    }
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
    /// Unauthenticated connections per address, packets per authenticated peer domain.
    pub(crate) guard: guard::Guard,
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
        // s2s is TLS 1.3 only (the exporter binds the handshake), whatever the client port
        // allows: the operator's certificate is reused, its protocol versions are not.
        let tls_server = match tls {
            Some(t) => tls::tls13_only(&t).map_err(FederationError::Tls)?,
            None => tls::self_signed(domain).map_err(FederationError::Tls)?,
        };
        info!(%domain, kid = %key.kid, mode = ?config.mode, "federation on");
        Ok(Federation {
            guard: guard::Guard::new(&config),
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
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        // Peers with queued items are bounded by the queue (`max_peers` for local senders'
        // items, and as many again for replies to peers): always served.
        if let Some(p) = self.task_locked(&mut peers, peer, false) {
            p.poke();
        }
    }

    /// `peer`'s task, started if needed, with the peers lock held; `None` when no task may be
    /// started (federation not started yet, or `limited` and `max_peers` tasks run already).
    fn task_locked<'a>(
        &self,
        peers: &'a mut HashMap<String, Peer>,
        peer: &str,
        limited: bool,
    ) -> Option<&'a Peer> {
        let sh = self.shared.get().and_then(std::sync::Weak::upgrade)?;
        if !peers.contains_key(peer) {
            if limited && peers.len() >= self.config.max_peers {
                warn!(%peer, "federation: too many peers at once; request refused");
                return None;
            }
            let (tx, rx) = mpsc::channel(LIVE_QUEUE);
            let p = Peer {
                wake: Arc::new(Notify::new()),
                wakes: Default::default(),
                live: tx,
                up: Default::default(),
                wanted: Default::default(),
                down: Default::default(),
            };
            let task = outbound::PeerTask {
                sh,
                peer: peer.to_owned(),
                wake: p.wake.clone(),
                wakes: p.wakes.clone(),
                up: p.up.clone(),
                wanted: p.wanted.clone(),
                down: p.down.clone(),
                live: rx,
                stop: self.stop.clone(),
            };
            peers.insert(peer.to_owned(), p);
            tokio::spawn(task.run());
        }
        peers.get(peer)
    }

    /// A peer task that found nothing to do asks to end. It may only if no wake came since it
    /// read `seen` (before looking at the queue) and `idle()` (its live channel is empty) holds
    /// — both decided under the lock every waker takes, so no wake-up is lost: a later wake
    /// starts a new task.
    pub(crate) fn retire(
        &self,
        peer: &str,
        wake: &Arc<Notify>,
        seen: u64,
        idle: impl FnOnce() -> bool,
    ) -> bool {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        match peers.get(peer) {
            Some(p) if Arc::ptr_eq(&p.wake, wake) => {
                if p.wakes.load(Ordering::SeqCst) != seen || !idle() {
                    return false;
                }
                peers.remove(peer);
                true
            }
            // Not ours (cannot happen: only the task removes its entry).
            _ => true,
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
        let (tx, rx) = tokio::sync::oneshot::channel();
        let wanted = {
            let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
            let p = self.task_locked(&mut peers, peer, true)?;
            // Pushed under the lock, then the wake: the task cannot retire in between.
            p.live
                .try_send(Live {
                    packet,
                    reply: Some(tx),
                })
                .ok()?;
            p.poke();
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
            if peer.up.load(Ordering::Relaxed) {
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
    let limits = queue::Limits {
        per_peer: fed.config.queue_max_per_peer,
        per_sender: fed.config.queue_max_per_sender,
        peers: fed.config.max_peers,
        peers_per_sender: fed.config.queue_max_peers_per_sender,
    };
    let writer = queue::QueueWriter::start(sh.db.clone(), limits)
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
        None => msim_shared::listen::bind(fed.config.s2s_listen).await?,
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
    if sh.cluster.is_some() {
        tasks.push(tokio::spawn(drain::leader_loop(
            sh.clone(),
            sh.config.cluster_heartbeat,
            stop.clone(),
        )));
    }
    tasks.push(tokio::spawn(outbound::expiry_loop(sh.clone(), stop)));
    Ok(tasks)
}
