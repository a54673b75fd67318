//! msim-chat on PostgreSQL whatever `MSIM_TEST_DATABASE` says (the rest of the suite runs on
//! it with `MSIM_TEST_DATABASE=postgres`): two nodes on one database serve the same users (the
//! cluster itself: `cluster::`), and
//! a node whose `secret.key` does not open the stored passwords refuses to start. Skipped
//! loudly without PostgreSQL's binaries.

use crate::common::{self, TestServer};
use msim_chat::secret_key::KeyError;
use msim_chat::{Config, Error};
use std::time::Duration;

/// A server on data directory `dir` using PostgreSQL database `url`.
async fn node(dir: tempfile::TempDir, url: &str) -> TestServer {
    let url = url.to_owned();
    TestServer::start_in(dir, move |c| c.database = Some(url)).await
}

/// The database of a new data directory, or `None` (skipped) without PostgreSQL.
async fn database() -> Option<(tempfile::TempDir, String)> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    let url = tokio::task::spawn_blocking(move || common::postgres_for(&path))
        .await
        .unwrap()?;
    Some((dir, url))
}

/// Starts a server on data directory `dir` and database `url` and stops it at once (its
/// shutdown future is ready): whether it may start.
async fn start_once(dir: &std::path::Path, url: &str) -> Result<(), Error> {
    let mut config = Config::for_tests(dir);
    config.database = Some(url.to_owned());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    tokio::time::timeout(
        Duration::from_secs(20),
        msim_chat::run(listener, config, std::future::ready(())),
    )
    .await
    .expect("start decided in time")
}

/// A second data directory holding the first one's `secret.key` (what an operator copies to
/// every node).
fn sibling(of: &TestServer) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    // The chat data directory of a System is `chat/` in its directory.
    let data = dir.path().join("chat");
    msim_chat::db::create_data_dir(&data).unwrap();
    std::fs::copy(of.chat_dir().join("secret.key"), data.join("secret.key")).unwrap();
    dir
}

/// Users registered on one node log in on the other; a message sent on one node to a user
/// who is offline is stored once and delivered at their login on the other node, with its
/// read receipt going back.
#[tokio::test]
async fn two_nodes_on_one_database_serve_the_same_users() {
    let Some((dir, url)) = database().await else {
        return;
    };
    let a = node(dir, &url).await;
    let mut alice = a.user("alice").await;
    let b = node(sibling(&a), &url).await;
    // bob registers on node b and goes away (node a has no session of his either way).
    drop(b.user("bob").await);

    alice.send("MESSAGE to=bob text=hello%20from%20a").await;
    let sent = alice.expect("MESSAGE-SENT").await;
    let id = common::field(&sent, "id").unwrap();

    // bob logs in on node b: the backlog holds the message, once.
    let mut bob = b.session("bob").await;
    let m = bob.expect_skip("MESSAGE").await;
    assert_eq!(common::field(&m, "id").as_deref(), Some(id.as_str()));
    assert_eq!(common::field(&m, "text").as_deref(), Some("hello from a"));
    bob.sync().await;
    // alice's session is on node a: node b stores the receipt, node a reads it and pushes it
    // to her.
    bob.send(&format!("MESSAGE-READ id={id}")).await;
    bob.sync().await;
    let r = alice.expect_skip("MESSAGE-READ").await;
    assert_eq!(common::field(&r, "id").as_deref(), Some(id.as_str()));
    assert_eq!(common::field(&r, "by").as_deref(), Some("bob@localhost"));
    // A session of alice on node b logs in with the password node a sealed.
    let mut alice_b = b.session("alice").await;
    alice_b.sync().await;
}

