//! Test helpers: an in-process server on 127.0.0.1:0 and a raw line client.

use msim_chat::Config;
use msim_testkit::{ServerProcess, System, SystemBuilder};
use std::net::SocketAddr;
use std::ops::Deref;
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

/// `msim-chat` on free ports (`--listen` and `--embedded-relay-listen` 127.0.0.1:0) with its
/// data in `data_dir`.
pub fn chat_binary(data_dir: &Path) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_msim-chat"));
    c.args(["--listen", "127.0.0.1:0"])
        .args(["--embedded-relay-listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(data_dir);
    c
}

/// Starts `command` (a [`chat_binary`]); returns it once it listens, with its address.
pub async fn start_binary(command: tokio::process::Command) -> (ServerProcess, SocketAddr) {
    let mut server = ServerProcess::spawn(command).unwrap();
    let addr = server.listening("msim-chat listening").await.unwrap();
    server.keep_reading_log();
    (server, addr)
}

pub const PASSWORD: &str = "correct-horse";

/// Set to `postgres` to run every server of this suite on PostgreSQL (a database per data
/// directory on msim-testkit's throwaway cluster) instead of SQLite: `.ci/run` runs the suite
/// both ways.
pub const BACKEND_ENV: &str = "MSIM_TEST_DATABASE";

/// Whether this run keeps the servers' data in PostgreSQL (see [`BACKEND_ENV`]).
pub fn on_postgres() -> bool {
    std::env::var(BACKEND_ENV).is_ok_and(|v| v == "postgres")
}

/// The database of the servers using data directory `dir`: `None` (SQLite in `dir`) unless
/// [`on_postgres`]; then a PostgreSQL database made for `dir` on first use and remembered in
/// `dir/test-database-url`, so a server restarted on `dir` finds its data.
pub fn database_for(dir: &std::path::Path) -> Option<String> {
    if !on_postgres() {
        return None;
    }
    postgres_for(dir)
}

/// Like [`database_for`], whatever [`BACKEND_ENV`] says; `None` (after a loud `SKIPPED`) when
/// PostgreSQL is not installed.
pub fn postgres_for(dir: &std::path::Path) -> Option<String> {
    let file = dir.join("test-database-url");
    if let Ok(url) = std::fs::read_to_string(&file) {
        return Some(url);
    }
    let url = msim_testkit::postgres::database(&dir.display().to_string())?;
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(&file, &url).unwrap();
    Some(url)
}

/// The environment that points a msim-chat binary using data directory `dir` at
/// [`database_for`] (empty on SQLite).
pub fn database_env(dir: &std::path::Path) -> Vec<(&'static str, String)> {
    database_for(dir)
        .map(|url| ("MSIM_CHAT_DATABASE_URL", url))
        .into_iter()
        .collect()
}
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// msim-chat alone (msim-testkit's [`System`] without a relay, [`Config::for_tests`]: a manual
/// clock), and raw line clients for it.
pub struct TestServer {
    system: System,
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(f: impl FnOnce(&mut Config) + Send + 'static) -> TestServer {
        Self::with(System::builder(), f).await
    }

    /// A server on the data a stopped one left in `dir` (see [`TestServer::stop`]).
    pub async fn start_in(
        dir: tempfile::TempDir,
        f: impl FnOnce(&mut Config) + Send + 'static,
    ) -> TestServer {
        Self::with(System::builder().in_dir(dir), f).await
    }

    /// Like [`TestServer::start_in`], with msim-chat's embedded relay (for file transfers).
    pub async fn start_in_with_relay(
        dir: tempfile::TempDir,
        f: impl FnOnce(&mut Config) + Send + 'static,
    ) -> TestServer {
        let builder = System::builder()
            .in_dir(dir)
            .test_defaults()
            .chat(move |c| {
                c.database = database_for(&c.data_dir);
                f(c);
            });
        let system = builder.start().await.expect("msim-chat starts");
        TestServer { system }
    }

    async fn with(
        builder: SystemBuilder,
        f: impl FnOnce(&mut Config) + Send + 'static,
    ) -> TestServer {
        let builder = builder.without_relay().test_defaults().chat(move |c| {
            c.database = database_for(&c.data_dir);
            f(c);
        });
        let system = builder.start().await.expect("msim-chat starts");
        TestServer { system }
    }

    pub async fn client(&self) -> Client {
        Client::connect(self.chat).await
    }

    /// Registers `login` and returns a logged-in client.
    pub async fn user(&self, login: &str) -> Client {
        let mut c = self.client().await;
        c.send(&format!("REGISTER login={login} password={PASSWORD}"))
            .await;
        c.expect("REGISTER-OK").await;
        c.login(login, PASSWORD).await;
        c
    }

    /// Another logged-in session of an existing user.
    pub async fn session(&self, login: &str) -> Client {
        let mut c = self.client().await;
        c.login(login, PASSWORD).await;
        c
    }

    /// A server whose relay list is a healthy fake relay (answers every request `200 ok`; no
    /// bytes move), for tests of offers and their results.
    pub async fn with_fake_relay() -> TestServer {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let relay = format!("http://{}", l.local_addr().unwrap());
        tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let _ = s.read(&mut buf).await;
                    let ok = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok";
                    let _ = s.write_all(ok.as_bytes()).await;
                });
            }
        });
        TestServer::start_with(move |c| {
            c.relays = vec![relay];
            c.relay_secret = msim_shared::token::generate_secret_text();
        })
        .await
    }

    /// Stops the server, waits until it has shut down, and hands over its directory.
    pub async fn stop(self) -> tempfile::TempDir {
        let dir = self.system.stop_into_dir().await;
        dir.expect("msim-chat stopped cleanly")
    }
}

