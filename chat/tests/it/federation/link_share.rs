//! When every inbound link place is taken, a newcomer takes the oldest link of the domain
//! holding the most (PROTOCOL.md §12.5), so a few dozen cheap registrable domains at their own
//! caps cannot keep every other peer out (attack M4: before, everyone else got `busy`).

use super::dns::TestDns;
use super::subscriptions_wire::{ask, next, FakePeer};
use super::Fed;
use msim_shared::Packet;

#[tokio::test]
async fn a_newcomer_takes_a_place_from_the_domain_holding_the_most() {
    let dns = TestDns::start().await;
    let b = Fed::start(&dns, "b.test", |c| {
        c.federation.max_links_per_domain = 2;
        c.federation.max_authenticated = 2;
    })
    .await;
    let evil0 = FakePeer::start(&dns, "a0.evil.test").await;
    let evil1 = FakePeer::start(&dns, "a1.evil.test").await;
    let evil2 = FakePeer::start(&dns, "a2.evil.test").await;
    let c = FakePeer::start(&dns, "c.test").await;
    let ping = |n: &str| Packet::new("PING").with("ref", n);

    // *.evil.test holds every place.
    let mut l0 = evil0.dial(b.s2s, "b.test").await;
    assert_eq!(ask(&mut l0, ping("0")).await.verb, "PONG");
    let mut l1 = evil1.dial(b.s2s, "b.test").await;
    assert_eq!(ask(&mut l1, ping("1")).await.verb, "PONG");

    // c.test still gets in: evil's oldest link is told to come back later and closed.
    let mut lc = c.dial(b.s2s, "b.test").await;
    assert_eq!(ask(&mut lc, ping("c")).await.verb, "PONG");
    let r = next(&mut l0).await.expect("a notice");
    assert_eq!(
        (r.verb.as_str(), r.get("reason")),
        ("S2S-RETRY", Some("busy")),
        "{r:?}"
    );
    assert!(next(&mut l0).await.is_none());
    assert_eq!(ask(&mut l1, ping("2")).await.verb, "PONG");

    // Shared out evenly now (one each): evil cannot take it back.
    let mut l2 = evil2.dial(b.s2s, "b.test").await;
    let r = next(&mut l2).await.expect("a refusal");
    assert_eq!(
        (r.verb.as_str(), r.get("reason")),
        ("S2S-RETRY", Some("busy")),
        "{r:?}"
    );
    assert_eq!(ask(&mut lc, ping("c2")).await.verb, "PONG");
}
