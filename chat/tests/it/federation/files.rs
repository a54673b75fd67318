//! File offers across servers (PROTOCOL.md §12.10): the offer crosses, the recipient accepts on
//! its server, and gets a download grant for the sender's relay that a real client uses; the
//! token is good for that transfer only. Rejection, refusal and expiry cross too.

use super::dns::TestDns;
use super::Fed;
use crate::common::{field, Client};
use msim::{Transfer, TransferOptions};
use std::time::Duration;

/// Offers `size` bytes to `to`; returns the transfer id from `SEND-FILE-PROXY-PENDING`.
async fn offer(c: &mut Client, to: &str, name: &str, size: usize, sha: &str) -> String {
    c.send(&format!(
        "SEND-FILE-PROXY to={to} filename={name} size={size} sha256={sha} mime=application/octet-stream"
    ))
    .await;
    let l = c
        .expect_skip_any(&["SEND-FILE-PROXY-PENDING", "SEND-FILE-PROXY-REJECTED"])
        .await;
    assert!(l.starts_with("SEND-FILE-PROXY-PENDING "), "{l}");
    assert_eq!(field(&l, "to").as_deref(), Some(to));
    field(&l, "transfer-id").unwrap()
}

/// The next line starting with `verb` whose `transfer-id` is `tid`.
async fn expect_for(c: &mut Client, verb: &str, tid: &str) -> String {
    loop {
        let l = c.expect_skip(verb).await;
        if field(&l, "transfer-id").as_deref() == Some(tid) {
            return l;
        }
    }
}

fn transfer(grant: &str, size: usize) -> Transfer {
    Transfer {
        url: field(grant, "url").unwrap(),
        token: field(grant, "token").unwrap(),
        size: size as u64,
    }
}

fn once() -> TransferOptions {
    TransferOptions {
        attempts: 1,
        timeout: Duration::from_secs(10),
        ..TransferOptions::default()
    }
}

#[tokio::test]
async fn a_file_crosses_servers_and_is_downloaded_intact_from_the_senders_relay() {
    let dns = TestDns::start().await;
    let a = Fed::start_with_relay(&dns, "a.test", |_| {}).await;
    let b = Fed::start(&dns, "b.test", |_| {}).await;
    let mut alice = a.user("alice").await;
    let mut bob = b.user("bob").await;
    let data = msim_testkit::pseudo_random_bytes(300_000, 7);
    let sha = msim_testkit::sha256_hex(&data);
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("report.bin");
    std::fs::write(&src, &data).unwrap();

    let tid = offer(&mut alice, "bob@b.test", "report.bin", data.len(), &sha).await;
    let req = expect_for(&mut bob, "SEND-FILE-PROXY-REQUEST", &tid).await;
    assert_eq!(field(&req, "from").as_deref(), Some("alice@a.test"));
    assert_eq!(field(&req, "filename").as_deref(), Some("report.bin"));
    assert_eq!(field(&req, "size"), Some(data.len().to_string()));
    assert_eq!(field(&req, "sha256").as_deref(), Some(sha.as_str()));

    bob.send(&format!("SEND-FILE-PROXY-ACCEPT transfer-id={tid}"))
        .await;
    let ok = expect_for(&mut alice, "SEND-FILE-PROXY-OK", &tid).await;
    let ready = expect_for(&mut bob, "SEND-FILE-PROXY-READY", &tid).await;
    assert_eq!(field(&ready, "from").as_deref(), Some("alice@a.test"));
    assert_eq!(field(&ready, "sha256").as_deref(), Some(sha.as_str()));
    // The download is on the sender's relay, the one alice uploads to.
    assert_eq!(field(&ready, "url"), field(&ok, "url"));
    assert_eq!(
        field(&ready, "port"),
        Some(a.server.relays[0].port().to_string())
    );

    msim::transfer::upload(&transfer(&ok, data.len()), &src, None, &once())
        .await
        .expect("upload");
    let dest = dir.path().join("downloaded.bin");
    msim::transfer::download(
        &transfer(&ready, data.len()),
        &dest,
        Some(&sha),
        None,
        &once(),
    )
    .await
    .expect("download, verified");
    assert_eq!(
        msim_testkit::sha256_file_hex(&dest).unwrap(),
        sha,
        "downloaded intact"
    );

    // The token is for that transfer only: not for alice's next file, not for uploading.
    let tid2 = offer(&mut alice, "bob@b.test", "second.bin", data.len(), &sha).await;
    expect_for(&mut bob, "SEND-FILE-PROXY-REQUEST", &tid2).await;
    bob.send(&format!("SEND-FILE-PROXY-ACCEPT transfer-id={tid2}"))
        .await;
    let ready2 = expect_for(&mut bob, "SEND-FILE-PROXY-READY", &tid2).await;
    let mut stolen = transfer(&ready, data.len());
    stolen.url = field(&ready2, "url").unwrap();
    let other = dir.path().join("other.bin");
    let refused = |r: Result<(), msim::ClientError>| match r {
        Err(msim::ClientError::RelayStatus { status, .. }) => status,
        other => panic!("expected a refusal by the relay, got {other:?}"),
    };
    let status = refused(
        msim::transfer::download(&stolen, &other, None, None, &once())
            .await
            .map(drop),
    );
    assert_eq!(status, 403, "a download token opened another transfer");
    let status = refused(
        msim::transfer::upload(&transfer(&ready, data.len()), &src, None, &once())
            .await
            .map(drop),
    );
    assert_eq!(status, 403, "a download token uploaded");
}

