//! The embedded relay's metrics: on a separate address when asked, never on the transfer port.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::Command;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(20);

/// `GET path` on a new connection; the whole answer.
async fn get(addr: SocketAddr, path: &str) -> String {
    timeout(WAIT, async {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    })
    .await
    .expect("answer in time")
}

#[tokio::test]
async fn embedded_relay_metrics_on_their_own_address_only() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_msim-chat"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--embedded-relay-listen",
            "127.0.0.1:0",
        ])
        .args(["--embedded-relay-metrics-listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(dir.path())
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let (mut relay, mut metrics) = (None, None);
    while relay.is_none() || metrics.is_none() {
        let line = timeout(WAIT, lines.next_line())
            .await
            .expect("log in time")
            .unwrap()
            .expect("binary exited");
        let Some(at) = line.find("addr=") else {
            continue;
        };
        let addr: Option<SocketAddr> = line[at + 5..]
            .split_whitespace()
            .next()
            .and_then(|a| a.parse().ok());
        if line.contains("metrics listening") {
            metrics = addr;
        } else if line.contains("msim-relay listening") {
            relay = addr;
        }
    }
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let (relay, metrics) = (relay.unwrap(), metrics.unwrap());
    let on_metrics = get(metrics, "/metrics").await;
    assert!(on_metrics.starts_with("HTTP/1.1 200"), "{on_metrics}");
    assert!(
        on_metrics.contains("msim_relay_connections_total"),
        "{on_metrics}"
    );
    let on_relay = get(relay, "/metrics").await;
    assert!(on_relay.starts_with("HTTP/1.1 404"), "{on_relay}");
    assert!(get(relay, "/healthz").await.starts_with("HTTP/1.1 200"));
    child.start_kill().unwrap();
    child.wait().await.unwrap();
}
