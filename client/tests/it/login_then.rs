//! `Client::login_then`: the next request goes out right behind `CONNECT-CONTINUE`, without
//! waiting for `CONNECT-OK` (PROTOCOL.md §4.5, "Requests behind the login").

use msim::proto::{ConnectFailure, OfferFile};
use msim::{Client, ClientError, Event, LoginOptions};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

use crate::common::{self, password};
use crate::library::{next, user, WAIT};

fn offer(filename: &str) -> OfferFile {
    OfferFile {
        to: "bob".into(),
        filename: filename.into(),
        size: 1000,
        sha256: Some("ab".repeat(32)),
        mime: None,
    }
}

/// A fake server that answers `CONNECT-OK` only once the offer has arrived: a client that
/// waited for `CONNECT-OK` before offering would never get it.
#[tokio::test]
async fn the_offer_goes_out_before_connect_ok() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (socket, _) = listener.accept().await.unwrap();
        let (read, mut write) = socket.into_split();
        let mut lines = BufReader::new(read).lines();
        let connect = lines.next_line().await.unwrap().unwrap();
        assert!(connect.starts_with("CONNECT "), "{connect}");
        let r = reference(&connect);
        write
            .write_all(format!("CONNECT-ACK salt=s-1 ref={r}\n").as_bytes())
            .await
            .unwrap();
        let cont = lines.next_line().await.unwrap().unwrap();
        assert!(cont.starts_with("CONNECT-CONTINUE "), "{cont}");
        let offer = lines.next_line().await.unwrap().unwrap();
        assert!(offer.starts_with("SEND-FILE-PROXY "), "{offer}");
        let ok = format!(
            "CONNECT-OK login=alice@localhost domain=localhost federation=false \
             max-line=65536 max-text=16384 max-file-size=1000000 server=fake ref={}\n\
             SEND-FILE-PROXY-PENDING transfer-id=t1 to=bob@localhost \
             expires=2030-01-01T00:00:00Z ref={}\n",
            reference(&cont),
            reference(&offer)
        );
        write.write_all(ok.as_bytes()).await.unwrap();
        // Keep the connection open until the client is done.
        let _ = lines.next_line().await;
    });
    let (client, _events) = Client::connect(addr).await.unwrap();
    let options = LoginOptions::default();
    let login = client.login_then("alice", "pw", &options, |c| async move {
        c.offer_file(offer("a.bin")).await
    });
    let (ok, offered) = tokio::time::timeout(WAIT, login)
        .await
        .expect("the login waited for CONNECT-OK before sending the offer")
        .unwrap();
    assert_eq!(ok.login, "alice@localhost");
    assert_eq!(offered.unwrap().transfer_id(), "t1");
    drop(client);
    tokio::time::timeout(WAIT, server).await.unwrap().unwrap();
}

fn reference(line: &str) -> String {
    line.split(' ')
        .find_map(|f| f.strip_prefix("ref="))
        .expect("a ref")
        .to_owned()
}

/// Against msim-chat: the offer behind a good login is made; behind a wrong password it is
/// refused (`ERROR-NOT-LOGGED-IN`), has no effect, and the login's failure is what the caller
/// sees.
#[tokio::test]
async fn msim_chat_handles_the_offer_after_the_login() {
    let srv = tokio::task::spawn_blocking(common::start).await.unwrap();
    let (alice, _) = user(&srv, "alice").await;
    // The failure below throttles this address; alice's device cookie is exempt (§4.3).
    let device = LoginOptions::with_device(alice.device_cookie());
    let (_bob, mut bob_events) = user(&srv, "bob").await;

    let (wrong, _events) = Client::connect(srv.chat).await.unwrap();
    let err = wrong
        .login_then(
            "alice",
            "not-the-password",
            &LoginOptions::default(),
            |c| async move { c.offer_file(offer("never.bin")).await },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::AuthFailed {
                reason: ConnectFailure::Invalid,
                ..
            }
        ),
        "{err:?}"
    );

    let (client, _events) = Client::connect(srv.chat).await.unwrap();
    let (ok, offered) = client
        .login_then("alice", &password("alice"), &device, |c| async move {
            c.offer_file(offer("behind.bin")).await
        })
        .await
        .unwrap();
    assert_eq!(ok.login, "alice@localhost");
    assert_eq!(client.me().as_deref(), Some("alice@localhost"));
    let offered = offered.unwrap();
    // Bob's first offer is the one behind the good login: the other one was never made.
    let got = next(&mut bob_events, |e| match e {
        Event::FileOffered(o) => Some(o),
        _ => None,
    })
    .await;
    assert_eq!(got.filename, "behind.bin");
    assert_eq!(got.transfer_id, offered.transfer_id());
}
