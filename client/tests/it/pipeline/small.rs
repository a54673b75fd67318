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
