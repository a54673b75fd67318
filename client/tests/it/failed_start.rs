//! A download that fails before its first byte (attack 4, M2). Out of attempts on a transient
//! refusal (a busy relay's `429`, a restart, a `404` before the upload starts), its empty
//! `.part` stays: it marks the grant as begun, so `msim receive` continues it at the next
//! login (a grant without a `.part` is not resumed). A final refusal (`410`) leaves nothing.

use std::time::Duration;

use msim::transfer::{self, part_path, Transfer, TransferOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A relay that answers every request with `status` and closes; returns its base URL.
async fn refusing_relay(status: &'static str) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let answer =
                    format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                let _ = s.write_all(answer.as_bytes()).await;
            });
        }
    });
    format!("http://{addr}/v1/transfers/t1")
}

async fn download_refused(status: &'static str, dest: &std::path::Path) -> String {
    let transfer = Transfer {
        url: refusing_relay(status).await,
        token: "v1.k.x.y".into(),
        size: 1000,
    };
    let options = TransferOptions {
        attempts: 2,
        retry_delay: Duration::from_millis(10),
        ..TransferOptions::default()
    };
    let result = tokio::time::timeout(
        Duration::from_secs(30),
        transfer::download(&transfer, dest, None, None, &options),
    )
    .await
    .expect("the download gives up in time");
    result.expect_err("every attempt is refused").to_string()
}

#[tokio::test]
async fn a_busy_relay_leaves_the_empty_part_that_marks_the_grant_as_begun() {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("pic.jpg");
    let error = download_refused("429 Too Many Requests", &dest).await;
    assert!(error.contains("429"), "{error}");
    let part = std::fs::metadata(part_path(&dest)).expect("the .part is kept");
    assert_eq!(part.len(), 0);
    assert!(!dest.exists());
}

#[tokio::test]
async fn a_gone_transfer_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("pic.jpg");
    let error = download_refused("410 Gone", &dest).await;
    assert!(error.contains("410"), "{error}");
    assert!(!part_path(&dest).exists(), "nothing to continue");
    assert!(!dest.exists());
}
