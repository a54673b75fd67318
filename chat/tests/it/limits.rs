//! Registration rate per address and network, account discovery limits, and the exact form of
//! last-seen times (issue 11 items 2, 5 and 9). Real TCP; time moves on the manual clock.

use crate::common;

use common::{field, Client, TestServer, PASSWORD};
use msim_chat::Config;
use std::net::IpAddr;
use std::time::Duration;

/// A server with the production registration limits (tests otherwise lift them).
async fn with_default_registration() -> TestServer {
    TestServer::start_with(|c| {
        let d = Config::default();
        c.register_burst = d.register_burst;
        c.register_per_hour = d.register_per_hour;
        c.register_prefix_burst = d.register_prefix_burst;
        c.register_prefix_per_hour = d.register_prefix_per_hour;
    })
    .await
}

async fn register(srv: &TestServer, from: IpAddr, login: &str) -> String {
    let mut c = Client::connect_from(srv.chat, from).await;
    c.send(&format!("REGISTER login={login} password={PASSWORD}"))
        .await;
    c.line().await
}

#[tokio::test]
async fn registration_script_is_refused_while_other_addresses_register() {
    let srv = with_default_registration().await;
    let script = IpAddr::from([127, 0, 0, 1]);
    // Before: 1,004 accounts from one address in 0.48 s. Now: 5, then refused.
    for i in 0..5 {
        assert_eq!(
            register(&srv, script, &format!("bot{i}")).await,
            format!("REGISTER-OK login=bot{i}@localhost")
        );
    }
    for i in 5..50 {
        assert_eq!(
            register(&srv, script, &format!("bot{i}")).await,
            "REGISTER-FAILED reason=rate-limited"
        );
    }
    // A refused attempt had no effect.
    let mut c = Client::connect_from(srv.chat, script).await;
    c.expect_login("bot5", PASSWORD, None, "CONNECT-FAILED reason=invalid")
        .await;
    // Another address registers.
    let person = IpAddr::from([127, 0, 1, 1]);
    assert_eq!(
        register(&srv, person, "alice").await,
        "REGISTER-OK login=alice@localhost"
    );
    // One host with many addresses in one /24 is limited as a network: 20 an hour.
    let mut ok = 5; // bot0..bot4 from 127.0.0.1
    for host in 2..=10u8 {
        for i in 0..5 {
            let answer = register(
                &srv,
                IpAddr::from([127, 0, 0, host]),
                &format!("h{host}x{i}"),
            )
            .await;
            if answer.starts_with("REGISTER-OK") {
                ok += 1;
            } else {
                assert_eq!(answer, "REGISTER-FAILED reason=rate-limited");
            }
        }
    }
    assert_eq!(ok, 20, "one /24 registers 20 accounts at once");
    // A person comes back later: tokens refill (5 an hour per address: one per 12 minutes;
    // 20 an hour per /24: one per 3 minutes).
    srv.clock.advance(Duration::from_secs(12 * 60));
    assert_eq!(
        register(&srv, script, "later").await,
        "REGISTER-OK login=later@localhost"
    );
    assert_eq!(
        register(&srv, script, "later2").await,
        "REGISTER-FAILED reason=rate-limited"
    );
    srv.stop().await;
}

