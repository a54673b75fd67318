//! Login lockout (issue 11 item 3): strangers guessing a victim's password from rotating
//! addresses must not lock the victim out, while their guessing stays slow. Real TCP, with
//! each client bound to its own 127.0.0.x source address; time moves on the manual clock.

use crate::common;

use common::{field, Client, TestServer, PASSWORD};
use std::net::IpAddr;
use std::time::Duration;

fn ip(last: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, last])
}

const WRONG: &str = "not-the-password";

/// One wrong guess for `login` from `from`: true when the hash was checked (`invalid`),
/// false when the attempt was refused unchecked (`throttled`).
async fn guess(srv: &TestServer, from: IpAddr, login: &str) -> bool {
    let mut c = Client::connect_from(srv.chat, from).await;
    let answer = c.expect_login(login, WRONG, None, "CONNECT-FAILED").await;
    match field(&answer, "reason").as_deref() {
        Some("invalid") => true,
        Some("throttled") => false,
        other => panic!("unexpected answer {answer:?} ({other:?})"),
    }
}

/// Registers `login` from 127.0.0.1 and logs it in there once; returns its device cookie.
async fn victim(srv: &TestServer, login: &str) -> String {
    let mut c = Client::connect_from(srv.chat, ip(1)).await;
    c.send(&format!("REGISTER login={login} password={PASSWORD}"))
        .await;
    c.expect("REGISTER-OK").await;
    let ok = c.expect_login(login, PASSWORD, None, "CONNECT-OK").await;
    field(&ok, "device").expect("CONNECT-OK carries device=")
}

#[tokio::test]
async fn device_cookie_logs_in_through_a_rotating_address_attack() {
    let srv = TestServer::start().await;
    let mut cookie = victim(&srv, "victim").await;
    // The reported attack: a wrong password every 0.1 s from rotating addresses; the victim
    // logs in between, from an address it never used (a phone on a new network), with its
    // cookie. Before device cookies every one of these logins was `throttled`.
    for round in 0..25u8 {
        for k in 0..4u8 {
            guess(&srv, ip(10 + (round * 4 + k) % 40), "victim").await;
            srv.clock.advance(Duration::from_millis(100));
        }
        let mut phone = Client::connect_from(srv.chat, ip(200)).await;
        let ok = phone
            .expect_login("victim", PASSWORD, Some(&cookie), "CONNECT-OK")
            .await;
        // A fresh cookie each time; the client keeps the newest.
        cookie = field(&ok, "device").unwrap();
    }
    // The same login from that address without a cookie is held back by the strangers'
    // failures: the lockout still applies to everyone else (the victim's logins do not
    // reset it).
    let mut c = Client::connect_from(srv.chat, ip(201)).await;
    c.expect_login("victim", PASSWORD, None, "CONNECT-FAILED reason=throttled")
        .await;
    // A cookie is bound to its login: it opens no other account's throttle.
    let _other = victim(&srv, "other").await;
    for k in 0..3 {
        guess(&srv, ip(50 + k), "other").await;
    }
    let mut c = Client::connect_from(srv.chat, ip(202)).await;
    c.expect_login(
        "other",
        PASSWORD,
        Some(&cookie),
        "CONNECT-FAILED reason=throttled",
    )
    .await;
    srv.stop().await;
}

#[tokio::test]
async fn known_address_logs_in_without_a_cookie_while_strangers_guess_elsewhere() {
    let srv = TestServer::start().await;
    victim(&srv, "victim").await;
    for round in 0..10u8 {
        for k in 0..5u8 {
            guess(&srv, ip(10 + (round * 5 + k) % 40), "victim").await;
            srv.clock.advance(Duration::from_millis(100));
        }
        // 127.0.0.1 logged into this account before: strangers elsewhere do not block it.
        let mut home = Client::connect_from(srv.chat, ip(1)).await;
        home.expect_login("victim", PASSWORD, None, "CONNECT-OK")
            .await;
    }
    srv.stop().await;
}

