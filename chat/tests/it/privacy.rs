//! Presence consent, last-seen visibility, blocking (PROTOCOL.md §7.1–§7.4) and open-offer
//! quotas (§10.2), over real TCP.

use crate::common;
use common::{field, Client, TestServer, PASSWORD};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// The next line is the `PONG` of a sync: nothing else arrived before it.
async fn nothing_arrived(c: &mut Client) {
    c.send("PING ref=quiet").await;
    assert_eq!(c.line().await, "PONG ref=quiet");
}

/// `subject` approves `watcher`'s presence request.
async fn approve(subject: &mut Client, watcher: &str) {
    subject
        .send(&format!("PRESENCE-APPROVE id={watcher}"))
        .await;
    assert_eq!(
        subject.line().await,
        format!("PRESENCE-APPROVE-OK id={watcher}@localhost")
    );
}

#[tokio::test]
async fn a_stranger_sees_presence_only_once_approved_and_no_longer_once_denied() {
    let srv = TestServer::start().await;
    let mut carol = srv.user("carol").await;
    let mut eve = srv.user("eve").await;
    eve.send("CONTACTS-ADD id=carol").await;
    assert_eq!(eve.line().await, "CONTACTS-ADD-OK id=carol@localhost");
    assert_eq!(carol.line().await, "PRESENCE-REQUEST from=eve@localhost");
    // Not approved: no presence in the list, in PROFILE-GET, nor pushed.
    eve.send("CONTACTS-GET").await;
    eve.expect("CONTACTS-GET-RESPONSE").await;
    assert_eq!(eve.list().await, vec!["id=carol@localhost name=carol"]);
    eve.send("PROFILE-GET id=carol").await;
    assert_eq!(eve.line().await, "PROFILE id=carol@localhost name= note=");
    let carol2 = srv.session("carol").await;
    drop(carol2);
    drop(carol);
    let mut carol = srv.session("carol").await;
    // The request is repeated at login until answered.
    assert_eq!(carol.line().await, "PRESENCE-REQUEST from=eve@localhost");
    nothing_arrived(&mut eve).await;
    // Approved: the current presence is pushed, then every change.
    approve(&mut carol, "eve").await;
    assert_eq!(eve.line().await, "CONTACT-UPDATED");
    assert_eq!(eve.list().await, vec!["id=carol@localhost presence=online"]);
    eve.send("PROFILE-GET id=carol").await;
    assert_eq!(
        eve.line().await,
        "PROFILE id=carol@localhost name= note= presence=online"
    );
    drop(carol);
    eve.expect("CONTACT-UPDATED").await;
    assert!(eve.list().await[0].starts_with("id=carol@localhost presence=20"));
    eve.expect("UPDATE-LAST-SEEN").await;
    let mut carol = srv.session("carol").await;
    eve.expect("CONTACT-UPDATED").await;
    assert_eq!(eve.list().await, vec!["id=carol@localhost presence=online"]);
    // Revoked: told once that it is hidden, then nothing more.
    carol.send("PRESENCE-DENY id=eve").await;
    assert_eq!(carol.line().await, "PRESENCE-DENY-OK id=eve@localhost");
    eve.expect("CONTACT-UPDATED").await;
    assert_eq!(eve.list().await, vec!["id=carol@localhost presence="]);
    drop(carol);
    let mut carol = srv.session("carol").await;
    // Her login's replay (pending presence requests: none) is done before eve asks again;
    // a request made while a login replays may reach that session twice (PROTOCOL §4.5).
    carol.sync().await;
    nothing_arrived(&mut eve).await;
    eve.send("PROFILE-GET id=carol").await;
    assert_eq!(eve.line().await, "PROFILE id=carol@localhost name= note=");
    // Deleting and adding again asks again; it does not bypass the denial.
    eve.send("CONTACTS-DELETE id=carol").await;
    eve.expect("CONTACTS-DELETE-OK").await;
    eve.send("CONTACTS-ADD id=carol").await;
    eve.expect("CONTACTS-ADD-OK").await;
    assert_eq!(carol.line().await, "PRESENCE-REQUEST from=eve@localhost");
    nothing_arrived(&mut eve).await;
    carol.send("PRESENCE-DENY id=nobody-asked").await;
    assert_eq!(
        carol.line().await,
        "PRESENCE-ANSWER-FAILED id=nobody-asked@localhost reason=not-found"
    );
    srv.stop().await;
}

