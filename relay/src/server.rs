//! Accept loop, connection limits, background sweeper, graceful shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use msim_storage::{BlobStore, SharedBudget};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use crate::api::{handle, State, UPLOAD_BUFFER_TOTAL};
use crate::held_body::held_until_sent;
use crate::limits::{PerAddress, WriteDeadline};
use crate::metrics::Metrics;
use crate::slots::{ConnOf, MinRate, PeerOf, Slots};
use crate::{RelayConfig, RelayError};

/// Largest read buffer of a connection: upload bodies arrive in frames up to this size.
const READ_BUF_MAX: usize = 256 << 10;

/// Connections the metrics listener serves at once.
const METRICS_CONNECTIONS: usize = 8;

/// Serve the relay on `listener` until `shutdown` completes, then stop accepting and give
/// in-flight requests `config.shutdown_grace` to finish. Opens (and recovers) the storage in
/// `config.data_dir` and runs the periodic sweeper.
pub async fn serve(
    listener: TcpListener,
    config: RelayConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RelayError> {
    serve_with_metrics(listener, None, config, shutdown).await
}

/// [`serve`], answering `GET /metrics` on `metrics_listener` too (a separate address that
/// can stay internal while the transfer port is public).
pub async fn serve_with_metrics(
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    config: RelayConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RelayError> {
    if config.per_sender_quota < config.max_file_size.saturating_mul(2) {
        tracing::warn!(
            quota = config.per_sender_quota,
            max_file_size = config.max_file_size,
            "the per-sender quota is below twice the largest file: a sender whose largest \
             file waits for its recipient may be refused (429) for everything else until it is \
             downloaded"
        );
    }
    let store = BlobStore::open(&config.data_dir, config.store_config()).await?;
    let state = Arc::new(State {
        config,
        store,
        metrics: Arc::new(Metrics::default()),
        waiters: Default::default(),
        downloaders: Default::default(),
        upload_budget: SharedBudget::new(UPLOAD_BUFFER_TOTAL),
        sender_requests: Default::default(),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let stop_rx2 = stop_rx.clone();
    let tls = state
        .config
        .tls
        .clone()
        .map(msim_shared::tls::tokio_rustls::TlsAcceptor::from);
    let sweeper = tokio::spawn(sweeper(state.clone(), stop_rx));
    let metrics_server =
        metrics_listener.map(|l| tokio::spawn(serve_metrics(l, state.clone(), stop_rx2.clone())));
    let slots = Arc::new(Slots::new(
        state.config.max_connections,
        MinRate {
            bytes: state.config.min_rate,
            window: state.config.min_rate_window,
        },
    ));
    let per_address = PerAddress::new(state.config.max_connections_per_address);
    let header_timeout = state.config.header_timeout;
    let idle = state.config.body_idle_timeout;
    let graceful = GracefulShutdown::new();
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, data_dir = %state.config.data_dir.display(), tls = tls.is_some(), "msim-relay listening");
    }
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(v) => v,
                Err(e) => {
                    // E.g. EMFILE: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // One address cannot take more than its share of the slots; over it, the connection
        // is closed at once (the client sees a reset, not a hang).
        let Some(address_slot) = per_address.admit(peer.ip()) else {
            Metrics::add(&state.metrics.connections_over_address_cap, 1);
            tracing::debug!(%peer, "connection refused: too many from this address");
            continue;
        };
        let (slot, evicted) = tokio::select! {
            s = slots.acquire() => match s {
                Some(s) => s,
                None => break,
            },
            () = &mut shutdown => break,
        };
        if evicted {
            Metrics::add(&state.metrics.connections_evicted, 1);
        }
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "set_nodelay failed");
        }
        Metrics::add(&state.metrics.connections, 1);
        let st = state.clone();
        let peer_key = crate::limits::address_key(peer.ip());
        let conn_state = slot.conn.clone();
        let all_slots = slots.clone();
        let service = service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            let (conn_state, all_slots) = (conn_state.clone(), all_slots.clone());
            let st = st.clone();
            async move {
                // On a health slot, anything but a health check first waits for a transfer
                // slot (idle meanwhile: another health check may take the slot).
                if conn_state.health_only()
                    && !is_health_check(&st, req.uri().path())
                    && all_slots.upgrade(&conn_state).await
                {
                    Metrics::add(&st.metrics.connections_evicted, 1);
                }
                // Busy from the request head until the response body is sent.
                let busy = conn_state.request();
                req.extensions_mut().insert(ConnOf(conn_state.clone()));
                req.extensions_mut().insert(PeerOf(peer_key));
                let resp = match handle(st, req).await {
                    Ok(r) => r,
                    Err(never) => match never {},
                };
                Ok::<_, Infallible>(resp.map(|body| held_until_sent(body, busy)))
            }
        });
        let traffic = slot.conn.traffic();
        let held = (slot, address_slot);
        let Some(acceptor) = tls.clone() else {
            let io = TokioIo::new(WriteDeadline::new(stream, idle).counting(traffic));
            let conn = graceful.watch(http1_builder(header_timeout).serve_connection(io, service));
            tokio::spawn(async move {
                let conn_state = &held.0.conn;
                tokio::select! {
                    r = conn => if let Err(e) = r {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    },
                    () = conn_state.evicted() => tracing::debug!(%peer, "idle or slow connection closed: its slot went to a new one"),
                }
                drop(held);
            });
            continue;
        };
        // TLS: the handshake runs on the connection's own task, bounded in time; a slow or
        // failed handshake never holds up the accept loop (and its slot can be taken).
        let watcher = graceful.watcher();
        let timeout = state.config.tls_handshake_timeout;
        let mut stopping = stop_rx2.clone();
        tokio::spawn(async move {
            let conn_state = &held.0.conn;
            let handshake = msim_shared::tls::accept(&acceptor, stream, timeout);
            let stream = tokio::select! {
                r = handshake => match r {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::debug!(%peer, "{e}");
                        return;
                    }
                },
                _ = stopping.changed() => return,
                () = conn_state.evicted() => return,
            };
            let io = TokioIo::new(WriteDeadline::new(stream, idle).counting(traffic));
            let conn = watcher.watch(http1_builder(header_timeout).serve_connection(io, service));
            tokio::select! {
                r = conn => if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                },
                () = conn_state.evicted() => tracing::debug!(%peer, "idle or slow connection closed: its slot went to a new one"),
            }
        });
    }
    drop(listener);
    tracing::info!("shutting down: no longer accepting connections");
    let _ = stop_tx.send(true);
    if tokio::time::timeout(state.config.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("shutdown grace period elapsed with requests in flight");
    }
    let _ = sweeper.await;
    if let Some(m) = metrics_server {
        let _ = m.await;
    }
    state.store.close().await;
    Ok(())
}

