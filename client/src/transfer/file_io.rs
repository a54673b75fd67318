//! Blocking file I/O for transfers, off the async runtime: the file is read or written in
//! large units on a blocking thread that talks to the connection's task through a bounded
//! channel, so the socket is never idle waiting for a thread hop per small piece, and memory
//! stays bounded (`QUEUE` units in flight).
//!
//! A download hashes what it writes as it writes it (the [`PartFile`]), so the finished file
//! is verified without being read again; a resumed `.part` file has its existing prefix hashed
//! once when it is opened.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::direct_write::{DirectWriter, DIRECT_MIN_SIZE};
use super::source_hash::SourceHash;
use crate::error::ClientError;

/// The unit of file reads and writes (and of the channel between the file thread and the
/// connection).
pub(super) const IO_UNIT: usize = 1 << 20;
/// Units in flight between the file thread and the connection.
const QUEUE: usize = 4;
/// A download starts the writeback of every this many bytes it wrote, so that the fsync at the
/// end has little left to write (the relay's store does the same).
const WRITEBACK_EVERY: u64 = 8 << 20;

/// Lowercase hex SHA-256 of the file at `path`, read in [`IO_UNIT`]s. A file larger than one
/// unit is read on a second thread while the calling one hashes, so the copy out of the page
/// cache (or the wait for the disk) no longer adds to the hash's time. Blocking.
pub(super) fn sha256_file_blocking(path: &Path) -> std::io::Result<String> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let first = read_unit(&mut file)?;
    hasher.update(&first);
    if first.len() == IO_UNIT {
        let (tx, rx) = std::sync::mpsc::sync_channel::<std::io::Result<Vec<u8>>>(QUEUE);
        std::thread::scope(|scope| {
            scope.spawn(move || loop {
                let unit = read_unit(&mut file);
                let last = !unit.as_ref().is_ok_and(|u| u.len() == IO_UNIT);
                // A send fails once the hashing side stopped on an error.
                if tx.send(unit).is_err() || last {
                    return;
                }
            });
            for unit in rx {
                hasher.update(&unit?);
            }
            std::io::Result::Ok(())
        })?;
    }
    Ok(hex::encode(hasher.finalize()))
}

/// [`super::read_held`]: the whole file and its SHA-256 if it has at most `max` bytes.
pub(super) fn read_held_blocking(
    path: &Path,
    max: usize,
) -> std::io::Result<Option<super::HeldFile>> {
    let mut file = File::open(path)?;
    // Sized from the start: one read for the whole file instead of a read per doubling.
    let expected = file.metadata().map_or(0, |m| m.len()).min(max as u64) as usize;
    let mut bytes = Vec::with_capacity(expected + 1);
    // One byte more than allowed tells a larger file (or one that grew) apart.
    (&mut file).take(max as u64 + 1).read_to_end(&mut bytes)?;
    if bytes.len() > max {
        return Ok(None);
    }
    let sha256 = hex::encode(Sha256::digest(&bytes));
    Ok(Some(super::HeldFile {
        bytes: Bytes::from(bytes),
        sha256,
    }))
}

/// The next [`IO_UNIT`] bytes of `file`, fewer only at its end; read into fresh, uninitialised
/// memory.
fn read_unit(file: &mut File) -> std::io::Result<Vec<u8>> {
    let mut unit = Vec::with_capacity(IO_UNIT);
    (&mut *file).take(IO_UNIT as u64).read_to_end(&mut unit)?;
    Ok(unit)
}

/// Runs blocking `work` on tokio's blocking pool.
pub(super) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T, ClientError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ClientError::Io(std::io::Error::other(e.to_string())))?
        .map_err(ClientError::Io)
}

