//! `msim receive --accept-all` against senders that accept-and-drip: their downloads cannot
//! hold every slot. One sender gets at most two slots at once, and a download that moves too
//! little while other offers wait is paused (its `.part` kept) and queued behind them, so an
//! honest picture arrives while the drippers still hold their offers, and a slow honest
//! upload still completes, taking turns.

use crate::common;
use crate::receive_many::{accepted_by_carol, patch};

use std::time::{Duration, Instant};

use common::{password, run_expect, Running, TestServer};
use msim::proto::OfferFile;
use msim::Client;
use msim_testkit::{pseudo_random_bytes, sha256_hex};

const WAIT: Duration = Duration::from_secs(30);

/// `login` offers `count` files of 1 MiB to carol; the first `accepted` are accepted (carol's
/// receive runs them) and get one byte each: drips that never finish. The client is returned
/// so the offers stay open.
pub(crate) async fn dripper(
    srv: &TestServer,
    login: &str,
    count: usize,
    accepted: usize,
) -> Client {
    let data = pseudo_random_bytes(1 << 20, 3);
    let (m, _events) = Client::connect(srv.chat).await.unwrap();
    m.login(login, &password(login)).await.unwrap();
    for i in 0..count {
        let offer = m
            .offer_file(OfferFile {
                to: "carol".into(),
                filename: format!("drip-{login}-{i}.bin"),
                size: data.len() as u64,
                sha256: Some(sha256_hex(&data)),
                mime: None,
            })
            .await
            .unwrap();
        if i < accepted {
            let grant = tokio::time::timeout(WAIT, offer.answer())
                .await
                .unwrap()
                .unwrap();
            patch(&grant.url, &grant.token, 0, &data[..1]).await;
        } else {
            // Only our wait for the answer ends; the offer stays open on the server.
            drop(offer);
        }
    }
    m
}

fn receive(srv: &TestServer, out_dir: &std::path::Path, window_ms: &str) -> Running {
    Running::spawn(
        srv.as_user("carol")
            .env("MSIM_RECEIVE_SLOW_WINDOW_MS", window_ms)
            .env("MSIM_RECEIVE_SLOW_BYTES", "65536")
            .args(["receive", "--accept-all", "--json", "--out"])
            .arg(out_dir),
    )
}

/// Bob sends `pic.jpg` with the CLI; carol's receive reports it verified within [`WAIT`].
pub(crate) fn honest_picture_arrives(
    srv: &TestServer,
    carol: &mut Running,
    out_dir: &std::path::Path,
) {
    let picture = pseudo_random_bytes(200_000, 11);
    let path = srv.subdir("bob").unwrap().join("pic.jpg");
    std::fs::write(&path, &picture).unwrap();
    let _bob = Running::spawn(srv.as_user("bob").args(["send-file", "carol"]).arg(&path));
    let received = carol.stdout.wait_for_json("pic.jpg received", WAIT, |v| {
        v["event"] == "received" && v["filename"] == "pic.jpg"
    });
    assert_eq!(received["verified"], true, "{received}");
    assert_eq!(std::fs::read(out_dir.join("pic.jpg")).unwrap(), picture);
}

/// No drip file was reported or presented as complete, and receive still runs.
fn drippers_still_held(carol: &mut Running, out_dir: &std::path::Path) {
    for line in carol.stdout.seen_json() {
        assert!(
            !line["filename"].as_str().unwrap_or("").starts_with("drip-"),
            "a drip file was reported: {line}"
        );
    }
    for entry in std::fs::read_dir(out_dir).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        assert!(!name.starts_with("drip-"), "{name} presented as complete");
    }
    carol.assert_running();
}

