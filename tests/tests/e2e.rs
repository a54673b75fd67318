//! End to end across crates: a chat server with two real relays (in-process, real TCP and
//! HTTP), users driven by the client library, files negotiated over the chat protocol and
//! moved over the relays' HTTP API.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use msim::transfer::{self, Transfer, TransferOptions};
use msim::{Client, Events};
use msim_shared::proto::{Event, OfferFile};
use msim_testkit::{sha256_hex, test_data, System, PASSWORD};
use tokio::sync::{mpsc, watch};

/// A chat server wired to `relays` real relays sharing one token secret.
async fn start_system(relays: usize) -> System {
    System::builder().relays(relays).start().await.unwrap()
}

async fn user(system: &System, login: &str) -> (Client, Events) {
    let (client, events) = Client::connect(system.chat).await.unwrap();
    client.register(login, PASSWORD).await.unwrap();
    client.login(login, PASSWORD).await.unwrap();
    (client, events)
}

async fn next_offer(events: &mut Events) -> msim_shared::proto::FileOffered {
    loop {
        match tokio::time::timeout(Duration::from_secs(20), events.recv())
            .await
            .expect("an offer in time")
            .expect("events open")
        {
            Event::FileOffered(offer) => {
                return offer;
            }
            _ => continue,
        }
    }
}

