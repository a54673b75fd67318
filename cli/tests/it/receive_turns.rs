//! `msim receive --accept-all`'s turns (attack M1 leftovers): a new sender's offer starts
//! ahead of the paused downloads of drippers, however many wait, and a download paused again
//! and again is given up for the run (its `.part` kept) before it can use up the grant's
//! downloads on the relay.

use crate::common;
use crate::receive_fair::{dripper, honest_picture_arrives};
use crate::receive_many::{accepted_by_carol, patch};

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{password, run_expect, Running, TestServer};
use msim::proto::OfferFile;
use msim::Client;
use msim_testkit::pseudo_random_bytes;

const WAIT: Duration = Duration::from_secs(30);

fn receive(srv: &TestServer, out_dir: &std::path::Path, window_ms: u64, pauses: u32) -> Running {
    Running::spawn(
        srv.as_user("carol")
            .env("MSIM_RECEIVE_SLOW_WINDOW_MS", window_ms.to_string())
            .env("MSIM_RECEIVE_SLOW_BYTES", "65536")
            .env("MSIM_RECEIVE_MAX_PAUSES", pauses.to_string())
            .args(["receive", "--accept-all", "--json", "--out"])
            .arg(out_dir),
    )
}

#[test]
fn a_new_senders_offer_starts_within_a_window_whatever_the_number_of_queued_drips() {
    let srv = TestServer::start();
    for login in ["bob", "carol", "mallory", "mallet"] {
        run_expect(srv.as_user(login).args(["register", "--json"]), 0);
    }
    let out_dir = srv.subdir("inbox").unwrap();
    let window = Duration::from_millis(2500);
    let mut carol = receive(&srv, &out_dir, window.as_millis() as u64, 1000);
    let rt = tokio::runtime::Runtime::new().unwrap();
    // Two accounts, ten drips each: four run, sixteen wait in the queue ahead of bob's offer
    // (first come, first served took about four windows to reach it).
    let drippers = rt.block_on(async {
        (
            dripper(&srv, "mallory", 10, 2).await,
            dripper(&srv, "mallet", 10, 2).await,
        )
    });
    let sent = Instant::now();
    honest_picture_arrives(&srv, &mut carol, &out_dir);
    let took = sent.elapsed();
    // One window for a slot to be paused, plus sending and receiving the picture.
    assert!(
        took < window * 12 / 5,
        "the picture took {took:?}: it waited behind the drips"
    );
    carol.assert_running();
    drop(drippers);
}

#[test]
fn a_download_paused_again_and_again_is_given_up_and_its_part_kept() {
    let srv = TestServer::start();
    for login in ["bob", "carol", "mallory", "mallet", "malone"] {
        run_expect(srv.as_user(login).args(["register", "--json"]), 0);
    }
    let out_dir = srv.subdir("inbox").unwrap();
    let mut carol = receive(&srv, &out_dir, 300, 2);
    let rt = tokio::runtime::Runtime::new().unwrap();
    // Three accounts, two drips each: four run while two of a sender with room wait, so the
    // drips keep being paused.
    let drippers = rt.block_on(async {
        (
            dripper(&srv, "mallory", 2, 2).await,
            dripper(&srv, "mallet", 2, 2).await,
            dripper(&srv, "malone", 2, 2).await,
        )
    });
    let failed = carol.stdout.wait_for_json("a drip given up", WAIT, |v| {
        v["event"] == "failed" && v["filename"].as_str().unwrap_or("").starts_with("drip-")
    });
    let error = failed["error"].as_str().unwrap_or("");
    assert!(error.contains("given up after 2 pauses"), "{failed}");
    // Its partial download stays for the next run.
    let id = failed["transfer_id"].as_str().unwrap();
    let part = out_dir.join(format!("msim-transfer-{id}.part"));
    let listing: Vec<_> = std::fs::read_dir(&out_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        part.exists(),
        "{} is gone: {listing:?} {:?}",
        part.display(),
        carol.stdout.seen_json()
    );
    // Other files still arrive.
    honest_picture_arrives(&srv, &mut carol, &out_dir);
    carol.assert_running();
    drop(drippers);
}

/// Attack 5, L2: a download paused while offers waited went to the back of the queue, and
/// every later offer of a sender with nothing running or paused started before it, so a
/// stream of offers from new accounts kept a paused honest file from ever resuming.
#[test]
fn a_paused_download_resumes_while_new_senders_keep_offering() {
    const FLOOD: usize = 64;
    let srv = TestServer::start_with(|c| {
        c.register_burst = 0;
        c.register_prefix_burst = 0;
        c.offer_quota.per_address = 1000;
    });
    for login in ["carol", "dave"] {
        run_expect(srv.as_user(login).args(["register", "--json"]), 0);
    }
    let out_dir = srv.subdir("inbox").unwrap();
    let window = Duration::from_millis(500);
    // Without --json: the pause is told on stderr.
    let mut carol = Running::spawn(
        srv.as_user("carol")
            .env(
                "MSIM_RECEIVE_SLOW_WINDOW_MS",
                window.as_millis().to_string(),
            )
            .env("MSIM_RECEIVE_SLOW_BYTES", "65536")
            .env("MSIM_RECEIVE_MAX_PAUSES", "1000")
            .args(["receive", "--accept-all", "--out"])
            .arg(&out_dir),
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    // Dave's file: its first 8 KiB arrive, then nothing until it is paused.
    let file = pseudo_random_bytes(256 << 10, 21);
    let (dave, grant) = rt.block_on(async {
        let (d, _events) = Client::connect(srv.chat).await.unwrap();
        d.login("dave", &password("dave")).await.unwrap();
        let grant = accepted_by_carol(&d, "slow.bin", &file, true).await;
        patch(&grant.url, &grant.token, 0, &file[..8 << 10]).await;
        (d, grant)
    });
    // New accounts offer a file each, faster than carol's four slots let them start (their
    // uploads never come, so each is paused after a window).
    let offered = Arc::new(AtomicUsize::new(0));
    let chat = srv.chat;
    let flooding = {
        let offered = offered.clone();
        rt.spawn(async move {
            let mut held = Vec::new();
            for i in 0..FLOOD {
                let login = format!("flood{i}");
                let (m, events) = Client::connect(chat).await.unwrap();
                m.register(&login, &password(&login)).await.unwrap();
                m.login(&login, &password(&login)).await.unwrap();
                let offer = m
                    .offer_file(OfferFile {
                        to: "carol".into(),
                        filename: format!("drip-{i}.bin"),
                        size: 1 << 20,
                        sha256: None,
                        mime: None,
                    })
                    .await
                    .unwrap();
                held.push((m, events, offer));
                offered.fetch_add(1, Ordering::SeqCst);
                // The attacker's pace (six per window), not a synchronisation.
                tokio::time::sleep(window / 6).await;
            }
            held
        })
    };
    carol.stderr.wait_for("slow.bin paused", WAIT, |l| {
        l.starts_with("Paused slow.bin from dave")
    });
    rt.block_on(patch(&grant.url, &grant.token, 8 << 10, &file[8 << 10..]));
    carol.stdout.wait_for("slow.bin received", WAIT, |l| {
        l.starts_with("Received slow.bin") && l.contains("(SHA-256 verified)")
    });
    let when = offered.load(Ordering::SeqCst);
    assert!(
        when < FLOOD,
        "slow.bin resumed only once the new senders stopped coming ({when} offers)"
    );
    assert_eq!(std::fs::read(out_dir.join("slow.bin")).unwrap(), file);
    carol.assert_running();
    drop((rt.block_on(flooding).unwrap(), dave));
}
