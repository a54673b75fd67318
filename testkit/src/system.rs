//! A chat server and its relays, in-process, on free ports, stopped when dropped.

use crate::SelfSigned;
use anyhow::Context;
use msim_chat::Config;
use msim_relay::RelayConfig;
use msim_shared::token::{generate_secret_text, Keyring};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

type ConfigureChat = Box<dyn FnOnce(&mut Config)>;
type ConfigureRelay = Box<dyn Fn(&mut RelayConfig)>;

/// How to build a [`System`]: by default a chat server with its embedded relay, no TLS.
pub struct SystemBuilder {
    relays: usize,
    tls: bool,
    chat: Option<ConfigureChat>,
    relay: Option<ConfigureRelay>,
}

/// A running chat server and its relays; everything stops when it is dropped.
#[derive(Debug)]
pub struct System {
    /// The chat server's address.
    pub chat: SocketAddr,
    /// The relays' addresses (the embedded relay's when no external relay was asked for).
    pub relays: Vec<SocketAddr>,
    /// The relay token secret text, also written to [`System::secret_file`].
    pub secret: String,
    /// File holding the token secret.
    pub secret_file: PathBuf,
    /// The certificate every server presents, with TLS.
    pub cert: Option<SelfSigned>,
    /// Holds `chat/` (the chat data directory), `relay<i>/` and the secret file.
    pub dir: tempfile::TempDir,
    stop: CancellationToken,
}

impl System {
    /// A builder: the embedded relay, no TLS, [`Config::default`] with `data_dir` set.
    pub fn builder() -> SystemBuilder {
        SystemBuilder {
            relays: 0,
            tls: false,
            chat: None,
            relay: None,
        }
    }

    /// Stops every server (as dropping does).
    pub fn stop(&self) {
        self.stop.cancel();
    }
}

impl Drop for System {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl SystemBuilder {
    /// `n` external relays sharing one token secret instead of the embedded relay.
    pub fn relays(mut self, n: usize) -> Self {
        self.relays = n;
        self
    }

    /// Every server serves TLS with one self-signed certificate ([`System::cert`]).
    pub fn tls(mut self, on: bool) -> Self {
        self.tls = on;
        self
    }

    /// Changes the chat configuration before the server starts.
    pub fn chat(mut self, f: impl FnOnce(&mut Config) + 'static) -> Self {
        self.chat = Some(Box::new(f));
        self
    }

    /// Changes each external relay's configuration before it starts.
    pub fn relay(mut self, f: impl Fn(&mut RelayConfig) + 'static) -> Self {
        self.relay = Some(Box::new(f));
        self
    }

    /// Binds every listener, then spawns the servers on the current runtime: connections made
    /// once this returns wait in the backlog until the servers accept them.
    pub async fn start(self) -> anyhow::Result<System> {
        let dir = tempfile::tempdir()?;
        let stop = CancellationToken::new();
        let cert = match self.tls {
            true => Some(SelfSigned::write_to(dir.path())?),
            false => None,
        };
        let server_tls = match &cert {
            Some(c) => Some(Arc::new(msim_shared::tls::server_config(&c.cert, &c.key)?)),
            None => None,
        };
        let mut config = Config {
            data_dir: dir.path().join("chat"),
            tls: server_tls.clone(),
            ..Config::default()
        };
        if let Some(f) = self.chat {
            f(&mut config);
        }
        std::fs::create_dir_all(&config.data_dir)?;
        let mut relays = Vec::new();
        let secret;
        if self.relays == 0 {
            let listener = TcpListener::bind("127.0.0.1:0").await?;
            relays.push(listener.local_addr()?);
            msim_chat::embedded_relay::start(&mut config, listener, None, None, stop.clone())?;
            secret = config.relay_secret.clone();
        } else {
            secret = generate_secret_text();
            let scheme = if cert.is_some() { "https" } else { "http" };
            config.relays.clear();
            for i in 0..self.relays {
                let listener = TcpListener::bind("127.0.0.1:0").await?;
                let addr = listener.local_addr()?;
                relays.push(addr);
                config.relays.push(format!("{scheme}://{addr}"));
                let mut rc = RelayConfig::new(
                    dir.path().join(format!("relay{i}")),
                    Keyring::from_secret_text(&secret).context("secret")?,
                );
                rc.tls = server_tls.as_ref().map(|t| {
                    let mut t = (**t).clone();
                    t.alpn_protocols = vec![b"http/1.1".to_vec()];
                    Arc::new(t)
                });
                if let Some(f) = &self.relay {
                    f(&mut rc);
                }
                tokio::spawn(msim_relay::serve(
                    listener,
                    rc,
                    stop.clone().cancelled_owned(),
                ));
            }
            config.relay_secret = secret.clone();
        }
        if let Some(c) = &cert {
            config.relay_tls = Some(msim_shared::tls::client_config(std::slice::from_ref(
                &c.cert,
            ))?);
        }
        let secret_file = dir.path().join("relay-secret");
        std::fs::write(&secret_file, &secret)?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let chat = listener.local_addr()?;
        tokio::spawn(msim_chat::run(
            listener,
            config,
            stop.clone().cancelled_owned(),
        ));
        Ok(System {
            chat,
            relays,
            secret,
            secret_file,
            cert,
            dir,
            stop,
        })
    }
}