#[tokio::test]
async fn rotating_attacker_without_cookie_stays_slow() {
    let srv = TestServer::start().await;
    victim(&srv, "victim").await;
    // Ten minutes of a guess every 0.5 s from 40 rotating addresses: only the attempts the
    // per-login delay lets through are checked (it doubles from 1 s; the addresses do not
    // help, and throttled attempts do not count).
    let mut checked = 0;
    for i in 0..1200u32 {
        if guess(&srv, ip(10 + (i % 40) as u8), "victim").await {
            checked += 1;
        }
        srv.clock.advance(Duration::from_millis(500));
    }
    // 1 + the doublings that fit in 600 s (t = 0, 1, 3, 7, …, 511).
    assert!(checked <= 11, "{checked} guesses checked in 10 minutes");
    assert!(checked >= 5, "the delay decays: {checked}");
    // An unknown login is throttled the same way (no existence oracle).
    let mut checked_unknown = 0;
    for i in 0..200u32 {
        if guess(&srv, ip(100 + (i % 40) as u8), "nobody-here").await {
            checked_unknown += 1;
        }
        srv.clock.advance(Duration::from_millis(500));
    }
    assert!(checked_unknown <= 8, "{checked_unknown}");
    srv.stop().await;
}

#[tokio::test]
async fn success_clears_failures_and_a_cookie_has_its_own_budget() {
    let srv = TestServer::start().await;
    let cookie = victim(&srv, "victim").await;
    let home = ip(1);
    // Two mistakes at home: 1 s, then 2 s.
    assert!(guess(&srv, home, "victim").await);
    srv.clock.advance(Duration::from_secs(1));
    assert!(guess(&srv, home, "victim").await);
    let mut c = Client::connect_from(srv.chat, home).await;
    let answer = c
        .expect_login("victim", PASSWORD, None, "CONNECT-FAILED")
        .await;
    assert_eq!(answer, "CONNECT-FAILED reason=throttled retry-after=2");
    srv.clock.advance(Duration::from_secs(2));
    c.expect_login("victim", PASSWORD, None, "CONNECT-OK").await;
    // The success cleared them: the next mistake costs 1 s again, not 4 s.
    assert!(guess(&srv, home, "victim").await);
    let mut c = Client::connect_from(srv.chat, home).await;
    let answer = c
        .expect_login("victim", PASSWORD, None, "CONNECT-FAILED")
        .await;
    assert_eq!(answer, "CONNECT-FAILED reason=throttled retry-after=1");

    // With the cookie, mistakes are counted on the cookie (5 allowed) and never delayed.
    let phone = ip(200);
    for _ in 0..4 {
        let mut c = Client::connect_from(srv.chat, phone).await;
        c.expect_login(
            "victim",
            WRONG,
            Some(&cookie),
            "CONNECT-FAILED reason=invalid",
        )
        .await;
    }
    let mut c = Client::connect_from(srv.chat, phone).await;
    c.expect_login("victim", PASSWORD, Some(&cookie), "CONNECT-OK")
        .await;
    // The success reset the cookie's count: five more mistakes, then it is used up.
    for _ in 0..5 {
        let mut c = Client::connect_from(srv.chat, phone).await;
        c.expect_login(
            "victim",
            WRONG,
            Some(&cookie),
            "CONNECT-FAILED reason=invalid",
        )
        .await;
    }
    // Now the cookie is worthless: the attempt is an ordinary one from an unknown address,
    // and the login is not locked (the cookie's failures never counted for it).
    let mut c = Client::connect_from(srv.chat, phone).await;
    c.expect_login(
        "victim",
        WRONG,
        Some(&cookie),
        "CONNECT-FAILED reason=invalid",
    )
    .await;
    let mut c = Client::connect_from(srv.chat, phone).await;
    c.expect_login(
        "victim",
        PASSWORD,
        Some(&cookie),
        "CONNECT-FAILED reason=throttled",
    )
    .await;
    srv.stop().await;
}

