//! The transfer pipeline over real sockets, with a misbehaving proxy in front of the relay:
//! a cut download resumes with `Range` and is verified by the hash kept while writing; a
//! corrupted download is refused and leaves no file; a source file that changes while it is
//! being sent is refused by the relay and never becomes a received file.

mod deferred;
mod proxy;
mod small;

use std::time::{Duration, Instant};

use msim::proto::{DownloadGrant, UploadGrant};
use msim::transfer::{self, Transfer, TransferOptions};
use msim::ClientError;

use crate::common;
use crate::library::{offer_accepted, user, WAIT};
use msim_testkit::{pseudo_random_bytes as test_bytes, ThreadedSystem as TestServer};
use proxy::{Fault, Proxy};

/// Quick retries, so a resumed download does not wait for the default backoff.
fn quick() -> TransferOptions {
    TransferOptions {
        retry_delay: Duration::from_millis(10),
        ..TransferOptions::default()
    }
}

/// Alice offers `bytes` (declaring `sha256`) to Bob, who accepts: the two grants.
async fn offered(srv: &TestServer, bytes: &[u8], sha256: &str) -> (UploadGrant, DownloadGrant) {
    let (alice, _) = user(srv, "alice").await;
    let (bob, mut bob_events) = user(srv, "bob").await;
    offer_accepted(
        &alice,
        &bob,
        &mut bob_events,
        "picture.jpg",
        bytes.len() as u64,
        Some(sha256.to_owned()),
    )
    .await
}

async fn server() -> TestServer {
    tokio::task::spawn_blocking(common::start).await.unwrap()
}

fn sha256_hex(path: &std::path::Path) -> String {
    msim_testkit::sha256_file_hex(path).unwrap()
}

#[tokio::test]
async fn a_cut_download_resumes_with_range_and_is_verified() {
    let srv = server().await;
    let dir = srv.subdir("cut").unwrap();
    let bytes = test_bytes(3_000_000, 11);
    let src = dir.join("src.bin");
    std::fs::write(&src, &bytes).unwrap();
    let sha = sha256_hex(&src);
    let (up, down) = offered(&srv, &bytes, &sha).await;
    tokio::time::timeout(
        WAIT,
        transfer::upload(&Transfer::from(&up), &src, None, &quick()),
    )
    .await
    .unwrap()
    .unwrap();

    let proxy = Proxy::start(srv.relays[0], Fault::CutFirstResponseAfter(1_234_567)).await;
    let mut through_proxy = Transfer::from(&down);
    through_proxy.url = proxy.url(&through_proxy.url);
    let dest = dir.join("dest.bin");
    let report = tokio::time::timeout(
        WAIT,
        transfer::download(&through_proxy, &dest, Some(&sha), None, &quick()),
    )
    .await
    .unwrap()
    .unwrap();

    assert!(report.resumed && report.verified, "{report:?}");
    assert_eq!(report.sha256, sha);
    assert_eq!(std::fs::read(&dest).unwrap(), bytes);
    assert!(!transfer::part_path(&dest).exists());
    // The second request continued exactly where the cut left the file.
    let heads = proxy.heads.lock().unwrap().clone();
    assert_eq!(heads.len(), 2, "{heads:?}");
    assert!(
        !heads[0].to_ascii_lowercase().contains("range:"),
        "{heads:?}"
    );
    assert!(
        heads[1]
            .to_ascii_lowercase()
            .contains("range: bytes=1234567-"),
        "{heads:?}"
    );
}

