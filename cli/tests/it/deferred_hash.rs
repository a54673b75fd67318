//! `msim send-file` of a large file: offered without a SHA-256, hashed while uploading and
//! declared afterwards (PROTOCOL.md §10.7); `msim receive` verifies against the declaration.

use crate::common;

use std::process::Stdio;

use common::{run_expect, stdout_json, TestServer};
use msim_testkit::{pseudo_random_bytes, sha256_file_hex};

#[test]
fn a_large_file_sent_with_the_deferred_hash_arrives_verified() {
    let srv = TestServer::start();
    for login in ["alice", "bob"] {
        run_expect(srv.as_user(login).args(["register", "--json"]), 0);
    }
    let src = srv.subdir("send").unwrap().join("film.mkv");
    // Above the 8 MiB from which send-file defers the hash.
    std::fs::write(&src, pseudo_random_bytes(9 << 20, 31)).unwrap();
    let sha = sha256_file_hex(&src).unwrap();
    let out_dir = srv.subdir("inbox").unwrap();
    let receiver = srv
        .as_user("bob")
        .args(["receive", "--accept-all", "--count", "1", "--json", "--out"])
        .arg(&out_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = run_expect(
        srv.as_user("alice")
            .args(["send-file", "bob", "--json"])
            .arg(&src),
        0,
    );
    let sent = stdout_json(&out);
    let sent = sent.last().unwrap();
    assert_eq!(sent["event"], "sent");
    assert_eq!(sent["sha256"], sha.as_str());

    let received = receiver.wait_with_output().unwrap();
    assert!(
        received.status.success(),
        "{}",
        String::from_utf8_lossy(&received.stderr)
    );
    let got = stdout_json(&received);
    let r = got.last().unwrap();
    assert_eq!(r["event"], "received");
    assert_eq!(r["verified"], true, "{r}");
    assert_eq!(r["sha256"], sha.as_str());
    let path = std::path::PathBuf::from(r["path"].as_str().unwrap());
    assert_eq!(sha256_file_hex(&path).unwrap(), sha);
}
