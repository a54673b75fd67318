//! `O_DIRECT` writes of large downloads: received bytes are copied into an aligned staging
//! buffer (and hashed there, while they are hot in the CPU cache) and written to the device in
//! whole blocks, without the kernel's copy into the page cache, which was most of a recipient's
//! CPU for a large file. The partial block at the start of a resumed `.part` file and the last
//! bytes of the download (less than a block) are written the buffered way, through the file's
//! own descriptor, so a direct write never covers a block a buffered write touched.
//!
//! If the file system refuses direct I/O (opening with `O_DIRECT` fails, or a write fails with
//! `EINVAL`), the bytes are written the buffered way instead, for the rest of the download.

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;

use sha2::{Digest, Sha256};

/// Downloads of at least this many bytes are written with `O_DIRECT`; smaller ones through the
/// page cache (a direct write waits for the device, which only pays off for large files).
pub(super) const DIRECT_MIN_SIZE: u64 = 8 << 20;
/// Alignment of direct writes (offset, length and memory): the page size, which every
/// device's logical block size divides.
const BLOCK: usize = 4096;
/// Bytes of one direct write at most (the size of the staging buffer).
const STAGING: usize = 2 << 20;

/// Writes a block-aligned range of the file, bypassing the page cache.
type DirectWrite = Box<dyn FnMut(&[u8], u64) -> io::Result<()> + Send>;

/// The direct-write state of one download, next to the file's buffered descriptor (opened
/// for appending: a buffered write always lands at the end of what was written so far).
pub(super) struct DirectWriter {
    /// `None` once the file system refused a direct write: buffered from then on.
    direct: Option<DirectWrite>,
    /// [`STAGING`] bytes plus the slack needed to align them.
    buf: Vec<u8>,
    /// Bytes staged, not written yet.
    staged: usize,
    /// File offset of the first staged byte.
    pos: u64,
    /// Bytes still to be written buffered before `pos` is block-aligned (a resumed file).
    head: usize,
}

impl DirectWriter {
    /// A writer for `path`, whose first `len` bytes are already written, or `None` when the
    /// file cannot be opened with `O_DIRECT` (then the download is written buffered).
    pub(super) fn open(path: &Path, len: u64) -> Option<DirectWriter> {
        let direct = open_direct(path)?;
        Some(DirectWriter::with(
            Box::new(move |data, at| {
                use std::os::unix::fs::FileExt;
                direct.write_all_at(data, at)
            }),
            len,
        ))
    }

    fn with(direct: DirectWrite, len: u64) -> DirectWriter {
        let misalign = usize::try_from(len % BLOCK as u64).unwrap_or(0);
        DirectWriter {
            direct: Some(direct),
            buf: vec![0; STAGING + BLOCK],
            staged: 0,
            pos: len,
            head: (BLOCK - misalign) % BLOCK,
        }
    }

    /// Writes (or stages) `data`, which follows everything written before, and hashes it.
    pub(super) fn write(
        &mut self,
        file: &mut File,
        mut data: &[u8],
        hasher: &mut Sha256,
    ) -> io::Result<()> {
        if self.direct.is_none() && self.staged == 0 {
            hasher.update(data);
            return file.write_all(data);
        }
        if self.head > 0 {
            let n = self.head.min(data.len());
            hasher.update(&data[..n]);
            file.write_all(&data[..n])?;
            self.head -= n;
            self.pos += n as u64;
            data = &data[n..];
        }
        while !data.is_empty() {
            let n = (STAGING - self.staged).min(data.len());
            let start = self.staged;
            let window = self.window();
            window[start..start + n].copy_from_slice(&data[..n]);
            hasher.update(&window[start..start + n]);
            self.staged += n;
            data = &data[n..];
            if self.staged == STAGING {
                self.write_staged(file, STAGING)?;
            }
        }
        Ok(())
    }

    /// Writes everything staged: the whole blocks directly, the rest buffered. Called when the
    /// download's bytes stop coming, so that the file holds every byte received.
    pub(super) fn finish(&mut self, file: &mut File) -> io::Result<()> {
        let blocks = self.staged / BLOCK * BLOCK;
        if blocks > 0 {
            self.write_staged(file, blocks)?;
        }
        if self.staged > 0 {
            let start = self.window_start();
            file.write_all(&self.buf[start..start + self.staged])?;
            self.pos += self.staged as u64;
            self.staged = 0;
        }
        Ok(())
    }

