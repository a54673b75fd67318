//! The last federation review findings of issue 14, each as the attack or failure a peer or a
//! local user meets, over real sockets: a hand-driven peer `c.test` (see `subscriptions_wire`)
//! talks to b.test, whose users are bob and friends.

use super::dns::TestDns;
use super::subscriptions_wire::{ask, FakePeer};
use super::Fed;
use crate::common::{field, Client};
use msim_shared::Packet;

/// The next line starting with `verb` whose `transfer-id` is `tid`.
async fn expect_for(c: &mut Client, verb: &str, tid: &str) -> String {
    loop {
        let l = c.expect_skip(verb).await;
        if field(&l, "transfer-id").as_deref() == Some(tid) {
            return l;
        }
    }
}

fn in_an_hour() -> String {
    msim_shared::timestamp::format(time::OffsetDateTime::now_utc() + time::Duration::hours(1))
}

#[tokio::test]
async fn a_peer_refusing_our_file_offer_or_answer_is_told_to_the_user() {
    let dns = TestDns::start().await;
    let b = Fed::start_with_relay(&dns, "b.test", |_| {}).await;
    let mut c =
        FakePeer::start_refusing(&dns, "c.test", &["S2S-FILE-OFFER", "S2S-FILE-ANSWER"]).await;
    let mut bob = b.user("bob").await;

    // Bob offers eve@c.test a file; her server refuses the offer: bob learns it, pushed and
    // again at his next login (before: the offer stayed pending until it expired a day later).
    bob.send("SEND-FILE-PROXY to=eve@c.test filename=a.bin size=10")
        .await;
    let pending = bob.expect_skip("SEND-FILE-PROXY-PENDING").await;
    let t1 = field(&pending, "transfer-id").unwrap();
    assert_eq!(
        c.next_of("S2S-FILE-OFFER").await.get("transfer-id"),
        Some(t1.as_str())
    );
    let r = expect_for(&mut bob, "SEND-FILE-PROXY-REJECTED", &t1).await;
    assert_eq!(field(&r, "reason").as_deref(), Some("peer-refused"), "{r}");
    drop(bob);
    let mut bob = b.session("bob").await;
    let r = expect_for(&mut bob, "SEND-FILE-PROXY-REJECTED", &t1).await;
    assert_eq!(field(&r, "reason").as_deref(), Some("peer-refused"), "{r}");

    // Eve offers bob a file; bob accepts; her server refuses the answer: bob learns that no
    // download grant will come.
    let mut link = c.dial(b.s2s, "b.test").await;
    let t2 = uuid::Uuid::new_v4().to_string();
    let offer = Packet::new("S2S-FILE-OFFER")
        .with("qid", "1")
        .with("transfer-id", t2.clone())
        .with("from", "eve@c.test")
        .with("to", "bob@b.test")
        .with("filename", "x.bin")
        .with("size", "1000")
        .with("expires", in_an_hour());
    assert_eq!(ask(&mut link, offer).await.verb, "S2S-ACK");
    expect_for(&mut bob, "SEND-FILE-PROXY-REQUEST", &t2).await;
    bob.send(&format!("SEND-FILE-PROXY-ACCEPT transfer-id={t2}"))
        .await;
    let answer = c.next_of("S2S-FILE-ANSWER").await;
    assert_eq!(answer.get("answer"), Some("accept"));
    let r = expect_for(&mut bob, "SEND-FILE-PROXY-REJECTED", &t2).await;
    assert_eq!(field(&r, "reason").as_deref(), Some("peer-refused"), "{r}");
    // Closed: a late grant for it is refused.
    let ready = Packet::new("S2S-FILE-READY")
        .with("qid", "2")
        .with("transfer-id", t2.clone())
        .with("from", "eve@c.test")
        .with("to", "bob@b.test")
        .with("connect", "relay.c.test")
        .with("port", "443")
        .with("url", format!("https://relay.c.test/v1/transfers/{t2}"))
        .with("token", "t0ken")
        .with("expires", in_an_hour());
    let r = ask(&mut link, ready).await;
    assert_eq!(
        (r.verb.as_str(), r.get("reason")),
        ("S2S-REFUSED", Some("unknown-transfer"))
    );
}

