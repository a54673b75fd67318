//! Attacks on the relay's connection slots, reserved capacity, files at rest and metrics,
//! each run against a real relay over TCP, with a legitimate client shown unaffected; and the
//! refusal labels of the metrics.

use crate::support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use msim_relay::MetricsAccess;
use msim_shared::token::{Direction, Keyring};
use msim_storage::{Clock, ManualClock, SystemClock};
use msim_testkit::ServerProcess;
use support::{closed_within, connect_from, exchange, parse_response, utf8, Relay, WAIT};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::timeout;

#[tokio::test]
async fn slowloris_flood_from_one_address_leaves_health_and_transfers_working() {
    let dir = tempfile::tempdir().unwrap();
    // Few slots, and a head deadline far longer than the test: only the per-address cap
    // protects the slots here.
    let relay = Relay::start(dir.path(), false, |c| {
        c.max_connections = 32;
        c.max_connections_per_address = 8;
        c.header_timeout = Duration::from_secs(60);
    })
    .await;
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..100 {
        let mut s = connect_from("127.0.0.2", relay.addr).await.unwrap();
        let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await;
        held.push(s);
    }
    for s in &mut held {
        if closed_within(s, Duration::from_millis(200)).await.is_some() {
            refused += 1;
        }
    }
    assert_eq!(refused, 92, "all but 8 of the flood are closed at once");
    let (status, body) = relay.request("GET", "/healthz", None, b"").await;
    assert_eq!((status, utf8(&body).as_str()), (200, "ok\n"));
    relay
        .upload_and_download("during-flood", &vec![5u8; 100_000])
        .await;
    drop(held);
    relay.stop().await;
}

#[tokio::test]
async fn slowloris_from_many_addresses_cannot_keep_the_slots() {
    let dir = tempfile::tempdir().unwrap();
    // Eight slots, no help from the per-address cap or the head deadline.
    let relay = Relay::start(dir.path(), true, |c| {
        c.max_connections = 8;
        c.header_timeout = Duration::from_secs(60);
    })
    .await;
    // A legitimate upload in progress (half its body sent) holds one slot throughout.
    let data = vec![3u8; 1000];
    let up = relay.token("slow-but-real", Direction::Upload, 1000);
    let mut upload = TcpStream::connect(relay.addr).await.unwrap();
    let head = format!(
        "PUT /v1/transfers/slow-but-real HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {up}\r\nContent-Length: 1000\r\n\r\n"
    );
    upload.write_all(head.as_bytes()).await.unwrap();
    upload.write_all(&data[..500]).await.unwrap();
    relay.wait_for_metric("msim_relay_uploads_active 1\n").await;
    // Unfinished heads from 40 addresses, far more than the slots.
    let mut attack = Vec::new();
    for k in 0..40 {
        let mut s = connect_from(&format!("127.0.0.{}", 10 + k), relay.addr)
            .await
            .unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        attack.push(s);
    }
    let (status, body) = relay.request("GET", "/healthz", None, b"").await;
    assert_eq!((status, utf8(&body).as_str()), (200, "ok\n"));
    relay.upload_and_download("meanwhile", b"fresh").await;
    // The upload kept its slot and completes.
    upload.write_all(&data[500..]).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    timeout(WAIT, async {
        while !out.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = upload.read(&mut buf).await.unwrap();
            assert!(n > 0, "upload connection closed: {}", utf8(&out));
            out.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("upload answer");
    assert!(out.starts_with(b"HTTP/1.1 201"), "{}", utf8(&out));
    let (_, metrics) = exchange(
        relay.metrics_addr.unwrap(),
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"",
    )
    .await;
    let metrics = utf8(&metrics);
    assert!(
        metrics.contains("msim_relay_connections_evicted_total "),
        "{metrics}"
    );
    assert!(
        !metrics.contains("msim_relay_connections_evicted_total 0\n"),
        "{metrics}"
    );
    drop(attack);
    relay.stop().await;
}

#[tokio::test]
async fn slow_head_and_idle_keep_alive_are_closed_after_header_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), false, |c| {
        c.header_timeout = Duration::from_millis(500);
    })
    .await;
    // Slowloris: an unfinished head.
    let mut slow = TcpStream::connect(relay.addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let took = closed_within(&mut slow, WAIT)
        .await
        .expect("slow head closed");
    assert!(took < Duration::from_secs(3), "closed after {took:?}");
    // Keep-alive: one request answered, then nothing.
    let mut idle = BufReader::new(TcpStream::connect(relay.addr).await.unwrap());
    idle.get_mut()
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut line = String::new();
    timeout(WAIT, idle.read_line(&mut line))
        .await
        .unwrap()
        .unwrap();
    assert!(line.starts_with("HTTP/1.1 200"), "{line}");
    let took = closed_within(&mut idle, WAIT)
        .await
        .expect("idle keep-alive closed");
    assert!(took < Duration::from_secs(3), "closed after {took:?}");
    relay.stop().await;
}

