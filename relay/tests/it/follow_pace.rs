//! An upload paces itself to the downloads that follow it (storage `pace.rs`), but not to one
//! that stopped reading: the upload completes and the stalled download, once it reads again,
//! still gets every byte.

use crate::http_support;

use std::time::Duration;

use http::StatusCode;
use http_body_util::BodyExt;
use msim_shared::token::Direction;

use http_support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_completes_while_its_follower_stopped_reading() {
    let dir = tempfile::tempdir().unwrap();
    let relay = std::sync::Arc::new(Relay::start(dir.path(), |_| {}).await);
    let payload = std::sync::Arc::new(data(48 << 20));
    let size = payload.len() as u64;
    let up = relay.token("stall-1", Direction::Upload, size, Some(&payload));
    let down = relay.token("stall-1", Direction::Download, size, None);

    // The download asks first and follows the upload from its first byte.
    let get = {
        let relay = relay.clone();
        let down = down.clone();
        tokio::spawn(async move { relay.get("stall-1", &down, &[]).await })
    };
    let put = {
        let (relay, payload) = (relay.clone(), payload.clone());
        tokio::spawn(async move { relay.put("stall-1", &up, &payload).await })
    };
    let resp = get.await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let mut got = Vec::with_capacity(payload.len());
    while got.len() < 1 << 20 {
        let f = body.frame().await.unwrap().unwrap();
        got.extend_from_slice(&f.into_data().unwrap());
    }
    // The download stops reading here (the body is held, not polled): the upload goes on
    // and completes (the pacing rules themselves are tested in storage's `pace.rs`, on a
    // paused clock), and the download, read again, gets every byte.
    let put = tokio::time::timeout(Duration::from_secs(60), put)
        .await
        .expect("the upload waited for a download that stopped reading")
        .unwrap();
    assert_eq!(put.status(), StatusCode::CREATED);

    while let Some(f) = body.frame().await {
        got.extend_from_slice(&f.unwrap().into_data().unwrap());
    }
    assert_eq!(got.len(), payload.len());
    assert_eq!(hex(&got), hex(&payload));
}