/// A node whose `secret.key` is missing, or another installation's, refuses to start on a
/// shared database that holds passwords; with the same key it starts.
#[tokio::test]
async fn a_node_without_the_shared_key_refuses_to_start() {
    let Some((dir, url)) = database().await else {
        return;
    };
    let a = node(dir, &url).await;
    a.user("alice").await;
    let missing = tempfile::tempdir().unwrap();
    match start_once(missing.path(), &url).await {
        Err(Error::Key(KeyError::Missing { accounts: 1, .. })) => {}
        other => panic!("started without the key: {other:?}"),
    }
    let other = tempfile::tempdir().unwrap();
    std::fs::write(
        other.path().join("secret.key"),
        format!("{}\n", "07".repeat(32)),
    )
    .unwrap();
    match start_once(other.path(), &url).await {
        Err(Error::Key(KeyError::Mismatch { .. })) => {}
        other => panic!("started with another key: {other:?}"),
    }
    // The same key: starts (and stops at once: its shutdown future is ready).
    let same = sibling(&a);
    start_once(&same.path().join("chat"), &url)
        .await
        .expect("the shared key works");
}

/// Two fresh nodes on a new database, before anyone has registered: the first node's key is
/// recorded (its fingerprint), and a node with no key or another key is refused instead of
/// making its own — otherwise accounts registered on one node could never log in on the other.
#[tokio::test]
async fn fresh_nodes_must_share_the_first_nodes_key_before_any_password_is_stored() {
    let Some((dir, url)) = database().await else {
        return;
    };
    let a = node(dir, &url).await;
    // The first node has opened its key once it answers (its listener was bound before).
    a.client().await.sync().await;
    let empty = tempfile::tempdir().unwrap();
    match start_once(empty.path(), &url).await {
        Err(Error::Key(KeyError::MissingRecorded { .. })) => {}
        other => panic!("a node made its own key: {other:?}"),
    }
    assert!(!empty.path().join("secret.key").exists());
    let other = tempfile::tempdir().unwrap();
    std::fs::write(
        other.path().join("secret.key"),
        format!("{}\n", "07".repeat(32)),
    )
    .unwrap();
    match start_once(other.path(), &url).await {
        Err(Error::Key(e @ KeyError::OtherKey { .. })) => {
            assert!(e.to_string().contains("copy it"), "{e}");
        }
        other => panic!("started with another key: {other:?}"),
    }
    start_once(&sibling(&a).path().join("chat"), &url)
        .await
        .expect("the shared key works");
    // Users registered on the first node log in on a node with the shared key.
    a.user("alice").await;
    let b = node(sibling(&a), &url).await;
    b.session("alice").await.sync().await;
}

/// The operator's move (docs/OPERATING.md "Scaling out"): a SQLite installation stops,
/// `msim-chat db copy` moves it, and a node on PostgreSQL with the old `secret.key` serves the
/// same accounts (their passwords open) with their waiting messages.
#[tokio::test]
async fn db_copy_moves_a_sqlite_installation_to_postgres() {
    let Some((pg_dir, url)) = database().await else {
        return;
    };
    let old = TestServer::start_with(|c| c.database = None).await;
    let mut alice = old.user("alice").await;
    drop(old.user("bob").await);
    alice.send("MESSAGE to=bob text=kept%20across").await;
    alice.expect("MESSAGE-SENT").await;
    drop(alice);
    let old_dir = old.stop().await;
    // The chat data directory of a System is `chat/` in its directory.
    let old_data = old_dir.path().join("chat");

    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_msim-chat"))
        .arg("--data-dir")
        .arg(&old_data)
        .args(["db", "copy", "--from"])
        .arg(&old_data)
        .args(["--to", &url])
        .env("RUST_LOG", "warn")
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), out)
        .await
        .expect("copy in time")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("users: 2") && stdout.contains("messages: 1"),
        "{stdout}"
    );

    let new_data = pg_dir.path().join("chat");
    msim_chat::db::create_data_dir(&new_data).unwrap();
    std::fs::copy(old_data.join("secret.key"), new_data.join("secret.key")).unwrap();
    let new = node(pg_dir, &url).await;
    let mut bob = new.session("bob").await;
    let m = bob.expect_skip("MESSAGE").await;
    assert_eq!(common::field(&m, "text").as_deref(), Some("kept across"));
    new.session("alice").await.sync().await;
}
