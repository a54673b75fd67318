//! The library against a real msim-chat server and its embedded relay (in-process, on a
//! runtime of their own: see `common`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common::{self, password};
use msim::proto::{
    ConnectFailure, ContactFailure, DownloadGrant, OfferFile, Presence, SendFailure, UploadGrant,
};
use msim::transfer::{self, Transfer, TransferOptions};
use msim::{Client, ClientError, Event, Events, LoginOptions};
use msim_testkit::{pseudo_random_bytes, sha256_file_hex, ThreadedSystem};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Generous bound on waiting for one event; a hang fails instead of blocking forever.
pub(crate) const WAIT: Duration = Duration::from_secs(20);

pub(crate) async fn user(srv: &ThreadedSystem, login: &str) -> (Client, Events) {
    let (c, _) = Client::connect(srv.chat).await.unwrap();
    c.register(login, &password(login)).await.unwrap();
    drop(c);
    session(srv, login).await
}

async fn session(srv: &ThreadedSystem, login: &str) -> (Client, Events) {
    let (c, e) = Client::connect(srv.chat).await.unwrap();
    c.login(login, &password(login)).await.unwrap();
    (c, e)
}

/// The next event that `pick` accepts (others, such as presence updates, are skipped).
pub(crate) async fn next<T>(events: &mut Events, mut pick: impl FnMut(Event) -> Option<T>) -> T {
    tokio::time::timeout(WAIT, async {
        loop {
            let event = events.recv().await.expect("connection closed");
            if let Some(t) = pick(event) {
                return t;
            }
        }
    })
    .await
    .expect("timed out waiting for an event")
}

/// `sender` offers a file to bob and bob accepts it: the sender's upload grant and bob's
/// download grant, the way every transfer test starts.
pub(crate) async fn offer_accepted(
    sender: &Client,
    bob: &Client,
    bob_events: &mut Events,
    filename: &str,
    size: u64,
    sha256: Option<String>,
) -> (UploadGrant, DownloadGrant) {
    let offer = sender
        .offer_file(OfferFile {
            to: "bob".into(),
            filename: filename.into(),
            size,
            sha256,
            mime: None,
        })
        .await
        .unwrap();
    let offered = next(bob_events, |e| match e {
        Event::FileOffered(o) => Some(o),
        _ => None,
    })
    .await;
    assert_eq!(offered.transfer_id, offer.transfer_id());
    let download = bob.accept_file(&offered.transfer_id).await.unwrap();
    let upload = tokio::time::timeout(WAIT, offer.answer())
        .await
        .expect("no answer to the offer")
        .unwrap();
    (upload, download)
}

