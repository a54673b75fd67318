//! The second review of the last federation merge (issue 14): whose budget the outbound
//! queue charges, over real sockets. A hand-driven peer `c.test` (see `subscriptions_wire`)
//! subscribes to users of b.test but cannot be reached, so what is queued for it stays.

use super::dns::TestDns;
use super::last_findings::{dead_port, subscribe_many};
use super::subscriptions_wire::{ask, next, FakePeer};
use super::{send, Fed};
use crate::common::{field, Client};
use futures::SinkExt;
use msim_shared::Packet;

/// The answer to a `MESSAGE` just sent: `None` when sent, else the failure's reason.
async fn refusal(c: &mut Client, to: &str) -> Option<String> {
    c.send(&format!("MESSAGE to={to} text=hi")).await;
    let l = c
        .expect_skip_any(&["MESSAGE-SENT", "MESSAGE-SEND-FAILED"])
        .await;
    if l.starts_with("MESSAGE-SENT ") {
        None
    } else {
        Some(field(&l, "reason").unwrap_or_else(|| l.clone()))
    }
}

#[tokio::test]
async fn pushes_to_remote_watchers_are_charged_to_their_peer_not_the_subject() {
    let dns = TestDns::start().await;
    // Three queued items per budget.
    let b = Fed::start(&dns, "b.test", |c| c.federation.queue_max_per_sender = 3).await;
    let c = FakePeer::start(&dns, "c.test").await;
    dns.set_srv("_msim-s2s._tcp.c.test", "s2s.c.test", dead_port());
    let mut bob = b.user("bob").await;
    // Five watchers on c.test subscribe to bob (no approval needed), then bob changes his
    // note once: one push per watcher, none of which can leave.
    subscribe_many(&c, &b, "b.test", "bob@b.test", 5).await;
    bob.send("PROFILE-UPDATE note=changed").await;
    bob.expect_skip("PROFILE-UPDATE-OK").await;
    // Before: the pushes were charged to bob, his budget was full and his own messages
    // failed with recipient-queue-full for the queue's lifetime (days).
    assert_eq!(refusal(&mut bob, "dan@d.test").await, None);
    for i in 0..2 {
        send(&mut bob, &format!("dan{i}@d.test"), "more").await;
    }
    // His own budget still holds: the fourth item is refused.
    assert_eq!(
        refusal(&mut bob, "dan@d.test").await.as_deref(),
        Some("recipient-queue-full")
    );
}

#[tokio::test]
async fn one_sender_may_queue_for_a_bounded_number_of_peers() {
    let dns = TestDns::start().await;
    let a = Fed::start(&dns, "a.test", |c| {
        c.federation.queue_max_peers_per_sender = 2;
    })
    .await;
    let mut mallory = a.user("mallory").await;
    // Two made-up domains fit, the third does not (before: up to the server-wide peer cap,
    // so one free account could take every peer place).
    assert_eq!(refusal(&mut mallory, "x@nowhere0.test").await, None);
    assert_eq!(refusal(&mut mallory, "x@nowhere1.test").await, None);
    assert_eq!(
        refusal(&mut mallory, "x@nowhere2.test").await.as_deref(),
        Some("recipient-queue-full")
    );
    // More to a domain already queued for is fine; so is another user's message to the
    // domain mallory could not add.
    assert_eq!(refusal(&mut mallory, "y@nowhere0.test").await, None);
    let mut carol = a.user("carol").await;
    assert_eq!(refusal(&mut carol, "x@nowhere2.test").await, None);
}

#[tokio::test]
async fn a_flood_over_the_global_rate_does_not_shut_out_a_peer_within_its_share() {
    let dns = TestDns::start().await;
    // All peers together: 1 packet/s after a burst of 20 (each domain alone: the default).
    let b = Fed::start(&dns, "b.test", |c| {
        c.federation.total_rate = 1;
        c.federation.total_burst = 20;
    })
    .await;
    let flooder = FakePeer::start(&dns, "c.test").await;
    let other = FakePeer::start(&dns, "d.test").await;
    let mut flood = flooder.dial(b.s2s, "b.test").await;
    for i in 0..40 {
        let ping = Packet::new("PING").with("ref", i.to_string());
        flood.feed(ping).await.unwrap();
    }
    flood.flush().await.unwrap();
    // c.test takes the whole global burst.
    for i in 0..20 {
        let p = next(&mut flood).await.expect("a pong");
        assert_eq!(
            (p.verb.as_str(), p.get("ref")),
            ("PONG", Some(i.to_string().as_str()))
        );
    }
    // d.test, sending within its fair share, is served (before: S2S-RETRY and a closed link,
    // for every peer while the flood lasted).
    let mut link = other.dial(b.s2s, "b.test").await;
    link.send(Packet::new("PING").with("ref", "d"))
        .await
        .unwrap();
    let p = next(&mut link).await.expect("an answer");
    assert_eq!(
        (p.verb.as_str(), p.get("ref")),
        ("PONG", Some("d")),
        "{p:?}"
    );
    // The flooder is slowed down, not cut off: its next packet is answered later.
    let p = next(&mut flood).await.expect("an answer");
    assert_eq!(
        (p.verb.as_str(), p.get("ref")),
        ("PONG", Some("20")),
        "{p:?}"
    );
}

/// Replies to peers take no room from local senders, but every peer with queued items gets a
/// dialer: peers with queued replies are bounded too (by the same `max_peers`, counted apart),
/// else each name of a wildcard zone that sends one request would start one (review M2).
#[tokio::test]
async fn peers_with_queued_replies_are_bounded_too() {
    let dns = TestDns::start().await;
    let b = Fed::start(&dns, "b.test", |c| c.federation.max_peers = 2).await;
    let names = ["c1.test", "c2.test", "c3.test"];
    let mut peers = Vec::new();
    for name in names {
        let p = FakePeer::start(&dns, name).await;
        dns.set_srv(
            &format!("_msim-s2s._tcp.{name}"),
            &format!("s2s.{name}"),
            dead_port(),
        );
        peers.push(p);
    }
    let mut bob = b.user("bob").await;
    // Each peer subscribes to bob: the state of the moment is queued back to it, a reply.
    for (p, name) in peers.iter().zip(names) {
        let mut link = p.dial(b.s2s, "b.test").await;
        let sub = Packet::new("S2S-SUBSCRIBE")
            .with("qid", "1")
            .with("from", format!("w@{name}"))
            .with("to", "bob@b.test");
        assert_eq!(ask(&mut link, sub).await.verb, "S2S-ACK");
    }
    // The third peer's reply found no place (before: it was queued, with its own dialer);
    // the first one's was queued. Each queue is ordered: what was queued for a peer arrives
    // before bob's marker message.
    for i in [2, 0] {
        let name = names[i];
        dns.set_srv(
            &format!("_msim-s2s._tcp.{name}"),
            &format!("s2s.{name}"),
            peers[i].port,
        );
        let id = send(&mut bob, &format!("eve@{name}"), "marker").await;
        let before = peers[i].until_message(&id).await;
        let watcher = format!("w@{name}");
        let states = before
            .iter()
            .filter(|p| p.get("to") == Some(watcher.as_str()))
            .count();
        assert_eq!(states > 0, i == 0, "{name}: {before:?}");
    }
}
