//! End-to-end transfer tests: streaming, resumed uploads and downloads, cancellation,
//! durability across restarts, expiry sweeps and the binary, on an in-process relay over real HTTP.

use crate::http_support;

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::channel::mpsc;
use futures::SinkExt;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use msim_shared::token::{Direction, Keyring};
use msim_storage::ManualClock;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use http_support::*;

#[tokio::test]
async fn download_streams_while_upload_arrives() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), |_| {}).await;
    let payload = data(20 << 20);
    let size = payload.len() as u64;
    let up = relay.token("big-1", Direction::Upload, size, Some(&payload));
    let down = relay.token("big-1", Direction::Download, size, None);

    // Upload body fed from a channel so the test controls the pace.
    let (mut tx, rx) = mpsc::channel::<Result<Frame<Bytes>, io::Error>>(4);
    let body: B = StreamBody::new(rx).boxed();
    let req = Request::put(relay.url("/v1/transfers/big-1"))
        .header("authorization", format!("Bearer {up}"))
        .header("content-length", size.to_string())
        .body(body)
        .unwrap();
    let put = tokio::spawn(relay.client.request(req));
    let half = 10 << 20;
    for c in payload[..half].chunks(1 << 20) {
        tx.send(Ok(Frame::data(Bytes::copy_from_slice(c))))
            .await
            .unwrap();
    }

    // The download starts before the upload finished and receives data already.
    let resp = relay.get("big-1", &down, &[]).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header(&resp, "content-length"), Some(size.to_string()));
    assert_eq!(header(&resp, "accept-ranges").as_deref(), Some("bytes"));
    let mut body = resp.into_body();
    let mut got = Vec::with_capacity(payload.len());
    // A relay that buffered the upload before serving it would send nothing here: the deadline
    // turns that into a failure instead of a hang.
    tokio::time::timeout(Duration::from_secs(20), async {
        while got.len() < (4 << 20) {
            let f = body.frame().await.unwrap().unwrap();
            if let Ok(d) = f.into_data() {
                got.extend_from_slice(&d);
            }
        }
    })
    .await
    .expect("the download did not stream the bytes uploaded so far");
    // The second half is still held back by the test: what arrived came from the first half.
    assert!(!put.is_finished(), "the upload cannot have finished yet");
    assert!(got.len() <= half, "more bytes downloaded than uploaded");
    assert_eq!(got[..], payload[..got.len()]);

    for c in payload[half..].chunks(1 << 20) {
        tx.send(Ok(Frame::data(Bytes::copy_from_slice(c))))
            .await
            .unwrap();
    }
    drop(tx);
    while let Some(f) = body.frame().await {
        if let Ok(d) = f.unwrap().into_data() {
            got.extend_from_slice(&d);
        }
    }
    let put = put.await.unwrap().unwrap();
    assert_eq!(put.status(), StatusCode::CREATED);
    assert_eq!(header(&put, "msim-sha256"), Some(hex(&payload)));
    assert!(body_text(put).await.contains(&hex(&payload)));
    assert_eq!(got.len(), payload.len());
    assert_eq!(hex(&got), hex(&payload));

    // Stored download afterwards, token in the query string (curl/browser style).
    let r = relay
        .send(
            Method::GET,
            &format!("/v1/transfers/big-1?token={down}"),
            None,
            &[],
            empty(),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(hex(&body_bytes(r).await), hex(&payload));
    relay.stop().await;
}

#[tokio::test]
async fn download_requested_before_upload_starts_waits_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), |_| {}).await;
    let payload = data(100_000);
    let size = payload.len() as u64;
    let down = relay.token("early", Direction::Download, size, None);
    let up = relay.token("early", Direction::Upload, size, None);
    let get = tokio::spawn({
        let client = relay.client.clone();
        let req = Request::get(relay.url("/v1/transfers/early"))
            .header("authorization", format!("Bearer {down}"))
            .body(empty())
            .unwrap();
        async move { client.request(req).await.unwrap() }
    });
    let r = relay.put("early", &up, &payload).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let g = get.await.unwrap();
    assert_eq!(g.status(), StatusCode::OK);
    assert_eq!(body_bytes(g).await, payload);
    relay.stop().await;
}

