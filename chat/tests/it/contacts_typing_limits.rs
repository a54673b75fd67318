//! Per-user and per-session limits of PROTOCOL.md (§8.3 contact limit, §6 the 64 typing peers)
//! and §9.1's rule that a new display name is pushed only to watchers whose name for the user is
//! defaulted. Real server on 127.0.0.1:0, raw line clients.

use crate::common;
use common::{Client, TestServer};
use std::time::Duration;

/// The records of the next `CONTACT-UPDATED` that says more than presence (presence pushes
/// depend on the presence rules, which are not what these tests are about).
async fn next_update(c: &mut Client) -> Vec<String> {
    loop {
        c.expect_skip("CONTACT-UPDATED").await;
        let records: Vec<String> = c
            .list()
            .await
            .into_iter()
            .filter(|r| {
                r.split(' ')
                    .any(|f| !(f.starts_with("id=") || f.starts_with("presence=")))
            })
            .collect();
        if !records.is_empty() {
            return records;
        }
    }
}

#[tokio::test]
async fn contact_list_is_limited_to_max_contacts() {
    // The documented default (PROTOCOL.md §2 limits, §8.3).
    assert_eq!(msim_chat::Config::default().max_contacts, 1_000);
    let srv = TestServer::start_with(|c| c.max_contacts = 3).await;
    let mut a = srv.user("alice").await;
    let mut other = srv.session("alice").await;
    for k in 1..=3 {
        a.send(&format!("CONTACTS-ADD id=p{k}@other.org")).await;
        assert_eq!(a.line().await, format!("CONTACTS-ADD-OK id=p{k}@other.org"));
    }
    // The fourth is refused, after the checks that come before it (§8.3 order).
    a.send("CONTACTS-ADD id=p1@other.org").await;
    assert_eq!(
        a.line().await,
        "CONTACTS-ADD-FAILED id=p1@other.org reason=already-exists"
    );
    a.send("CONTACTS-ADD id=p4@other.org").await;
    assert_eq!(
        a.line().await,
        "CONTACTS-ADD-FAILED id=p4@other.org reason=too-many-contacts"
    );
    // Nothing was stored and nothing pushed for the refused one.
    a.send("CONTACTS-GET").await;
    a.expect("CONTACTS-GET-RESPONSE").await;
    assert_eq!(a.list().await.len(), 3);
    for k in 1..=3 {
        other.expect("CONTACT-UPDATED").await;
        assert!(other.list().await[0].starts_with(&format!("id=p{k}@other.org ")));
    }
    other.sync().await;
    // A freed slot can be used again.
    a.send("CONTACTS-DELETE id=p2@other.org").await;
    assert_eq!(a.line().await, "CONTACTS-DELETE-OK id=p2@other.org");
    a.send("CONTACTS-ADD id=p4@other.org").await;
    assert_eq!(a.line().await, "CONTACTS-ADD-OK id=p4@other.org");
    srv.stop().await;
}

#[tokio::test]
async fn a_session_tracks_at_most_64_typing_peers() {
    // No entry may expire during the test, however slow the machine.
    let srv = TestServer::start_with(|c| c.typing_timeout = Duration::from_secs(3600)).await;
    let mut a = srv.user("alice").await;
    let mut b = srv.user("bob").await;
    let mut c = srv.user("carol").await;
    // 64 peers: carol and 63 addresses nobody is logged in as (tracked all the same).
    a.send("TYPING-STARTED to=carol").await;
    assert_eq!(c.line().await, "TYPING-STARTED from=alice@localhost");
    for k in 1..64 {
        a.send(&format!("TYPING-STARTED to=nobody{k}")).await;
    }
    // A 65th peer is dropped: bob's next line is the message sent after it, not typing.
    a.send("TYPING-STARTED to=bob").await;
    a.send("MESSAGE to=bob text=after").await;
    a.expect_skip("MESSAGE-SENT").await;
    let l = b.line().await;
    assert!(l.starts_with("MESSAGE "), "the 65th peer got {l:?}");
    // A peer already tracked is still refreshed when the table is full.
    a.send("TYPING-STARTED to=carol").await;
    assert_eq!(c.line().await, "TYPING-STARTED from=alice@localhost");
    // Ending one frees its slot for a new peer.
    a.send("TYPING-END to=nobody1").await;
    a.send("TYPING-STARTED to=bob").await;
    assert_eq!(b.line().await, "TYPING-STARTED from=alice@localhost");
    a.sync().await;
    srv.stop().await;
}

#[tokio::test]
async fn name_is_pushed_only_to_watchers_with_a_defaulted_name() {
    let srv = TestServer::start().await;
    let mut b = srv.user("bob").await;
    let mut defaulted = srv.user("alice").await;
    let mut own_name = srv.user("dave").await;
    defaulted.send("CONTACTS-ADD id=bob").await;
    assert_eq!(defaulted.line().await, "CONTACTS-ADD-OK id=bob@localhost");
    own_name.send("CONTACTS-ADD id=bob name=Bobster").await;
    assert_eq!(own_name.line().await, "CONTACTS-ADD-OK id=bob@localhost");

    b.send("PROFILE-UPDATE name=Robert").await;
    // (bob may first get the watchers' PRESENCE-REQUESTs, §7.1.)
    b.expect_skip("PROFILE-UPDATE-OK").await;
    assert_eq!(
        next_update(&mut defaulted).await,
        vec!["id=bob@localhost name=Robert"]
    );
    // Cleared: the pushed name is the login.
    b.send("PROFILE-UPDATE name=").await;
    b.expect_skip("PROFILE-UPDATE-OK").await;
    assert_eq!(
        next_update(&mut defaulted).await,
        vec!["id=bob@localhost name=bob"]
    );
    // Both watchers get the note; for dave it is the first change pushed, so neither name was.
    b.send("PROFILE-UPDATE note=away").await;
    b.expect_skip("PROFILE-UPDATE-OK").await;
    for w in [&mut defaulted, &mut own_name] {
        assert_eq!(next_update(w).await, vec!["id=bob@localhost note=away"]);
    }
    // dave's list still shows his own name.
    own_name.send("CONTACTS-GET").await;
    own_name.expect_skip("CONTACTS-GET-RESPONSE").await;
    let list = own_name.list().await;
    assert!(list[0].contains("name=Bobster"), "{list:?}");
    srv.stop().await;
}