#[tokio::test]
async fn messages_receipts_contacts_profile() {
    let srv = tokio::task::spawn_blocking(common::start).await.unwrap();
    let (alice, _alice_events) = user(&srv, "alice").await;
    let (bob, mut bob_events) = user(&srv, "bob").await;
    let info = alice.session().unwrap();
    assert_eq!(info.login, "alice@localhost");
    assert_eq!(alice.me().as_deref(), Some("alice@localhost"));

    let sent = alice.send_message("bob", "hello bob").await.unwrap();
    let msg = next(&mut bob_events, |e| match e {
        Event::Message(m) => Some(m),
        _ => None,
    })
    .await;
    assert_eq!(msg.id, sent.id);
    assert_eq!(msg.from, "alice@localhost");
    assert_eq!(msg.text, "hello bob");

    // Read receipt back to alice (on a session that listens).
    let (alice2, mut alice2_events) = session(&srv, "alice").await;
    bob.mark_read(&msg.id).await.unwrap();
    let receipt = next(&mut alice2_events, |e| match e {
        Event::ReadReceipt(r) => Some(r),
        _ => None,
    })
    .await;
    assert_eq!(receipt.id, sent.id);
    assert_eq!(receipt.by, "bob@localhost");
    // Marking someone else's message read is refused.
    let err = alice2.mark_read(&sent.id).await.unwrap_err();
    assert!(matches!(err, ClientError::ReadFailed { .. }), "{err:?}");

    // Typing reaches bob.
    alice.typing("bob", true).await.unwrap();
    let from = next(&mut bob_events, |e| match e {
        Event::TypingStarted(t) => Some(t.from),
        _ => None,
    })
    .await;
    assert_eq!(from, "alice@localhost");

    // Contacts.
    alice
        .add_contact("bob", Some("Bobby"), Some("Friends/Close"))
        .await
        .unwrap();
    let list = alice.contacts().await.unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].id, "bob@localhost");
    assert_eq!(list[0].name, "Bobby");
    assert_eq!(list[0].group.as_deref(), Some("Friends/Close"));
    // No presence until bob approves alice's request (PROTOCOL.md §7.1).
    assert_eq!(list[0].presence, None);
    let from = next(&mut bob_events, |e| match e {
        Event::PresenceRequest(r) => Some(r.from),
        _ => None,
    })
    .await;
    assert_eq!(from, "alice@localhost");
    bob.approve_presence("alice").await.unwrap();
    let list = alice.contacts().await.unwrap();
    assert_eq!(list[0].presence, Some(Presence::Online));
    let err = alice.add_contact("bob", None, None).await.unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::ContactFailed {
                reason: ContactFailure::AlreadyExists,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.is_refusal());
    alice
        .change_contact("bob", Some("Bob"), Some(""))
        .await
        .unwrap();
    let list = alice.contacts().await.unwrap();
    assert_eq!(
        (list[0].name.as_str(), list[0].group.as_deref()),
        ("Bob", None)
    );
    alice.delete_contact("bob").await.unwrap();
    assert!(alice.contacts().await.unwrap().is_empty());
    let err = alice.delete_contact("bob").await.unwrap_err();
    assert!(matches!(
        err,
        ClientError::ContactFailed {
            reason: ContactFailure::NotFound,
            ..
        }
    ));

    // Profile.
    bob.update_profile(Some("Bob B."), Some("on holiday"))
        .await
        .unwrap();
    let p = alice.profile(Some("bob")).await.unwrap();
    assert_eq!((p.name.as_str(), p.note.as_str()), ("Bob B.", "on holiday"));
    let me = bob.profile(None).await.unwrap();
    assert_eq!(me.id, "bob@localhost");
    let err = bob.profile(Some("nobody")).await.unwrap_err();
    assert!(matches!(err, ClientError::ProfileFailed(_)), "{err:?}");
}

