//! A chat server and its relays, in-process, on free ports, stopped when dropped; they can be
//! stopped and started again on the same ports and data.

use crate::SelfSigned;
use anyhow::Context;
use msim_chat::{Clock, Config};
use msim_relay::RelayConfig;
use msim_shared::token::{generate_secret_text, Keyring};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

type ConfigureChat = Box<dyn FnOnce(&mut Config) + Send>;
type ConfigureRelay = Box<dyn Fn(&mut RelayConfig) + Send>;

/// Longest wait for a port of a server that just stopped to be free again.
const REBIND_WITHIN: Duration = Duration::from_secs(10);

/// Which relays a [`System`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Relays {
    /// None: `Config::relays` stays as configured (empty unless a test sets it).
    None,
    /// msim-chat's embedded relay, wired as the binary wires it.
    Embedded,
    /// This many msim-relay servers sharing one token secret.
    External(usize),
}

/// How to build a [`System`]: by default a chat server with its embedded relay, no TLS.
pub struct SystemBuilder {
    relays: Relays,
    tls: bool,
    test_defaults: bool,
    relay_host: Option<String>,
    dir: Option<tempfile::TempDir>,
    chat: Option<ConfigureChat>,
    relay: Option<ConfigureRelay>,
}

/// What a [`System`] starts, the same again on a restart.
#[derive(Clone)]
struct Plan {
    chat: Config,
    relays: Vec<RelayConfig>,
    embedded: bool,
    /// Host name in the embedded relay's URL instead of its IP address.
    relay_host: Option<String>,
}

/// A running chat server and its relays; everything stops when it is dropped.
pub struct System {
    /// The chat server's address.
    pub chat: SocketAddr,
    /// The relays' addresses (the embedded relay's, if it runs).
    pub relays: Vec<SocketAddr>,
    /// The relay token secret text (empty without relays).
    pub secret: String,
    /// File holding the token secret (none without relays).
    pub secret_file: PathBuf,
    /// The certificate every server presents, with TLS.
    pub cert: Option<SelfSigned>,
    /// The chat server's clock (a manual one with [`SystemBuilder::test_defaults`]).
    pub clock: Clock,
    /// Holds `chat/` (the chat data directory), `relay<i>/` and the secret file.
    pub dir: tempfile::TempDir,
    plan: Plan,
    stop: StopOnDrop,
    servers: Vec<JoinHandle<anyhow::Result<()>>>,
}

/// Stops the servers when the [`System`] is dropped.
struct StopOnDrop(CancellationToken);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

impl std::fmt::Debug for System {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("System")
            .field("chat", &self.chat)
            .field("relays", &self.relays)
            .field("dir", &self.dir.path())
            .finish_non_exhaustive()
    }
}

impl System {
    /// A builder: the embedded relay, no TLS, [`Config::default`] with `data_dir` set.
    pub fn builder() -> SystemBuilder {
        SystemBuilder {
            relays: Relays::Embedded,
            tls: false,
            test_defaults: false,
            relay_host: None,
            dir: None,
            chat: None,
            relay: None,
        }
    }

    /// The chat server's data directory.
    pub fn chat_dir(&self) -> &Path {
        &self.plan.chat.data_dir
    }

    /// A new directory `name` in [`System::dir`].
    pub fn subdir(&self, name: &str) -> std::io::Result<PathBuf> {
        let path = self.dir.path().join(name);
        std::fs::create_dir_all(&path)?;
        Ok(path)
    }

    /// Stops every server and waits until they have shut down: connections closed, data on
    /// disk, ports no longer listening. The first error a server ended with, if any.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        self.stop.0.cancel();
        let mut result = Ok(());
        for server in self.servers.drain(..) {
            let ended = server
                .await
                .unwrap_or_else(|e| Err(anyhow::anyhow!("server task: {e}")));
            if result.is_ok() {
                result = ended;
            }
        }
        result
    }

    /// Stops every server and hands over [`System::dir`], e.g. for
    /// [`SystemBuilder::in_dir`].
    pub async fn stop_into_dir(mut self) -> anyhow::Result<tempfile::TempDir> {
        self.stop().await?;
        Ok(self.dir)
    }

    /// Stops every server, changes the chat configuration with `f`, and starts them again on
    /// the same ports with the same data (and token secret).
    pub async fn restart(&mut self, f: impl FnOnce(&mut Config)) -> anyhow::Result<()> {
        self.stop().await?;
        f(&mut self.plan.chat);
        let relays = self.relays.clone();
        self.launch(self.chat, &relays).await
    }

    /// Binds every listener (on `chat` and `relays`, port 0: any free port), then spawns the
    /// servers on the current runtime: connections made once this returns wait in the
    /// backlog until the servers accept them.
    async fn launch(&mut self, chat: SocketAddr, relays: &[SocketAddr]) -> anyhow::Result<()> {
        let stop = CancellationToken::new();
        let mut config = self.plan.chat.clone();
        let mut bound = Vec::new();
        if self.plan.embedded {
            let listener = bind(relays[0]).await?;
            let addr = listener.local_addr()?;
            let url = self.plan.relay_host.as_ref().map(|host| {
                let scheme = if config.tls.is_some() {
                    "https"
                } else {
                    "http"
                };
                format!("{scheme}://{host}:{}", addr.port())
            });
            // The production wiring; relay.secret in the data directory survives restarts.
            let relay =
                msim_chat::embedded_relay::start(&mut config, listener, None, url, stop.clone())?;
            bound.push(addr);
            self.secret = config.relay_secret.clone();
            self.servers.push(tokio::spawn(relay.stopped()));
        } else if !self.plan.relays.is_empty() {
            let scheme = if config.tls.is_some() {
                "https"
            } else {
                "http"
            };
            config.relays.clear();
            for (relay, &addr) in self.plan.relays.iter().zip(relays) {
                let listener = bind(addr).await?;
                let addr = listener.local_addr()?;
                bound.push(addr);
                config.relays.push(format!("{scheme}://{addr}"));
                let serve =
                    msim_relay::serve(listener, relay.clone(), stop.clone().cancelled_owned());
                self.servers
                    .push(tokio::spawn(async move { serve.await.context("relay") }));
            }
        }
        let listener = bind(chat).await?;
        self.chat = listener.local_addr()?;
        self.relays = bound;
        let serve = msim_chat::run(listener, config, stop.clone().cancelled_owned());
        self.servers.push(tokio::spawn(
            async move { serve.await.context("chat server") },
        ));
        self.stop = StopOnDrop(stop);
        Ok(())
    }
}

