//! File negotiation (PROTOCOL.md §10) against fake relays answering `GET /healthz`.

use crate::common;
use common::{field, TestServer};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A fake relay: answers every request with `status`; counts requests.
async fn fake_relay(status: u16) -> (String, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let h = h.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let resp = format!(
                    "HTTP/1.1 {status} X\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
                );
                let _ = s.write_all(resp.as_bytes()).await;
                h.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    (url, hits)
}

#[tokio::test]
async fn offer_accept_reject_and_errors() {
    let (r1, _) = fake_relay(200).await;
    let (r2, _) = fake_relay(200).await;
    let relays = vec![r1.clone(), r2.clone()];
    let srv = TestServer::start_with(|c| {
        c.relays = relays;
        c.relay_secret = msim_shared::token::generate_secret_text();
        c.max_file_size = 1_000_000;
    })
    .await;
    let mut a = srv.user("alice").await;
    let mut b = srv.user("bob").await;
    let mut b2 = srv.session("bob").await;
    let sha = "ab".repeat(32);
    let mut urls = Vec::new();
    for i in 0..2 {
        a.send(&format!(
            "SEND-FILE-PROXY to=bob filename=../cat{i}.jpg size=128000 sha256={sha} mime=image/jpeg ref=f{i}"
        ))
        .await;
        let pending = a.expect("SEND-FILE-PROXY-PENDING").await;
        let tid = field(&pending, "transfer-id").unwrap();
        assert_eq!(field(&pending, "to").unwrap(), "bob@localhost");
        assert_eq!(field(&pending, "ref").unwrap(), format!("f{i}"));
        for c in [&mut b, &mut b2] {
            let req = c.expect("SEND-FILE-PROXY-REQUEST").await;
            assert_eq!(field(&req, "transfer-id").unwrap(), tid);
            assert_eq!(field(&req, "filename").unwrap(), format!("cat{i}.jpg"));
            assert_eq!(field(&req, "from").unwrap(), "alice@localhost");
            assert_eq!(field(&req, "size").unwrap(), "128000");
            assert_eq!(field(&req, "sha256").unwrap(), sha);
            assert_eq!(field(&req, "mime").unwrap(), "image/jpeg");
        }
        // Only the recipient may answer.
        a.send(&format!("SEND-FILE-PROXY-ACCEPT transfer-id={tid}"))
            .await;
        assert_eq!(
            a.line().await,
            format!("SEND-FILE-PROXY-ANSWER-FAILED transfer-id={tid} reason=not-recipient")
        );
        b.send(&format!("SEND-FILE-PROXY-ACCEPT transfer-id={tid}"))
            .await;
        let ok = a.expect("SEND-FILE-PROXY-OK").await;
        let url = field(&ok, "url").unwrap();
        assert!(url.ends_with(&format!("/v1/transfers/{tid}")));
        assert!(field(&ok, "token").unwrap().starts_with("v1."));
        assert_eq!(field(&ok, "connect").unwrap(), "127.0.0.1");
        for c in [&mut b, &mut b2] {
            let ready = c.expect("SEND-FILE-PROXY-READY").await;
            assert_eq!(field(&ready, "url").unwrap(), url);
            assert_ne!(field(&ready, "token"), field(&ok, "token"));
            assert_eq!(field(&ready, "from").unwrap(), "alice@localhost");
        }
        b.send(&format!("SEND-FILE-PROXY-REJECT transfer-id={tid}"))
            .await;
        assert_eq!(
            b.line().await,
            format!("SEND-FILE-PROXY-ANSWER-FAILED transfer-id={tid} reason=already-answered")
        );
        urls.push(url);
    }
    // Round robin: both relays were used.
    assert!(
        urls.iter().any(|u| u.starts_with(&r1)),
        "{urls:?} {r1} {r2}"
    );
    assert!(
        urls.iter().any(|u| u.starts_with(&r2)),
        "{urls:?} {r1} {r2}"
    );

    // Reject.
    a.send("SEND-FILE-PROXY to=bob filename=x.png size=1").await;
    let tid = field(&a.expect("SEND-FILE-PROXY-PENDING").await, "transfer-id").unwrap();
    b.expect("SEND-FILE-PROXY-REQUEST").await;
    b2.expect("SEND-FILE-PROXY-REQUEST").await;
    b2.send(&format!("SEND-FILE-PROXY-REJECT transfer-id={tid}"))
        .await;
    assert_eq!(
        a.line().await,
        format!("SEND-FILE-PROXY-REJECTED transfer-id={tid} reason=rejected")
    );
    b.send("SEND-FILE-PROXY-ACCEPT transfer-id=nope").await;
    assert_eq!(
        b.line().await,
        "SEND-FILE-PROXY-ANSWER-FAILED transfer-id=nope reason=unknown-transfer"
    );
    // Validation failures.
    for (args, reason) in [
        ("to=ghost filename=a size=1", "unknown-recipient"),
        ("to=bob filename=a size=1000001", "file-too-large"),
        ("to=bob filename=../ size=1", "bad-filename"),
        ("to=bad/x filename=a size=1", "bad-address"),
        ("to=bob@far.org filename=a size=1", "federation-disabled"),
    ] {
        a.send(&format!("SEND-FILE-PROXY {args}")).await;
        let l = a.expect("SEND-FILE-PROXY-REJECTED").await;
        assert_eq!(field(&l, "reason").unwrap(), reason, "{args}");
    }
    a.send("SEND-FILE-PROXY to=bob filename=a size=-1").await;
    assert_eq!(
        a.line().await,
        "ERROR-MALFORMED reason=bad-value detail=size"
    );
    a.send("SEND-FILE-PROXY to=bob filename=a size=1 sha256=xyz")
        .await;
    assert_eq!(
        a.line().await,
        "ERROR-MALFORMED reason=bad-value detail=sha256"
    );
    srv.stop().await;
}