/// A port nothing listens on.
pub(super) fn dead_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `n` subscriptions from watchers on `c` to `subject`, each acknowledged: each queues the
/// state of the moment back to `c` (a reply, charged to `s2s:c.test`).
pub(super) async fn subscribe_many(
    c: &FakePeer,
    server: &Fed,
    domain: &str,
    subject: &str,
    n: usize,
) {
    let mut link = c.dial(server.s2s, domain).await;
    for i in 0..n {
        let sub = Packet::new("S2S-SUBSCRIBE")
            .with("qid", i.to_string())
            .with("from", format!("w{i}@c.test"))
            .with("to", subject);
        assert_eq!(ask(&mut link, sub).await.verb, "S2S-ACK");
    }
}

#[tokio::test]
async fn replies_to_a_peer_take_no_room_from_local_senders() {
    let dns = TestDns::start().await;
    // Tiny bounds: 3 items per peer, 1 peer domain with queued items.
    let b = Fed::start(&dns, "b.test", |c| {
        c.federation.queue_max_per_peer = 3;
        c.federation.max_peers = 1;
    })
    .await;
    let b2 = Fed::start(&dns, "b2.test", |c| {
        c.federation.max_peers = 1;
    })
    .await;
    let c = FakePeer::start(&dns, "c.test").await;
    // c.test can dial in but cannot be reached: what is queued for it stays queued.
    dns.set_srv("_msim-s2s._tcp.c.test", "s2s.c.test", dead_port());
    let mut bob = b.user("bob").await;
    let mut carol = b2.user("carol").await;

    // c.test's requests fill its queue with replies beyond the per-peer cap...
    subscribe_many(&c, &b, "b.test", "bob@b.test", 5).await;
    // ... and bob still sends to a user of c.test (before: recipient-queue-full).
    super::send(&mut bob, "eve@c.test", "hello").await;

    // On b2.test (one peer domain with queued items at most), replies to c.test do not take
    // that one place: carol reaches d.test (before: recipient-queue-full).
    subscribe_many(&c, &b2, "b2.test", "carol@b2.test", 1).await;
    super::send(&mut carol, "dan@d.test", "hello").await;
    // The place is now d.test's: a message to yet another domain is refused as before.
    carol.send("MESSAGE to=x@e.test text=hi").await;
    let l = carol
        .expect_skip_any(&["MESSAGE-SENT", "MESSAGE-SEND-FAILED"])
        .await;
    assert_eq!(
        field(&l, "reason").as_deref(),
        Some("recipient-queue-full"),
        "{l}"
    );
}

/// What `packets` carry about `subject` for `watcher`: (verb, note or presence).
fn about(packets: &[Packet], subject: &str, watcher: &str) -> Vec<(String, String)> {
    packets
        .iter()
        .filter(|p| p.get("from") == Some(subject) && p.get("to") == Some(watcher))
        .filter_map(|p| match p.verb.as_str() {
            "S2S-PROFILE-CHANGED" => Some((p.verb.clone(), p.get("note")?.to_owned())),
            "S2S-PRESENCE" => Some((p.verb.clone(), p.get("presence")?.to_owned())),
            _ => None,
        })
        .collect()
}

fn subscribe(qid: &str, watcher: &str, subject: &str, state: Option<&str>) -> Packet {
    Packet::new("S2S-SUBSCRIBE")
        .with("qid", qid)
        .with("from", watcher)
        .with("to", subject)
        .with_opt("state", state.map(str::to_owned))
}

