//! Crash recovery: the index is reconciled with the files of `blobs/` when the serving process
//! opens the store.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs::File;
use std::io;
use std::path::PathBuf;

use sha2::{Digest, Sha256};

use super::index::unsigned;
use super::BlobStore;
use crate::{valid_id, Result};

impl BlobStore {
    /// Reconcile the index with the files after a crash or restart.
    pub(super) async fn recover(&self) -> Result<()> {
        let rows = self.inner.index.all_rows().await?;
        let layout = self.inner.layout.clone();
        // (path, len) of every file in blobs/, after moving an older store's files into
        // their shards.
        let files: HashMap<PathBuf, u64> =
            tokio::task::spawn_blocking(move || -> io::Result<HashMap<PathBuf, u64>> {
                let moved = layout.migrate_legacy()?;
                if moved > 0 {
                    tracing::info!(moved, "recovery: moved files into the blobs/ shards");
                }
                Ok(layout.files()?.into_iter().collect())
            })
            .await
            .map_err(io::Error::other)??;
        let mut keep: HashSet<PathBuf> = HashSet::new();
        let now = self.now();
        for row in rows {
            let (id, size, complete) = (row.id, unsigned(row.size), row.state == 1);
            if !valid_id(&id) {
                self.delete_row(&id, None).await?;
                continue;
            }
            let (blob_path, part_path) = (self.blob_path(&id), self.part_path(&id));
            let blob = files.get(&blob_path).copied();
            let part = files.get(&part_path).copied();
            let ok_blob = blob == Some(size);
            let renamed = if complete && blob.is_none() && part == Some(size) {
                // Committed while the fsync of its rename was still running: the data was
                // fsync'd (and checked) before the commit began, so the `.part` should be
                // whole. Rare: checked against the stored SHA-256 all the same (data lost
                // despite the fsync must not be served as complete).
                let (from, to) = (part_path.clone(), blob_path.clone());
                let expected = row.sha256.clone();
                tokio::task::spawn_blocking(move || -> io::Result<bool> {
                    if let Some(expected) = expected {
                        if !hash_matches(&from, &expected)? {
                            return Ok(false);
                        }
                    }
                    std::fs::rename(&from, &to)?;
                    if let Some(dir) = to.parent() {
                        File::open(dir)?.sync_all()?;
                    }
                    Ok(true)
                })
                .await
                .map_err(io::Error::other)??
            } else {
                false
            };
            if complete && blob.is_none() && part == Some(size) && !renamed {
                tracing::warn!(id, "recovery: a completed file lost its rename and no longer matches its SHA-256; removed");
            }
            if renamed {
                // Its old name is gone: not an orphan to remove.
                keep.insert(part_path.clone());
            }
            if ok_blob || renamed {
                if !complete {
                    // Crashed between the rename and the index update: the rename only happens
                    // after the data is fsync'd and verified, so it is complete.
                    self.inner.index.mark_complete(&id).await?;
                }
                keep.insert(blob_path);
            } else if !complete && part.is_some_and(|l| l <= size) {
                // Interrupted upload: keep it resumable; restart the abandonment clock.
                self.inner.index.set_progress(&id, now).await?;
                keep.insert(part_path);
            } else {
                tracing::warn!(id, "recovery: index entry without usable data, removed");
                self.delete_row(&id, None).await?;
            }
        }
        let removed = tokio::task::spawn_blocking(move || -> io::Result<usize> {
            let mut n = 0;
            let mut dirs = BTreeSet::new();
            for path in files.keys() {
                if !keep.contains(path) {
                    std::fs::remove_file(path)?;
                    if let Some(dir) = path.parent() {
                        dirs.insert(dir.to_path_buf());
                    }
                    n += 1;
                }
            }
            for dir in dirs {
                File::open(&dir)?.sync_all()?;
            }
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

/// Whether the file at `path` hashes to `expected` (lowercase hex).
fn hash_matches(path: &std::path::Path, expected: &str) -> io::Result<bool> {
    use std::io::Read;
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match file.read(&mut buf)? {
            0 => break,
            n => hasher.update(&buf[..n]),
        }
    }
    Ok(hex::encode(hasher.finalize()).eq_ignore_ascii_case(expected))
}
