//! `O_DIRECT` writes of large uploads: the whole blocks of a batch are copied into an aligned
//! staging buffer (and, when the same step hashes, hashed there while the bytes are hot in the
//! CPU cache), then written to the device without the kernel's copy into the page cache. The
//! partial blocks at either end of a batch (a resumed upload at an odd offset, the tail of a
//! batch, the last bytes of the file) are written the buffered way, so the file always holds
//! every byte acknowledged so far and readers (`pread` on a buffered descriptor) see them at
//! once. A direct write never covers a block a buffered write touched: it starts and ends on
//! block boundaries, after the buffered bytes of the block before it.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Mutex;

use bytes::Bytes;
use sha2::{Digest, Sha256};

use crate::disk;

/// Alignment of direct writes (offset, length and memory): the page size, which every
/// device's logical block size divides.
const BLOCK: usize = 4096;
/// Bytes of one direct write at most (the size of a staging buffer).
const STAGING: usize = 1 << 20;
/// Bytes copied (and then hashed) per step, small enough to stay in the CPU cache.
const COPY_STEP: usize = 64 << 10;
/// Staging buffers in use at once, at most (their memory, 1 MiB each, is kept for reuse); a
/// write that finds none free is written the buffered way.
const STAGING_MAX: usize = 8;

/// The free staging buffers, and how many are lent out.
static POOL: Mutex<(Vec<Vec<u8>>, usize)> = Mutex::new((Vec::new(), 0));

/// A block-aligned window of [`STAGING`] bytes in a buffer from the pool.
struct Staging {
    buf: Vec<u8>,
}

impl Staging {
    /// A staging buffer, unless [`STAGING_MAX`] are in use.
    fn take() -> Option<Staging> {
        let reused = {
            let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
            if pool.1 >= STAGING_MAX {
                return None;
            }
            pool.1 += 1;
            pool.0.pop()
        };
        Some(Staging {
            buf: reused.unwrap_or_else(|| vec![0; STAGING + BLOCK]),
        })
    }

    fn window(&mut self) -> &mut [u8] {
        let start = self.buf.as_ptr().align_offset(BLOCK);
        &mut self.buf[start..start + STAGING]
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
        pool.1 -= 1;
        pool.0.push(std::mem::take(&mut self.buf));
    }
}

/// Walks the bytes of a batch in pieces.
struct Cursor<'a> {
    bufs: &'a [Bytes],
    index: usize,
    offset: usize,
}

impl<'a> Cursor<'a> {
    /// The next at most `max` bytes (one buffer's worth at most).
    fn next_piece(&mut self, max: usize) -> Option<&'a [u8]> {
        while let Some(b) = self.bufs.get(self.index) {
            let rest = &b[self.offset..];
            if rest.is_empty() {
                self.index += 1;
                self.offset = 0;
                continue;
            }
            let n = rest.len().min(max);
            self.offset += n;
            return Some(&rest[..n]);
        }
        None
    }

    /// The next `n` bytes (fewer at the end) as slices of the buffers.
    fn take(&mut self, mut n: usize) -> Vec<&'a [u8]> {
        let mut out = Vec::new();
        while n > 0 {
            let Some(piece) = self.next_piece(n) else {
                break;
            };
            n -= piece.len();
            out.push(piece);
        }
        out
    }
}

/// Store `bufs` at `at` in `file`, hashing every byte into `hasher` if given: whole blocks
/// through `direct` (a descriptor of the same file opened with `O_DIRECT`), the rest buffered
/// through `file`. If the file system refuses a direct write (`EINVAL`: an alignment it does
/// not support), those bytes are written the buffered way and `direct` is dropped, so the rest
/// of the upload is written the buffered way too.
pub(super) fn write(
    file: &File,
    direct: &mut Option<File>,
    at: u64,
    bufs: &[Bytes],
    hasher: Option<&mut Sha256>,
) -> io::Result<()> {
    let Some(d) = direct else {
        let slices: Vec<&[u8]> = bufs.iter().map(|b| &b[..]).collect();
        if let Some(hasher) = hasher {
            for s in &slices {
                hasher.update(s);
            }
        }
        return disk::write_all_vectored_at(file, &slices, at);
    };
    let refused = write_with(
        file,
        &mut |data, pos| d.write_all_at(data, pos),
        at,
        bufs,
        hasher,
    )?;
    if refused {
        *direct = None;
    }
    Ok(())
}

