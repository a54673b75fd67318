//! The second review of the last federation merge (issue 14): whose budget the outbound
//! queue charges, over real sockets. A hand-driven peer `c.test` (see `subscriptions_wire`)
//! subscribes to users of b.test but cannot be reached, so what is queued for it stays.

use super::dns::TestDns;
use super::last_findings::{dead_port, subscribe_many};
use super::subscriptions_wire::FakePeer;
use super::{send, Fed};
use crate::common::{field, Client};

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
