//! What a hostile or confused peer can try on the s2s port: replaying a captured handshake,
//! claiming another server's domain, forging `from`, using a revoked key; and key rotation.

use super::dns::TestDns;
use super::{next_message, send, Fed};
use crate::common::field;
use futures::{SinkExt, StreamExt};
use msim_chat::federation::handshake::{self, Role, Session};
use msim_chat::federation::keys::{self, ServerKey};
use msim_shared::tls::tokio_rustls::{client::TlsStream, TlsConnector};
use msim_shared::{Packet, PacketCodec};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

pub const WAIT: Duration = Duration::from_secs(10);

/// A hand-driven s2s connection.
pub struct Raw {
    pub link: Framed<TlsStream<TcpStream>, PacketCodec>,
    pub exporter: [u8; 32],
}

impl Raw {
    pub async fn connect(addr: SocketAddr, sni: &str) -> Raw {
        let tcp = TcpStream::connect(addr).await.unwrap();
        Raw::over(tcp, sni).await
    }

    /// TLS over an already connected socket.
    pub async fn over(tcp: TcpStream, sni: &str) -> Raw {
        let tls = TlsConnector::from(msim_chat::federation::tls::any_certificate())
            .connect(msim_shared::tls::server_name(sni).unwrap(), tcp)
            .await
            .unwrap();
        let exporter = handshake::exporter(tls.get_ref().1).unwrap();
        Raw {
            link: Framed::new(tls, PacketCodec::new(1 << 18)),
            exporter,
        }
    }

    pub async fn send(&mut self, p: Packet) {
        self.link.send(p).await.unwrap();
    }

    /// The next packet, or None when the server closed the link.
    pub async fn next(&mut self) -> Option<Packet> {
        match tokio::time::timeout(WAIT, self.link.next())
            .await
            .expect("timed out")
        {
            Some(Ok(Ok(p))) => Some(p),
            _ => None,
        }
    }

    /// `S2S-HELLO`; returns the session (with the listener's nonce) or the refusal.
    pub async fn hello(&mut self, from: &str, to: &str, nonce: &str) -> Result<Session, Packet> {
        self.send(
            Packet::new("S2S-HELLO")
                .with("version", "1")
                .with("from", from)
                .with("to", to)
                .with("nonce", nonce),
        )
        .await;
        let p = self.next().await.expect("an answer to S2S-HELLO");
        if p.verb != "S2S-CHALLENGE" {
            return Err(p);
        }
        Ok(Session {
            dialer: from.into(),
            listener: to.into(),
            dialer_nonce: nonce.into(),
            listener_nonce: p.get("nonce").unwrap().into(),
            exporter: self.exporter,
        })
    }

    /// The whole dialer handshake as `from` with `key`; returns the server's last answer.
    pub async fn login(&mut self, from: &str, to: &str, key: &ServerKey) -> Packet {
        let s = self.hello(from, to, &handshake::nonce()).await.unwrap();
        let auth = handshake::auth_packet(&s, Role::Dialer, key, now());
        self.send(auth).await;
        self.next().await.expect("an answer to S2S-AUTH")
    }
}

pub fn now() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1000) as i64
}

/// A key for `domain` published in `dns` (a peer with no server behind it).
pub fn published_key(dns: &TestDns, dir: &std::path::Path, domain: &str) -> ServerKey {
    let k = keys::generate(dir, domain).unwrap();
    dns.set_txt(
        &keys::key_name(&k.kid, domain),
        &keys::txt_value(k.public()),
    );
    k
}

