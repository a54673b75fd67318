//! The same faults on small files (at most one 1 MiB unit: a picture), whose bytes the
//! download holds in memory and writes, hashes, flushes and renames in one step at the end.

use super::proxy::{Fault, Proxy};
use super::{offered, quick, server, sha256_hex, test_bytes, TestServer};
use crate::library::WAIT;
use msim::transfer::{self, Transfer};
use msim::ClientError;

/// What a download through a faulty proxy left.
struct Outcome {
    result: Result<transfer::DownloadReport, ClientError>,
    bytes: Vec<u8>,
    sha: String,
    dest: std::path::PathBuf,
    proxy: Proxy,
    /// Kept running (and its files kept) until the checks are done.
    _srv: TestServer,
}

/// A picture offered, uploaded and downloaded through a proxy doing `fault`.
async fn through(fault: Fault, seed: u64) -> Outcome {
    let srv = server().await;
    let dir = srv.subdir("small").unwrap();
    let bytes = test_bytes(600_000, seed);
    let src = dir.join("src.jpg");
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
    let proxy = Proxy::start(srv.relays[0], fault).await;
    let mut through_proxy = Transfer::from(&down);
    through_proxy.url = proxy.url(&through_proxy.url);
    let dest = dir.join("dest.jpg");
    let result = tokio::time::timeout(
        WAIT,
        transfer::download(&through_proxy, &dest, Some(&sha), None, &quick()),
    )
    .await
    .unwrap();
    Outcome {
        result,
        bytes,
        sha,
        dest,
        proxy,
        _srv: srv,
    }
}

#[tokio::test]
async fn a_cut_small_download_resumes_from_what_it_held() {
    let Outcome {
        result,
        bytes,
        sha,
        dest,
        proxy,
        _srv: _running, // kept: the files are in its directory
    } = through(Fault::CutFirstResponseAfter(234_567), 21).await;
    let report = result.unwrap();
    assert!(report.resumed && report.verified, "{report:?}");
    assert_eq!(report.sha256, sha);
    assert_eq!(std::fs::read(&dest).unwrap(), bytes);
    assert!(!transfer::part_path(&dest).exists());
    let heads = proxy.heads.lock().unwrap().clone();
    assert_eq!(heads.len(), 2, "{heads:?}");
    assert!(
        heads[1]
            .to_ascii_lowercase()
            .contains("range: bytes=234567-"),
        "{heads:?}"
    );
}

#[tokio::test]
async fn a_corrupted_small_download_is_refused_and_not_kept() {
    let Outcome {
        result,
        sha,
        dest,
        _srv: _running, // kept: the files are in its directory
        ..
    } = through(Fault::FlipResponseByte(555_555), 22).await;
    let err = result.unwrap_err();
    assert!(
        matches!(&err, ClientError::ChecksumMismatch { expected, .. } if *expected == sha),
        "{err:?}"
    );
    assert!(!dest.exists());
    assert!(!transfer::part_path(&dest).exists());
}

/// `read_held` + `upload_bytes` (what `msim send-file` does with a picture): the upload is
/// the bytes that were hashed for the offer, even if the file changes on disk afterwards.
#[tokio::test]
async fn a_held_picture_is_uploaded_from_memory() {
    let srv = server().await;
    let dir = srv.subdir("held").unwrap();
    let bytes = test_bytes(600_000, 23);
    let src = dir.join("src.jpg");
    std::fs::write(&src, &bytes).unwrap();
    assert!(transfer::read_held(&src, 599_999).await.unwrap().is_none());
    let held = transfer::read_held(&src, 600_000).await.unwrap().unwrap();
    assert_eq!(held.sha256, sha256_hex(&src));
    assert_eq!(&held.bytes[..], &bytes[..]);
    let (up, down) = offered(&srv, &bytes, &held.sha256).await;
    // Edited after it was offered: reading it again now would send what was not offered.
    std::fs::write(&src, test_bytes(600_000, 24)).unwrap();
    let report = tokio::time::timeout(
        WAIT,
        transfer::upload_bytes(&Transfer::from(&up), held.bytes.clone(), None, &quick()),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(report.sha256.as_deref(), Some(held.sha256.as_str()));
    let dest = dir.join("dest.jpg");
    let got = tokio::time::timeout(
        WAIT,
        transfer::download(
            &Transfer::from(&down),
            &dest,
            Some(&held.sha256),
            None,
            &quick(),
        ),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(got.verified);
    assert_eq!(std::fs::read(&dest).unwrap(), bytes);
}