    /// Writes the first `n` staged bytes (whole blocks) at `pos`, directly if allowed, and
    /// moves what is left (less than a block) to the front.
    fn write_staged(&mut self, file: &mut File, n: usize) -> io::Result<()> {
        let start = self.window_start();
        let data = &self.buf[start..start + n];
        match self.direct.as_mut().map(|write| write(data, self.pos)) {
            Some(Ok(())) => {}
            Some(Err(e)) if e.raw_os_error() == Some(libc::EINVAL) => {
                self.direct = None;
                file.write_all(data)?;
            }
            Some(Err(e)) => return Err(e),
            None => file.write_all(data)?,
        }
        self.pos += n as u64;
        self.buf.copy_within(start + n..start + self.staged, start);
        self.staged -= n;
        Ok(())
    }

    fn window_start(&self) -> usize {
        self.buf.as_ptr().align_offset(BLOCK)
    }

    fn window(&mut self) -> &mut [u8] {
        let start = self.window_start();
        &mut self.buf[start..start + STAGING]
    }
}

#[cfg(target_os = "linux")]
fn open_direct(path: &Path) -> Option<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .ok()
}

#[cfg(not(target_os = "linux"))]
fn open_direct(_path: &Path) -> Option<File> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;
    use std::sync::{Arc, Mutex};

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 253) as u8).collect()
    }

    /// A `.part` file holding `prefix`, opened for appending like the download's.
    fn part_file(dir: &Path, prefix: &[u8]) -> (std::path::PathBuf, File) {
        let path = dir.join("f.part");
        std::fs::write(&path, prefix).expect("write prefix");
        let file = File::options()
            .read(true)
            .append(true)
            .open(&path)
            .expect("open");
        (path, file)
    }

    /// A direct write that records its ranges and writes through a plain descriptor.
    fn recording(path: &Path, ranges: Arc<Mutex<Vec<(u64, usize)>>>) -> DirectWrite {
        let file = File::options().write(true).open(path).expect("open");
        Box::new(move |data, at| {
            ranges.lock().expect("lock").push((at, data.len()));
            file.write_all_at(data, at)
        })
    }

    /// Resumed files at odd offsets, bodies of odd sizes in odd pieces: every byte lands once,
    /// hashed, and direct writes cover whole blocks only, never one a buffered write touched.
    #[test]
    fn odd_offsets_and_sizes_store_every_byte_once_hashed() {
        for prefix_len in [0, 1, 4095, 4096, 12_345] {
            for body_len in [
                0,
                100,
                BLOCK,
                STAGING - 1,
                STAGING + BLOCK + 17,
                2 * STAGING + 5,
            ] {
                let dir = tempfile::tempdir().expect("tempdir");
                let data = pattern(prefix_len + body_len);
                let (path, mut file) = part_file(dir.path(), &data[..prefix_len]);
                let ranges = Arc::new(Mutex::new(Vec::new()));
                let mut writer =
                    DirectWriter::with(recording(&path, ranges.clone()), prefix_len as u64);
                let mut hasher = Sha256::new();
                hasher.update(&data[..prefix_len]);
                let mut at = prefix_len;
                for piece in [1, 4000, 65_536, 999_999].iter().cycle() {
                    if at == data.len() {
                        break;
                    }
                    let end = (at + piece).min(data.len());
                    writer
                        .write(&mut file, &data[at..end], &mut hasher)
                        .expect("write");
                    at = end;
                }
                writer.finish(&mut file).expect("finish");
                let case = format!("prefix {prefix_len}, body {body_len}");
                assert_eq!(std::fs::read(&path).expect("read"), data, "{case}");
                assert_eq!(hasher.finalize()[..], Sha256::digest(&data)[..], "{case}");
                let ranges = ranges.lock().expect("lock");
                let first_block = prefix_len.div_ceil(BLOCK) * BLOCK;
                for &(pos, len) in ranges.iter() {
                    assert_eq!(pos % BLOCK as u64, 0, "{case}: direct write at {pos}");
                    assert_eq!(len % BLOCK, 0, "{case}: direct write of {len}");
                    assert!(
                        pos >= first_block as u64,
                        "{case}: {pos} overlaps the prefix"
                    );
                }
                let direct: usize = ranges.iter().map(|r| r.1).sum();
                let expected = data.len().saturating_sub(first_block) / BLOCK * BLOCK;
                assert_eq!(direct, expected, "{case}: bytes written directly");
            }
        }
    }

    /// A file system refusing direct writes (`EINVAL`): tried once, then everything buffered.
    #[test]
    fn a_refused_direct_write_falls_back_to_buffered() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = pattern(3 * STAGING + 777);
        let (path, mut file) = part_file(dir.path(), &data[..10]);
        let tries = Arc::new(Mutex::new(0));
        let counted = tries.clone();
        let mut writer = DirectWriter::with(
            Box::new(move |_, _| {
                *counted.lock().expect("lock") += 1;
                Err(io::Error::from_raw_os_error(libc::EINVAL))
            }),
            10,
        );
        let mut hasher = Sha256::new();
        hasher.update(&data[..10]);
        for piece in data[10..].chunks(300_001) {
            writer.write(&mut file, piece, &mut hasher).expect("write");
        }
        writer.finish(&mut file).expect("finish");
        assert_eq!(*tries.lock().expect("lock"), 1);
        assert_eq!(std::fs::read(&path).expect("read"), data);
        assert_eq!(hasher.finalize()[..], Sha256::digest(&data)[..]);
    }

    #[test]
    fn other_direct_write_errors_fail_the_download() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_, mut file) = part_file(dir.path(), b"");
        let mut writer = DirectWriter::with(
            Box::new(|_, _| Err(io::Error::from_raw_os_error(libc::EIO))),
            0,
        );
        let mut hasher = Sha256::new();
        let err = writer
            .write(&mut file, &pattern(STAGING), &mut hasher)
            .expect_err("EIO");
        assert_eq!(err.raw_os_error(), Some(libc::EIO));
    }

    /// The real thing on the test's file system (ext4 here; where `O_DIRECT` cannot be opened,
    /// the writer is `None` and the download is buffered).
    #[test]
    fn real_direct_writes_after_an_unaligned_prefix() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = pattern(STAGING + 3 * BLOCK + 5 + 1234);
        let (path, mut file) = part_file(dir.path(), &data[..1234]);
        let Some(mut writer) = DirectWriter::open(&path, 1234) else {
            eprintln!("O_DIRECT not supported here");
            return;
        };
        let mut hasher = Sha256::new();
        hasher.update(&data[..1234]);
        for piece in data[1234..].chunks(100_000) {
            writer.write(&mut file, piece, &mut hasher).expect("write");
        }
        writer.finish(&mut file).expect("finish");
        assert_eq!(std::fs::read(&path).expect("read"), data);
        assert_eq!(hasher.finalize()[..], Sha256::digest(&data)[..]);
    }

    /// The download path end to end: a resumed `.part` with an unaligned prefix, a body of a
    /// direct-written size in odd batches through the writer thread, then the fsync, the hash
    /// check and the rename.
    #[tokio::test]
    async fn a_resumed_large_download_through_the_writer_is_verified() {
        use super::super::file_io::PartFile;
        use bytes::Bytes;
        let dir = tempfile::tempdir().expect("tempdir");
        let size = DIRECT_MIN_SIZE as usize + 3 * BLOCK + 77;
        let data = pattern(size);
        let part_path = dir.path().join("f.part");
        std::fs::write(&part_path, &data[..5_001]).expect("write prefix");
        let mut part = PartFile::open(&part_path).await.expect("open");
        assert_eq!(part.len(), 5_001);
        part.expect_size(size as u64);
        let (tx, handle) = part.writer();
        for batch in data[5_001..].chunks(1_000_003) {
            let pieces = batch.chunks(65_521).map(Bytes::copy_from_slice).collect();
            tx.send(pieces).await.expect("send");
        }
        drop(tx);
        let part = handle.await.expect("join").expect("write");
        assert_eq!(part.len(), size as u64);
        let dest = dir.path().join("f");
        let expected = hex::encode(Sha256::digest(&data));
        let (len, sha) = part
            .finish_into(dest.clone(), size as u64, Some(expected.clone()))
            .await
            .expect("verified");
        assert_eq!((len, sha), (size as u64, expected));
        assert_eq!(std::fs::read(&dest).expect("read"), data);
    }
}
