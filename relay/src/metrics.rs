//! Counters and the Prometheus text exposition.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use msim_storage::{StoreStats, SweepReport};

/// Why a request was refused (a label of `msim_relay_refusals_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    MissingToken,
    BadToken,
    ExpiredToken,
    Forbidden,
    BadRequest,
    NotFound,
    Conflict,
    TooLarge,
    WrongSize,
    Capacity,
    LowDisk,
    Quota,
    ShaMismatch,
    DownloadLimit,
    /// Too many downloads of one transfer in progress at once.
    TooManyDownloads,
    /// Too many uploads of one sender (or downloads of its files) in progress at once.
    TooManySenderRequests,
    RangeNotSatisfiable,
    /// The transfer was removed (a tombstone says why), or expired while in use.
    Gone,
    /// The transfer was cancelled while this request used it.
    Cancelled,
    /// Storage failed (I/O or index error): answered `500`.
    StorageError,
}

const REFUSALS: [(Refusal, &str); 20] = [
    (Refusal::MissingToken, "missing_token"),
    (Refusal::BadToken, "bad_token"),
    (Refusal::ExpiredToken, "expired_token"),
    (Refusal::Forbidden, "forbidden"),
    (Refusal::BadRequest, "bad_request"),
    (Refusal::NotFound, "not_found"),
    (Refusal::Conflict, "conflict"),
    (Refusal::TooLarge, "too_large"),
    (Refusal::WrongSize, "wrong_size"),
    (Refusal::Capacity, "capacity"),
    (Refusal::LowDisk, "low_disk"),
    (Refusal::Quota, "quota"),
    (Refusal::ShaMismatch, "sha_mismatch"),
    (Refusal::DownloadLimit, "download_limit"),
    (Refusal::TooManyDownloads, "too_many_downloads"),
    (Refusal::TooManySenderRequests, "too_many_sender_requests"),
    (Refusal::RangeNotSatisfiable, "range_not_satisfiable"),
    (Refusal::Gone, "gone"),
    (Refusal::Cancelled, "cancelled"),
    (Refusal::StorageError, "storage_error"),
];

/// Relay counters (all relaxed atomics).
#[derive(Default)]
pub struct Metrics {
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub uploads_active: AtomicU64,
    pub downloads_active: AtomicU64,
    pub downloads_waiting: AtomicU64,
    pub uploads_completed: AtomicU64,
    pub downloads_completed: AtomicU64,
    pub cancels: AtomicU64,
    pub connections: AtomicU64,
    pub connections_over_address_cap: AtomicU64,
    pub connections_evicted: AtomicU64,
    pub sweeps: AtomicU64,
    pub swept_blobs: AtomicU64,
    pub swept_bytes: AtomicU64,
    pub swept_partials: AtomicU64,
    pub swept_tombstones: AtomicU64,
    pub removed_downloaded: AtomicU64,
    pub delivered: AtomicU64,
    refusals: [AtomicU64; REFUSALS.len()],
}

/// Decrements a gauge when dropped.
pub struct GaugeGuard(Arc<Metrics>, fn(&Metrics) -> &AtomicU64);

impl GaugeGuard {
    pub fn new(metrics: Arc<Metrics>, gauge: fn(&Metrics) -> &AtomicU64) -> Self {
        gauge(&metrics).fetch_add(1, Ordering::Relaxed);
        GaugeGuard(metrics, gauge)
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        (self.1)(&self.0).fetch_sub(1, Ordering::Relaxed);
    }
}