#[tokio::test]
async fn presence_and_profile_changes_queued_for_a_watcher_are_coalesced() {
    let dns = TestDns::start().await;
    let b = Fed::start(&dns, "b.test", |_| {}).await;
    let mut c = FakePeer::start(&dns, "c.test").await;
    // c.test dials in but cannot be reached for now: b.test's items for it stay queued.
    dns.set_srv("_msim-s2s._tcp.c.test", "s2s.c.test", dead_port());
    let mut bob = b.user("bob").await;
    bob.send("CONTACTS-ADD id=eve@c.test").await;
    bob.expect_skip("CONTACTS-ADD-OK").await;
    let mut link = c.dial(b.s2s, "b.test").await;
    let sub = subscribe("1", "eve@c.test", "bob@b.test", None);
    assert_eq!(ask(&mut link, sub).await.verb, "S2S-ACK");

    // Bob edits his note 30 times and comes and goes: one item per watcher and kind stays
    // queued, the latest (before: one per change, 30 profile items and more).
    for i in 0..30 {
        bob.send(&format!("PROFILE-UPDATE note=n{i}")).await;
        bob.expect_skip("PROFILE-UPDATE-OK").await;
    }
    for _ in 0..3 {
        drop(bob);
        bob = b.session("bob").await;
    }
    let id = super::send(&mut bob, "eve@c.test", "marker").await;
    dns.set_srv("_msim-s2s._tcp.c.test", "s2s.c.test", c.port);
    let before = c.until_message(&id).await;
    let seen = about(&before, "bob@b.test", "eve@c.test");
    let profiles: Vec<_> = seen
        .iter()
        .filter(|(v, _)| v == "S2S-PROFILE-CHANGED")
        .collect();
    assert_eq!(profiles.len(), 1, "{seen:?}");
    assert_eq!(profiles[0].1, "n29");
    let presences: Vec<_> = seen.iter().filter(|(v, _)| v == "S2S-PRESENCE").collect();
    assert_eq!(presences.len(), 1, "{seen:?}");
    assert_eq!(presences[0].1, "online");
    // And the full name comes with a note change, so the one item says everything.
    let p = before
        .iter()
        .find(|p| p.verb == "S2S-PROFILE-CHANGED")
        .unwrap();
    assert_eq!(p.get("name"), Some("bob"));
}

/// A subscription's lifetime in the lifetime test (the server's clock is advanced by hand).
const LIFETIME: std::time::Duration = std::time::Duration::from_secs(3600);

