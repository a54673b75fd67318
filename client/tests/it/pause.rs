//! Pausing a download (review item 4): the download stops once its writer has written every
//! byte received and handed the `.part` back, so the next call continues a file at rest and
//! ends with the right bytes, verified.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::library::{offer_accepted, user, WAIT};
use msim::transfer::{self, Transfer, TransferOptions};
use msim::ClientError;
use msim_testkit::{pseudo_random_bytes, sha256_hex, System};
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn a_download_paused_mid_write_hands_back_its_part_and_resumes_to_the_right_bytes() {
    let srv = tokio::task::spawn_blocking(|| {
        System::builder()
            .relays(1)
            .start_on_thread()
            .expect("msim-chat and its relay start")
    })
    .await
    .unwrap();
    let (alice, _) = user(&srv, "alice").await;
    let (bob, mut bob_events) = user(&srv, "bob").await;
    let bytes = pseudo_random_bytes(24 << 20, 11);
    let sha = sha256_hex(&bytes);
    let (upload_grant, grant) = offer_accepted(
        &alice,
        &bob,
        &mut bob_events,
        "big.bin",
        bytes.len() as u64,
        Some(sha.clone()),
    )
    .await;
    let options = TransferOptions::default();
    tokio::time::timeout(
        WAIT * 2,
        transfer::upload_bytes(
            &Transfer::from(&upload_grant),
            bytes.clone().into(),
            None,
            &options,
        ),
    )
    .await
    .expect("upload in time")
    .expect("upload");
    let dir = srv.subdir("paused").unwrap();
    let dest = dir.join("big.bin");
    let download = Transfer::from(&grant);
    // Paused from the progress callback once a few units are in: the writer is busy then.
    let pause = CancellationToken::new();
    let reported = Arc::new(AtomicU64::new(0));
    let progress: msim::Progress = {
        let (pause, reported) = (pause.clone(), reported.clone());
        Arc::new(move |done, _total| {
            reported.store(done, Ordering::SeqCst);
            if done >= 4 << 20 {
                pause.cancel();
            }
        })
    };
    let first = tokio::time::timeout(
        WAIT * 2,
        transfer::download_pausable(
            &download,
            &dest,
            grant.sha256.as_deref(),
            None,
            Some(progress),
            &options,
            &pause,
        ),
    )
    .await
    .expect("paused in time");
    assert!(matches!(first, Err(ClientError::Paused)), "{first:?}");
    // At rest: everything received is on disk, and it is the start of the file.
    let part = std::fs::read(transfer::part_path(&dest)).unwrap();
    assert_eq!(part.len() as u64, reported.load(Ordering::SeqCst));
    assert!(part.len() >= 4 << 20 && part.len() < bytes.len());
    assert!(
        part[..] == bytes[..part.len()],
        "the .part holds other bytes"
    );
    assert!(!dest.exists());
    let report = tokio::time::timeout(
        WAIT * 2,
        transfer::download(&download, &dest, grant.sha256.as_deref(), None, &options),
    )
    .await
    .expect("resumed in time")
    .expect("resumed download completes");
    assert!(report.verified && report.resumed, "{report:?}");
    assert_eq!(report.sha256, sha);
    assert!(
        std::fs::read(&dest).unwrap() == bytes,
        "downloaded bytes differ"
    );
}
