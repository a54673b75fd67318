//! Federation (PROTOCOL.md §12) between in-process servers on loopback, each with its own
//! domain, key and s2s listener, all resolving each other through a test DNS server.

mod attacks;
mod budgets;
pub(crate) mod dns;
mod files;
mod hardening;
mod hostile;
mod key_cache;
mod last_findings;
mod link_share;
mod messages;
mod network_share;
mod peers;
mod presence;
mod processes;
mod review_fixes;
mod subscriptions_wire;

use crate::common::{field, Client, TestServer, PASSWORD};
use dns::TestDns;
use msim_chat::federation::{keys, Mode};
use msim_chat::Config;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// One federated server under test.
pub struct Fed {
    pub server: TestServer,
    /// The s2s port published in DNS.
    pub s2s: SocketAddr,
    pub kid: String,
}

/// Binds 127.0.0.1:`port` (0 = any) for an s2s listener.
fn s2s_socket(port: u16) -> std::net::TcpListener {
    std::net::TcpListener::bind(("127.0.0.1", port)).unwrap()
}

/// Settings common to every federated test server: fast retries, short caches, loopback.
fn federation_config(
    c: &mut Config,
    dns: std::net::SocketAddr,
    domain: &str,
    listener: std::net::TcpListener,
) {
    c.domain = domain.to_owned();
    let f = &mut c.federation;
    f.mode = Mode::Open;
    f.allow_private = true;
    f.dns_server = Some(dns);
    f.s2s_listener = Some(Arc::new(listener));
    f.retry_base = Duration::from_millis(50);
    f.retry_max = Duration::from_millis(400);
    f.dns.min_ttl = Duration::from_millis(1);
    f.dns.negative_ttl = Duration::from_millis(1);
    f.dns.timeout = Duration::from_secs(2);
    f.handshake_timeout = Duration::from_secs(5);
}

/// Publishes `domain`'s key and SRV record.
pub fn publish(dns: &TestDns, domain: &str, dir: &std::path::Path, port: u16) -> String {
    let key = keys::load_newest(dir, domain).unwrap();
    dns.set_txt(
        &keys::key_name(&key.kid, domain),
        &keys::txt_value(key.public()),
    );
    dns.set_srv(
        &format!("_msim-s2s._tcp.{domain}"),
        &format!("s2s.{domain}"),
        port,
    );
    dns.set_a(&format!("s2s.{domain}"), Ipv4Addr::LOCALHOST);
    key.kid
}

impl Fed {
    /// A new server for `domain` with a fresh key, published in `dns`.
    pub async fn start(
        dns: &TestDns,
        domain: &str,
        f: impl FnOnce(&mut Config) + Send + 'static,
    ) -> Fed {
        let dir = tempfile::tempdir().unwrap();
        keys::generate(&dir.path().join("chat"), domain).unwrap();
        Fed::start_in(dns, domain, dir, 0, f).await
    }

    /// A server in an existing data directory (a restart), on s2s `port` (0 = any).
    pub async fn start_in(
        dns: &TestDns,
        domain: &str,
        dir: tempfile::TempDir,
        port: u16,
        f: impl FnOnce(&mut Config) + Send + 'static,
    ) -> Fed {
        Fed::start_opts(dns, domain, dir, port, false, f).await
    }

    /// A new server for `domain` with msim-chat's embedded relay (file transfers).
    pub async fn start_with_relay(
        dns: &TestDns,
        domain: &str,
        f: impl FnOnce(&mut Config) + Send + 'static,
    ) -> Fed {
        let dir = tempfile::tempdir().unwrap();
        keys::generate(&dir.path().join("chat"), domain).unwrap();
        Fed::start_opts(dns, domain, dir, 0, true, f).await
    }

    async fn start_opts(
        dns: &TestDns,
        domain: &str,
        dir: tempfile::TempDir,
        port: u16,
        relay: bool,
        f: impl FnOnce(&mut Config) + Send + 'static,
    ) -> Fed {
        let listener = s2s_socket(port);
        let s2s = listener.local_addr().unwrap();
        let kid = publish(dns, domain, &dir.path().join("chat"), s2s.port());
        let (dns_addr, domain_owned) = (dns.addr, domain.to_owned());
        let configure = move |c: &mut Config| {
            federation_config(c, dns_addr, &domain_owned, listener);
            f(c);
        };
        let server = if relay {
            TestServer::start_in_with_relay(dir, configure).await
        } else {
            TestServer::start_in(dir, configure).await
        };
        Fed { server, s2s, kid }
    }

    /// Stops the server; returns its data directory and s2s port for a restart.
    pub async fn stop(self) -> (tempfile::TempDir, u16) {
        let port = self.s2s.port();
        (self.server.stop().await, port)
    }

    pub async fn user(&self, login: &str) -> Client {
        self.server.user(login).await
    }

    pub async fn session(&self, login: &str) -> Client {
        self.server.session(login).await
    }

    pub async fn register(&self, login: &str) {
        let mut c = self.server.client().await;
        c.send(&format!("REGISTER login={login} password={PASSWORD}"))
            .await;
        c.expect("REGISTER-OK").await;
    }
}

/// Sends a message and returns its id, asserting `MESSAGE-SENT`.
pub async fn send(c: &mut Client, to: &str, text: &str) -> String {
    c.send(&format!("MESSAGE to={to} text={text}")).await;
    let l = c
        .expect_skip_any(&["MESSAGE-SENT", "MESSAGE-SEND-FAILED"])
        .await;
    assert!(l.starts_with("MESSAGE-SENT "), "{l}");
    field(&l, "id").unwrap()
}

/// The next `MESSAGE` pushed to `c` (skipping other packets).
pub async fn next_message(c: &mut Client) -> String {
    c.expect_skip("MESSAGE").await
}

impl Client {
    /// Skips lines until one starts with any of `verbs`.
    pub async fn expect_skip_any(&mut self, verbs: &[&str]) -> String {
        loop {
            let l = self.line().await;
            if verbs
                .iter()
                .any(|v| l == *v || l.starts_with(&format!("{v} ")))
            {
                return l;
            }
        }
    }
}
