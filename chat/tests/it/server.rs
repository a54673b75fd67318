//! Every flow of PROTOCOL.md §2–9 over real TCP against an in-process server.

use crate::common;
use common::{field, Client, TestServer, PASSWORD};
use std::time::Duration;

#[tokio::test]
async fn malformed_input_and_state_errors() {
    let srv = TestServer::start_with(|c| c.max_line = 120).await;
    let mut c = srv.client().await;
    c.send("PING ref=a1").await;
    assert_eq!(c.line().await, "PONG ref=a1");
    c.send("hello").await;
    assert!(c
        .expect("ERROR-MALFORMED")
        .await
        .contains("reason=bad-verb"));
    c.send("PING a=%zz").await;
    assert!(c
        .expect("ERROR-MALFORMED")
        .await
        .contains("reason=bad-escape"));
    c.send("PING a=1 a=2").await;
    assert!(c
        .expect("ERROR-MALFORMED")
        .await
        .contains("reason=duplicate-key"));
    c.send("[").await;
    c.send("x=1").await;
    c.send("]").await;
    assert!(c
        .expect("ERROR-MALFORMED")
        .await
        .contains("reason=unexpected-list"));
    c.send(&format!("PING x={}", "a".repeat(200))).await;
    assert_eq!(c.line().await, "ERROR-LINE-TOO-LONG max=120");
    c.send("MESSAGE to=bob text=hi ref=r2").await;
    assert_eq!(c.line().await, "ERROR-NOT-LOGGED-IN type=MESSAGE ref=r2");
    c.send("SEND-FILE to=bob").await;
    assert_eq!(c.line().await, "ERROR-NOT-IMPLEMENTED type=SEND-FILE");
    c.send("FROBNICATE").await;
    assert_eq!(c.line().await, "ERROR-NOT-IMPLEMENTED type=FROBNICATE");
    c.send("CONNECT-CONTINUE hash=00").await;
    assert_eq!(c.line().await, "CONNECT-FAILED reason=bad-state");
    c.send("MESSAGE").await;
    // still not logged in: state checked before fields
    assert_eq!(c.line().await, "ERROR-NOT-LOGGED-IN type=MESSAGE");
    let mut a = srv.user("alice").await;
    a.send("CONNECT login=alice").await;
    assert_eq!(a.line().await, "ERROR-BAD-STATE type=CONNECT");
    a.send("REGISTER login=x password=y").await;
    assert_eq!(a.line().await, "ERROR-BAD-STATE type=REGISTER");
    a.send("MESSAGE to=alice ref=m").await;
    assert_eq!(
        a.line().await,
        "ERROR-MALFORMED reason=missing-field detail=text ref=m"
    );
    // NUL is refused before it reaches the store (PostgreSQL's TEXT cannot hold it, and the
    // failure would take the messages batched with it along); the next message is stored.
    a.send("MESSAGE to=alice text=a%00b ref=n").await;
    a.send("MESSAGE to=alice text=a%01b ref=o").await;
    assert_eq!(
        a.line().await,
        "ERROR-MALFORMED reason=bad-value detail=text ref=n"
    );
    let sent = a.expect("MESSAGE-SENT").await;
    assert_eq!(field(&sent, "ref").as_deref(), Some("o"));
    srv.stop().await;
}

#[tokio::test]
async fn registration_rules() {
    let srv = TestServer::start().await;
    let mut c = srv.client().await;
    let cases = [
        (
            "login=Alice password=password1",
            "REGISTER-OK login=alice@localhost",
        ),
        (
            "login=ALICE password=password1",
            "REGISTER-FAILED reason=login-taken",
        ),
        (
            "login=al password=password1",
            "REGISTER-FAILED reason=login-too-short",
        ),
        (
            "login=aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa password=password1",
            "REGISTER-FAILED reason=login-too-long",
        ),
        (
            "login=bad/name password=password1",
            "REGISTER-FAILED reason=login-invalid",
        ),
        (
            "login=bob password=short",
            "REGISTER-FAILED reason=password-too-short",
        ),
    ];
    for (args, want) in cases {
        c.send(&format!("REGISTER {args}")).await;
        assert_eq!(c.line().await, want, "{args}");
    }
    c.send(&format!("REGISTER login=bob password={}", "x".repeat(2000)))
        .await;
    assert_eq!(c.line().await, "REGISTER-FAILED reason=password-too-long");
    srv.stop().await;

    let srv = TestServer::start_with(|c| c.registration_open = false).await;
    let mut c = srv.client().await;
    c.send("REGISTER login=carol password=password1").await;
    assert_eq!(c.line().await, "REGISTER-FAILED reason=registration-closed");
    srv.stop().await;

    let srv = TestServer::start_with(|c| {
        c.register_burst = 1;
        c.register_per_hour = 1;
    })
    .await;
    let mut c = srv.client().await;
    c.send("REGISTER login=dave password=password1").await;
    c.expect("REGISTER-OK").await;
    c.send("REGISTER login=erin password=password1").await;
    assert_eq!(c.line().await, "REGISTER-FAILED reason=rate-limited");
    srv.stop().await;
}

