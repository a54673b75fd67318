//! Every kind of [`System`] works as a user sees it: two users of the msim library exchange a
//! message and a file through the chat server and its relay(s), with and without TLS.

use msim::transfer::{self, Transfer, TransferOptions};
use msim::{Client, ClientOptions, Events};
use msim_shared::proto::{Event, OfferFile};
use msim_testkit::{sha256_hex, test_data, System, PASSWORD};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

async fn user(system: &System, options: &ClientOptions, login: &str) -> (Client, Events) {
    let server = match system.cert {
        Some(_) => format!("tls://127.0.0.1:{}", system.chat.port()),
        None => system.chat.to_string(),
    };
    let (client, events) = Client::connect_to(&server, options.clone())
        .await
        .expect("connect");
    client.register(login, PASSWORD).await.expect("register");
    client.login(login, PASSWORD).await.expect("login");
    (client, events)
}

async fn next_offer(events: &mut Events) -> msim_shared::proto::FileOffered {
    loop {
        let event = tokio::time::timeout(WAIT, events.recv())
            .await
            .expect("an offer in time")
            .expect("events open");
        if let Event::FileOffered(offer) = event {
            return offer;
        }
    }
}

async fn a_file_goes_through(system: System) {
    let tls = system
        .cert
        .as_ref()
        .map(|c| msim_shared::tls::client_config(std::slice::from_ref(&c.cert)).expect("trust"));
    let options = ClientOptions {
        tls: tls.clone(),
        ..ClientOptions::default()
    };
    let (alice, _alice_events) = user(&system, &options, "alice").await;
    let (bob, mut bob_events) = user(&system, &options, "bob").await;
    let data = test_data(300_000);
    let source = system.dir.path().join("source");
    std::fs::write(&source, &data).expect("write");
    let offer = alice
        .offer_file(OfferFile {
            to: "bob".into(),
            filename: "data.bin".into(),
            size: data.len() as u64,
            sha256: Some(sha256_hex(&data)),
            mime: None,
        })
        .await
        .expect("offer");
    let offered = next_offer(&mut bob_events).await;
    let download = bob.accept_file(&offered.transfer_id).await.expect("accept");
    let upload = offer.answer().await.expect("answer");
    let scheme = if system.cert.is_some() {
        "https"
    } else {
        "http"
    };
    assert!(upload.url.starts_with(scheme), "{}", upload.url);
    let options = TransferOptions {
        tls,
        ..TransferOptions::default()
    };
    transfer::upload(&Transfer::from(&upload), &source, None, &options)
        .await
        .expect("upload");
    let dest = system.dir.path().join("dest");
    transfer::download(&Transfer::from(&download), &dest, None, None, &options)
        .await
        .expect("download");
    assert_eq!(std::fs::read(&dest).expect("read"), data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_relay_plain() {
    a_file_goes_through(System::builder().start().await.expect("start")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_relay_tls() {
    a_file_goes_through(System::builder().tls(true).start().await.expect("start")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_external_relays_tls() {
    let system = System::builder().relays(2).tls(true).start().await;
    a_file_goes_through(system.expect("start")).await;
}
