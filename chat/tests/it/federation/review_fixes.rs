//! Federation review findings on the subscription and file packets (issue 14), each as the
//! attack a peer or a local user would make, over real sockets: a hand-driven peer `c.test`
//! (see `subscriptions_wire`) talks to b.test; bob is b.test's user.

use super::dns::TestDns;
use super::subscriptions_wire::{ask, FakePeer};
use super::{send, Fed};
use crate::common::{field, Client};
use futures::SinkExt;
use msim_shared::Packet;

fn in_an_hour() -> String {
    msim_shared::timestamp::format(time::OffsetDateTime::now_utc() + time::Duration::hours(1))
}

fn offer(qid: &str, from: &str, tid: &str) -> Packet {
    Packet::new("S2S-FILE-OFFER")
        .with("qid", qid)
        .with("transfer-id", tid)
        .with("from", from)
        .with("to", "bob@b.test")
        .with("filename", "x.bin")
        .with("size", "1000")
        .with("expires", in_an_hour())
}

fn closed(qid: &str, from: &str, tid: &str, reason: &str) -> Packet {
    Packet::new("S2S-FILE-CLOSED")
        .with("qid", qid)
        .with("transfer-id", tid)
        .with("from", from)
        .with("to", "bob@b.test")
        .with("reason", reason)
}

fn ready(qid: &str, tid: &str, connect: &str, port: u16, url: &str) -> Packet {
    Packet::new("S2S-FILE-READY")
        .with("qid", qid)
        .with("transfer-id", tid)
        .with("from", "eve@c.test")
        .with("to", "bob@b.test")
        .with("connect", connect)
        .with("port", port.to_string())
        .with("url", url)
        .with("token", "t0ken")
        .with("expires", in_an_hour())
}

/// Every line pushed to `c` until the answer to a ping sent now.
async fn drain(c: &mut Client) -> Vec<String> {
    c.send("PING ref=drain").await;
    let mut lines = Vec::new();
    loop {
        let l = c.line().await;
        if l.starts_with("PONG") {
            return lines;
        }
        lines.push(l);
    }
}

fn count(lines: &[String], verb: &str, tid: &str) -> usize {
    lines
        .iter()
        .filter(|l| l.starts_with(&format!("{verb} ")))
        .filter(|l| field(l, "transfer-id").as_deref() == Some(tid))
        .count()
}

fn tid() -> String {
    uuid::Uuid::new_v4().to_string()
}

#[tokio::test]
async fn a_peer_closes_a_remote_offer_once_with_a_known_reason_and_never_a_hidden_one() {
    let dns = TestDns::start().await;
    let b = Fed::start(&dns, "b.test", |_| {}).await;
    let c = FakePeer::start(&dns, "c.test").await;
    let mut bob = b.user("bob").await;
    let mut link = c.dial(b.s2s, "b.test").await;

    // An offer from eve, closed by her server: bob hears of it once, however often it repeats.
    let t1 = tid();
    assert_eq!(
        ask(&mut link, offer("1", "eve@c.test", &t1)).await.verb,
        "S2S-ACK"
    );
    for q in ["2", "3", "4"] {
        let r = ask(&mut link, closed(q, "eve@c.test", &t1, "no-relay")).await;
        assert_eq!(r.verb, "S2S-ACK", "{r:?}");
    }
    let lines = drain(&mut bob).await;
    assert_eq!(
        count(&lines, "SEND-FILE-PROXY-REQUEST", &t1),
        1,
        "{lines:?}"
    );
    assert_eq!(
        count(&lines, "SEND-FILE-PROXY-REJECTED", &t1),
        1,
        "{lines:?}"
    );
    // And once only on a later login too (one stored notice).
    drop(bob);
    let mut bob = b.session("bob").await;
    let lines = drain(&mut bob).await;
    assert!(
        count(&lines, "SEND-FILE-PROXY-REJECTED", &t1) <= 1,
        "{lines:?}"
    );

    // A reason outside §10.5 (here 200 KiB of it) is refused, not stored.
    let t2 = tid();
    assert_eq!(
        ask(&mut link, offer("5", "eve@c.test", &t2)).await.verb,
        "S2S-ACK"
    );
    let r = ask(
        &mut link,
        closed("6", "eve@c.test", &t2, &"x".repeat(200_000)),
    )
    .await;
    assert_eq!(
        (r.verb.as_str(), r.get("reason")),
        ("S2S-REFUSED", Some("malformed"))
    );
    let lines = drain(&mut bob).await;
    assert_eq!(
        count(&lines, "SEND-FILE-PROXY-REJECTED", &t2),
        0,
        "{lines:?}"
    );

    // An offer from a sender bob blocked is hidden; closing it tells bob nothing either.
    bob.send("BLOCK id=mallory@c.test").await;
    bob.expect_skip("BLOCK-OK").await;
    let t3 = tid();
    assert_eq!(
        ask(&mut link, offer("7", "mallory@c.test", &t3)).await.verb,
        "S2S-ACK"
    );
    let r = ask(&mut link, closed("8", "mallory@c.test", &t3, "rejected")).await;
    assert_eq!(r.verb, "S2S-ACK");
    let lines = drain(&mut bob).await;
    assert_eq!(
        count(&lines, "SEND-FILE-PROXY-REQUEST", &t3),
        0,
        "{lines:?}"
    );
    assert_eq!(
        count(&lines, "SEND-FILE-PROXY-REJECTED", &t3),
        0,
        "{lines:?}"
    );

    // Closed, the offer can no longer be accepted.
    bob.send(&format!("SEND-FILE-PROXY-ACCEPT transfer-id={t1}"))
        .await;
    let f = bob.expect_skip("SEND-FILE-PROXY-ANSWER-FAILED").await;
    assert_eq!(field(&f, "transfer-id").as_deref(), Some(t1.as_str()));
}