/// Uploads `data` with a body we control: the first half, then (once `release` says so) the
/// rest. Returns the HTTP status.
async fn staged_upload(grant: &Transfer, data: Bytes, mut release: watch::Receiver<bool>) -> u16 {
    let url: hyper::Uri = grant.url.parse().unwrap();
    let authority = url.authority().unwrap().clone();
    let stream = tokio::net::TcpStream::connect(authority.as_str())
        .await
        .unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(4);
    let half = data.len() / 2;
    let feeder = tokio::spawn(async move {
        for chunk in data.slice(..half).chunks(1 << 20) {
            tx.send(Ok(Frame::data(Bytes::copy_from_slice(chunk))))
                .await
                .unwrap();
        }
        // Hold the rest back until the recipient has started receiving.
        while !*release.borrow_and_update() {
            release.changed().await.unwrap();
        }
        for chunk in data.slice(half..).chunks(1 << 20) {
            tx.send(Ok(Frame::data(Bytes::copy_from_slice(chunk))))
                .await
                .unwrap();
        }
    });
    let body = StreamBody::new(tokio_stream_from(rx));
    let request = hyper::Request::put(url.path())
        .header("host", authority.as_str())
        .header("authorization", format!("Bearer {}", grant.token))
        .header("content-length", grant.size)
        .body(body)
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status().as_u16();
    let _ = response.into_body().collect().await;
    feeder.await.unwrap();
    status
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_20_mib_picture_streams_to_the_recipient_while_it_is_uploaded() {
    let system = start_system(1).await;
    let (alice, _alice_events) = user(&system, "alice").await;
    let (bob, mut bob_events) = user(&system, "bob").await;

    let data = Bytes::from(test_data(20 << 20));
    let sha = sha256_hex(&data);
    let offer = alice
        .offer_file(OfferFile {
            to: "bob".into(),
            filename: "holiday/../cat.jpg".into(),
            size: data.len() as u64,
            sha256: Some(sha.clone()),
            mime: Some("image/jpeg".into()),
        })
        .await
        .unwrap();
    let offered = next_offer(&mut bob_events).await;
    assert_eq!(offered.transfer_id, offer.transfer_id());
    assert_eq!(offered.filename, "cat.jpg", "the path is stripped");
    assert_eq!(offered.from, "alice@localhost");

    let download_grant = bob.accept_file(&offered.transfer_id).await.unwrap();
    let upload_grant = offer.answer().await.unwrap();
    let mut upload = Transfer::from(&upload_grant);
    upload.size = data.len() as u64;

    // The download starts first; the uploader holds back half the file until the recipient
    // has received bytes, so the test passes only if the relay streams during the upload.
    let (release_tx, release_rx) = watch::channel(false);
    let release_tx = Arc::new(release_tx);
    let progress: transfer::Progress = {
        let release_tx = release_tx.clone();
        Arc::new(move |done, _total| {
            if done > 0 {
                let _ = release_tx.send(true);
            }
        })
    };
    let dest = system.dir.path().join("received-cat.jpg");
    let download = {
        let grant = Transfer::from(&download_grant);
        let dest = dest.clone();
        tokio::spawn(async move {
            transfer::download(
                &grant,
                &dest,
                None,
                Some(progress),
                &TransferOptions::default(),
            )
            .await
        })
    };
    let status = tokio::time::timeout(
        Duration::from_secs(60),
        staged_upload(&upload, data.clone(), release_rx),
    )
    .await
    .expect("the recipient received bytes before the upload finished");
    assert_eq!(status, 201, "upload accepted");
    let report = download.await.unwrap().unwrap();
    assert_eq!(report.size, data.len() as u64);
    assert_eq!(report.sha256, sha);
    assert_eq!(tokio::fs::read(&dest).await.unwrap(), &data[..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_server_with_two_relays_uses_both() {
    let system = start_system(2).await;
    let (alice, _alice_events) = user(&system, "alice").await;
    let (bob, mut bob_events) = user(&system, "bob").await;
    let source = system.dir.path().join("small.png");
    tokio::fs::write(&source, b"\x89PNG tiny picture")
        .await
        .unwrap();

    let mut used = HashSet::new();
    for round in 0..4 {
        let offer = alice
            .offer_file(OfferFile {
                to: "bob".into(),
                filename: format!("pic{round}.png"),
                size: 17,
                sha256: None,
                mime: None,
            })
            .await
            .unwrap();
        let offered = next_offer(&mut bob_events).await;
        let download_grant = bob.accept_file(&offered.transfer_id).await.unwrap();
        let upload_grant = offer.answer().await.unwrap();
        assert_eq!(
            upload_grant.url, download_grant.url,
            "both sides use one relay"
        );
        let relay: SocketAddr = format!("{}:{}", upload_grant.connect, upload_grant.port)
            .parse()
            .unwrap();
        assert!(
            system.relays.contains(&relay),
            "{relay} is a configured relay"
        );
        used.insert(relay);

        let report = transfer::upload(
            &Transfer::from(&upload_grant),
            &source,
            None,
            &TransferOptions::default(),
        )
        .await
        .unwrap();
        assert_eq!(report.size, 17);
        let dest = system.dir.path().join(format!("got{round}.png"));
        transfer::download(
            &Transfer::from(&download_grant),
            &dest,
            None,
            None,
            &TransferOptions::default(),
        )
        .await
        .unwrap();
        assert_eq!(
            tokio::fs::read(&dest).await.unwrap(),
            b"\x89PNG tiny picture"
        );
    }
    assert_eq!(
        used.len(),
        2,
        "transfers were spread over both relays: {used:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_and_receipts_flow_between_library_clients() {
    let system = start_system(1).await;
    let (alice, mut alice_events) = user(&system, "alice").await;
    let (bob, mut bob_events) = user(&system, "bob").await;
    let sent = alice
        .send_message("bob", "Привет, Bob — 100% fluffy cat\nsecond line")
        .await
        .unwrap();
    let got = loop {
        match tokio::time::timeout(Duration::from_secs(20), bob_events.recv())
            .await
            .unwrap()
            .unwrap()
        {
            Event::Message(m) => break m,
            _ => continue,
        }
    };
    assert_eq!(got.id, sent.id);
    assert_eq!(got.text, "Привет, Bob — 100% fluffy cat\nsecond line");
    assert_eq!(got.from, "alice@localhost");
    bob.mark_read(&got.id).await.unwrap();
    let receipt = loop {
        match tokio::time::timeout(Duration::from_secs(20), alice_events.recv())
            .await
            .unwrap()
            .unwrap()
        {
            Event::ReadReceipt(r) => break r,
            _ => continue,
        }
    };
    assert_eq!(receipt.id, sent.id);
    assert_eq!(receipt.by, "bob@localhost");
}
