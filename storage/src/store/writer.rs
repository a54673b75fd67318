//! Writers: the one writer of an upload appends to its `.part` file, hashing as it goes, and
//! completes it (fsync, rename to `.blob`, group commit).

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use sha2::{Digest, Sha256};

use super::direct;
use super::live::{LiveUpload, Phase};
use super::pace::Pacer;
use super::{BlobStore, NewBlob};
use crate::{disk, GoneReason, Result, StoreError};

/// Bytes hashed per step when re-hashing a resumed upload's prefix.
const REHASH_CHUNK: usize = 1 << 20;
/// Batches at least this large are hashed and written in parallel (two blocking threads).
const PARALLEL_HASH_MIN: u64 = 128 << 10;
/// Start writeback of stored data every this many bytes, so the fsync at completion has
/// little left to flush (and dirty pages do not pile up).
const WRITEBACK_EVERY: u64 = 8 << 20;

/// Whether a writer hashes what it stores.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hashing {
    /// Hash every byte: the completed blob has a SHA-256 (checked against a declared one).
    Always,
    /// Hash only a blob with a declared SHA-256 (which must be checked); a blob without one
    /// completes without a SHA-256, and a resumed writer does not read its stored prefix back.
    /// (It still continues the hash an earlier hashing writer left, at the cost of the bytes
    /// it appends, so that a later hashing writer need not read everything back.)
    OnlyToCheck,
}

impl Hashing {
    /// A fresh hasher when a blob declaring `declared` is to be hashed.
    fn hasher(self, declared: Option<&str>) -> Option<Sha256> {
        (self == Hashing::Always || declared.is_some()).then(Sha256::new)
    }
}

impl BlobStore {
    /// Become the one writer of `id` (a new live entry starts at offset 0); `Busy` if another
    /// writer is attached. The guard releases the claim when dropped.
    fn claim_writer(&self, id: &str) -> Result<(Arc<LiveUpload>, WriterGuard)> {
        let live = self.live_get_or_insert(id, || 0);
        if live.writer_active.swap(true, Ordering::SeqCst) {
            return Err(StoreError::Busy);
        }
        let guard = WriterGuard {
            store: self.clone(),
            id: id.to_owned(),
            live: live.clone(),
        };
        Ok((live, guard))
    }

    /// Create a blob for a fresh upload after the admission checks (capacity, free-disk
    /// watermark, sender quota, in that order) and open its writer at offset 0, in one index
    /// statement and one file-system step.
    pub async fn create_writer(&self, new: NewBlob) -> Result<BlobWriter> {
        self.create_writer_hashing(new, Hashing::Always).await
    }