#[tokio::test]
async fn a_download_grant_names_only_the_transfer_on_a_public_host_and_comes_once() {
    let dns = TestDns::start().await;
    // Private peers not allowed: what a production server runs with.
    let b = Fed::start(&dns, "b.test", |c| c.federation.allow_private = false).await;
    let c = FakePeer::start(&dns, "c.test").await;
    let mut bob = b.user("bob").await;
    let t = tid();
    let mut link = c.dial(b.s2s, "b.test").await;
    assert_eq!(
        ask(&mut link, offer("1", "eve@c.test", &t)).await.verb,
        "S2S-ACK"
    );
    bob.expect_skip("SEND-FILE-PROXY-REQUEST").await;
    bob.send(&format!("SEND-FILE-PROXY-ACCEPT transfer-id={t}"))
        .await;
    bob.sync().await;

    // Grants that would send bob's client into his own network are refused.
    let attacks = [
        (
            "192.168.1.1",
            80,
            format!("http://192.168.1.1/cgi-bin/x?a=/v1/transfers/{t}"),
        ),
        (
            "127.0.0.1",
            8080,
            format!("http://127.0.0.1:8080/v1/transfers/{t}"),
        ),
        (
            "relay.c.test",
            443,
            format!("https://10.0.0.1/v1/transfers/{t}"),
        ),
        (
            "relay.c.test",
            443,
            format!("https://u@relay.c.test/v1/transfers/{t}"),
        ),
        (
            "relay.c.test",
            443,
            format!("https://relay.c.test:444/v1/transfers/{t}"),
        ),
    ];
    for (i, (connect, port, url)) in attacks.iter().enumerate() {
        // A link closes after three violations: one link per attack.
        let mut link = c.dial(b.s2s, "b.test").await;
        let r = ask(&mut link, ready(&format!("a{i}"), &t, connect, *port, url)).await;
        assert_eq!(
            (r.verb.as_str(), r.get("reason")),
            ("S2S-REFUSED", Some("malformed")),
            "{url}"
        );
    }
    let lines = drain(&mut bob).await;
    assert_eq!(count(&lines, "SEND-FILE-PROXY-READY", &t), 0, "{lines:?}");

    // The real grant reaches bob, once: a repeat is acknowledged and not stored again.
    let url = format!("https://relay.c.test/v1/transfers/{t}");
    for q in ["2", "3"] {
        let r = ask(&mut link, ready(q, &t, "relay.c.test", 443, &url)).await;
        assert_eq!(r.verb, "S2S-ACK", "{r:?}");
    }
    let lines = drain(&mut bob).await;
    assert_eq!(count(&lines, "SEND-FILE-PROXY-READY", &t), 1, "{lines:?}");
    let grant = lines
        .iter()
        .find(|l| l.starts_with("SEND-FILE-PROXY-READY "))
        .unwrap();
    assert_eq!(field(grant, "url"), Some(url));
}

