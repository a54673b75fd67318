//! The sending side against misbehaving peers and DNS: forged acknowledgements, dead SRV
//! targets, peer tasks retiring under load, address forms that must be one peer, a local user
//! filling the queue with made-up domains, remote reading times and blocking remote users.

use super::attacks::{published_key, Raw, WAIT};
use super::dns::TestDns;
use super::hostile::{HostilePeer, InLink};
use super::{next_message, send, Fed};
use crate::common::field;
use msim_shared::Packet;
use std::net::Ipv4Addr;
use std::time::Duration;

/// Everything the sender pushes on `link` before answering a PING: the S2S-MESSAGE qids.
async fn sent_until_pong(link: &mut InLink, tag: &str) -> Vec<String> {
    link.send(Packet::new("PING").with("ref", tag)).await;
    let mut got = Vec::new();
    loop {
        let p = link.next().await;
        match p.verb.as_str() {
            "PONG" => return got,
            "S2S-MESSAGE" => got.push(p.get("qid").unwrap().to_owned()),
            _ => {}
        }
    }
}

/// A peer answering `S2S-ACK` for ids it was never sent cannot make the sender push more than
/// its window of unacknowledged items (the old code counted any ack, went negative and loaded
/// the whole queue); a real ack still moves the window.
#[tokio::test]
async fn forged_acks_do_not_open_the_window() {
    let dns = TestDns::start().await;
    let evil = HostilePeer::start(&dns, "evil.test").await;
    let a = Fed::start(&dns, "a.test", |_| {}).await;
    let mut alice = a.user("alice").await;
    let accepting = tokio::spawn(async move {
        let link = evil.accept().await;
        (evil, link)
    });
    for i in 0..300 {
        send(&mut alice, "x@evil.test", &format!("m{i}")).await;
    }
    let (_evil, mut link) = accepting.await.unwrap();
    assert_eq!(link.dialer, "a.test");
    // Everything A sends before answering a PING: its window (at most 128 unacknowledged).
    let mut qids = Vec::new();
    qids.extend(sent_until_pong(&mut link, "window").await);
    assert!((1..=128).contains(&qids.len()), "{} in flight", qids.len());
    // 300 acknowledgements for ids never sent, then a round trip.
    for i in 0..300 {
        link.send(Packet::new("S2S-ACK").with("qid", (1_000_000 + i).to_string()))
            .await;
    }
    let extra = sent_until_pong(&mut link, "forged").await;
    assert_eq!(
        extra.len(),
        0,
        "forged acks made the sender push past its window"
    );
    // Real acks move the window: more comes, never more than 128 unacknowledged.
    for q in &qids {
        link.send(Packet::new("S2S-ACK").with("qid", q.clone()))
            .await;
    }
    let more = sent_until_pong(&mut link, "real").await;
    assert!((1..=128).contains(&more.len()), "{} more", more.len());
}

/// An SRV set whose preferred targets are dead (connection refused) or silent (accepts TCP,
/// never speaks TLS): each is given up after the per-attempt deadline and the next is tried
/// (the old code used only the first target that resolved, and waited on it forever).
#[tokio::test]
async fn srv_failover_skips_dead_and_silent_targets() {
    let dns = TestDns::start().await;
    let b = Fed::start(&dns, "b.test", |_| {}).await;
    let dead_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    // Accepts connections into its backlog and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    dns.set_a("dead.b.test", Ipv4Addr::LOCALHOST);
    dns.set_a("silent.b.test", Ipv4Addr::LOCALHOST);
    dns.set_srvs(
        "_msim-s2s._tcp.b.test",
        &[
            (0, 10, dead_port, "dead.b.test"),
            (0, 10, silent_port, "silent.b.test"),
            (10, 0, b.s2s.port(), "s2s.b.test"),
        ],
    );
    let a = Fed::start(&dns, "a.test", |c| {
        c.federation.handshake_timeout = Duration::from_millis(500);
    })
    .await;
    let mut alice = a.user("alice").await;
    let mut bob = b.user("bob").await;
    let id = send(&mut alice, "bob@b.test", "via%20the%20third%20target").await;
    assert_eq!(field(&next_message(&mut bob).await, "id"), Some(id));
    drop(silent);
}

