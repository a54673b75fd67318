//! A real msim-chat server with a real msim-relay, in-process, on free ports: the same wiring
//! as `msim-chat` with its embedded relay. Runs on its own thread and runtime so that both
//! async tests and blocking CLI tests can use it.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

pub struct TestServer {
    pub addr: SocketAddr,
    pub relay: SocketAddr,
    pub dir: tempfile::TempDir,
    secret: String,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// A running server thread: its addresses, its stop switch and its thread.
type ServerThread = (
    SocketAddr,
    SocketAddr,
    oneshot::Sender<()>,
    std::thread::JoinHandle<()>,
);

/// Binds `addr`; the port of a server that just stopped may take a moment to be free again.
async fn bind(addr: SocketAddr) -> tokio::net::TcpListener {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => return l,
            Err(e) if std::time::Instant::now() < deadline => {
                eprintln!("bind {addr}: {e}; retrying");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Err(e) => panic!("bind {addr}: {e}"),
        }
    }
}

/// Runs msim-chat and msim-relay on their own thread, on `chat`/`relay` (port 0: any free
/// port), with their data under `data`; returns once both listeners are bound.
fn spawn_server(
    data: PathBuf,
    secret: String,
    chat: SocketAddr,
    relay: SocketAddr,
) -> ServerThread {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let keyring = msim_shared::token::Keyring::from_secret_text(&secret).unwrap();
            let relay_listener = bind(relay).await;
            let relay_addr = relay_listener.local_addr().unwrap();
            let chat_listener = bind(chat).await;
            let chat_addr = chat_listener.local_addr().unwrap();
            let (relay_stop_tx, relay_stop_rx) = oneshot::channel::<()>();
            let rc = msim_relay::RelayConfig::new(data.join("relay"), keyring);
            let relay = tokio::spawn(async move {
                msim_relay::serve(relay_listener, rc, async move {
                    let _ = relay_stop_rx.await;
                })
                .await
            });
            let config = msim_chat::Config {
                data_dir: data.clone(),
                relays: vec![format!("http://{relay_addr}")],
                relay_secret: secret,
                ..msim_chat::Config::default()
            };
            // Both listeners are bound: connections queue until the server accepts.
            ready_tx.send((chat_addr, relay_addr)).unwrap();
            msim_chat::run(chat_listener, config, async move {
                let _ = stop_rx.await;
            })
            .await
            .unwrap();
            let _ = relay_stop_tx.send(());
            let _ = relay.await;
        });
    });
    let (addr, relay) = ready_rx.recv().expect("server thread started");
    (addr, relay, stop_tx, thread)
}