#[tokio::test]
async fn pipelined_requests_get_their_own_answers() {
    let srv = tokio::task::spawn_blocking(common::start).await.unwrap();
    let (alice, _) = user(&srv, "alice").await;
    let (_bob, mut bob_events) = user(&srv, "bob").await;
    let mut tasks = Vec::new();
    for i in 0..20 {
        let alice = alice.clone();
        tasks.push(tokio::spawn(async move {
            if i % 5 == 4 {
                // Interleave other request types.
                alice.contacts().await.map(|_| None)
            } else {
                alice
                    .send_message("bob", &format!("m{i}"))
                    .await
                    .map(|s| Some(s.id))
            }
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        if let Some(id) = t.await.unwrap().unwrap() {
            ids.push(id);
        }
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 16, "every message got its own id");
    let mut got = Vec::new();
    while got.len() < 16 {
        let m = next(&mut bob_events, |e| match e {
            Event::Message(m) => Some(m),
            _ => None,
        })
        .await;
        got.push(m.id);
    }
    got.sort();
    assert_eq!(got, ids);
}

#[tokio::test]
async fn auth_and_send_errors_are_typed() {
    let srv = tokio::task::spawn_blocking(common::start).await.unwrap();
    let (alice, _) = user(&srv, "alice").await;
    let err = alice.send_message("nobody", "hi").await.unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::SendFailed {
                reason: SendFailure::UnknownRecipient,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.is_refusal());

    let (c, _) = Client::connect(srv.chat).await.unwrap();
    let err = c.login("alice", "wrong-password").await.unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::AuthFailed {
                reason: ConnectFailure::Invalid | ConnectFailure::Throttled,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.is_auth_failure());

    let (c, _) = Client::connect(srv.chat).await.unwrap();
    let err = c.register("alice", &password("alice")).await.unwrap_err();
    assert!(matches!(err, ClientError::RegisterFailed(_)), "{err:?}");

    // Requests before login are answered with a typed error, not a hang.
    let (c, _) = Client::connect(srv.chat).await.unwrap();
    let err = c.contacts().await.unwrap_err();
    assert!(err.is_auth_failure(), "{err:?}");
}

#[tokio::test]
async fn device_cookie_is_exposed_and_presented() {
    let srv = tokio::task::spawn_blocking(common::start).await.unwrap();
    let (alice, _) = user(&srv, "alice").await;
    let cookie = alice
        .device_cookie()
        .expect("CONNECT-OK carries a device cookie");
    assert_eq!(
        alice.session().unwrap().device.as_deref(),
        Some(cookie.as_str())
    );
    // A wrong password from this address: an ordinary login now waits out the delay...
    let (c, _) = Client::connect(srv.chat).await.unwrap();
    c.login("alice", "wrong-password").await.unwrap_err();
    let (c, _) = Client::connect(srv.chat).await.unwrap();
    let err = c.login("alice", &password("alice")).await.unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::AuthFailed {
                reason: ConnectFailure::Throttled,
                retry_after: Some(_),
            }
        ),
        "{err:?}"
    );
    // ...but not with the device's cookie, which comes back renewed.
    let (c, _) = Client::connect(srv.chat).await.unwrap();
    let ok = c
        .login_with(
            "alice",
            &password("alice"),
            &LoginOptions::with_device(Some(cookie.clone())),
        )
        .await
        .unwrap();
    let renewed = ok.device.expect("a new cookie");
    assert_ne!(renewed, cookie);
    assert_eq!(c.device_cookie(), Some(renewed));
}

/// The offer → accept → upload → download flow, with both transfers streamed from / to disk,
/// progress reported, and the result byte-identical.
#[tokio::test]
async fn file_transfer_round_trip() {
    let srv = tokio::task::spawn_blocking(common::start).await.unwrap();
    let (alice, _) = user(&srv, "alice").await;
    let (bob, mut bob_events) = user(&srv, "bob").await;
    let dir = srv.subdir("files").unwrap();
    let src = dir.join("cat.jpg");
    std::fs::write(&src, pseudo_random_bytes(1_500_000, 1)).unwrap();
    let sha = transfer::sha256_file(&src).await.unwrap();
    assert_eq!(sha, sha256_file_hex(&src).unwrap());

    let offer = alice
        .offer_file(OfferFile {
            to: "bob".into(),
            filename: "cat.jpg".into(),
            size: 1_500_000,
            sha256: Some(sha.clone()),
            mime: Some("image/jpeg".into()),
        })
        .await
        .unwrap();
    let offered = next(&mut bob_events, |e| match e {
        Event::FileOffered(o) => Some(o),
        _ => None,
    })
    .await;
    assert_eq!(offered.transfer_id, offer.transfer_id());
    assert_eq!(offered.sha256.as_deref(), Some(sha.as_str()));

    let grant = bob.accept_file(&offered.transfer_id).await.unwrap();
    let upload_grant = tokio::time::timeout(WAIT, offer.answer())
        .await
        .unwrap()
        .unwrap();

    let up_done = Arc::new(AtomicU64::new(0));
    let up = up_done.clone();
    let upload = tokio::spawn({
        let src = src.clone();
        async move {
            transfer::upload(
                &Transfer::from(&upload_grant),
                &src,
                Some(Arc::new(move |done, total| {
                    assert_eq!(total, 1_500_000);
                    up.store(done, Ordering::Relaxed);
                })),
                &TransferOptions::default(),
            )
            .await
        }
    });
    // The download starts while the upload may still be running.
    let dest = dir.join("received.jpg");
    let report = transfer::download(
        &Transfer::from(&grant),
        &dest,
        grant.sha256.as_deref(),
        None,
        &TransferOptions::default(),
    )
    .await
    .unwrap();
    let up_report = upload.await.unwrap().unwrap();
    assert_eq!(up_report.size, 1_500_000);
    assert_eq!(up_done.load(Ordering::Relaxed), 1_500_000);
    assert!(report.verified);
    assert_eq!(report.sha256, sha);
    assert_eq!(sha256_file_hex(&dest).unwrap(), sha);
    assert!(!transfer::part_path(&dest).exists());
}

/// Interrupted transfers resume: the upload continues after the bytes the relay already has
/// (learned from the relay), the download continues a `.part` file with `Range`.
#[tokio::test]
async fn transfers_resume() {
    let srv = tokio::task::spawn_blocking(common::start).await.unwrap();
    let (alice, _) = user(&srv, "alice").await;
    let (bob, mut bob_events) = user(&srv, "bob").await;
    let dir = srv.subdir("resume").unwrap();
    let src = dir.join("photo.png");
    let bytes = pseudo_random_bytes(300_000, 2);
    std::fs::write(&src, &bytes).unwrap();
    let sha = sha256_file_hex(&src).unwrap();
    let (upload_grant, grant) = offer_accepted(
        &alice,
        &bob,
        &mut bob_events,
        "photo.png",
        bytes.len() as u64,
        Some(sha.clone()),
    )
    .await;

    // An earlier attempt stored the first 100,000 bytes.
    raw_put_interrupted(&upload_grant.url, &upload_grant.token, &bytes, 100_000).await;
    let report = transfer::upload(
        &Transfer::from(&upload_grant),
        &src,
        None,
        &TransferOptions::default(),
    )
    .await
    .unwrap();
    assert!(report.resumed);
    assert_eq!(report.sha256.as_deref(), Some(sha.as_str()));

    // The recipient already has the first 123,456 bytes.
    let dest = dir.join("photo-received.png");
    std::fs::write(transfer::part_path(&dest), &bytes[..123_456]).unwrap();
    let seen = Arc::new(AtomicU64::new(u64::MAX));
    let first = seen.clone();
    let report = transfer::download(
        &Transfer::from(&grant),
        &dest,
        Some(&sha),
        Some(Arc::new(move |done, _| {
            let _ = first.compare_exchange(u64::MAX, done, Ordering::Relaxed, Ordering::Relaxed);
        })),
        &TransferOptions::default(),
    )
    .await
    .unwrap();
    assert!(report.resumed && report.verified);
    assert_eq!(
        seen.load(Ordering::Relaxed),
        123_456,
        "progress starts at the resume point"
    );
    assert_eq!(std::fs::read(&dest).unwrap(), bytes);

    // A corrupt partial file is caught by the checksum and removed.
    let dest2 = dir.join("photo-corrupt.png");
    let mut corrupt = bytes[..1000].to_vec();
    corrupt[10] ^= 0xff;
    std::fs::write(transfer::part_path(&dest2), &corrupt).unwrap();
    let err = transfer::download(
        &Transfer::from(&grant),
        &dest2,
        Some(&sha),
        None,
        &TransferOptions::default(),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, ClientError::ChecksumMismatch { .. }),
        "{err:?}"
    );
    assert!(!dest2.exists() && !transfer::part_path(&dest2).exists());
}