/// Peer tasks retire when idle and start again on the next wake; with an idle time of a
/// millisecond they retire all the time. Requests and messages racing with retirement are
/// never lost (each answered and delivered within the deadline).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retiring_peer_task_never_loses_a_wake_up() {
    let dns = TestDns::start().await;
    let a = Fed::start(&dns, "a.test", |c| {
        c.federation.link_idle = Duration::from_millis(1);
    })
    .await;
    let b = Fed::start(&dns, "b.test", |_| {}).await;
    let mut bob = b.user("bob").await;
    let mut askers = Vec::new();
    for n in 0..4 {
        let mut c = a.user(&format!("asker{n}")).await;
        askers.push(tokio::spawn(async move {
            for i in 0..40u64 {
                c.send(&format!("PROFILE-GET id=bob@b.test ref={i}")).await;
                let l = tokio::time::timeout(
                    WAIT,
                    c.expect_skip_any(&["PROFILE", "PROFILE-GET-FAILED"]),
                )
                .await
                .expect("an answer");
                assert!(l.starts_with("PROFILE "), "request {i} of asker {n}: {l}");
                // Vary the moment of the next request around the task's retirement.
                tokio::time::sleep(Duration::from_micros((i * 397 + n * 131) % 3000)).await;
            }
        }));
    }
    let mut alice = a.user("alice").await;
    for i in 0..60u64 {
        let id = send(&mut alice, "bob@b.test", &format!("m{i}")).await;
        let m = tokio::time::timeout(WAIT, next_message(&mut bob))
            .await
            .expect("delivered");
        assert_eq!(field(&m, "id"), Some(id));
        tokio::time::sleep(Duration::from_micros((i * 613) % 3000)).await;
    }
    for t in askers {
        t.await.unwrap();
    }
}

/// `bob@evil.test:3216` and `bob@EVIL.test.` are `bob@evil.test`: the deny list applies to
/// them (the old code saw other domains, queued them and made new peers); an IP address is
/// not a domain. A port on an allowed domain still reaches it.
#[tokio::test]
async fn port_and_dot_forms_are_one_domain_for_policy() {
    let dns = TestDns::start().await;
    let a = Fed::start(&dns, "a.test", |c| {
        c.federation.deny = vec!["evil.test".into()];
    })
    .await;
    let b = Fed::start(&dns, "b.test", |_| {}).await;
    let mut alice = a.user("alice").await;
    for to in ["bob@evil.test:3216", "bob@EVIL.test.", "bob@evil.test.:1"] {
        alice.send(&format!("MESSAGE to={to} text=hi")).await;
        let l = alice
            .expect_skip_any(&["MESSAGE-SENT", "MESSAGE-SEND-FAILED"])
            .await;
        assert_eq!(
            field(&l, "reason").as_deref(),
            Some("peer-not-allowed"),
            "{to}: {l}"
        );
    }
    alice.send("MESSAGE to=bob@127.0.0.1 text=hi").await;
    let l = alice
        .expect_skip_any(&["MESSAGE-SENT", "MESSAGE-SEND-FAILED"])
        .await;
    assert_eq!(field(&l, "reason").as_deref(), Some("bad-address"), "{l}");
    let mut bob = b.user("bob").await;
    let id = send(&mut alice, "bob@B.test.:3216", "hello").await;
    let m = next_message(&mut bob).await;
    assert_eq!(field(&m, "id"), Some(id));
    assert_eq!(field(&m, "to").as_deref(), Some("bob@b.test"));
    // A local address with a port is local.
    let mut alice2 = a.user("alice2").await;
    let id = send(&mut alice, "alice2@a.test:3214", "local").await;
    assert_eq!(field(&next_message(&mut alice2).await, "id"), Some(id));
}

/// One local user cannot fill the outbound queue with thousands of made-up domains: items
/// per sender and peers with items are bounded; others keep sending to known peers.
#[tokio::test]
async fn one_sender_cannot_fill_the_queue_with_made_up_domains() {
    let dns = TestDns::start().await;
    let a = Fed::start(&dns, "a.test", |c| {
        c.federation.queue_max_per_sender = 5;
        c.federation.max_peers = 7;
    })
    .await;
    let mut mallory = a.user("mallory").await;
    let failed = |l: &str| field(l, "reason");
    for i in 0..6 {
        mallory
            .send(&format!("MESSAGE to=x@nowhere{i}.test text=spam"))
            .await;
        let l = mallory
            .expect_skip_any(&["MESSAGE-SENT", "MESSAGE-SEND-FAILED"])
            .await;
        if i < 5 {
            assert!(l.starts_with("MESSAGE-SENT "), "{i}: {l}");
        } else {
            assert_eq!(failed(&l).as_deref(), Some("recipient-queue-full"), "{l}");
        }
    }
    // Another sender: two more peers fit, the eighth does not; known peers still do.
    let mut carol = a.user("carol").await;
    for i in 0..2 {
        send(&mut carol, &format!("y@elsewhere{i}.test"), "hi").await;
    }
    carol.send("MESSAGE to=y@elsewhere2.test text=hi").await;
    let l = carol
        .expect_skip_any(&["MESSAGE-SENT", "MESSAGE-SEND-FAILED"])
        .await;
    assert_eq!(failed(&l).as_deref(), Some("recipient-queue-full"), "{l}");
    send(&mut carol, "z@nowhere0.test", "known%20peer").await;
}