#[tokio::test]
async fn subscriptions_to_made_up_domains_cannot_fill_the_queue_for_everyone() {
    let dns = TestDns::start().await;
    let b = Fed::start(&dns, "b.test", |c| {
        c.federation.queue_max_per_sender = 5;
        c.federation.max_peers = 8;
    })
    .await;
    let _c = FakePeer::start(&dns, "c.test").await;
    let mut mallory = b.user("mallory").await;
    let mut bob = b.user("bob").await;
    // Each contact on a domain that does not exist queues a subscription there for good.
    for i in 0..12 {
        mallory
            .send(&format!("CONTACTS-ADD id=u@nowhere{i}.test"))
            .await;
        mallory
            .expect_skip_any(&["CONTACTS-ADD-OK", "CONTACTS-ADD-FAILED"])
            .await;
    }
    mallory.sync().await;
    // Bob still reaches a new domain.
    send(&mut bob, "eve@c.test", "hello").await;
}

#[tokio::test]
async fn a_blocked_remote_watcher_is_told_the_presence_is_hidden() {
    let dns = TestDns::start().await;
    let b = Fed::start(&dns, "b.test", |_| {}).await;
    let mut c = FakePeer::start(&dns, "c.test").await;
    let mut bob = b.user("bob").await;
    bob.send("CONTACTS-ADD id=eve@c.test").await;
    bob.expect_skip("CONTACTS-ADD-OK").await;
    let mut link = c.dial(b.s2s, "b.test").await;
    let sub = Packet::new("S2S-SUBSCRIBE")
        .with("qid", "1")
        .with("from", "eve@c.test")
        .with("to", "bob@b.test");
    assert_eq!(ask(&mut link, sub).await.verb, "S2S-ACK");
    let p = c.next_of("S2S-PRESENCE").await;
    assert_eq!(p.get("presence"), Some("online"));

    bob.send("BLOCK id=eve@c.test").await;
    bob.expect_skip("BLOCK-OK").await;
    let p = c.next_of("S2S-PRESENCE").await;
    assert_eq!(
        (p.get("to"), p.get("presence")),
        (Some("eve@c.test"), Some(""))
    );
    bob.send("UNBLOCK id=eve@c.test").await;
    bob.expect_skip("UNBLOCK-OK").await;
    let p = c.next_of("S2S-PRESENCE").await;
    assert_eq!(
        (p.get("to"), p.get("presence")),
        (Some("eve@c.test"), Some("online"))
    );
    link.close().await.unwrap();
}

#[tokio::test]
async fn a_peer_cannot_answer_an_offer_through_another_user() {
    let dns = TestDns::start().await;
    let b = Fed::start_with_relay(&dns, "b.test", |_| {}).await;
    let mut c = FakePeer::start(&dns, "c.test").await;
    b.register("carl").await;
    let mut bob = b.user("bob").await;
    bob.send(&format!(
        "SEND-FILE-PROXY to=eve@c.test filename=x.bin size=1000 sha256={}",
        "ab".repeat(32)
    ))
    .await;
    let pending = bob.expect_skip("SEND-FILE-PROXY-PENDING").await;
    let t = field(&pending, "transfer-id").unwrap();
    assert_eq!(
        c.next_of("S2S-FILE-OFFER").await.get("transfer-id"),
        Some(t.as_str())
    );
    let answer = |qid: &str, to: &str, a: &str| {
        Packet::new("S2S-FILE-ANSWER")
            .with("qid", qid)
            .with("transfer-id", t.clone())
            .with("from", "eve@c.test")
            .with("to", to)
            .with("answer", a)
    };
    let mut link = c.dial(b.s2s, "b.test").await;
    // Bob's offer answered as if it were carl's: refused, and bob's offer is untouched.
    let r = ask(&mut link, answer("1", "carl@b.test", "reject")).await;
    assert_eq!(
        (r.verb.as_str(), r.get("reason")),
        ("S2S-REFUSED", Some("unknown-transfer"))
    );
    // Eve's real answer still counts.
    assert_eq!(
        ask(&mut link, answer("2", "bob@b.test", "accept"))
            .await
            .verb,
        "S2S-ACK"
    );
    let ok = bob.expect_skip("SEND-FILE-PROXY-OK").await;
    assert_eq!(field(&ok, "transfer-id"), Some(t));
}

