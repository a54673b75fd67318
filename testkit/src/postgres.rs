//! A throwaway PostgreSQL cluster for tests: `initdb` into a temporary directory, a server
//! listening on a unix socket in that directory and on a free 127.0.0.1 port, durable settings
//! (`fsync`, `synchronous_commit` on), one database per test, everything stopped and removed
//! when the [`PgCluster`] is dropped.
//!
//! The server binaries come from `$MSIM_PG_BIN`, else the newest `/usr/lib/postgresql/*/bin`,
//! else `PATH`. PostgreSQL refuses to run as root: when the tests run as root, `initdb` and the
//! server run as the `postgres` user (the data directory is handed to it). Without the binaries
//! [`database`] prints a loud `SKIPPED` line and the caller returns early, unless
//! `MSIM_REQUIRE_POSTGRES=1` (CI), where it fails the test instead.
//!
//! The server is started from a thread that lives as long as the server and is its parent with
//! `PR_SET_PDEATHSIG`: if the test process dies (even by `kill -9`), the server gets `SIGQUIT`
//! (immediate shutdown) instead of lingering. Directories that such a death leaves behind are
//! removed by the next cluster that starts.

use anyhow::{anyhow, bail, Context};
use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Environment variable naming the directory of PostgreSQL's server binaries.
pub const BIN_ENV: &str = "MSIM_PG_BIN";
/// Environment variable that turns a missing PostgreSQL into a test failure (set by CI).
pub const REQUIRE_ENV: &str = "MSIM_REQUIRE_POSTGRES";

/// The superuser the tests connect as (trust authentication, local only).
const SUPERUSER: &str = "postgres";
/// Prefix of the clusters' temporary directories (followed by the owning process id).
const DIR_PREFIX: &str = "msim-pg-";
/// How long the server may take to accept connections or to stop.
const START_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// A running throwaway PostgreSQL cluster; stopped and deleted when dropped.
#[derive(Debug)]
pub struct PgCluster {
    dir: Option<tempfile::TempDir>,
    bin: PathBuf,
    port: u16,
    pid: u32,
    exited: Mutex<mpsc::Receiver<std::io::Result<ExitStatus>>>,
    databases: AtomicU64,
}

/// Where PostgreSQL's server binaries are: `env` (the value of [`BIN_ENV`]) when set, else the
/// newest `/usr/lib/postgresql/<version>/bin`, else the directory of `initdb` on `PATH`. `None`
/// when none of them holds both `initdb` and `postgres`.
pub fn find_binaries(env: Option<OsString>) -> Option<PathBuf> {
    let usable = |d: &Path| d.join("initdb").is_file() && d.join("postgres").is_file();
    if let Some(dir) = env.filter(|v| !v.is_empty()) {
        let dir = PathBuf::from(dir);
        return usable(&dir).then_some(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            Some((v, e.path().join("bin")))
        })
        .filter(|(_, d)| usable(d))
        .collect();
    versions.sort();
    if let Some((_, dir)) = versions.pop() {
        return Some(dir);
    }
    // On PATH, `initdb` may be a link into the real binary directory.
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .filter_map(|d| std::fs::canonicalize(d.join("initdb")).ok())
        .filter_map(|f| f.parent().map(Path::to_owned))
        .find(|d| usable(d))
}

/// A fresh, empty database on this process's shared cluster, as a `postgres://` URL. `None`
/// (after printing `SKIPPED: …` to stderr) when the PostgreSQL server binaries are not
/// installed; panics instead when [`REQUIRE_ENV`] is `1`, or when the cluster fails to start.
/// `test` names the caller in the message.
pub fn database(test: &str) -> Option<String> {
    let cluster = shared(test)?;
    Some(cluster.create_database().expect("create a test database"))
}

/// This process's shared cluster (started on first use), or `None` when the binaries are
/// missing (see [`database`]).
pub fn shared(test: &str) -> Option<&'static PgCluster> {
    static SHARED: OnceLock<Option<PgCluster>> = OnceLock::new();
    let cluster = SHARED.get_or_init(|| match find_binaries(std::env::var_os(BIN_ENV)) {
        None => None,
        Some(bin) => {
            let c = PgCluster::start_with(&bin).expect("start the test PostgreSQL cluster");
            // Statics are never dropped: stop the server when the test process exits.
            if let Ok(mut s) = SHARED_AT_EXIT.lock() {
                *s = Some((c.pid, c.dir().to_owned()));
            }
            // SAFETY: `stop_shared_at_exit` is an `extern "C" fn()` that does not unwind.
            unsafe { libc::atexit(stop_shared_at_exit) };
            Some(c)
        }
    });
    if cluster.is_none() {
        skipped(test);
    }
    cluster.as_ref()
}

