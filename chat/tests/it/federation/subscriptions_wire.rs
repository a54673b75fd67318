//! Presence subscriptions seen on the wire (PROTOCOL.md §12.9): a hand-driven peer `c.test`
//! (its own key, published in DNS, an s2s listener of its own) records everything b.test sends
//! it, and subscribes and unsubscribes by hand. Nothing about a user leaves b.test before c.test
//! asks, and only what the user's privacy allows after; subscriptions are bounded per peer.

use super::dns::TestDns;
use super::{publish, send, Fed};
use futures::{SinkExt, StreamExt};
use msim_chat::federation::handshake::{self, Role, Session};
use msim_chat::federation::keys::{self, ServerKey};
use msim_shared::tls::tokio_rustls::{TlsAcceptor, TlsConnector};
use msim_shared::{Packet, PacketCodec};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::codec::Framed;

const WAIT: Duration = Duration::from_secs(10);

fn now() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1000) as i64
}

pub(super) async fn next<S: AsyncRead + AsyncWrite + Unpin>(
    l: &mut Framed<S, PacketCodec>,
) -> Option<Packet> {
    match tokio::time::timeout(WAIT, l.next())
        .await
        .expect("timed out")
    {
        Some(Ok(Ok(p))) => Some(p),
        _ => None,
    }
}

/// A peer server played by the test.
pub(super) struct FakePeer {
    domain: String,
    key: Arc<ServerKey>,
    /// What other servers sent to our listener, in order.
    received: mpsc::UnboundedReceiver<Packet>,
    /// The port of its s2s listener (published in DNS).
    pub(super) port: u16,
    _dir: tempfile::TempDir,
}

impl FakePeer {
    /// Publishes a key and an s2s address for `domain` and listens there: every packet is
    /// recorded, acknowledged when it has a `qid`, and profile requests are answered.
    pub(super) async fn start(dns: &TestDns, domain: &str) -> FakePeer {
        FakePeer::start_refusing(dns, domain, &[]).await
    }

