//! The file-system calls the store makes through libc: free space (`statvfs(3)`), positional
//! reads into uninitialised memory (`pread(2)`), reads that never wait for the disk
//! (`openat2(2)` with `RESOLVE_CACHED`, `preadv2(2)` with `RWF_NOWAIT`), early writeback
//! (`sync_file_range(2)`), and the private file layout. Every `unsafe` block of the crate is
//! here.

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

/// Open `path` read-only without waiting for the disk: only if every component of the path is
/// in the kernel's lookup cache (`openat2(2)` with `RESOLVE_CACHED`). `Ok(None)` when the
/// kernel would have to read a directory first, or cannot do this (before Linux 5.12); the
/// caller then opens it the blocking way.
#[cfg(target_os = "linux")]
pub fn open_cached(path: &Path) -> io::Result<Option<File>> {
    use std::os::unix::io::FromRawFd;
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    // SAFETY: `open_how` is plain data; all-zero is a valid value of it.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_RDONLY | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_CACHED;
    // SAFETY: `c` is a valid NUL-terminated string and `how` a valid `open_how` of the size
    // passed; the kernel only reads them.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            libc::AT_FDCWD,
            c.as_ptr(),
            &raw const how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::EAGAIN | libc::ENOSYS | libc::EINVAL | libc::EPERM) => Ok(None),
            _ => Err(e),
        };
    }
    let fd = libc::c_int::try_from(fd).map_err(|_| io::Error::other("bad descriptor"))?;
    // SAFETY: openat2 returned a new descriptor that nothing else owns.
    Ok(Some(unsafe { File::from_raw_fd(fd) }))
}

#[cfg(not(target_os = "linux"))]
pub fn open_cached(_path: &Path) -> io::Result<Option<File>> {
    Ok(None)
}

/// Read exactly `want` bytes at `pos` if all of them are in the page cache now, without
/// waiting for the disk (`preadv2(2)` with `RWF_NOWAIT`). `None` otherwise, also for a short
/// read: the caller then reads the blocking way, which tells the end of the file from bytes
/// that are not cached.
#[cfg(target_os = "linux")]
pub fn read_cached(file: &File, pos: u64, want: usize) -> Option<Vec<u8>> {
    let at = libc::off_t::try_from(pos).ok()?;
    let mut buf: Vec<u8> = Vec::with_capacity(want);
    let spare = buf.spare_capacity_mut();
    let iov = libc::iovec {
        iov_base: spare.as_mut_ptr().cast(),
        iov_len: spare.len(),
    };
    // SAFETY: `iov` describes writable memory of `iov_len` bytes owned by `buf`; preadv2
    // writes at most that many bytes into it and reports how many.
    let n = unsafe { libc::preadv2(file.as_raw_fd(), &raw const iov, 1, at, libc::RWF_NOWAIT) };
    if usize::try_from(n).ok()? != want {
        return None;
    }
    // SAFETY: preadv2 initialised the first `want` bytes of the spare capacity.
    unsafe { buf.set_len(want) };
    Some(buf)
}

#[cfg(not(target_os = "linux"))]
pub fn read_cached(_file: &File, _pos: u64, _want: usize) -> Option<Vec<u8>> {
    None
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

/// Open `path` (which exists) for writing with `O_DIRECT`: writes from block-aligned memory at
/// block-aligned offsets go to the device without a copy into the page cache. `Ok(None)` where
/// the file system (or platform) refuses `O_DIRECT`; the caller then writes the buffered way.
#[cfg(target_os = "linux")]
pub fn open_direct(path: &Path) -> io::Result<Option<File>> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
    {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(not(target_os = "linux"))]
pub fn open_direct(_path: &Path) -> io::Result<Option<File>> {
    Ok(None)
}

/// Write all of `bufs` at `pos` (`pwritev(2)`, repeated after a short write).
pub fn write_all_vectored_at(file: &File, bufs: &[&[u8]], mut pos: u64) -> io::Result<()> {
    let mut bufs: Vec<&[u8]> = bufs.iter().copied().filter(|b| !b.is_empty()).collect();
    let mut first = 0;
    while first < bufs.len() {
        // At most IOV_MAX (1024 on Linux) slices per call.
        let batch = &bufs[first..bufs.len().min(first + 1024)];
        let iov: Vec<libc::iovec> = batch
            .iter()
            .map(|b| libc::iovec {
                iov_base: b.as_ptr().cast_mut().cast(),
                iov_len: b.len(),
            })
            .collect();
        let at = libc::off_t::try_from(pos)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset too large"))?;
        let count = libc::c_int::try_from(iov.len()).unwrap_or(1024);
        // SAFETY: every iovec describes memory of `iov_len` bytes borrowed from `bufs`, alive for
        // the call; pwritev only reads it.
        let n = unsafe { libc::pwritev(file.as_raw_fd(), iov.as_ptr(), count, at) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let mut n = usize::try_from(n).unwrap_or(0);
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        pos += n as u64;
        while n > 0 {
            let b = bufs[first];
            if n >= b.len() {
                n -= b.len();
                first += 1;
            } else {
                bufs[first] = &b[n..];
                n = 0;
            }
        }
    }
    Ok(())
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn cached_reads_return_whole_ranges_or_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).expect("write");
        // Just written: in the page cache, so both calls succeed where the kernel has them
        // (openat2 may be refused by an older kernel or a sandbox: then nothing is returned).
        let Some(f) = open_cached(&path).expect("open_cached") else {
            return;
        };
        assert_eq!(read_cached(&f, 10, 5000).as_deref(), Some(&data[10..5010]));
        // A range past the end is never returned short: the caller reads the blocking way.
        assert_eq!(read_cached(&f, 99_000, 5000), None);
        let missing = open_cached(&dir.path().join("missing"));
        assert!(
            matches!(&missing, Ok(None))
                || matches!(&missing, Err(e) if e.kind() == io::ErrorKind::NotFound),
            "{missing:?}"
        );
    }
}