#[tokio::test]
async fn mutual_contacts_see_each_other_without_a_separate_approval() {
    let srv = TestServer::start().await;
    let mut bob = srv.user("bob").await;
    let mut carol = srv.user("carol").await;
    // Carol's login replay is done before bob asks: a request made while a login replays may
    // reach that session twice (PROTOCOL §4.5).
    carol.sync().await;
    bob.send("CONTACTS-ADD id=carol").await;
    bob.expect("CONTACTS-ADD-OK").await;
    assert_eq!(carol.line().await, "PRESENCE-REQUEST from=bob@localhost");
    // Carol adds bob back: that approves bob, and bob pre-approved carol by adding her.
    carol.send("CONTACTS-ADD id=bob").await;
    carol.expect("CONTACTS-ADD-OK").await;
    assert_eq!(bob.line().await, "CONTACT-UPDATED");
    assert_eq!(bob.list().await, vec!["id=carol@localhost presence=online"]);
    carol.send("CONTACTS-GET").await;
    carol.expect("CONTACTS-GET-RESPONSE").await;
    assert_eq!(
        carol.list().await,
        vec!["id=bob@localhost name=bob presence=online"]
    );
    nothing_arrived(&mut bob).await;
    nothing_arrived(&mut carol).await;
    srv.stop().await;
}

#[tokio::test]
async fn last_seen_setting_everyone_contacts_nobody() {
    let srv = TestServer::start().await;
    let mut carol = srv.user("carol").await;
    let mut bob = srv.user("bob").await;
    let mut eve = srv.user("eve").await;
    bob.send("CONTACTS-ADD id=carol").await;
    bob.expect("CONTACTS-ADD-OK").await;
    carol.expect("PRESENCE-REQUEST").await;
    approve(&mut carol, "bob").await;
    bob.expect("CONTACT-UPDATED").await;
    bob.list().await;
    let profile = "PROFILE-GET id=carol";
    let with = "PROFILE id=carol@localhost name= note= presence=online";
    let without = "PROFILE id=carol@localhost name= note=";
    // contacts (default): bob yes, eve (a stranger) no.
    carol.send("PRIVACY-GET").await;
    assert_eq!(carol.line().await, "PRIVACY last-seen=contacts");
    assert!(carol.list().await.is_empty());
    for (c, want) in [(&mut bob, with), (&mut eve, without)] {
        c.send(profile).await;
        assert_eq!(c.line().await, want);
    }
    // everyone: eve too.
    carol.send("PRIVACY-SET last-seen=everyone").await;
    assert_eq!(carol.line().await, "PRIVACY-SET-OK last-seen=everyone");
    for (c, want) in [(&mut bob, with), (&mut eve, with)] {
        c.send(profile).await;
        assert_eq!(c.line().await, want);
    }
    // nobody: bob is told presence is hidden, and neither sees it nor gets pushes.
    carol.send("PRIVACY-SET last-seen=nobody").await;
    assert_eq!(carol.line().await, "PRIVACY-SET-OK last-seen=nobody");
    bob.expect("CONTACT-UPDATED").await;
    assert_eq!(bob.list().await, vec!["id=carol@localhost presence="]);
    for (c, want) in [(&mut bob, without), (&mut eve, without)] {
        c.send(profile).await;
        assert_eq!(c.line().await, want);
    }
    carol.send(profile).await;
    assert_eq!(carol.line().await, with);
    drop(carol);
    let mut carol = srv.session("carol").await;
    nothing_arrived(&mut bob).await;
    carol.send("PRIVACY-SET last-seen=sometimes").await;
    assert_eq!(
        carol.line().await,
        "ERROR-MALFORMED reason=bad-value detail=last-seen"
    );
    // Back to contacts: bob sees her again.
    carol.send("PRIVACY-SET last-seen=contacts").await;
    carol.expect("PRIVACY-SET-OK").await;
    bob.expect("CONTACT-UPDATED").await;
    assert_eq!(bob.list().await, vec!["id=carol@localhost presence=online"]);
    srv.stop().await;
}

