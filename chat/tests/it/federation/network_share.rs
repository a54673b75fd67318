//! Authenticated inbound links count per source network too (IPv4 /24, IPv6 /48), and when all
//! places are taken a newcomer takes the oldest link of the network, then of the address block
//! (IPv4 /16, IPv6 /32), holding the most (PROTOCOL.md §12.5). Attack M3: hundreds of cheap registrable domains (PSL private
//! suffixes), one link each, all from one address, held every place; the per-domain sharing
//! rule never fired (each held one), so an honest peer got `busy` and its messages waited.

use super::dns::TestDns;
use super::subscriptions_wire::{ask, next, FakePeer};
use super::{next_message, send, Fed};
use crate::common::field;
use msim_shared::Packet;
use std::net::IpAddr;

/// The attacker's address: another /24 than the honest server's 127.0.0.1.
const EVIL: [u8; 4] = [127, 0, 3, 1];

fn ping(n: &str) -> Packet {
    Packet::new("PING").with("ref", n)
}

#[tokio::test]
async fn many_domains_from_one_address_cannot_keep_a_peer_from_another_network_out() {
    let dns = TestDns::start().await;
    let b = Fed::start(&dns, "b.test", |c| {
        c.federation.max_authenticated = 3;
        c.federation.max_links_per_network = 0;
    })
    .await;
    let a = Fed::start(&dns, "a.test", |_| {}).await;
    let mut evil = Vec::new();
    for i in 0..4 {
        evil.push(FakePeer::start(&dns, &format!("evil{i}.test")).await);
    }

    // Three registrable domains, one link each, from one address: every place.
    let mut links = Vec::new();
    for (i, peer) in evil.iter().take(3).enumerate() {
        let mut l = peer.dial_from(IpAddr::from(EVIL), b.s2s, "b.test").await;
        assert_eq!(ask(&mut l, ping(&i.to_string())).await.verb, "PONG");
        links.push(l);
    }

    // a.test (another network) still gets in and its message is delivered.
    let mut alice = a.user("alice").await;
    let mut bob = b.user("bob").await;
    let id = send(&mut alice, "bob@b.test", "through").await;
    let m = next_message(&mut bob).await;
    assert_eq!(field(&m, "id").as_deref(), Some(id.as_str()));
    assert_eq!(field(&m, "from").as_deref(), Some("alice@a.test"));

    // The attacker's oldest link was told to come back later and closed.
    let r = next(&mut links[0]).await.expect("a notice");
    assert_eq!(
        (r.verb.as_str(), r.get("reason")),
        ("S2S-RETRY", Some("busy")),
        "{r:?}"
    );
    assert!(next(&mut links[0]).await.is_none());
    assert_eq!(ask(&mut links[1], ping("1b")).await.verb, "PONG");

    // Another cheap domain from the same address cannot take the place back.
    let mut again = evil[3].dial_from(IpAddr::from(EVIL), b.s2s, "b.test").await;
    let r = next(&mut again).await.expect("a refusal");
    assert_eq!(
        (r.verb.as_str(), r.get("reason")),
        ("S2S-RETRY", Some("busy")),
        "{r:?}"
    );

    // a.test's link stays: a second message arrives too.
    let id2 = send(&mut alice, "bob@b.test", "again").await;
    let m = next_message(&mut bob).await;
    assert_eq!(field(&m, "id").as_deref(), Some(id2.as_str()));
}

#[tokio::test]
async fn the_domains_of_one_network_share_its_links() {
    let dns = TestDns::start().await;
    let b = Fed::start(&dns, "b.test", |c| c.federation.max_links_per_network = 2).await;
    let a = Fed::start(&dns, "a.test", |_| {}).await;
    let mut evil = Vec::new();
    for i in 0..3 {
        evil.push(FakePeer::start(&dns, &format!("cheap{i}.test")).await);
    }

    // Two domains from two addresses of one /24 take that network's places...
    let mut held = Vec::new();
    for (i, peer) in evil.iter().take(2).enumerate() {
        let from = IpAddr::from([127, 0, 3, 1 + i as u8]);
        let mut l = peer.dial_from(from, b.s2s, "b.test").await;
        assert_eq!(ask(&mut l, ping(&i.to_string())).await.verb, "PONG");
        held.push(l);
    }
    // ...and a third domain from a third address of it is refused.
    let mut third = evil[2]
        .dial_from(IpAddr::from([127, 0, 3, 9]), b.s2s, "b.test")
        .await;
    let r = next(&mut third).await.expect("a refusal");
    assert_eq!(
        (r.verb.as_str(), r.get("reason")),
        ("S2S-RETRY", Some("too-many-links")),
        "{r:?}"
    );
    assert!(next(&mut third).await.is_none());

    // Other networks are unaffected, and the two held links still work.
    let mut alice = a.user("alice").await;
    let mut bob = b.user("bob").await;
    let id = send(&mut alice, "bob@b.test", "hello").await;
    let m = next_message(&mut bob).await;
    assert_eq!(field(&m, "id").as_deref(), Some(id.as_str()));
    for (i, l) in held.iter_mut().enumerate() {
        assert_eq!(ask(l, ping(&format!("{i}b"))).await.verb, "PONG");
    }
}

/// The review's variant: each cheap domain dials from its own /24 of one /16 (IPv6: its own
/// /48 of one /32, see `federation::links` unit tests; loopback offers only ::1). Every network
/// and every domain held one link, so neither sharing rule fired and the honest peer got `busy`.
#[tokio::test]
async fn many_domains_from_the_networks_of_one_block_cannot_keep_a_peer_out() {
    let dns = TestDns::start().await;
    let b = Fed::start(&dns, "b.test", |c| {
        c.federation.max_authenticated = 3;
    })
    .await;
    let a = Fed::start(&dns, "a.test", |_| {}).await;
    let mut evil = Vec::new();
    for i in 0..4 {
        evil.push(FakePeer::start(&dns, &format!("block{i}.test")).await);
    }
    // 127.1.0.0/16: another block than the honest server's 127.0.0.1.
    let from = |i: u8| IpAddr::from([127, 1, 10 + i, 1]);
    let mut links = Vec::new();
    for (i, peer) in evil.iter().take(3).enumerate() {
        let mut l = peer.dial_from(from(i as u8), b.s2s, "b.test").await;
        assert_eq!(ask(&mut l, ping(&i.to_string())).await.verb, "PONG");
        links.push(l);
    }

    let mut alice = a.user("alice").await;
    let mut bob = b.user("bob").await;
    let id = send(&mut alice, "bob@b.test", "through").await;
    let m = next_message(&mut bob).await;
    assert_eq!(field(&m, "id").as_deref(), Some(id.as_str()));

    let r = next(&mut links[0]).await.expect("a notice");
    assert_eq!(
        (r.verb.as_str(), r.get("reason")),
        ("S2S-RETRY", Some("busy")),
        "{r:?}"
    );
    assert!(next(&mut links[0]).await.is_none());
    assert_eq!(ask(&mut links[1], ping("1b")).await.verb, "PONG");

    // A fourth /24 of the block cannot take the place back.
    let mut again = evil[3].dial_from(from(3), b.s2s, "b.test").await;
    let r = next(&mut again).await.expect("a refusal");
    assert_eq!(
        (r.verb.as_str(), r.get("reason")),
        ("S2S-RETRY", Some("busy")),
        "{r:?}"
    );
    let id2 = send(&mut alice, "bob@b.test", "again").await;
    let m = next_message(&mut bob).await;
    assert_eq!(field(&m, "id").as_deref(), Some(id2.as_str()));
}
