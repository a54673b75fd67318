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

use crate::error::ClientError;

/// The unit of file reads and writes (and of the channel between the file thread and the
/// connection).
pub(super) const IO_UNIT: usize = 1 << 20;
/// Units in flight between the file thread and the connection.
const QUEUE: usize = 4;
/// A download starts the writeback of every this many bytes it wrote, so that the fsync at the
/// end has little left to write (the relay's store does the same).
const WRITEBACK_EVERY: u64 = 8 << 20;

/// Lowercase hex SHA-256 of the file at `path`, read in [`IO_UNIT`]s on the calling thread.
pub(super) fn sha256_file_blocking(path: &Path) -> std::io::Result<String> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; IO_UNIT];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
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
pub(super) fn read_units(
    path: PathBuf,
    offset: u64,
    len: u64,
) -> mpsc::Receiver<std::io::Result<Bytes>> {
    let (tx, rx) = mpsc::channel(QUEUE);
    tokio::task::spawn_blocking(move || {
        let result = (|| {
            let mut file = File::open(&path)?;
            file.seek(SeekFrom::Start(offset))?;
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

/// A download's `.part` file and the SHA-256 of everything in it, kept in step.
pub(super) struct PartFile {
    path: PathBuf,
    file: File,
    hasher: Sha256,
    len: u64,
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
            })
        })
        .await
    }

    /// Bytes in the file.
    pub(super) fn len(&self) -> u64 {
        self.len
    }

    /// Empties the file (the relay sent the whole body instead of the range asked for).
    pub(super) async fn restart(mut self) -> Result<PartFile, ClientError> {
        blocking(move || {
            self.file.set_len(0)?;
            self.hasher = Sha256::new();
            self.len = 0;
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
            while let Some(batch) = rx.blocking_recv() {
                for data in batch {
                    self.file.write_all(&data)?;
                    self.hasher.update(&data);
                    self.len += data.len() as u64;
                }
                if self.len - written_back >= WRITEBACK_EVERY {
                    start_writeback(&self.file, written_back, self.len);
                    written_back = self.len;
                }
            }
            Ok(self)
        });
        (tx, handle)
    }

    /// Flushes the file to disk and returns its path, length and SHA-256 (lowercase hex).
    pub(super) async fn finish(self) -> Result<(PathBuf, u64, String), ClientError> {
        blocking(move || {
            // The file is reported as received only once it is on disk.
            self.file.sync_data()?;
            Ok((self.path, self.len, hex::encode(self.hasher.finalize())))
        })
        .await
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