#[tokio::test]
async fn offline_offer_and_expiry() {
    let (r1, _) = fake_relay(200).await;
    let srv = TestServer::start_with(|c| {
        c.relays = vec![r1];
        c.relay_secret = msim_shared::token::generate_secret_text();
        c.offer_ttl = Duration::from_secs(3600);
        c.offer_sweep_interval = Duration::from_millis(20);
    })
    .await;
    let mut a = srv.user("alice").await;
    drop(srv.user("bob").await);
    a.send("SEND-FILE-PROXY to=bob filename=cat.jpg size=10")
        .await;
    let tid = field(&a.expect("SEND-FILE-PROXY-PENDING").await, "transfer-id").unwrap();
    let mut b = srv.session("bob").await;
    let req = b.expect("SEND-FILE-PROXY-REQUEST").await;
    assert_eq!(field(&req, "transfer-id").unwrap(), tid);
    srv.clock.advance(Duration::from_secs(3601));
    assert_eq!(
        a.expect_skip("SEND-FILE-PROXY-REJECTED").await,
        format!("SEND-FILE-PROXY-REJECTED transfer-id={tid} reason=expired")
    );
    b.expect_skip("SEND-FILE-PROXY-REJECTED").await;
    b.send(&format!("SEND-FILE-PROXY-ACCEPT transfer-id={tid}"))
        .await;
    assert_eq!(
        b.line().await,
        format!("SEND-FILE-PROXY-ANSWER-FAILED transfer-id={tid} reason=expired")
    );
    // An expired offer is not shown at login.
    drop(b);
    let mut b = srv.session("bob").await;
    b.send("PING ref=p").await;
    assert_eq!(b.line().await, "PONG ref=p");
    srv.stop().await;
}

#[tokio::test]
async fn unhealthy_relay_gets_no_transfers() {
    let (good, _) = fake_relay(200).await;
    let (bad, bad_hits) = fake_relay(503).await;
    let relays = vec![good.clone(), bad];
    let srv = TestServer::start_with(|c| {
        c.relays = relays;
        c.relay_secret = msim_shared::token::generate_secret_text();
        c.relay_health_interval = Duration::from_millis(20);
    })
    .await;
    let mut a = srv.user("alice").await;
    let mut b = srv.user("bob").await;
    // Two checks of the bad relay means the first result is recorded.
    while bad_hits.load(Ordering::SeqCst) < 2 {
        a.sync().await;
    }
    for _ in 0..4 {
        a.send("SEND-FILE-PROXY to=bob filename=f size=1").await;
        let tid = field(&a.expect("SEND-FILE-PROXY-PENDING").await, "transfer-id").unwrap();
        b.expect("SEND-FILE-PROXY-REQUEST").await;
        b.send(&format!("SEND-FILE-PROXY-ACCEPT transfer-id={tid}"))
            .await;
        let ok = a.expect("SEND-FILE-PROXY-OK").await;
        assert!(field(&ok, "url").unwrap().starts_with(&good));
        b.expect("SEND-FILE-PROXY-READY").await;
    }
    srv.stop().await;

    // No relay at all.
    let srv = TestServer::start().await;
    let mut a = srv.user("alice").await;
    let _b = srv.user("bob").await;
    a.send("SEND-FILE-PROXY to=bob filename=f size=1").await;
    let l = a.expect("SEND-FILE-PROXY-REJECTED").await;
    assert_eq!(field(&l, "reason").unwrap(), "no-relay");
    srv.stop().await;
}

