//! `SEND-FILE-PROXY-DONE` (PROTOCOL.md §10.6): a user who has handled a transfer stops the
//! replay of its stored results at later logins — its own only, never the other party's.

use crate::common;
use common::{field, TestServer};

async fn server() -> TestServer {
    TestServer::with_fake_relay().await
}

/// The first line a fresh session of `login` gets after a PING: its stored results come
/// before the answer (§4.5), so `PONG` first means nothing was stored.
async fn first_line_after_login(srv: &TestServer, login: &str) -> String {
    let mut s = srv.session(login).await;
    s.send("PING ref=sync").await;
    s.line().await
}

#[tokio::test]
async fn done_stops_the_replay_of_ones_own_stored_results_only() {
    let srv = server().await;
    let mut alice = srv.user("alice").await;
    let mut bob = srv.user("bob").await;
    let mut eve = srv.user("eve").await;
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

    // Stored: later logins of both get their result again.
    assert!(first_line_after_login(&srv, "alice")
        .await
        .starts_with("SEND-FILE-PROXY-OK "));
    assert!(first_line_after_login(&srv, "bob")
        .await
        .starts_with("SEND-FILE-PROXY-READY "));

    // A stranger's DONE is answered (idempotent) but forgets nothing of theirs.
    eve.send(&format!("SEND-FILE-PROXY-DONE transfer-id={tid} ref=e"))
        .await;
    assert_eq!(
        eve.line().await,
        format!("SEND-FILE-PROXY-DONE-OK transfer-id={tid} ref=e")
    );
    assert!(first_line_after_login(&srv, "alice")
        .await
        .starts_with("SEND-FILE-PROXY-OK "));

    // The sender's DONE forgets the sender's result, not the recipient's.
    alice
        .send(&format!("SEND-FILE-PROXY-DONE transfer-id={tid} ref=d1"))
        .await;
    assert_eq!(
        alice.line().await,
        format!("SEND-FILE-PROXY-DONE-OK transfer-id={tid} ref=d1")
    );
    assert_eq!(first_line_after_login(&srv, "alice").await, "PONG ref=sync");
    assert!(first_line_after_login(&srv, "bob")
        .await
        .starts_with("SEND-FILE-PROXY-READY "));

    // The recipient's DONE forgets its grant; a second DONE is answered the same way.
    for r in ["d2", "d3"] {
        bob.send(&format!("SEND-FILE-PROXY-DONE transfer-id={tid} ref={r}"))
            .await;
        assert_eq!(
            bob.line().await,
            format!("SEND-FILE-PROXY-DONE-OK transfer-id={tid} ref={r}")
        );
    }
    assert_eq!(first_line_after_login(&srv, "bob").await, "PONG ref=sync");

    // Without a transfer id it is malformed.
    bob.send("SEND-FILE-PROXY-DONE ref=m").await;
    assert!(bob.line().await.starts_with("ERROR-MALFORMED "));
}