/// Process id and directory of the shared cluster, for the exit handler.
static SHARED_AT_EXIT: Mutex<Option<(u32, PathBuf)>> = Mutex::new(None);

extern "C" fn stop_shared_at_exit() {
    let Some((pid, dir)) = SHARED_AT_EXIT.lock().ok().and_then(|mut s| s.take()) else {
        return;
    };
    signal(pid, libc::SIGQUIT);
    // The server removes its lock file as it exits.
    let deadline = Instant::now() + Duration::from_secs(10);
    while dir.join("postmaster.pid").exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Reports a skipped PostgreSQL test loudly, or fails it when [`REQUIRE_ENV`] is set.
fn skipped(test: &str) {
    let msg = format!(
        "PostgreSQL server binaries not found (set {BIN_ENV}, or install PostgreSQL: \
         apt-get install postgresql): {test} did not run on PostgreSQL"
    );
    if std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "1") {
        panic!("{REQUIRE_ENV}=1 but {msg}");
    }
    // Straight to the process's stderr: the test harness would capture `eprintln!` and show
    // it only for failing tests, and a skip must be seen.
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED: {msg}");
}

impl PgCluster {
    /// Starts a cluster of its own (for tests that stop or restart the server), or `None`
    /// (reported as for [`database`]) without the binaries.
    pub fn start(test: &str) -> anyhow::Result<Option<PgCluster>> {
        match find_binaries(std::env::var_os(BIN_ENV)) {
            None => {
                skipped(test);
                Ok(None)
            }
            Some(bin) => PgCluster::start_with(&bin).map(Some),
        }
    }

    /// Starts a cluster with the binaries in `bin`.
    pub fn start_with(bin: &Path) -> anyhow::Result<PgCluster> {
        remove_abandoned_dirs();
        let owner = server_user()?;
        let dir = tempfile::Builder::new()
            .prefix(&format!("{DIR_PREFIX}{}-", std::process::id()))
            .tempdir()?;
        let data = dir.path().join("data");
        std::fs::create_dir(&data)?;
        if let Some((uid, gid)) = owner {
            for p in [dir.path(), &data] {
                std::os::unix::fs::chown(p, Some(uid), Some(gid))
                    .with_context(|| format!("chown {} to the postgres user", p.display()))?;
            }
        }
        let log = dir.path().join("initdb.log");
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .arg("--pgdata")
            .arg(&data)
            .args(["--username", SUPERUSER, "--auth", "trust"])
            .args(["--encoding", "UTF8", "--locale", "C"])
            // Only initdb's own final sync is skipped; the server below runs with fsync on.
            .arg("--no-sync")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log)?)
            .stderr(std::fs::File::create(dir.path().join("initdb.err"))?);
        as_server_user(&mut initdb, owner);
        let status = initdb.status().context("run initdb")?;
        if !status.success() {
            let err = std::fs::read_to_string(dir.path().join("initdb.err")).unwrap_or_default();
            bail!("initdb failed ({status}): {err}");
        }
        // A free port for TCP (also names the unix socket); retried if taken meanwhile.
        let mut last = None;
        for _ in 0..3 {
            let port = free_port()?;
            match start_server(bin, dir.path(), port, owner) {
                Ok((pid, exited)) => {
                    return Ok(PgCluster {
                        dir: Some(dir),
                        bin: bin.to_owned(),
                        port,
                        pid,
                        exited: Mutex::new(exited),
                        databases: AtomicU64::new(0),
                    });
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow!("server did not start")))
    }

    /// The cluster's directory (the server's unix socket is in it).
    pub fn dir(&self) -> &Path {
        self.dir.as_ref().map_or(Path::new(""), |d| d.path())
    }

    /// The TCP port the server listens on at 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's (postmaster's) process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// URL of database `name` over the unix socket.
    pub fn url(&self, name: &str) -> String {
        let socket: String = percent_encode(
            self.dir()
                .to_str()
                .expect("temporary directory path is UTF-8"),
        );
        format!(
            "postgres://{SUPERUSER}@localhost:{}/{name}?host={socket}",
            self.port
        )
    }

    /// URL of database `name` over TCP (127.0.0.1).
    pub fn tcp_url(&self, name: &str) -> String {
        format!("postgres://{SUPERUSER}@127.0.0.1:{}/{name}", self.port)
    }

    /// Creates a new empty database and returns its [`PgCluster::url`].
    pub fn create_database(&self) -> anyhow::Result<String> {
        let n = self.databases.fetch_add(1, Ordering::Relaxed);
        let name = format!("test{n}");
        self.psql("postgres", &format!("CREATE DATABASE {name}"))?;
        Ok(self.url(&name))
    }

    /// Runs one SQL command with `psql` on database `db` and returns its unaligned output.
    pub fn psql(&self, db: &str, sql: &str) -> anyhow::Result<String> {
        let out = Command::new(self.bin.join("psql"))
            .arg("--no-psqlrc")
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .arg("-h")
            .arg(self.dir())
            .args(["-p", &self.port.to_string(), "-U", SUPERUSER, "-d", db])
            .args(["-c", sql])
            .stdin(Stdio::null())
            .output()
            .context("run psql")?;
        if !out.status.success() {
            bail!(
                "psql {sql:?}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// Stops the server ([`PgCluster::stop`]) and starts it again on the same data directory
    /// and port; returns once it accepts connections again.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop()?;
        let (pid, exited) = start_server(&self.bin, self.dir(), self.port, server_user()?)?;
        self.pid = pid;
        self.exited = Mutex::new(exited);
        Ok(())
    }

    /// Stops the server (fast shutdown: connections are closed, the data is kept) and waits
    /// for it to exit.
    pub fn stop(&self) -> anyhow::Result<()> {
        signal(self.pid, libc::SIGINT);
        let exited = self.exited.lock().map_err(|_| anyhow!("poisoned"))?;
        match exited.recv_timeout(STOP_TIMEOUT) {
            Ok(_) | Err(mpsc::RecvTimeoutError::Disconnected) => Ok(()),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                signal(self.pid, libc::SIGKILL);
                bail!("postgres did not stop within {STOP_TIMEOUT:?}")
            }
        }
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("test PostgreSQL cluster: {e}");
        }
        if let Some(dir) = self.dir.take() {
            let _ = dir.close();
        }
    }
}

