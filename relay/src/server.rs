//! Accept loop, connection limits, background sweeper, graceful shutdown.

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
use crate::metrics::Metrics;
use crate::{RelayConfig, RelayError};

/// Largest read buffer of a connection: upload bodies arrive in frames up to this size.
const READ_BUF_MAX: usize = 256 << 10;

/// Serve the relay on `listener` until `shutdown` completes, then stop accepting and give
/// in-flight requests `config.shutdown_grace` to finish. Opens (and recovers) the storage in
/// `config.data_dir` and runs the periodic sweeper.
pub async fn serve(
    listener: TcpListener,
    config: RelayConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RelayError> {
    let store = BlobStore::open(&config.data_dir, config.store_config()).await?;
    let state = Arc::new(State {
        config,
        store,
        metrics: Metrics::default(),
        waiters: Default::default(),
        upload_budget: SharedBudget::new(UPLOAD_BUFFER_TOTAL),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let stop_rx2 = stop_rx.clone();
    let tls = state
        .config
        .tls
        .clone()
        .map(msim_shared::tls::tokio_rustls::TlsAcceptor::from);
    let sweeper = tokio::spawn(sweeper(state.clone(), stop_rx));
    let limit = Arc::new(Semaphore::new(state.config.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, data_dir = %state.config.data_dir.display(), tls = tls.is_some(), "msim-relay listening");
    }
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = limit.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
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
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "set_nodelay failed");
        }
        Metrics::add(&state.metrics.connections, 1);
        let st = state.clone();
        let service = service_fn(move |req| handle(st.clone(), req));
        let Some(acceptor) = tls.clone() else {
            let conn =
                graceful.watch(http1_builder().serve_connection(TokioIo::new(stream), service));
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                drop(permit);
            });
            continue;
        };
        // TLS: the handshake runs on the connection's own task, bounded in time; a slow or
        // failed handshake never holds up the accept loop.
        let watcher = graceful.watcher();
        let timeout = state.config.tls_handshake_timeout;
        let mut stopping = stop_rx2.clone();
        tokio::spawn(async move {
            let handshake = msim_shared::tls::accept(&acceptor, stream, timeout);
            let stream = tokio::select! {
                r = handshake => match r {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::debug!(%peer, "{e}");
                        drop(permit);
                        return;
                    }
                },
                _ = stopping.changed() => {
                    drop(permit);
                    return;
                }
            };
            let conn =
                watcher.watch(http1_builder().serve_connection(TokioIo::new(stream), service));
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            drop(permit);
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
    state.store.close().await;
    Ok(())
}

fn http1_builder() -> http1::Builder {
    let mut b = http1::Builder::new();
    b.keep_alive(true)
        .max_buf_size(READ_BUF_MAX)
        .writev(true)
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30));
    b
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
