//! The embedded relay's metrics: on a separate address when asked, never on the transfer port.

use crate::common;
use msim_testkit::ServerProcess;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
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
    let mut command = common::chat_binary(dir.path());
    command.args(["--embedded-relay-metrics-listen", "127.0.0.1:0"]);
    let mut server = ServerProcess::spawn(command).unwrap();
    let addrs = server
        .listening_each(&["msim-relay listening", "metrics listening"])
        .await
        .unwrap();
    server.keep_reading_log();
    let (relay, metrics) = (addrs[0], addrs[1]);
    let on_metrics = get(metrics, "/metrics").await;
    assert!(on_metrics.starts_with("HTTP/1.1 200"), "{on_metrics}");
    assert!(
        on_metrics.contains("msim_relay_connections_total"),
        "{on_metrics}"
    );
    let on_relay = get(relay, "/metrics").await;
    assert!(on_relay.starts_with("HTTP/1.1 404"), "{on_relay}");
    assert!(get(relay, "/healthz").await.starts_with("HTTP/1.1 200"));
    server.child.start_kill().unwrap();
    server.child.wait().await.unwrap();
}
