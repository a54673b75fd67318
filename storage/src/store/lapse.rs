//! Idle reservations give way: a partial upload counts its whole declared size against the
//! capacity, the free-disk watermark and its sender's quota, so uploads that stop after a few
//! bytes would keep real uploads out until they are abandoned. Once one has made no progress
//! for `reservation_idle`, it is removed as soon as an upload needs its room. Progress is
//! counted at the pace that completes the upload before it expires (`BlobWriter::touch`),
//! with or without a writer attached: a byte, or an empty request, every minute kept a
//! reservation of any size for its whole lifetime (attack 5).

use super::{BlobStore, Result, SweepReport};

impl BlobStore {
    /// Remove up to one batch of partial uploads idle for `reservation_idle` (answered `410
    /// Gone` afterwards, like an abandoned upload; an attached writer fails). Returns how many.
    pub(super) async fn lapse_idle_reservations(&self) -> Result<u64> {
        let idle = self.inner.config.reservation_idle.as_secs();
        let cutoff = self.now().saturating_sub(idle);
        let ids = self.inner.index.idle_partials(cutoff).await?;
        let mut report = SweepReport::default();
        for id in ids {
            self.sweep_one(&id, &mut report).await?;
        }
        if report.removed_partials > 0 {
            tracing::info!(
                removed = report.removed_partials,
                "idle upload reservations lapsed to admit a new upload"
            );
        }
        Ok(report.removed_partials)
    }
}
