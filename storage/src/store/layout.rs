//! Where a blob's files live: `blobs/<shard>/<id>.part` and `blobs/<shard>/<id>.blob`, where
//! `<shard>` is one of [`SHARDS`] subdirectories named by two lowercase hex digits of a hash of
//! the id ([`shard_of`]). Concurrent uploads create and rename their files under different
//! directory locks, no directory grows huge, and the files' inodes spread over block groups
//! (ext4 puts a file's inode near its directory's; creating one in a group with many recently
//! freed inodes scans past each of them).
//!
//! Stores written before the shards (every file directly in `blobs/`) are moved into this
//! layout by crash recovery when the serving process opens them; removals look in both places,
//! so a `sweep` from cron works on a store not yet opened by a new relay.

use std::io;
use std::path::{Path, PathBuf};

use crate::valid_id;

/// Subdirectories of `blobs/`. Part of the on-disk format: changing it (or [`shard_of`])
/// strands every stored file. Few enough that completions committed together share their
/// directories' fsyncs (one per shard touched), enough to spread the files' inodes over
/// several block groups and the directory locks over concurrent uploads.
pub const SHARDS: usize = 16;

/// The shard directory name of blob `id`: the low four bits of the 32-bit FNV-1a hash of the
/// id, as two lowercase hex digits (`00`–`0f`).
pub fn shard_of(id: &str) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in id.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("{:02x}", h & 0x0f)
}

/// The path of blob `id`'s file relative to the store directory: its `.blob` (complete) or its
/// `.part` (an upload in progress).
pub fn blob_file(id: &str, complete: bool) -> PathBuf {
    let ext = if complete { "blob" } else { "part" };
    Path::new("blobs")
        .join(shard_of(id))
        .join(format!("{id}.{ext}"))
}

/// The `blobs/` directory of a store.
#[derive(Debug, Clone)]
pub(super) struct Layout {
    blobs_dir: PathBuf,
}

impl Layout {
    pub fn new(blobs_dir: PathBuf) -> Layout {
        Layout { blobs_dir }
    }

    pub fn blobs_dir(&self) -> &Path {
        &self.blobs_dir
    }

    pub fn shard_dir(&self, id: &str) -> PathBuf {
        self.blobs_dir.join(shard_of(id))
    }

    pub fn part_path(&self, id: &str) -> PathBuf {
        self.shard_dir(id).join(format!("{id}.part"))
    }

    pub fn blob_path(&self, id: &str) -> PathBuf {
        self.shard_dir(id).join(format!("{id}.blob"))
    }

    /// Where the files of `id` were before the shards.
    pub fn legacy_paths(&self, id: &str) -> [PathBuf; 2] {
        [
            self.blobs_dir.join(format!("{id}.part")),
            self.blobs_dir.join(format!("{id}.blob")),
        ]
    }

    /// Create the missing shard directories (mode 0700) and make their entries durable.
    /// Blocking.
    pub fn create_shards(&self) -> io::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        let mut created = false;
        for k in 0..SHARDS {
            let dir = self.blobs_dir.join(format!("{k:02x}"));
            match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
                Ok(()) => {
                    // The mode given to mkdir is masked by the umask; set it exactly.
                    crate::disk::set_mode(&dir, 0o700)?;
                    created = true;
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
        }
        if created {
            std::fs::File::open(&self.blobs_dir)?.sync_all()?;
        }
        Ok(())
    }

    /// Move the files of an older store (directly in `blobs/`) into their shards; returns how
    /// many moved. Other plain files there are left for recovery's orphan removal. Blocking.
    pub fn migrate_legacy(&self) -> io::Result<usize> {
        let mut moved = 0;
        let mut shards = std::collections::BTreeSet::new();
        for e in std::fs::read_dir(&self.blobs_dir)? {
            let e = e?;
            if !e.file_type()?.is_file() {
                continue;
            }
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            let Some(id) = name
                .strip_suffix(".blob")
                .or_else(|| name.strip_suffix(".part"))
            else {
                continue;
            };
            if !valid_id(id) {
                continue;
            }
            let shard = self.shard_dir(id);
            std::fs::rename(e.path(), shard.join(name))?;
            shards.insert(shard);
            moved += 1;
        }
        if moved > 0 {
            // New entries first, then the removal of the old ones: a crash in between leaves
            // a file in both places at worst, never in neither.
            for shard in shards {
                std::fs::File::open(shard)?.sync_all()?;
            }
            std::fs::File::open(&self.blobs_dir)?.sync_all()?;
        }
        Ok(moved)
    }

    /// Every plain file in `blobs/` (old layout, or junk) and in the shards, as
    /// (path, length). Blocking.
    pub fn files(&self) -> io::Result<Vec<(PathBuf, u64)>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(&self.blobs_dir)? {
            let e = e?;
            let t = e.file_type()?;
            if t.is_dir() {
                let is_shard = e
                    .file_name()
                    .to_str()
                    .is_some_and(|n| n.len() == 2 && u8::from_str_radix(n, 16).is_ok());
                if !is_shard {
                    continue;
                }
                for f in std::fs::read_dir(e.path())? {
                    let f = f?;
                    if f.file_type()?.is_file() {
                        out.push((f.path(), f.metadata()?.len()));
                    }
                }
            } else if t.is_file() {
                out.push((e.path(), e.metadata()?.len()));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_stable_and_spread() {
        // Part of the on-disk format: these must never change.
        assert_eq!(shard_of("a"), "0c");
        assert_eq!(
            blob_file("0191b8c4-5d6e-7f80-9a1b-2c3d4e5f6a7b", true),
            Path::new("blobs")
                .join(shard_of("0191b8c4-5d6e-7f80-9a1b-2c3d4e5f6a7b"))
                .join("0191b8c4-5d6e-7f80-9a1b-2c3d4e5f6a7b.blob")
        );
        let mut used = std::collections::HashSet::new();
        for n in 0..256 {
            used.insert(shard_of(&format!("0191b8c4-5d6e-7f80-9a1b-{n:012x}")));
        }
        assert_eq!(used.len(), SHARDS, "sequential ids use every shard");
    }
}