/// Reads `len` bytes of `path` from `offset` on a blocking thread, in [`IO_UNIT`]s, into a
/// bounded channel. A file shorter than announced ends the stream with `UnexpectedEof`.
/// With `hash`, each unit is also hashed as it is read (after the hash is brought up to
/// `offset`), so the upload needs no separate pass over the file.
pub(super) fn read_units(
    path: PathBuf,
    offset: u64,
    len: u64,
    hash: Option<SourceHash>,
) -> mpsc::Receiver<std::io::Result<Bytes>> {
    let (tx, rx) = mpsc::channel(QUEUE);
    tokio::task::spawn_blocking(move || {
        let result = (|| {
            let mut file = File::open(&path)?;
            if let Some(hash) = &hash {
                hash.catch_up(&mut file, offset)?;
            }
            file.seek(SeekFrom::Start(offset))?;
            let mut at = offset;
            let mut left = len;
            while left > 0 {
                let want = left.min(IO_UNIT as u64) as usize;
                // Read into fresh, uninitialised memory: no zeroing, no copy afterwards.
                let mut unit = Vec::with_capacity(want);
                (&mut file).take(want as u64).read_to_end(&mut unit)?;
                if unit.len() < want {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        format!("{} got shorter while being sent", path.display()),
                    ));
                }
                if let Some(hash) = &hash {
                    hash.update(at, &unit);
                }
                at += want as u64;
                left -= want as u64;
                if tx.blocking_send(Ok(Bytes::from(unit))).is_err() {
                    // The request was dropped (failed or cancelled): stop reading.
                    return Ok(());
                }
            }
            Ok(())
        })();
        if let Err(e) = result {
            let _ = tx.blocking_send(Err(e));
        }
    });
    rx
}

/// A download's `.part` file and the SHA-256 of everything in it, kept in step, and the
/// bytes of a small body held in memory until [`PartFile::finish_into`] writes them.
pub(super) struct PartFile {
    path: PathBuf,
    file: File,
    hasher: Sha256,
    /// Bytes in the file.
    len: u64,
    /// Received, not written (nor hashed) yet: at most [`IO_UNIT`] bytes of a small body.
    held: Vec<Bytes>,
    held_len: u64,
    /// The download's full size, if known: a large one is written with `O_DIRECT`.
    size: u64,
}

impl PartFile {
    /// Opens (or creates) `path` for appending and hashes what it already holds, once.
    pub(super) async fn open(path: &Path) -> Result<PartFile, ClientError> {
        let path = path.to_owned();
        blocking(move || {
            let mut file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .read(true)
                .append(true)
                .open(&path)?;
            let mut hasher = Sha256::new();
            let mut buf = vec![0u8; IO_UNIT];
            let mut len = 0u64;
            loop {
                let n = file.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                len += n as u64;
            }
            Ok(PartFile {
                path,
                file,
                hasher,
                len,
                held: Vec::new(),
                held_len: 0,
                size: 0,
            })
        })
        .await
    }

    /// Bytes received: in the file and held.
    pub(super) fn len(&self) -> u64 {
        self.len + self.held_len
    }

    /// Tells the download's full size: [`PartFile::writer`] writes a file of at least
    /// [`DIRECT_MIN_SIZE`] bytes with `O_DIRECT`, past the page cache.
    pub(super) fn expect_size(&mut self, size: u64) {
        self.size = size;
    }

    /// Keeps `data` in memory, to be written by [`PartFile::finish_into`] (or by the next
    /// [`PartFile::writer`]): for bodies of at most [`IO_UNIT`] bytes, so that a small file
    /// costs one blocking step in all, not a writer thread and a step per action.
    pub(super) fn hold(&mut self, data: Bytes) {
        self.held_len += data.len() as u64;
        self.held.push(data);
    }

    /// Writes and hashes the held bytes. Blocking.
    fn write_held(&mut self) -> std::io::Result<()> {
        for data in std::mem::take(&mut self.held) {
            self.file.write_all(&data)?;
            self.hasher.update(&data);
            self.len += data.len() as u64;
            self.held_len -= data.len() as u64;
        }
        Ok(())
    }