#[tokio::test]
async fn rejected_offer_is_a_typed_error() {
    let srv = tokio::task::spawn_blocking(common::start).await.unwrap();
    let (alice, _) = user(&srv, "alice").await;
    let (bob, mut bob_events) = user(&srv, "bob").await;
    let offer = alice
        .offer_file(OfferFile {
            to: "bob".into(),
            filename: "x.bin".into(),
            size: 10,
            sha256: None,
            mime: None,
        })
        .await
        .unwrap();
    let offered = next(&mut bob_events, |e| match e {
        Event::FileOffered(o) => Some(o),
        _ => None,
    })
    .await;
    bob.reject_file(&offered.transfer_id).await.unwrap();
    let err = offer.answer().await.unwrap_err();
    assert!(matches!(err, ClientError::FileRejected { .. }), "{err:?}");
    assert!(err.is_refusal());
    // Answering twice is refused.
    let err = bob.accept_file(&offered.transfer_id).await.unwrap_err();
    assert!(matches!(err, ClientError::AnswerFailed { .. }), "{err:?}");
    // Offers to unknown users are refused at once.
    let err = alice
        .offer_file(OfferFile {
            to: "nobody".into(),
            filename: "x.bin".into(),
            size: 10,
            sha256: None,
            mime: None,
        })
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::FileRejected { .. }), "{err:?}");
}