#[tokio::test]
async fn login_salts_and_throttling() {
    // Default delays: 1 s after the first failure, as in PROTOCOL.md §13.1, doubling.
    let srv = TestServer::start().await;
    let _a = srv.user("alice").await;
    let mut c = srv.client().await;
    // Unknown login: same form of ACK.
    c.send("CONNECT login=nobody").await;
    let ack1 = c.expect("CONNECT-ACK").await;
    c.send("CONNECT login=alice").await;
    let ack2 = c.expect("CONNECT-ACK").await;
    let (s1, s2) = (field(&ack1, "salt").unwrap(), field(&ack2, "salt").unwrap());
    let shape = |s: &str| {
        let (r, n) = s.split_once('-').unwrap();
        assert_eq!(r.len(), 32);
        n.parse::<u64>().unwrap()
    };
    assert!(shape(&s2) > shape(&s1), "counter increases");
    // Wrong password → invalid, then throttled.
    c.send("CONNECT-CONTINUE hash=0000").await;
    assert_eq!(c.line().await, "CONNECT-FAILED reason=invalid");
    // The salt was good for one attempt.
    let good = msim_chat::crypto::challenge_hash(&s2, PASSWORD.as_bytes());
    c.send(&format!("CONNECT-CONTINUE hash={good}")).await;
    assert_eq!(c.line().await, "CONNECT-FAILED reason=bad-state");
    // CONNECT is always answered with a salt; the attempt itself is throttled.
    c.send("CONNECT login=alice").await;
    let throttled_ack = c.expect("CONNECT-ACK").await;
    let hash = msim_chat::crypto::challenge_hash(
        field(&throttled_ack, "salt").unwrap().as_str(),
        PASSWORD.as_bytes(),
    );
    c.send(&format!("CONNECT-CONTINUE hash={hash}")).await;
    assert_eq!(
        c.line().await,
        "CONNECT-FAILED reason=throttled retry-after=1",
        "even the right password waits out the delay"
    );
    srv.clock.advance(Duration::from_secs(1));
    c.send("CONNECT login=alice").await;
    let ack = c.expect("CONNECT-ACK").await;
    c.send("CONNECT-CONTINUE hash=bad").await;
    assert_eq!(c.line().await, "CONNECT-FAILED reason=invalid");
    c.send("CONNECT login=alice").await;
    c.expect("CONNECT-ACK").await;
    c.send("CONNECT-CONTINUE hash=bad").await;
    assert_eq!(
        c.line().await,
        "CONNECT-FAILED reason=throttled retry-after=2"
    );
    // Unknown logins are throttled the same way (per IP as well), after the same CONNECT-ACK.
    c.send("CONNECT login=nobody").await;
    c.expect("CONNECT-ACK").await;
    c.send("CONNECT-CONTINUE hash=bad").await;
    c.expect("CONNECT-FAILED reason=throttled").await;
    let _ = ack;
    srv.clock.advance(Duration::from_secs(2));
    c.login("alice", PASSWORD).await;
    srv.stop().await;
}