/// A peer's reading time far from our clock is replaced by ours (a receipt "read in 2099"
/// is not shown to the sender).
#[tokio::test]
async fn a_remote_reading_time_is_checked() {
    let dns = TestDns::start().await;
    let c = HostilePeer::start(&dns, "c.test").await;
    let b = Fed::start(&dns, "b.test", |_| {}).await;
    let mut alice = b.user("alice").await;
    let accepting = tokio::spawn(async move {
        let link = c.accept().await;
        (c, link)
    });
    let id = send(&mut alice, "carol@c.test", "hi").await;
    let (c, mut link) = accepting.await.unwrap();
    let m = link.next().await;
    assert_eq!(m.get("id"), Some(id.as_str()));
    link.send(Packet::new("S2S-ACK").with("qid", m.get("qid").unwrap().to_owned()))
        .await;
    let mut raw = Raw::connect(b.s2s, "b.test").await;
    assert_eq!(raw.login("c.test", "b.test", &c.key).await.verb, "S2S-AUTH");
    raw.send(
        Packet::new("S2S-READ")
            .with("qid", "1")
            .with("id", id.clone())
            .with("by", "carol@c.test")
            .with("to", "alice@b.test")
            .with("at", "2099-01-01T00:00:00.000Z"),
    )
    .await;
    assert_eq!(raw.next().await.unwrap().verb, "S2S-ACK");
    let r = alice.expect_skip("MESSAGE-READ").await;
    assert_eq!(field(&r, "id"), Some(id));
    let at = field(&r, "at").unwrap();
    assert!(at.starts_with("20") && !at.starts_with("2099"), "{r}");
}

/// A local user blocks a remote user like a local one: nothing of theirs is delivered (the
/// peer is answered as usual); unblocking restores delivery; others are unaffected.
#[tokio::test]
async fn remote_users_can_be_blocked() {
    let dns = TestDns::start().await;
    let b = Fed::start(&dns, "b.test", |_| {}).await;
    let mut bob = b.user("bob").await;
    let dir = tempfile::tempdir().unwrap();
    let key = published_key(&dns, dir.path(), "c.test");
    bob.send("BLOCK id=Carol@C.test").await;
    let ok = bob.expect_skip_any(&["BLOCK-OK", "BLOCK-FAILED"]).await;
    assert!(ok.starts_with("BLOCK-OK "), "{ok}");
    assert_eq!(field(&ok, "id").as_deref(), Some("carol@c.test"));
    let mut raw = Raw::connect(b.s2s, "b.test").await;
    assert_eq!(raw.login("c.test", "b.test", &key).await.verb, "S2S-AUTH");
    let message = |qid: u32, from: &str| {
        Packet::new("S2S-MESSAGE")
            .with("qid", qid.to_string())
            .with("id", uuid::Uuid::now_v7().to_string())
            .with("from", from)
            .with("to", "bob@b.test")
            .with(
                "at",
                msim_shared::timestamp::format(time::OffsetDateTime::now_utc()),
            )
            .with("text", format!("{qid}"))
    };
    raw.send(
        Packet::new("S2S-TYPING")
            .with("from", "carol@c.test")
            .with("to", "bob@b.test")
            .with("state", "started"),
    )
    .await;
    raw.send(message(1, "carol@c.test")).await;
    assert_eq!(raw.next().await.unwrap().verb, "S2S-ACK");
    raw.send(message(2, "dave@c.test")).await;
    assert_eq!(raw.next().await.unwrap().verb, "S2S-ACK");
    // The first thing bob sees is dave's message: nothing of carol's.
    let first = bob.expect_skip_any(&["MESSAGE", "TYPING-STARTED"]).await;
    assert_eq!(
        field(&first, "from").as_deref(),
        Some("dave@c.test"),
        "{first}"
    );
    bob.send("UNBLOCK id=carol@c.test").await;
    bob.expect_skip("UNBLOCK-OK").await;
    raw.send(message(3, "carol@c.test")).await;
    assert_eq!(raw.next().await.unwrap().verb, "S2S-ACK");
    let m = next_message(&mut bob).await;
    assert_eq!(field(&m, "text").as_deref(), Some("3"));
}