#[tokio::test]
async fn a_corrupted_download_is_refused_and_not_kept() {
    let srv = server().await;
    let dir = srv.subdir("corrupt").unwrap();
    let bytes = test_bytes(2_500_000, 12);
    let src = dir.join("src.bin");
    std::fs::write(&src, &bytes).unwrap();
    let sha = sha256_hex(&src);
    let (up, down) = offered(&srv, &bytes, &sha).await;
    tokio::time::timeout(
        WAIT,
        transfer::upload(&Transfer::from(&up), &src, None, &quick()),
    )
    .await
    .unwrap()
    .unwrap();

    let proxy = Proxy::start(srv.relays[0], Fault::FlipResponseByte(1_777_777)).await;
    let mut through_proxy = Transfer::from(&down);
    through_proxy.url = proxy.url(&through_proxy.url);
    let dest = dir.join("dest.bin");
    let err = tokio::time::timeout(
        WAIT,
        transfer::download(&through_proxy, &dest, Some(&sha), None, &quick()),
    )
    .await
    .unwrap()
    .unwrap_err();
    assert!(
        matches!(&err, ClientError::ChecksumMismatch { expected, .. } if *expected == sha),
        "{err:?}"
    );
    assert!(
        !dest.exists(),
        "a corrupted file must not be left as the result"
    );
    assert!(
        !transfer::part_path(&dest).exists(),
        "nor as a .part to resume"
    );

    // The same grant straight from the relay gives the right file.
    let report = tokio::time::timeout(
        WAIT,
        transfer::download(&Transfer::from(&down), &dest, Some(&sha), None, &quick()),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(report.verified && !report.resumed);
    assert_eq!(std::fs::read(&dest).unwrap(), bytes);
}

#[tokio::test]
async fn a_file_changed_while_being_sent_is_refused() {
    let srv = server().await;
    let dir = srv.subdir("changed").unwrap();
    // Larger than what the reader thread, the socket buffers and the proxy can hold ahead of
    // the relay, so the tail is read only after the test changed it.
    let bytes = test_bytes(32 << 20, 13);
    let src = dir.join("src.bin");
    std::fs::write(&src, &bytes).unwrap();
    let sha = sha256_hex(&src);
    let (up, down) = offered(&srv, &bytes, &sha).await;

    let proxy = Proxy::start(srv.relays[0], Fault::HoldRequestAfter(1 << 20)).await;
    let mut through_proxy = Transfer::from(&up);
    through_proxy.url = proxy.url(&through_proxy.url);
    let upload = tokio::spawn({
        let src = src.clone();
        async move { transfer::upload(&through_proxy, &src, None, &quick()).await }
    });
    wait_forwarded(&proxy, 1 << 20).await;
    // Same size, different last bytes.
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new().write(true).open(&src).unwrap();
        f.seek(SeekFrom::Start((32 << 20) - 4096)).unwrap();
        f.write_all(&[0x5a; 4096]).unwrap();
    }
    proxy.release();
    let err = tokio::time::timeout(WAIT, upload)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(err, ClientError::RelayStatus { status: 422, .. }),
        "{err:?}"
    );

    // The recipient gets an error, and no file.
    let dest = dir.join("dest.bin");
    let err = tokio::time::timeout(
        WAIT,
        transfer::download(&Transfer::from(&down), &dest, Some(&sha), None, &quick()),
    )
    .await
    .unwrap()
    .unwrap_err();
    assert!(
        matches!(err, ClientError::RelayStatus { status: 410, .. }),
        "{err:?}"
    );
    assert!(!dest.exists() && !transfer::part_path(&dest).exists());
}

#[tokio::test]
async fn a_file_that_shrinks_while_being_sent_is_not_retried() {
    let srv = server().await;
    let dir = srv.subdir("shrunk").unwrap();
    let bytes = test_bytes(32 << 20, 14);
    let src = dir.join("src.bin");
    std::fs::write(&src, &bytes).unwrap();
    let sha = sha256_hex(&src);
    let (up, _) = offered(&srv, &bytes, &sha).await;

    let proxy = Proxy::start(srv.relays[0], Fault::HoldRequestAfter(1 << 20)).await;
    let mut through_proxy = Transfer::from(&up);
    through_proxy.url = proxy.url(&through_proxy.url);
    let upload = tokio::spawn({
        let src = src.clone();
        async move { transfer::upload(&through_proxy, &src, None, &quick()).await }
    });
    wait_forwarded(&proxy, 1 << 20).await;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&src)
        .unwrap()
        .set_len(2 << 20)
        .unwrap();
    proxy.release();
    let err = tokio::time::timeout(WAIT, upload)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::SizeMismatch {
                expected: 33_554_432,
                actual: 2_097_152
            }
        ),
        "{err:?}"
    );
}

/// Waits until the proxy has forwarded `bytes` request bytes.
async fn wait_forwarded(proxy: &Proxy, bytes: usize) {
    let deadline = Instant::now() + WAIT;
    while proxy.forwarded.load(std::sync::atomic::Ordering::SeqCst) < bytes {
        assert!(Instant::now() < deadline, "the upload did not start");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
