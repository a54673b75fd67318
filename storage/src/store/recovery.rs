//! Crash recovery: the index is reconciled with the files of `blobs/` when the serving process
//! opens the store.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io;

use super::index::unsigned;
use super::BlobStore;
use crate::{valid_id, Result};

impl BlobStore {
    /// Reconcile the index with the files after a crash or restart.
    pub(super) async fn recover(&self) -> Result<()> {
        let rows = self.inner.index.all_rows().await?;
        let dir = self.inner.blobs_dir.clone();
        // (name, len) of every file in blobs/.
        let files: HashMap<String, u64> =
            tokio::task::spawn_blocking(move || -> io::Result<HashMap<String, u64>> {
                let mut m = HashMap::new();
                for e in std::fs::read_dir(&dir)? {
                    let e = e?;
                    let len = e.metadata()?.len();
                    m.insert(e.file_name().to_string_lossy().into_owned(), len);
                }
                Ok(m)
            })
            .await
            .map_err(io::Error::other)??;
        let mut keep: HashSet<String> = HashSet::new();
        let now = self.now();
        for row in rows {
            let (id, size, complete) = (row.id, unsigned(row.size), row.state == 1);
            let blob = files.get(&format!("{id}.blob")).copied();
            let part = files.get(&format!("{id}.part")).copied();
            let ok_blob = blob == Some(size);
            if !valid_id(&id) {
                self.delete_row(&id, None).await?;
                continue;
            }
            if ok_blob {
                if !complete {
                    // Crashed between the rename and the index update: the rename only happens
                    // after the data is fsync'd and verified, so it is complete.
                    self.inner.index.mark_complete(&id).await?;
                }
                keep.insert(format!("{id}.blob"));
            } else if !complete && part.is_some_and(|l| l <= size) {
                // Interrupted upload: keep it resumable; restart the abandonment clock.
                self.inner.index.set_progress(&id, now).await?;
                keep.insert(format!("{id}.part"));
            } else {
                tracing::warn!(id, "recovery: index entry without usable data, removed");
                self.delete_row(&id, None).await?;
            }
        }
        let dir = self.inner.blobs_dir.clone();
        let removed = tokio::task::spawn_blocking(move || -> io::Result<usize> {
            let mut n = 0;
            for name in files.keys() {
                if !keep.contains(name) {
                    std::fs::remove_file(dir.join(name))?;
                    n += 1;
                }
            }
            File::open(&dir)?.sync_all()?;
            Ok(n)
        })
        .await
        .map_err(io::Error::other)??;
        if removed > 0 {
            tracing::info!(removed, "recovery: removed orphan files");
        }
        Ok(())
    }
}
