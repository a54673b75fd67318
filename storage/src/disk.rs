//! The file-system calls the store makes through libc: free space (`statvfs(3)`), positional
//! reads into uninitialised memory (`pread(2)`) and early writeback (`sync_file_range(2)`),
//! and the private file layout. Every `unsafe` block of the crate is here.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;

/// Bytes available to unprivileged users on the file system holding `path`.
pub fn available_bytes(path: &Path) -> io::Result<u64> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `c` is a valid NUL-terminated string and `st` points to writable memory of the
    // right type; statvfs only writes into it.
    let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it initialised the struct.
    let st = unsafe { st.assume_init() };
    #[allow(clippy::unnecessary_cast)] // field types differ between platforms
    Ok((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

/// Create `dir` (and missing parents) with mode 0700 whatever the umask; an existing
/// directory is left as the operator set it up.
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    // The mode given to mkdir is masked by the umask; set it exactly.
    set_mode(dir, 0o700)
}

/// Set the permission bits of `path` to `mode` unless they already are.
pub fn set_mode(path: &Path, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let m = std::fs::metadata(path)?;
    if m.permissions().mode() & 0o777 != mode {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

/// Options that create files with mode 0600 (umask 022 or 002 cannot widen 0600; an unusual
/// umask can only narrow it).
pub fn private_file_options() -> std::fs::OpenOptions {
    use std::os::unix::fs::OpenOptionsExt;
    let mut o = std::fs::OpenOptions::new();
    o.mode(0o600);
    o
}

/// Create `path` empty with mode 0600 if missing, or restrict an existing file to 0600. SQLite
/// gives its `-wal` and `-shm` files the mode of the database file, so doing this to the
/// database before SQLite opens it keeps all three private.
pub fn private_file(path: &Path) -> io::Result<()> {
    let mut o = private_file_options();
    o.write(true).create(true).truncate(false);
    drop(o.open(path)?);
    set_mode(path, 0o600)
}

/// Uploads are private: create `dir` and `blobs_dir` with mode 0700 (`blobs_dir` is tightened
/// if it exists) and the index database `index` with mode 0600 (its `-wal` and `-shm` files
/// too, if they exist), whatever the umask.
pub fn private_layout(dir: &Path, blobs_dir: &Path, index: &Path) -> io::Result<()> {
    create_private_dir(dir)?;
    create_private_dir(blobs_dir)?;
    set_mode(blobs_dir, 0o700)?;
    private_file(index)?;
    for suffix in ["-wal", "-shm"] {
        let mut p = index.as_os_str().to_owned();
        p.push(suffix);
        match set_mode(Path::new(&p), 0o600) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

/// Read up to `want` bytes at `pos` (fewer only at the end of the file), into a buffer that is
/// not zeroed first.
pub fn read_at_most(file: &File, pos: u64, want: usize) -> io::Result<Vec<u8>> {
    let mut buf: Vec<u8> = Vec::with_capacity(want);
    while buf.len() < want {
        let at = i64::try_from(pos + buf.len() as u64)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset too large"))?;
        let left = want - buf.len();
        let spare = &mut buf.spare_capacity_mut()[..left];
        // SAFETY: `spare` is writable memory of `spare.len()` bytes owned by `buf`; pread
        // writes at most that many bytes into it and reports how many.
        let n = unsafe {
            libc::pread(
                file.as_raw_fd(),
                spare.as_mut_ptr().cast(),
                spare.len(),
                at as libc::off_t,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            break;
        }
        let n = usize::try_from(n).unwrap_or(0);
        // SAFETY: pread initialised the first `n` bytes of the spare capacity.
        unsafe { buf.set_len(buf.len() + n) };
    }
    Ok(buf)
}

/// Ask the kernel to start writing `from..to` of `file` back to disk, without waiting
/// (best effort; the fsync at completion is what guarantees durability).
#[cfg(target_os = "linux")]
pub fn start_writeback(file: &File, from: u64, to: u64) {
    let (Ok(off), Ok(len)) = (i64::try_from(from), i64::try_from(to - from)) else {
        return;
    };
    // SAFETY: plain syscall on a file descriptor we own; no memory is passed.
    let _ =
        unsafe { libc::sync_file_range(file.as_raw_fd(), off, len, libc::SYNC_FILE_RANGE_WRITE) };
}

#[cfg(not(target_os = "linux"))]
pub fn start_writeback(_file: &File, _from: u64, _to: u64) {}