#[tokio::test]
async fn subscriptions_lapse_unless_renewed_and_a_live_renewal_sends_no_state() {
    let dns = TestDns::start().await;
    let b = Fed::start(&dns, "b.test", |c| {
        c.federation.subscription_lifetime = LIFETIME;
        c.purge_interval = std::time::Duration::from_millis(100);
    })
    .await;
    let mut c = FakePeer::start(&dns, "c.test").await;
    let mut bob = b.user("bob").await;
    bob.send("CONTACTS-ADD id=eve@c.test").await;
    bob.expect_skip("CONTACTS-ADD-OK").await;
    let mut link = c.dial(b.s2s, "b.test").await;

    // A new subscription gets the state of the moment.
    let r = ask(&mut link, subscribe("1", "eve@c.test", "bob@b.test", None)).await;
    assert_eq!(r.verb, "S2S-ACK");
    let p = c.next_of("S2S-PRESENCE").await;
    assert_eq!(p.get("to"), Some("eve@c.test"));

    // A renewal of the live subscription with state=changed: no state again (before: the
    // full state at every renewal); changes still come.
    let r = ask(
        &mut link,
        subscribe("2", "eve@c.test", "bob@b.test", Some("changed")),
    )
    .await;
    assert_eq!(r.verb, "S2S-ACK");
    let id = super::send(&mut bob, "eve@c.test", "m1").await;
    let before = c.until_message(&id).await;
    assert_eq!(about(&before, "bob@b.test", "eve@c.test"), vec![]);
    bob.send("PROFILE-UPDATE note=changed").await;
    bob.expect_skip("PROFILE-UPDATE-OK").await;
    let id = super::send(&mut bob, "eve@c.test", "m2").await;
    let before = c.until_message(&id).await;
    assert_eq!(
        about(&before, "bob@b.test", "eve@c.test"),
        vec![("S2S-PROFILE-CHANGED".to_owned(), "changed".to_owned())]
    );
    // A watcher that asks (no `state=`: it keeps no copy) gets it.
    let r = ask(&mut link, subscribe("3", "eve@c.test", "bob@b.test", None)).await;
    assert_eq!(r.verb, "S2S-ACK");
    let id = super::send(&mut bob, "eve@c.test", "m3").await;
    let before = c.until_message(&id).await;
    assert_eq!(about(&before, "bob@b.test", "eve@c.test").len(), 2);

    // b.test keeps its own subscription to eve alive on its own while bob stays online:
    // every quarter of the lifetime, asking for no state.
    b.server.clock.advance(LIFETIME / 4);
    loop {
        let keep = c.next_of("S2S-SUBSCRIBE").await;
        if keep.get("from") == Some("bob@b.test") && keep.get("state") == Some("changed") {
            break;
        }
    }

    // Not renewed for a lifetime: eve hears nothing more of bob (before: forever).
    b.server.clock.advance(LIFETIME);
    bob.send("PROFILE-UPDATE note=late").await;
    bob.expect_skip("PROFILE-UPDATE-OK").await;
    let id = super::send(&mut bob, "eve@c.test", "late").await;
    assert_eq!(
        about(&c.until_message(&id).await, "bob@b.test", "eve@c.test"),
        vec![]
    );
    // Subscribing again after the lapse is a new subscription: the state comes, even with
    // state=changed.
    let r = ask(
        &mut link,
        subscribe("4", "eve@c.test", "bob@b.test", Some("changed")),
    )
    .await;
    assert_eq!(r.verb, "S2S-ACK");
    let p = c.next_of("S2S-PROFILE-CHANGED").await;
    assert_eq!(p.get("to"), Some("eve@c.test"));
}

#[tokio::test]
async fn the_names_of_one_zone_share_one_peers_limits() {
    let dns = TestDns::start().await;
    let b = Fed::start(&dns, "b.test", |c| {
        c.federation.max_links_per_domain = 2;
        c.federation.peer_rate = 1;
        c.federation.peer_burst = 4;
    })
    .await;
    // One zone with a wildcard: any number of names, each with a key of its own.
    let mut evil = Vec::new();
    for i in 0..3 {
        evil.push(FakePeer::start(&dns, &format!("a{i}.evil.test")).await);
    }
    let c = FakePeer::start(&dns, "c.test").await;

    // Two links for all of *.evil.test; the third name is told to come back later and closed
    // (before: a link per name, up to the listener's 1,000).
    let mut l0 = evil[0].dial(b.s2s, "b.test").await;
    let mut l1 = evil[1].dial(b.s2s, "b.test").await;
    let mut l2 = evil[2].dial(b.s2s, "b.test").await;
    let r = super::subscriptions_wire::next(&mut l2)
        .await
        .expect("a refusal");
    assert_eq!(
        (r.verb.as_str(), r.get("reason")),
        ("S2S-RETRY", Some("too-many-links")),
        "{r:?}"
    );
    assert!(r.get("retry-after").is_some());
    assert!(super::subscriptions_wire::next(&mut l2).await.is_none());

    // One bucket for the zone: 4 packets in a burst for both names together (before: 4 each).
    let ping = |n: &str| Packet::new("PING").with("ref", n);
    for n in ["1", "2"] {
        assert_eq!(ask(&mut l0, ping(n)).await.verb, "PONG");
        assert_eq!(ask(&mut l1, ping(n)).await.verb, "PONG");
    }
    let r = ask(&mut l1, ping("3")).await;
    assert_eq!(r.verb, "S2S-RETRY", "{r:?}");

    // Another domain is not affected.
    let mut lc = c.dial(b.s2s, "b.test").await;
    for n in ["1", "2", "3", "4"] {
        assert_eq!(ask(&mut lc, ping(n)).await.verb, "PONG");
    }
}