#[tokio::test]
async fn a_peers_last_seen_in_the_future_is_replaced_by_now() {
    let dns = TestDns::start().await;
    let b = Fed::start(&dns, "b.test", |_| {}).await;
    let c = FakePeer::start(&dns, "c.test").await;
    let mut bob = b.user("bob").await;
    bob.send("CONTACTS-ADD id=eve@c.test").await;
    bob.expect_skip("CONTACTS-ADD-OK").await;
    let mut link = c.dial(b.s2s, "b.test").await;
    let presence = |qid: &str, at: &str| {
        Packet::new("S2S-PRESENCE")
            .with("qid", qid)
            .with("from", "eve@c.test")
            .with("to", "bob@b.test")
            .with("presence", at)
    };
    let future = "2999-01-01T00:00:00.000Z";
    assert_eq!(ask(&mut link, presence("1", future)).await.verb, "S2S-ACK");
    let seen = bob.expect_skip("UPDATE-LAST-SEEN").await;
    let at = msim_shared::timestamp::parse(&field(&seen, "at").unwrap()).unwrap();
    assert!(at <= time::OffsetDateTime::now_utc(), "{seen}");
    // A time in the past is the peer's to say.
    let past = "2026-01-01T00:00:00.000Z";
    assert_eq!(ask(&mut link, presence("2", past)).await.verb, "S2S-ACK");
    let seen = bob.expect_skip("UPDATE-LAST-SEEN").await;
    assert_eq!(field(&seen, "at").as_deref(), Some(past));
}

#[tokio::test]
async fn a_remote_offer_lives_long_enough_that_it_cannot_recycle_the_offer_limits() {
    let dns = TestDns::start().await;
    let b = Fed::start(&dns, "b.test", |_| {}).await;
    let mut c = FakePeer::start(&dns, "c.test").await;
    let mut bob = b.user("bob").await;
    let mut link = c.dial(b.s2s, "b.test").await;
    // The peer asks for an offer that lapses in a second (and so frees its place at once).
    let t = tid();
    let soon = msim_shared::timestamp::format(
        time::OffsetDateTime::now_utc() + time::Duration::seconds(1),
    );
    let p = Packet::new("S2S-FILE-OFFER")
        .with("qid", "1")
        .with("transfer-id", t.clone())
        .with("from", "eve@c.test")
        .with("to", "bob@b.test")
        .with("filename", "x.bin")
        .with("size", "1000")
        .with("expires", soon);
    assert_eq!(ask(&mut link, p).await.verb, "S2S-ACK");
    let req = bob.expect_skip("SEND-FILE-PROXY-REQUEST").await;
    assert_eq!(field(&req, "transfer-id"), Some(t.clone()));
    // A minute later it is still open here: bob's answer goes to the peer.
    b.server.clock.advance(std::time::Duration::from_secs(60));
    bob.send(&format!("SEND-FILE-PROXY-ACCEPT transfer-id={t}"))
        .await;
    let a = c.next_of("S2S-FILE-ANSWER").await;
    assert_eq!(
        (a.get("transfer-id"), a.get("answer")),
        (Some(t.as_str()), Some("accept"))
    );
}

#[tokio::test]
async fn a_remote_offer_above_our_file_size_limit_is_closed_back_and_never_shown() {
    let dns = TestDns::start().await;
    let b = Fed::start(&dns, "b.test", |c| c.max_file_size = 5_000).await;
    let mut c = FakePeer::start(&dns, "c.test").await;
    let mut bob = b.user("bob").await;
    let mut link = c.dial(b.s2s, "b.test").await;
    let (big, fits) = (tid(), tid());
    let too_big = offer("1", "eve@c.test", &big).with("size", "5001");
    assert_eq!(ask(&mut link, too_big).await.verb, "S2S-ACK");
    let back = c.next_of("S2S-FILE-CLOSED").await;
    assert_eq!(
        (back.get("transfer-id"), back.get("reason")),
        (Some(big.as_str()), Some("file-too-large"))
    );
    let at_limit = offer("2", "eve@c.test", &fits).with("size", "5000");
    assert_eq!(ask(&mut link, at_limit).await.verb, "S2S-ACK");
    let lines = drain(&mut bob).await;
    assert_eq!(
        count(&lines, "SEND-FILE-PROXY-REQUEST", &big),
        0,
        "{lines:?}"
    );
    assert_eq!(
        count(&lines, "SEND-FILE-PROXY-REQUEST", &fits),
        1,
        "{lines:?}"
    );
}
