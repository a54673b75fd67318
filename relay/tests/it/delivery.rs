//! Delivered files off the sender's quota (issue 15): once a download has handed over a
//! file's last byte, the file no longer counts against its sender's quota, so a sender who
//! sent the largest allowed file can go on sending pictures; undelivered uploads still count.

use std::future::Future;
use std::time::Duration;

use http::StatusCode;
use msim_shared::token::Direction;

use crate::http_support::{body_bytes, body_text, data, header, hex, Relay};

/// Largest file of these relays, and the per-sender quota: equal, the tightest setting (the
/// old defaults of msim-chat's embedded relay: 1 GiB and 1 GiB), scaled down.
const LARGEST: usize = 4 << 20;
/// A picture.
const PICTURE: usize = 200_000;

async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(30), f)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within 30 s"))
}

async fn start(dir: &std::path::Path) -> Relay {
    Relay::start(dir, |c| {
        c.max_file_size = LARGEST as u64;
        c.per_sender_quota = LARGEST as u64;
    })
    .await
}

/// Upload `payload` as `id` (with its SHA-256 declared); the status.
async fn send(relay: &Relay, id: &str, payload: &[u8]) -> (StatusCode, String) {
    let up = relay.token(id, Direction::Upload, payload.len() as u64, Some(payload));
    let r = within("upload", relay.put(id, &up, payload)).await;
    let status = r.status();
    (status, within("upload body", body_text(r)).await)
}

/// Download `id` whole and check it is `payload`, as a recipient verifying the file would.
async fn receive(relay: &Relay, id: &str, payload: &[u8]) {
    let down = relay.token(id, Direction::Download, payload.len() as u64, Some(payload));
    let r = within("download", relay.get(id, &down, &[])).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        header(&r, "msim-sha256").as_deref(),
        Some(hex(payload).as_str())
    );
    let got = within("download body", body_bytes(r)).await;
    assert!(got == payload, "{id}: downloaded bytes differ");
}

#[tokio::test]
async fn largest_file_delivered_then_pictures_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start(dir.path()).await;
    let big = data(LARGEST);
    assert_eq!(send(&relay, "big", &big).await.0, StatusCode::CREATED);
    receive(&relay, "big", &big).await;
    // The old relay answered this `429 sender quota exceeded` until the big file's TTL.
    let pic = data(PICTURE);
    let (status, msg) = send(&relay, "pic1", &pic).await;
    assert_eq!(status, StatusCode::CREATED, "{msg}");
    receive(&relay, "pic1", &pic).await;
    // Pictures go on, each delivered in one piece (the small-download path).
    for i in 2..=30 {
        let id = format!("pic{i}");
        let (status, msg) = send(&relay, &id, &pic).await;
        assert_eq!(status, StatusCode::CREATED, "{id}: {msg}");
        receive(&relay, &id, &pic).await;
    }
    // The big file stays downloadable (another device of the recipient) until its TTL.
    receive(&relay, "big", &big).await;
    relay.stop().await;
    // Delivery is in the index: after a restart the sender still has the room.
    let relay = start(dir.path()).await;
    let (status, msg) = send(&relay, "after-restart", &big).await;
    assert_eq!(status, StatusCode::CREATED, "{msg}");
    relay.stop().await;
}

#[tokio::test]
async fn quota_still_stops_uploads_nobody_downloads() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start(dir.path()).await;
    let big = data(LARGEST);
    assert_eq!(send(&relay, "big", &big).await.0, StatusCode::CREATED);
    let pic = data(PICTURE);
    let (status, msg) = send(&relay, "pic", &pic).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert!(msg.contains("quota"), "{msg}");
    // Pictures nobody downloads fill the quota too.
    let dir2 = tempfile::tempdir().unwrap();
    let relay2 = Relay::start(dir2.path(), |c| c.per_sender_quota = 3 * PICTURE as u64).await;
    for i in 0..3 {
        let id = format!("p{i}");
        assert_eq!(
            send(&relay2, &id, &pic).await.0,
            StatusCode::CREATED,
            "{id}"
        );
    }
    assert_eq!(
        send(&relay2, "p3", &pic).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
    // One of them downloaded: room for exactly one more.
    receive(&relay2, "p1", &pic).await;
    assert_eq!(send(&relay2, "p3", &pic).await.0, StatusCode::CREATED);
    assert_eq!(
        send(&relay2, "p4", &pic).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
    relay2.stop().await;
    relay.stop().await;
}

#[tokio::test]
async fn only_a_download_to_the_last_byte_delivers() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start(dir.path()).await;
    let big = data(LARGEST);
    let n = big.len();
    assert_eq!(send(&relay, "big", &big).await.0, StatusCode::CREATED);
    let down = relay.token("big", Direction::Download, n as u64, Some(&big));
    let pic = data(PICTURE);
    // Everything but the last byte, in a large and a small range: not delivered.
    for range in [
        format!("bytes=0-{}", n - 2),
        format!("bytes={}-{}", n - 100, n - 2),
    ] {
        let r = within(
            "range",
            relay.get("big", &down, &[("range", range.clone())]),
        )
        .await;
        assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT, "{range}");
        within("range body", body_bytes(r)).await;
        assert_eq!(
            send(&relay, "pic", &pic).await.0,
            StatusCode::TOO_MANY_REQUESTS,
            "after {range}"
        );
    }
    // A resumed download fetching the rest delivers it.
    let r = within(
        "resume",
        relay.get("big", &down, &[("range", format!("bytes={}-", n - 1))]),
    )
    .await;
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(within("resume body", body_bytes(r)).await, big[n - 1..]);
    assert_eq!(send(&relay, "pic", &pic).await.0, StatusCode::CREATED);
    relay.stop().await;
}

