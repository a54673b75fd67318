//! The hand-off of a picture to a download that waits for it, on running relays:
//! `cargo run --release -p msim-relay --example handoff -- SECRET_FILE ADDR [ADDR…] [--rounds N]
//! [--size BYTES]`.
//!
//! Each round, for each relay in turn (the order rotates every round, so a noisy machine's
//! drift falls on every relay alike): a `GET` of a new transfer is sent and left waiting; a
//! moment later the `PUT` of the whole file is written at once, as `msim send-file` writes a
//! picture. Timed from the `PUT`'s first byte written to the download's last byte read (the
//! relay stage of BENCHMARKS.md's picture timeline). Prints min/p50/p90/p99 per relay and each
//! relay's p50 over the first one's.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use msim_shared::clock::{Clock, SystemClock};
use msim_shared::token::{Capability, Direction, Keyring};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Time the waiting `GET` gets to reach the relay and wait before the upload starts.
const GET_LEAD: Duration = Duration::from_millis(3);

fn token(ring: &Keyring, id: &str, dir: Direction, size: u64) -> String {
    ring.sign(&Capability {
        transfer_id: id.into(),
        direction: dir,
        size,
        sha256: None,
        sender: "bench@example.com".into(),
        max_downloads: None,
        expires: SystemClock.now() + 3600,
    })
}

/// Read a whole response of `Content-Length` bytes from `s`; returns its status.
async fn read_response(s: &mut TcpStream) -> u16 {
    let mut buf = Vec::with_capacity(256 << 10);
    let mut chunk = vec![0u8; 256 << 10];
    loop {
        let n = s.read(&mut chunk).await.expect("read");
        assert!(n > 0, "closed early");
        buf.extend_from_slice(&chunk[..n]);
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .map_or(0, |v| v.trim().parse().expect("length"));
        while buf.len() < end + 4 + len {
            let n = s.read(&mut chunk).await.expect("read body");
            assert!(n > 0, "body cut");
            buf.extend_from_slice(&chunk[..n]);
        }
        return head[9..12].parse().expect("status");
    }
}

async fn one(addr: SocketAddr, ring: &Keyring, id: &str, data: &[u8]) -> Duration {
    let size = data.len() as u64;
    let down = token(ring, id, Direction::Download, size);
    let up = token(ring, id, Direction::Upload, size);
    let mut get = TcpStream::connect(addr).await.expect("connect");
    get.set_nodelay(true).expect("nodelay");
    get.write_all(
        format!(
            "GET /v1/transfers/{id} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {down}\r\n\
             Connection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .expect("get");
    let mut put = TcpStream::connect(addr).await.expect("connect");
    put.set_nodelay(true).expect("nodelay");
    let mut req = format!(
        "PUT /v1/transfers/{id} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {up}\r\n\
         Msim-Sha256: skip\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n"
    )
    .into_bytes();
    req.extend_from_slice(data);
    tokio::time::sleep(GET_LEAD).await;
    let t0 = Instant::now();
    let sent = async {
        put.write_all(&req).await.expect("put");
        read_response(&mut put).await
    };
    let got = async {
        let status = read_response(&mut get).await;
        (status, t0.elapsed())
    };
    let (put_status, (get_status, took)) = tokio::join!(sent, got);
    assert_eq!((put_status, get_status), (201, 200), "{id}");
    took
}

fn pct(sorted: &[Duration], q: f64) -> f64 {
    let i = ((sorted.len() as f64 * q) as usize).min(sorted.len() - 1);
    sorted[i].as_secs_f64() * 1e3
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let secret = args.next().expect("SECRET_FILE");
    let ring = Keyring::from_secret_text(&std::fs::read_to_string(secret).expect("secret file"))
        .expect("secret");
    let (mut addrs, mut rounds, mut size) = (Vec::new(), 200usize, 200_000usize);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--rounds" => rounds = args.next().and_then(|v| v.parse().ok()).expect("N"),
            "--size" => size = args.next().and_then(|v| v.parse().ok()).expect("BYTES"),
            _ => addrs.push(a.parse::<SocketAddr>().expect("ADDR")),
        }
    }
    assert!(!addrs.is_empty(), "at least one relay address");
    let data: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
    let run = format!("{:x}", SystemClock.now());
    let mut times = vec![Vec::with_capacity(rounds); addrs.len()];
    for r in 0..rounds + 1 {
        for k in 0..addrs.len() {
            let which = (r + k) % addrs.len();
            let id = format!("handoff-{run}-{r}");
            let took = one(addrs[which], &ring, &id, &data).await;
            // Round 0 warms up.
            if r > 0 {
                times[which].push(took);
            }
        }
    }
    let mut p50s = Vec::new();
    for (addr, t) in addrs.iter().zip(times.iter_mut()) {
        t.sort();
        let p50 = pct(t, 0.5);
        p50s.push(p50);
        println!(
            "{addr}: n={} min={:.3} p50={p50:.3} p90={:.3} p99={:.3} ms",
            t.len(),
            pct(t, 0.0),
            pct(t, 0.9),
            pct(t, 0.99)
        );
    }
    for (addr, p50) in addrs.iter().zip(&p50s).skip(1) {
        println!("{addr}: p50 ÷ first relay's p50 = {:.3}", p50 / p50s[0]);
    }
}
