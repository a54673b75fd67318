//! What docs/OPERATING.md promises about the database: WAL with `synchronous=FULL` (read back
//! from msim-chat's own connections), and SIGTERM of the real binary "stop accepting, close every
//! session, commit what is queued, checkpoint and close the database, then exit 0".

use crate::common;
use common::{field, Client, PASSWORD};
use std::collections::HashSet;
use std::time::Duration;
use tokio::process::Command;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test]
async fn database_runs_in_wal_mode_with_synchronous_full() {
    let dir = tempfile::tempdir().unwrap();
    let db = msim_chat::db::Db::open(dir.path()).await.unwrap();
    let [writer, readers] = db.durability().await.unwrap().expect("a SQLite database");
    // 2 = FULL: every commit (and so every MESSAGE-SENT) waits for the WAL fsync.
    assert_eq!(writer, ("wal".to_owned(), 2), "the committing connection");
    assert_eq!(readers, ("wal".to_owned(), 2), "the reading pool");
    db.close().await;
}

#[tokio::test]
async fn sigterm_commits_what_was_acknowledged_checkpoints_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let (mut server, addr) = common::start_binary(common::chat_binary(dir.path())).await;
    let mut a = Client::connect(addr).await;
    for u in ["alice", "bob"] {
        a.send(&format!("REGISTER login={u} password={PASSWORD}"))
            .await;
        a.expect("REGISTER-OK").await;
    }
    a.login("alice", PASSWORD).await;
    // Many messages in flight; SIGTERM once the first is acknowledged, the rest still queued.
    let total = 300;
    let mut batch = String::new();
    for k in 0..total {
        batch.push_str(&format!("MESSAGE to=bob text=m{k}\n"));
    }
    a.send_raw(batch.as_bytes()).await;
    let first = a.expect_skip("MESSAGE-SENT").await;
    let pid = server.child.id().unwrap().to_string();
    let kill = Command::new("kill").args(["-TERM", &pid]).status();
    assert!(timeout(WAIT, kill).await.unwrap().unwrap().success());
    // Every acknowledgement the server still sends before it closes the session.
    let mut acked = HashSet::from([field(&first, "id").unwrap()]);
    while let Some(l) = a.try_line().await {
        if l.starts_with("MESSAGE-SENT ") {
            acked.insert(field(&l, "id").unwrap());
        }
    }
    let status = timeout(WAIT, server.child.wait()).await.unwrap().unwrap();
    assert!(status.success(), "exit status {status:?}");
    // Checkpointed and closed: the WAL was folded into msim.db (SQLite removes it on the last
    // clean close), so msim.db alone holds the data.
    let wal = dir.path().join("msim.db-wal");
    let wal_len = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
    assert_eq!(wal_len, 0, "msim.db-wal still holds {wal_len} bytes");

    // Every acknowledged message is delivered after a restart, once and intact.
    let (mut server, addr) = common::start_binary(common::chat_binary(dir.path())).await;
    let mut b = Client::connect(addr).await;
    b.login("bob", PASSWORD).await;
    b.send("PING ref=end").await;
    let mut got = HashSet::new();
    loop {
        let l = b.line().await;
        if l.starts_with("PONG") {
            break;
        }
        if l.starts_with("MESSAGE ") {
            let id = field(&l, "id").unwrap();
            let text = field(&l, "text").unwrap();
            assert!(text.starts_with('m'), "{l}");
            assert!(got.insert(id), "delivered twice: {l}");
        }
    }
    let missing: Vec<_> = acked.difference(&got).collect();
    assert!(missing.is_empty(), "acknowledged but lost: {missing:?}");
    server.child.start_kill().unwrap();
    timeout(WAIT, server.child.wait()).await.unwrap().unwrap();
}
