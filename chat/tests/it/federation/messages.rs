//! Messages, receipts and typing between two federated servers; offline recipients, a peer
//! that is down for a while, policy refusals.

use super::dns::TestDns;
use super::{next_message, send, Fed};
use crate::common::field;
use hickory_proto::rr::RecordType;
use msim_chat::federation::Mode;

#[tokio::test]
async fn messages_and_receipts_cross_servers_both_ways() {
    let dns = TestDns::start().await;
    let a = Fed::start(&dns, "a.test", |_| {}).await;
    let b = Fed::start(&dns, "b.test", |_| {}).await;
    let mut alice = a.server.client().await;
    alice
        .send("REGISTER login=alice password=correct-horse")
        .await;
    alice.expect("REGISTER-OK").await;
    let ok = alice
        .expect_login("alice", "correct-horse", None, "CONNECT-OK")
        .await;
    assert_eq!(field(&ok, "federation").as_deref(), Some("true"));
    let mut bob = b.user("bob").await;

    let id = send(&mut alice, "bob@B.test", "hi%20bob").await;
    let m = next_message(&mut bob).await;
    assert_eq!(field(&m, "id").as_deref(), Some(id.as_str()));
    assert_eq!(field(&m, "from").as_deref(), Some("alice@a.test"));
    assert_eq!(field(&m, "to").as_deref(), Some("bob@b.test"));
    assert_eq!(field(&m, "text").as_deref(), Some("hi bob"));

    bob.send(&format!("MESSAGE-READ id={id}")).await;
    let r = alice.expect_skip("MESSAGE-READ").await;
    assert_eq!(field(&r, "id").as_deref(), Some(id.as_str()));
    assert_eq!(field(&r, "by").as_deref(), Some("bob@b.test"));

    // And back.
    let id2 = send(&mut bob, "alice@a.test", "hello%20alice").await;
    let m = next_message(&mut alice).await;
    assert_eq!(field(&m, "id").as_deref(), Some(id2.as_str()));
    assert_eq!(field(&m, "from").as_deref(), Some("bob@b.test"));
    alice.send(&format!("MESSAGE-READ id={id2}")).await;
    let r = bob.expect_skip("MESSAGE-READ").await;
    assert_eq!(field(&r, "by").as_deref(), Some("alice@a.test"));

    // Typing is live only.
    alice.send("TYPING-STARTED to=bob@b.test").await;
    let t = bob.expect_skip("TYPING-STARTED").await;
    assert_eq!(field(&t, "from").as_deref(), Some("alice@a.test"));
}

#[tokio::test]
async fn an_offline_remote_recipient_gets_the_message_at_login() {
    let dns = TestDns::start().await;
    let a = Fed::start(&dns, "a.test", |_| {}).await;
    let b = Fed::start(&dns, "b.test", |_| {}).await;
    let mut alice = a.user("alice").await;
    b.register("bob").await;
    let id = send(&mut alice, "bob@b.test", "while%20you%20were%20out").await;
    // Wait until B has it stored: its pending message at login proves it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let mut bob = b.session("bob").await;
        bob.send("PING ref=end").await;
        let mut got = None;
        loop {
            let l = bob.line().await;
            if l.starts_with("PONG") {
                break;
            }
            if l.starts_with("MESSAGE ") {
                got = Some(l);
            }
        }
        if let Some(m) = got {
            assert_eq!(field(&m, "id").as_deref(), Some(id.as_str()));
            assert_eq!(field(&m, "from").as_deref(), Some("alice@a.test"));
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never delivered");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_peer_down_for_a_while_gets_everything_in_order_once() {
    let dns = TestDns::start().await;
    let a = Fed::start(&dns, "a.test", |_| {}).await;
    let b = Fed::start(&dns, "b.test", |_| {}).await;
    let mut alice = a.user("alice").await;
    b.register("bob").await;
    // B goes down; alice keeps sending: every message is accepted (queued at A).
    let (dir, port) = b.stop().await;
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(send(&mut alice, "bob@b.test", &format!("m{i}")).await);
    }
    // B comes back on the same address; A's queue drains in order.
    let b = Fed::start_in(&dns, "b.test", dir, port, |_| {}).await;
    let mut bob = b.session("bob").await;
    let mut got = Vec::new();
    while got.len() < ids.len() {
        let m = next_message(&mut bob).await;
        let id = field(&m, "id").unwrap();
        assert!(!got.contains(&id), "duplicate {id}");
        got.push(id);
    }
    assert_eq!(got, ids, "in order");
    // Nothing more arrives after a round trip through both servers.
    let last = send(&mut alice, "bob@b.test", "last").await;
    let m = next_message(&mut bob).await;
    assert_eq!(field(&m, "id"), Some(last));
}

