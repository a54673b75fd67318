//! Bounded message storage (PROTOCOL.md §5.6): a per-recipient cap on pending messages,
//! pending messages that expire with a failure their sender learns, and delivered messages
//! whose text leaves the server at acknowledgement and whose rest goes after the receipt
//! retention.

use crate::common;
use common::{field, Client, TestServer, PASSWORD};
use std::time::{Duration, Instant};

async fn register(s: &TestServer, logins: &[&str]) {
    let mut c = s.client().await;
    for u in logins {
        c.send(&format!("REGISTER login={u} password={PASSWORD}"))
            .await;
        c.expect("REGISTER-OK").await;
    }
}

/// Sends one message and returns the answer line.
async fn send(c: &mut Client, to: &str, text: &str) -> String {
    c.send(&format!("MESSAGE to={to} text={text}")).await;
    loop {
        let l = c.line().await;
        if l.starts_with("MESSAGE-SENT ") || l.starts_with("MESSAGE-SEND-FAILED ") {
            return l;
        }
    }
}

/// Reads messages at login up to a PING round trip.
async fn backlog(c: &mut Client) -> Vec<String> {
    c.send("PING ref=end").await;
    let mut out = Vec::new();
    loop {
        let l = c.line().await;
        if l.starts_with("PONG") {
            return out;
        }
        out.push(l);
    }
}

/// Opens the server's database read-only, beside the running server (WAL mode).
async fn database(s: &TestServer) -> sqlx::SqlitePool {
    let opts = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(s.chat_dir().join("msim.db"))
        .read_only(true);
    sqlx::SqlitePool::connect_with(opts).await.unwrap()
}

/// Polls `query` (one integer) until it returns `want`, within a deadline.
async fn wait_for(db: &sqlx::SqlitePool, query: &str, want: i64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (n,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(query.to_owned()))
            .fetch_one(db)
            .await
            .unwrap();
        if n == want {
            return;
        }
        assert!(Instant::now() < deadline, "{query}: {n}, expected {want}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A flood to a user who never logs in stops at the cap with `recipient-queue-full`; other
/// recipients are unaffected, and once the recipient acknowledges, sending works again.
#[tokio::test]
async fn pending_messages_per_recipient_are_capped() {
    let s = TestServer::start_with(|c| c.max_pending_messages = 3).await;
    register(&s, &["alice", "bob", "carol"]).await;
    let mut alice = s.session("alice").await;
    for k in 0..3 {
        assert!(send(&mut alice, "bob", &format!("m{k}"))
            .await
            .starts_with("MESSAGE-SENT "));
    }
    let refused = send(&mut alice, "bob", "m3").await;
    assert_eq!(
        field(&refused, "reason").as_deref(),
        Some("recipient-queue-full"),
        "{refused}"
    );
    assert!(send(&mut alice, "carol", "hi")
        .await
        .starts_with("MESSAGE-SENT "));

    let mut bob = s.session("bob").await;
    let got = backlog(&mut bob).await;
    assert_eq!(got.len(), 3, "{got:?}");
    for m in &got {
        bob.send(&format!("MESSAGE-ACK id={}", field(m, "id").unwrap()))
            .await;
    }
    // Bob's acknowledgements are committed before his own message is.
    assert!(send(&mut bob, "alice", "thanks")
        .await
        .starts_with("MESSAGE-SENT "));
    assert!(send(&mut alice, "bob", "m4")
        .await
        .starts_with("MESSAGE-SENT "));
    s.stop().await;
}

/// A message nobody picks up within its time to live is deleted; its sender is told live
/// and again at its next login, and the recipient never gets it.
#[tokio::test]
async fn undelivered_messages_expire_and_the_sender_learns_it() {
    let s = TestServer::start_with(|c| {
        c.message_ttl = Duration::from_secs(3600);
        c.purge_interval = Duration::from_millis(10);
    })
    .await;
    register(&s, &["alice", "bob"]).await;
    let mut alice = s.session("alice").await;
    let sent = send(&mut alice, "bob", "too-late").await;
    let id = field(&sent, "id").unwrap();
    let fresh = send(&mut alice, "bob", "placeholder").await;
    assert!(fresh.starts_with("MESSAGE-SENT "));

    s.clock.advance(Duration::from_secs(3601));
    let failed = alice.expect_skip("MESSAGE-SEND-FAILED").await;
    assert_eq!(field(&failed, "id").as_deref(), Some(id.as_str()));
    assert_eq!(field(&failed, "reason").as_deref(), Some("expired"));

    let mut again = s.session("alice").await;
    let at_login = backlog(&mut again).await;
    assert!(
        at_login
            .iter()
            .any(|l| l.starts_with("MESSAGE-SEND-FAILED ")
                && field(l, "id").as_deref() == Some(id.as_str())
                && field(l, "reason").as_deref() == Some("expired")),
        "{at_login:?}"
    );
    let mut bob = s.session("bob").await;
    let got = backlog(&mut bob).await;
    assert!(got.iter().all(|l| !l.starts_with("MESSAGE ")), "{got:?}");
    s.stop().await;
}

/// Acknowledging a message removes its text from the database at once; after the receipt
/// retention, the row itself goes. Read receipts keep working within the retention.
#[tokio::test]
async fn delivered_messages_leave_the_database() {
    let s = TestServer::start_with(|c| {
        c.receipt_retention = Duration::from_secs(600);
        c.purge_interval = Duration::from_millis(10);
        c.database = None; // reads msim.db beside the server
    })
    .await;
    register(&s, &["alice", "bob"]).await;
    let mut alice = s.session("alice").await;
    let mut bob = s.session("bob").await;
    let sent = send(&mut alice, "bob", "secret-words").await;
    let id = field(&sent, "id").unwrap();
    bob.expect_skip("MESSAGE").await;
    bob.send(&format!("MESSAGE-ACK id={id}")).await;
    assert!(send(&mut bob, "alice", "ok")
        .await
        .starts_with("MESSAGE-SENT "));

    let db = database(&s).await;
    wait_for(
        &db,
        "SELECT COUNT(*) FROM messages WHERE body LIKE '%secret-words%'",
        0,
    )
    .await;
    // Within the retention, the read receipt still reaches the sender.
    bob.send(&format!("MESSAGE-READ id={id}")).await;
    let receipt = alice.expect_skip("MESSAGE-READ").await;
    assert_eq!(field(&receipt, "id").as_deref(), Some(id.as_str()));

    s.clock.advance(Duration::from_secs(601));
    // Only bob's reply, still pending, is left.
    wait_for(&db, "SELECT COUNT(*) FROM messages WHERE pending = 0", 0).await;
    wait_for(&db, "SELECT COUNT(*) FROM messages", 1).await;
    wait_for(&db, "SELECT COUNT(*) FROM receipts", 0).await;
    db.close().await;
    s.stop().await;
}