/// `(uid, gid)` of the `postgres` user when running as root (PostgreSQL refuses root), `None`
/// otherwise.
fn server_user() -> anyhow::Result<Option<(u32, u32)>> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let name = std::ffi::CString::new(SUPERUSER)?;
    let mut pw = std::mem::MaybeUninit::<libc::passwd>::zeroed();
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call: `name` is NUL-terminated, `pw` and `buf`
    // are writable with the given length, `found` receives a pointer to `pw` or NULL.
    let r = unsafe {
        libc::getpwnam_r(
            name.as_ptr(),
            pw.as_mut_ptr(),
            buf.as_mut_ptr(),
            buf.len(),
            &mut found,
        )
    };
    if r != 0 || found.is_null() {
        bail!("running as root, and there is no `{SUPERUSER}` user to run PostgreSQL as");
    }
    // SAFETY: getpwnam_r succeeded and `found` points to `pw`, which it filled.
    let pw = unsafe { pw.assume_init() };
    Ok(Some((pw.pw_uid, pw.pw_gid)))
}

/// Runs `cmd` as `owner` (when set) with no supplementary groups, and makes it receive
/// `SIGQUIT` when the thread that spawned it ends.
fn as_server_user(cmd: &mut Command, owner: Option<(u32, u32)>) {
    if let Some((uid, gid)) = owner {
        // std drops the supplementary groups when it changes the uid.
        cmd.gid(gid).uid(uid);
    }
    // SAFETY: the closure runs in the child between fork and exec (after the uid change,
    // which would clear the setting) and only makes an async-signal-safe system call.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGQUIT) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

type Exited = mpsc::Receiver<std::io::Result<ExitStatus>>;

/// Starts `postgres` on `dir/data` from a thread that waits for it (see the module doc), and
/// waits until it accepts connections.
fn start_server(
    bin: &Path,
    dir: &Path,
    port: u16,
    owner: Option<(u32, u32)>,
) -> anyhow::Result<(u32, Exited)> {
    let log_path = dir.join("postgres.log");
    let mut cmd = Command::new(bin.join("postgres"));
    cmd.arg("-D")
        .arg(dir.join("data"))
        .args(["-c", &format!("port={port}")])
        .args(["-c", "listen_addresses=127.0.0.1"])
        .arg("-c")
        .arg(format!("unix_socket_directories={}", dir.display()))
        .args(["-c", "fsync=on", "-c", "synchronous_commit=on"])
        .args(["-c", "full_page_writes=on", "-c", "max_connections=300"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path)?);
    as_server_user(&mut cmd, owner);
    let (started_tx, started) = mpsc::channel();
    let (exited_tx, exited) = mpsc::channel();
    std::thread::Builder::new()
        .name(format!("postgres-{port}"))
        .spawn(move || match cmd.spawn() {
            Ok(mut child) => {
                let _ = started_tx.send(Ok(child.id()));
                let _ = exited_tx.send(child.wait());
            }
            Err(e) => {
                let _ = started_tx.send(Err(e));
            }
        })?;
    let pid = started.recv()?.context("spawn postgres")?;
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(status) = exited.try_recv() {
            bail!("postgres exited at start ({:?}): {}", status, log());
        }
        // The postmaster writes "ready" as the last line of its lock file once it accepts
        // connections (what `pg_ctl -w` waits for).
        let lock = std::fs::read_to_string(dir.join("data/postmaster.pid")).unwrap_or_default();
        if lock.lines().nth(7).is_some_and(|s| s.trim() == "ready") {
            return Ok((pid, exited));
        }
        if Instant::now() > deadline {
            signal(pid, libc::SIGQUIT);
            bail!("postgres not ready within {START_TIMEOUT:?}: {}", log());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill has no memory preconditions; `pid` is our own child.
    unsafe { libc::kill(pid as libc::pid_t, sig) };
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Removes the directories of clusters whose test process is gone (killed before it could
/// clean up; its server got `SIGQUIT` then).
fn remove_abandoned_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(DIR_PREFIX)) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        let server_gone = !e.path().join("data/postmaster.pid").exists();
        if !Path::new(&format!("/proc/{pid}")).exists() && server_gone {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Percent-encodes everything but unreserved characters (for a path in a URL query).
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binaries_are_looked_up_where_the_variable_says() {
        let empty = tempfile::tempdir().expect("tempdir");
        assert_eq!(find_binaries(Some(empty.path().into())), None);
        let fake = tempfile::tempdir().expect("tempdir");
        for b in ["initdb", "postgres"] {
            std::fs::write(fake.path().join(b), "").expect("write");
        }
        assert_eq!(
            find_binaries(Some(fake.path().into())).as_deref(),
            Some(fake.path())
        );
    }

    /// The shared cluster hands out a new database per call (it is stopped at process exit).
    #[test]
    fn the_shared_cluster_hands_out_new_databases() {
        let Some(a) = database("testkit shared cluster test") else {
            return;
        };
        let b = database("testkit shared cluster test").expect("a second database");
        assert_ne!(a, b);
        let cluster = shared("testkit shared cluster test").expect("started");
        let name = b
            .rsplit('/')
            .next()
            .and_then(|s| s.split('?').next())
            .expect("name");
        assert_eq!(
            cluster
                .psql(name, "SELECT current_database()")
                .expect("select"),
            name
        );
    }

    /// A cluster of its own: durable settings, databases that are separate, and nothing left
    /// running or on disk after it is dropped.
    #[test]
    fn a_cluster_serves_durable_separate_databases_and_goes_away() {
        let Some(cluster) = PgCluster::start("testkit cluster test").expect("start") else {
            return;
        };
        assert_eq!(cluster.psql("postgres", "SHOW fsync").expect("fsync"), "on");
        assert_eq!(
            cluster
                .psql("postgres", "SHOW synchronous_commit")
                .expect("sync"),
            "on"
        );
        let a = cluster.create_database().expect("db a");
        let b = cluster.create_database().expect("db b");
        assert_ne!(a, b);
        assert!(a.starts_with("postgres://postgres@localhost:"), "{a}");
        cluster
            .psql("test0", "CREATE TABLE t (x int); INSERT INTO t VALUES (1)")
            .expect("write a");
        assert!(cluster.psql("test1", "SELECT * FROM t").is_err());
        assert_eq!(
            cluster
                .psql(
                    "test0",
                    "SELECT current_setting('data_directory') IS NOT NULL"
                )
                .expect("read"),
            "t"
        );
        let (pid, dir) = (cluster.pid(), cluster.dir().to_owned());
        drop(cluster);
        // SAFETY: signal 0 only checks whether the process exists.
        let alive = unsafe { libc::kill(pid as libc::pid_t, 0) } == 0;
        assert!(!alive, "postgres still running after drop");
        assert!(!dir.exists(), "cluster directory left behind");
    }
}
