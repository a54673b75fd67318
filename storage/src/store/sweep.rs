//! Sweeps and tombstones: expired blobs and abandoned partial uploads are removed, leaving a
//! tombstone each; tombstones are kept for [`TOMBSTONE_RETENTION`], at most [`TOMBSTONE_MAX`].

use super::index::{signed, SWEEP_BATCH};
use super::live::Phase;
use super::{BlobStore, SweepReport, TOMBSTONE_MAX, TOMBSTONE_MIN_AGE, TOMBSTONE_RETENTION};
use crate::{valid_id, GoneReason, Result};

impl BlobStore {
    /// Remove expired blobs and abandoned partial uploads. Uses the expiry index, so the cost
    /// is proportional to what is removed, not to the store size.
    pub async fn sweep(&self) -> Result<SweepReport> {
        let now = self.now();
        let mut report = SweepReport::default();
        let abandoned = now.saturating_sub(self.inner.config.abandon_after.as_secs());
        for expired in [true, false] {
            loop {
                let index = &self.inner.index;
                let ids = if expired {
                    index.expired(now).await?
                } else {
                    index.idle_partials(abandoned).await?
                };
                if ids.is_empty() {
                    break;
                }
                for id in ids {
                    self.sweep_one(&id, &mut report).await?;
                }
            }
        }
        let retention = TOMBSTONE_RETENTION.as_secs();
        let young = now.saturating_sub(TOMBSTONE_MIN_AGE.as_secs());
        self.sweep_tombstones(
            now.saturating_sub(retention),
            TOMBSTONE_MAX,
            young,
            &mut report,
        )
        .await?;
        if report.removed_blobs > 0 || report.removed_tombstones > 0 {
            tracing::info!(
                removed_blobs = report.removed_blobs,
                removed_bytes = report.removed_bytes,
                removed_partials = report.removed_partials,
                removed_tombstones = report.removed_tombstones,
                tombstones = report.tombstones,
                "sweep"
            );
        }
        Ok(report)
    }

    /// Remove tombstones from at or before `cutoff`, then the oldest beyond `max` among those
    /// from at or before `evictable`.
    pub(super) async fn sweep_tombstones(
        &self,
        cutoff: u64,
        max: u64,
        evictable: u64,
        report: &mut SweepReport,
    ) -> Result<()> {
        loop {
            let n = self
                .inner
                .index
                .delete_oldest_tombstones(cutoff, SWEEP_BATCH)
                .await?;
            report.removed_tombstones += n;
            if n == 0 {
                break;
            }
        }
        loop {
            let count = self.inner.index.tombstone_count().await?;
            report.tombstones = count;
            if count <= max {
                return Ok(());
            }
            let excess = signed(count - max).min(SWEEP_BATCH);
            let n = self
                .inner
                .index
                .delete_oldest_tombstones(evictable, excess)
                .await?;
            report.removed_tombstones += n;
            if n == 0 {
                tracing::warn!(
                    tombstones = report.tombstones,
                    max,
                    "more recent tombstones than the bound: all are younger than the minimum age and kept"
                );
                return Ok(());
            }
        }
    }

    pub(super) async fn sweep_one(&self, id: &str, report: &mut SweepReport) -> Result<()> {
        let state = self.delete_row(id, Some(GoneReason::Expired)).await?;
        self.live_end(id, Phase::Gone);
        let bytes = if valid_id(id) {
            self.remove_files(id).await?
        } else {
            0
        };
        if let Some(was_complete) = state {
            report.removed_blobs += 1;
            report.removed_bytes += bytes;
            if !was_complete {
                report.removed_partials += 1;
            }
        }
        Ok(())
    }
}
