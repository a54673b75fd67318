//! `msim-load` against servers that are already running (`--chat ADDR`, `--relay ADDR
//! --relay-secret-file F`): a chat server and a relay run in this process (real TCP and HTTP),
//! the real `msim-load` binary drives them, and its JSON report is checked. The listeners are
//! bound before the servers are spawned, so the load generator's first connections simply wait
//! in the backlog: no sleeps.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Output;

use msim_shared::token::generate_secret_text;
use msim_testkit::System;

/// A relay and a chat server using it, stopped when dropped.
async fn start_servers(registration_open: bool, max_file_size: u64) -> System {
    System::builder()
        .relays(1)
        .relay(move |config| {
            config.max_file_size = max_file_size;
            config.min_free = 0;
            // Every load connection comes from this machine (as msim-load's own relay runs):
            // the smoke run's 40 concurrent transfers take 80 connections.
            config.max_connections_per_address = 0;
        })
        .chat(move |config| {
            config.registration_open = registration_open;
            // As an operator does for a benchmark (OPERATING.md): msim-load registers its
            // users from a few addresses.
            config.register_burst = 0;
            config.register_prefix_burst = 0;
        })
        .start()
        .await
        .unwrap()
}

/// Runs the real msim-load binary to completion (the servers keep running on this runtime's
/// other threads meanwhile).
async fn msim_load(args: &[String]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_msim-load"))
        .args(args)
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .output()
        .await
        .unwrap()
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// The value of a figure of a JSON report, if it is there.
fn figure(report: &serde_json::Value, scenario: &str, name: &str) -> Option<f64> {
    report["figures"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["scenario"] == scenario && f["name"] == name)
        .map(|f| f["value"].as_f64().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke_run_against_a_running_chat_server_and_relay() {
    let servers = start_servers(true, 100 << 20).await;
    let json = servers.dir.path().join("report.json");
    let out = msim_load(&args(&[
        "--smoke",
        "--chat",
        &servers.chat.to_string(),
        "--relay",
        &servers.relays[0].to_string(),
        "--relay-secret-file",
        servers.secret_file.to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
    ]))
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "msim-load failed:\n{stderr}");

    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let positive = |scenario: &str, name: &str| {
        let v = figure(&report, scenario, name)
            .unwrap_or_else(|| panic!("no {scenario}/{name} in the report:\n{report:#}"));
        assert!(v > 0.0, "{scenario}/{name} = {v}");
    };
    positive("connections", "idle authenticated connections");
    positive("messages", "online→online delivered, durable");
    positive("messages", "MESSAGE-SENT acknowledged");
    positive("latency", "delivered at fixed offered rate");
    positive("logins", "logins per second (connect+challenge+OK)");
    positive("relay", "single transfer, download while uploading");
    positive("relay", "upload alone");
    positive("relay", "stored download");
    positive("relay", "concurrent 1 MiB transfers");
    positive("relay", "load generator CPU per relayed GB");

    // Without --chat-pid / --relay-pid the server-side figures are left out, not guessed.
    for (scenario, name) in [
        ("connections", "server RSS per idle connection"),
        ("connections", "server RSS with all connected"),
        ("relay", "relay CPU per relayed GB"),
        ("relay", "CPU-bound ceiling of one relayed transfer"),
        ("relay", "relay peak RSS"),
        ("relay", "relay CPU per concurrent 1 MiB transfer"),
        (
            "relay",
            "relay context switches per concurrent 1 MiB transfer",
        ),
    ] {
        assert_eq!(
            figure(&report, scenario, name),
            None,
            "{scenario}/{name} without a pid"
        );
    }
    assert!(stderr.contains("--chat-pid"), "{stderr}");
    assert!(stderr.contains("--relay-pid"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_server_that_refuses_registration_is_reported() {
    let servers = start_servers(false, 100 << 20).await;
    let out = msim_load(&args(&[
        "--smoke",
        "--only",
        "messages",
        "--chat",
        &servers.chat.to_string(),
    ]))
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("refuses registration"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_whose_max_file_size_is_below_the_transfer_size_is_reported() {
    // The smoke transfer is 8 MiB.
    let servers = start_servers(true, 1 << 20).await;
    let out = msim_load(&args(&[
        "--smoke",
        "--only",
        "relay",
        "--relay",
        &servers.relays[0].to_string(),
        "--relay-secret-file",
        servers.secret_file.to_str().unwrap(),
    ]))
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("413"), "{stderr}");
    assert!(stderr.contains("--transfer-size"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_needs_its_secret_and_a_wrong_one_is_reported() {
    let servers = start_servers(true, 100 << 20).await;
    let relay = servers.relays[0].to_string();
    let out = msim_load(&args(&["--smoke", "--only", "relay", "--relay", &relay])).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("--relay-secret-file"), "{stderr}");

    let wrong = servers.dir.path().join("wrong-secret");
    std::fs::write(&wrong, generate_secret_text()).unwrap();
    let out = msim_load(&args(&[
        "--smoke",
        "--only",
        "relay",
        "--relay",
        &relay,
        "--relay-secret-file",
        wrong.to_str().unwrap(),
    ]))
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("401"), "{stderr}");
    assert!(stderr.contains("secret"), "{stderr}");
}

/// A second "node" of the service: a TCP forwarder in front of the same chat server, counting
/// the connections it carries (one server, so delivery is the same; what is checked is that
/// msim-load spreads senders and recipients over the nodes it is given).
async fn forwarder(
    to: std::net::SocketAddr,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = l.accept().await {
            c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                if let Ok(mut out) = tokio::net::TcpStream::connect(to).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                }
            });
        }
    });
    (addr, count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_cross_the_nodes_given_with_chat_node() {
    let servers = start_servers(true, 100 << 20).await;
    let (node2, carried) = forwarder(servers.chat).await;
    let json = servers.dir.path().join("report.json");
    let out = msim_load(&args(&[
        "--smoke",
        "--only",
        "messages,latency",
        "--pairs",
        "4",
        "--chat",
        &servers.chat.to_string(),
        "--chat-node",
        &node2.to_string(),
        "--json",
        json.to_str().unwrap(),
    ]))
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "msim-load failed:\n{stderr}");
    assert!(stderr.contains("2 chat nodes"), "{stderr}");
    // Per run, of 4 pairs: senders 1 and 3 and recipients 0 and 2 use the second node.
    assert_eq!(carried.load(std::sync::atomic::Ordering::SeqCst), 2 * 4);
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert!(figure(&report, "messages", "online→online delivered, durable").unwrap() > 0.0);
}
