//! A real msim-chat server with a real msim-relay, in-process, on free ports: the same wiring
//! as `msim-chat` with its embedded relay. Runs on its own thread and runtime so that both
//! async tests and blocking tests can use it. The `msim` program's tests (cli/tests) include
//! this file too and add their process helpers.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use tokio::sync::oneshot;

pub struct TestServer {
    pub addr: SocketAddr,
    pub relay: SocketAddr,
    pub dir: tempfile::TempDir,
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
fn spawn_server(data: PathBuf, chat: SocketAddr, relay: SocketAddr) -> ServerThread {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let relay_listener = bind(relay).await;
            let relay_addr = relay_listener.local_addr().unwrap();
            let chat_listener = bind(chat).await;
            let chat_addr = chat_listener.local_addr().unwrap();
            std::fs::create_dir_all(&data).unwrap();
            let mut config = msim_chat::Config {
                data_dir: data,
                ..msim_chat::Config::default()
            };
            // The production wiring; relay.secret in the data directory survives restarts.
            let relay_stop = tokio_util::sync::CancellationToken::new();
            let relay = msim_chat::embedded_relay::start(
                &mut config,
                relay_listener,
                None,
                None,
                relay_stop.clone(),
            )
            .unwrap();
            // Both listeners are bound: connections queue until the server accepts.
            ready_tx.send((chat_addr, relay_addr)).unwrap();
            msim_chat::run(chat_listener, config, async move {
                let _ = stop_rx.await;
            })
            .await
            .unwrap();
            relay_stop.cancel();
            relay.stopped().await.unwrap();
        });
    });
    let (addr, relay) = ready_rx.recv().expect("server thread started");
    (addr, relay, stop_tx, thread)
}

impl TestServer {
    pub fn start() -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let (addr, relay, stop, thread) = spawn_server(dir.path().join("data"), any, any);
        TestServer {
            addr,
            relay,
            dir,
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

    /// Starts the server again on the same ports with the same data directory (and relay.secret).
    pub fn start_again(&mut self) {
        assert!(self.thread.is_none(), "the server is running");
        let (addr, relay, stop, thread) =
            spawn_server(self.dir.path().join("data"), self.addr, self.relay);
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

pub fn sha256_hex(path: &Path) -> String {
    use sha2::{Digest, Sha256};
    let bytes = std::fs::read(path).unwrap();
    hex::encode(Sha256::digest(&bytes))
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
