//! `MSIM_TIMING=1`: the opt-in timing log of a transfer (client/src/timing.rs), one line per
//! step on stderr, used to find where a picture's milliseconds go (BENCHMARKS.md).

use crate::common;

use std::process::{Output, Stdio};

use common::{run_expect, stdout_json, TestServer};
use msim_testkit::{pseudo_random_bytes, sha256_file_hex};

/// The steps logged on stderr, in order, with their times (µs since the epoch).
fn steps(out: &Output) -> Vec<(String, u128)> {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("msim-timing pid=")?;
            let mut words = rest.split(' ').skip(1);
            let us = words.next()?.strip_prefix("us=")?.parse().ok()?;
            Some((words.next()?.to_owned(), us))
        })
        .collect()
}

fn assert_steps(out: &Output, expected: &[&str]) {
    let got = steps(out);
    let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, expected, "{}", String::from_utf8_lossy(&out.stderr));
    assert!(got.windows(2).all(|w| w[0].1 <= w[1].1), "{got:?}");
}

/// Sends a picture from alice to bob with `timing` as MSIM_TIMING on both sides (None: unset);
/// (the sender's output, the recipient's output).
fn send_picture(srv: &TestServer, timing: Option<&str>) -> (Output, Output) {
    let src = srv.subdir("send").unwrap().join("cat.jpg");
    std::fs::write(&src, pseudo_random_bytes(200_000, 5)).unwrap();
    let sha = sha256_file_hex(&src).unwrap();
    let out_dir = srv.subdir("inbox").unwrap();
    let with_timing = |cmd: &mut std::process::Command| {
        cmd.env_remove(msim::timing::ENV);
        if let Some(v) = timing {
            cmd.env(msim::timing::ENV, v);
        }
    };
    let mut receive = srv.as_user("bob");
    receive
        .args(["receive", "--accept-all", "--count", "1", "--json", "--out"])
        .arg(&out_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    with_timing(&mut receive);
    let receiver = receive.spawn().unwrap();
    let mut send = srv.as_user("alice");
    send.args(["send-file", "bob", "--json"]).arg(&src);
    with_timing(&mut send);
    let sent = run_expect(&mut send, 0);
    let received = receiver.wait_with_output().unwrap();
    assert!(received.status.success(), "{received:?}");
    let got = stdout_json(&received);
    assert_eq!(got.last().unwrap()["sha256"], sha.as_str());
    assert_eq!(got.last().unwrap()["verified"], true);
    (sent, received)
}

#[test]
fn the_timing_log_shows_each_step_of_a_picture_only_when_asked_for() {
    let srv = TestServer::start();
    for login in ["alice", "bob"] {
        run_expect(srv.as_user(login).args(["register", "--json"]), 0);
    }
    let (sent, received) = send_picture(&srv, Some("1"));
    assert_steps(
        &sent,
        &[
            "start",
            "connected",
            // The offer goes out right behind the login (PROTOCOL.md §4.5).
            "offer-sent",
            "logged-in",
            "offer-pending",
            "upload-grant",
            "upload-request",
            "upload-answered",
            "exit",
        ],
    );
    // The recipient's `start`, `connected` and `logged-in` came before the offer.
    let recipient = steps(&received);
    let from_offer: Vec<&str> = recipient
        .iter()
        .map(|(n, _)| n.as_str())
        .skip_while(|n| *n != "offer-received")
        .collect();
    assert_eq!(
        from_offer,
        [
            "offer-received",
            "download-grant",
            "download-request",
            "download-last-byte",
            "download-hash-known",
            "download-synced-renamed",
            "verified",
            "exit",
        ],
        "{recipient:?}"
    );

    for off in [None, Some("0")] {
        let (sent, received) = send_picture(&srv, off);
        assert!(steps(&sent).is_empty(), "{sent:?}");
        assert!(steps(&received).is_empty(), "{received:?}");
    }
}