#[test]
fn drippers_on_every_slot_yield_to_an_honest_picture_and_a_slow_upload_completes() {
    let srv = TestServer::start();
    for login in ["bob", "carol", "dave", "mallory", "mallet"] {
        run_expect(srv.as_user(login).args(["register", "--json"]), 0);
    }
    let out_dir = srv.subdir("inbox").unwrap();
    let mut carol = receive(&srv, &out_dir, "300");
    let rt = tokio::runtime::Runtime::new().unwrap();
    // Two accounts, two drips each: all four download slots.
    let drippers = rt.block_on(async {
        (
            dripper(&srv, "mallory", 2, 2).await,
            dripper(&srv, "mallet", 2, 2).await,
        )
    });

    honest_picture_arrives(&srv, &mut carol, &out_dir);

    // A slow honest upload (about 80 KiB/s, under the 64 KiB per 300 ms minimum) takes turns
    // with the drippers and completes.
    let slow = pseudo_random_bytes(256 << 10, 12);
    let chat = srv.chat;
    let uploading = {
        let slow = slow.clone();
        rt.spawn(async move {
            let (d, _events) = Client::connect(chat).await.unwrap();
            d.login("dave", &password("dave")).await.unwrap();
            let grant = accepted_by_carol(&d, "slow.bin", &slow, true).await;
            for (i, piece) in slow.chunks(8 << 10).enumerate() {
                patch(&grant.url, &grant.token, i * (8 << 10), piece).await;
                // The sender's pace, not a synchronisation.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            d
        })
    };
    let received = carol.stdout.wait_for_json("slow.bin received", WAIT, |v| {
        v["event"] == "received" && v["filename"] == "slow.bin"
    });
    assert_eq!(received["verified"], true, "{received}");
    assert_eq!(std::fs::read(out_dir.join("slow.bin")).unwrap(), slow);
    let dave = rt.block_on(uploading).unwrap();

    drippers_still_held(&mut carol, &out_dir);
    drop((drippers, dave));
}

#[test]
fn one_sender_gets_at_most_two_slots() {
    let srv = TestServer::start();
    for login in ["bob", "carol", "mallory"] {
        run_expect(srv.as_user(login).args(["register", "--json"]), 0);
    }
    let out_dir = srv.subdir("inbox").unwrap();
    // Pausing is off (a window of ten minutes): only the per-sender limit leaves room.
    let mut carol = receive(&srv, &out_dir, "600000");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mallory = rt.block_on(dripper(&srv, "mallory", 4, 2));

    honest_picture_arrives(&srv, &mut carol, &out_dir);
    drippers_still_held(&mut carol, &out_dir);
    drop(mallory);
}

/// `login` offers carol two small files without a SHA-256, uploads them whole once accepted
/// and never declares their hash: each of carol's downloads then waits 10 s for it.
async fn unhashed_sender(srv: &TestServer, login: &str) -> Client {
    let data = pseudo_random_bytes(1000, 5);
    let (m, _events) = Client::connect(srv.chat).await.unwrap();
    m.login(login, &password(login)).await.unwrap();
    for i in 0..2 {
        let name = format!("drip-unhashed-{login}-{i}.bin");
        let grant = accepted_by_carol(&m, &name, &data, false).await;
        patch(&grant.url, &grant.token, 0, &data).await;
    }
    m
}

/// Attack 5: a download that had every byte kept its slot while it waited (10 s) for the
/// sender's hash, so two accounts sending small files whose hash they never declare kept
/// all four slots, again and again, and honest files waited.
#[test]
fn downloads_waiting_for_the_senders_hash_hold_no_slot() {
    let srv = TestServer::start();
    for login in ["bob", "carol", "mallory", "mallet"] {
        run_expect(srv.as_user(login).args(["register", "--json"]), 0);
    }
    let out_dir = srv.subdir("inbox").unwrap();
    // Pausing is off (a window of ten minutes).
    let mut carol = receive(&srv, &out_dir, "600000");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let senders = rt.block_on(async {
        (
            unhashed_sender(&srv, "mallory").await,
            unhashed_sender(&srv, "mallet").await,
        )
    });
    let sent = Instant::now();
    honest_picture_arrives(&srv, &mut carol, &out_dir);
    let took = sent.elapsed();
    assert!(
        took < Duration::from_secs(6),
        "the picture took {took:?}: it waited for the unhashed files' 10 s"
    );
    carol.assert_running();
    drop(senders);
}