/// A minimal HTTP/1.1 PUT of a whole file that stops after `sent` bytes (an interrupted first
/// attempt). The relay answers once it has stored what arrived.
async fn raw_put_interrupted(url: &str, token: &str, body: &[u8], sent: usize) {
    let rest = url.strip_prefix("http://").unwrap();
    let (authority, path) = rest.split_at(rest.find('/').unwrap());
    let mut s = tokio::net::TcpStream::connect(authority).await.unwrap();
    let head = format!(
        "PUT {path} HTTP/1.1\r\nHost: {authority}\r\nAuthorization: Bearer {token}\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&body[..sent]).await.unwrap();
    s.shutdown().await.unwrap();
    let mut response = Vec::new();
    s.read_to_end(&mut response).await.unwrap();
    let text = String::from_utf8_lossy(&response);
    assert!(
        text.to_ascii_lowercase()
            .contains(&format!("upload-offset: {sent}")),
        "{text}"
    );
}

#[tokio::test]
async fn presence_consent_blocking_and_visibility() {
    use msim::proto::{BlockFailure, LastSeenVisibility, PresenceFailure};
    let srv = tokio::task::spawn_blocking(common::start).await.unwrap();
    let (carol, mut carol_events) = user(&srv, "carol").await;
    let (eve, mut eve_events) = user(&srv, "eve").await;
    eve.add_contact("carol", None, None).await.unwrap();
    let from = next(&mut carol_events, |e| match e {
        Event::PresenceRequest(r) => Some(r.from),
        _ => None,
    })
    .await;
    assert_eq!(from, "eve@localhost");
    assert_eq!(eve.profile(Some("carol")).await.unwrap().presence, None);
    carol.approve_presence("eve").await.unwrap();
    let seen = next(&mut eve_events, |e| match e {
        Event::ContactUpdated(u) => u.updates[0].presence,
        _ => None,
    })
    .await;
    assert_eq!(seen, Presence::Online);
    carol.deny_presence("eve").await.unwrap();
    let seen = next(&mut eve_events, |e| match e {
        Event::ContactUpdated(u) => u.updates[0].presence,
        _ => None,
    })
    .await;
    assert_eq!(seen, Presence::Hidden);
    let err = carol.deny_presence("ghost").await.unwrap_err();
    assert!(matches!(
        err,
        ClientError::PresenceFailed {
            reason: PresenceFailure::NotFound,
            ..
        }
    ));
    carol
        .set_last_seen_visibility(LastSeenVisibility::Everyone)
        .await
        .unwrap();
    assert_eq!(
        eve.profile(Some("carol")).await.unwrap().presence,
        Some(Presence::Online)
    );
    carol.block("eve").await.unwrap();
    assert_eq!(eve.profile(Some("carol")).await.unwrap().presence, None);
    let settings = carol.privacy().await.unwrap();
    assert_eq!(settings.last_seen, LastSeenVisibility::Everyone);
    assert_eq!(settings.blocked, vec!["eve@localhost".to_owned()]);
    // Blocked: eve's message is answered as sent but never reaches carol.
    eve.send_message("carol", "let me in").await.unwrap();
    carol.unblock("eve").await.unwrap();
    eve.send_message("carol", "hello again").await.unwrap();
    let text = next(&mut carol_events, |e| match e {
        Event::Message(m) => Some(m.text),
        _ => None,
    })
    .await;
    assert_eq!(text, "hello again");
    let err = carol.unblock("eve").await.unwrap_err();
    assert!(matches!(
        err,
        ClientError::BlockFailed {
            reason: BlockFailure::NotFound,
            ..
        }
    ));
    assert!(err.is_refusal());
}