#[tokio::test]
async fn a_blocked_user_reaches_nothing_and_sees_no_presence_until_unblocked() {
    let (relay, _) = fake_relay().await;
    let srv = TestServer::start_with(|c| {
        c.relays = vec![relay];
        c.relay_secret = msim_shared::token::generate_secret_text();
    })
    .await;
    let mut carol = srv.user("carol").await;
    let mut mallory = srv.user("mallory").await;
    mallory.send("CONTACTS-ADD id=carol").await;
    mallory.expect("CONTACTS-ADD-OK").await;
    carol.expect("PRESENCE-REQUEST").await;
    approve(&mut carol, "mallory").await;
    mallory.expect("CONTACT-UPDATED").await;
    assert_eq!(
        mallory.list().await,
        vec!["id=carol@localhost presence=online"]
    );

    carol.send("BLOCK id=mallory").await;
    assert_eq!(carol.line().await, "BLOCK-OK id=mallory@localhost");
    // Her presence is hidden from him, as after a denial.
    mallory.expect("CONTACT-UPDATED").await;
    assert_eq!(mallory.list().await, vec!["id=carol@localhost presence="]);
    // His message looks sent but never arrives, not even at her next login.
    mallory.send("MESSAGE to=carol text=hi ref=m").await;
    let sent = mallory.expect("MESSAGE-SENT").await;
    assert_eq!(field(&sent, "ref").unwrap(), "m");
    mallory.send("TYPING-STARTED to=carol").await;
    mallory
        .send("SEND-FILE-PROXY to=carol filename=x.bin size=10")
        .await;
    mallory.expect("SEND-FILE-PROXY-PENDING").await;
    mallory.send("PROFILE-GET id=carol").await;
    assert_eq!(
        mallory.line().await,
        "PROFILE id=carol@localhost name= note="
    );
    nothing_arrived(&mut carol).await;
    drop(carol);
    nothing_arrived(&mut mallory).await;
    let mut carol = srv.session("carol").await;
    nothing_arrived(&mut carol).await;
    carol.send("PRIVACY-GET").await;
    assert_eq!(carol.line().await, "PRIVACY last-seen=contacts");
    assert_eq!(carol.list().await, vec!["id=mallory@localhost"]);
    for (args, want) in [
        ("id=carol", "BLOCK-FAILED id=carol@localhost reason=self"),
        (
            "id=ghost",
            "BLOCK-FAILED id=ghost@localhost reason=unknown-user",
        ),
        ("id=a/b", "BLOCK-FAILED id=a/b reason=bad-address"),
    ] {
        carol.send(&format!("BLOCK {args}")).await;
        assert_eq!(carol.line().await, want);
    }

    // Unblocked: his presence approval is back, and his messages arrive again.
    carol.send("UNBLOCK id=mallory").await;
    assert_eq!(carol.line().await, "UNBLOCK-OK id=mallory@localhost");
    mallory.expect("CONTACT-UPDATED").await;
    assert_eq!(
        mallory.list().await,
        vec!["id=carol@localhost presence=online"]
    );
    mallory.send("MESSAGE to=carol text=sorry").await;
    mallory.expect("MESSAGE-SENT").await;
    let m = carol.expect("MESSAGE").await;
    assert_eq!(field(&m, "text").unwrap(), "sorry");
    mallory.send("TYPING-STARTED to=carol").await;
    assert_eq!(carol.line().await, "TYPING-STARTED from=mallory@localhost");
    carol.send("UNBLOCK id=mallory").await;
    assert_eq!(
        carol.line().await,
        "UNBLOCK-FAILED id=mallory@localhost reason=not-found"
    );
    srv.stop().await;
}

#[tokio::test]
async fn the_block_list_is_bounded() {
    let srv = TestServer::start_with(|c| c.max_blocks = 2).await;
    let mut carol = srv.user("carol").await;
    for u in ["user1", "user2", "user3"] {
        srv.user(u).await;
    }
    for u in ["user1", "user2"] {
        carol.send(&format!("BLOCK id={u}")).await;
        carol.expect("BLOCK-OK").await;
    }
    carol.send("BLOCK id=user3").await;
    assert_eq!(
        carol.line().await,
        "BLOCK-FAILED id=user3@localhost reason=too-many-blocks"
    );
    srv.stop().await;
}

/// A fake relay: answers every request with 200 (health checks).
async fn fake_relay() -> (String, tokio::task::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let resp = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok";
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    (url, task)
}

/// A client connecting from `source` (any 127.0.0.0/8 address is local on Linux).
async fn user_from(srv: &TestServer, source: &str, login: &str) -> Client {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(format!("{source}:0").parse().unwrap()).unwrap();
    let stream = sock.connect(srv.chat).await.unwrap();
    let mut c = Client::from_stream(stream);
    c.send(&format!("REGISTER login={login} password={PASSWORD}"))
        .await;
    c.expect("REGISTER-OK").await;
    c.login(login, PASSWORD).await;
    c
}

