//! The second review of the last federation merge (issue 14): whose budget the outbound
//! queue charges, over real sockets. A hand-driven peer `c.test` (see `subscriptions_wire`)
//! subscribes to users of b.test but cannot be reached, so what is queued for it stays.

use super::dns::TestDns;
use super::last_findings::{dead_port, subscribe_many};
use super::subscriptions_wire::{next, FakePeer};
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
