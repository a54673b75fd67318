//! Durability: the real binary is killed with SIGKILL right after MESSAGE-SENT; the message is
//! delivered after a restart.

use crate::common;
use common::{Client, PASSWORD};
use msim_testkit::ServerProcess;
use std::net::SocketAddr;
use std::path::Path;

/// The binary on the suite's database (see `common::BACKEND_ENV`).
async fn start(dir: &Path) -> (ServerProcess, SocketAddr) {
    let mut command = common::chat_binary(dir);
    command.envs(common::database_env(dir));
    common::start_binary(command).await
}

#[tokio::test]
async fn message_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let (mut server, addr) = start(dir.path()).await;
    let mut a = Client::connect(addr).await;
    for u in ["alice", "bob"] {
        a.send(&format!("REGISTER login={u} password={PASSWORD}"))
            .await;
        a.expect("REGISTER-OK").await;
    }
    a.login("alice", PASSWORD).await;
    a.send("MESSAGE to=bob text=durable").await;
    let sent = a.expect("MESSAGE-SENT").await;
    server.child.start_kill().unwrap();
    server.child.wait().await.unwrap();
    let id = common::field(&sent, "id").unwrap();

    let (mut server, addr) = start(dir.path()).await;
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
    server.child.start_kill().unwrap();
    server.child.wait().await.unwrap();
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
    let data = srv.dir.path().join("chat/new/data");
    let mut a = srv.user("alice").await;
    a.send("MESSAGE to=alice text=hi").await;
    a.expect_skip("MESSAGE-SENT").await;
    assert_eq!(mode(&data), 0o700, "data directory");
    assert_eq!(
        mode(&srv.dir.path().join("chat/new")),
        0o700,
        "parent created with it"
    );
    for f in ["msim.db", "msim.db-wal", "msim.db-shm", "secret.key"] {
        assert_eq!(mode(&data.join(f)), 0o600, "{f}");
    }
    drop(a);
    srv.stop().await;
}
