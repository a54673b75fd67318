//! Readers and downloads: a reader follows the writer of an upload in progress (taking its
//! recent buffers when it keeps up) and reads complete blobs with positional reads.

use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;

use super::index::unsigned;
use super::live::{Phase, Progress};
use super::pace::Following;
use super::{BlobInfo, BlobStore};
use crate::{disk, valid_id, Result, StoreError};

/// How often a waiting reader re-checks the index (for sweeps done by another process).
const READER_RECHECK: Duration = Duration::from_secs(5);
/// Reads up to this size whose bytes are in the page cache are made on the calling (async)
/// thread, a memory copy of tens of microseconds, instead of a hand-over to a blocking thread
/// and back; anything the kernel would wait for the disk for goes the blocking way.
const INLINE_READ_MAX: usize = 256 << 10;

/// Times a reader waits for an attached writer to create its upload's file.
const CREATE_RETRIES: u32 = 3;
/// Longest wait each time (a file creation; bounded so a stuck one cannot hold a reader).
const CREATE_WAIT: Duration = Duration::from_secs(1);

/// Open the `.part` file of an incomplete blob, or its `.blob` (completed meanwhile, or
/// complete from the start); the flag says which.
fn open_part_or_blob(part: &Path, blob: &Path, complete: bool) -> io::Result<(File, bool)> {
    if !complete {
        match File::open(part) {
            Ok(f) => return Ok((f, false)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok((File::open(blob)?, true))
}

/// A reader's file: open, or being opened on a blocking thread. A reader following an upload
/// in progress does not wait for the open before it is handed out (its first bytes usually
/// come from the writer's buffers); the open still starts at once, so the file is held open
/// early, as a reader opened the usual way holds it.
enum FileSlot {
    Open(Arc<File>),
    Opening(tokio::task::JoinHandle<io::Result<(File, bool)>>),
    /// To be opened when needed (the open above found no file, or failed).
    NotOpen,
}

impl BlobStore {
    /// Open a reader for bytes `start..end` (`end` ≤ declared size) of a blob just looked up
    /// with [`BlobStore::info`] (or counted with [`BlobStore::record_ready_download`]). If the
    /// upload is still in progress the reader follows the writer; a blob completed or removed
    /// since the lookup is handled.
    pub async fn reader_for(&self, info: &BlobInfo, start: u64, end: u64) -> Result<BlobReader> {
        let id = info.id.as_str();
        let end = end.min(info.size);
        let start = start.min(end);
        let live = if info.complete {
            None
        } else {
            Some(self.live_get_or_insert(id, || info.committed))
        };
        let mut rx = live.as_ref().map(|l| l.tx.subscribe());
        if let Some(l) = live
            .as_ref()
            .filter(|l| l.writer_active.load(Ordering::SeqCst))
        {
            // Following a writer: subscribed above, so it keeps its buffers for us from now
            // on; the file (`.part`, or `.blob` once renamed) is opened beside the answer.
            let (part, blob) = (self.part_path(id), self.blob_path(id));
            let opening =
                tokio::task::spawn_blocking(move || open_part_or_blob(&part, &blob, false));
            return Ok(BlobReader {
                store: self.clone(),
                id: id.to_owned(),
                file: FileSlot::Opening(opening),
                pos: start,
                end,
                size: info.size,
                rx,
                following: Some(Following::new(l.clone(), start)),
                stats: ReadStats::default(),
            });
        }
        let mut tries = 0;
        let (file, is_complete) = loop {
            let (part, blob) = (self.part_path(id), self.blob_path(id));
            let complete = info.complete;
            let opened =
                tokio::task::spawn_blocking(move || open_part_or_blob(&part, &blob, complete))
                    .await
                    .map_err(io::Error::other)?;
            match opened {
                Ok(v) => break v,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    // The row is written before its upload's file is created: the writer
                    // creates the file (or gives up) and then publishes its progress, so a
                    // fresh upload's reader waits for that a little before calling it missing.
                    let creating = info.committed == 0
                        || live
                            .as_ref()
                            .is_some_and(|l| l.writer_active.load(Ordering::SeqCst));
                    match rx.as_mut() {
                        Some(rx) if creating && tries < CREATE_RETRIES => {
                            tries += 1;
                            let _ = tokio::time::timeout(CREATE_WAIT, rx.changed()).await;
                        }
                        _ => return Err(self.missing(id).await),
                    }
                }
                Err(e) => return Err(e.into()),
            }
        };
        Ok(BlobReader {
            store: self.clone(),
            id: id.to_owned(),
            file: FileSlot::Open(Arc::new(file)),
            pos: start,
            end,
            size: info.size,
            rx: if is_complete { None } else { rx },
            following: live
                .filter(|_| !is_complete)
                .map(|l| Following::new(l, start)),
            stats: ReadStats::default(),
        })
    }

    /// Count a download; fails with [`StoreError::DownloadLimit`] once `limit` downloads have
    /// started.
    pub async fn record_download(&self, id: &str, limit: Option<u32>) -> Result<u32> {
        let index = &self.inner.index;
        match index.count_download(id, limit.unwrap_or(u32::MAX)).await? {
            Some(n) => Ok(n),
            None if index.blob(id).await?.is_some() => Err(StoreError::DownloadLimit),
            None => Err(self.missing(id).await),
        }
    }

    /// Count a download of an unexpired blob of `size` bytes in one index statement (no
    /// lookup before it) and return its info: a complete blob, or an upload in progress whose
    /// writer or readers are in this process (its stored length is then known here). `None`
    /// (nothing counted) otherwise, or when the download limit is reached; the caller then
    /// takes the general path ([`BlobStore::info`], [`BlobStore::record_download`]), which
    /// says why. With `deliver` the same statement marks a complete blob delivered (see
    /// [`BlobStore::record_served`]): for a download of the whole file answered in one piece.
    pub async fn record_ready_download(
        &self,
        id: &str,
        limit: Option<u32>,
        size: u64,
        deliver: bool,
    ) -> Result<Option<BlobInfo>> {
        if !valid_id(id) {
            return Err(StoreError::InvalidId);
        }
        let limit = limit.unwrap_or(u32::MAX);
        // Held across the statement: a live entry ends only once its row is complete or gone.
        let live = self.live_get(id);
        let counted = self.inner.index.count_ready_download(
            id,
            size,
            self.now(),
            limit,
            deliver,
            live.is_some(),
        );
        let Some(row) = counted.await? else {
            return Ok(None);
        };
        let complete = row.state == 1;
        let committed = match (&live, complete) {
            (_, true) => size,
            (Some(live), false) => live.tx.borrow().written.min(size),
            (None, false) => 0,
        };
        Ok(Some(BlobInfo {
            id: id.to_owned(),
            size,
            committed,
            complete,
            expires: unsigned(row.expires),
            sender: row.sender,
            sha256: row.sha256,
            downloads: u32::try_from(row.downloads).unwrap_or(u32::MAX),
        }))
    }

    /// Bytes `start..end` of a complete blob, read at once (open and read in one blocking
    /// step): for small downloads.
    pub async fn read_complete(&self, id: &str, start: u64, end: u64) -> Result<Bytes> {
        if !valid_id(id) {
            return Err(StoreError::InvalidId);
        }
        let blob = self.blob_path(id);
        let want = usize::try_from(end.saturating_sub(start))
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "range too large"))?;
        if want <= INLINE_READ_MAX {
            if let Ok(Some(f)) = disk::open_cached(&blob) {
                if let Some(buf) = disk::read_cached(&f, start, want) {
                    return Ok(Bytes::from(buf));
                }
            }
        }
        let read = tokio::task::spawn_blocking(move || -> io::Result<Vec<u8>> {
            let f = File::open(&blob)?;
            disk::read_at_most(&f, start, want)
        })
        .await
        .map_err(io::Error::other)?;
        let buf = match read {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(self.missing(id).await),
            Err(e) => return Err(e.into()),
        };
        if buf.len() != want {
            // Truncated underneath: never serve a short body as if it were whole.
            return Err(StoreError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "blob file shorter than expected",
            )));
        }
        Ok(Bytes::from(buf))
    }
}