#[tokio::test]
async fn unknown_user_lookups_are_rate_limited_per_account() {
    let srv = TestServer::start().await;
    let mut bob = srv.user("bob").await;
    let _carol = srv.user("carol").await;
    let mut alice = srv.user("alice").await;
    alice.send("CONTACTS-ADD id=bob").await;
    assert_eq!(alice.line().await, "CONTACTS-ADD-OK id=bob@localhost");
    // The default budget: 20 lookups of unknown users, by any of the four requests.
    for i in 0..5 {
        alice.send(&format!("PROFILE-GET id=ghost{i}")).await;
        assert_eq!(
            alice.line().await,
            format!("PROFILE-GET-FAILED id=ghost{i} reason=unknown-user")
        );
        alice.send(&format!("MESSAGE to=ghost{i} text=hi")).await;
        let l = alice.expect("MESSAGE-SEND-FAILED").await;
        assert_eq!(field(&l, "reason").unwrap(), "unknown-recipient");
        alice.send(&format!("CONTACTS-ADD id=ghost{i}")).await;
        assert_eq!(
            alice.line().await,
            format!("CONTACTS-ADD-FAILED id=ghost{i}@localhost reason=unknown-user")
        );
        alice.send(&format!("PROFILE-GET id=nobody{i}")).await;
        alice.expect("PROFILE-GET-FAILED").await;
    }
    // Spent: existing and unknown strangers are refused alike (so the refusal tells
    // nothing), 20 an hour = one lookup per 180 s.
    alice.send("PROFILE-GET id=ghost99 ref=g").await;
    assert_eq!(
        alice.line().await,
        "ERROR-RATE-LIMITED type=PROFILE-GET retry-after=180 ref=g"
    );
    alice.send("PROFILE-GET id=carol ref=c").await;
    assert_eq!(
        alice.line().await,
        "ERROR-RATE-LIMITED type=PROFILE-GET retry-after=180 ref=c"
    );
    alice.send("MESSAGE to=carol text=hi ref=m").await;
    assert_eq!(
        alice.line().await,
        "ERROR-RATE-LIMITED type=MESSAGE retry-after=180 ref=m"
    );
    alice.send("CONTACTS-ADD id=carol ref=a").await;
    assert_eq!(
        alice.line().await,
        "ERROR-RATE-LIMITED type=CONTACTS-ADD retry-after=180 ref=a"
    );
    // Contacts and oneself are still served: talking to people one knows never stops.
    alice.send("PROFILE-GET id=bob").await;
    alice.expect("PROFILE id=bob@localhost").await;
    alice.send("MESSAGE to=bob text=still%20here").await;
    alice.expect("MESSAGE-SENT").await;
    bob.expect_skip("MESSAGE").await;
    alice.send("PROFILE-GET").await;
    alice.expect("PROFILE id=alice@localhost").await;
    // Another session of the same account shares the budget; another account does not.
    let mut alice2 = srv.session("alice").await;
    alice2.send("PROFILE-GET id=carol").await;
    alice2.expect("ERROR-RATE-LIMITED").await;
    bob.send("PROFILE-GET id=ghost0").await;
    assert_eq!(
        bob.line().await,
        "PROFILE-GET-FAILED id=ghost0 reason=unknown-user"
    );
    // The budget refills.
    srv.clock.advance(Duration::from_secs(180));
    alice.send("PROFILE-GET id=carol").await;
    alice.expect("PROFILE id=carol@localhost").await;
    srv.stop().await;
}

#[tokio::test]
async fn last_seen_is_written_with_milliseconds() {
    let srv = TestServer::start().await;
    // Move the clock to a time whose milliseconds end in zeros (…​.800), which the old
    // formatter wrote as `….8Z`.
    let sub = srv.clock.now_micros().rem_euclid(1_000_000);
    let to = (800_000 - sub).rem_euclid(1_000_000);
    srv.clock.advance(Duration::from_micros(to as u64));
    let now = srv.clock.now();
    let expected = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.800Z",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second()
    );
    let mut alice = srv.user("alice").await;
    let mut bob = srv.user("bob").await;
    alice.send("CONTACTS-ADD id=bob").await;
    alice.expect_skip("CONTACTS-ADD-OK").await;
    // Presence needs bob's consent (§7.1). (This test is about the time format: the order of
    // other pushes around these answers does not matter here.)
    bob.expect_skip("PRESENCE-REQUEST").await;
    bob.send("PRESENCE-APPROVE id=alice").await;
    bob.expect_skip("PRESENCE-APPROVE-OK").await;
    alice.sync().await;
    drop(bob);
    let rec = loop {
        alice.expect_skip("CONTACT-UPDATED").await;
        let rec = alice.list().await;
        if !rec[0].contains("presence=online") {
            break rec;
        }
    };
    assert_eq!(rec, vec![format!("id=bob@localhost presence={expected}")]);
    assert_eq!(
        alice.line().await,
        format!("UPDATE-LAST-SEEN id=bob@localhost at={expected}")
    );
    alice.send("PROFILE-GET id=bob").await;
    assert_eq!(
        alice.line().await,
        format!("PROFILE id=bob@localhost name= note= presence={expected}")
    );
    srv.stop().await;
}