#[tokio::test]
async fn stalled_upload_is_cut_after_idle_time_and_stays_resumable() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), false, |c| {
        c.body_idle_timeout = Duration::from_millis(500);
    })
    .await;
    let data: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
    let up = relay.token("stalled", Direction::Upload, 1000);
    let mut s = TcpStream::connect(relay.addr).await.unwrap();
    let head = format!(
        "PUT /v1/transfers/stalled HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {up}\r\nContent-Length: 1000\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&data[..100]).await.unwrap();
    // The relay answers on its own (the client sends nothing more) and closes.
    let start = Instant::now();
    let mut out = Vec::new();
    timeout(WAIT, s.read_to_end(&mut out))
        .await
        .expect("stalled upload cut")
        .ok();
    assert!(start.elapsed() < Duration::from_secs(3));
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("upload-offset: 100\r\n"),
        "{text}"
    );
    // Resumed from where it stopped.
    let head = format!(
        "PATCH /v1/transfers/stalled HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {up}\r\nUpload-Offset: 100\r\nContent-Length: 900\r\nConnection: close\r\n\r\n"
    );
    let (status, body) = exchange(relay.addr, head.as_bytes(), &data[100..]).await;
    assert_eq!(status, 200, "{}", utf8(&body));
    let down = relay.token("stalled", Direction::Download, 1000);
    let (status, got) = relay
        .request("GET", "/v1/transfers/stalled", Some(&down), b"")
        .await;
    assert_eq!(status, 200);
    assert_eq!(got, data);
    relay.stop().await;
}

#[tokio::test]
async fn downloader_that_stops_reading_is_cut_after_idle_time() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), true, |c| {
        c.body_idle_timeout = Duration::from_millis(500);
    })
    .await;
    let size = 16usize << 20;
    let up = relay.token("big", Direction::Upload, size as u64);
    let (status, body) = relay
        .request("PUT", "/v1/transfers/big", Some(&up), &vec![1u8; size])
        .await;
    assert_eq!(status, 201, "{}", utf8(&body));
    let down = relay.token("big", Direction::Download, size as u64);
    let sock = TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let mut s = sock.connect(relay.addr).await.unwrap();
    let head = format!(
        "GET /v1/transfers/big HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {down}\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    relay
        .wait_for_metric("msim_relay_downloads_active 1\n")
        .await;
    // The client reads nothing: the relay gives the download up.
    relay
        .wait_for_metric("msim_relay_downloads_active 0\n")
        .await;
    let mut got = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    timeout(WAIT, async {
        while let Ok(n @ 1..) = s.read(&mut buf).await {
            got += n;
        }
    })
    .await
    .expect("connection closed");
    assert!(got < size, "the whole file was sent ({got} bytes)");
    // Other clients are served meanwhile and after.
    relay.upload_and_download("after", b"hello").await;
    relay.stop().await;
}

/// A relay of 10 MiB with a manual clock, whose reservations lapse after 120 s idle: nine
/// uploads of 1 MiB hoarding room keep a real one out unless they lapse.
pub(crate) async fn hoard_target(dir: &Path) -> (Relay, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(SystemClock.now()));
    let relay = Relay::start(dir, true, |c| {
        c.capacity = 10 << 20;
        c.per_sender_quota = 100 << 20;
        c.reservation_idle = Duration::from_secs(120);
        c.clock = clock.clone();
    })
    .await;
    (relay, clock)
}

#[tokio::test]
async fn idle_reservations_do_not_keep_real_uploads_out() {
    let dir = tempfile::tempdir().unwrap();
    let (relay, clock) = hoard_target(dir.path()).await;
    // The attack: nine uploads each declare 1 MiB, send one byte after 100-continue, and go.
    for k in 0..9 {
        let id = format!("hoard-{k}");
        let up = relay.token(&id, Direction::Upload, 1 << 20);
        let mut s = TcpStream::connect(relay.addr).await.unwrap();
        let head = format!(
            "PUT /v1/transfers/{id} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {up}\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
            1 << 20
        );
        s.write_all(head.as_bytes()).await.unwrap();
        let mut line = String::new();
        let mut r = BufReader::new(s);
        timeout(WAIT, r.read_line(&mut line))
            .await
            .unwrap()
            .unwrap();
        assert!(line.starts_with("HTTP/1.1 100"), "{line}");
        r.get_mut().write_all(b"x").await.unwrap();
        drop(r);
    }
    relay.wait_for_metric("msim_relay_uploads_active 0\n").await;
    let real = vec![9u8; 2 << 20];
    let up = relay.token("real", Direction::Upload, real.len() as u64);
    // Within reservation_idle the reservations hold (a hoarder that comes back may resume).
    let (status, _) = relay
        .request("PUT", "/v1/transfers/real", Some(&up), &real)
        .await;
    assert_eq!(status, 507);
    let hoard0 = relay.token("hoard-0", Direction::Upload, 1 << 20);
    let (status, text) = relay
        .request("HEAD", "/v1/transfers/hoard-0", Some(&hoard0), b"")
        .await;
    assert_eq!(status, 200, "{}", utf8(&text));
    // Once idle that long, they give way to the real upload at once.
    clock.advance(121);
    relay.upload_and_download("real-2", &real).await;
    let (status, _) = relay
        .request(
            "HEAD",
            "/v1/transfers/hoard-1",
            Some(&relay.token("hoard-1", Direction::Upload, 1 << 20)),
            b"",
        )
        .await;
    assert_eq!(status, 410);
    relay.stop().await;
}