#[tokio::test]
async fn throwaway_accounts_cannot_reserve_unbounded_offers_from_one_address() {
    const GIB: u64 = 1 << 30;
    let (relay, _) = fake_relay().await;
    let srv = TestServer::start_with(|c| {
        c.relays = vec![relay];
        c.relay_secret = msim_shared::token::generate_secret_text();
        c.max_file_size = GIB;
        c.offer_quota.per_account = 8;
        c.offer_quota.bytes_per_account = 4 * GIB;
        c.offer_quota.per_address = 64;
        c.offer_quota.bytes_per_address = 6 * GIB;
    })
    .await;
    let mut victim = srv.user("victim").await;
    let offer = "SEND-FILE-PROXY to=victim filename=big.bin size=1073741824";
    // One account: four 1 GiB offers, then its byte quota is full.
    let mut a = user_from(&srv, "127.0.0.1", "throwaway0").await;
    for _ in 0..4 {
        a.send(offer).await;
        a.expect("SEND-FILE-PROXY-PENDING").await;
    }
    a.send(offer).await;
    let r = a.expect("SEND-FILE-PROXY-REJECTED").await;
    assert_eq!(field(&r, "reason").unwrap(), "offer-quota-exceeded");
    // More throwaway accounts on the same address: two more, then the address is full.
    let mut b = user_from(&srv, "127.0.0.1", "throwaway1").await;
    for _ in 0..2 {
        b.send(offer).await;
        b.expect("SEND-FILE-PROXY-PENDING").await;
    }
    for i in 2..5 {
        let mut c = user_from(&srv, "127.0.0.1", &format!("throwaway{i}")).await;
        c.send(offer).await;
        let r = c.expect("SEND-FILE-PROXY-REJECTED").await;
        assert_eq!(field(&r, "reason").unwrap(), "offer-quota-exceeded");
    }
    // Small offers still count: an account has at most 8 open ones.
    let mut d = user_from(&srv, "127.0.0.3", "photos").await;
    for i in 0..8 {
        d.send(&format!(
            "SEND-FILE-PROXY to=victim filename=p{i}.jpg size=1000"
        ))
        .await;
        d.expect("SEND-FILE-PROXY-PENDING").await;
    }
    d.send("SEND-FILE-PROXY to=victim filename=p8.jpg size=1000")
        .await;
    let r = d.expect("SEND-FILE-PROXY-REJECTED").await;
    assert_eq!(field(&r, "reason").unwrap(), "too-many-offers");
    // Another user elsewhere is unaffected.
    let mut alice = user_from(&srv, "127.0.0.2", "alice").await;
    alice.send(offer).await;
    alice.expect("SEND-FILE-PROXY-PENDING").await;
    // Answered offers stop counting: the victim rejects one, throwaway0 may offer again.
    let mut tid = None;
    while tid.is_none() {
        let l = victim.line().await;
        if l.starts_with("SEND-FILE-PROXY-REQUEST ")
            && field(&l, "from").unwrap() == "throwaway0@localhost"
        {
            tid = field(&l, "transfer-id");
        }
    }
    victim
        .send(&format!(
            "SEND-FILE-PROXY-REJECT transfer-id={}",
            tid.unwrap()
        ))
        .await;
    a.expect_skip("SEND-FILE-PROXY-REJECTED").await;
    a.send(offer).await;
    a.expect("SEND-FILE-PROXY-PENDING").await;
    srv.stop().await;
}

#[tokio::test]
async fn a_blocked_senders_offer_expires_unseen_like_an_ignored_one() {
    let (relay, _) = fake_relay().await;
    let srv = TestServer::start_with(|c| {
        c.relays = vec![relay];
        c.relay_secret = msim_shared::token::generate_secret_text();
        c.offer_ttl = std::time::Duration::from_secs(3600);
        c.offer_sweep_interval = std::time::Duration::from_millis(20);
    })
    .await;
    let mut carol = srv.user("carol").await;
    let mut mallory = srv.user("mallory").await;
    carol.send("BLOCK id=mallory").await;
    carol.expect("BLOCK-OK").await;
    mallory
        .send("SEND-FILE-PROXY to=carol filename=x.bin size=10")
        .await;
    let pending = mallory.expect("SEND-FILE-PROXY-PENDING").await;
    let tid = field(&pending, "transfer-id").unwrap();
    // Carol cannot answer what she never saw.
    carol
        .send(&format!("SEND-FILE-PROXY-ACCEPT transfer-id={tid}"))
        .await;
    assert_eq!(
        carol.line().await,
        format!("SEND-FILE-PROXY-ANSWER-FAILED transfer-id={tid} reason=already-answered")
    );
    srv.clock.advance(std::time::Duration::from_secs(3601));
    assert_eq!(
        mallory.line().await,
        format!("SEND-FILE-PROXY-REJECTED transfer-id={tid} reason=expired")
    );
    // The sweep ran (mallory was told); carol heard nothing of it.
    nothing_arrived(&mut carol).await;
    srv.stop().await;
}