    /// [`BlobStore::create_writer`], hashing as `hashing` says.
    pub async fn create_writer_hashing(
        &self,
        new: NewBlob,
        hashing: Hashing,
    ) -> Result<BlobWriter> {
        self.insert(&new).await?;
        let id = new.id.as_str();
        let (live, guard) = self.claim_writer(id)?;
        let part = self.part_path(id);
        let direct = self.writes_direct(new.size);
        let opened = tokio::task::spawn_blocking(move || {
            let file = disk::private_file_options()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&part)?;
            PartFile::new(file, &part, 0, direct)
        })
        .await
        .map_err(io::Error::other)
        .and_then(|r| r);
        let part = match opened {
            Ok(p) => p,
            Err(e) => {
                drop(guard);
                self.delete_row(id, None).await.ok();
                self.live_end(id, Phase::Gone);
                return Err(e.into());
            }
        };
        live.tx.send_modify(|p| {
            p.written = 0;
            p.phase = Phase::Writing;
            p.verified = false;
        });
        let hasher = hashing.hasher(new.sha256.as_deref());
        live.mark(0);
        Ok(BlobWriter {
            guard: Arc::new(guard),
            part: Some(part),
            reports_hash: hasher.is_some(),
            hasher,
            offset: 0,
            size: new.size,
            sha256: new.sha256,
            // `insert` set the progress time.
            last_touch: self.now(),
            marked: 0,
            expires: new.expires,
            pacer: Pacer::new(),
        })
    }

    /// Open a writer appending at the current offset (0 for a fresh upload, the stored length
    /// for a resumed one; the prefix is re-hashed so the final SHA-256 covers the whole file).
    pub async fn writer(&self, id: &str) -> Result<BlobWriter> {
        self.writer_hashing(id, Hashing::Always).await
    }

    /// [`BlobStore::writer`], hashing as `hashing` says (a writer that does not hash leaves
    /// the stored prefix unread).
    pub async fn writer_hashing(&self, id: &str, hashing: Hashing) -> Result<BlobWriter> {
        let (info, last_progress) = self.live_row(id).await?;
        if info.complete {
            return Err(StoreError::AlreadyComplete);
        }
        let part2 = self.part_path(id);
        // A new entry starts at 0 (a lower bound); the real offset is published below.
        let (live, guard) = self.claim_writer(id)?;
        let size = info.size;
        let direct = self.writes_direct(size);
        let wanted = hashing.hasher(info.sha256.as_deref());
        let reports_hash = wanted.is_some();
        let live2 = live.clone();
        let opened = tokio::task::spawn_blocking(
            move || -> io::Result<(PartFile, Option<Sha256>, u64, u64)> {
                let mut f = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&part2)?;
                let len = f.metadata()?.len();
                if len > size {
                    f.set_len(size)?;
                }
                let len = len.min(size);
                // The hash the last writer left at this very offset goes on (also for a writer
                // that does not need it: a later one may); else the prefix is read back.
                let mut rehashed = 0;
                let hasher = match (live2.take_hash(len), wanted) {
                    (Some(saved), _) => Some(saved),
                    (None, Some(mut hasher)) => {
                        let mut buf = vec![0u8; REHASH_CHUNK];
                        let mut left = len;
                        while left > 0 {
                            let n = usize::try_from(left.min(REHASH_CHUNK as u64))
                                .unwrap_or(REHASH_CHUNK);
                            f.read_exact(&mut buf[..n])?;
                            hasher.update(&buf[..n]);
                            left -= n as u64;
                        }
                        rehashed = len;
                        Some(hasher)
                    }
                    (None, None) => None,
                };
                // Appends continue at `len` (positional writes).
                Ok((
                    PartFile::new(f, &part2, len, direct)?,
                    hasher,
                    len,
                    rehashed,
                ))
            },
        )
        .await
        .map_err(io::Error::other)?;
        let (part, hasher, offset, rehashed) = match opened {
            Ok(v) => v,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(StoreError::NotFound),
            Err(e) => return Err(e.into()),
        };
        live.tx.send_modify(|p| {
            p.written = offset;
            p.phase = Phase::Writing;
            p.verified = false;
        });
        self.inner.rehashed.fetch_add(rehashed, Ordering::Relaxed);
        // Opening a writer is no progress: an empty request every minute kept a reservation
        // that sent nothing (attack 5). Its bytes are, at the pace of `progress_step`.
        Ok(BlobWriter {
            guard: Arc::new(guard),
            part: Some(part),
            reports_hash,
            hasher,
            offset,
            size,
            sha256: info.sha256,
            last_touch: last_progress,
            // Bytes of earlier requests since the last mark count (an upload in many small
            // requests makes its steps); after a restart, from here.
            marked: live.marked(offset),
            expires: info.expires,
            pacer: Pacer::new(),
        })
    }
}

/// Marks the live entry writer-free when a writer goes away.
struct WriterGuard {
    store: BlobStore,
    id: String,
    live: Arc<LiveUpload>,
}

impl Drop for WriterGuard {
    fn drop(&mut self) {
        self.live.recent().clear();
        self.live.writer_active.store(false, Ordering::SeqCst);
        self.live.tx.send_modify(|p| {
            if p.phase == Phase::Writing {
                p.phase = Phase::Idle;
            }
        });
    }
}

/// The open `.part` file of a writer.
struct PartFile {
    file: File,
    /// The same file opened with `O_DIRECT`, for large uploads where the file system allows
    /// it: whole blocks are then written without the copy into the page cache.
    direct: Option<File>,
    /// Bytes in the file.
    written: u64,
    /// Start of the range whose writeback has not been started yet.
    writeback_from: u64,
}

