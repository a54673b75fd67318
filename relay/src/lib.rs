//! mSIM file relay: HTTP/1.1 uploads and streaming downloads over temporary storage.
//!
//! Embed it with [`serve`]; the `msim-relay` binary wraps the same function. The HTTP API is
//! documented in PROTOCOL.md ("Relay HTTP API").
#![warn(missing_docs, clippy::unwrap_used)]

mod api;
mod downloaders;
mod held_body;
mod limits;
mod metrics;
mod per_sender;
pub mod range;
pub mod request;
mod server;
pub mod size;
mod slots;
mod waiters;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use msim_shared::clock::{Clock, SystemClock};
use msim_shared::tls::rustls::ServerConfig;
use msim_shared::token::Keyring;
use msim_storage::{BlobStore, StoreConfig, SweepReport};

pub use server::{serve, serve_with_metrics};

/// Errors from [`serve`] and [`sweep_dir`].
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// Storage could not be opened or swept.
    #[error(transparent)]
    Storage(#[from] msim_storage::StoreError),
    /// Socket error.
    #[error("relay I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// TLS certificate or key.
    #[error(transparent)]
    Tls(#[from] msim_shared::tls::TlsError),
}

/// Relay settings. Build with [`RelayConfig::new`] and adjust the fields.
#[derive(Clone)]
pub struct RelayConfig {
    /// Storage directory (`index.sqlite`, `blobs/`).
    pub data_dir: PathBuf,
    /// Keys that verify capability tokens (shared with msim-chat).
    pub keyring: Keyring,
    /// How long an upload is kept after it starts.
    pub ttl: Duration,
    /// Largest accepted file.
    pub max_file_size: u64,
    /// Total declared bytes stored at once.
    pub capacity: u64,
    /// Free-disk watermark: uploads are refused when they would leave less free space.
    pub min_free: u64,
    /// Declared bytes of undelivered transfers one sender may store at once (a transfer stops
    /// counting once a download has handed over its last byte).
    pub per_sender_quota: u64,
    /// Uploads of at least this many bytes write their whole blocks with `O_DIRECT` (no copy
    /// into the page cache) where the file system allows it; 0 = never.
    pub direct_write_min: u64,
    /// Interval of the built-in sweeper.
    pub sweep_interval: Duration,
    /// A partial upload with no progress for this long is swept.
    pub abandon_after: Duration,
    /// A partial upload with no progress for this long, writer attached or not, loses its
    /// reservation (it is removed) as soon as another upload needs its room; until then it
    /// stays resumable (up to `abandon_after`). Progress counts at the pace that completes
    /// the upload before it expires.
    pub reservation_idle: Duration,
    /// Simultaneous connections. When all are taken, a new connection takes the slot of the
    /// connection that has gone longest without a request in progress or with one below
    /// `min_rate` (which is closed);
    /// when every connection has one, a new connection gets one of a few health-check slots
    /// (`/healthz` answered at once; other requests wait there for a slot).
    pub max_connections: usize,
    /// Simultaneous connections from one client address (0: no limit); further connections
    /// from it are closed at once.
    pub max_connections_per_address: usize,
    /// Longest wait for a complete request head, on a new connection and on an idle
    /// keep-alive connection between requests.
    pub header_timeout: Duration,
    /// An upload whose client sends nothing for this long, a download whose client takes no
    /// bytes for this long, or a download that waited this long for upload data that did not
    /// come, is cut (both stay resumable: the upload with `PATCH`, the download with `Range`).
    pub body_idle_timeout: Duration,
    /// When connections are short, a connection whose request in progress moved (read plus
    /// written) fewer than this many bytes over `min_rate_window` gives its slot to a new
    /// connection like an idle one (0: no minimum). The cut transfer resumes (`PATCH`, `Range`).
    pub min_rate: u64,
    /// The window of `min_rate`.
    pub min_rate_window: Duration,
    /// Downloads of one transfer in progress at once (0: no bound); more are refused with
    /// `429` until one ends.
    pub max_downloads_per_transfer: usize,
    /// Uploads of one sender (the token's `sender`) in progress at once, and apart from them
    /// downloads of one sender's files from one client address, and
    /// 8 times as many from all addresses (0: no bound); more are
    /// refused with `429` until one ends, so one account cannot hold many connection slots
    /// even above `min_rate`.
    pub max_requests_per_sender: usize,
    /// Where `GET /metrics` is answered.
    pub metrics: MetricsAccess,
    /// How long a download waits for its upload to start.
    pub wait_for_upload: Duration,
    /// Size of the file reads that feed downloads (uploads are stored in batches of what has
    /// arrived; a download following an upload gets the upload's own buffers).
    pub chunk_size: usize,
    /// How long in-flight requests may run after shutdown begins.
    pub shutdown_grace: Duration,
    /// Clock for token expiry and storage TTLs (tests inject a manual clock).
    pub clock: Arc<dyn Clock>,
    /// Serve HTTPS with this configuration (None: plain HTTP). Build it with
    /// `msim_shared::tls::server_config`.
    pub tls: Option<Arc<ServerConfig>>,
    /// Longest time a client may take for its TLS handshake.
    pub tls_handshake_timeout: Duration,
}

/// Where the relay answers `GET /metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricsAccess {
    /// Only on the separate metrics listener given to [`serve_with_metrics`] (if any); the
    /// transfer port answers `404`.
    Separate,
    /// Also on the transfer port, to anyone who can reach it.
    MainPort,
}