    /// Like [`FakePeer::start`], but queued packets with one of `verbs` are answered
    /// `S2S-REFUSED reason=unknown-transfer` instead of acknowledged.
    pub(super) async fn start_refusing(
        dns: &TestDns,
        domain: &str,
        verbs: &'static [&'static str],
    ) -> FakePeer {
        let dir = tempfile::tempdir().unwrap();
        keys::generate(dir.path(), domain).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        publish(
            dns,
            domain,
            dir.path(),
            listener.local_addr().unwrap().port(),
        );
        let key = Arc::new(keys::load_newest(dir.path(), domain).unwrap());
        let (tx, received) = mpsc::unbounded_channel();
        let tls = TlsAcceptor::from(msim_chat::federation::tls::self_signed(domain).unwrap());
        let (k, d) = (key.clone(), domain.to_owned());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (tls, k, d, tx) = (tls.clone(), k.clone(), d.clone(), tx.clone());
                tokio::spawn(async move {
                    let Ok(s) = tls.accept(tcp).await else { return };
                    let exporter = handshake::exporter(s.get_ref().1).unwrap();
                    let mut link = Framed::new(s, PacketCodec::new(1 << 18));
                    let Some(hello) = next(&mut link).await else {
                        return;
                    };
                    let session = Session {
                        dialer: hello.get("from").unwrap().to_owned(),
                        listener: d.clone(),
                        dialer_nonce: hello.get("nonce").unwrap().to_owned(),
                        listener_nonce: handshake::nonce(),
                        exporter,
                    };
                    let challenge = Packet::new("S2S-CHALLENGE")
                        .with("from", d.clone())
                        .with("nonce", session.listener_nonce.clone());
                    link.send(challenge).await.unwrap();
                    // The dialer's proof is not checked: this peer only records.
                    let _auth = next(&mut link).await;
                    let ours = handshake::auth_packet(&session, Role::Listener, &k, now());
                    link.send(ours).await.unwrap();
                    while let Some(p) = next_open(&mut link).await {
                        if p.verb == "S2S-PROFILE-GET" {
                            let answer = Packet::new("S2S-PROFILE")
                                .with("rid", p.get("rid").unwrap_or_default())
                                .with("id", p.get("id").unwrap_or_default())
                                .with("name", "Eve");
                            let _ = link.send(answer).await;
                        } else if let Some(qid) = p.get("qid") {
                            let answer = if verbs.contains(&p.verb.as_str()) {
                                Packet::new("S2S-REFUSED")
                                    .with("qid", qid)
                                    .with("reason", "unknown-transfer")
                            } else {
                                Packet::new("S2S-ACK").with("qid", qid)
                            };
                            let _ = link.send(answer).await;
                        }
                        let _ = tx.send(p);
                    }
                });
            }
        });
        FakePeer {
            domain: domain.to_owned(),
            key,
            received,
            port,
            _dir: dir,
        }
    }

    /// Dials `addr` (the server of `to`) as this peer and authenticates.
    pub(super) async fn dial(
        &self,
        addr: SocketAddr,
        to: &str,
    ) -> Framed<impl AsyncRead + AsyncWrite + Unpin, PacketCodec> {
        let tcp = TcpStream::connect(addr).await.unwrap();
        self.authenticate(tcp, to).await
    }

    /// Like [`FakePeer::dial`], from source address `from` (any of 127.0.0.0/8 on loopback).
    pub(super) async fn dial_from(
        &self,
        from: std::net::IpAddr,
        addr: SocketAddr,
        to: &str,
    ) -> Framed<impl AsyncRead + AsyncWrite + Unpin, PacketCodec> {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(from, 0)).unwrap();
        let tcp = tokio::time::timeout(WAIT, socket.connect(addr))
            .await
            .expect("timed out")
            .unwrap();
        self.authenticate(tcp, to).await
    }

    /// The dialer's TLS and signed handshake on `tcp`.
    async fn authenticate(
        &self,
        tcp: TcpStream,
        to: &str,
    ) -> Framed<impl AsyncRead + AsyncWrite + Unpin, PacketCodec> {
        let tls = TlsConnector::from(msim_chat::federation::tls::any_certificate())
            .connect(msim_shared::tls::server_name(to).unwrap(), tcp)
            .await
            .unwrap();
        let exporter = handshake::exporter(tls.get_ref().1).unwrap();
        let mut link = Framed::new(tls, PacketCodec::new(1 << 18));
        let nonce = handshake::nonce();
        let hello = Packet::new("S2S-HELLO")
            .with("version", "1")
            .with("from", self.domain.clone())
            .with("to", to)
            .with("nonce", nonce.clone());
        link.send(hello).await.unwrap();
        let challenge = next(&mut link).await.unwrap();
        assert_eq!(challenge.verb, "S2S-CHALLENGE", "{challenge:?}");
        let session = Session {
            dialer: self.domain.clone(),
            listener: to.to_owned(),
            dialer_nonce: nonce,
            listener_nonce: challenge.get("nonce").unwrap().to_owned(),
            exporter,
        };
        let auth = handshake::auth_packet(&session, Role::Dialer, &self.key, now());
        link.send(auth).await.unwrap();
        let theirs = next(&mut link).await.unwrap();
        assert_eq!(theirs.verb, "S2S-AUTH", "{theirs:?}");
        link
    }

    /// Everything received until the `S2S-MESSAGE` with `id` (b.test's queue to us is ordered,
    /// so whatever it queued before that message arrives before it).
    pub(super) async fn until_message(&mut self, id: &str) -> Vec<Packet> {
        let mut before = Vec::new();
        loop {
            let p = tokio::time::timeout(WAIT, self.received.recv())
                .await
                .expect("timed out")
                .expect("listener stopped");
            if p.verb == "S2S-MESSAGE" && p.get("id") == Some(id) {
                return before;
            }
            before.push(p);
        }
    }

    /// The next packet received with `verb`.
    pub(super) async fn next_of(&mut self, verb: &str) -> Packet {
        loop {
            let p = tokio::time::timeout(WAIT, self.received.recv())
                .await
                .expect("timed out")
                .expect("listener stopped");
            if p.verb == verb {
                return p;
            }
        }
    }
}

