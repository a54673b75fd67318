//! A `.part` file left in the inbox by another transfer of the same file name (an attacker's
//! offer of `report.pdf`, uploaded all but its last byte, then cancelled) is never continued
//! by a later transfer of that name: the honest sender's file arrives whole and verified.

use crate::common;

use std::process::Stdio;

use common::{run_expect, stdout_json, TestServer};
use msim_testkit::{pseudo_random_bytes, sha256_file_hex};

#[test]
fn a_stale_part_of_the_same_file_name_is_not_continued() {
    let srv = TestServer::start();
    for login in ["bob", "carol"] {
        run_expect(srv.as_user(login).args(["register", "--json"]), 0);
    }
    let files = srv.subdir("send").unwrap();
    let out_dir = srv.subdir("inbox").unwrap();
    let src = files.join("report.pdf");
    let honest = pseudo_random_bytes(40_000, 11);
    std::fs::write(&src, &honest).unwrap();
    // What Mallory's cancelled transfer of report.pdf left behind: as many bytes of hers as
    // the honest file has (her offer declared one more).
    let stale = out_dir.join("report.pdf.part");
    std::fs::write(&stale, pseudo_random_bytes(40_000, 66)).unwrap();

    let receiver = srv
        .as_user("carol")
        .args(["receive", "--accept-all", "--count", "1", "--json", "--out"])
        .arg(&out_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    run_expect(
        srv.as_user("bob")
            .args(["send-file", "carol", "--json"])
            .arg(&src),
        0,
    );
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
    let path = std::path::PathBuf::from(r["path"].as_str().unwrap());
    assert_eq!(path, out_dir.join("report.pdf"));
    assert_eq!(
        std::fs::read(&path).unwrap(),
        honest,
        "bob's bytes, not mallory's"
    );
    assert_eq!(r["sha256"], sha256_file_hex(&src).unwrap().as_str());
    // No partial download of this transfer is left behind.
    let left: Vec<_> = std::fs::read_dir(&out_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("msim-transfer-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