/// Binds `addr`; a given port of a server that just stopped may take a moment to be free.
async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    let deadline = Instant::now() + REBIND_WITHIN;
    loop {
        match TcpListener::bind(addr).await {
            Ok(listener) => return Ok(listener),
            Err(_) if addr.port() != 0 && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e).with_context(|| format!("binding {addr}")),
        }
    }
}

impl SystemBuilder {
    /// `n` external relays sharing one token secret instead of the embedded relay.
    pub fn relays(mut self, n: usize) -> Self {
        self.relays = match n {
            0 => Relays::Embedded,
            n => Relays::External(n),
        };
        self
    }

    /// No relay at all: the chat server alone, with the `relays` its configuration lists.
    pub fn without_relay(mut self) -> Self {
        self.relays = Relays::None;
        self
    }

    /// Every server serves TLS with one self-signed certificate ([`System::cert`]).
    pub fn tls(mut self, on: bool) -> Self {
        self.tls = on;
        self
    }

    /// The embedded relay's URL names `host` (e.g. `localhost`, the certificate's name)
    /// instead of its IP address.
    pub fn relay_host(mut self, host: &str) -> Self {
        self.relay_host = Some(host.to_owned());
        self
    }

    /// Starts from [`Config::for_tests`] (a manual clock, no registration throttle, no free
    /// disk watermark) instead of [`Config::default`].
    pub fn test_defaults(mut self) -> Self {
        self.test_defaults = true;
        self
    }

    /// Keeps the data in `dir` (e.g. one a stopped [`System`] used) instead of a new one.
    pub fn in_dir(mut self, dir: tempfile::TempDir) -> Self {
        self.dir = Some(dir);
        self
    }

    /// Changes the chat configuration before the server starts.
    pub fn chat(mut self, f: impl FnOnce(&mut Config) + Send + 'static) -> Self {
        self.chat = Some(Box::new(f));
        self
    }

    /// Changes each external relay's configuration before it starts.
    pub fn relay(mut self, f: impl Fn(&mut RelayConfig) + Send + 'static) -> Self {
        self.relay = Some(Box::new(f));
        self
    }

    /// Binds every listener, then spawns the servers on the current runtime: connections made
    /// once this returns wait in the backlog until the servers accept them.
    pub async fn start(self) -> anyhow::Result<System> {
        let dir = match self.dir {
            Some(dir) => dir,
            None => tempfile::tempdir()?,
        };
        let cert = match self.tls {
            true => Some(SelfSigned::write_to(dir.path())?),
            false => None,
        };
        let server_tls = match &cert {
            Some(c) => Some(Arc::new(msim_shared::tls::server_config(&c.cert, &c.key)?)),
            None => None,
        };
        let data_dir = dir.path().join("chat");
        let mut config = match self.test_defaults {
            true => Config::for_tests(data_dir),
            false => Config {
                data_dir,
                ..Config::default()
            },
        };
        config.tls = server_tls.clone();
        if let Some(f) = self.chat {
            f(&mut config);
        }
        msim_chat::db::create_data_dir(&config.data_dir)?;
        let mut relays = Vec::new();
        let mut secret = String::new();
        if let Relays::External(n) = self.relays {
            secret = generate_secret_text();
            for i in 0..n {
                let keyring = Keyring::from_secret_text(&secret).context("secret")?;
                let mut relay = RelayConfig::new(dir.path().join(format!("relay{i}")), keyring);
                relay.tls = server_tls.as_ref().map(|t| {
                    let mut t = (**t).clone();
                    t.alpn_protocols = vec![b"http/1.1".to_vec()];
                    Arc::new(t)
                });
                if let Some(f) = &self.relay {
                    f(&mut relay);
                }
                relays.push(relay);
            }
            config.relay_secret = secret.clone();
        }
        if let Some(c) = &cert {
            config.relay_tls = Some(msim_shared::tls::client_config(std::slice::from_ref(
                &c.cert,
            ))?);
        }
        let any: SocketAddr = ([127, 0, 0, 1], 0).into();
        let relay_addrs = match self.relays {
            Relays::None => vec![],
            Relays::Embedded => vec![any],
            Relays::External(n) => vec![any; n],
        };
        let mut system = System {
            chat: any,
            relays: Vec::new(),
            secret,
            secret_file: dir.path().join("relay-secret"),
            cert,
            clock: config.clock.clone(),
            dir,
            plan: Plan {
                chat: config,
                relays,
                embedded: self.relays == Relays::Embedded,
                relay_host: self.relay_host,
            },
            stop: StopOnDrop(CancellationToken::new()),
            servers: Vec::new(),
        };
        system.launch(any, &relay_addrs).await?;
        if !system.secret.is_empty() {
            std::fs::write(&system.secret_file, &system.secret)?;
        }
        Ok(system)
    }
}
