//! A hand-driven s2s *listener*: a peer domain served by the test itself, which a server
//! under test dials and which then answers (or misbehaves) as the test says.

use super::attacks::{now, published_key, WAIT};
use super::dns::TestDns;
use futures::{SinkExt, StreamExt};
use msim_chat::federation::handshake::{self, Role, Session};
use msim_chat::federation::keys::ServerKey;
use msim_shared::tls::tokio_rustls::{server::TlsStream, TlsAcceptor};
use msim_shared::{Packet, PacketCodec};
use std::net::Ipv4Addr;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::Framed;

/// A peer domain whose s2s port is this test's.
pub struct HostilePeer {
    pub domain: String,
    pub key: ServerKey,
    listener: TcpListener,
    _dir: tempfile::TempDir,
}

/// An accepted, authenticated link from the server under test.
pub struct InLink {
    pub link: Framed<TlsStream<TcpStream>, PacketCodec>,
    /// The dialer's domain, as its `S2S-HELLO` said.
    pub dialer: String,
}

impl HostilePeer {
    /// Publishes `domain`'s key and SRV record (pointing here) in `dns`.
    pub async fn start(dns: &TestDns, domain: &str) -> HostilePeer {
        let dir = tempfile::tempdir().unwrap();
        let key = published_key(dns, dir.path(), domain);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        dns.set_srv(
            &format!("_msim-s2s._tcp.{domain}"),
            &format!("s2s.{domain}"),
            port,
        );
        dns.set_a(&format!("s2s.{domain}"), Ipv4Addr::LOCALHOST);
        HostilePeer {
            domain: domain.to_owned(),
            key,
            listener,
            _dir: dir,
        }
    }

    /// Accepts connections until one completes TLS and the listener's side of the handshake
    /// (a dialer that gave up meanwhile is skipped).
    pub async fn accept(&self) -> InLink {
        let tls = msim_chat::federation::tls::self_signed(&self.domain).unwrap();
        let acceptor = TlsAcceptor::from(tls);
        tokio::time::timeout(WAIT * 3, async {
            loop {
                let (tcp, _) = self.listener.accept().await.unwrap();
                if let Some(link) = self.handshake(&acceptor, tcp).await {
                    return link;
                }
            }
        })
        .await
        .expect("the server under test dials this peer")
    }

    async fn handshake(&self, acceptor: &TlsAcceptor, tcp: TcpStream) -> Option<InLink> {
        let tls = acceptor.accept(tcp).await.ok()?;
        let exporter = handshake::exporter(tls.get_ref().1)?;
        let mut link = Framed::new(tls, PacketCodec::new(1 << 18).with_max_records(0));
        let hello = next(&mut link).await?;
        let mut s = Session {
            dialer: hello.get("from")?.to_owned(),
            listener: self.domain.clone(),
            dialer_nonce: hello.get("nonce")?.to_owned(),
            listener_nonce: handshake::nonce(),
            exporter,
        };
        let challenge = Packet::new("S2S-CHALLENGE")
            .with("from", self.domain.clone())
            .with("nonce", s.listener_nonce.clone());
        link.send(challenge).await.ok()?;
        let auth = next(&mut link).await?;
        if auth.verb != "S2S-AUTH" {
            return None;
        }
        s.listener = self.domain.clone();
        let ours = handshake::auth_packet(&s, Role::Listener, &self.key, now());
        link.send(ours).await.ok()?;
        Some(InLink {
            link,
            dialer: s.dialer,
        })
    }
}

impl InLink {
    pub async fn send(&mut self, p: Packet) {
        self.link.send(p).await.unwrap();
    }

    /// The next packet; panics when the link closes or nothing comes within the deadline.
    pub async fn next(&mut self) -> Packet {
        tokio::time::timeout(WAIT, next(&mut self.link))
            .await
            .expect("timed out")
            .expect("link open")
    }
}

async fn next(link: &mut Framed<TlsStream<TcpStream>, PacketCodec>) -> Option<Packet> {
    match tokio::time::timeout(WAIT, link.next()).await.ok()?? {
        Ok(Ok(p)) => Some(p),
        _ => None,
    }
}
