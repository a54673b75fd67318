//! The server: shared state, the accept loop (bounded by a semaphore), background tasks and
//! clean shutdown (stop accepting, close sessions, finish pending commits).

use crate::cluster::Cluster;
use crate::config::Config;
use crate::crypto::{CryptoError, SaltGen, Sealer};
use crate::db::commit::Writer;
use crate::db::space::Watermark;
use crate::db::{Db, DbError};
use crate::device::DeviceCookies;
use crate::hub::Hub;
use crate::rate::Limits;
use crate::relays::{BadRelayUrl, RelayPool};
use crate::secret_key::{open_sealer, KeyError};
use crate::session;
use crate::throttle::{Delays, Throttle};
use msim_shared::token::{Keyring, TokenError};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

/// How often the database's write-ahead log is checkpointed (off the commit path).
const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);

/// Startup failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Database.
    #[error(transparent)]
    Db(#[from] DbError),
    /// Key file.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// The password key does not belong to the database.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// Relay URL.
    #[error(transparent)]
    Relay(#[from] BadRelayUrl),
    /// Relays are configured but the relay token secret is empty.
    #[error("the relay token secret is empty: relays would refuse every token (set --relay-secret-file or MSIM_RELAY_SECRET)")]
    NoRelaySecret,
    /// Relay secret.
    #[error("relay secret: {0}")]
    Token(#[from] TokenError),
    /// I/O.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// Federation set-up (key, resolver, s2s listener).
    #[error(transparent)]
    Federation(#[from] crate::federation::FederationError),
}

/// State shared by every connection.
pub(crate) struct Shared {
    /// Configuration.
    pub(crate) config: Config,
    /// Reads.
    pub(crate) db: Db,
    /// Writes (group commit).
    pub(crate) writer: Writer,
    /// Live sessions (of this node).
    pub(crate) hub: Arc<Hub>,
    /// This node's cluster membership: on PostgreSQL (any number of nodes); `None` on
    /// SQLite (one node).
    pub(crate) cluster: Option<Arc<Cluster>>,
    /// Login throttling (on this node; in a cluster the shared counters of
    /// [`Shared::shared_gate`] count too).
    pub(crate) throttle: Throttle,
    /// In a cluster: the login throttle and registration limits every node shares.
    pub(crate) shared_gate: Option<SharedGate>,
    /// Device cookies (trusted devices skip the login throttle).
    pub(crate) devices: DeviceCookies,
    /// Registration and account-discovery rate limits.
    pub(crate) limits: Limits,
    /// Login salts.
    pub(crate) salts: SaltGen,
    /// Password sealing.
    pub(crate) sealer: Sealer,
    /// Relays.
    pub(crate) relays: Arc<RelayPool>,
    /// Signs relay capability tokens.
    pub(crate) keyring: Keyring,
    /// Who blocked whom (mirror of the `blocks` table).
    pub(crate) blocks: crate::blocks::Blocks,
    /// Federation, when on.
    pub(crate) federation: Option<Arc<crate::federation::Federation>>,
}

/// The counters of login throttling and registration limits that the nodes of a cluster
/// share (so an attacker gains nothing by spreading attempts over nodes).
pub(crate) struct SharedGate {
    pub(crate) throttle: crate::cluster::throttle::SharedThrottle,
    pub(crate) register: crate::cluster::throttle::SharedRegisterLimits,
    /// One password check at a time per login on this node (see `login_checks`).
    pub(crate) checks: crate::cluster::login_checks::LoginChecks,
}

/// A server ready to accept connections.
pub(crate) struct Server {
    shared: Arc<Shared>,
    writer_task: tokio::task::JoinHandle<()>,
    /// What the cluster asks of the server (`None` on SQLite).
    cluster_events: Option<mpsc::Receiver<crate::cluster::Event>>,
}

impl Server {
    /// Opens the data directory (database, keys) and prepares the server.
    pub(crate) async fn new(config: Config) -> Result<Server, Error> {
        crate::db::create_data_dir(&config.data_dir)?;
        let db = Db::open_configured(&config.data_dir, config.database.as_deref())
            .await?
            .with_pending_cap(config.max_pending_messages);
        db.set_database_timeout(config.database_timeout);
        let sealer = open_sealer(&config.data_dir, &db).await?;
        let blocks = crate::blocks::Blocks::from_pairs(db.all_blocks().await?);
        // The watermark guards the file system SQLite writes to; PostgreSQL's disk is the
        // database server's (a commit failing there fails its batch, as on SQLite).
        let min_free = match config.database {
            Some(_) => 0,
            None => config.min_free_space,
        };
        let space = Watermark::new(&config.data_dir, min_free, config.free_space_check_interval);
        let hook = crate::db::commit::HookSlot::default();
        let (writer, writer_task) = Writer::start(db.clone(), space, hook.clone());
        let keyring = match (
            config.relay_secret.trim().is_empty(),
            config.relays.is_empty(),
        ) {
            // Tokens signed with a key no relay knows would make every upload fail with 401
            // while the health checks pass: refuse to start instead.
            (true, false) => return Err(Error::NoRelaySecret),
            // No relay: offers are refused with `no-relay`, the key signs nothing.
            (true, true) => Keyring::from_secret_text(&msim_shared::token::generate_secret_text())?,
            (false, _) => Keyring::from_secret_text(&config.relay_secret)?,
        };
        if config.tls.is_some() {
            // Tokens travel in the relay URLs' requests: a TLS chat server handing out plain
            // http relays would expose them on the network.
            for url in config.relays.iter().filter(|u| u.starts_with("http://")) {
                warn!(%url, "chat connections use TLS but this relay is plain http: transfer tokens and files cross the network in clear");
            }
        }
        let relays = Arc::new(RelayPool::new(&config.relays)?.with_tls(config.relay_tls.clone()));
        let salt_start = (config.clock.now_micros().max(0)) as u64;
        let throttle = Throttle::new(
            config.clock.clone(),
            Delays {
                base: config.throttle_base,
                max: config.throttle_max,
                decay: config.throttle_decay,
                known_for: config.known_address_ttl,
            },
        );
        let devices = DeviceCookies::new(
            &crate::device::load_or_create_key(&config.data_dir)?,
            config.clock.clone(),
            config.device_cookie_ttl,
            config.device_cookie_failures,
        );
        let limits = Limits::new(&config);
        let shared_gate = db.postgres_pool().map(|pool| SharedGate {
            throttle: crate::cluster::throttle::SharedThrottle::new(
                pool.clone(),
                Delays {
                    base: config.throttle_base,
                    max: config.throttle_max,
                    decay: config.throttle_decay,
                    known_for: config.known_address_ttl,
                },
            ),
            register: crate::cluster::throttle::SharedRegisterLimits::new(
                pool,
                (config.register_burst, config.register_per_hour),
                (
                    config.register_prefix_burst,
                    config.register_prefix_per_hour,
                ),
            ),
            checks: Default::default(),
        });
        let federation = match config.federation.enabled() {
            true => Some(Arc::new(crate::federation::Federation::new(
                config.federation.clone(),
                &config.domain,
                &config.data_dir,
                config.tls.clone(),
            )?)),
            false => None,
        };
        let hub = Arc::new(Hub::default());
        let mut cluster_events = None;
        let cluster = match db.postgres_pool() {
            None => None,
            Some(pool) => {
                let feed = crate::cluster::StoreFeed::new(
                    db.clone(),
                    writer.clone(),
                    config.domain.clone(),
                );
                let name = format!("{} pid {}", config.domain, std::process::id());
                let (cluster, events) = Cluster::start(
                    pool,
                    hub.clone(),
                    Arc::new(feed),
                    crate::cluster::Timing::from_config(&config),
                    &name,
                )
                .await
                .map_err(DbError::Sql)?;
                // Before any batch of this node commits: its rows carry this node's id.
                db.set_node(cluster.node().0);
                let _ = hook.set(cluster.commit_hook());
                cluster_events = Some(events);
                Some(Arc::new(cluster))
            }
        };
        let shared = Arc::new(Shared {
            config,
            db,
            writer,
            hub,
            cluster,
            throttle,
            shared_gate,
            devices,
            limits,
            salts: SaltGen::new(salt_start),
            sealer,
            relays,
            keyring,
            blocks,
            federation,
        });
        Ok(Server {
            shared,
            writer_task,
            cluster_events,
        })
    }

    /// Accepts connections on `listener` until `shutdown` completes, then closes every session
    /// and waits for pending commits.
    pub async fn run(self, listener: TcpListener, shutdown: impl Future) -> Result<(), Error> {
        let Server {
            shared,
            writer_task,
            cluster_events,
        } = self;
        let stop = CancellationToken::new();
        let limit = Arc::new(Semaphore::new(shared.config.max_connections));
        // Every connection task holds a clone; when all are dropped, all sessions are done.
        let (done_tx, mut done_rx) = mpsc::channel::<()>(1);

        // Federation first: if it cannot start (s2s port taken, tables), nothing else was
        // started that would keep running after the error.
        let federation = match crate::federation::start(shared.clone()).await {
            Ok(f) => f,
            Err(e) => {
                // The cluster was joined in `Server::new`: leave it too.
                if let Some(cluster) = &shared.cluster {
                    cluster.stop().await;
                }
                return Err(e.into());
            }
        };
        let health = tokio::spawn(shared.relays.clone().health_loop(
            shared.config.relay_health_interval,
            shared.config.relay_health_timeout,
            stop.clone(),
        ));
        let sweeper = tokio::spawn(crate::jobs::sweep_loop(shared.clone(), stop.clone()));
        let purger = tokio::spawn(crate::jobs::purge_loop(shared.clone(), stop.clone()));
        let offline = cluster_events
            .map(|events| tokio::spawn(cluster_offline_loop(shared.clone(), events, stop.clone())));

        let checkpointer = {
            let db = shared.db.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(CHECKPOINT_EVERY);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tick.tick() => if let Err(e) = db.checkpoint().await {
                            warn!("checkpoint: {e}");
                        },
                    }
                }
            })
        };

        let tls = shared
            .config
            .tls
            .clone()
            .map(msim_shared::tls::tokio_rustls::TlsAcceptor::from);
        info!(addr = ?listener.local_addr().ok(), domain = %shared.config.domain, tls = tls.is_some(), "msim-chat listening");
        let accept = async {
            let mut backoff = Duration::from_millis(10);
            loop {
                let Ok(permit) = limit.clone().acquire_owned().await else {
                    return;
                };
                match listener.accept().await {
                    Ok((stream, peer)) => {
                        backoff = Duration::from_millis(10);
                        let sh = shared.clone();
                        let stop = stop.clone();
                        let done = done_tx.clone();
                        // Plain and TLS connections are separate tasks: a task's memory is
                        // the size of its future, and an idle plain connection should not
                        // carry room for a TLS handshake (~2.5 KiB per connection).
                        match tls.clone() {
                            None => {
                                tokio::spawn(async move {
                                    session::serve(sh, stream, peer, stop).await;
                                    drop(permit);
                                    drop(done);
                                });
                            }
                            Some(acceptor) => {
                                tokio::spawn(async move {
                                    serve_tls(sh, acceptor, stream, peer, stop).await;
                                    drop(permit);
                                    drop(done);
                                });
                            }
                        }
                    }
                    Err(e) => {
                        error!("accept: {e}");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(1));
                    }
                }
            }
        };
        tokio::select! {
            _ = accept => {}
            _ = shutdown => info!("shutting down"),
        }
        drop(listener);
        stop.cancel();
        shared.db.stop_waiting();
        if let Some(fed) = &shared.federation {
            fed.stop.cancel();
        }
        for t in federation {
            let _ = t.await;
        }
        drop(done_tx);
        let _ = done_rx.recv().await;
        let _ = health.await;
        let _ = sweeper.await;
        let _ = purger.await;
        let _ = checkpointer.await;
        if let Some(t) = offline {
            let _ = t.await;
        }
        if let Some(cluster) = &shared.cluster {
            // Every session has logged out (and left the presence table); whoever is still
            // recorded on this node goes offline with it.
            let gone = cluster.stop().await;
            went_offline(&shared, gone).await;
        }
        // Last handle to the writer: it commits what is queued, then stops.
        let db = shared.db.clone();
        drop(shared);
        let _ = writer_task.await;
        db.close().await;
        info!("msim-chat stopped");
        Ok(())
    }
}

