//! Rough throughput check: `cargo run --release -p msim-relay --example throughput [MiB]`.
//!
//! Measures loopback TCP, a relayed transfer (download while uploading), a plain upload and a
//! stored download through an in-process relay, and prints the peak RSS.

use std::io;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::body::Frame;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use msim_relay::RelayConfig;
use msim_shared::token::{Capability, Direction, Keyring, TokenKey};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type B = BoxBody<Bytes, io::Error>;
const CHUNK: usize = 1 << 20;

fn body(total: u64) -> B {
    let chunk = Bytes::from(vec![0x5au8; CHUNK]);
    let stream = futures::stream::unfold(total, move |left| {
        let chunk = chunk.clone();
        async move {
            if left == 0 {
                return None;
            }
            let n = left.min(CHUNK as u64) as usize;
            Some((
                Ok::<_, io::Error>(Frame::data(chunk.slice(..n))),
                left - n as u64,
            ))
        }
    });
    StreamBody::new(stream).boxed()
}

fn rate(bytes: u64, d: Duration) -> String {
    format!("{:.2} GB/s", bytes as f64 / d.as_secs_f64() / 1e9)
}

fn peak_rss() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM"))
                .map(str::to_owned)
        })
        .unwrap_or_default()
}

async fn drain(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, B>,
    url: String,
    tok: &str,
) -> u64 {
    let req = Request::get(url)
        .header("authorization", format!("Bearer {tok}"))
        .body(Empty::new().map_err(|e| match e {}).boxed())
        .expect("request");
    let resp = client.request(req).await.expect("get");
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let mut n = 0u64;
    while let Some(f) = body.frame().await {
        if let Ok(d) = f.expect("frame").into_data() {
            n += d.len() as u64;
        }
    }
    n
}

#[tokio::main]
async fn main() {
    let mib: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1024);
    let total = mib << 20;

    // Loopback TCP baseline.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    let srv = tokio::spawn(async move {
        let (mut s, _) = l.accept().await.expect("accept");
        let mut buf = vec![0u8; CHUNK];
        let mut n = 0u64;
        loop {
            let r = s.read(&mut buf).await.expect("read");
            if r == 0 {
                break n;
            }
            n += r as u64;
        }
    });
    let t = Instant::now();
    let mut c = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let buf = vec![0u8; CHUNK];
    let mut left = total;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        c.write_all(&buf[..n]).await.expect("write");
        left -= n as u64;
    }
    drop(c);
    srv.await.expect("srv");
    let tcp = t.elapsed();
    println!(
        "loopback TCP        {mib} MiB: {:?} {}",
        tcp,
        rate(total, tcp)
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let ring = Keyring::new(vec![TokenKey {
        id: "k".into(),
        secret: vec![1; 32],
    }]);
    let mut config = RelayConfig::new(dir.path(), ring.clone());
    config.max_file_size = u64::MAX / 2;
    config.capacity = u64::MAX / 2;
    config.per_sender_quota = u64::MAX / 2;
    config.min_free = 0;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(msim_relay::serve(listener, config, async {
        let _ = rx.await;
    }));
    let client: Client<_, B> = Client::builder(TokioExecutor::new()).build_http();
    let tok = |id: &str, d| {
        ring.sign(&Capability {
            transfer_id: id.into(),
            direction: d,
            size: total,
            sha256: None,
            sender: "bench@x".into(),
            max_downloads: None,
            expires: u64::MAX / 2,
        })
    };

    // Relayed: download while uploading.
    let url = format!("http://{addr}/v1/transfers/relayed");
    let t = Instant::now();
    let put = Request::put(&url)
        .header(
            "authorization",
            format!("Bearer {}", tok("relayed", Direction::Upload)),
        )
        .header("content-length", total.to_string())
        .body(body(total))
        .expect("req");
    let up = tokio::spawn(client.request(put));
    let got = drain(&client, url.clone(), &tok("relayed", Direction::Download)).await;
    let r = up.await.expect("join").expect("put");
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(got, total);
    let relayed = t.elapsed();
    println!(
        "relayed (up+down)   {mib} MiB: {:?} {} = {:.2}x loopback",
        relayed,
        rate(total, relayed),
        tcp.as_secs_f64() / relayed.as_secs_f64()
    );

    // Upload only.
    let url2 = format!("http://{addr}/v1/transfers/upload");
    let t = Instant::now();
    let put = Request::put(&url2)
        .header(
            "authorization",
            format!("Bearer {}", tok("upload", Direction::Upload)),
        )
        .header("content-length", total.to_string())
        .body(body(total))
        .expect("req");
    let r = client.request(put).await.expect("put");
    assert_eq!(r.status(), StatusCode::CREATED);
    let d = t.elapsed();
    println!("upload              {mib} MiB: {:?} {}", d, rate(total, d));

    // Stored download.
    let t = Instant::now();
    let got = drain(&client, url2, &tok("upload", Direction::Download)).await;
    assert_eq!(got, total);
    let d = t.elapsed();
    println!("stored download     {mib} MiB: {:?} {}", d, rate(total, d));
    println!(
        "peak RSS (client+relay in one process): {}",
        peak_rss().trim()
    );
    let _ = tx.send(());
    let _ = server.await;
}
