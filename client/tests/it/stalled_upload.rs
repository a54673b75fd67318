//! A download following an upload that stalls again and again: the relay cuts a download that
//! waited its body idle time for upload data (PROTOCOL.md §11.5), and the library resumes it
//! with `Range` each time it made progress, so the recipient still gets the whole file.

use std::time::Duration;

use crate::library::{offer_accepted, user, WAIT};
use msim::transfer::{self, Transfer, TransferOptions};
use msim_testkit::{pseudo_random_bytes, sha256_hex, System};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `PATCH` `piece` at `offset` (a sender uploading in pieces); returns the status.
async fn patch(url: &str, token: &str, offset: usize, piece: &[u8]) -> u16 {
    let rest = url.strip_prefix("http://").unwrap();
    let (authority, path) = rest.split_at(rest.find('/').unwrap());
    let mut s = tokio::net::TcpStream::connect(authority).await.unwrap();
    let head = format!(
        "PATCH {path} HTTP/1.1\r\nHost: {authority}\r\nAuthorization: Bearer {token}\r\n\
         Upload-Offset: {offset}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        piece.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(piece).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut response))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&response[9..12]).parse().unwrap()
}

#[tokio::test]
async fn a_download_cut_while_the_upload_stalls_resumes_until_complete() {
    let idle = Duration::from_millis(300);
    let srv = tokio::task::spawn_blocking(move || {
        System::builder()
            .relays(1)
            .relay(move |c| c.body_idle_timeout = idle)
            .start_on_thread()
            .expect("msim-chat and its relay start")
    })
    .await
    .unwrap();
    let (alice, _) = user(&srv, "alice").await;
    let (bob, mut bob_events) = user(&srv, "bob").await;
    let bytes = pseudo_random_bytes(8_000, 3);
    let sha = sha256_hex(&bytes);
    let (upload_grant, grant) = offer_accepted(
        &alice,
        &bob,
        &mut bob_events,
        "slow.bin",
        bytes.len() as u64,
        Some(sha.clone()),
    )
    .await;
    // The sender stalls for longer than the relay's idle time before each of 8 pieces: the
    // download is cut at least 8 times, more than a download's attempts.
    let uploader = tokio::spawn({
        let bytes = bytes.clone();
        async move {
            for (k, piece) in bytes.chunks(1_000).enumerate() {
                tokio::time::sleep(idle * 2).await;
                let status = patch(&upload_grant.url, &upload_grant.token, k * 1_000, piece).await;
                assert!(status == 204 || status == 200, "PATCH answered {status}");
            }
        }
    });
    let dir = srv.subdir("stalled").unwrap();
    let dest = dir.join("slow.bin");
    let report = tokio::time::timeout(
        WAIT * 2,
        transfer::download(
            &Transfer::from(&grant),
            &dest,
            grant.sha256.as_deref(),
            None,
            // Quick retries: the attempts are used up by the cuts, not by waiting.
            &TransferOptions {
                retry_delay: Duration::from_millis(20),
                ..TransferOptions::default()
            },
        ),
    )
    .await
    .expect("download in time")
    .expect("download completes despite the cuts");
    uploader.await.unwrap();
    assert!(report.verified && report.resumed, "{report:?}");
    assert_eq!(std::fs::read(&dest).unwrap(), bytes);
}