#[tokio::test]
async fn messages_multi_device_and_receipts() {
    let srv = TestServer::start().await;
    let mut a1 = srv.user("alice").await;
    let mut a2 = srv.session("alice").await;
    let mut b1 = srv.user("bob").await;
    let mut b2 = srv.session("bob").await;
    a1.send("MESSAGE to=bob text=hello%20bob ref=7").await;
    let sent = a1.expect("MESSAGE-SENT").await;
    let id = field(&sent, "id").unwrap();
    assert_eq!(field(&sent, "ref").as_deref(), Some("7"));
    for c in [&mut b1, &mut b2, &mut a2] {
        let m = c.expect("MESSAGE").await;
        assert_eq!(field(&m, "id").unwrap(), id);
        assert_eq!(field(&m, "from").unwrap(), "alice@localhost");
        assert_eq!(field(&m, "to").unwrap(), "bob@localhost");
        assert_eq!(field(&m, "text").unwrap(), "hello bob");
        assert!(field(&m, "at").unwrap().ends_with('Z'));
    }
    b1.send(&format!("MESSAGE-READ id={id}")).await;
    for c in [&mut a1, &mut a2, &mut b2] {
        let r = c.expect("MESSAGE-READ").await;
        assert_eq!(field(&r, "id").unwrap(), id);
        assert_eq!(field(&r, "by").unwrap(), "bob@localhost");
    }
    a1.send(&format!("MESSAGE-READ id={id}")).await;
    assert_eq!(
        a1.line().await,
        format!("MESSAGE-READ-FAILED id={id} reason=unknown-message")
    );
    // Failures.
    let long = "x".repeat(16 * 1024 + 1);
    for (args, reason) in [
        ("to=nobody text=x", "unknown-recipient"),
        (&format!("to=bob text={long}")[..], "text-too-long"),
        ("to=bob text=", "empty-text"),
        ("to=bad/addr text=x", "bad-address"),
        ("to=bob@elsewhere.org text=x", "federation-disabled"),
    ] {
        a1.send(&format!("MESSAGE {args}")).await;
        let l = a1.expect("MESSAGE-SEND-FAILED").await;
        assert_eq!(field(&l, "reason").unwrap(), reason);
        assert!(field(&l, "id").is_some());
    }
    srv.stop().await;
}