/// `--relay PUBLIC=INTERNAL`: clients get the public URL, health checks go to the internal one
/// (a relay inside a compose network, published on another name and port).
#[tokio::test]
async fn relay_public_url_is_handed_out_internal_url_is_checked() {
    let (internal, hits) = fake_relay(200).await;
    // Nothing listens there; only a client outside would reach it.
    let public = "http://relay1.public.example:8215";
    let srv = TestServer::start_with(move |c| {
        c.relays = vec![format!("{public}={internal}")];
        c.relay_secret = msim_shared::token::generate_secret_text();
        c.relay_health_interval = Duration::from_millis(20);
    })
    .await;
    let mut a = srv.user("alice").await;
    let mut b = srv.user("bob").await;
    // Two checks of the internal URL: the first result is recorded, and it passed.
    while hits.load(Ordering::SeqCst) < 2 {
        a.sync().await;
    }
    a.send("SEND-FILE-PROXY to=bob filename=f size=1").await;
    let tid = field(&a.expect("SEND-FILE-PROXY-PENDING").await, "transfer-id").unwrap();
    b.expect("SEND-FILE-PROXY-REQUEST").await;
    b.send(&format!("SEND-FILE-PROXY-ACCEPT transfer-id={tid}"))
        .await;
    let ok = a.expect("SEND-FILE-PROXY-OK").await;
    assert_eq!(
        field(&ok, "url").unwrap(),
        format!("{public}/v1/transfers/{tid}")
    );
    let ready = b.expect("SEND-FILE-PROXY-READY").await;
    assert!(ready.contains(public), "{ready}");
    srv.stop().await;

    assert!(msim_chat::relays::RelayPool::new(&["http://a:1=ftp://b:2".to_owned()]).is_err());
}

/// PROTOCOL.md §10.6: results of an offer reach sessions that were offline when they happened.
#[tokio::test]
async fn offline_sender_gets_the_result_at_login() {
    let (r1, _) = fake_relay(200).await;
    let secret = msim_shared::token::generate_secret_text();
    let keyring = msim_shared::token::Keyring::from_secret_text(&secret).unwrap();
    let relays = vec![r1.clone()];
    let srv = TestServer::start_with(move |c| {
        c.relays = relays;
        c.relay_secret = secret;
        c.offer_ttl = Duration::from_secs(3600);
        c.offer_sweep_interval = Duration::from_millis(20);
    })
    .await;
    drop(srv.user("alice").await);
    let mut b = srv.user("bob").await;
    let offer = |name: &'static str| {
        let srv = &srv;
        async move {
            let mut a = srv.session("alice").await;
            a.send(&format!("SEND-FILE-PROXY to=bob filename={name} size=10"))
                .await;
            // (Earlier results are repeated at each login, §10.6.)
            let pending = a.expect_skip("SEND-FILE-PROXY-PENDING").await;
            let tid = field(&pending, "transfer-id").unwrap();
            // The sender goes offline before the offer is answered.
            drop(a);
            tid
        }
    };

    // Accepted while the sender is offline: OK with a working upload token at login.
    let accepted = offer("a.jpg").await;
    b.expect_skip("SEND-FILE-PROXY-REQUEST").await;
    b.send(&format!("SEND-FILE-PROXY-ACCEPT transfer-id={accepted}"))
        .await;
    let ready = b.expect("SEND-FILE-PROXY-READY").await;
    let mut a = srv.session("alice").await;
    let ok = a.expect_skip("SEND-FILE-PROXY-OK").await;
    assert_eq!(field(&ok, "transfer-id").unwrap(), accepted);
    let url = field(&ok, "url").unwrap();
    assert_eq!(url, format!("{r1}/v1/transfers/{accepted}"));
    assert_eq!(field(&ready, "url").unwrap(), url);
    assert_eq!(field(&ok, "connect").unwrap(), "127.0.0.1");
    let now = (srv.clock.now_micros() / 1_000_000) as u64;
    let cap = keyring
        .verify(&field(&ok, "token").unwrap(), now)
        .expect("the stored upload token verifies");
    assert_eq!(cap.transfer_id, accepted);
    assert_eq!(cap.direction, msim_shared::token::Direction::Upload);
    assert_eq!(cap.size, 10);
    // A recipient session that was offline during the acceptance gets READY with a download
    // token.
    let mut b2 = srv.session("bob").await;
    let ready2 = b2.expect_skip("SEND-FILE-PROXY-READY").await;
    assert_eq!(ready2, ready);
    let cap = keyring
        .verify(&field(&ready2, "token").unwrap(), now)
        .expect("the stored download token verifies");
    assert_eq!(cap.direction, msim_shared::token::Direction::Download);
    drop(b2);
    drop(a);

    // Rejected while the sender is offline.
    let rejected = offer("r.jpg").await;
    b.expect_skip("SEND-FILE-PROXY-REQUEST").await;
    b.send(&format!("SEND-FILE-PROXY-REJECT transfer-id={rejected}"))
        .await;
    b.sync().await;
    let mut a = srv.session("alice").await;
    let want = format!("SEND-FILE-PROXY-REJECTED transfer-id={rejected} reason=rejected");
    assert_eq!(a.expect_skip("SEND-FILE-PROXY-REJECTED").await, want);
    drop(a);

    // Expired while the sender is offline (the sender's result is stored before the recipient
    // is told).
    let expired = offer("e.jpg").await;
    b.expect_skip("SEND-FILE-PROXY-REQUEST").await;
    srv.clock.advance(Duration::from_secs(3601));
    let want = format!("SEND-FILE-PROXY-REJECTED transfer-id={expired} reason=expired");
    assert_eq!(b.expect_skip("SEND-FILE-PROXY-REJECTED").await, want);
    let mut a = srv.session("alice").await;
    loop {
        let l = a.expect_skip("SEND-FILE-PROXY-REJECTED").await;
        if l == want {
            break;
        }
    }
    srv.stop().await;
}
