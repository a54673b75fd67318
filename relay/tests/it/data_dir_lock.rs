//! One relay per data directory: a second relay (or msim-chat's embedded relay) started on the
//! directory of a running one is refused with a clear error before it touches any file (two
//! would both run recovery and write the same `.part` files); once the first stops, a new one
//! starts.

use crate::support;

use std::time::Duration;

use support::{keyring, test_config, utf8, Relay, WAIT};
use tokio::net::TcpListener;
use tokio::time::timeout;

#[tokio::test]
async fn a_second_relay_on_a_served_data_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), false, |_| {}).await;
    // Serving (its storage is open) once it answers.
    let (status, _) = relay.request("GET", "/healthz", None, b"").await;
    assert_eq!(status, 200);
    relay.upload_and_download("before", b"kept").await;

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let second = timeout(
        WAIT,
        msim_relay::serve(
            listener,
            test_config(dir.path(), keyring()),
            std::future::pending(),
        ),
    )
    .await
    .expect("the second relay gives up at once");
    let error = second
        .expect_err("a second relay on the same directory")
        .to_string();
    assert!(error.contains("in use by another running relay"), "{error}");
    // The first is unaffected.
    relay.upload_and_download("after", b"still serving").await;
    relay.stop().await;

    // Stopped: the directory is free, and what it stored is served by the next relay.
    let next = Relay::start(dir.path(), false, |c| {
        c.shutdown_grace = Duration::from_secs(1);
    })
    .await;
    let down = next.token("before", msim_shared::token::Direction::Download, 4);
    let (status, body) = next
        .request("GET", "/v1/transfers/before", Some(&down), b"")
        .await;
    assert_eq!((status, utf8(&body).as_str()), (200, "kept"));
    next.stop().await;
}
