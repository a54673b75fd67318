//! `msim receive --accept-all` against a malicious sender: a transfer that fails (a wrong
//! declared SHA-256) gets its failure line and `receive` goes on; a transfer whose upload never
//! comes does not hold up the offers after it (downloads run side by side).

use crate::common;

use std::time::Duration;

use common::{password, run_expect, Running, TestServer};
use msim::proto::OfferFile;
use msim::transfer::{self, Transfer, TransferOptions};
use msim::Client;
use msim_testkit::{pseudo_random_bytes, sha256_hex};

const WAIT: Duration = Duration::from_secs(30);

#[test]
fn one_bad_and_one_stalled_transfer_do_not_stop_the_others() {
    let srv = TestServer::start();
    for login in ["bob", "carol", "mallory"] {
        run_expect(srv.as_user(login).args(["register", "--json"]), 0);
    }
    let out_dir = srv.subdir("inbox").unwrap();
    let mut carol = Running::spawn(
        srv.as_user("carol")
            .args(["receive", "--accept-all", "--json", "--out"])
            .arg(&out_dir),
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let data = pseudo_random_bytes(1_000, 4);
    let files = srv.subdir("mallory").unwrap();
    let src = files.join("bad.bin");
    std::fs::write(&src, &data).unwrap();
    let mallory = rt.block_on(async {
        let (m, _events) = Client::connect(srv.chat).await.unwrap();
        m.login("mallory", &password("mallory")).await.unwrap();
        let offer = |name: &str, sha256: Option<String>| OfferFile {
            to: "carol".into(),
            filename: name.into(),
            size: data.len() as u64,
            sha256,
            mime: None,
        };
        // Accepted, and never uploaded.
        let stuck = m
            .offer_file(offer("stuck.bin", Some(sha256_hex(&data))))
            .await
            .unwrap();
        tokio::time::timeout(WAIT, stuck.answer())
            .await
            .unwrap()
            .unwrap();
        // Uploaded, then declared with a SHA-256 that does not match.
        let bad = m.offer_file(offer("bad.bin", None)).await.unwrap();
        let id = bad.transfer_id().to_owned();
        let grant = tokio::time::timeout(WAIT, bad.answer())
            .await
            .unwrap()
            .unwrap();
        transfer::upload(
            &Transfer::from(&grant),
            &src,
            None,
            &TransferOptions::default(),
        )
        .await
        .unwrap();
        m.declare_file_hash(&id, &"0".repeat(64)).await.unwrap();
        m
    });
    // An honest file after them.
    let good = srv.subdir("bob").unwrap().join("good.txt");
    std::fs::write(&good, b"hello carol").unwrap();
    run_expect(
        srv.as_user("bob").args(["send-file", "carol"]).arg(&good),
        0,
    );

    let received = carol.stdout.wait_for_json("good.txt received", WAIT, |v| {
        v["event"] == "received" && v["filename"] == "good.txt"
    });
    assert_eq!(received["verified"], true);
    assert_eq!(
        std::fs::read(out_dir.join("good.txt")).unwrap(),
        b"hello carol"
    );
    let failed_seen = carol
        .stdout
        .seen()
        .iter()
        .any(|l| l.contains("\"failed\"") && l.contains("bad.bin"));
    if !failed_seen {
        carol.stdout.wait_for_json("bad.bin failed", WAIT, |v| {
            v["event"] == "failed" && v["filename"] == "bad.bin"
        });
    }
    assert!(
        !out_dir.join("bad.bin").exists(),
        "nothing kept of a mismatch"
    );
    carol.assert_running();
    drop(mallory);
}

/// `client` offers carol `data` as `filename` (declaring its SHA-256 when `hashed`) and
/// waits for her acceptance: the upload grant.
pub(crate) async fn accepted_by_carol(
    client: &Client,
    filename: &str,
    data: &[u8],
    hashed: bool,
) -> msim::proto::UploadGrant {
    let offer = client
        .offer_file(OfferFile {
            to: "carol".into(),
            filename: filename.into(),
            size: data.len() as u64,
            sha256: hashed.then(|| sha256_hex(data)),
            mime: None,
        })
        .await
        .unwrap();
    tokio::time::timeout(WAIT, offer.answer())
        .await
        .unwrap()
        .unwrap()
}

/// `PATCH` `piece` at `offset` of the transfer at `url` (an upload in pieces).
pub(crate) async fn patch(url: &str, token: &str, offset: usize, piece: &[u8]) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
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
    let status = String::from_utf8_lossy(&response[9..12]).into_owned();
    assert!(
        status == "204" || status == "200",
        "PATCH answered {status}"
    );
}

#[test]
fn a_transfer_accepted_before_a_restart_is_resumed_at_the_next_login() {
    let srv = TestServer::start();
    for login in ["bob", "carol"] {
        run_expect(srv.as_user(login).args(["register", "--json"]), 0);
    }
    let out_dir = srv.subdir("inbox").unwrap();
    let receive = || {
        Running::spawn(
            srv.as_user("carol")
                .args(["receive", "--accept-all", "--json", "--out"])
                .arg(&out_dir),
        )
    };
    let carol = receive();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let data = pseudo_random_bytes(4 << 20, 9);
    let (bob, grant) = rt.block_on(async {
        let (b, _events) = Client::connect(srv.chat).await.unwrap();
        b.login("bob", &password("bob")).await.unwrap();
        let grant = accepted_by_carol(&b, "big.bin", &data, true).await;
        patch(&grant.url, &grant.token, 0, &data[..2 << 20]).await;
        (b, grant)
    });
    // Carol's receive has part of it on disk when it stops.
    let part = out_dir.join(format!("msim-transfer-{}.part", grant.transfer_id));
    let deadline = std::time::Instant::now() + WAIT;
    while std::fs::metadata(&part).map_or(0, |m| m.len()) == 0 {
        assert!(std::time::Instant::now() < deadline, "no partial download");
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(carol);
    rt.block_on(patch(&grant.url, &grant.token, 2 << 20, &data[2 << 20..]));
    // The next receive resumes it from the grant the server sends again at login.
    let mut carol = receive();
    let received = carol.stdout.wait_for_json("big.bin received", WAIT, |v| {
        v["event"] == "received" && v["filename"] == "big.bin"
    });
    assert_eq!(received["verified"], true, "{received}");
    assert_eq!(std::fs::read(out_dir.join("big.bin")).unwrap(), data);
    assert!(!part.exists());
    drop(bob);
}