    /// Empties the file (the relay sent the whole body instead of the range asked for).
    pub(super) async fn restart(mut self) -> Result<PartFile, ClientError> {
        blocking(move || {
            self.file.set_len(0)?;
            self.hasher = Sha256::new();
            self.len = 0;
            self.held.clear();
            self.held_len = 0;
            Ok(self)
        })
        .await
    }

    /// Hands the file to a blocking writer thread: batches sent to the returned channel are
    /// written and hashed in order; the handle gives the file back (or the first write error)
    /// once the channel is closed.
    pub(super) fn writer(
        mut self,
    ) -> (
        mpsc::Sender<Vec<Bytes>>,
        tokio::task::JoinHandle<std::io::Result<PartFile>>,
    ) {
        let (tx, mut rx) = mpsc::channel::<Vec<Bytes>>(QUEUE);
        let handle = tokio::task::spawn_blocking(move || {
            let mut written_back = self.len;
            self.write_held()?;
            let mut direct = if self.size >= DIRECT_MIN_SIZE {
                DirectWriter::open(&self.path, self.len)
            } else {
                None
            };
            while let Some(batch) = rx.blocking_recv() {
                for data in batch {
                    match direct.as_mut() {
                        Some(d) => d.write(&mut self.file, &data, &mut self.hasher)?,
                        None => {
                            self.file.write_all(&data)?;
                            self.hasher.update(&data);
                        }
                    }
                    self.len += data.len() as u64;
                }
                if direct.is_none() && self.len - written_back >= WRITEBACK_EVERY {
                    start_writeback(&self.file, written_back, self.len);
                    written_back = self.len;
                }
            }
            // Every byte received is in the file when it is handed back (a later attempt
            // resumes from its length).
            if let Some(d) = direct.as_mut() {
                d.finish(&mut self.file)?;
            }
            Ok(self)
        });
        (tx, handle)
    }

    /// Completes the download in one blocking step: writes what is held, flushes the file to
    /// disk, checks its length (against `size`, exact) and SHA-256 (against `expected`, if
    /// known) and renames it to `dest`. A file that does not match is removed (a resumed
    /// `.part` could be the culprit). Returns its length and SHA-256 (lowercase hex).
    pub(super) async fn finish_into(
        mut self,
        dest: PathBuf,
        size: u64,
        expected: Option<String>,
    ) -> Result<(u64, String), ClientError> {
        let checked = tokio::task::spawn_blocking(move || {
            let written = self.write_held().and_then(|()| self.file.sync_data());
            if let Err(e) = written {
                return Err(ClientError::Io(e));
            }
            let sha256 = hex::encode(self.hasher.finalize());
            let mismatch = if self.len != size {
                Some(ClientError::SizeMismatch {
                    expected: size,
                    actual: self.len,
                })
            } else {
                expected
                    .filter(|e| *e != sha256)
                    .map(|expected| ClientError::ChecksumMismatch {
                        expected,
                        actual: sha256.clone(),
                    })
            };
            if let Some(error) = mismatch {
                drop(self.file);
                let _ = std::fs::remove_file(&self.path);
                return Err(error);
            }
            // The file is reported as received only once it is on disk, under its name.
            std::fs::rename(&self.path, &dest)?;
            Ok((self.len, sha256))
        })
        .await;
        checked.map_err(|e| ClientError::Io(std::io::Error::other(e.to_string())))?
    }
}

/// Asks the kernel to start writing `from..to` of `file` to disk, without waiting (best effort;
/// the fsync at the end is what makes the file durable).
#[cfg(target_os = "linux")]
fn start_writeback(file: &File, from: u64, to: u64) {
    use std::os::unix::io::AsRawFd;
    let (Ok(off), Ok(len)) = (i64::try_from(from), i64::try_from(to - from)) else {
        return;
    };
    // SAFETY: a plain syscall on a file descriptor we own; no memory is passed.
    let _ =
        unsafe { libc::sync_file_range(file.as_raw_fd(), off, len, libc::SYNC_FILE_RANGE_WRITE) };
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_file: &File, _from: u64, _to: u64) {}
