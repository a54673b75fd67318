//! Idle reservations give way: a partial upload counts its whole declared size against the
//! capacity, the free-disk watermark and its sender's quota, so uploads that stop after a few
//! bytes would keep real uploads out until they are abandoned. Once one has made no progress
//! for `reservation_idle` and no writer is attached, it is removed as soon as an upload needs
//! its room.

use std::sync::atomic::Ordering;

use super::{BlobStore, Result, SweepReport};

impl BlobStore {
    /// Remove up to one batch of partial uploads idle for `reservation_idle` without a writer
    /// (answered `410 Gone` afterwards, like an abandoned upload). Returns how many.
    pub(super) async fn lapse_idle_reservations(&self) -> Result<u64> {
        let idle = self.inner.config.reservation_idle.as_secs();
        let cutoff = self.now().saturating_sub(idle);
        let ids = self.inner.index.idle_partials(cutoff).await?;
        let mut report = SweepReport::default();
        for id in ids {
            // A stalled writer still attached is cut by the relay's body idle timeout first.
            let writing = self
                .live_get(&id)
                .is_some_and(|l| l.writer_active.load(Ordering::SeqCst));
            if !writing {
                self.sweep_one(&id, &mut report).await?;
            }
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

#[cfg(test)]
mod tests {
    use super::super::{BlobStore, NewBlob, StoreConfig};
    use crate::ManualClock;
    use crate::StoreError;
    use std::sync::Arc;
    use std::time::Duration;

    fn blob(id: &str, size: u64, sender: &str) -> NewBlob {
        NewBlob {
            id: id.into(),
            size,
            expires: u64::MAX / 2,
            sender: sender.into(),
            sha256: None,
        }
    }

    #[tokio::test]
    async fn completions_commit_with_synchronous_full() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = BlobStore::open(dir.path(), StoreConfig::default())
            .await
            .expect("open");
        // 2 = FULL: the WAL is fsync'd by the commit that marks an upload complete.
        let (full,): (i64,) = sqlx::query_as("PRAGMA synchronous")
            .fetch_one(store.inner.index.durable_pool())
            .await
            .expect("pragma");
        assert_eq!(full, 2, "completion commits use synchronous=FULL");
        let (normal,): (i64,) = sqlx::query_as("PRAGMA synchronous")
            .fetch_one(store.inner.index.pool())
            .await
            .expect("pragma");
        assert_eq!(normal, 1, "other writes stay NORMAL");
        store.close().await;
    }

    #[tokio::test]
    async fn idle_reservation_lapses_only_when_room_is_needed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let clock = Arc::new(ManualClock::new(1_000_000));
        let config = StoreConfig {
            capacity_bytes: 1000,
            min_free_bytes: 0,
            reservation_idle: Duration::from_secs(120),
            clock: clock.clone(),
            ..StoreConfig::default()
        };
        let store = BlobStore::open(dir.path(), config).await.expect("open");
        let mut w = store
            .create_writer(blob("idle", 900, "mallory"))
            .await
            .expect("create");
        w.append(vec![bytes::Bytes::from_static(b"x")])
            .await
            .expect("append");
        drop(w);
        // Attached writer or recent progress: the reservation holds.
        clock.advance(119);
        assert!(matches!(
            store.create(blob("real", 500, "alice")).await,
            Err(StoreError::CapacityExceeded)
        ));
        let held = store.writer("idle").await.expect("resumable");
        clock.advance(200);
        assert!(matches!(
            store.create(blob("real", 500, "alice")).await,
            Err(StoreError::CapacityExceeded)
        ));
        drop(held);
        // Idle for longer than reservation_idle and no writer: it gives way.
        store
            .create(blob("real", 500, "alice"))
            .await
            .expect("admitted");
        assert!(matches!(store.info("idle").await, Err(StoreError::Gone(_))));
        store.close().await;
    }
}
