//! The group commit: completions arriving at about the same time share one index statement
//! (one `synchronous=FULL` commit of the index) and one fsync per shard directory they renamed
//! into, and these flushes run side by side.

use std::collections::{BTreeSet, HashSet};
use std::fs::File;
use std::io;
use std::path::PathBuf;

use super::BlobStore;
use crate::Result;

/// Most completions committed together (one index statement).
const COMMIT_GROUP_MAX: usize = 128;

/// Uploads whose data is fsync'd and renamed to `.blob` (and the rename fsync'd), waiting for
/// the index update that makes the completion durable; one task commits them in groups.
#[derive(Default)]
pub(super) struct CommitQueue {
    pending: Vec<PendingCommit>,
    /// A commit task is running (it takes whatever is pending when it starts a group).
    running: bool,
}

struct PendingCommit {
    id: String,
    /// The shard directory it was renamed into.
    dir: PathBuf,
    /// `None` when the upload was not hashed.
    sha256: Option<String>,
    /// Whether the index row was still there (not swept or cancelled meanwhile).
    done: tokio::sync::oneshot::Sender<std::result::Result<bool, String>>,
}

impl BlobStore {
    /// Make the completion of `id` durable: its data is fsync'd and it is renamed to `.blob`
    /// (durably); what is left is marking it complete in the index. Completions arriving at
    /// about the same time share one index statement.
    /// Returns `false` if the index row is gone (swept or cancelled meanwhile).
    pub(super) async fn commit_complete(&self, id: &str, sha256: Option<&str>) -> Result<bool> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let lead = {
            let mut q = self.inner.commits.lock().unwrap_or_else(|e| e.into_inner());
            q.pending.push(PendingCommit {
                id: id.to_owned(),
                dir: self.inner.layout.shard_dir(id),
                sha256: sha256.map(str::to_owned),
                done: tx,
            });
            !std::mem::replace(&mut q.running, true)
        };
        if lead {
            // A task of its own: a caller that goes away does not strand the others.
            let store = self.clone();
            tokio::spawn(async move { store.run_commits().await });
        }
        match rx.await {
            Ok(Ok(updated)) => Ok(updated),
            Ok(Err(e)) => Err(io::Error::other(e).into()),
            Err(_) => Err(io::Error::other("commit task failed").into()),
        }
    }

    /// Commit pending completions, a group at a time, until none are left.
    async fn run_commits(&self) {
        loop {
            let group: Vec<PendingCommit> = {
                let mut q = self.inner.commits.lock().unwrap_or_else(|e| e.into_inner());
                if q.pending.is_empty() {
                    q.running = false;
                    return;
                }
                let n = q.pending.len().min(COMMIT_GROUP_MAX);
                q.pending.drain(..n).collect()
            };
            let res = self.commit_group(&group).await;
            for p in group {
                let r = match &res {
                    Ok(updated) => Ok(updated.contains(&p.id)),
                    Err(e) => Err(e.to_string()),
                };
                let _ = p.done.send(r);
            }
        }
    }

    /// One fsync per shard directory of the group (covering its renames and its files'
    /// creation) and one index statement marking the group complete, all at the same time: the
    /// completions wait for every one of them, but for the longest rather than their sum. A
    /// crash can then leave a complete row whose rename was lost: recovery finds its `.part`
    /// whole (its data was fsync'd before it joined a group) and finishes the rename.
    /// Returns the ids whose rows were updated.
    async fn commit_group(&self, group: &[PendingCommit]) -> Result<HashSet<String>> {
        let dirs: BTreeSet<PathBuf> = group.iter().map(|p| p.dir.clone()).collect();
        let syncs: Vec<_> = dirs
            .into_iter()
            .map(|dir| tokio::task::spawn_blocking(move || File::open(&dir)?.sync_all()))
            .collect();
        let synced = async {
            for s in syncs {
                s.await.map_err(io::Error::other)??;
            }
            Ok::<(), crate::StoreError>(())
        };
        let (synced, updated) = tokio::join!(synced, self.commit_rows(group));
        synced?;
        updated
    }

    /// The index statement of [`Self::commit_group`].
    async fn commit_rows(&self, group: &[PendingCommit]) -> Result<HashSet<String>> {
        let group: Vec<(&str, Option<&str>)> = group
            .iter()
            .map(|p| (p.id.as_str(), p.sha256.as_deref()))
            .collect();
        self.inner.index.commit_complete(self.now(), &group).await
    }
}
