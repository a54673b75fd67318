//! Shared by the end-to-end relay tests: an in-process relay on 127.0.0.1:0 driven over real
//! HTTP with a hyper client, and token/data/body helpers.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use crate::support::{test_config, Server};
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use msim_relay::RelayConfig;
use msim_shared::token::{Capability, Direction, Keyring, TokenKey};
use msim_storage::{Clock, SystemClock};
use sha2::{Digest, Sha256};

pub type B = BoxBody<Bytes, io::Error>;

pub fn key(id: &str, fill: u8) -> TokenKey {
    TokenKey {
        id: id.into(),
        secret: vec![fill; 32],
    }
}

pub fn now() -> u64 {
    SystemClock.now()
}

pub struct Relay {
    pub addr: SocketAddr,
    server: Server,
    pub ring: Keyring,
    pub client: Client<HttpConnector, B>,
}

impl Relay {
    pub async fn start(dir: &Path, tweak: impl FnOnce(&mut RelayConfig)) -> Relay {
        let mut config = test_config(dir, Keyring::new(vec![key("k1", 7)]));
        tweak(&mut config);
        let ring = config.keyring.clone();
        let server = Server::start(config, false).await;
        Relay {
            addr: server.addr,
            server,
            ring,
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    pub async fn stop(self) {
        self.server.stop().await;
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn token(&self, id: &str, dir: Direction, size: u64, sha: Option<&[u8]>) -> String {
        self.ring.sign(&cap(id, dir, size, sha))
    }

    pub async fn send(
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

    pub async fn put(&self, id: &str, token: &str, data: &[u8]) -> Response<Incoming> {
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
    pub async fn patch(
        &self,
        id: &str,
        token: &str,
        offset: u64,
        data: &[u8],
    ) -> Response<Incoming> {
        self.send(
            Method::PATCH,
            &format!("/v1/transfers/{id}"),
            Some(token),
            &[("upload-offset", offset.to_string())],
            full(data.to_vec()),
        )
        .await
    }

    pub async fn get(
        &self,
        id: &str,
        token: &str,
        headers: &[(&str, String)],
    ) -> Response<Incoming> {
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

pub fn cap(id: &str, dir: Direction, size: u64, sha: Option<&[u8]>) -> Capability {
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

pub fn full(v: Vec<u8>) -> B {
    Full::new(Bytes::from(v)).map_err(|e| match e {}).boxed()
}

pub fn empty() -> B {
    Empty::new().map_err(|e| match e {}).boxed()
}

pub fn hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub fn data(n: usize) -> Vec<u8> {
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

pub async fn body_bytes(r: Response<Incoming>) -> Vec<u8> {
    r.into_body().collect().await.unwrap().to_bytes().to_vec()
}

pub async fn body_text(r: Response<Incoming>) -> String {
    String::from_utf8_lossy(&body_bytes(r).await).into_owned()
}

pub fn header(r: &Response<Incoming>, name: &str) -> Option<String> {
    r.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
}

/// A GET for a removed transfer is `410 Gone` with `why` in the message, answered at once
/// (well under the relay's 30 s wait for uploads that have not started).
pub async fn assert_gone_fast(relay: &Relay, id: &str, down: &str, why: &str) {
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

/// Files under `blobs/` (in its shard subdirectories, or directly in it).
pub fn blob_files(dir: &Path) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir(dir.join("blobs")).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            n += std::fs::read_dir(e.path()).unwrap().count();
        } else {
            n += 1;
        }
    }
    n
}
