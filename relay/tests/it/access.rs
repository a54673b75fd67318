//! End-to-end access tests: tokens, sizes and checksums, quotas, download limits, path escapes
//! and metrics, on an in-process relay over real HTTP.

use crate::http_support;

use std::net::SocketAddr;

use http::{Method, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use msim_shared::token::{Direction, Keyring};
use msim_storage::blob_file;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use http_support::*;

/// Raw HTTP/1.1 exchange (for requests a client library would normalise). Returns the whole
/// response text (the server closes after `Connection: close`).
async fn raw(addr: SocketAddr, request: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

async fn head_status(relay: &Relay, id: &str, token: &str) -> StatusCode {
    relay
        .send(
            Method::HEAD,
            &format!("/v1/transfers/{id}"),
            Some(token),
            &[],
            empty(),
        )
        .await
        .status()
}

fn limited(relay: &Relay, id: &str, size: u64, max: u32) -> String {
    let mut c = cap(id, Direction::Download, size, None);
    c.max_downloads = Some(max);
    relay.ring.sign(&c)
}

#[tokio::test]
async fn token_attacks_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    // The relay knows a new key (signing) and an old one (still accepted after rotation).
    let relay = Relay::start(dir.path(), |c| {
        c.keyring = Keyring::new(vec![key("new", 1), key("old", 2)]);
    })
    .await;
    let payload = data(1000);
    let size = payload.len() as u64;
    let old = Keyring::new(vec![key("old", 2)]);
    let up = old.sign(&cap("t1", Direction::Upload, size, None));
    assert_eq!(
        relay.put("t1", &up, &payload).await.status(),
        StatusCode::CREATED,
        "a token signed with a rotated-out but still listed key is accepted"
    );
    let down = relay.token("t1", Direction::Download, size, None);

    let expect = |r: Response<Incoming>, status: StatusCode, text: &'static str| async move {
        assert_eq!(r.status(), status);
        let t = body_text(r).await;
        assert!(t.contains(text), "{t:?} should contain {text:?}");
    };

    // Missing.
    let r = relay
        .send(Method::GET, "/v1/transfers/t1", None, &[], empty())
        .await;
    expect(r, StatusCode::UNAUTHORIZED, "missing token").await;
    // Forged: right key id, wrong secret.
    let forged =
        Keyring::new(vec![key("new", 99)]).sign(&cap("t1", Direction::Download, size, None));
    expect(
        relay.get("t1", &forged, &[]).await,
        StatusCode::UNAUTHORIZED,
        "signature",
    )
    .await;
    // Unknown key id.
    let unknown =
        Keyring::new(vec![key("zzz", 1)]).sign(&cap("t1", Direction::Download, size, None));
    expect(
        relay.get("t1", &unknown, &[]).await,
        StatusCode::UNAUTHORIZED,
        "unknown key",
    )
    .await;
    // Tampered: flip the payload to another transfer, keep the MAC.
    let other = relay.token("t2", Direction::Download, size, None);
    let mine: Vec<&str> = down.split('.').collect();
    let theirs: Vec<&str> = other.split('.').collect();
    let tampered = format!("v1.new.{}.{}", theirs[2], mine[3]);
    expect(
        relay.get("t2", &tampered, &[]).await,
        StatusCode::UNAUTHORIZED,
        "signature",
    )
    .await;
    // Garbage.
    expect(
        relay.get("t1", "v1.new.%%%", &[]).await,
        StatusCode::UNAUTHORIZED,
        "malformed",
    )
    .await;
    // Expired.
    let mut c = cap("t1", Direction::Download, size, None);
    c.expires = now() - 1;
    let expired = relay.ring.sign(&c);
    expect(
        relay.get("t1", &expired, &[]).await,
        StatusCode::UNAUTHORIZED,
        "expired",
    )
    .await;
    // Wrong direction: upload token to download, download token to upload.
    expect(
        relay.get("t1", &up, &[]).await,
        StatusCode::FORBIDDEN,
        "cannot",
    )
    .await;
    expect(
        relay.put("t1", &down, &payload).await,
        StatusCode::FORBIDDEN,
        "cannot",
    )
    .await;
    // Wrong transfer: a valid token for t2 used on t1.
    expect(
        relay.get("t1", &other, &[]).await,
        StatusCode::FORBIDDEN,
        "another transfer",
    )
    .await;
    // The genuine token works.
    let r = relay.get("t1", &down, &[]).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(body_bytes(r).await, payload);
    relay.stop().await;
}

