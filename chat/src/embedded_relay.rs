//! The file relay msim-chat runs in-process when no external relay is configured: its token
//! secret (`relay.secret`, made at first start), storage (`relay/` in the data directory) and
//! TLS (the chat server's certificate) come from the chat [`Config`]. The binary and the tests
//! start it the same way, with [`start`].

use crate::Config;
use anyhow::Context;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A running embedded relay; it stops when the token given to [`start`] is cancelled.
#[derive(Debug)]
pub struct EmbeddedRelay {
    /// Address it listens on.
    pub addr: SocketAddr,
    /// URL handed to clients.
    pub url: String,
    task: JoinHandle<Result<(), msim_relay::RelayError>>,
}

impl EmbeddedRelay {
    /// Waits until the relay has stopped (after its token was cancelled).
    pub async fn stopped(self) -> anyhow::Result<()> {
        match self.task.await {
            Ok(r) => r.context("embedded relay"),
            Err(e) => anyhow::bail!("embedded relay task: {e}"),
        }
    }
}

/// Starts the embedded relay on `listener` (and `GET /metrics` on `metrics_listener`) and
/// points `config` at it: `config.relays` becomes its URL (`url`, or
/// `http(s)://<listen address>`), `config.relay_secret` its secret. With `config.tls` it serves
/// HTTPS with the same certificate and handshake timeout; health checks then need `config.relay_tls` trusting it.
pub fn start(
    config: &mut Config,
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    url: Option<String>,
    stop: CancellationToken,
) -> anyhow::Result<EmbeddedRelay> {
    let secret = read_or_create_secret(
        &config.data_dir.join("relay.secret"),
        msim_shared::token::generate_secret_text,
    )?;
    let keyring = msim_shared::token::Keyring::from_secret_text(&secret).context("relay.secret")?;
    let addr = listener.local_addr()?;
    let mut relay = msim_relay::RelayConfig::new(config.data_dir.join("relay"), keyring);
    relay.max_file_size = config.max_file_size;
    relay.tls_handshake_timeout = config.tls_handshake_timeout;
    relay.tls = config.tls.as_ref().map(|chat_tls| {
        let mut tls = (**chat_tls).clone();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(tls)
    });
    let task = tokio::spawn(msim_relay::serve_with_metrics(
        listener,
        metrics_listener,
        relay,
        stop.cancelled_owned(),
    ));
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let url = url.unwrap_or_else(|| format!("{scheme}://{addr}"));
    config.relays = vec![url.clone()];
    config.relay_secret = secret;
    Ok(EmbeddedRelay { addr, url, task })
}

/// Creates a file with `contents` and mode 0600 unless it exists; returns its contents.
fn read_or_create_secret(path: &Path, contents: impl FnOnce() -> String) -> anyhow::Result<String> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(s),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            use std::io::Write;
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create_new(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                opts.mode(0o600);
            }
            let text = contents();
            let mut f = opts
                .open(path)
                .with_context(|| format!("creating {}", path.display()))?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            Ok(text)
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}
