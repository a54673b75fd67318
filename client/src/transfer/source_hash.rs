//! The SHA-256 of a file being uploaded, computed from the very bytes read for the upload, so a
//! large file is read once (PROTOCOL.md §10.7: the sender declares the hash after the upload).
//!
//! The hash follows the file from byte 0. An upload attempt that resumes before the hashed
//! position re-sends bytes that are not hashed again; one that starts after it (the relay
//! already held more) first hashes the gap from the file.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use sha2::{Digest, Sha256};

/// The hash of a file's first `pos` bytes, shared by the upload's attempts.
#[derive(Clone, Default)]
pub(super) struct SourceHash(Arc<Mutex<Hashed>>);

#[derive(Default)]
struct Hashed {
    hasher: Sha256,
    pos: u64,
}

impl SourceHash {
    fn lock(&self) -> MutexGuard<'_, Hashed> {
        // The state is a hasher and a position updated together: usable after a panic.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Brings the hash up to `offset` by reading `file` (positioned anywhere) when it is
    /// behind; leaves the file's position unspecified. Blocking.
    pub(super) fn catch_up(&self, file: &mut File, offset: u64) -> std::io::Result<()> {
        let mut h = self.lock();
        if h.pos >= offset {
            return Ok(());
        }
        file.seek(SeekFrom::Start(h.pos))?;
        let mut buf = vec![0u8; super::file_io::IO_UNIT];
        while h.pos < offset {
            let want = (offset - h.pos).min(buf.len() as u64) as usize;
            file.read_exact(&mut buf[..want])?;
            h.hasher.update(&buf[..want]);
            h.pos += want as u64;
        }
        Ok(())
    }

    /// Hashes `data`, the file's bytes from `at`, where they extend the hashed prefix.
    pub(super) fn update(&self, at: u64, data: &[u8]) {
        let mut h = self.lock();
        let end = at + data.len() as u64;
        if at <= h.pos && h.pos < end {
            let skip = (h.pos - at) as usize;
            h.hasher.update(&data[skip..]);
            h.pos = end;
        }
    }

    /// The hash of the file's first `size` bytes (reading what is not hashed yet), lowercase
    /// hex. Blocking.
    pub(super) fn finish(&self, path: &Path, size: u64) -> std::io::Result<String> {
        if self.lock().pos < size {
            let mut file = File::open(path)?;
            self.catch_up(&mut file, size)?;
        }
        let h = self.lock();
        if h.pos != size {
            return Err(std::io::Error::other("hashed more than the file's size"));
        }
        Ok(hex::encode(h.hasher.clone().finalize()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Overlapping, repeated and out-of-order pieces hash to the file's SHA-256.
    #[test]
    fn resumed_pieces_hash_like_the_whole_file() {
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let path = std::env::temp_dir().join(format!("msim-source-hash-{}", std::process::id()));
        std::fs::write(&path, &data).expect("write");
        let expected = hex::encode(Sha256::digest(&data));

        let h = SourceHash::default();
        h.update(0, &data[..1000]);
        // A retry from 500 re-sends 500..1000 (not hashed twice) and goes on.
        h.update(500, &data[500..2000]);
        // A piece past the hashed prefix is ignored (it would leave a gap)...
        h.update(2_500_000, &data[2_500_000..]);
        // ...and the gap is read from the file when an attempt starts there.
        let mut file = File::open(&path).expect("open");
        h.catch_up(&mut file, 2_500_000).expect("catch up");
        h.update(2_500_000, &data[2_500_000..2_600_000]);
        let sha = h.finish(&path, data.len() as u64);
        let _ = std::fs::remove_file(&path);
        assert_eq!(sha.expect("finish"), expected);
    }
}