/// Acts on what the cluster reports until `stop`: users whose node died are offline.
async fn cluster_offline_loop(
    sh: Arc<Shared>,
    mut events: mpsc::Receiver<crate::cluster::Event>,
    stop: CancellationToken,
) {
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => return,
            e = events.recv() => e,
        };
        match event {
            Some(crate::cluster::Event::Offline(logins)) => went_offline(&sh, logins).await,
            Some(crate::cluster::Event::Online(logins)) => {
                let ctx = crate::cmd::context::Ctx::new(&sh);
                for login in logins {
                    crate::cmd::presence::announce(&ctx, &login, true).await;
                }
            }
            None => return,
        }
    }
}

/// `logins` lost their last session without logging out (their node died or left): their
/// last-seen time is now, and their watchers are told, as for a logout.
async fn went_offline(sh: &Shared, logins: Vec<String>) {
    let ctx = crate::cmd::context::Ctx::new(sh);
    for login in logins {
        let op = crate::db::WriteOp::SetLastSeen {
            login: login.clone(),
            at: ctx.now(),
        };
        if let Err(e) = sh.writer.write(op).await {
            warn!("last seen: {e}");
        }
        crate::cmd::presence::announce(&ctx, &login, false).await;
    }
}

/// Runs a server on `listener` until `shutdown` completes.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future,
) -> Result<(), Error> {
    Server::new(config).await?.run(listener, shutdown).await
}

/// Runs the TLS handshake of one connection (bounded in time, stopped at shutdown) on the
/// connection's own task, then serves it.
async fn serve_tls(
    sh: Arc<Shared>,
    acceptor: msim_shared::tls::tokio_rustls::TlsAcceptor,
    stream: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    stop: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let timeout = sh.config.tls_handshake_timeout;
    let handshake = msim_shared::tls::accept(&acceptor, stream, timeout);
    let hs = tokio::select! {
        r = handshake => Some(r),
        _ = stop.cancelled() => None,
    };
    match hs {
        Some(Ok(s)) => session::serve_stream(sh, s, peer, stop).await,
        Some(Err(e)) => debug!(%peer, "{e}"),
        None => {}
    }
}