#[tokio::test]
async fn interrupted_upload_is_resumed_with_patch() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), |_| {}).await;
    let payload = data(3 << 20);
    let size = payload.len() as u64;
    let up = relay.token("resume-1", Direction::Upload, size, Some(&payload));

    // Send the headers and 1 MiB, then close our sending side: the connection breaks.
    let mut s = TcpStream::connect(relay.addr).await.unwrap();
    let head = format!(
        "PUT /v1/transfers/resume-1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {up}\r\nContent-Length: {size}\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&payload[..1 << 20]).await.unwrap();
    s.shutdown().await.unwrap();
    // Whatever the server answers (if anything), wait until it closed the connection: by then
    // the handler has stored what arrived.
    let mut sink = Vec::new();
    let _ = s.read_to_end(&mut sink).await;

    let h = relay
        .send(
            Method::HEAD,
            "/v1/transfers/resume-1",
            Some(&up),
            &[],
            empty(),
        )
        .await;
    assert_eq!(h.status(), StatusCode::OK);
    let offset: u64 = header(&h, "upload-offset").unwrap().parse().unwrap();
    assert_eq!(offset, 1 << 20);
    assert_eq!(header(&h, "upload-length"), Some(size.to_string()));
    assert_eq!(header(&h, "msim-upload-complete").as_deref(), Some("false"));

    // PUT again is refused with the offset to resume from.
    let r = relay.put("resume-1", &up, &payload).await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    assert_eq!(header(&r, "upload-offset"), Some(offset.to_string()));

    // A PATCH at the wrong offset is refused and told the right one.
    let r = relay.patch("resume-1", &up, 5, &payload[5..10]).await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    assert_eq!(header(&r, "upload-offset"), Some(offset.to_string()));

    // Continue in two PATCHes.
    let mid = 2 << 20;
    let r = relay
        .patch(
            "resume-1",
            &up,
            offset as u64,
            &payload[offset as usize..mid],
        )
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&r, "upload-offset"), Some(mid.to_string()));
    let r = relay
        .patch("resume-1", &up, mid as u64, &payload[mid..])
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "msim-sha256"), Some(hex(&payload)));

    let down = relay.token("resume-1", Direction::Download, size, None);
    let g = relay.get("resume-1", &down, &[]).await;
    assert_eq!(hex(&body_bytes(g).await), hex(&payload));
    relay.stop().await;
}

#[tokio::test]
async fn interrupted_download_is_resumed_with_range() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), |_| {}).await;
    let payload = data(2 << 20);
    let size = payload.len() as u64;
    let up = relay.token("rng", Direction::Upload, size, None);
    let down = relay.token("rng", Direction::Download, size, None);
    assert_eq!(
        relay.put("rng", &up, &payload).await.status(),
        StatusCode::CREATED
    );

    let r = relay.get("rng", &down, &[]).await;
    let mut body = r.into_body();
    let mut got = Vec::new();
    while got.len() < 300_000 {
        if let Ok(d) = body.frame().await.unwrap().unwrap().into_data() {
            got.extend_from_slice(&d);
        }
    }
    drop(body); // interrupted

    let r = relay
        .get("rng", &down, &[("range", format!("bytes={}-", got.len()))])
        .await;
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        header(&r, "content-range"),
        Some(format!("bytes {}-{}/{size}", got.len(), size - 1))
    );
    got.extend_from_slice(&body_bytes(r).await);
    assert_eq!(hex(&got), hex(&payload));

    let r = relay
        .get("rng", &down, &[("range", "bytes=10-19".into())])
        .await;
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(body_bytes(r).await, payload[10..20].to_vec());
    let r = relay
        .get("rng", &down, &[("range", "bytes=-5".into())])
        .await;
    assert_eq!(body_bytes(r).await, payload[payload.len() - 5..].to_vec());
    let r = relay
        .get("rng", &down, &[("range", format!("bytes={size}-"))])
        .await;
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(header(&r, "content-range"), Some(format!("bytes */{size}")));
    relay.stop().await;
}