impl Metrics {
    pub fn refuse(&self, r: Refusal) {
        if let Some(i) = REFUSALS.iter().position(|(x, _)| *x == r) {
            self.refusals[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    pub fn record_sweep(&self, r: &SweepReport) {
        Self::add(&self.sweeps, 1);
        Self::add(&self.swept_blobs, r.removed_blobs);
        Self::add(&self.swept_bytes, r.removed_bytes);
        Self::add(&self.swept_partials, r.removed_partials);
        Self::add(&self.swept_tombstones, r.removed_tombstones);
    }

    /// Prometheus text format 0.0.4.
    pub fn render(&self, stats: Option<StoreStats>) -> String {
        let mut out = String::with_capacity(4096);
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        metric(
            "msim_relay_bytes_in_total",
            "counter",
            "Bytes received in uploads.",
            g(&self.bytes_in),
        );
        metric(
            "msim_relay_bytes_out_total",
            "counter",
            "Bytes sent in downloads.",
            g(&self.bytes_out),
        );
        metric(
            "msim_relay_uploads_active",
            "gauge",
            "Uploads in progress.",
            g(&self.uploads_active),
        );
        metric(
            "msim_relay_downloads_active",
            "gauge",
            "Downloads in progress.",
            g(&self.downloads_active),
        );
        metric(
            "msim_relay_downloads_waiting",
            "gauge",
            "Downloads waiting for their transfer's upload to start.",
            g(&self.downloads_waiting),
        );
        metric(
            "msim_relay_uploads_completed_total",
            "counter",
            "Uploads completed.",
            g(&self.uploads_completed),
        );
        metric(
            "msim_relay_downloads_completed_total",
            "counter",
            "Downloads sent completely.",
            g(&self.downloads_completed),
        );
        metric(
            "msim_relay_cancels_total",
            "counter",
            "Transfers cancelled with DELETE.",
            g(&self.cancels),
        );
        metric(
            "msim_relay_connections_total",
            "counter",
            "Connections accepted.",
            g(&self.connections),
        );
        metric(
            "msim_relay_connections_over_address_cap_total",
            "counter",
            "Connections closed at once: their address already had its maximum open.",
            g(&self.connections_over_address_cap),
        );
        metric(
            "msim_relay_connections_evicted_total",
            "counter",
            "Connections without a request in progress closed to give their slot to a new one.",
            g(&self.connections_evicted),
        );
        metric(
            "msim_relay_sweeps_total",
            "counter",
            "Sweeps run by this process.",
            g(&self.sweeps),
        );
        metric(
            "msim_relay_swept_blobs_total",
            "counter",
            "Blobs removed by sweeps.",
            g(&self.swept_blobs),
        );
        metric(
            "msim_relay_swept_bytes_total",
            "counter",
            "Bytes removed by sweeps.",
            g(&self.swept_bytes),
        );
        metric(
            "msim_relay_swept_partials_total",
            "counter",
            "Partial uploads removed by sweeps.",
            g(&self.swept_partials),
        );
        metric(
            "msim_relay_swept_tombstones_total",
            "counter",
            "Tombstones of removed transfers dropped by sweeps (retention or count limit).",
            g(&self.swept_tombstones),
        );
        metric(
            "msim_relay_removed_after_download_total",
            "counter",
            "Blobs removed after the last download their token allowed.",
            g(&self.removed_downloaded),
        );
        metric(
            "msim_relay_delivered_total",
            "counter",
            "Downloads that handed over a transfer's last byte: the transfer no longer counts against its sender's quota.",
            g(&self.delivered),
        );
        if let Some(s) = stats {
            metric(
                "msim_relay_stored_blobs",
                "gauge",
                "Blobs in storage (complete or in progress).",
                s.blobs,
            );
            metric(
                "msim_relay_stored_complete_blobs",
                "gauge",
                "Complete blobs in storage.",
                s.complete_blobs,
            );
            metric(
                "msim_relay_stored_bytes",
                "gauge",
                "Declared bytes in storage.",
                s.declared_bytes,
            );
            metric(
                "msim_relay_tombstones",
                "gauge",
                "Tombstones of removed transfers (answered 410 Gone).",
                s.tombstones,
            );
            metric(
                "msim_relay_rehashed_bytes_total",
                "counter",
                "Stored bytes read back to hash resumed uploads (once per partial upload after a restart, or after requests that asked not to hash).",
                s.rehashed_bytes,
            );
        }
        let _ = writeln!(
            out,
            "# HELP msim_relay_refusals_total Requests refused, by reason.\n# TYPE msim_relay_refusals_total counter"
        );
        for (i, (_, label)) in REFUSALS.iter().enumerate() {
            let _ = writeln!(
                out,
                "msim_relay_refusals_total{{reason=\"{label}\"}} {}",
                g(&self.refusals[i])
            );
        }
        out
    }
}
