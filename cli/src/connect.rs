//! Connecting and logging in with the settled settings, with errors that say what to do.

use std::time::Duration;

use anyhow::{Context, Result};
use msim::{Client, ClientError, Events};

use crate::settings::Settings;

impl Settings {
    /// A connection closed before the first answer on a plain connection: the server may be
    /// speaking TLS.
    pub fn closed_hint(&self, e: ClientError) -> anyhow::Error {
        let plain = !self.server.starts_with("tls://");
        if plain && matches!(e, ClientError::Closed) {
            anyhow::Error::from(e).context(format!(
                "{} closed the connection (if it serves TLS, use --server tls://{})",
                self.server, self.server
            ))
        } else {
            e.into()
        }
    }

    /// A connection to the server (not logged in), within the request timeout.
    pub async fn connect(&self) -> Result<(Client, Events)> {
        let connect = Client::connect_to(self.server.as_str(), self.options.clone());
        match tokio::time::timeout(self.options.request_timeout, connect).await {
            Ok(Err(
                e @ ClientError::Tls {
                    certificate: true, ..
                },
            )) if self.tls.is_none() => Err(anyhow::Error::from(e)).with_context(|| {
                format!(
                    "cannot connect to {} (for a self-signed or private-CA certificate, \
                     pass its CA with --ca-file)",
                    self.server
                )
            }),
            Ok(connected) => {
                connected.with_context(|| format!("cannot connect to {}", self.server))
            }
            Err(_) => Err(anyhow::Error::from(ClientError::Timeout))
                .with_context(|| format!("cannot connect to {}", self.server)),
        }
    }

    /// A logged-in connection.
    pub async fn login(&self) -> Result<(Client, Events)> {
        let (login, password) = self.credentials()?;
        let (client, events) = self.connect().await?;
        match client.login(login, password).await {
            Ok(_) => Ok((client, events)),
            // After a recent failure the server asks to wait a little: do so once.
            Err(ClientError::AuthFailed {
                retry_after: Some(secs),
                ..
            }) if secs <= 10 => {
                drop((client, events));
                eprintln!("msim: login throttled; retrying in {secs} s");
                tokio::time::sleep(Duration::from_secs(secs)).await;
                let (client, events) = self.connect().await?;
                client.login(login, password).await?;
                Ok((client, events))
            }
            Err(e) => Err(self.closed_hint(e)),
        }
    }
}
