//! Harness for the relay attack tests: an in-process relay on 127.0.0.1:0 and raw HTTP/1.1
//! exchanges, so requests are sent exactly as an attacker would.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use msim_relay::RelayConfig;
use msim_shared::token::{Capability, Direction, Keyring, TokenKey};
use msim_storage::{Clock, SystemClock};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::oneshot;
use tokio::time::timeout;

/// Bound of every network wait in these tests.
pub const WAIT: Duration = Duration::from_secs(10);

pub fn keyring() -> Keyring {
    Keyring::new(vec![TokenKey {
        id: "k1".into(),
        secret: vec![7; 32],
    }])
}

/// A relay configuration for tests, in `dir`: no free-disk watermark, no sweep during a test.
pub fn test_config(dir: &Path, keyring: Keyring) -> RelayConfig {
    let mut config = RelayConfig::new(dir, keyring);
    config.min_free = 0;
    config.sweep_interval = Duration::from_secs(3600);
    config
}

/// An in-process relay on 127.0.0.1:0 (with a metrics listener when asked), the one way the
/// tests of this crate start one.
pub struct Server {
    pub addr: SocketAddr,
    pub metrics_addr: Option<SocketAddr>,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    pub async fn start(config: RelayConfig, metrics_listener: bool) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = if metrics_listener {
            Some(TcpListener::bind("127.0.0.1:0").await.unwrap())
        } else {
            None
        };
        let metrics_addr = metrics.as_ref().map(|l| l.local_addr().unwrap());
        let (stop, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            msim_relay::serve_with_metrics(listener, metrics, config, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        Server {
            addr,
            metrics_addr,
            stop,
            task,
        }
    }

    /// Stops the relay and waits until it has shut down.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        timeout(WAIT, self.task).await.unwrap().unwrap();
    }
}

/// A [`Server`] with the keyring of its tokens, driven over raw HTTP/1.1.
pub struct Relay {
    pub addr: SocketAddr,
    pub metrics_addr: Option<SocketAddr>,
    pub ring: Keyring,
    /// None for a relay run elsewhere ([`Relay::at`]).
    server: Option<Server>,
}

impl Relay {
    pub async fn start(
        dir: &Path,
        metrics_listener: bool,
        tweak: impl FnOnce(&mut RelayConfig),
    ) -> Relay {
        let mut config = test_config(dir, keyring());
        tweak(&mut config);
        let ring = config.keyring.clone();
        let server = Server::start(config, metrics_listener).await;
        Relay {
            addr: server.addr,
            metrics_addr: server.metrics_addr,
            ring,
            server: Some(server),
        }
    }

    /// A relay of `slots` connection slots where only the minimum rate (`min_rate` bytes per
    /// `window`) frees a slot: the head deadline and the body idle time are out of the way.
    pub async fn start_judging_rate(
        dir: &Path,
        slots: usize,
        min_rate: u64,
        window: std::time::Duration,
    ) -> Relay {
        Relay::start(dir, true, |c| {
            c.max_connections = slots;
            c.header_timeout = std::time::Duration::from_secs(60);
            c.body_idle_timeout = std::time::Duration::from_secs(60);
            c.min_rate = min_rate;
            c.min_rate_window = window;
        })
        .await
    }

    /// The relay (e.g. the binary) listening on `addr` and signing with `ring`.
    pub fn at(addr: SocketAddr, metrics_addr: Option<SocketAddr>, ring: Keyring) -> Relay {
        Relay {
            addr,
            metrics_addr,
            ring,
            server: None,
        }
    }

    pub async fn stop(self) {
        if let Some(server) = self.server {
            server.stop().await;
        }
    }

    pub fn token(&self, id: &str, dir: Direction, size: u64) -> String {
        self.ring.sign(&Capability {
            transfer_id: id.into(),
            direction: dir,
            size,
            sha256: None,
            sender: "alice@example.com".into(),
            max_downloads: None,
            expires: SystemClock.now() + 3600,
        })
    }

    /// A complete request on a fresh connection; returns status and body.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: &[u8],
    ) -> (u16, Vec<u8>) {
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        exchange(self.addr, head.as_bytes(), body).await
    }

    pub async fn upload_and_download(&self, id: &str, data: &[u8]) {
        let up = self.token(id, Direction::Upload, data.len() as u64);
        let (status, body) = self
            .request("PUT", &format!("/v1/transfers/{id}"), Some(&up), data)
            .await;
        assert_eq!(status, 201, "{}", utf8(&body));
        let down = self.token(id, Direction::Download, data.len() as u64);
        let (status, got) = self
            .request("GET", &format!("/v1/transfers/{id}"), Some(&down), b"")
            .await;
        assert_eq!(status, 200);
        assert_eq!(got, data);
    }

    /// Wait until the metrics (on the metrics listener) contain `line`.
    pub async fn wait_for_metric(&self, line: &str) {
        let addr = self.metrics_addr.expect("metrics listener");
        let deadline = Instant::now() + WAIT;
        loop {
            let (_, body) = exchange(
                addr,
                b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                b"",
            )
            .await;
            let text = utf8(&body);
            if text.contains(line) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "metrics never showed {line:?}:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Send `head` and `body` on a new connection and read the whole answer (status, body).
pub async fn exchange(addr: SocketAddr, head: &[u8], body: &[u8]) -> (u16, Vec<u8>) {
    timeout(WAIT, async {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(head).await.unwrap();
        s.write_all(body).await.unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        parse_response(&out)
    })
    .await
    .expect("request timed out")
}

pub fn parse_response(out: &[u8]) -> (u16, Vec<u8>) {
    let status = std::str::from_utf8(out.get(9..12).unwrap_or_default())
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|at| out[at + 4..].to_vec())
        .unwrap_or_default();
    (status, body)
}

pub fn utf8(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A connection from `source` (another loopback address: the attacker).
pub async fn connect_from(source: &str, to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpSocket::new_v4()?;
    s.bind(format!("{source}:0").parse().unwrap())?;
    s.connect(to).await
}

/// How long until the peer closes `s` (EOF or reset); `None` if not within `limit`.
pub async fn closed_within(s: &mut (impl AsyncRead + Unpin), limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    let r = timeout(limit, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    r.ok().map(|()| start.elapsed())
}