impl Deref for TestServer {
    type Target = System;

    fn deref(&self) -> &System {
        &self.system
    }
}

pub struct Client {
    r: BufReader<OwnedReadHalf>,
    w: OwnedWriteHalf,
}

pub fn field(line: &str, key: &str) -> Option<String> {
    let p = msim_shared::Packet::parse_line(line.as_bytes()).ok()?;
    p.get(key).map(str::to_owned)
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        Client::from_stream(TcpStream::connect(addr).await.unwrap())
    }

    /// A connection from a chosen source address (any 127.0.0.0/8 address works on Linux
    /// loopback), so tests can play clients at different addresses.
    pub async fn connect_from(addr: SocketAddr, source: std::net::IpAddr) -> Client {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind(SocketAddr::new(source, 0)).unwrap();
        let s = tokio::time::timeout(READ_TIMEOUT, sock.connect(addr))
            .await
            .expect("connect timed out")
            .unwrap();
        Self::from_stream(s)
    }

    /// A client over an already connected stream.
    pub fn from_stream(s: TcpStream) -> Client {
        let (r, w) = s.into_split();
        Client {
            r: BufReader::new(r),
            w,
        }
    }

    pub async fn send(&mut self, line: &str) {
        // One write: a line split in two would wait for a delayed ACK (Nagle).
        self.w
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.w.write_all(bytes).await.unwrap();
    }

    /// The next line, or None at EOF. Panics after a generous timeout.
    pub async fn try_line(&mut self) -> Option<String> {
        self.try_line_within(READ_TIMEOUT).await
    }

    /// The next line, or None at EOF. Panics after `wait`.
    pub async fn try_line_within(&mut self, wait: Duration) -> Option<String> {
        let mut s = String::new();
        let n = tokio::time::timeout(wait, self.r.read_line(&mut s))
            .await
            .expect("timed out waiting for a line")
            .unwrap_or(0);
        if n == 0 {
            return None;
        }
        Some(s.trim_end_matches(['\r', '\n']).to_owned())
    }

    pub async fn line(&mut self) -> String {
        self.try_line().await.expect("connection closed")
    }

    /// The next line, which must start with `verb` (followed by a space or the end).
    pub async fn expect(&mut self, verb: &str) -> String {
        let l = self.line().await;
        assert!(
            l == verb || l.starts_with(&format!("{verb} ")),
            "expected {verb}, got {l:?}"
        );
        l
    }

    /// Skips lines until one starts with `verb`.
    pub async fn expect_skip(&mut self, verb: &str) -> String {
        loop {
            let l = self.line().await;
            if l == verb || l.starts_with(&format!("{verb} ")) {
                return l;
            }
        }
    }

    /// A list block after its header line.
    pub async fn list(&mut self) -> Vec<String> {
        assert_eq!(self.line().await, "[");
        let mut out = Vec::new();
        loop {
            let l = self.line().await;
            if l == "]" {
                return out;
            }
            out.push(l);
        }
    }

    /// The connection is closed by the server (remaining lines are skipped).
    pub async fn expect_closed(&mut self) {
        while self.try_line().await.is_some() {}
    }

    /// A round trip proving every earlier answer was read.
    pub async fn sync(&mut self) {
        self.send("PING ref=sync").await;
        self.expect_skip("PONG").await;
    }

    pub async fn login(&mut self, login: &str, password: &str) {
        self.expect_login(login, password, None, "CONNECT-OK").await;
    }

    /// One login attempt (presenting `device` when given); returns the answer line, which
    /// must start with `answer`.
    pub async fn expect_login(
        &mut self,
        login: &str,
        password: &str,
        device: Option<&str>,
        answer: &str,
    ) -> String {
        match device {
            Some(d) => {
                self.send(&format!("CONNECT login={login} device={d}"))
                    .await
            }
            None => self.send(&format!("CONNECT login={login}")).await,
        }
        let ack = self.expect("CONNECT-ACK").await;
        let salt = field(&ack, "salt").unwrap();
        let hash = msim_chat::crypto::challenge_hash(&salt, password.as_bytes());
        self.send(&format!("CONNECT-CONTINUE hash={hash}")).await;
        self.expect(answer).await
    }
}