#[tokio::test]
async fn offline_delivery_in_order_and_stored_receipts() {
    let srv = TestServer::start().await;
    let mut a = srv.user("alice").await;
    let b = srv.user("bob").await;
    drop(b);
    let mut ids = Vec::new();
    for i in 0..20 {
        a.send(&format!("MESSAGE to=bob text=m{i}")).await;
        ids.push(field(&a.expect("MESSAGE-SENT").await, "id").unwrap());
    }
    drop(a);
    let mut b = srv.session("bob").await;
    for (i, id) in ids.iter().enumerate() {
        let m = b.expect("MESSAGE").await;
        assert_eq!(field(&m, "id").as_ref(), Some(id));
        assert_eq!(field(&m, "text").unwrap(), format!("m{i}"));
    }
    // Read the first (alice offline: stored), ack the rest.
    b.send(&format!("MESSAGE-READ id={}", ids[0])).await;
    for id in &ids[1..] {
        b.send(&format!("MESSAGE-ACK id={id}")).await;
    }
    b.sync().await;
    drop(b);
    // Acknowledgements are best effort and committed in the background (§5.5): once they
    // are, a fresh login gets nothing again — the very first answer is the PONG.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut b = loop {
        let mut b = srv.session("bob").await;
        b.send("PING ref=quiet").await;
        let first = b.line().await;
        if first == "PONG ref=quiet" {
            break b;
        }
        assert!(first.starts_with("MESSAGE "), "{first}");
        assert!(
            std::time::Instant::now() < deadline,
            "ACK/READ never stopped redelivery"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut a = srv.session("alice").await;
    let r = a.expect_skip("MESSAGE-READ").await;
    assert_eq!(field(&r, "id").unwrap(), ids[0]);
    assert_eq!(field(&r, "by").unwrap(), "bob@localhost");
    a.sync().await;
    drop(a);
    // Delivered receipts are not sent again.
    let mut a = srv.session("alice").await;
    a.send("PING ref=x").await;
    assert_eq!(a.line().await, "PONG ref=x");
    b.send("PING ref=y").await;
    assert_eq!(b.line().await, "PONG ref=y");
    srv.stop().await;
}

#[tokio::test]
async fn typing_forwarded_and_ended() {
    // A timeout far beyond the test's run: every TYPING-END below is the one the step causes,
    // however slowly the machine runs.
    let srv = TestServer::start_with(|c| c.typing_timeout = Duration::from_secs(600)).await;
    let mut a = srv.user("alice").await;
    let mut b = srv.user("bob").await;
    a.send("TYPING-STARTED to=bob").await;
    assert_eq!(b.line().await, "TYPING-STARTED from=alice@localhost");
    a.send("TYPING-END to=bob").await;
    assert_eq!(b.line().await, "TYPING-END from=alice@localhost");
    // Disconnect ends it.
    let mut a2 = srv.session("alice").await;
    a2.send("TYPING-STARTED to=bob").await;
    assert_eq!(b.line().await, "TYPING-STARTED from=alice@localhost");
    drop(a2);
    assert_eq!(b.line().await, "TYPING-END from=alice@localhost");
    b.send("PING ref=b").await;
    assert_eq!(b.line().await, "PONG ref=b");
    a.sync().await;
    srv.stop().await;
}

#[tokio::test]
async fn typing_ended_by_the_server_after_silence() {
    let srv = TestServer::start_with(|c| c.typing_timeout = Duration::from_millis(200)).await;
    let mut a = srv.user("alice").await;
    let mut b = srv.user("bob").await;
    let started = std::time::Instant::now();
    a.send("TYPING-STARTED to=bob").await;
    assert_eq!(b.line().await, "TYPING-STARTED from=alice@localhost");
    // Alice stays silent: the server ends it, not before the timeout.
    assert_eq!(b.line().await, "TYPING-END from=alice@localhost");
    assert!(started.elapsed() >= Duration::from_millis(200));
    b.send("PING ref=b").await;
    assert_eq!(b.line().await, "PONG ref=b");
    srv.stop().await;
}

#[tokio::test]
async fn contacts_and_presence() {
    let srv = TestServer::start().await;
    let mut a1 = srv.user("alice").await;
    let mut a2 = srv.session("alice").await;
    let mut b = srv.user("bob").await;
    b.send("PROFILE-UPDATE name=Bobby note=busy").await;
    assert_eq!(b.line().await, "PROFILE-UPDATE-OK");
    a1.send("CONTACTS-ADD id=bob group=Work/Mobile").await;
    assert_eq!(a1.line().await, "CONTACTS-ADD-OK id=bob@localhost");
    assert_eq!(a2.line().await, "CONTACT-UPDATED");
    // No presence until bob approves (PROTOCOL.md §7.1).
    assert_eq!(
        a2.list().await,
        vec!["id=bob@localhost name=Bobby group=Work/Mobile note=busy"]
    );
    assert_eq!(b.line().await, "PRESENCE-REQUEST from=alice@localhost");
    b.send("PRESENCE-APPROVE id=alice").await;
    assert_eq!(b.line().await, "PRESENCE-APPROVE-OK id=alice@localhost");
    for c in [&mut a1, &mut a2] {
        assert_eq!(c.line().await, "CONTACT-UPDATED");
        assert_eq!(c.list().await, vec!["id=bob@localhost presence=online"]);
    }
    a1.send("CONTACTS-ADD id=carol@other.org name=Carol").await;
    assert_eq!(a1.line().await, "CONTACTS-ADD-OK id=carol@other.org");
    a2.expect("CONTACT-UPDATED").await;
    a2.list().await;
    for (args, want) in [
        (
            "id=bob",
            "CONTACTS-ADD-FAILED id=bob@localhost reason=already-exists",
        ),
        (
            "id=ghost",
            "CONTACTS-ADD-FAILED id=ghost@localhost reason=unknown-user",
        ),
        (
            "id=alice",
            "CONTACTS-ADD-FAILED id=alice@localhost reason=self",
        ),
        ("id=a/b", "CONTACTS-ADD-FAILED id=a/b reason=bad-address"),
        (
            "id=x@y.org group=a//b",
            "CONTACTS-ADD-FAILED id=x@y.org reason=bad-group",
        ),
        (
            "id=x@y.org name=%01",
            "CONTACTS-ADD-FAILED id=x@y.org reason=bad-name",
        ),
    ] {
        a1.send(&format!("CONTACTS-ADD {args}")).await;
        assert_eq!(a1.line().await, want);
    }
    a1.send("CONTACTS-GET ref=g").await;
    assert_eq!(a1.line().await, "CONTACTS-GET-RESPONSE ref=g");
    assert_eq!(
        a1.list().await,
        vec![
            "id=bob@localhost name=Bobby group=Work/Mobile note=busy presence=online",
            "id=carol@other.org name=Carol",
        ]
    );
    a1.send("CONTACTS-CHANGE id=bob group=").await;
    assert_eq!(a1.line().await, "CONTACTS-CHANGE-OK id=bob@localhost");
    a2.expect("CONTACT-UPDATED").await;
    assert_eq!(a2.list().await, vec!["id=bob@localhost group="]);
    for (args, want) in [
        (
            "id=bob",
            "CONTACTS-CHANGE-FAILED id=bob@localhost reason=nothing-to-change",
        ),
        (
            "id=zed name=Z",
            "CONTACTS-CHANGE-FAILED id=zed@localhost reason=not-found",
        ),
        (
            "id=bob name=",
            "CONTACTS-CHANGE-FAILED id=bob@localhost reason=bad-name",
        ),
        (
            "id=bob group=/x",
            "CONTACTS-CHANGE-FAILED id=bob@localhost reason=bad-group",
        ),
    ] {
        a1.send(&format!("CONTACTS-CHANGE {args}")).await;
        assert_eq!(a1.line().await, want);
    }
    // Profile change: the new note reaches alice's sessions. (Which watchers get a new name,
    // §9.1, is tested in contacts_typing_limits.rs.)
    b.send("PROFILE-UPDATE note=free").await;
    assert_eq!(b.line().await, "PROFILE-UPDATE-OK");
    for c in [&mut a1, &mut a2] {
        c.expect("CONTACT-UPDATED").await;
        assert_eq!(c.list().await, vec!["id=bob@localhost note=free"]);
    }
    b.send("PROFILE-UPDATE").await;
    assert_eq!(
        b.line().await,
        "PROFILE-UPDATE-FAILED reason=nothing-to-change"
    );
    b.send(&format!("PROFILE-UPDATE note={}", "n".repeat(1025)))
        .await;
    assert_eq!(b.line().await, "PROFILE-UPDATE-FAILED reason=note-too-long");
    b.send("PROFILE-UPDATE name=%01").await;
    assert_eq!(b.line().await, "PROFILE-UPDATE-FAILED reason=bad-name");
    a1.send("PROFILE-GET id=bob").await;
    assert_eq!(
        a1.line().await,
        "PROFILE id=bob@localhost name=Bobby note=free presence=online"
    );
    a1.send("PROFILE-GET id=ghost").await;
    assert_eq!(
        a1.line().await,
        "PROFILE-GET-FAILED id=ghost reason=unknown-user"
    );
    // Presence: bob goes offline, then comes back.
    drop(b);
    for c in [&mut a1, &mut a2] {
        c.expect("CONTACT-UPDATED").await;
        let rec = c.list().await;
        assert!(
            rec[0].starts_with("id=bob@localhost presence=20"),
            "{rec:?}"
        );
        let ls = c.expect("UPDATE-LAST-SEEN").await;
        assert_eq!(field(&ls, "id").unwrap(), "bob@localhost");
    }
    let _b = srv.session("bob").await;
    a1.expect("CONTACT-UPDATED").await;
    assert_eq!(a1.list().await, vec!["id=bob@localhost presence=online"]);
    a1.send("CONTACTS-DELETE id=bob").await;
    assert_eq!(a1.line().await, "CONTACTS-DELETE-OK id=bob@localhost");
    a1.send("CONTACTS-DELETE id=bob").await;
    assert_eq!(
        a1.line().await,
        "CONTACTS-DELETE-FAILED id=bob@localhost reason=not-found"
    );
    a2.expect_skip("CONTACT-UPDATED").await;
    let mut rec = a2.list().await;
    while rec != vec!["id=bob@localhost deleted=true".to_owned()] {
        a2.expect_skip("CONTACT-UPDATED").await;
        rec = a2.list().await;
    }
    srv.stop().await;
}

#[tokio::test]
async fn login_timeout_closes_connection() {
    let srv = TestServer::start_with(|c| c.login_timeout = Duration::from_millis(100)).await;
    let mut c = srv.client().await;
    c.expect_closed().await;
    srv.stop().await;
}

#[tokio::test]
async fn shutdown_closes_sessions() {
    let srv = TestServer::start().await;
    let mut a = srv.user("alice").await;
    let dir = srv.stop().await;
    a.expect_closed().await;
    // Data survives a restart.
    let srv = TestServer::start_in(dir, |_| {}).await;
    let mut a = srv.session("alice").await;
    a.sync().await;
    let _: &mut Client = &mut a;
    srv.stop().await;
}

#[tokio::test]
async fn flooding_client_is_rate_limited() {
    let srv = TestServer::start_with(|c| {
        c.request_rate = 1;
        c.request_burst = 3;
    })
    .await;
    let mut a = srv.client().await;
    for i in 0..3 {
        a.send(&format!("PING ref=p{i}")).await;
    }
    a.send("PING ref=p3").await;
    for i in 0..3 {
        assert_eq!(a.line().await, format!("PONG ref=p{i}"));
    }
    assert_eq!(
        a.line().await,
        "ERROR-RATE-LIMITED type=PING retry-after=1 ref=p3"
    );
    // Another connection has its own budget.
    let mut b = srv.client().await;
    b.send("PING").await;
    assert_eq!(b.line().await, "PONG");
    // One second later one more request is allowed.
    srv.clock.advance(std::time::Duration::from_secs(1));
    a.send("PING ref=p4").await;
    assert_eq!(a.line().await, "PONG ref=p4");
    a.send("PING ref=p5").await;
    assert_eq!(
        a.line().await,
        "ERROR-RATE-LIMITED type=PING retry-after=1 ref=p5"
    );
}