#[tokio::test]
async fn unknown_remote_recipient_is_reported_to_the_sender() {
    let dns = TestDns::start().await;
    let a = Fed::start(&dns, "a.test", |_| {}).await;
    let _b = Fed::start(&dns, "b.test", |_| {}).await;
    let mut alice = a.user("alice").await;
    let id = send(&mut alice, "nobody@b.test", "hello").await;
    let f = alice.expect_skip("MESSAGE-SEND-FAILED").await;
    assert_eq!(field(&f, "id"), Some(id));
    assert_eq!(field(&f, "reason").as_deref(), Some("unknown-recipient"));
}

#[tokio::test]
async fn without_srv_the_domain_itself_is_dialed_and_dns_failures_are_retried() {
    let dns = TestDns::start().await;
    let b = Fed::start(&dns, "b.test", |_| {}).await;
    // No SRV for b.test: A falls back to b.test's own A record on the default port.
    dns.remove("_msim-s2s._tcp.b.test", RecordType::SRV);
    dns.set_a("b.test", std::net::Ipv4Addr::LOCALHOST);
    let port = b.s2s.port();
    let a = Fed::start(&dns, "a.test", move |c| c.federation.default_port = port).await;
    let mut alice = a.user("alice").await;
    let mut bob = b.user("bob").await;
    let id = send(&mut alice, "bob@b.test", "via%20A").await;
    assert_eq!(field(&next_message(&mut bob).await, "id"), Some(id.clone()));
    bob.send(&format!("MESSAGE-ACK id={id}")).await;
    bob.sync().await;

    // DNS fails: the message is still accepted and arrives once DNS answers again.
    dns.fail(true);
    let b_dir_port = b.stop().await;
    let id = send(&mut alice, "bob@b.test", "after%20outage").await;
    let b = Fed::start_in(&dns, "b.test", b_dir_port.0, b_dir_port.1, |_| {}).await;
    dns.remove("_msim-s2s._tcp.b.test", RecordType::SRV);
    let mut bob = b.session("bob").await;
    dns.fail(false);
    assert_eq!(field(&next_message(&mut bob).await, "id"), Some(id));
}

#[tokio::test]
async fn policy_empty_allowlist_deny_and_federation_off() {
    let dns = TestDns::start().await;
    // An empty allow list allows nobody.
    let a = Fed::start(&dns, "a.test", |c| c.federation.mode = Mode::Allowlist).await;
    let _b = Fed::start(&dns, "b.test", |_| {}).await;
    let mut alice = a.user("alice").await;
    alice.send("MESSAGE to=bob@b.test text=hi").await;
    let f = alice.expect_skip("MESSAGE-SEND-FAILED").await;
    assert_eq!(field(&f, "reason").as_deref(), Some("peer-not-allowed"));
    // Deny wins over allow.
    let c = Fed::start(&dns, "c.test", |c| {
        c.federation.mode = Mode::Allowlist;
        c.federation.allow = vec!["b.test".into()];
        c.federation.deny = vec!["b.test".into()];
    })
    .await;
    let mut carol = c.user("carol").await;
    carol.send("MESSAGE to=bob@b.test text=hi").await;
    let f = carol.expect_skip("MESSAGE-SEND-FAILED").await;
    assert_eq!(field(&f, "reason").as_deref(), Some("peer-not-allowed"));

    // A server with federation off: clients are told, remote messages fail as before.
    let off = crate::common::TestServer::start_with(|c| c.domain = "off.test".into()).await;
    let mut olga = off.client().await;
    olga.send("REGISTER login=olga password=correct-horse")
        .await;
    olga.expect("REGISTER-OK").await;
    let ok = olga
        .expect_login("olga", "correct-horse", None, "CONNECT-OK")
        .await;
    assert_eq!(field(&ok, "federation").as_deref(), Some("false"));
    olga.send("MESSAGE to=bob@b.test text=hi").await;
    let f = olga.expect_skip("MESSAGE-SEND-FAILED").await;
    assert_eq!(field(&f, "reason").as_deref(), Some("federation-disabled"));
}