/// [`write`] with the direct write as a function (tests inject a refusing one).
/// Returns whether a direct write was refused.
fn write_with(
    file: &File,
    write_direct: &mut dyn FnMut(&[u8], u64) -> io::Result<()>,
    at: u64,
    bufs: &[Bytes],
    mut hasher: Option<&mut Sha256>,
) -> io::Result<bool> {
    let total: usize = bufs.iter().map(|b| b.len()).sum();
    let mut cursor = Cursor {
        bufs,
        index: 0,
        offset: 0,
    };
    let mut pos = at;
    let mut refused = false;
    // The rest of a partly written block: buffered.
    let misalign = usize::try_from(at % BLOCK as u64).unwrap_or(0);
    let head = ((BLOCK - misalign) % BLOCK).min(total);
    let buffered = |pieces: Vec<&[u8]>, pos: u64, hasher: &mut Option<&mut Sha256>| {
        if let Some(hasher) = hasher {
            for p in &pieces {
                hasher.update(p);
            }
        }
        disk::write_all_vectored_at(file, &pieces, pos)?;
        io::Result::Ok(pieces.iter().map(|p| p.len() as u64).sum::<u64>())
    };
    pos += buffered(cursor.take(head), pos, &mut hasher)?;
    // Whole blocks: through the staging buffer, hashed as they are copied.
    let mut blocks = (total - head) / BLOCK * BLOCK;
    let mut staging = if blocks > 0 { Staging::take() } else { None };
    if let Some(staging) = staging.as_mut() {
        let window = staging.window();
        while blocks > 0 {
            let n = blocks.min(STAGING);
            let mut filled = 0;
            while filled < n {
                let Some(piece) = cursor.next_piece((n - filled).min(COPY_STEP)) else {
                    break;
                };
                let dst = &mut window[filled..filled + piece.len()];
                dst.copy_from_slice(piece);
                if let Some(hasher) = hasher.as_mut() {
                    hasher.update(&*dst);
                }
                filled += piece.len();
            }
            let data = &window[..n];
            if refused {
                file.write_all_at(data, pos)?;
            } else {
                match write_direct(data, pos) {
                    Ok(()) => {}
                    Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                        refused = true;
                        file.write_all_at(data, pos)?;
                    }
                    Err(e) => return Err(e),
                }
            }
            pos += n as u64;
            blocks -= n;
        }
    }
    // What is left (the start of a block the next batch completes; everything when no staging
    // buffer was free): buffered.
    let rest = total - usize::try_from(pos - at).unwrap_or(total);
    buffered(cursor.take(rest), pos, &mut hasher)?;
    Ok(refused)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tests share the staging pool: one at a time.
    static SERIAL: Mutex<()> = Mutex::new(());

    fn serial() -> std::sync::MutexGuard<'static, ()> {
        SERIAL.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn batch(data: &[u8], cuts: &[usize]) -> Vec<Bytes> {
        let mut out = Vec::new();
        let mut from = 0;
        for &c in cuts.iter().chain(std::iter::once(&data.len())) {
            out.push(Bytes::copy_from_slice(&data[from..c]));
            from = c;
        }
        out
    }

    /// Writes a file in odd batches, direct where it can, and checks bytes, hash and which
    /// ranges went direct (block-aligned ones only).
    #[test]
    fn batches_at_odd_offsets_store_every_byte_once_hashed() {
        let _serial = serial();
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .expect("open");
        let data: Vec<u8> = (0..3 * STAGING + 12_345)
            .map(|i| (i * 7 % 253) as u8)
            .collect();
        let mut hasher = Sha256::new();
        let mut direct_ranges = Vec::new();
        let mut at = 0usize;
        // A batch smaller than a block, one that crosses a block, one larger than the staging
        // buffer, one ending exactly on a block, and the rest.
        for len in [
            100,
            5_000,
            STAGING + 9_999,
            4096 * 3 - (at + 100 + 5_000 + STAGING + 9_999) % 4096,
            usize::MAX,
        ] {
            let end = at.saturating_add(len).min(data.len());
            let bufs = batch(&data[at..end], &[(end - at) / 3, (end - at) / 2]);
            let refused = write_with(
                &file,
                &mut |d, pos| {
                    direct_ranges.push((pos, d.len()));
                    file.write_all_at(d, pos)
                },
                at as u64,
                &bufs,
                Some(&mut hasher),
            )
            .expect("write");
            assert!(!refused);
            at = end;
        }
        assert_eq!(std::fs::read(&path).expect("read"), data);
        assert_eq!(hasher.finalize()[..], Sha256::digest(&data)[..]);
        assert!(!direct_ranges.is_empty());
        for (pos, len) in direct_ranges {
            assert_eq!(pos % BLOCK as u64, 0, "direct write at {pos}");
            assert_eq!(len % BLOCK, 0, "direct write of {len}");
        }
    }

    #[test]
    fn a_refused_direct_write_is_written_buffered() {
        let _serial = serial();
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .expect("open");
        let data: Vec<u8> = (0..STAGING * 2 + 777).map(|i| (i % 241) as u8).collect();
        let mut hasher = Sha256::new();
        let mut tries = 0;
        let refused = write_with(
            &file,
            &mut |_, _| {
                tries += 1;
                Err(io::Error::from_raw_os_error(libc::EINVAL))
            },
            0,
            &batch(&data, &[10]),
            Some(&mut hasher),
        )
        .expect("write");
        assert!(refused);
        // Tried once, then buffered for the rest of the batch.
        assert_eq!(tries, 1);
        assert_eq!(std::fs::read(&path).expect("read"), data);
        assert_eq!(hasher.finalize()[..], Sha256::digest(&data)[..]);
    }

    #[test]
    fn other_direct_errors_fail_the_write() {
        let _serial = serial();
        let dir = tempfile::tempdir().expect("tempdir");
        let file = File::create(dir.path().join("f")).expect("open");
        let data = vec![1u8; 3 * BLOCK];
        let err = write_with(
            &file,
            &mut |_, _| Err(io::Error::from_raw_os_error(libc::EIO)),
            0,
            &batch(&data, &[]),
            None,
        )
        .expect_err("EIO");
        assert_eq!(err.raw_os_error(), Some(libc::EIO));
    }

    /// Staging memory is bounded: with every buffer lent out, writes go the buffered way
    /// (and still store and hash every byte); a returned buffer is used again.
    #[test]
    fn writes_beyond_the_staging_bound_are_buffered() {
        let _serial = serial();
        let held: Vec<Staging> = std::iter::from_fn(Staging::take)
            .take(STAGING_MAX + 1)
            .collect();
        assert_eq!(held.len(), STAGING_MAX);
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .expect("open");
        let data: Vec<u8> = (0..5 * BLOCK + 3).map(|i| (i % 239) as u8).collect();
        let mut direct_writes = 0;
        let mut hasher = Sha256::new();
        let write = |at: usize, direct_writes: &mut i32, hasher: &mut Sha256| {
            write_with(
                &file,
                &mut |d, pos| {
                    *direct_writes += 1;
                    file.write_all_at(d, pos)
                },
                at as u64,
                &batch(&data[at..at + 2 * BLOCK], &[]),
                Some(hasher),
            )
            .expect("write")
        };
        write(0, &mut direct_writes, &mut hasher);
        assert_eq!(direct_writes, 0);
        drop(held);
        write(2 * BLOCK, &mut direct_writes, &mut hasher);
        assert_eq!(direct_writes, 1);
        assert_eq!(std::fs::read(&path).expect("read"), data[..4 * BLOCK]);
        assert_eq!(
            hasher.finalize()[..],
            Sha256::digest(&data[..4 * BLOCK])[..]
        );
    }
}