#[tokio::test]
async fn delete_cancels_a_running_transfer() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), |_| {}).await;
    let payload = data(1 << 20);
    let size = payload.len() as u64;
    let up = relay.token("del", Direction::Upload, size, None);
    let down = relay.token("del", Direction::Download, size, None);
    let r = relay.patch("del", &up, 0, &payload[..1000]).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = relay.get("del", &down, &[]).await;
    assert_eq!(r.status(), StatusCode::OK);
    let mut body = r.into_body();
    let mut got = 0;
    while got < 1000 {
        got += body
            .frame()
            .await
            .unwrap()
            .unwrap()
            .into_data()
            .map(|d| d.len())
            .unwrap_or(0);
    }
    // The recipient cancels; the waiting download fails instead of hanging.
    let r = relay
        .send(
            Method::DELETE,
            "/v1/transfers/del",
            Some(&down),
            &[],
            empty(),
        )
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let rest = body.collect().await;
    assert!(rest.is_err(), "download must end with an error");
    let h = relay
        .send(Method::HEAD, "/v1/transfers/del", Some(&up), &[], empty())
        .await;
    assert_eq!(h.status(), StatusCode::GONE);
    let r = relay
        .send(Method::DELETE, "/v1/transfers/del", Some(&up), &[], empty())
        .await;
    assert_eq!(r.status(), StatusCode::GONE);
    // A GET is answered at once (the relay waits up to 30 s only for ids it never saw).
    assert_gone_fast(&relay, "del", &down, "cancelled").await;
    // The id is never reused.
    let r = relay.put("del", &up, &payload).await;
    assert_eq!(r.status(), StatusCode::GONE);
    assert!(body_text(r).await.contains("cancelled"));
    let r = relay.patch("del", &up, 0, &payload[..10]).await;
    assert_eq!(r.status(), StatusCode::GONE);
    assert_eq!(blob_files(dir.path()), 0);
    relay.stop().await;
}

#[tokio::test]
async fn completed_blob_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let payload = data(500_000);
    let size = payload.len() as u64;
    let relay = Relay::start(dir.path(), |_| {}).await;
    let up = relay.token("keep", Direction::Upload, size, None);
    let down = relay.token("keep", Direction::Download, size, None);
    assert_eq!(
        relay.put("keep", &up, &payload).await.status(),
        StatusCode::CREATED
    );
    relay.stop().await;

    let relay = Relay::start(dir.path(), |_| {}).await;
    let r = relay.get("keep", &down, &[]).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "msim-upload-complete").as_deref(), Some("true"));
    assert_eq!(body_bytes(r).await, payload);
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_uploads_complete_durably() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Arc::new(Relay::start(dir.path(), |_| {}).await);
    let mut tasks = tokio::task::JoinSet::new();
    for k in 0..32usize {
        let relay = relay.clone();
        tasks.spawn(async move {
            let id = format!("many-{k}");
            let payload = data(1000 + k * 3001);
            let up = relay.token(&id, Direction::Upload, payload.len() as u64, None);
            let r = relay.put(&id, &up, &payload).await;
            assert_eq!(r.status(), StatusCode::CREATED);
            assert_eq!(header(&r, "msim-sha256"), Some(hex(&payload)));
            (id, payload)
        });
    }
    let mut all = Vec::new();
    while let Some(r) = tasks.join_next().await {
        all.push(r.unwrap());
    }
    let relay = Arc::into_inner(relay).expect("tasks done");
    relay.stop().await;
    let relay = Relay::start(dir.path(), |_| {}).await;
    for (id, payload) in &all {
        let down = relay.token(id, Direction::Download, payload.len() as u64, None);
        let r = relay.get(id, &down, &[]).await;
        assert_eq!(r.status(), StatusCode::OK, "{id}");
        assert_eq!(header(&r, "msim-upload-complete").as_deref(), Some("true"));
        assert_eq!(body_bytes(r).await, *payload);
    }
    relay.stop().await;
}

