//! The SHA-256 declared after the upload (PROTOCOL.md §10.7): the sender hashes the bytes it
//! uploads and declares them; the recipient verifies its download against the declaration,
//! not against what the relay says it stored.

use std::time::Duration;

use msim::proto::{DownloadGrant, OfferFile, UploadGrant};
use msim::transfer::{self, Transfer, TransferOptions};
use msim::{Client, ClientError, Event, HashWatch};

use super::proxy::{Fault, Proxy};
use super::{quick, server, sha256_hex};
use crate::library::{next, user, WAIT};
use msim_testkit::{pseudo_random_bytes as test_bytes, ThreadedSystem as TestServer};

struct Offered {
    alice: Client,
    up: UploadGrant,
    down: DownloadGrant,
    /// Bob's watch for Alice's declaration, armed before he accepted.
    watch: HashWatch,
}

/// Alice offers `size` bytes without a SHA-256; Bob watches for the hash and accepts.
async fn offered_without_hash(srv: &TestServer, size: u64) -> Offered {
    let (alice, _) = user(srv, "alice").await;
    let (bob, mut bob_events) = user(srv, "bob").await;
    let offer = alice
        .offer_file(OfferFile {
            to: "bob".into(),
            filename: "film.mkv".into(),
            size,
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
    assert_eq!(offered.sha256, None);
    let watch = bob.watch_file_hash(&offered.transfer_id).unwrap();
    let down = bob.accept_file(&offered.transfer_id).await.unwrap();
    assert_eq!(down.sha256, None);
    let up = tokio::time::timeout(WAIT, offer.answer())
        .await
        .unwrap()
        .unwrap();
    Offered {
        alice,
        up,
        down,
        watch,
    }
}

#[tokio::test]
async fn a_large_file_hashed_while_uploading_arrives_verified_by_the_senders_hash() {
    let srv = server().await;
    let dir = srv.subdir("deferred").unwrap();
    let bytes = test_bytes(12 << 20, 21);
    let src = dir.join("src.bin");
    std::fs::write(&src, &bytes).unwrap();
    let sha = sha256_hex(&src);
    let o = offered_without_hash(&srv, bytes.len() as u64).await;

    // Bob downloads while Alice uploads (the relay streams), and waits for her hash.
    let dest = dir.join("dest.bin");
    let download = async {
        transfer::download_deferred(&Transfer::from(&o.down), &dest, &o.watch, None, &quick()).await
    };
    let upload = async {
        let report = transfer::upload_hashing(&Transfer::from(&o.up), &src, None, &quick())
            .await
            .unwrap();
        let sent = report.source_sha256.clone().unwrap();
        o.alice
            .declare_file_hash(&o.up.transfer_id, &sent)
            .await
            .unwrap();
        report
    };
    let (sent, received) = tokio::time::timeout(WAIT, async { tokio::join!(upload, download) })
        .await
        .unwrap();
    assert_eq!(sent.source_sha256.as_deref(), Some(sha.as_str()));
    assert_eq!(
        sent.sha256, None,
        "the relay was asked not to hash (Msim-Sha256: skip)"
    );
    let received = received.unwrap();
    assert!(received.verified, "{received:?}");
    assert_eq!(received.sha256, sha);
    assert_eq!(std::fs::read(&dest).unwrap(), bytes);
    // Declared once: a second declaration is refused.
    let again = o.alice.declare_file_hash(&o.up.transfer_id, &sha).await;
    assert!(
        matches!(again, Err(ClientError::HashFailed { .. })),
        "{again:?}"
    );
}

#[tokio::test]
async fn a_declared_hash_that_does_not_match_the_download_keeps_nothing() {
    let srv = server().await;
    let dir = srv.subdir("wrong-hash").unwrap();
    let bytes = test_bytes(9 << 20, 22);
    let src = dir.join("src.bin");
    std::fs::write(&src, &bytes).unwrap();
    let o = offered_without_hash(&srv, bytes.len() as u64).await;
    tokio::time::timeout(
        WAIT,
        transfer::upload_hashing(&Transfer::from(&o.up), &src, None, &quick()),
    )
    .await
    .unwrap()
    .unwrap();
    // The relay holds exactly what was sent, but the sender's declaration says otherwise:
    // the sender's word is what counts.
    let declared = "00".repeat(32);
    o.alice
        .declare_file_hash(&o.up.transfer_id, &declared)
        .await
        .unwrap();
    let dest = dir.join("dest.bin");
    let err = tokio::time::timeout(
        WAIT,
        transfer::download_deferred(&Transfer::from(&o.down), &dest, &o.watch, None, &quick()),
    )
    .await
    .unwrap()
    .unwrap_err();
    assert!(
        matches!(&err, ClientError::ChecksumMismatch { expected, .. } if *expected == declared),
        "{err:?}"
    );
    assert!(!dest.exists() && !transfer::part_path(&dest).exists());
}

#[tokio::test]
async fn a_relay_that_stores_altered_bytes_is_caught_by_the_recipient() {
    let srv = server().await;
    let dir = srv.subdir("altered").unwrap();
    let bytes = test_bytes(10 << 20, 23);
    let src = dir.join("src.bin");
    std::fs::write(&src, &bytes).unwrap();
    let sha = sha256_hex(&src);
    let o = offered_without_hash(&srv, bytes.len() as u64).await;

    // Between Alice and the relay one byte of the body is changed: the relay stores something
    // else than Alice read. It was asked not to hash, so only the recipient can tell.
    let proxy = Proxy::start(srv.relays[0], Fault::FlipRequestByte(3_000_000)).await;
    let mut through_proxy = Transfer::from(&o.up);
    through_proxy.url = proxy.url(&through_proxy.url);
    let report = tokio::time::timeout(
        WAIT,
        transfer::upload_hashing(&through_proxy, &src, None, &quick()),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(report.source_sha256.as_deref(), Some(sha.as_str()));
    assert_eq!(report.sha256, None, "the relay did not hash");

    // The sender declares what it read; the recipient's download is refused.
    o.alice
        .declare_file_hash(&o.up.transfer_id, &sha)
        .await
        .unwrap();
    let dest = dir.join("dest.bin");
    let err = tokio::time::timeout(
        WAIT,
        transfer::download_deferred(&Transfer::from(&o.down), &dest, &o.watch, None, &quick()),
    )
    .await
    .unwrap()
    .unwrap_err();
    assert!(
        matches!(&err, ClientError::ChecksumMismatch { expected, actual } if *expected == sha && *actual != sha),
        "{err:?}"
    );
    assert!(!dest.exists());

    // And the sender can cancel it: the relay then refuses the download.
    transfer::cancel(&Transfer::from(&o.up), &quick())
        .await
        .unwrap();
    let gone = transfer::download(&Transfer::from(&o.down), &dest, None, None, &quick()).await;
    assert!(
        matches!(gone, Err(ClientError::RelayStatus { status: 410, .. })),
        "{gone:?}"
    );
}

#[tokio::test]
async fn without_a_declaration_the_download_is_kept_but_not_verified() {
    let srv = server().await;
    let dir = srv.subdir("undeclared").unwrap();
    let bytes = test_bytes(1 << 20, 24);
    let src = dir.join("src.bin");
    std::fs::write(&src, &bytes).unwrap();
    let o = offered_without_hash(&srv, bytes.len() as u64).await;
    transfer::upload(&Transfer::from(&o.up), &src, None, &quick())
        .await
        .unwrap();
    let options = TransferOptions {
        sender_hash_wait: Duration::from_millis(200),
        ..quick()
    };
    let dest = dir.join("dest.bin");
    let report = tokio::time::timeout(
        WAIT,
        transfer::download_deferred(&Transfer::from(&o.down), &dest, &o.watch, None, &options),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(!report.verified, "{report:?}");
    assert_eq!(std::fs::read(&dest).unwrap(), bytes);
}
