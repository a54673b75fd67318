//! Presence and profile subscriptions across servers (PROTOCOL.md §12.9): a remote contact's
//! presence and profile changes reach a watcher who subscribed (by adding the contact), under
//! the subject's privacy rules, and nobody else.

use super::dns::TestDns;
use super::{send, Fed};
use crate::common::{field, Client};

/// The fields of the next `CONTACT-UPDATED` record about `id` (skipping other packets and
/// other records).
async fn update_about(c: &mut Client, id: &str) -> String {
    loop {
        c.expect_skip("CONTACT-UPDATED").await;
        let prefix = format!("id={id} ");
        if let Some(r) = c.list().await.into_iter().find(|r| r.starts_with(&prefix)) {
            return r;
        }
    }
}

/// The next presence of `id` pushed to `c` (`online`, a time, or empty).
async fn presence_of(c: &mut Client, id: &str) -> String {
    loop {
        let r = update_about(c, id).await;
        if let Some(p) = field(&format!("X {r}"), "presence") {
            return p;
        }
    }
}

/// Everything `c` receives until a `MESSAGE` with `id`; the message proves that everything
/// its server had for `c` from the sender's server before it was delivered first (one ordered
/// queue per peer).
async fn lines_until_message(c: &mut Client, id: &str) -> Vec<String> {
    let mut seen = Vec::new();
    loop {
        let l = c.line().await;
        if l.starts_with("MESSAGE ") && field(&l, "id").as_deref() == Some(id) {
            return seen;
        }
        seen.push(l);
    }
}

/// Adds `id` as a contact and waits for the answer.
async fn add_contact(c: &mut Client, id: &str) {
    c.send(&format!("CONTACTS-ADD id={id}")).await;
    let ok = c
        .expect_skip_any(&["CONTACTS-ADD-OK", "CONTACTS-ADD-FAILED"])
        .await;
    assert!(ok.starts_with("CONTACTS-ADD-OK "), "{ok}");
}

#[tokio::test]
async fn a_subscribed_remote_watcher_sees_presence_and_profile_changes() {
    let dns = TestDns::start().await;
    let a = Fed::start(&dns, "a.test", |_| {}).await;
    let b = Fed::start(&dns, "b.test", |_| {}).await;
    let mut alice = a.user("alice").await;
    let mut bob = b.user("bob").await;
    // Bob has alice as a contact: that approves her (as adding a local user does, §7.1).
    add_contact(&mut bob, "alice@a.test").await;
    // Alice adds bob: a.test subscribes; b.test answers with the state of the moment.
    add_contact(&mut alice, "bob@b.test").await;
    assert_eq!(presence_of(&mut alice, "bob@b.test").await, "online");

    // Offline: the last-seen time, then UPDATE-LAST-SEEN (as for local contacts, §7).
    drop(bob);
    let p = presence_of(&mut alice, "bob@b.test").await;
    assert!(p.starts_with("20"), "{p}");
    let seen = alice.expect("UPDATE-LAST-SEEN").await;
    assert_eq!(field(&seen, "id").as_deref(), Some("bob@b.test"));
    assert_eq!(field(&seen, "at"), Some(p));

    // Online again.
    let mut bob = b.session("bob").await;
    assert_eq!(presence_of(&mut alice, "bob@b.test").await, "online");

    // A profile change.
    bob.send("PROFILE-UPDATE name=Bobby note=gone%20fishing")
        .await;
    bob.expect_skip("PROFILE-UPDATE-OK").await;
    loop {
        let r = update_about(&mut alice, "bob@b.test").await;
        let r = format!("X {r}");
        if field(&r, "note").as_deref() == Some("gone fishing") {
            assert_eq!(field(&r, "name").as_deref(), Some("Bobby"));
            break;
        }
    }
}

#[tokio::test]
async fn remote_presence_honours_the_subjects_privacy() {
    let dns = TestDns::start().await;
    let a = Fed::start(&dns, "a.test", |_| {}).await;
    let b = Fed::start(&dns, "b.test", |_| {}).await;
    let mut alice = a.user("alice").await;
    let mut carol = a.user("carol").await;
    let mut dave = a.user("dave").await;
    let mut bob = b.user("bob").await;
    add_contact(&mut bob, "alice@a.test").await;
    add_contact(&mut alice, "bob@b.test").await;
    assert_eq!(presence_of(&mut alice, "bob@b.test").await, "online");
    // Carol subscribes too, but bob never added her: she gets his profile, never his presence.
    add_contact(&mut carol, "bob@b.test").await;
    let r = update_about(&mut carol, "bob@b.test").await;
    assert_eq!(field(&format!("X {r}"), "presence"), None, "{r}");

    // Bob goes offline and comes back: alice sees it, carol and dave (no subscription) do not.
    drop(bob);
    presence_of(&mut alice, "bob@b.test").await;
    let mut bob = b.session("bob").await;
    assert_eq!(presence_of(&mut alice, "bob@b.test").await, "online");
    for (c, login) in [(&mut carol, "carol"), (&mut dave, "dave")] {
        let id = send(&mut bob, &format!("{login}@a.test"), "sync").await;
        let before = lines_until_message(c, &id).await;
        assert!(
            before.iter().all(|l| !l.contains("presence=")),
            "{login} got {before:?}"
        );
    }

    // Bob shows his presence to nobody: alice is told it is hidden, then nothing more.
    bob.send("PRIVACY-SET last-seen=nobody").await;
    bob.expect_skip("PRIVACY-SET-OK").await;
    assert_eq!(presence_of(&mut alice, "bob@b.test").await, "");
    drop(bob);
    let mut bob = b.session("bob").await;
    let id = send(&mut bob, "alice@a.test", "sync").await;
    let before = lines_until_message(&mut alice, &id).await;
    assert!(
        before.iter().all(|l| !l.contains("presence=")),
        "hidden presence was pushed: {before:?}"
    );
    // Back to contacts: alice sees him again.
    bob.send("PRIVACY-SET last-seen=contacts").await;
    bob.expect_skip("PRIVACY-SET-OK").await;
    assert_eq!(presence_of(&mut alice, "bob@b.test").await, "online");

    // Bob deletes alice from his contacts: her approval goes with it.
    bob.send("CONTACTS-DELETE id=alice@a.test").await;
    bob.expect_skip("CONTACTS-DELETE-OK").await;
    assert_eq!(presence_of(&mut alice, "bob@b.test").await, "");
}