fn relay_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_msim-relay"))
}

#[tokio::test]
async fn sweep_removes_short_ttl_blobs() {
    let dir = tempfile::tempdir().unwrap();
    // The relay's clock runs 1000 s behind, so a 10 s TTL has long passed in real time.
    let base = now() - 1000;
    let clock = Arc::new(ManualClock::new(base));
    let relay = Relay::start(dir.path(), |c| {
        c.ttl = Duration::from_secs(10);
        c.clock = clock.clone();
        c.wait_for_upload = Duration::from_secs(30);
        c.metrics = msim_relay::MetricsAccess::MainPort;
    })
    .await;
    for id in ["short-1", "short-2"] {
        let up = relay.token(id, Direction::Upload, 4, None);
        assert_eq!(
            relay.put(id, &up, b"data").await.status(),
            StatusCode::CREATED
        );
    }
    let down = relay.token("short-1", Direction::Download, 4, None);
    assert_eq!(
        relay.get("short-1", &down, &[]).await.status(),
        StatusCode::OK
    );

    // In-process sweep API with the relay's clock past the TTL.
    clock.advance(11);
    let rep = msim_relay::sweep_dir(dir.path(), Duration::from_secs(3600), clock.clone())
        .await
        .unwrap();
    assert_eq!(rep.removed_blobs, 2);
    assert_eq!(rep.removed_bytes, 8);
    // Back in time: the blob would not be expired for the relay, but the sweep (its own
    // store handle, as cron's) removed it and left a tombstone: 410 at once, no wait.
    clock.set(base);
    assert_gone_fast(&relay, "short-1", &down, "expired").await;
    let up = relay.token("short-2", Direction::Upload, 4, None);
    let r = relay.put("short-2", &up, b"data").await;
    assert_eq!(r.status(), StatusCode::GONE);

    // The real binary, as cron runs it, on a new short-TTL blob.
    let up = relay.token("short-3", Direction::Upload, 4, None);
    assert_eq!(
        relay.put("short-3", &up, b"data").await.status(),
        StatusCode::CREATED
    );
    let out = tokio::process::Command::new(relay_bin())
        .arg("sweep")
        .arg("--data-dir")
        .arg(dir.path())
        .env_remove("MSIM_RELAY_SECRET")
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("removed_blobs=1"), "{stdout}");
    assert!(stdout.contains("removed_bytes=4"), "{stdout}");
    assert!(stdout.contains("tombstones=3"), "{stdout}");
    let down = relay.token("short-3", Direction::Download, 4, None);
    assert_gone_fast(&relay, "short-3", &down, "expired").await;
    let r = relay
        .send(Method::GET, "/metrics", None, &[], empty())
        .await;
    let t = body_text(r).await;
    assert!(t.contains("msim_relay_tombstones 3\n"), "{t}");
    relay.stop().await;
}

#[test]
fn binary_help_and_secret() {
    let out = std::process::Command::new(relay_bin())
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--listen",
        "--data-dir",
        "--secret-file",
        "--ttl",
        "--max-file-size",
        "--sweep-interval",
        "--config",
        "--max-connections-per-address",
        "--header-timeout",
        "--body-idle-timeout",
        "--reservation-idle",
        "--metrics-listen",
        "--metrics-on-main-port",
        "sweep",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help");
    }
    let out = std::process::Command::new(relay_bin())
        .arg("gen-secret")
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(Keyring::from_secret_text(&text).is_ok());
    // Serving without a secret fails with a clear message.
    let out = std::process::Command::new(relay_bin())
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(tempfile::tempdir().unwrap().path())
        .env_remove("MSIM_RELAY_SECRET")
        .env_remove("MSIM_RELAY_SECRET_FILE")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no token secret"));
}