impl TestServer {
    pub fn start() -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let secret = msim_shared::token::generate_secret_text();
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let (addr, relay, stop, thread) =
            spawn_server(dir.path().join("data"), secret.clone(), any, any);
        TestServer {
            addr,
            relay,
            dir,
            secret,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Stops the server (and its relay) and waits until it has shut down: every client
    /// connection is closed, the data is on disk, and the ports are no longer listening.
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            t.join().expect("server thread");
        }
    }

    /// Starts the server again on the same ports with the same data directory and secret.
    pub fn start_again(&mut self) {
        assert!(self.thread.is_none(), "the server is running");
        let (addr, relay, stop, thread) = spawn_server(
            self.dir.path().join("data"),
            self.secret.clone(),
            self.addr,
            self.relay,
        );
        assert_eq!((addr, relay), (self.addr, self.relay));
        self.stop = Some(stop);
        self.thread = Some(thread);
    }

    pub fn server(&self) -> String {
        self.addr.to_string()
    }

    /// A fresh directory inside the server's temp dir.
    pub fn subdir(&self, name: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    /// `msim --server ADDR` with no config file and no credentials from the environment.
    pub fn msim(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_msim"));
        c.arg("--server").arg(self.server());
        c.env_remove("MSIM_LOGIN")
            .env_remove("MSIM_PASSWORD")
            .env_remove("MSIM_SERVER")
            .env_remove("MSIM_CONFIG")
            // No ~/.config/msim/config.toml from the machine running the tests.
            .env("HOME", self.dir.path())
            .env("XDG_CONFIG_HOME", self.dir.path().join("xdg"));
        c
    }

    /// `msim` logged in as `login`.
    pub fn as_user(&self, login: &str) -> Command {
        let mut c = self.msim();
        c.args(["--login", login, "--password", &password(login)]);
        c
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Runs a command with `input` on its standard input; panics with stderr when the exit code
/// differs.
pub fn run_with_stdin(cmd: &mut Command, input: &[u8], code: i32) -> Output {
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run msim");
    {
        let mut stdin = child.stdin.take().unwrap();
        // The program may exit without reading everything (a usage error): ignore EPIPE.
        let _ = stdin.write_all(input);
    }
    let out = child.wait_with_output().expect("wait for msim");
    assert_eq!(
        out.status.code(),
        Some(code),
        "{cmd:?}\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A running `msim` whose stdout and stderr are read line by line on background threads, so
/// a test can wait for a given line (with a timeout) instead of sleeping. Killed on drop.
pub struct Running {
    pub child: Child,
    pub stdout: Lines,
    pub stderr: Lines,
}

impl Running {
    pub fn spawn(cmd: &mut Command) -> Running {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn msim");
        let stdout = Lines::new(child.stdout.take().unwrap());
        let stderr = Lines::new(child.stderr.take().unwrap());
        Running {
            child,
            stdout,
            stderr,
        }
    }

    /// Panics when the program has exited.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!(
                "msim exited ({status}); stdout: {:?}; stderr: {:?}",
                self.stdout.seen(),
                self.stderr.seen()
            );
        }
    }

    /// Waits for the program to exit (both pipes closed, then its status), at most `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        self.stdout.wait_closed(deadline);
        self.stderr.wait_closed(deadline);
        self.child.wait().unwrap()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Lines read from a pipe on a background thread.
pub struct Lines {
    rx: mpsc::Receiver<String>,
    seen: Vec<String>,
    closed: bool,
}

impl Lines {
    pub fn new(pipe: impl Read + Send + 'static) -> Lines {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Lines {
            rx,
            seen: Vec::new(),
            closed: false,
        }
    }

    /// Every line read so far.
    pub fn seen(&self) -> &[String] {
        &self.seen
    }

    /// Waits for the next line (after those already returned) that satisfies `pred`; panics
    /// after `timeout` or when the pipe closes first.
    pub fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if pred(&line) {
                        return line;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!(
                        "timed out waiting for {what}; lines so far: {:?}",
                        self.seen
                    )
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    self.closed = true;
                    panic!("the pipe closed before {what}; lines: {:?}", self.seen)
                }
            }
        }
    }

    /// Like [`Lines::wait_for`] for a JSON line.
    pub fn wait_for_json(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let line = self.wait_for(what, timeout, |l| {
            serde_json::from_str::<serde_json::Value>(l).is_ok_and(|v| pred(&v))
        });
        serde_json::from_str(&line).unwrap()
    }

    /// Reads until the pipe closes (the program exited), at most until `deadline`.
    pub fn wait_closed(&mut self, deadline: Instant) {
        while !self.closed {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!("the program did not exit in time; lines: {:?}", self.seen)
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => self.closed = true,
            }
        }
    }

    /// The JSON objects among the lines read so far.
    pub fn seen_json(&self) -> Vec<serde_json::Value> {
        self.seen
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

pub fn password(login: &str) -> String {
    format!("{login}-password-123")
}

/// Runs a command, returning its output; panics with stderr when the exit code differs.
pub fn run_expect(cmd: &mut Command, code: i32) -> Output {
    let out = cmd.output().expect("run msim");
    assert_eq!(
        out.status.code(),
        Some(code),
        "{cmd:?}\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn stdout_json(out: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
        .collect()
}

pub fn sha256_hex(path: &Path) -> String {
    use sha2::{Digest, Sha256};
    let bytes = std::fs::read(path).unwrap();
    Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Deterministic pseudo-random bytes (no rand dependency).
pub fn test_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}
