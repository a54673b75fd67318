//! The login exchange (PROTOCOL.md §4.3), and a login with the next request sent right
//! behind it (§4.5, "Requests behind the login").

use std::future::Future;

use msim_shared::proto::{
    self, Body, Connect, ConnectAck, ConnectContinue, ConnectFailed, ConnectOk, Event,
};

use super::{unexpected, Answer, Client, LoginOptions};
use crate::error::ClientError;

impl Client {
    /// `CONNECT` → `CONNECT-ACK salt=`: the salt of this attempt.
    async fn challenge(&self, login: &str, options: &LoginOptions) -> Result<String, ClientError> {
        let connect = Connect {
            login: login.to_owned(),
            device: options.device.clone(),
        };
        match self
            .request(connect, &[ConnectAck::VERB, ConnectFailed::VERB])
            .await?
        {
            Event::ConnectAck(ack) => Ok(ack.salt),
            Event::ConnectFailed(f) => Err(ClientError::AuthFailed {
                reason: f.reason,
                retry_after: f.retry_after,
            }),
            other => Err(unexpected(&other)),
        }
    }

    /// Sends `CONNECT-CONTINUE hash=SHA-256(salt ‖ password)` (queued: later requests go out
    /// behind it).
    async fn send_continue(&self, salt: &str, password: &str) -> Result<Answer<'_>, ClientError> {
        let hash = proto::challenge_hash(salt, password);
        self.send_request(
            ConnectContinue { hash },
            &[ConnectOk::VERB, ConnectFailed::VERB],
        )
        .await
    }

    /// `CONNECT-OK` (kept as the session) or `CONNECT-FAILED` as an error.
    async fn logged_in(&self, answer: Answer<'_>) -> Result<ConnectOk, ClientError> {
        match answer.answer().await? {
            Event::ConnectOk(ok) => {
                *self.inner.session.lock().unwrap_or_else(|p| p.into_inner()) = Some(ok.clone());
                Ok(ok)
            }
            Event::ConnectFailed(f) => Err(ClientError::AuthFailed {
                reason: f.reason,
                retry_after: f.retry_after,
            }),
            other => Err(unexpected(&other)),
        }
    }

    /// [`Client::login_with`] proper: `CONNECT`, `CONNECT-CONTINUE`, `CONNECT-OK`.
    pub(super) async fn log_in(
        &self,
        login: &str,
        password: &str,
        options: &LoginOptions,
    ) -> Result<ConnectOk, ClientError> {
        let salt = self.challenge(login, options).await?;
        let answer = self.send_continue(&salt, password).await?;
        self.logged_in(answer).await
    }

    /// Logs in like [`Client::login_with`] and sends the request(s) of `next` right behind
    /// `CONNECT-CONTINUE`, without waiting for `CONNECT-OK`: the server handles a connection's
    /// requests in order, so they are handled once the session is logged in (PROTOCOL.md §4.5)
    /// and a one-shot command saves a round trip. `next` is started once `CONNECT-CONTINUE`
    /// is queued and should send its request before it first waits for anything else.
    ///
    /// When the login fails, `next` is dropped and the login's error returned (the server
    /// answered the early request `ERROR-NOT-LOGGED-IN`; it had no effect).
    pub async fn login_then<T, Fut>(
        &self,
        login: &str,
        password: &str,
        options: &LoginOptions,
        next: impl FnOnce(Client) -> Fut,
    ) -> Result<(ConnectOk, T), ClientError>
    where
        Fut: Future<Output = T>,
    {
        let salt = self.challenge(login, options).await?;
        let answer = self.send_continue(&salt, password).await?;
        let next = next(self.clone());
        // The login's failure comes first (the server answers in order) and ends `next`.
        tokio::try_join!(self.logged_in(answer), async {
            Ok::<T, ClientError>(next.await)
        })
    }
}