/// The next packet, `None` at the end of the link (no timeout: links idle between tests).
async fn next_open<S: AsyncRead + AsyncWrite + Unpin>(
    l: &mut Framed<S, PacketCodec>,
) -> Option<Packet> {
    match l.next().await {
        Some(Ok(Ok(p))) => Some(p),
        _ => None,
    }
}

/// Verbs that carry a user's presence or profile.
fn about_bob(p: &[Packet]) -> Vec<String> {
    p.iter()
        .filter(|p| p.verb == "S2S-PRESENCE" || p.verb == "S2S-PROFILE-CHANGED")
        .map(|p| p.to_wire())
        .collect()
}

/// A request on `link` and its answer.
pub(super) async fn ask<S: AsyncRead + AsyncWrite + Unpin>(
    link: &mut Framed<S, PacketCodec>,
    p: Packet,
) -> Packet {
    link.send(p).await.unwrap();
    next(link).await.expect("an answer")
}

#[tokio::test]
async fn presence_leaves_the_server_only_for_subscribers_it_may_reach() {
    let dns = TestDns::start().await;
    let b = Fed::start(&dns, "b.test", |_| {}).await;
    let mut c = FakePeer::start(&dns, "c.test").await;
    let bob = b.user("bob").await;

    // No subscription: bob's logins, logouts and profile changes stay on b.test.
    drop(bob);
    let mut bob = b.session("bob").await;
    bob.send("PROFILE-UPDATE note=quiet").await;
    bob.expect_skip("PROFILE-UPDATE-OK").await;
    let id = send(&mut bob, "eve@c.test", "one").await;
    let before = c.until_message(&id).await;
    assert_eq!(about_bob(&before), Vec::<String>::new());

    // Bob adds eve (which approves her, and subscribes bob to eve): still nothing about bob,
    // since c.test has not asked.
    bob.send("CONTACTS-ADD id=eve@c.test").await;
    bob.expect_skip("CONTACTS-ADD-OK").await;
    bob.send("PROFILE-UPDATE note=still%20quiet").await;
    bob.expect_skip("PROFILE-UPDATE-OK").await;
    let id = send(&mut bob, "eve@c.test", "two").await;
    let before = c.until_message(&id).await;
    assert_eq!(about_bob(&before), Vec::<String>::new());
    assert!(
        before
            .iter()
            .any(|p| p.verb == "S2S-SUBSCRIBE" && p.get("from") == Some("bob@b.test")),
        "{before:?}"
    );

    // c.test subscribes eve: b.test sends bob's profile and presence (eve is approved).
    let mut link = c.dial(b.s2s, "b.test").await;
    let sub = Packet::new("S2S-SUBSCRIBE")
        .with("qid", "1")
        .with("from", "eve@c.test")
        .with("to", "bob@b.test");
    assert_eq!(ask(&mut link, sub).await.verb, "S2S-ACK");
    let p = c.next_of("S2S-PROFILE-CHANGED").await;
    assert_eq!(p.get("to"), Some("eve@c.test"));
    assert_eq!(p.get("note"), Some("still quiet"));
    let p = c.next_of("S2S-PRESENCE").await;
    assert_eq!(p.get("presence"), Some("online"));

    // Another watcher on c.test whom bob never added gets his profile, never his presence.
    let sub = Packet::new("S2S-SUBSCRIBE")
        .with("qid", "2")
        .with("from", "mallory@c.test")
        .with("to", "bob@b.test");
    assert_eq!(ask(&mut link, sub).await.verb, "S2S-ACK");
    drop(bob);
    let p = c.next_of("S2S-PRESENCE").await;
    assert_eq!(p.get("to"), Some("eve@c.test"));
    let mut bob = b.session("bob").await;
    let id = send(&mut bob, "eve@c.test", "three").await;
    let before = c.until_message(&id).await;
    assert!(
        before
            .iter()
            .all(|p| !(p.verb == "S2S-PRESENCE" && p.get("to") == Some("mallory@c.test"))),
        "{before:?}"
    );

    // last-seen=nobody: eve is told once that it is hidden, then nothing.
    bob.send("PRIVACY-SET last-seen=nobody").await;
    bob.expect_skip("PRIVACY-SET-OK").await;
    let p = c.next_of("S2S-PRESENCE").await;
    assert_eq!(
        (p.get("to"), p.get("presence")),
        (Some("eve@c.test"), Some(""))
    );
    drop(bob);
    let mut bob = b.session("bob").await;
    let id = send(&mut bob, "eve@c.test", "four").await;
    let before = c.until_message(&id).await;
    assert!(
        before.iter().all(|p| p.verb != "S2S-PRESENCE"),
        "{before:?}"
    );

    // Unsubscribed: not even profile changes.
    for (qid, who) in [("3", "eve@c.test"), ("4", "mallory@c.test")] {
        let unsub = Packet::new("S2S-UNSUBSCRIBE")
            .with("qid", qid)
            .with("from", who)
            .with("to", "bob@b.test");
        assert_eq!(ask(&mut link, unsub).await.verb, "S2S-ACK");
    }
    bob.send("PRIVACY-SET last-seen=contacts").await;
    bob.expect_skip("PRIVACY-SET-OK").await;
    bob.send("PROFILE-UPDATE note=loud").await;
    bob.expect_skip("PROFILE-UPDATE-OK").await;
    let id = send(&mut bob, "eve@c.test", "five").await;
    let before = c.until_message(&id).await;
    assert_eq!(about_bob(&before), Vec::<String>::new());

    // A subscription for a user b.test does not have, or forged for another domain's user.
    let sub = Packet::new("S2S-SUBSCRIBE")
        .with("qid", "5")
        .with("from", "eve@c.test")
        .with("to", "nobody@b.test");
    let r = ask(&mut link, sub).await;
    assert_eq!(
        (r.verb.as_str(), r.get("reason")),
        ("S2S-REFUSED", Some("unknown-user"))
    );
    let sub = Packet::new("S2S-SUBSCRIBE")
        .with("qid", "6")
        .with("from", "alice@a.test")
        .with("to", "bob@b.test");
    let r = ask(&mut link, sub).await;
    assert_eq!(
        (r.verb.as_str(), r.get("reason")),
        ("S2S-REFUSED", Some("forged-from"))
    );
}

