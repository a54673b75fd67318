//! The data directory's lock: one serving process per directory (two relays on one directory
//! would both run recovery and write the same `.part` files). `msim-relay sweep` does not take
//! it: a sweep is safe beside a serving relay.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::Path;

use crate::{Result, StoreError};

/// Take `<dir>/relay.lock` (0600) for as long as the returned file is open; the kernel drops
/// the lock when the process dies. [`StoreError::InUse`] when another process holds it.
pub(super) fn lock(dir: &Path) -> Result<File> {
    let path = dir.join("relay.lock");
    let mut o = OpenOptions::new();
    o.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    let file = o.open(&path)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(StoreError::InUse(dir.display().to_string())),
        Err(TryLockError::Error(e)) => Err(e.into()),
    }
}