#[tokio::test]
async fn sizes_and_checksums_are_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), |c| c.max_file_size = 1 << 20).await;
    let payload = data(1000);
    let up = relay.token("s1", Direction::Upload, 1000, None);
    // Longer than declared.
    let r = relay.put("s1", &up, &data(1001)).await;
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    // Shorter than declared.
    let r = relay.put("s1", &up, &data(999)).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    // Over the relay's limit.
    let big = relay.token("s2", Direction::Upload, 2 << 20, None);
    let r = relay
        .send(
            Method::PUT,
            "/v1/transfers/s2",
            Some(&big),
            &[("content-length", (2u64 << 20).to_string())],
            empty(),
        )
        .await;
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    // Declared SHA-256 mismatch: 422 and the blob is discarded.
    let bad = relay.token("s3", Direction::Upload, 1000, Some(b"something else"));
    let r = relay.put("s3", &bad, &payload).await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(body_text(r).await.contains("SHA-256"));
    let down = relay.token("s3", Direction::Download, 1000, None);
    let h = relay
        .send(Method::HEAD, "/v1/transfers/s3", Some(&down), &[], empty())
        .await;
    assert_eq!(h.status(), StatusCode::GONE);
    assert_gone_fast(&relay, "s3", &down, "SHA-256").await;
    let r = relay.put("s3", &bad, &payload).await;
    assert_eq!(r.status(), StatusCode::GONE);
    // Right size and checksum.
    let ok = relay.token("s4", Direction::Upload, 1000, Some(&payload));
    assert_eq!(
        relay.put("s4", &ok, &payload).await.status(),
        StatusCode::CREATED
    );
    // A second complete upload is refused.
    assert_eq!(
        relay.put("s4", &ok, &payload).await.status(),
        StatusCode::CONFLICT
    );
    relay.stop().await;
}

#[tokio::test]
async fn quota_and_one_shot_downloads() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), |c| c.per_sender_quota = 1500).await;
    let payload = data(1000);
    let up = relay.token("q1", Direction::Upload, 1000, None);
    assert_eq!(
        relay.put("q1", &up, &payload).await.status(),
        StatusCode::CREATED
    );
    let up2 = relay.token("q2", Direction::Upload, 1000, None);
    let r = relay.put("q2", &up2, &payload).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(body_text(r).await.contains("quota"));

    let mut c = cap("q1", Direction::Download, 1000, None);
    c.max_downloads = Some(1);
    let once = relay.ring.sign(&c);
    let r = relay.get("q1", &once, &[]).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(body_bytes(r).await, payload);
    let r = relay.get("q1", &once, &[]).await;
    assert_eq!(r.status(), StatusCode::GONE);
    relay.stop().await;
}

#[tokio::test]
async fn path_escapes_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), |_| {}).await;
    let up = relay.token("ok", Direction::Upload, 1, None);
    for path in [
        "/v1/transfers/..",
        "/v1/transfers/../index.sqlite",
        "/v1/transfers/..%2Findex.sqlite",
        "/v1/transfers/%2E%2E",
        "/v1/transfers/a%2Fb",
        "/v1/transfers/a/b",
        "/v1/transfers/",
        "/v1/transfers/a.blob",
    ] {
        let resp = raw(
            relay.addr,
            &format!(
                "PUT {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {up}\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx"
            ),
        )
        .await;
        assert!(resp.starts_with("HTTP/1.1 400"), "{path}: {resp}");
    }
    let resp = raw(
        relay.addr,
        "GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 404"), "{resp}");
    assert_eq!(blob_files(dir.path()), 0);
    relay.stop().await;
}

#[tokio::test]
async fn health_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), |c| {
        c.metrics = msim_relay::MetricsAccess::MainPort;
    })
    .await;
    let r = relay
        .send(Method::GET, "/healthz", None, &[], empty())
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(body_text(r).await, "ok\n");
    let up = relay.token("m1", Direction::Upload, 10, None);
    relay.put("m1", &up, b"0123456789").await;
    relay.get("m1", "bogus", &[]).await;
    let r = relay
        .send(Method::GET, "/metrics", None, &[], empty())
        .await;
    let t = body_text(r).await;
    assert!(t.contains("msim_relay_bytes_in_total 10\n"), "{t}");
    assert!(t.contains("msim_relay_stored_blobs 1\n"), "{t}");
    assert!(t.contains("msim_relay_uploads_completed_total 1\n"), "{t}");
    assert!(
        t.contains("msim_relay_refusals_total{reason=\"bad_token\"} 1\n"),
        "{t}"
    );
    assert!(t.contains("# TYPE msim_relay_uploads_active gauge"), "{t}");
    relay.stop().await;
}