/// Requests a health slot serves: `/healthz`, and `/metrics` when served on this port.
fn is_health_check(state: &State, path: &str) -> bool {
    path == "/healthz"
        || (path == "/metrics" && state.config.metrics == crate::MetricsAccess::MainPort)
}

/// `header_timeout` bounds the wait for each request head, which also closes a keep-alive
/// connection left idle that long (hyper starts the timer when it waits for the next request).
fn http1_builder(header_timeout: Duration) -> http1::Builder {
    let mut b = http1::Builder::new();
    b.keep_alive(true)
        .max_buf_size(READ_BUF_MAX)
        .writev(true)
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout.max(Duration::from_millis(1)));
    b
}

/// Answer `GET /metrics` (anything else: 404) on the metrics listener until `stop`.
async fn serve_metrics(listener: TcpListener, state: Arc<State>, mut stop: watch::Receiver<bool>) {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "metrics listening");
    }
    let limit = Arc::new(Semaphore::new(METRICS_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            p = limit.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            _ = stop.changed() => return,
        };
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let st = state.clone();
        let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
            let st = st.clone();
            async move {
                let r = if req.uri().path() == "/metrics" {
                    crate::api::metrics(&st).await
                } else {
                    let mut r = hyper::Response::new(crate::api::full("no such resource\n"));
                    *r.status_mut() = hyper::StatusCode::NOT_FOUND;
                    r
                };
                Ok::<_, std::convert::Infallible>(r)
            }
        });
        let io = TokioIo::new(WriteDeadline::new(stream, state.config.body_idle_timeout));
        let conn = http1_builder(state.config.header_timeout).serve_connection(io, service);
        let mut stopping = stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = conn => {}
                _ = stopping.changed() => {}
            }
            drop(permit);
        });
    }
}

async fn sweeper(state: Arc<State>, mut stop: watch::Receiver<bool>) {
    let period = state.config.sweep_interval.max(Duration::from_secs(1));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        match state.store.sweep().await {
            Ok(r) => state.metrics.record_sweep(&r),
            Err(e) => tracing::warn!(error = %e, "sweep failed"),
        }
    }
}
