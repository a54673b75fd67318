//! The login backlog (PROTOCOL.md §4.5): everything stored for a user while it was offline
//! comes right after `CONNECT-OK`, in the order of the specification, before the answer to
//! the first request (msim-chat reads the parts at once; the order must not depend on which
//! read finishes first).

use crate::common;
use common::{field, TestServer};

async fn server() -> TestServer {
    TestServer::with_fake_relay().await
}

#[tokio::test]
async fn every_part_of_the_backlog_comes_in_the_specified_order_before_the_first_answer() {
    let srv = server().await;
    let mut alice = srv.user("alice").await;
    let mut carol = srv.user("carol").await;
    let mut bob = srv.user("bob").await;
    // Carol watches bob's presence (bob has her in his list: approved at once), so she sees
    // when the server has him offline.
    bob.send("CONTACTS-ADD id=carol ref=c").await;
    bob.expect_skip("CONTACTS-ADD-OK").await;
    carol.send("CONTACTS-ADD id=bob ref=c").await;
    carol.expect_skip("CONTACTS-ADD-OK").await;

    // Bob, online: a message to carol (read later) and an offer to carol (rejected later).
    bob.send("MESSAGE to=carol text=hello ref=m").await;
    let read_id = field(&bob.expect_skip("MESSAGE-SENT").await, "id").unwrap();
    bob.send("SEND-FILE-PROXY to=carol filename=b.jpg size=10 ref=o")
        .await;
    let rejected = field(&bob.expect("SEND-FILE-PROXY-PENDING").await, "transfer-id").unwrap();
    bob.sync().await;
    carol.expect_skip("MESSAGE").await;
    carol.expect_skip("SEND-FILE-PROXY-REQUEST").await;
    drop(bob);
    // Bob is offline once carol hears so (her read receipt is then stored for him).
    let last_seen = carol.expect_skip("UPDATE-LAST-SEEN").await;
    assert_eq!(field(&last_seen, "id").unwrap(), "bob@localhost");

    // While bob is offline, one item of each kind is stored for him.
    carol.send(&format!("MESSAGE-READ id={read_id}")).await;
    carol
        .send(&format!("SEND-FILE-PROXY-REJECT transfer-id={rejected}"))
        .await;
    carol.sync().await;
    alice.send("MESSAGE to=bob text=while-away ref=a1").await;
    alice.expect("MESSAGE-SENT").await;
    alice
        .send("SEND-FILE-PROXY to=bob filename=a.jpg size=10 ref=a2")
        .await;
    let offered = field(
        &alice.expect("SEND-FILE-PROXY-PENDING").await,
        "transfer-id",
    )
    .unwrap();
    alice.send("CONTACTS-ADD id=bob ref=a3").await;
    alice.expect_skip("CONTACTS-ADD-OK").await;
    alice.sync().await;

    let mut bob = srv.session("bob").await;
    bob.send("PING ref=after").await;
    let mut verbs = Vec::new();
    loop {
        let line = bob.line().await;
        let verb = line.split(' ').next().unwrap().to_owned();
        match verb.as_str() {
            "MESSAGE" => assert_eq!(field(&line, "text").unwrap(), "while-away"),
            "MESSAGE-READ" => assert_eq!(field(&line, "id").unwrap(), read_id),
            "SEND-FILE-PROXY-REQUEST" => {
                assert_eq!(field(&line, "transfer-id").unwrap(), offered)
            }
            "SEND-FILE-PROXY-REJECTED" => {
                assert_eq!(field(&line, "transfer-id").unwrap(), rejected)
            }
            "PRESENCE-REQUEST" => assert_eq!(field(&line, "from").unwrap(), "alice@localhost"),
            "PONG" => break,
            other => panic!("unexpected {other}: {line}"),
        }
        verbs.push(verb);
    }
    assert_eq!(
        verbs,
        [
            "MESSAGE",
            "MESSAGE-READ",
            "SEND-FILE-PROXY-REQUEST",
            "SEND-FILE-PROXY-REJECTED",
            "PRESENCE-REQUEST",
        ]
    );
    srv.stop().await;
}