/// Reads a range of a blob, following the writer while the upload is in progress.
pub struct BlobReader {
    store: BlobStore,
    id: String,
    file: FileSlot,
    pos: u64,
    end: u64,
    /// The blob's declared size.
    size: u64,
    rx: Option<watch::Receiver<Progress>>,
    /// The live upload (while following it): recent chunks are taken from memory, and the
    /// writer paces itself to this reader.
    following: Option<Following>,
    /// Where the bytes served came from (logged at debug when the reader ends).
    stats: ReadStats,
}

/// Bytes a reader served from the writer's buffers, the page cache (inline) and blocking
/// reads, and inline reads that fell through to a blocking one.
#[derive(Debug, Default)]
struct ReadStats {
    memory: u64,
    cached: u64,
    blocking: u64,
    blocking_reads: u32,
}

impl Drop for BlobReader {
    fn drop(&mut self) {
        let s = &self.stats;
        if s.cached + s.blocking > 0 {
            tracing::debug!(id = %self.id, memory = s.memory, cached = s.cached,
                blocking = s.blocking, blocking_reads = s.blocking_reads, "reader done");
        }
    }
}

impl BlobReader {
    /// The next chunk of at most `max` bytes; `None` at the end of the range. Waits for the
    /// writer when it is behind; fails if the upload is cancelled, expires or is swept.
    pub async fn next_chunk(&mut self, max: usize) -> Result<Option<Bytes>> {
        if self.pos >= self.end {
            return Ok(None);
        }
        let avail_end = self.wait_available().await?;
        let max = max.max(1);
        // Caught up with the writer: take its buffers (no file read, no copy).
        let held = self
            .following
            .as_ref()
            .and_then(|f| f.live.recent().get(self.pos, avail_end, max));
        if let Some(b) = held {
            self.stats.memory += b.len() as u64;
            self.advance(b.len());
            return Ok(Some(b));
        }
        let want = (avail_end - self.pos).min(max as u64);
        let pos = self.pos;
        let file = self.file().await?;
        if let Ok(n @ 1..=INLINE_READ_MAX) = usize::try_from(want) {
            if let Some(buf) = disk::read_cached(&file, pos, n) {
                self.stats.cached += buf.len() as u64;
                self.advance(buf.len());
                return Ok(Some(Bytes::from(buf)));
            }
        }
        // Positional reads: cancelling this future (the read finishes on its own) leaves the
        // reader usable.
        let buf = tokio::task::spawn_blocking(move || {
            disk::read_at_most(&file, pos, usize::try_from(want).unwrap_or(0))
        })
        .await
        .map_err(io::Error::other)??;
        if buf.is_empty() {
            // The writer said the bytes were there; the file is shorter: truncated underneath.
            return Err(StoreError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "blob file shorter than expected",
            )));
        }
        self.stats.blocking += buf.len() as u64;
        self.advance(buf.len());
        self.stats.blocking_reads += 1;
        Ok(Some(Bytes::from(buf)))
    }

    /// Completes once [`BlobReader::next_chunk`] would not wait for the writer (bytes past the
    /// position are stored, the range is done, or the upload ended); its error is the one
    /// `next_chunk` would return. Lets a caller tell waiting for data from sending it.
    pub async fn wait_for_data(&mut self) -> Result<()> {
        if self.pos < self.end {
            self.wait_available().await?;
        }
        Ok(())
    }

    /// The file, once open. An open started beside the answer that found no file (the upload
    /// created it, or renamed it, meanwhile) is made again: the bytes asked for are stored by
    /// now, so a missing file means the blob is gone. Cancel-safe.
    async fn file(&mut self) -> Result<Arc<File>> {
        if let FileSlot::Opening(opening) = &mut self.file {
            let opened = opening.await;
            // A finished open is never awaited again.
            self.file = FileSlot::NotOpen;
            match opened.map_err(io::Error::other)? {
                Ok((f, _)) => self.file = FileSlot::Open(Arc::new(f)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        if let FileSlot::Open(f) = &self.file {
            return Ok(f.clone());
        }
        let (part, blob) = (
            self.store.part_path(&self.id),
            self.store.blob_path(&self.id),
        );
        let opened = tokio::task::spawn_blocking(move || open_part_or_blob(&part, &blob, false))
            .await
            .map_err(io::Error::other)?;
        let file = match opened {
            Ok((f, _)) => Arc::new(f),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(self.store.missing(&self.id).await)
            }
            Err(e) => return Err(e.into()),
        };
        self.file = FileSlot::Open(file.clone());
        Ok(file)
    }

    fn stop_following(&mut self) {
        self.rx = None;
        self.following = None;
    }

    /// `n` bytes served: the writer pacing itself to this reader hears of it.
    fn advance(&mut self, n: usize) {
        self.pos += n as u64;
        if let Some(f) = &self.following {
            f.moved(self.pos);
        }
    }

    /// Wait until bytes past `pos` are stored; return how far we may read.
    async fn wait_available(&mut self) -> Result<u64> {
        let Some(rx) = self.rx.as_mut() else {
            return Ok(self.end);
        };
        loop {
            let p = *rx.borrow_and_update();
            match p.phase {
                Phase::Cancelled => return Err(StoreError::Cancelled),
                Phase::Gone => return Err(StoreError::Expired),
                Phase::Complete => {
                    self.stop_following();
                    return Ok(self.end);
                }
                Phase::Writing | Phase::Idle => {}
            }
            // The file's last byte waits for its SHA-256 check (see `Progress::verified`).
            let ready = if p.verified {
                p.written
            } else {
                p.written.min(self.size.saturating_sub(1))
            };
            if ready > self.pos {
                return Ok(ready.min(self.end));
            }
            match tokio::time::timeout(READER_RECHECK, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => {
                    // Sender dropped after the entry ended; the last value tells why.
                    let p = *rx.borrow();
                    return match p.phase {
                        Phase::Complete => {
                            self.stop_following();
                            Ok(self.end)
                        }
                        Phase::Cancelled => Err(StoreError::Cancelled),
                        _ => Err(StoreError::Expired),
                    };
                }
                Err(_) => {
                    // Nothing for a while: make sure nobody (e.g. a cron sweep in another
                    // process) removed the blob.
                    match self.store.info(&self.id).await {
                        Ok(i) if i.complete => {
                            self.stop_following();
                            return Ok(self.end);
                        }
                        Ok(_) => {}
                        Err(StoreError::NotFound) => return Err(StoreError::Expired),
                        Err(e) => return Err(e),
                    }
                }
            }
        }
    }
}
