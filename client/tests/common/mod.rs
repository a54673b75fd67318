//! A real msim-chat server with a real msim-relay, in-process, on free ports: the same wiring
//! as `msim-chat` with its embedded relay. Runs on its own thread and runtime so that both
//! async tests and blocking CLI tests can use it.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tokio::sync::oneshot;

pub struct TestServer {
    pub addr: SocketAddr,
    pub relay: SocketAddr,
    pub dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestServer {
    pub fn start() -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let secret = msim_shared::token::generate_secret_text();
                let keyring = msim_shared::token::Keyring::from_secret_text(&secret).unwrap();
                let relay_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                let relay_addr = relay_listener.local_addr().unwrap();
                let chat_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
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
        TestServer {
            addr,
            relay,
            dir,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
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