#[tokio::test]
async fn subscriptions_are_bounded_per_peer_and_user() {
    let dns = TestDns::start().await;
    let b = Fed::start(&dns, "b.test", |_| {}).await;
    let c = FakePeer::start(&dns, "c.test").await;
    b.register("bob").await;
    b.register("carl").await;
    let mut link = c.dial(b.s2s, "b.test").await;
    // 1,000 watchers of one peer for one user (PROTOCOL.md §12.9), pipelined.
    const MAX: usize = 1000;
    for i in 0..=MAX {
        let sub = Packet::new("S2S-SUBSCRIBE")
            .with("qid", i.to_string())
            .with("from", format!("w{i}@c.test"))
            .with("to", "bob@b.test");
        link.feed(sub).await.unwrap();
    }
    link.flush().await.unwrap();
    let mut answers = Vec::new();
    while answers.len() <= MAX {
        let p = next(&mut link).await.expect("an answer");
        if p.get("qid").is_some() {
            answers.push(p);
        }
    }
    let acked = answers.iter().filter(|p| p.verb == "S2S-ACK").count();
    assert_eq!(acked, MAX);
    let last = answers.iter().find(|p| p.verb == "S2S-REFUSED").unwrap();
    assert_eq!(last.get("qid"), Some(MAX.to_string().as_str()));
    assert_eq!(last.get("reason"), Some("too-many-subscriptions"));
    // Renewing one is fine; another user of this server is not affected.
    let again = Packet::new("S2S-SUBSCRIBE")
        .with("qid", "r1")
        .with("from", "w0@c.test")
        .with("to", "bob@b.test");
    assert_eq!(ask(&mut link, again).await.verb, "S2S-ACK");
    let other = Packet::new("S2S-SUBSCRIBE")
        .with("qid", "r2")
        .with("from", "w0@c.test")
        .with("to", "carl@b.test");
    assert_eq!(ask(&mut link, other).await.verb, "S2S-ACK");
}
