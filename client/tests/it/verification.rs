//! What makes a downloaded file "verified": only a SHA-256 received over the chat connection.
//! The relay's `Msim-Sha256` header is the relay's word (over `http://`, anyone on the path
//! can rewrite body and header together): it catches damage but verifies nothing.

use crate::common;
use crate::library::{offer_accepted, user};
use msim::transfer::{self, Transfer, TransferOptions};
use msim_testkit::{pseudo_random_bytes, sha256_hex};

#[tokio::test]
async fn the_relays_hash_alone_does_not_make_a_download_verified() {
    let srv = tokio::task::spawn_blocking(common::start).await.unwrap();
    let (alice, _) = user(&srv, "alice").await;
    let (bob, mut bob_events) = user(&srv, "bob").await;
    let dir = srv.subdir("verify").unwrap();
    let bytes = pseudo_random_bytes(50_000, 5);
    let sha = sha256_hex(&bytes);
    for (name, announced) in [("plain.bin", None), ("hashed.bin", Some(sha.clone()))] {
        let src = dir.join(format!("src-{name}"));
        std::fs::write(&src, &bytes).unwrap();
        let (up, grant) = offer_accepted(
            &alice,
            &bob,
            &mut bob_events,
            name,
            bytes.len() as u64,
            announced.clone(),
        )
        .await;
        transfer::upload(
            &Transfer::from(&up),
            &src,
            None,
            &TransferOptions::default(),
        )
        .await
        .unwrap();
        // The way a client downloads an offer from another server that carried no sha256.
        let dest = dir.join(name);
        let report = transfer::download(
            &Transfer::from(&grant),
            &dest,
            grant.sha256.as_deref(),
            None,
            &TransferOptions::default(),
        )
        .await
        .unwrap();
        assert_eq!(report.sha256, sha);
        assert_eq!(std::fs::read(&dest).unwrap(), bytes);
        assert_eq!(
            report.verified,
            announced.is_some(),
            "{name}: verified only with a hash from the chat server"
        );
    }
}

#[tokio::test]
async fn a_part_file_already_full_size_is_fetched_again_not_taken_as_complete() {
    let srv = tokio::task::spawn_blocking(common::start).await.unwrap();
    let (alice, _) = user(&srv, "alice").await;
    let (bob, mut bob_events) = user(&srv, "bob").await;
    let dir = srv.subdir("full-part").unwrap();
    let bytes = pseudo_random_bytes(30_000, 8);
    let src = dir.join("src.bin");
    std::fs::write(&src, &bytes).unwrap();
    let (up, grant) = offer_accepted(
        &alice,
        &bob,
        &mut bob_events,
        "doc.bin",
        bytes.len() as u64,
        None,
    )
    .await;
    transfer::upload(
        &Transfer::from(&up),
        &src,
        None,
        &TransferOptions::default(),
    )
    .await
    .unwrap();
    // Someone else's bytes, exactly as many, already where this download would resume.
    let dest = dir.join("doc.bin");
    std::fs::write(transfer::part_path(&dest), pseudo_random_bytes(30_000, 99)).unwrap();
    let report = transfer::download(
        &Transfer::from(&grant),
        &dest,
        None,
        None,
        &TransferOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), bytes, "the relay's bytes");
    assert_eq!(report.sha256, sha256_hex(&bytes));
    assert!(!report.verified, "no hash from the chat server");
}

/// An offer from another server may declare any size (`size=0`, say) while its relay streams
/// far more: the grant's size is exact, so the download is refused, nothing is kept, and the
/// recipient's disk is not filled. An honest empty file still arrives.
#[tokio::test]
async fn a_download_longer_than_the_offers_size_is_refused_even_for_size_zero() {
    let srv = tokio::task::spawn_blocking(common::start).await.unwrap();
    let (alice, _) = user(&srv, "alice").await;
    let (bob, mut bob_events) = user(&srv, "bob").await;
    let dir = srv.subdir("size-zero").unwrap();
    for (name, bytes) in [
        ("stuffed.bin", pseudo_random_bytes(300_000, 3)),
        ("empty.bin", Vec::new()),
    ] {
        let src = dir.join(format!("src-{name}"));
        std::fs::write(&src, &bytes).unwrap();
        let (up, grant) = offer_accepted(
            &alice,
            &bob,
            &mut bob_events,
            name,
            bytes.len() as u64,
            Some(sha256_hex(&bytes)),
        )
        .await;
        let options = TransferOptions::default();
        transfer::upload(&Transfer::from(&up), &src, None, &options)
            .await
            .unwrap();
        // What a lying remote offer would grant: the relay's bytes, declared as none.
        let mut declared_empty = Transfer::from(&grant);
        declared_empty.size = 0;
        let dest = dir.join(name);
        let got = transfer::download(&declared_empty, &dest, None, None, &options).await;
        if bytes.is_empty() {
            assert_eq!(got.unwrap().size, 0);
            assert_eq!(std::fs::read(&dest).unwrap(), bytes);
        } else {
            let err = got.expect_err("more bytes than the grant's size");
            assert!(
                matches!(err, msim::ClientError::SizeMismatch { expected: 0, .. }),
                "{err}"
            );
            assert!(!dest.exists(), "nothing kept under the file's name");
        }
    }
}