impl PartFile {
    /// A writer's file holding `written` bytes; `direct` asks for `O_DIRECT` writes (quietly
    /// not used where the file system refuses them). Blocking.
    fn new(file: File, path: &Path, written: u64, direct: bool) -> io::Result<PartFile> {
        let direct = if direct {
            disk::open_direct(path)?
        } else {
            None
        };
        Ok(PartFile {
            file,
            direct,
            written,
            writeback_from: written,
        })
    }

    /// Append `bufs` (whole blocks direct where the upload writes direct, else one `pwritev`)
    /// and start writeback when due. Blocking.
    fn write(&mut self, bufs: &[Bytes]) -> io::Result<()> {
        direct::write(&self.file, &mut self.direct, self.written, bufs, None)?;
        self.wrote(bufs);
        Ok(())
    }

    /// [`PartFile::write`] and hash: where the writes are direct, each block is hashed right
    /// after it is copied into the staging buffer, while it is in the CPU cache. Blocking.
    fn write_hashed(&mut self, bufs: &[Bytes], hasher: Option<&mut Sha256>) -> io::Result<()> {
        direct::write(&self.file, &mut self.direct, self.written, bufs, hasher)?;
        self.wrote(bufs);
        Ok(())
    }

    fn wrote(&mut self, bufs: &[Bytes]) {
        self.written += bufs.iter().map(|b| b.len() as u64).sum::<u64>();
        if self.written - self.writeback_from >= WRITEBACK_EVERY {
            // Only the buffered blocks are dirty; the direct ones are on the device already.
            disk::start_writeback(&self.file, self.writeback_from, self.written);
            self.writeback_from = self.written;
        }
    }
}

/// Tell the followers of `live` that `bufs` are stored at `at`, making `written` bytes in the
/// file (not yet checked: followers stop one byte short of the file's end). Returns whether
/// `bufs` went into the recent window (only when someone follows).
fn publish_unverified(live: &LiveUpload, at: u64, bufs: &[Bytes], written: u64) -> bool {
    if live.tx.receiver_count() == 0 {
        return false;
    }
    live.recent().push(at, bufs);
    live.tx.send_modify(|p| p.written = p.written.max(written));
    true
}

/// Tell the followers of `live` that `bufs` (stored at `at`) end a checked file of `written`
/// bytes.
fn publish_verified(live: &LiveUpload, at: u64, bufs: &[Bytes], written: u64) {
    if !bufs.is_empty() && live.tx.receiver_count() > 0 {
        live.recent().push(at, bufs);
    }
    live.tx.send_modify(|p| {
        p.written = p.written.max(written);
        p.verified = true;
    });
}

fn hash(mut hasher: Option<Sha256>, bufs: &[Bytes]) -> Option<Sha256> {
    if let Some(h) = hasher.as_mut() {
        for b in bufs {
            h.update(b);
        }
    }
    hasher
}

/// Appends to one blob. Dropping it without [`BlobWriter::finish`] leaves a resumable partial
/// upload.
pub struct BlobWriter {
    /// The writer's claim, shared with its blocking writes in flight: a write left running
    /// by a cancelled `append` keeps the upload claimed until it lands, so a resumed writer
    /// cannot write the same offsets first and then be overwritten by it.
    guard: Arc<WriterGuard>,
    part: Option<PartFile>,
    /// `None` for a writer that does not hash ([`Hashing::OnlyToCheck`] without a declared
    /// SHA-256, unless it continues an earlier writer's hash). Left to the next writer when
    /// this one goes away unfinished.
    hasher: Option<Sha256>,
    /// Whether the completed blob gets its SHA-256 (not for a writer asked not to hash, even
    /// when it continued an earlier writer's hash).
    reports_hash: bool,
    pub(super) offset: u64,
    pub(super) size: u64,
    sha256: Option<String>,
    /// When progress was last recorded in the index, and the offset then.
    last_touch: u64,
    marked: u64,
    /// When the blob expires (the pace its upload must keep is taken from it).
    expires: u64,
    /// Waits for the downloads that follow the upload (see `pace.rs`).
    pacer: Pacer,
}

/// Bytes an upload with `left` bytes to go and `lifetime` seconds until its expiry must move
/// for its progress to count: its share of one `window` (the reservation idle time) at the
/// pace that completes it before it expires. A reservation is kept by uploading at that pace,
/// not by a byte or an empty request now and then, attached or not (attack 5).
fn progress_step(left: u64, lifetime: u64, window: u64) -> u64 {
    let share = u128::from(left) * u128::from(window) / u128::from(lifetime.max(window).max(1));
    u64::try_from(share).unwrap_or(left).clamp(1, left.max(1))
}