#[tokio::test]
async fn last_permitted_download_removes_the_blob() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), |_| {}).await;
    // Small (answered in one piece) and large (streamed from the file) blobs.
    for (id, n) in [("one-small", 1000usize), ("one-large", 3 << 20)] {
        let payload = data(n);
        let size = n as u64;
        let up = relay.token(id, Direction::Upload, size, None);
        assert_eq!(
            relay.put(id, &up, &payload).await.status(),
            StatusCode::CREATED
        );
        let once = limited(&relay, id, size, 1);
        let r = relay.get(id, &once, &[]).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(body_bytes(r).await, payload);
        // Gone as soon as the body is complete: data and row, with a tombstone.
        let r = relay
            .send(
                Method::HEAD,
                &format!("/v1/transfers/{id}"),
                Some(&up),
                &[],
                empty(),
            )
            .await;
        assert_eq!(r.status(), StatusCode::GONE, "{id}");
        assert_eq!(blob_files(dir.path()), 0, "{id}");
        assert_gone_fast(&relay, id, &once, "downloaded").await;
        assert_eq!(
            relay.put(id, &up, &payload).await.status(),
            StatusCode::GONE
        );
    }

    // max-downloads=2: the data stays after the first download, goes after the second.
    let payload = data(500_000);
    let size = payload.len() as u64;
    let up = relay.token("two", Direction::Upload, size, None);
    assert_eq!(
        relay.put("two", &up, &payload).await.status(),
        StatusCode::CREATED
    );
    let twice = limited(&relay, "two", size, 2);
    assert_eq!(
        body_bytes(relay.get("two", &twice, &[]).await).await,
        payload
    );
    assert_eq!(head_status(&relay, "two", &up).await, StatusCode::OK);
    assert_eq!(blob_files(dir.path()), 1);
    assert_eq!(
        body_bytes(relay.get("two", &twice, &[]).await).await,
        payload
    );
    assert_eq!(head_status(&relay, "two", &up).await, StatusCode::GONE);
    assert_eq!(blob_files(dir.path()), 0);

    // A last download of only part of the file leaves it (until its TTL).
    let up = relay.token("part", Direction::Upload, size, None);
    assert_eq!(
        relay.put("part", &up, &payload).await.status(),
        StatusCode::CREATED
    );
    let once = limited(&relay, "part", size, 1);
    let r = relay
        .get("part", &once, &[("range", "bytes=0-99".into())])
        .await;
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(body_bytes(r).await, &payload[..100]);
    assert_eq!(head_status(&relay, "part", &up).await, StatusCode::OK);
    let r = relay.get("part", &once, &[]).await;
    assert_eq!(r.status(), StatusCode::GONE);
    assert!(body_text(r).await.contains("download limit"));

    // A last download that fails midway leaves it too.
    let payload = data(24 << 20);
    let size = payload.len() as u64;
    let up = relay.token("fail", Direction::Upload, size, None);
    assert_eq!(
        relay.put("fail", &up, &payload).await.status(),
        StatusCode::CREATED
    );
    let once = limited(&relay, "fail", size, 1);
    let r = relay.get("fail", &once, &[]).await;
    assert_eq!(r.status(), StatusCode::OK);
    let mut body = r.into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert!(first.data_ref().is_some_and(|d| !d.is_empty()));
    drop(body);
    assert_eq!(head_status(&relay, "fail", &up).await, StatusCode::OK);
    assert!(dir.path().join(blob_file("fail", true)).exists());
    relay.stop().await;
}

#[tokio::test]
async fn one_shot_download_following_the_upload_removes_it_after_completion() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), |_| {}).await;
    let payload = data(1 << 20);
    let size = payload.len() as u64;
    let up = relay.token("follow", Direction::Upload, size, None);
    let r = relay.patch("follow", &up, 0, &payload[..1000]).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let once = limited(&relay, "follow", size, 1);
    let r = relay.get("follow", &once, &[]).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "msim-upload-complete").as_deref(), Some("false"));
    let reading = tokio::spawn(body_bytes(r));
    // The rest (piped through the sink: the follower sees the bytes before the commit).
    let r = relay.patch("follow", &up, 1000, &payload[1000..]).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(reading.await.unwrap(), payload);
    assert_eq!(head_status(&relay, "follow", &up).await, StatusCode::GONE);
    assert_eq!(blob_files(dir.path()), 0);
    relay.stop().await;
}

#[tokio::test]
async fn small_complete_downloads_and_files_removed_underneath() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), |_| {}).await;
    let payload = data(100 << 10);
    let size = payload.len() as u64;
    let up = relay.token("small", Direction::Upload, size, Some(&payload));
    assert_eq!(
        relay.put("small", &up, &payload).await.status(),
        StatusCode::CREATED
    );
    let mut c = cap("small", Direction::Download, size, None);
    c.max_downloads = Some(3);
    let down = relay.ring.sign(&c);
    // An unsatisfiable range and a token of another size do not count as downloads.
    let r = relay
        .get("small", &down, &[("range", format!("bytes={size}-"))])
        .await;
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    let other = relay.token("small", Direction::Download, size + 1, None);
    assert_eq!(
        relay.get("small", &other, &[]).await.status(),
        StatusCode::CONFLICT
    );
    let r = relay.get("small", &down, &[]).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "msim-upload-complete").as_deref(), Some("true"));
    assert_eq!(header(&r, "msim-sha256"), Some(hex(&payload)));
    assert_eq!(body_bytes(r).await, payload);
    let r = relay
        .get("small", &down, &[("range", "bytes=10-19".into())])
        .await;
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        header(&r, "content-range"),
        Some(format!("bytes 10-19/{size}"))
    );
    assert_eq!(body_bytes(r).await, &payload[10..20]);
    // The data file removed behind the relay's back (another process): an error, never
    // other data.
    std::fs::remove_file(dir.path().join(blob_file("small", true))).unwrap();
    let r = relay.get("small", &down, &[]).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    // The limit counted the three GETs that got past the checks (also the one that found no
    // file, as before), not the refused ones.
    let r = relay.get("small", &down, &[]).await;
    assert_eq!(r.status(), StatusCode::GONE);
    relay.stop().await;
}
