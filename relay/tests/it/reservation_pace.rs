//! Attack 5: a partial upload keeps its reservation only by moving at the pace that completes
//! it before it expires. Opening a writer counted as progress, so an empty `PATCH` every
//! minute (or a byte now and then, or a connection kept open sending one) kept a reservation
//! of any size for the transfer's whole lifetime, and enough of them kept every real upload
//! out (`507`).

use crate::support;

use msim_shared::token::Direction;
use support::{exchange, utf8, Relay};

/// `PATCH` of `body` at `offset` to `id` (1 MiB declared).
async fn patch(relay: &Relay, id: &str, offset: u64, body: &[u8]) {
    let up = relay.token(id, Direction::Upload, 1 << 20);
    let head = format!(
        "PATCH /v1/transfers/{id} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {up}\r\nUpload-Offset: {offset}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let (status, text) = exchange(relay.addr, head.as_bytes(), body).await;
    assert_eq!(status, 204, "{}", utf8(&text));
}

#[tokio::test]
async fn empty_requests_and_stray_bytes_do_not_keep_a_reservation() {
    let dir = tempfile::tempdir().unwrap();
    let (relay, clock) = crate::limits::hoard_target(dir.path()).await;
    // Nine uploads declare 1 MiB each and send one byte.
    for k in 0..9 {
        patch(&relay, &format!("hoard-{k}"), 0, b"x").await;
    }
    // Every 100 s, within the reservation idle time: an empty request and one more byte.
    for round in 1..=3 {
        clock.advance(100);
        for k in 0..9 {
            let id = format!("hoard-{k}");
            patch(&relay, &id, round, b"").await;
            patch(&relay, &id, round, b"x").await;
        }
    }
    clock.advance(100);
    relay.upload_and_download("real", &vec![9u8; 2 << 20]).await;
    let (status, _) = relay
        .request(
            "HEAD",
            "/v1/transfers/hoard-0",
            Some(&relay.token("hoard-0", Direction::Upload, 1 << 20)),
            b"",
        )
        .await;
    assert_eq!(status, 410, "the idle reservation gave way");
    relay.stop().await;
}
