//! `SEND-FILE-PROXY-HASH` (PROTOCOL.md §10.7): the sender of a file offered without a SHA-256
//! declares it after its upload; only the sender, only for its accepted offer, only once; the
//! recipient gets it live on every session and again at later logins.

use crate::common;
use common::{field, TestServer};

async fn server() -> TestServer {
    TestServer::with_fake_relay().await
}

#[tokio::test]
async fn only_the_sender_declares_the_hash_of_its_accepted_offer_once() {
    let srv = server().await;
    let mut alice = srv.user("alice").await;
    let mut bob = srv.user("bob").await;
    let mut bob2 = srv.session("bob").await;
    let mut eve = srv.user("eve").await;
    let sha = "c0".repeat(32);

    alice
        .send("SEND-FILE-PROXY to=bob filename=big.iso size=100000000 ref=o1")
        .await;
    let tid = field(
        &alice.expect("SEND-FILE-PROXY-PENDING").await,
        "transfer-id",
    )
    .unwrap();
    let req = bob.expect("SEND-FILE-PROXY-REQUEST").await;
    assert_eq!(field(&req, "sha256"), None);
    bob2.expect("SEND-FILE-PROXY-REQUEST").await;

    // Not before the recipient accepted (no upload can have happened).
    alice
        .send(&format!(
            "SEND-FILE-PROXY-HASH transfer-id={tid} sha256={sha} ref=h0"
        ))
        .await;
    assert_eq!(
        alice.line().await,
        format!("SEND-FILE-PROXY-HASH-FAILED transfer-id={tid} reason=not-accepted ref=h0")
    );

    bob.send(&format!("SEND-FILE-PROXY-ACCEPT transfer-id={tid}"))
        .await;
    alice.expect("SEND-FILE-PROXY-OK").await;
    let ready = bob.expect("SEND-FILE-PROXY-READY").await;
    assert_eq!(field(&ready, "sha256"), None);
    bob2.expect("SEND-FILE-PROXY-READY").await;

    // Neither the recipient nor a stranger may declare it; an unknown id is unknown; a
    // malformed hash is malformed.
    bob.send(&format!(
        "SEND-FILE-PROXY-HASH transfer-id={tid} sha256={sha} ref=h1"
    ))
    .await;
    assert_eq!(
        bob.line().await,
        format!("SEND-FILE-PROXY-HASH-FAILED transfer-id={tid} reason=not-sender ref=h1")
    );
    eve.send(&format!(
        "SEND-FILE-PROXY-HASH transfer-id={tid} sha256={sha} ref=h2"
    ))
    .await;
    assert_eq!(
        eve.line().await,
        format!("SEND-FILE-PROXY-HASH-FAILED transfer-id={tid} reason=not-sender ref=h2")
    );
    alice
        .send(&format!(
            "SEND-FILE-PROXY-HASH transfer-id=nope sha256={sha} ref=h3"
        ))
        .await;
    assert_eq!(
        alice.line().await,
        "SEND-FILE-PROXY-HASH-FAILED transfer-id=nope reason=unknown-transfer ref=h3"
    );
    alice
        .send(&format!(
            "SEND-FILE-PROXY-HASH transfer-id={tid} sha256=xyz ref=h4"
        ))
        .await;
    assert_eq!(
        alice.line().await,
        "ERROR-MALFORMED reason=bad-value detail=sha256 ref=h4"
    );

    // The sender declares it (upper case is made canonical): every session of the
    // recipient gets it.
    let upper = sha.to_ascii_uppercase();
    alice
        .send(&format!(
            "SEND-FILE-PROXY-HASH transfer-id={tid} sha256={upper} ref=h5"
        ))
        .await;
    assert_eq!(
        alice.line().await,
        format!("SEND-FILE-PROXY-HASH-OK transfer-id={tid} ref=h5")
    );
    let pushed = format!("SEND-FILE-PROXY-HASH transfer-id={tid} sha256={sha}");
    assert_eq!(bob.line().await, pushed);
    assert_eq!(bob2.line().await, pushed);

    // Once: a second declaration (another value) is refused and changes nothing.
    let other = "0d".repeat(32);
    alice
        .send(&format!(
            "SEND-FILE-PROXY-HASH transfer-id={tid} sha256={other} ref=h6"
        ))
        .await;
    assert_eq!(
        alice.line().await,
        format!("SEND-FILE-PROXY-HASH-FAILED transfer-id={tid} reason=already-hashed ref=h6")
    );

    // A session that logs in later gets the grant and the hash (§10.6), after the grant.
    let mut bob3 = srv.session("bob").await;
    bob3.expect_skip("SEND-FILE-PROXY-READY").await;
    assert_eq!(bob3.expect_skip("SEND-FILE-PROXY-HASH").await, pushed);
    // Nothing else was pushed to the first sessions (the refused declaration included).
    for c in [&mut bob, &mut bob2] {
        c.send("PING ref=sync").await;
        assert_eq!(c.line().await, "PONG ref=sync");
    }
}

#[tokio::test]
async fn an_offer_that_carried_its_hash_cannot_get_another() {
    let srv = server().await;
    let mut alice = srv.user("alice").await;
    let mut bob = srv.user("bob").await;
    let sha = "ab".repeat(32);
    alice
        .send(&format!(
            "SEND-FILE-PROXY to=bob filename=a.jpg size=1000 sha256={sha}"
        ))
        .await;
    let tid = field(
        &alice.expect("SEND-FILE-PROXY-PENDING").await,
        "transfer-id",
    )
    .unwrap();
    bob.expect("SEND-FILE-PROXY-REQUEST").await;
    bob.send(&format!("SEND-FILE-PROXY-ACCEPT transfer-id={tid}"))
        .await;
    alice.expect("SEND-FILE-PROXY-OK").await;
    bob.expect("SEND-FILE-PROXY-READY").await;
    let other = "cd".repeat(32);
    alice
        .send(&format!(
            "SEND-FILE-PROXY-HASH transfer-id={tid} sha256={other} ref=h"
        ))
        .await;
    assert_eq!(
        alice.line().await,
        format!("SEND-FILE-PROXY-HASH-FAILED transfer-id={tid} reason=already-hashed ref=h")
    );
    bob.send("PING ref=sync").await;
    assert_eq!(bob.line().await, "PONG ref=sync");
}
