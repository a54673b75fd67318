//! A download that follows an upload failing its SHA-256 check is aborted before its last
//! byte (PROTOCOL.md §11.5): it never ends as if the file were whole, even when every byte had
//! arrived before the check.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use msim_shared::token::Direction;

use crate::http_support::{data, header, Relay};

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn a_download_following_an_upload_that_fails_its_check_never_completes() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), |_| {}).await;
    let declared = data(1 << 20);
    let size = declared.len();
    // Only the very last byte differs from what the token declares.
    let mut sent = declared.clone();
    sent[size - 1] ^= 1;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(4);
    let body = StreamBody::new(futures::stream::poll_fn(move |cx| rx.poll_recv(cx))).boxed();
    let up = relay.token("bad", Direction::Upload, size as u64, Some(&declared));
    let req = http::Request::builder()
        .method(Method::PUT)
        .uri(relay.url("/v1/transfers/bad"))
        .header("authorization", format!("Bearer {up}"))
        .header("content-length", size.to_string())
        .body(body)
        .unwrap();
    let put = tokio::spawn(relay.client.clone().request(req));
    let half = size / 2;
    tx.send(Ok(Frame::data(Bytes::copy_from_slice(&sent[..half]))))
        .await
        .unwrap();
    let down = relay.token("bad", Direction::Download, size as u64, Some(&declared));
    let r = tokio::time::timeout(WAIT, relay.get("bad", &down, &[]))
        .await
        .expect("download head");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        header(&r, "msim-upload-complete").as_deref(),
        Some("false"),
        "the download follows the upload"
    );
    tx.send(Ok(Frame::data(Bytes::copy_from_slice(&sent[half..]))))
        .await
        .unwrap();
    drop(tx);
    let put = tokio::time::timeout(WAIT, put)
        .await
        .expect("upload answer")
        .unwrap()
        .unwrap();
    assert_eq!(put.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let got = tokio::time::timeout(WAIT, r.into_body().collect())
        .await
        .expect("download end");
    match got {
        Err(_) => {}
        Ok(body) => assert!(
            body.to_bytes().len() < size,
            "a download of a file that failed its check ended whole"
        ),
    }
    relay.stop().await;
}