/// PROTOCOL.md ("Relay HTTP API", status codes): a `Content-Length` above the declared size
/// is `413`; one the HTTP layer cannot represent (2^64−2 and 2^64−1) is `431`; one that is not a
/// number below 2^64 is `400`.
#[tokio::test]
async fn huge_content_length_answers_as_specified() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), false, |_| {}).await;
    let up = relay.token("huge", Direction::Upload, 10);
    for (len, want) in [
        (u64::MAX.to_string(), 431),
        ((u64::MAX - 1).to_string(), 431),
        ((u64::MAX - 2).to_string(), 413),
        ((1u64 << 63).to_string(), 413),
        ("18446744073709551616".to_owned(), 400),
        ("-1".to_owned(), 400),
    ] {
        let head = format!(
            "PUT /v1/transfers/huge HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {up}\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
        );
        let (status, body) = exchange(relay.addr, head.as_bytes(), b"").await;
        assert_eq!(status, want, "Content-Length {len}: {}", utf8(&body));
    }
    // Nothing was stored: the transfer still starts normally.
    relay.upload_and_download("huge", b"0123456789").await;
    relay.stop().await;
}

#[tokio::test]
async fn metrics_only_where_the_operator_allows() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), true, |_| {}).await;
    let (status, _) = relay.request("GET", "/metrics", None, b"").await;
    assert_eq!(status, 404, "not on the transfer port by default");
    relay.wait_for_metric("msim_relay_connections_total").await;
    let (status, _) = exchange(
        relay.metrics_addr.unwrap(),
        b"GET /v1/transfers/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"",
    )
    .await;
    assert_eq!(status, 404, "the metrics port serves nothing else");
    relay.stop().await;
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), false, |c| c.metrics = MetricsAccess::MainPort).await;
    let (status, body) = relay.request("GET", "/metrics", None, b"").await;
    assert_eq!(status, 200);
    let body = utf8(&body);
    assert!(body.contains("msim_relay_connections_total"), "{body}");
    relay.stop().await;
}

fn relay_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_msim-relay"))
}

fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[tokio::test]
async fn binary_under_umask_022_keeps_files_private_and_metrics_separate() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("relay-data");
    // The umask is set in the relay's own process (not this test process).
    let mut command = tokio::process::Command::new("sh");
    command
        .arg("-c")
        .arg("umask 022; exec \"$0\" \"$@\"")
        .arg(relay_bin())
        .args([
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            // The test machine's free space is not this test's concern.
            "--min-free",
            "0",
            "--data-dir",
        ])
        .arg(&data)
        .env(
            "MSIM_RELAY_SECRET",
            "k1:0707070707070707070707070707070707070707070707070707070707070707",
        );
    let mut server = ServerProcess::spawn(command).unwrap();
    let addrs = server
        .listening_each(&["msim-relay listening", "metrics listening"])
        .await
        .unwrap();
    server.keep_reading_log();
    let (addr, metrics_addr) = (addrs[0], addrs[1]);
    let ring = Keyring::from_secret_text(
        "k1:0707070707070707070707070707070707070707070707070707070707070707",
    );
    let relay = Relay::at(addr, Some(metrics_addr), ring.unwrap());
    relay.upload_and_download("private", b"secret bytes").await;
    let (status, _) = relay.request("GET", "/metrics", None, b"").await;
    assert_eq!(status, 404);
    relay
        .wait_for_metric("msim_relay_uploads_completed_total 1\n")
        .await;
    assert_eq!(mode(&data), 0o700, "data directory");
    assert_eq!(mode(&data.join("blobs")), 0o700, "blobs/");
    let shard = msim_storage::blob_file("private", true);
    let shard = shard.parent().expect("shard directory");
    assert_eq!(mode(&data.join(shard)), 0o700, "{}", shard.display());
    for f in [
        Path::new("index.sqlite"),
        Path::new("index.sqlite-wal"),
        Path::new("index.sqlite-shm"),
        &msim_storage::blob_file("private", true),
    ] {
        assert_eq!(mode(&data.join(f)), 0o600, "{}", f.display());
    }
    server.child.kill().await.unwrap();
}