/// The attack: a download token's owner asks for the last byte alone (`Range: bytes=-1`,
/// or `bytes=<size-1>-`) to release the sender's quota without taking the file, then repeats
/// with the next upload. Only bytes handed out from the first one on count.
#[tokio::test]
async fn the_last_byte_alone_does_not_release_the_quota() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start(dir.path()).await;
    let big = data(LARGEST);
    let n = big.len();
    assert_eq!(send(&relay, "big", &big).await.0, StatusCode::CREATED);
    let down = relay.token("big", Direction::Download, n as u64, Some(&big));
    let pic = data(PICTURE);
    for range in ["bytes=-1".to_string(), format!("bytes={}-", n - 1)] {
        let r = within(
            "last byte",
            relay.get("big", &down, &[("range", range.clone())]),
        )
        .await;
        assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT, "{range}");
        assert_eq!(within("body", body_bytes(r)).await, big[n - 1..]);
        assert_eq!(
            send(&relay, "pic", &pic).await.0,
            StatusCode::TOO_MANY_REQUESTS,
            "quota released by {range}"
        );
    }
    // The whole file, in two ranges that join up: delivered.
    for range in [
        format!("bytes=0-{}", n / 2),
        format!("bytes={}-", n / 2 + 1),
    ] {
        let r = within("half", relay.get("big", &down, &[("range", range)])).await;
        assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
        within("half body", body_bytes(r)).await;
    }
    assert_eq!(send(&relay, "pic", &pic).await.0, StatusCode::CREATED);
    relay.stop().await;
}

#[tokio::test]
async fn download_following_the_upload_delivers_it() {
    use http::Method;
    use http_body_util::{BodyExt, StreamBody};
    use hyper::body::Frame;

    let dir = tempfile::tempdir().unwrap();
    let relay = start(dir.path()).await;
    let big = data(LARGEST);
    let half = big.len() / 2;
    // The upload's body is fed by hand: half of it, then (once the download follows) the rest.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<bytes::Bytes>, std::io::Error>>(4);
    let body = StreamBody::new(tokio_stream_from(rx)).boxed();
    let up = relay.token("big", Direction::Upload, big.len() as u64, Some(&big));
    let len = big.len().to_string();
    let req = http::Request::builder()
        .method(Method::PUT)
        .uri(relay.url("/v1/transfers/big"))
        .header("authorization", format!("Bearer {up}"))
        .header("content-length", len)
        .body(body)
        .unwrap();
    let put = tokio::spawn(relay.client.clone().request(req));
    tx.send(Ok(Frame::data(bytes::Bytes::copy_from_slice(&big[..half]))))
        .await
        .unwrap();
    let down = relay.token("big", Direction::Download, big.len() as u64, Some(&big));
    let r = within("download head", relay.get("big", &down, &[])).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        header(&r, "msim-upload-complete").as_deref(),
        Some("false"),
        "the download follows the upload"
    );
    tx.send(Ok(Frame::data(bytes::Bytes::copy_from_slice(&big[half..]))))
        .await
        .unwrap();
    drop(tx);
    assert!(within("body", body_bytes(r)).await == big);
    let put = within("upload", put).await.unwrap().unwrap();
    assert_eq!(put.status(), StatusCode::CREATED);
    let (status, msg) = send(&relay, "pic", &data(PICTURE)).await;
    assert_eq!(status, StatusCode::CREATED, "{msg}");
    relay.stop().await;
}

/// The frames of `rx` as a stream.
fn tokio_stream_from<T>(mut rx: tokio::sync::mpsc::Receiver<T>) -> impl futures::Stream<Item = T> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
