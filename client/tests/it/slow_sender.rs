//! Progress is reported as bytes arrive, not per 1 MiB write batch (attack 3 M1): a receiver
//! that gives up downloads without progress sees a slow honest sender's bytes flow, for a
//! streamed body and for one held in memory (at most 1 MiB).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::library::{offer_accepted, user, WAIT};
use msim::transfer::{self, Transfer, TransferOptions};
use msim_testkit::{pseudo_random_bytes, sha256_hex, System};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends the first `first` bytes of an upload, waits until the receiver has reported all of
/// them (it could not on the code of attack 3, where a streamed body reported per 1 MiB and a
/// held one not at all; nor later, when the last bytes before a stall, under 64 KiB since the
/// last report, were reported only once more bytes came), then the rest; checks the download.
async fn progress_flows_while_the_sender_is_slow(size: usize, first: usize) {
    let seen = first as u64;
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
    let bytes = pseudo_random_bytes(size, 5);
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
    let upload = Transfer::from(&upload_grant);
    // The sender: one PUT whose body stops after `first` bytes until progress is seen.
    let rest = upload.url.strip_prefix("http://").expect("plain relay URL");
    let (host, path) = rest.split_at(rest.find('/').expect("path"));
    let mut s = TcpStream::connect(host).await.unwrap();
    let head = format!(
        "PUT {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n",
        upload.token
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&bytes[..first]).await.unwrap();
    let reported = Arc::new(AtomicU64::new(0));
    let progress: msim::Progress = {
        let reported = reported.clone();
        Arc::new(move |done, _total| {
            reported.fetch_max(done, Ordering::SeqCst);
        })
    };
    let dir = srv.subdir("slow").unwrap();
    let dest = dir.join("slow.bin");
    let download = Transfer::from(&grant);
    let options = TransferOptions::default();
    let downloading = tokio::spawn({
        let dest = dest.clone();
        let sha = grant.sha256.clone();
        async move {
            transfer::download(&download, &dest, sha.as_deref(), Some(progress), &options).await
        }
    });
    let deadline = tokio::time::Instant::now() + WAIT;
    while reported.load(Ordering::SeqCst) < seen {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no progress reported while {first} bytes arrived (saw {})",
            reported.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    s.write_all(&bytes[first..]).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut answer))
        .await
        .expect("upload answered")
        .unwrap();
    assert!(
        answer.starts_with(b"HTTP/1.1 201"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    let report = tokio::time::timeout(WAIT, downloading)
        .await
        .expect("download in time")
        .unwrap()
        .expect("download completes");
    assert!(report.verified, "{report:?}");
    assert_eq!(report.sha256, sha);
    assert!(
        std::fs::read(&dest).unwrap() == bytes,
        "downloaded bytes differ"
    );
}

#[tokio::test]
async fn a_streamed_download_reports_progress_before_a_whole_write_batch() {
    progress_flows_while_the_sender_is_slow(3 << 20, 300 << 10).await;
}

#[tokio::test]
async fn a_held_download_reports_progress_as_bytes_arrive() {
    progress_flows_while_the_sender_is_slow(512 << 10, 200 << 10).await;
}