#[tokio::test]
async fn undeliverable_messages_expire_with_a_failure_to_the_sender() {
    let dns = TestDns::start().await;
    let a = Fed::start(&dns, "a.test", |c| {
        c.federation.queue_ttl = std::time::Duration::from_secs(3600);
        c.purge_interval = std::time::Duration::from_millis(20);
    })
    .await;
    let mut alice = a.user("alice").await;
    // nowhere.test has no DNS records at all: the message waits in the queue.
    let id = send(&mut alice, "bob@nowhere.test", "anyone%3F").await;
    a.server.clock.advance(std::time::Duration::from_secs(3601));
    let f = alice.expect_skip("MESSAGE-SEND-FAILED").await;
    assert_eq!(field(&f, "id"), Some(id.clone()));
    assert_eq!(field(&f, "reason").as_deref(), Some("expired"));
    // Stored for the sender's next login too.
    let mut again = a.session("alice").await;
    let f = again.expect_skip("MESSAGE-SEND-FAILED").await;
    assert_eq!(field(&f, "id"), Some(id));
}

#[tokio::test]
async fn a_peers_queue_is_bounded_and_other_peers_are_unaffected() {
    let dns = TestDns::start().await;
    let a = Fed::start(&dns, "a.test", |c| c.federation.queue_max_per_peer = 3).await;
    let _b = Fed::start(&dns, "b.test", |_| {}).await;
    let mut alice = a.user("alice").await;
    for i in 0..3 {
        send(&mut alice, "bob@nowhere.test", &format!("m{i}")).await;
    }
    alice
        .send("MESSAGE to=bob@nowhere.test text=one%20more")
        .await;
    let f = alice.expect_skip("MESSAGE-SEND-FAILED").await;
    assert_eq!(field(&f, "reason").as_deref(), Some("recipient-queue-full"));
    // Another peer's queue is separate: it takes its own 3 at once.
    let mut bob = _b.user("bob").await;
    for i in 0..3 {
        send(&mut alice, "bob@b.test", &format!("b{i}")).await;
    }
    for i in 0..3 {
        let m = next_message(&mut bob).await;
        assert_eq!(field(&m, "text"), Some(format!("b{i}")));
    }
}

#[tokio::test]
async fn remote_profiles_and_account_existence() {
    let dns = TestDns::start().await;
    let a = Fed::start(&dns, "a.test", |_| {}).await;
    let b = Fed::start(&dns, "b.test", |_| {}).await;
    let mut alice = a.user("alice").await;
    let mut bob = b.user("bob").await;
    bob.send("PROFILE-UPDATE name=Bobby note=on%20b").await;
    bob.expect("PROFILE-UPDATE-OK").await;
    // No link exists yet: the request dials b.test.
    alice.send("PROFILE-GET id=bob@b.test ref=p").await;
    let p = alice.expect_skip("PROFILE").await;
    assert_eq!(field(&p, "id").as_deref(), Some("bob@b.test"));
    assert_eq!(field(&p, "name").as_deref(), Some("Bobby"));
    assert_eq!(field(&p, "note").as_deref(), Some("on b"));
    assert_eq!(field(&p, "ref").as_deref(), Some("p"));
    alice.send("PROFILE-GET id=nobody@b.test").await;
    let f = alice.expect_skip("PROFILE-GET-FAILED").await;
    assert_eq!(field(&f, "reason").as_deref(), Some("unknown-user"));
    // Adding a remote contact checks that the account exists.
    alice.send("CONTACTS-ADD id=nobody@b.test").await;
    let f = alice.expect_skip("CONTACTS-ADD-FAILED").await;
    assert_eq!(field(&f, "reason").as_deref(), Some("unknown-user"));
    alice.send("CONTACTS-ADD id=bob@b.test").await;
    alice.expect_skip("CONTACTS-ADD-OK").await;
    // A server that cannot be reached does not block adding (it cannot say "no").
    alice.send("CONTACTS-ADD id=someone@nowhere.test").await;
    alice.expect_skip("CONTACTS-ADD-OK").await;
    alice.send("PROFILE-GET id=someone@nowhere.test").await;
    let f = alice.expect_skip("PROFILE-GET-FAILED").await;
    assert_eq!(field(&f, "reason").as_deref(), Some("peer-unreachable"));
}