#[tokio::test]
async fn rejection_refusal_and_expiry_cross_servers() {
    let dns = TestDns::start().await;
    let fast = |c: &mut msim_chat::Config| c.offer_sweep_interval = Duration::from_millis(50);
    let a = Fed::start_with_relay(&dns, "a.test", fast).await;
    let b = Fed::start(&dns, "b.test", fast).await;
    let mut alice = a.user("alice").await;
    let mut bob = b.user("bob").await;
    let sha = "ab".repeat(32);

    // Bob declines: alice is told.
    let tid = offer(&mut alice, "bob@b.test", "no.bin", 1000, &sha).await;
    expect_for(&mut bob, "SEND-FILE-PROXY-REQUEST", &tid).await;
    bob.send(&format!("SEND-FILE-PROXY-REJECT transfer-id={tid}"))
        .await;
    let r = expect_for(&mut alice, "SEND-FILE-PROXY-REJECTED", &tid).await;
    assert_eq!(field(&r, "reason").as_deref(), Some("rejected"));
    // Answering twice is refused on bob's server, as for a local offer.
    bob.send(&format!("SEND-FILE-PROXY-ACCEPT transfer-id={tid}"))
        .await;
    let f = expect_for(&mut bob, "SEND-FILE-PROXY-ANSWER-FAILED", &tid).await;
    assert_eq!(field(&f, "reason").as_deref(), Some("already-answered"));

    // No such user on b.test: the refusal comes back to alice.
    let tid = offer(&mut alice, "nobody@b.test", "x.bin", 1000, &sha).await;
    let r = expect_for(&mut alice, "SEND-FILE-PROXY-REJECTED", &tid).await;
    assert_eq!(field(&r, "reason").as_deref(), Some("unknown-recipient"));

    // Unanswered: both servers expire it at the offer's time and tell their user.
    let tid = offer(&mut alice, "bob@b.test", "late.bin", 1000, &sha).await;
    expect_for(&mut bob, "SEND-FILE-PROXY-REQUEST", &tid).await;
    let ttl = Duration::from_secs(24 * 3600 + 1);
    a.server.clock.advance(ttl);
    b.server.clock.advance(ttl);
    let r = expect_for(&mut alice, "SEND-FILE-PROXY-REJECTED", &tid).await;
    assert_eq!(field(&r, "reason").as_deref(), Some("expired"));
    let r = expect_for(&mut bob, "SEND-FILE-PROXY-REJECTED", &tid).await;
    assert_eq!(field(&r, "reason").as_deref(), Some("expired"));
    bob.send(&format!("SEND-FILE-PROXY-ACCEPT transfer-id={tid}"))
        .await;
    let f = expect_for(&mut bob, "SEND-FILE-PROXY-ANSWER-FAILED", &tid).await;
    assert_eq!(field(&f, "reason").as_deref(), Some("expired"));
}

#[tokio::test]
async fn a_remote_offer_cannot_be_accepted_once_federation_is_off() {
    let dns = TestDns::start().await;
    let a = Fed::start_with_relay(&dns, "a.test", |_| {}).await;
    let b = Fed::start(&dns, "b.test", |_| {}).await;
    let mut alice = a.user("alice").await;
    let mut bob = b.user("bob").await;
    let tid = offer(&mut alice, "bob@b.test", "x.bin", 1000, &"ab".repeat(32)).await;
    expect_for(&mut bob, "SEND-FILE-PROXY-REQUEST", &tid).await;
    drop(bob);
    let (dir, port) = b.stop().await;
    let off = |c: &mut msim_chat::Config| c.federation.mode = msim_chat::federation::Mode::Off;
    let b = Fed::start_in(&dns, "b.test", dir, port, off).await;
    let mut bob = b.session("bob").await;
    bob.send(&format!("SEND-FILE-PROXY-ACCEPT transfer-id={tid}"))
        .await;
    // Not granted from b.test's own relays: the file is on a.test's.
    let f = expect_for(&mut bob, "SEND-FILE-PROXY-ANSWER-FAILED", &tid).await;
    assert_eq!(field(&f, "reason").as_deref(), Some("federation-disabled"));
}
