//! Connecting and logging in with the settled settings, with errors that say what to do.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use msim::{Client, ClientError, Events, LoginOptions};

use crate::config_file::DeviceFile;
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

    /// The device cookies file, when there is a saved configuration to keep it next to.
    fn devices_path(&self) -> Option<PathBuf> {
        let config = self.config_path.as_deref().filter(|p| p.exists())?;
        Some(DeviceFile::path_for(config))
    }

    /// Logs in presenting this device's cookie, and keeps the new one; the request(s) of
    /// `next` go out right behind the login ([`Client::login_then`]).
    async fn login_as<T, Fut>(
        &self,
        client: &Client,
        login: &str,
        password: &str,
        next: impl FnOnce(Client) -> Fut,
    ) -> Result<T, ClientError>
    where
        Fut: Future<Output = T>,
    {
        let path = self.devices_path();
        let mut devices = path.as_deref().map(DeviceFile::load).unwrap_or_default();
        let options = LoginOptions::with_device(devices.cookie(&self.server, login));
        let (ok, next) = client.login_then(login, password, &options, next).await?;
        if let (Some(path), Some(cookie)) = (path, ok.device) {
            devices.set(&self.server, login, cookie);
            if let Err(e) = devices.save(&path) {
                eprintln!("msim: cannot save the device cookie: {e}");
            }
        }
        Ok(next)
    }

    /// A logged-in connection.
    pub async fn login(&self) -> Result<(Client, Events)> {
        let (client, events, ()) = self.login_then(|_| async {}).await?;
        Ok((client, events))
    }

    /// A logged-in connection, and what `next` did with it: `next` runs right behind the
    /// login, its request sent without waiting for `CONNECT-OK` (a one-shot command saves a
    /// round trip). It runs again if the login is retried.
    pub async fn login_then<T, Fut>(
        &self,
        next: impl Fn(Client) -> Fut,
    ) -> Result<(Client, Events, T)>
    where
        Fut: Future<Output = T>,
    {
        let (login, password) = self.credentials()?;
        let (client, events) = self.connect().await?;
        msim::timing::mark("connected");
        match self.login_as(&client, login, password, &next).await {
            Ok(t) => {
                msim::timing::mark("logged-in");
                Ok((client, events, t))
            }
            // After a recent failure the server asks to wait a little: do so once.
            Err(ClientError::AuthFailed {
                retry_after: Some(secs),
                ..
            }) if secs <= 10 => {
                drop((client, events));
                eprintln!("msim: login throttled; retrying in {secs} s");
                tokio::time::sleep(Duration::from_secs(secs)).await;
                let (client, events) = self.connect().await?;
                let t = self.login_as(&client, login, password, &next).await?;
                Ok((client, events, t))
            }
            Err(e) => Err(self.closed_hint(e)),
        }
    }
}
