//! Free space on the data directory's file system, and the watermark below which the writer
//! refuses writes that would grow the database (PROTOCOL.md §5.2 `reason=storage-full`).
//! SQLite failing part way through a commit on a full disk is survivable (nothing acknowledged
//! is lost), but refusing early keeps room for the writes that free space (acknowledgements,
//! purges) and for the WAL checkpoint.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Bytes available to unprivileged users on the file system holding `path` (`statvfs`).
pub(crate) fn available_bytes(path: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `c` is a valid NUL-terminated path and `st` points to writable memory of the
    // right type; statvfs only writes into it.
    let r = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it filled the structure.
    let st = unsafe { st.assume_init() };
    #[allow(clippy::unnecessary_cast)] // field types differ between platforms
    Ok((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

/// The free-space watermark, checked at most once per `interval` (one `statvfs` per check,
/// never per message).
#[derive(Debug)]
pub(crate) struct Watermark {
    dir: PathBuf,
    min_free: u64,
    interval: Duration,
    checked: Option<Instant>,
    low: bool,
}

impl Watermark {
    /// `min_free` = 0 disables the check.
    pub(crate) fn new(dir: &Path, min_free: u64, interval: Duration) -> Watermark {
        Watermark {
            dir: dir.to_owned(),
            min_free,
            interval,
            checked: None,
            low: false,
        }
    }

    /// Whether free space is below the watermark (as of the last check, refreshed when it is
    /// older than the interval).
    pub(crate) fn low(&mut self) -> bool {
        if self.min_free == 0 {
            return false;
        }
        let now = Instant::now();
        if self
            .checked
            .is_none_or(|t| now.duration_since(t) >= self.interval)
        {
            self.checked = Some(now);
            let was = self.low;
            self.low = match available_bytes(&self.dir) {
                Ok(free) => free < self.min_free,
                Err(e) => {
                    tracing::warn!(dir = %self.dir.display(), "free space: {e}");
                    false
                }
            };
            if self.low != was {
                if self.low {
                    tracing::error!(
                        min_free = self.min_free,
                        "data directory below its free-space watermark: refusing new messages"
                    );
                } else {
                    tracing::info!("free space back above the watermark");
                }
            }
        }
        self.low
    }

    /// Checks again at the next [`Watermark::low`] (after a failed commit).
    pub(crate) fn recheck(&mut self) {
        self.checked = None;
    }
}
