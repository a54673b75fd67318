//! Durability: the real binary is killed with SIGKILL right after MESSAGE-SENT; the message is
//! delivered after a restart.

use crate::common;
use common::{Client, PASSWORD};
use std::net::SocketAddr;
use std::process::Stdio;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Starts the binary on an ephemeral port and returns it with its address (read from its log
/// on stderr).
async fn start(dir: &std::path::Path) -> (Child, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_msim-chat"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--embedded-relay-listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(dir)
        .envs(common::database_env(dir))
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next_line().await.unwrap().expect("binary exited");
        if line.contains("msim-chat listening") {
            let start = line.find("127.0.0.1:").unwrap();
            let rest = &line[start..];
            let end = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == ':'))
                .unwrap_or(rest.len());
            break rest[..end].parse().unwrap();
        }
    };
    // Keep draining the log so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, addr)
}

#[tokio::test]
async fn message_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, addr) = start(dir.path()).await;
    let mut a = Client::connect(addr).await;
    for u in ["alice", "bob"] {
        a.send(&format!("REGISTER login={u} password={PASSWORD}"))
            .await;
        a.expect("REGISTER-OK").await;
    }
    a.login("alice", PASSWORD).await;
    a.send("MESSAGE to=bob text=durable").await;
    let sent = a.expect("MESSAGE-SENT").await;
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    let id = common::field(&sent, "id").unwrap();

    let (mut child, addr) = start(dir.path()).await;
    let mut b = Client::connect(addr).await;
    b.login("bob", PASSWORD).await;
    let m = b.expect("MESSAGE").await;
    assert_eq!(common::field(&m, "id").unwrap(), id);
    assert_eq!(common::field(&m, "text").unwrap(), "durable");
    // The relay secret and the password key were created with mode 0600.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for f in ["secret.key", "relay.secret"] {
            let mode = std::fs::metadata(dir.path().join(f))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }
    }
    child.start_kill().unwrap();
    child.wait().await.unwrap();
}

/// A data directory created by the server is private (0700), and so are the SQLite files (0600).
#[cfg(unix)]
#[tokio::test]
async fn data_directory_and_database_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let srv = common::TestServer::start_with(|c| {
        c.data_dir = c.data_dir.join("new/data");
        c.database = None; // SQLite's files
    })
    .await;
    let data = srv.dir.path().join("new/data");
    let mut a = srv.user("alice").await;
    a.send("MESSAGE to=alice text=hi").await;
    a.expect_skip("MESSAGE-SENT").await;
    assert_eq!(mode(&data), 0o700, "data directory");
    assert_eq!(
        mode(&srv.dir.path().join("new")),
        0o700,
        "parent created with it"
    );
    for f in ["msim.db", "msim.db-wal", "msim.db-shm", "secret.key"] {
        assert_eq!(mode(&data.join(f)), 0o600, "{f}");
    }
    drop(a);
    srv.stop().await;
}