// The refusal counter says what happened: a storage failure is not a bad request, a transfer
// cancelled under a request is not a missing one.

/// The metrics text (from the metrics listener).
async fn metrics_text(relay: &Relay) -> String {
    let head = b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    utf8(
        &exchange(relay.metrics_addr.expect("metrics"), head, b"")
            .await
            .1,
    )
}

fn refusals(reason: &str, n: u64) -> String {
    format!("msim_relay_refusals_total{{reason=\"{reason}\"}} {n}\n")
}

#[tokio::test]
async fn a_storage_failure_is_counted_as_storage_error() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), true, |_| {}).await;
    let data = vec![7u8; 1000];
    relay.upload_and_download("t1", &data).await;
    // The data file loses its tail behind the relay's back: reading it fails.
    std::fs::OpenOptions::new()
        .write(true)
        .open(dir.path().join(msim_storage::blob_file("t1", true)))
        .unwrap()
        .set_len(10)
        .unwrap();
    let down = relay.token("t1", Direction::Download, 1000);
    let (status, body) = relay
        .request("GET", "/v1/transfers/t1", Some(&down), b"")
        .await;
    assert_eq!(status, 500, "{}", utf8(&body));
    relay.wait_for_metric(&refusals("storage_error", 1)).await;
    let text = metrics_text(&relay).await;
    assert!(text.contains(&refusals("bad_request", 0)), "{text}");
    relay.stop().await;
}

#[tokio::test]
async fn an_upload_cancelled_midway_is_counted_as_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), true, |_| {}).await;
    let size: usize = 1 << 20;
    let up = relay.token("c1", Direction::Upload, size as u64);
    // A streamed upload (large enough for the pipelined path) sends its first part...
    let mut upload = TcpStream::connect(relay.addr).await.unwrap();
    let head = format!(
        "PUT /v1/transfers/c1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {up}\r\n\
         Content-Length: {size}\r\nConnection: close\r\n\r\n"
    );
    upload.write_all(head.as_bytes()).await.unwrap();
    upload.write_all(&vec![1u8; 300 << 10]).await.unwrap();
    // ...which the relay stores...
    let deadline = Instant::now() + WAIT;
    loop {
        if head_offset(&relay, "c1", &up)
            .await
            .is_some_and(|offset| offset > 0)
        {
            break;
        }
        assert!(Instant::now() < deadline, "the first part was never stored");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // (A HEAD that came before the upload created the transfer was answered 404: those are
    // not the cancel's.)
    let polled_not_found = not_found_count(&metrics_text(&relay).await);
    // ...then the transfer is cancelled under it.
    let (status, body) = relay
        .request("DELETE", "/v1/transfers/c1", Some(&up), b"")
        .await;
    assert_eq!(status, 204, "{}", utf8(&body));
    // The rest may not be read any more: a write error is fine, the answer is what counts.
    let _ = upload.write_all(&vec![1u8; size - (300 << 10)]).await;
    let mut out = Vec::new();
    let _ = timeout(WAIT, upload.read_to_end(&mut out))
        .await
        .expect("answer");
    let (status, body) = parse_response(&out);
    assert_eq!(status, 410, "{}", utf8(&body));
    relay.wait_for_metric(&refusals("cancelled", 1)).await;
    let text = metrics_text(&relay).await;
    assert!(
        text.contains(&refusals("not_found", polled_not_found)),
        "{text}"
    );
    relay.stop().await;
}

/// The `not_found` refusals counted in a metrics page.
fn not_found_count(text: &str) -> u64 {
    let prefix = refusals("not_found", 0);
    let prefix = prefix.trim_end().trim_end_matches('0');
    text.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// The `Upload-Offset` a `HEAD` of `id` reports, if it answers `200`.
async fn head_offset(relay: &Relay, id: &str, token: &str) -> Option<u64> {
    let head = format!(
        "HEAD /v1/transfers/{id} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
         Connection: close\r\n\r\n"
    );
    let mut s = TcpStream::connect(relay.addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    timeout(WAIT, s.read_to_end(&mut out))
        .await
        .expect("HEAD answer")
        .unwrap();
    let text = utf8(&out);
    let status = parse_response(&out).0;
    text.lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("upload-offset:")
                .map(str::to_owned)
        })
        .and_then(|v| v.trim().parse().ok())
        .filter(|_| status == 200)
}