impl std::fmt::Debug for RelayConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayConfig")
            .field("data_dir", &self.data_dir)
            .field("keyring", &self.keyring)
            .field("ttl", &self.ttl)
            .field("max_file_size", &self.max_file_size)
            .field("capacity", &self.capacity)
            .field("min_free", &self.min_free)
            .field("per_sender_quota", &self.per_sender_quota)
            .field("direct_write_min", &self.direct_write_min)
            .field("sweep_interval", &self.sweep_interval)
            .field("abandon_after", &self.abandon_after)
            .field("reservation_idle", &self.reservation_idle)
            .field("max_connections", &self.max_connections)
            .field(
                "max_connections_per_address",
                &self.max_connections_per_address,
            )
            .field("header_timeout", &self.header_timeout)
            .field("body_idle_timeout", &self.body_idle_timeout)
            .field("min_rate", &self.min_rate)
            .field("min_rate_window", &self.min_rate_window)
            .field(
                "max_downloads_per_transfer",
                &self.max_downloads_per_transfer,
            )
            .field("max_requests_per_sender", &self.max_requests_per_sender)
            .field("metrics", &self.metrics)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

/// Default TTL: 24 hours.
pub const DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);
/// Default maximum file size: 100 MiB.
pub const DEFAULT_MAX_FILE_SIZE: u64 = 100 << 20;
/// Default per-sender quota: 2 GiB, twice msim-chat's largest file (1 GiB), so a sender whose
/// largest file still waits for its recipient can go on sending pictures.
pub const DEFAULT_PER_SENDER_QUOTA: u64 = 2 << 30;
/// Default listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:3215";
/// Default cap on requests in progress per sender and direction: a real client runs a
/// handful (msim: one upload per file sent, a few downloads per file).
pub const DEFAULT_MAX_REQUESTS_PER_SENDER: usize = 32;
/// Default cap on simultaneous connections from one address.
pub const DEFAULT_MAX_CONNECTIONS_PER_ADDRESS: usize = 64;
/// Default deadline for a request head (and for an idle keep-alive connection).
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Default bound on downloads of one transfer in progress at once.
pub const DEFAULT_MAX_DOWNLOADS_PER_TRANSFER: usize = 8;
/// Default minimum traffic per window of a connection with a request in progress (when
/// connections are short): 64 KiB per 30 s, about 2 KiB/s.
pub const DEFAULT_MIN_RATE: u64 = 64 << 10;
/// Default window of the minimum rate.
pub const DEFAULT_MIN_RATE_WINDOW: Duration = Duration::from_secs(30);
/// Default idle time after which a stalled upload or download is cut.
pub const DEFAULT_BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

impl RelayConfig {
    /// Defaults: TTL 24 h, max file 100 MiB, capacity 10 GiB, free-disk watermark 1 GiB,
    /// per-sender quota 2 GiB of undelivered files, sweep every 5 min, abandon partial uploads after 1 h of no
    /// progress (2 min when the room is needed), 1024 connections (64 per address), 10 s for a
    /// request head, 60 s of body idle time, at least 64 KiB per 30 s for a request in progress
    /// to keep its slot when slots are short, 8 downloads of one transfer at once, downloads wait
    /// 30 s for their upload, 256 KiB chunks, `/metrics` only on a separate listener.
    pub fn new(data_dir: impl Into<PathBuf>, keyring: Keyring) -> RelayConfig {
        // The storage limits' defaults are the store's own.
        let store = StoreConfig::default();
        RelayConfig {
            data_dir: data_dir.into(),
            keyring,
            ttl: DEFAULT_TTL,
            max_file_size: DEFAULT_MAX_FILE_SIZE,
            capacity: store.capacity_bytes,
            min_free: store.min_free_bytes,
            per_sender_quota: DEFAULT_PER_SENDER_QUOTA,
            direct_write_min: store.direct_write_min,
            sweep_interval: Duration::from_secs(300),
            abandon_after: store.abandon_after,
            max_connections: 1024,
            max_connections_per_address: DEFAULT_MAX_CONNECTIONS_PER_ADDRESS,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            body_idle_timeout: DEFAULT_BODY_IDLE_TIMEOUT,
            min_rate: DEFAULT_MIN_RATE,
            min_rate_window: DEFAULT_MIN_RATE_WINDOW,
            max_downloads_per_transfer: DEFAULT_MAX_DOWNLOADS_PER_TRANSFER,
            max_requests_per_sender: DEFAULT_MAX_REQUESTS_PER_SENDER,
            metrics: MetricsAccess::Separate,
            reservation_idle: store.reservation_idle,
            wait_for_upload: Duration::from_secs(30),
            chunk_size: 256 << 10,
            shutdown_grace: Duration::from_secs(10),
            clock: Arc::new(SystemClock),
            tls: None,
            tls_handshake_timeout: msim_shared::tls::HANDSHAKE_TIMEOUT,
        }
    }

    /// The storage settings derived from this configuration.
    pub fn store_config(&self) -> StoreConfig {
        StoreConfig {
            capacity_bytes: self.capacity,
            min_free_bytes: self.min_free,
            per_sender_quota_bytes: self.per_sender_quota,
            abandon_after: self.abandon_after,
            reservation_idle: self.reservation_idle,
            direct_write_min: self.direct_write_min,
            clock: self.clock.clone(),
        }
    }
}

/// Run one sweep over a relay data directory, safely while a relay serves from it (what
/// `msim-relay sweep` does).
pub async fn sweep_dir(
    data_dir: &Path,
    abandon_after: Duration,
    clock: Arc<dyn Clock>,
) -> Result<SweepReport, RelayError> {
    let config = StoreConfig {
        abandon_after,
        clock,
        ..StoreConfig::default()
    };
    let store = BlobStore::open_without_recovery(data_dir, config).await?;
    let report = store.sweep().await;
    store.close().await;
    Ok(report?)
}