#[tokio::test]
async fn a_replayed_handshake_is_refused() {
    let dns = TestDns::start().await;
    let b = Fed::start(&dns, "b.test", |_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let key = published_key(&dns, dir.path(), "c.test");

    // A genuine handshake succeeds and B proves its own domain.
    let mut first = Raw::connect(b.s2s, "b.test").await;
    let nonce = handshake::nonce();
    let s = first.hello("c.test", "b.test", &nonce).await.unwrap();
    let captured = handshake::auth_packet(&s, Role::Dialer, &key, now());
    first.send(captured.clone()).await;
    let theirs = first.next().await.unwrap();
    assert_eq!(theirs.verb, "S2S-AUTH", "{theirs:?}");
    let resolver =
        msim_chat::federation::dns::Dns::new(Some(dns.addr), Default::default()).unwrap();
    handshake::check_auth(
        &resolver,
        &s,
        Role::Listener,
        "b.test",
        &theirs,
        now(),
        WAIT,
    )
    .await
    .expect("B's proof verifies");

    // The same HELLO and the captured S2S-AUTH on another connection: refused.
    let mut replay = Raw::connect(b.s2s, "b.test").await;
    replay.hello("c.test", "b.test", &nonce).await.unwrap();
    replay.send(captured).await;
    let refused = replay.next().await.unwrap();
    assert_eq!(refused.verb, "S2S-FAILED");
    assert_eq!(refused.get("reason"), Some("bad-signature"));
    assert!(replay.next().await.is_none(), "closed after the refusal");
}

#[tokio::test]
async fn a_server_claiming_another_domain_is_refused() {
    let dns = TestDns::start().await;
    let a = Fed::start(&dns, "a.test", |_| {}).await;
    let b = Fed::start(&dns, "b.test", |_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    // Key ids are times: a second key of this directory cannot share a.test's id by chance.
    published_key(&dns, dir.path(), "evil.test");
    let evil = published_key(&dns, dir.path(), "evil.test");
    assert_ne!(evil.kid, a.kid);

    // Its own key id does not exist under a.test.
    let mut raw = Raw::connect(b.s2s, "b.test").await;
    let answer = raw.login("a.test", "b.test", &evil).await;
    assert_eq!(
        (answer.verb.as_str(), answer.get("reason")),
        ("S2S-FAILED", Some("unknown-key"))
    );

    // a.test's real key id with the wrong key: the signature fails (after one refetch).
    let mut raw = Raw::connect(b.s2s, "b.test").await;
    let s = raw
        .hello("a.test", "b.test", &handshake::nonce())
        .await
        .unwrap();
    let mut auth = handshake::auth_packet(&s, Role::Dialer, &evil, now());
    auth = auth.with("kid", a.kid.clone());
    raw.send(auth).await;
    let answer = raw.next().await.unwrap();
    assert_eq!(
        (answer.verb.as_str(), answer.get("reason")),
        ("S2S-FAILED", Some("bad-signature"))
    );

    // A HELLO for a domain B is not: refused before any signature.
    let mut raw = Raw::connect(b.s2s, "b.test").await;
    let refused = raw
        .hello("evil.test", "a.test", &handshake::nonce())
        .await
        .unwrap_err();
    assert_eq!(refused.get("reason"), Some("unknown-domain"));
}

#[tokio::test]
async fn a_forged_from_is_refused_and_repeated_violations_close_the_link() {
    let dns = TestDns::start().await;
    let b = Fed::start(&dns, "b.test", |_| {}).await;
    let mut bob = b.user("bob").await;
    let dir = tempfile::tempdir().unwrap();
    let key = published_key(&dns, dir.path(), "c.test");
    let mut raw = Raw::connect(b.s2s, "b.test").await;
    assert_eq!(raw.login("c.test", "b.test", &key).await.verb, "S2S-AUTH");

    let message = |qid: u32, from: &str, to: &str| {
        Packet::new("S2S-MESSAGE")
            .with("qid", qid.to_string())
            .with("id", uuid::Uuid::now_v7().to_string())
            .with("from", from)
            .with("to", to)
            .with("at", "2026-11-26T10:00:00.000Z")
            .with("text", format!("{qid}"))
    };
    raw.send(message(1, "alice@a.test", "bob@b.test")).await;
    let r = raw.next().await.unwrap();
    assert_eq!(
        (r.verb.as_str(), r.get("qid"), r.get("reason")),
        ("S2S-REFUSED", Some("1"), Some("forged-from"))
    );
    // A legitimate packet on the same link still works, and is the first bob sees.
    raw.send(message(2, "carol@c.test", "bob@b.test")).await;
    let r = raw.next().await.unwrap();
    assert_eq!((r.verb.as_str(), r.get("qid")), ("S2S-ACK", Some("2")));
    let m = next_message(&mut bob).await;
    assert_eq!(field(&m, "from").as_deref(), Some("carol@c.test"));
    assert_eq!(field(&m, "text").as_deref(), Some("2"));
    // `to` must be on B.
    raw.send(message(3, "carol@c.test", "bob@a.test")).await;
    let r = raw.next().await.unwrap();
    assert_eq!(
        (r.verb.as_str(), r.get("reason")),
        ("S2S-REFUSED", Some("bad-to"))
    );
    // The third violation closes the link.
    raw.send(message(4, "mallory@b.test", "bob@b.test")).await;
    let r = raw.next().await.unwrap();
    assert_eq!(r.get("reason"), Some("forged-from"));
    assert!(raw.next().await.is_none(), "link closed");
}

#[tokio::test]
async fn a_resent_message_is_stored_once() {
    let dns = TestDns::start().await;
    let b = Fed::start(&dns, "b.test", |_| {}).await;
    b.register("bob").await;
    let dir = tempfile::tempdir().unwrap();
    let key = published_key(&dns, dir.path(), "c.test");
    let id = uuid::Uuid::now_v7().to_string();
    for (round, qid) in [(0, "7"), (1, "8")] {
        // The second time on a new link, as after a lost acknowledgement.
        let mut raw = Raw::connect(b.s2s, "b.test").await;
        assert_eq!(raw.login("c.test", "b.test", &key).await.verb, "S2S-AUTH");
        raw.send(
            Packet::new("S2S-MESSAGE")
                .with("qid", qid)
                .with("id", id.clone())
                .with("from", "carol@c.test")
                .with("to", "bob@b.test")
                .with("at", "2026-11-26T10:00:00.000Z")
                .with("text", "once"),
        )
        .await;
        let r = raw.next().await.unwrap();
        assert_eq!(
            (r.verb.as_str(), r.get("qid")),
            ("S2S-ACK", Some(qid)),
            "round {round}"
        );
    }
    let mut bob = b.session("bob").await;
    bob.send("PING ref=end").await;
    let mut messages = 0;
    loop {
        let l = bob.line().await;
        if l.starts_with("PONG") {
            break;
        }
        messages += usize::from(l.starts_with("MESSAGE "));
    }
    assert_eq!(messages, 1);
}

#[tokio::test]
async fn key_rotation_keeps_federation_and_revocation_ends_it() {
    let dns = TestDns::start().await;
    let a = Fed::start(&dns, "a.test", |_| {}).await;
    let b = Fed::start(&dns, "b.test", |_| {}).await;
    let mut alice = a.user("alice").await;
    let mut bob = b.user("bob").await;
    let id = send(&mut alice, "bob@b.test", "before").await;
    assert_eq!(field(&next_message(&mut bob).await, "id"), Some(id.clone()));
    bob.send(&format!("MESSAGE-ACK id={id}")).await;
    let old_kid = a.kid.clone();

    // Rotation: a new key (new id) published beside the old one; A restarts with it.
    let (dir, port) = a.stop().await;
    keys::generate(&dir.path().join("chat"), "a.test").unwrap();
    let a = Fed::start_in(&dns, "a.test", dir, port, |_| {}).await;
    assert_ne!(a.kid, old_kid);
    // The old key is withdrawn (empty p=) once the new one is in use.
    dns.set_txt(
        &keys::key_name(&old_kid, "a.test"),
        "v=msim1; k=ed25519; p=",
    );
    // B's links from A are new after A's restart: the new key id is checked.
    let mut alice = a.session("alice").await;
    let id = send(&mut alice, "bob@b.test", "after%20rotation").await;
    assert_eq!(field(&next_message(&mut bob).await, "id"), Some(id));

    // Revocation of the key in use: B refuses A's next handshake.
    dns.set_txt(&keys::key_name(&a.kid, "a.test"), "v=msim1; k=ed25519; p=");
    let key = keys::load_newest(a.server.chat_dir(), "a.test").unwrap();
    let mut raw = Raw::connect(b.s2s, "b.test").await;
    let answer = raw.login("a.test", "b.test", &key).await;
    assert_eq!(
        (answer.verb.as_str(), answer.get("reason")),
        ("S2S-FAILED", Some("unknown-key"))
    );
}

#[tokio::test]
async fn denied_peers_and_servers_with_federation_off_are_not_reachable() {
    let dns = TestDns::start().await;
    let b = Fed::start(&dns, "b.test", |c| {
        c.federation.deny = vec!["c.test".into()]
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let key = published_key(&dns, dir.path(), "c.test");
    let mut raw = Raw::connect(b.s2s, "b.test").await;
    let refused = raw
        .hello("c.test", "b.test", &handshake::nonce())
        .await
        .unwrap_err();
    assert_eq!(refused.get("reason"), Some("not-allowed"));
    // Others are unaffected.
    let other = published_key(&dns, dir.path(), "d.test");
    let mut raw = Raw::connect(b.s2s, "b.test").await;
    assert_eq!(raw.login("d.test", "b.test", &other).await.verb, "S2S-AUTH");
    drop(key);
}