impl Drop for BlobWriter {
    /// An unfinished writer leaves its hash (of exactly `offset` bytes: a failed step drops
    /// it) to the writer that resumes the upload.
    fn drop(&mut self) {
        let paced = self.pacer.waited();
        if !paced.is_zero() {
            tracing::debug!(id = %self.guard.id, ?paced, offset = self.offset, "writer waited for its followers");
        }
        if let Some(hasher) = self.hasher.take() {
            self.guard.live.save_hash(self.offset, hasher);
        }
    }
}

fn writer_failed() -> StoreError {
    io::Error::other("writer failed earlier").into()
}

impl BlobWriter {
    /// Bytes stored so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    fn check_alive(&self) -> Result<()> {
        match self.guard.live.tx.borrow().phase {
            Phase::Cancelled => Err(StoreError::Cancelled),
            Phase::Gone => Err(StoreError::Expired),
            _ => Ok(()),
        }
    }

    /// Append buffers (hashed and written in one blocking step; no fsync). Readers are woken.
    pub async fn append(&mut self, bufs: Vec<Bytes>) -> Result<()> {
        self.check_alive()?;
        let n: u64 = bufs.iter().map(|b| b.len() as u64).sum();
        if n > self.size - self.offset {
            return Err(StoreError::TooLarge);
        }
        if n == 0 {
            return Ok(());
        }
        let Some(mut part) = self.part.take() else {
            return Err(writer_failed());
        };
        let hasher = self.hasher.take();
        let at = part.written;
        let (part, hasher, bufs) = if n >= PARALLEL_HASH_MIN && hasher.is_some() {
            // Hashing and writing in parallel: a large batch costs the slower of the two (the
            // direct write of a large upload waits for the disk while the other thread hashes).
            let shared = bufs.clone();
            let hashing = tokio::task::spawn_blocking(move || hash(hasher, &shared));
            let claim = self.guard.clone();
            let writing = tokio::task::spawn_blocking(move || {
                let _claim = claim;
                let res = part.write(&bufs);
                (part, bufs, res)
            });
            let (hashed, written) = tokio::join!(hashing, writing);
            let hasher = hashed.map_err(io::Error::other)?;
            let (part, bufs, res) = written.map_err(io::Error::other)?;
            res?;
            (part, hasher, bufs)
        } else {
            let claim = self.guard.clone();
            let (part, hasher, bufs, res) = tokio::task::spawn_blocking(move || {
                let _claim = claim;
                let mut hasher = hasher;
                let res = part.write_hashed(&bufs, hasher.as_mut());
                (part, hasher, bufs, res)
            })
            .await
            .map_err(io::Error::other)?;
            res?;
            (part, hasher, bufs)
        };
        // Tell readers: followers that keep up take these very buffers.
        let live = &self.guard.live;
        if live.tx.receiver_count() > 0 {
            live.recent().push(at, &bufs);
        }
        let written = part.written;
        live.tx.send_modify(|p| p.written = written);
        self.offset = written;
        self.part = Some(part);
        self.hasher = hasher;
        self.touch().await?;
        if written < self.size {
            // (The last bytes are not waited for: completing ends the window anyway.)
            let live = &self.guard.live;
            let window = live.recent().held_from().unwrap_or(written);
            self.pacer.pace(&live.followers, written, window).await;
        }
        Ok(())
    }

    /// Record progress in the index (at most once per clock second) once at least
    /// [`progress_step`] bytes arrived since it was last recorded.
    async fn touch(&mut self) -> Result<()> {
        let store = &self.guard.store;
        let now = store.now();
        let idle = store.inner.config.reservation_idle.as_secs();
        let step = progress_step(
            self.size - self.marked,
            self.expires.saturating_sub(now),
            idle,
        );
        if now != self.last_touch && self.offset - self.marked >= step {
            self.last_touch = now;
            self.marked = self.offset;
            self.guard.live.mark(self.offset);
            store.inner.index.set_progress(&self.guard.id, now).await?;
        }
        Ok(())
    }
    /// Complete the upload: check the size and declared SHA-256 (a mismatch discards the
    /// blob), fsync, rename to `.blob`, fsync the directory, mark complete. Returns the
    /// lowercase hex SHA-256 (`None` from a writer that does not hash).
    pub async fn finish(self) -> Result<Option<String>> {
        self.finish_with(Vec::new()).await
    }

    /// Append the last buffers and complete the upload as [`BlobWriter::finish`] does: the
    /// write, the hash, the SHA-256 check, the fsync and the rename happen in one blocking
    /// step (followers get all but the file's last byte once the buffers are written, before
    /// the hash; the last byte once the check passed); then the fsync of the shard's
    /// directory and the index update (shared with
    /// completions finishing at about the same time) run side by side. Returns only once the completion is durable. If `bufs` do not
    /// complete the blob they are appended and [`StoreError::Incomplete`] is returned.
    pub async fn finish_with(mut self, bufs: Vec<Bytes>) -> Result<Option<String>> {
        self.check_alive()?;
        let n: u64 = bufs.iter().map(|b| b.len() as u64).sum();
        if n > self.size - self.offset {
            return Err(StoreError::TooLarge);
        }
        if self.offset + n != self.size {
            self.append(bufs).await?;
            return Err(StoreError::Incomplete {
                received: self.offset,
                size: self.size,
            });
        }
        let Some(mut part) = self.part.take() else {
            return Err(writer_failed());
        };
        let hasher = self.hasher.take();
        let store = self.guard.store.clone();
        let id = self.guard.id.clone();
        let (part_path, blob_path) = (store.part_path(&id), store.blob_path(&id));
        let expected = self.sha256.clone();
        let reports_hash = self.reports_hash;
        let live = self.guard.live.clone();
        let claim = self.guard.clone();
        // Ok(Ok(sha)): stored durably and renamed; Ok(Err(sha)): SHA-256 mismatch.
        let stored = tokio::task::spawn_blocking(
            move || -> io::Result<std::result::Result<Option<String>, String>> {
                let _claim = claim;
                let at = part.written;
                let mut hasher = hasher;
                let mut pushed = false;
                if !bufs.is_empty() {
                    // Stored first, hashed after: followers take all but the file's last byte
                    // from these buffers while the hash is computed (a picture sent in one
                    // request reaches its waiting download one SHA-256 earlier).
                    part.write(&bufs)?;
                    pushed = publish_unverified(&live, at, &bufs, part.written);
                    hasher = hash(hasher, &bufs);
                }
                let actual = hasher
                    .filter(|_| reports_hash)
                    .map(|h| hex::encode(h.finalize()));
                if let Some(expected) = &expected {
                    // A writer of a blob with a declared SHA-256 always hashes.
                    let actual = actual.clone().unwrap_or_default();
                    if *expected != actual {
                        return Ok(Err(actual));
                    }
                }
                // Whole and checked: followers may have every byte now, while the fsyncs and
                // the commit make it durable (they do not wait for those, as they do not
                // for the earlier bytes of a streamed upload).
                let unpushed: &[Bytes] = if pushed { &[] } else { &bufs };
                publish_verified(&live, at, unpushed, part.written);
                part.file.sync_data()?;
                drop(part);
                std::fs::rename(&part_path, &blob_path)?;
                Ok(Ok(actual))
            },
        )
        .await
        .map_err(io::Error::other)??;
        let actual = match stored {
            Ok(actual) => actual,
            Err(actual) => {
                let expected = self.sha256.clone().unwrap_or_default();
                store.delete_row(&id, Some(GoneReason::Discarded)).await?;
                store.live_end(&id, Phase::Gone);
                store.remove_files(&id).await?;
                return Err(StoreError::ShaMismatch { expected, actual });
            }
        };
        self.offset = self.size;
        if !store.commit_complete(&id, actual.as_deref()).await? {
            // Swept or cancelled meanwhile.
            store.live_end(&id, Phase::Gone);
            store.remove_files(&id).await?;
            return Err(StoreError::Expired);
        }
        self.guard.live.tx.send_modify(|p| {
            p.written = p.written.max(self.offset);
            p.phase = Phase::Complete;
        });
        store.live_end(&id, Phase::Complete);
        Ok(actual)
    }
}
