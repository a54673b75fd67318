//! End-to-end tests: an in-process relay on 127.0.0.1:0 driven over real HTTP.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::channel::mpsc;
use futures::SinkExt;
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use msim_relay::RelayConfig;
use msim_shared::token::{Capability, Direction, Keyring, TokenKey};
use msim_storage::{Clock, ManualClock, SystemClock};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

type B = BoxBody<Bytes, io::Error>;

fn key(id: &str, fill: u8) -> TokenKey {
    TokenKey {
        id: id.into(),
        secret: vec![fill; 32],
    }
}

fn now() -> u64 {
    SystemClock.now()
}

struct Relay {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    ring: Keyring,
    client: Client<HttpConnector, B>,
}

impl Relay {
    async fn start(dir: &Path, tweak: impl FnOnce(&mut RelayConfig)) -> Relay {
        let ring = Keyring::new(vec![key("k1", 7)]);
        let mut config = RelayConfig::new(dir, ring.clone());
        config.min_free = 0;
        config.sweep_interval = Duration::from_secs(3600);
        tweak(&mut config);
        let ring = config.keyring.clone();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            msim_relay::serve(listener, config, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        Relay {
            addr,
            stop: Some(tx),
            task,
            ring,
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        (&mut self.task).await.unwrap();
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    fn token(&self, id: &str, dir: Direction, size: u64, sha: Option<&[u8]>) -> String {
        self.ring.sign(&cap(id, dir, size, sha))
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, String)],
        body: B,
    ) -> Response<Incoming> {
        let mut b = Request::builder().method(method).uri(self.url(path));
        if let Some(t) = token {
            b = b.header("authorization", format!("Bearer {t}"));
        }
        for (k, v) in headers {
            b = b.header(*k, v);
        }
        self.client.request(b.body(body).unwrap()).await.unwrap()
    }

    async fn put(&self, id: &str, token: &str, data: &[u8]) -> Response<Incoming> {
        self.send(
            Method::PUT,
            &format!("/v1/transfers/{id}"),
            Some(token),
            &[],
            full(data.to_vec()),
        )
        .await
    }

    /// `PATCH` `data` at `offset` (a tus-style resumed upload).
    async fn patch(&self, id: &str, token: &str, offset: u64, data: &[u8]) -> Response<Incoming> {
        self.send(
            Method::PATCH,
            &format!("/v1/transfers/{id}"),
            Some(token),
            &[("upload-offset", offset.to_string())],
            full(data.to_vec()),
        )
        .await
    }

    async fn get(&self, id: &str, token: &str, headers: &[(&str, String)]) -> Response<Incoming> {
        self.send(
            Method::GET,
            &format!("/v1/transfers/{id}"),
            Some(token),
            headers,
            empty(),
        )
        .await
    }
}

fn cap(id: &str, dir: Direction, size: u64, sha: Option<&[u8]>) -> Capability {
    Capability {
        transfer_id: id.into(),
        direction: dir,
        size,
        sha256: sha.map(hex),
        sender: "alice@example.com".into(),
        max_downloads: None,
        expires: now() + 3600,
    }
}

fn full(v: Vec<u8>) -> B {
    Full::new(Bytes::from(v)).map_err(|e| match e {}).boxed()
}

fn empty() -> B {
    Empty::new().map_err(|e| match e {}).boxed()
}

fn hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn data(n: usize) -> Vec<u8> {
    let mut x: u32 = 0x1234_5678;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

async fn body_bytes(r: Response<Incoming>) -> Vec<u8> {
    r.into_body().collect().await.unwrap().to_bytes().to_vec()
}

async fn body_text(r: Response<Incoming>) -> String {
    String::from_utf8_lossy(&body_bytes(r).await).into_owned()
}

fn header(r: &Response<Incoming>, name: &str) -> Option<String> {
    r.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
}

/// Raw HTTP/1.1 exchange (for requests a client library would normalise). Returns the whole
/// response text (the server closes after `Connection: close`).
async fn raw(addr: SocketAddr, request: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

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
    assert_eq!(
        std::fs::read_dir(dir.path().join("blobs")).unwrap().count(),
        0
    );
    relay.stop().await;
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
    assert_eq!(
        std::fs::read_dir(dir.path().join("blobs")).unwrap().count(),
        0
    );
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

/// A GET for a removed transfer is `410 Gone` with `why` in the message, answered at once
/// (well under the relay's 30 s wait for uploads that have not started).
async fn assert_gone_fast(relay: &Relay, id: &str, down: &str, why: &str) {
    let t = std::time::Instant::now();
    let r = relay.get(id, down, &[]).await;
    assert_eq!(r.status(), StatusCode::GONE, "{id}");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "{id}: {:?}",
        t.elapsed()
    );
    let msg = body_text(r).await;
    assert!(msg.contains(why), "{id}: {msg}");
}

fn blob_files(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("blobs")).unwrap().count()
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
    assert!(dir.path().join("blobs/fail.blob").exists());
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
    std::fs::remove_file(dir.path().join("blobs").join("small.blob")).unwrap();
    let r = relay.get("small", &down, &[]).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    // The limit counted the three GETs that got past the checks (also the one that found no
    // file, as before), not the refused ones.
    let r = relay.get("small", &down, &[]).await;
    assert_eq!(r.status(), StatusCode::GONE);
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
