//! `msim receive`'s downloads: several at once, each on its own. One transfer that fails
//! (a wrong hash, a cancelled or expired transfer) gets a failure line and the others go on;
//! one that makes no progress for [`NO_PROGRESS`] is given up, so a sender that stalls its
//! upload cannot hold the receiver. Transfers accepted by an earlier run that did not finish
//! are resumed from their download grant, which the server sends again at login.

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use futures::stream::{FuturesUnordered, StreamExt};
use msim::proto::{DownloadGrant, FileOffered};
use msim::Client;

use super::files::{accept, download_one, hash_watch, staging_path};
use super::Ctx;
use crate::error::Interrupted;
use crate::output::json::FileLine;

/// Downloads at once; further accepted offers wait their turn.
pub const MAX_DOWNLOADS: usize = 4;

/// A download that has received nothing for this long is given up (the relay itself cuts a
/// download waiting for upload data after its body idle time, 60 s by default, and the
/// download is resumed a few times before that).
pub const NO_PROGRESS: Duration = Duration::from_secs(180);

type Job<'a> = Pin<Box<dyn Future<Output = (FileOffered, Result<()>)> + 'a>>;

/// The accepted offers of one `receive`: downloading, or waiting for their turn.
#[derive(Default)]
pub struct Jobs<'a> {
    running: FuturesUnordered<Job<'a>>,
    /// Accepted offers, and grants of transfers accepted before (to resume), in turn.
    queued: VecDeque<(FileOffered, Option<DownloadGrant>)>,
    /// Transfers queued or downloading.
    known: HashSet<String>,
    failed: u64,
}

impl<'a> Jobs<'a> {
    /// `offer` was accepted by the user: it downloads when there is room.
    pub fn queue(&mut self, offer: FileOffered) {
        if self.known.insert(offer.transfer_id.clone()) {
            self.queued.push_back((offer, None));
        }
    }

    /// A download grant pushed without our asking (at login, for an offer accepted before):
    /// resumed when an earlier run left its partial download in `out`, else ignored (a
    /// transfer finished before, or one another device of the user accepted).
    pub fn resume(&mut self, grant: DownloadGrant, out: &Path) {
        let mut part = staging_path(out, &grant.transfer_id).into_os_string();
        part.push(".part");
        if !Path::new(&part).exists() || !self.known.insert(grant.transfer_id.clone()) {
            return;
        }
        let offer = FileOffered {
            transfer_id: grant.transfer_id.clone(),
            from: grant.from.clone(),
            filename: grant.filename.clone(),
            size: grant.size,
            expires: grant.expires,
            sha256: grant.sha256.clone(),
            mime: grant.mime.clone(),
        };
        self.queued.push_back((offer, Some(grant)));
    }

    /// Nothing downloading or waiting.
    pub fn is_idle(&self) -> bool {
        self.running.is_empty() && self.queued.is_empty()
    }

    /// Accept waiting offers and start their downloads while there is room.
    pub async fn start_queued(&mut self, ctx: &'a Ctx<'a>, client: &'a Client, out: &'a Path) {
        while self.running.len() < MAX_DOWNLOADS {
            let Some((offer, grant)) = self.queued.pop_front() else {
                return;
            };
            let accepted = match grant {
                // Resumed: a hash the sender declared is pushed again after the grant, but
                // may have passed already; then the file is reported NOT verified.
                Some(grant) => hash_watch(client, &offer).map(|w| (grant, w)),
                None => accept(client, &offer).await,
            };
            match accepted {
                Ok((grant, watch)) => self.running.push(Box::pin(async move {
                    let r = download_one(ctx, &offer, &grant, out, watch.as_ref()).await;
                    if r.is_ok() {
                        // Handled: the grant need not come again at later logins (§10.6; a
                        // failure only means it does, and is then ignored: no partial file).
                        let _ = client.file_done(&offer.transfer_id).await;
                    }
                    (offer, r)
                })),
                Err(e) => {
                    self.known.remove(&offer.transfer_id);
                    // Only an interruption stops `receive`; it is seen at the next select.
                    let _ = self.failed(ctx, &offer, &e);
                }
            }
        }
    }

    /// Completes when a download has ended (a failure is reported); never without downloads.
    pub async fn next_done(&mut self, ctx: &Ctx<'_>) {
        if self.running.is_empty() {
            return std::future::pending().await;
        }
        if let Some((offer, r)) = self.running.next().await {
            self.known.remove(&offer.transfer_id);
            if let Err(e) = r {
                let _ = self.failed(ctx, &offer, &e);
            }
        }
    }

    /// Report that `offer` failed with `error` (an interruption is passed on instead).
    pub fn failed(
        &mut self,
        ctx: &Ctx<'_>,
        offer: &FileOffered,
        error: &anyhow::Error,
    ) -> Result<()> {
        if error.is::<Interrupted>() {
            return Err(anyhow!(Interrupted));
        }
        self.failed += 1;
        let text = format!("{error:#}");
        let line = FileLine::Failed {
            ok: false,
            transfer_id: &offer.transfer_id,
            from: &offer.from,
            filename: &offer.filename,
            error: &text,
        };
        ctx.out.print(&line, || {
            format!("Failed: {} from {}: {text}", offer.filename, offer.from)
        });
        Ok(())
    }

    /// How `receive` ends after `handled` offers: an error if any of them failed.
    pub fn result(&self, handled: u64) -> Result<()> {
        match self.failed {
            0 => Ok(()),
            n => Err(anyhow!("{n} of {handled} transfers failed")),
        }
    }
}

/// When a download last made progress.
#[derive(Clone)]
pub struct Activity(Arc<Mutex<Instant>>);

impl Activity {
    pub fn new() -> Activity {
        Activity(Arc::new(Mutex::new(Instant::now())))
    }

    /// Progress now.
    pub fn touch(&self) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    /// Completes once there has been no progress for `limit`.
    pub async fn stalled(&self, limit: Duration) {
        loop {
            let last = *self.0.lock().unwrap_or_else(|p| p.into_inner());
            let due = last + limit;
            if Instant::now() >= due {
                return;
            }
            tokio::time::sleep_until(due.into()).await;
        }
    }
}
