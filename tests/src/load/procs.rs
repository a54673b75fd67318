//! Starting the real server binaries and reading their memory use.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// A server process that is killed when dropped.
pub struct Proc {
    pub child: Child,
    pub addr: SocketAddr,
}

impl Proc {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident set size now, in bytes (Linux).
    pub fn rss(&self) -> Option<u64> {
        rss(self.pid())
    }

    /// Peak resident set size, in bytes (Linux).
    pub fn peak_rss(&self) -> Option<u64> {
        peak_rss(self.pid())
    }

    /// CPU time used so far (user + system, all threads), in seconds (Linux).
    pub fn cpu_seconds(&self) -> Option<f64> {
        cpu_seconds(self.pid())
    }
}

/// Resident set size of process `pid` now, in bytes (Linux `/proc/PID/status`).
pub fn rss(pid: u32) -> Option<u64> {
    status_kib(pid, "VmRSS:").map(|k| k * 1024)
}

/// Peak resident set size of process `pid` since it started or since
/// [`reset_peak_rss`], in bytes (Linux `VmHWM`).
pub fn peak_rss(pid: u32) -> Option<u64> {
    status_kib(pid, "VmHWM:").map(|k| k * 1024)
}

/// Resets the peak resident set size of `pid` to its current RSS (writes `5` to
/// `/proc/PID/clear_refs`, Linux 4.0+; needs the right to ptrace the process). Returns whether
/// it worked.
pub fn reset_peak_rss(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

/// CPU time used so far by process `pid` (user + system, all threads), in seconds (Linux
/// `/proc/PID/stat`).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may contain spaces:
    // state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: f64 = fields.next()?.parse().ok()?;
    let stime: f64 = fields.next()?.parse().ok()?;
    Some((utime + stime) / clock_ticks())
}

/// Context switches of process `pid` so far (voluntary and involuntary, summed over its
/// threads alive now: a thread that has exited takes its count with it), from Linux
/// `/proc/PID/task/*/status`.
pub fn context_switches(pid: u32) -> Option<u64> {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
    {
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
            continue;
        };
        total += status
            .lines()
            .filter(|l| l.contains("ctxt_switches:"))
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum::<u64>();
    }
    Some(total)
}

/// Checks that `pid` is a process on this machine whose `/proc` figures can be read; warns on
/// stderr when its command name is not `expected` (the figures would be some other program's).
pub fn check_pid(pid: u32, expected: &str) -> Result<()> {
    if rss(pid).is_none() || cpu_seconds(pid).is_none() {
        bail!(
            "cannot read /proc/{pid}/status and /proc/{pid}/stat: no such process on this \
             machine, or not readable"
        );
    }
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    let comm = comm.trim();
    if !expected.starts_with(comm) || comm.is_empty() {
        eprintln!(
            "warning: process {pid} is {comm:?}, not {expected}; its figures are reported as \
             {expected}'s"
        );
    }
    Ok(())
}

/// CPU time used so far by this process (user + system, all threads), in seconds.
pub fn self_cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return 0.0;
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(ru.ru_utime) + secs(ru.ru_stime)
}

/// Number of CPUs this process may run on.
pub fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// A free loopback port (bound and released; the server binds it right after).
pub fn free_addr() -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?)
}

/// The path of a sibling binary of the running one (`target/<profile>/NAME`).
pub fn sibling_binary(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("no parent dir of current exe")?;
    let path = dir.join(name);
    if !path.exists() {
        bail!(
            "{} not found: build it first (cargo build --release -p {})",
            path.display(),
            name
        );
    }
    Ok(path)
}

/// Starts a binary with arguments and waits until `addr` accepts connections.
pub fn start(bin: &Path, args: &[String], addr: SocketAddr, env: &[(&str, &str)]) -> Result<Proc> {
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    if std::env::var_os("RUST_LOG").is_none() {
        cmd.env("RUST_LOG", "warn");
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let mut proc = Proc { child, addr };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if std::net::TcpStream::connect(addr).is_ok() {
            return Ok(proc);
        }
        if let Some(status) = proc.child.try_wait()? {
            bail!("{} exited early: {status}", bin.display());
        }
        if Instant::now() > deadline {
            bail!("{} did not listen on {addr} within 30 s", bin.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Raises this process's open-file limit to at least `want` (root may raise the hard limit
/// too); children started afterwards inherit it. Returns the soft limit now in force.
// rlim_t is u64 on Linux but not everywhere, so the casts stay.
#[allow(clippy::unnecessary_cast)]
pub fn raise_nofile_limit(want: u64) -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read or write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur >= want as libc::rlim_t {
            return lim.rlim_cur as u64;
        }
        let raised = libc::rlimit {
            rlim_cur: want as libc::rlim_t,
            rlim_max: lim.rlim_max.max(want as libc::rlim_t),
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
            return want;
        }
        // Not allowed to raise the hard limit: go as far as it allows.
        let capped = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &capped) == 0 {
            return lim.rlim_max as u64;
        }
        lim.rlim_cur as u64
    }
}