#[tokio::test]
async fn tampered_or_foreign_cookies_are_ignored() {
    let srv = TestServer::start().await;
    let cookie = victim(&srv, "victim").await;
    for k in 0..3 {
        guess(&srv, ip(10 + k), "victim").await;
    }
    let (nonce, rest) = cookie.split_once('.').unwrap();
    let flipped = format!(
        "{}{}.{rest}",
        &nonce[..31],
        if nonce.ends_with('0') { '1' } else { '0' }
    );
    for bad in [flipped.as_str(), "garbage", &"f".repeat(1000)] {
        let mut c = Client::connect_from(srv.chat, ip(200)).await;
        c.expect_login(
            "victim",
            PASSWORD,
            Some(bad),
            "CONNECT-FAILED reason=throttled",
        )
        .await;
    }
    // A cookie from another server (another secret.key) is just as useless.
    let other = TestServer::start().await;
    let foreign = victim(&other, "victim").await;
    let mut c = Client::connect_from(srv.chat, ip(200)).await;
    c.expect_login(
        "victim",
        PASSWORD,
        Some(&foreign),
        "CONNECT-FAILED reason=throttled",
    )
    .await;
    // Cookies expire (default 90 days).
    srv.clock.advance(Duration::from_secs(91 * 86_400));
    for k in 0..3 {
        guess(&srv, ip(20 + k), "victim").await;
    }
    let mut c = Client::connect_from(srv.chat, ip(200)).await;
    c.expect_login(
        "victim",
        PASSWORD,
        Some(&cookie),
        "CONNECT-FAILED reason=throttled",
    )
    .await;
    other.stop().await;
    srv.stop().await;
}

/// PROTOCOL.md §13.1, line by line (salts and the cookie vary).
#[tokio::test]
async fn transcript_13_1_registration_and_login() {
    let srv = TestServer::start().await;
    let mut c = srv.client().await;
    c.send("REGISTER login=Alice password=correct%20horse ref=r1")
        .await;
    assert_eq!(c.line().await, "REGISTER-OK login=alice@localhost ref=r1");
    c.send("REGISTER login=alice password=whatever1").await;
    assert_eq!(c.line().await, "REGISTER-FAILED reason=login-taken");
    c.send("REGISTER login=bo password=12345678").await;
    assert_eq!(c.line().await, "REGISTER-FAILED reason=login-too-short");
    let ok = c
        .expect_login("alice", "correct horse", None, "CONNECT-OK")
        .await;
    let version = env!("CARGO_PKG_VERSION");
    let (head, device) = ok.split_once(" device=").unwrap();
    assert_eq!(
        head,
        format!(
            "CONNECT-OK login=alice@localhost domain=localhost federation=false \
             max-line=65536 max-text=16384 max-file-size=1073741824 server=msim-chat/{version}"
        )
    );
    let parts: Vec<&str> = device.split('.').collect();
    assert_eq!(parts.len(), 3, "{device}");
    assert_eq!(parts[0].len(), 32);
    assert!(parts[1].parse::<u64>().is_ok());
    assert_eq!(parts[2].len(), 64);

    let mut c = srv.client().await;
    c.send("CONNECT login=alice").await;
    let ack = c.expect("CONNECT-ACK").await;
    c.send(
        "CONNECT-CONTINUE hash=0000000000000000000000000000000000000000000000000000000000000000",
    )
    .await;
    assert_eq!(c.line().await, "CONNECT-FAILED reason=invalid");
    let good = msim_chat::crypto::challenge_hash(&field(&ack, "salt").unwrap(), b"correct horse");
    c.send(&format!("CONNECT-CONTINUE hash={good}")).await;
    assert_eq!(c.line().await, "CONNECT-FAILED reason=bad-state");
    let answer = c
        .expect_login("alice", "correct horse", None, "CONNECT-FAILED")
        .await;
    assert_eq!(answer, "CONNECT-FAILED reason=throttled retry-after=1");
    // With the device cookie of the first CONNECT-OK: not held back.
    c.expect_login("alice", "correct horse", Some(device), "CONNECT-OK")
        .await;
    srv.stop().await;
}
