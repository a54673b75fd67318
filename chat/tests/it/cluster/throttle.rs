//! Login throttling an attacker cannot dodge by spreading guesses over nodes.

use super::*;
use std::net::{IpAddr, Ipv4Addr};

/// A wrong guess on node 0 slows the next guess on node 1 (before the fix each node counted
/// its own failures only, so alternating nodes doubled the guesses). The account's owner, at
/// an address it logged in from before, is not slowed on either node.
#[tokio::test]
async fn guesses_spread_over_two_nodes_are_counted_together() {
    let Some(url) = database("throttle").await else {
        return;
    };
    let n = nodes(&url, 2, &[]).await;
    let owner: IpAddr = Ipv4Addr::new(127, 0, 0, 1).into();
    let attacker: IpAddr = Ipv4Addr::new(127, 0, 0, 2).into();
    // bob registers and logs in from his address (it becomes known).
    drop(n[0].user("bob").await);
    let mut guess = Client::connect_from(n[0].addr, attacker).await;
    guess
        .expect_login("bob", "wrong-guess", None, "CONNECT-FAILED reason=invalid")
        .await;
    // At once on the other node: throttled, the password is not even checked.
    let mut guess = Client::connect_from(n[1].addr, attacker).await;
    let l = guess
        .expect_login("bob", PASSWORD, None, "CONNECT-FAILED reason=throttled")
        .await;
    assert!(field(&l, "retry-after").is_some(), "{l}");
    // And back on the first one too.
    let mut guess = Client::connect_from(n[0].addr, attacker).await;
    guess
        .expect_login("bob", PASSWORD, None, "CONNECT-FAILED reason=throttled")
        .await;
    // bob himself, from his known address, on either node.
    for node in &n {
        let mut c = Client::connect_from(node.addr, owner).await;
        c.login("bob", PASSWORD).await;
    }
}

/// 40 wrong answers for one login sent at once, half to each node, from a fresh address.
/// Before: every guess read "no wait" before the first failure was recorded (the check and
/// the record are separate database round trips), so 10–14 of them were checked. Now a node
/// checks one guess per login at a time, so at most one per node is checked; the rest are
/// throttled.
#[tokio::test]
async fn a_burst_of_parallel_guesses_gets_at_most_one_check_per_node() {
    let Some(url) = database("throttle burst").await else {
        return;
    };
    let n = nodes(&url, 2, &[]).await;
    drop(n[0].user("bob").await);
    let attacker: IpAddr = Ipv4Addr::new(127, 0, 0, 3).into();
    let mut guesses = guesses_for_bob(&[n[0].addr, n[1].addr], attacker, 40).await;
    answer_wrongly(&mut guesses).await;
    let mut checked = 0;
    for c in &mut guesses {
        let answer = c.expect("CONNECT-FAILED").await;
        match field(&answer, "reason").as_deref() {
            Some("invalid") => checked += 1,
            Some("throttled") => {}
            other => panic!("unexpected answer {other:?}: {answer}"),
        }
    }
    assert!(checked >= 1, "the first guess is checked");
    assert!(
        checked <= 2,
        "{checked} of 40 parallel guesses were checked"
    );
}

/// A flood of guesses for one login while the database answers slowly (here: the throttle's
/// table locked by an operator's transaction). Before, every guess queued for the login's turn
/// without bound, and the owner's correct login waited behind them until the database came
/// back (15 s of `lock_timeout` per stuck check). Now at most 8 checks hold or wait for one
/// login's turn on a node, each at most 3 s: the rest, the owner included (here at an address
/// he never logged in from, a new device), are answered `throttled retry-after=1` at once, and
/// the owner logs in as soon as the database answers.
#[tokio::test]
async fn a_flood_of_guesses_for_one_login_does_not_queue_its_owner() {
    use sqlx::Connection;
    let Some(url) = database("throttle queue").await else {
        return;
    };
    let n = nodes(&url, 1, &[]).await;
    let known: IpAddr = Ipv4Addr::new(127, 0, 0, 1).into();
    let owner: IpAddr = Ipv4Addr::new(127, 0, 0, 9).into();
    drop(n[0].user("bob").await);
    let attacker: IpAddr = Ipv4Addr::new(127, 0, 0, 5).into();
    let mut guesses = guesses_for_bob(&[n[0].addr], attacker, 20).await;
    let mut owner_client = Client::connect_from(n[0].addr, owner).await;
    owner_client.send("CONNECT login=bob").await;
    let ack = owner_client.expect("CONNECT-ACK").await;

    let mut slow = sqlx::PgConnection::connect(&url).await.expect("connection");
    sqlx::query("BEGIN")
        .execute(&mut slow)
        .await
        .expect("begin");
    sqlx::query("LOCK TABLE cluster_login_failures IN ACCESS EXCLUSIVE MODE")
        .execute(&mut slow)
        .await
        .expect("lock");
    answer_wrongly(&mut guesses).await;
    // A guess holds the login's turn (its check waits for the locked table) before the owner
    // asks: otherwise the owner could take the turn first and wait for the database itself.
    let mut watch = sqlx::PgConnection::connect(&url).await.expect("connection");
    let held = async {
        loop {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_locks \
                 WHERE relation = 'cluster_login_failures'::regclass AND NOT granted",
            )
            .fetch_one(&mut watch)
            .await
            .expect("locks");
            if waiting > 0 {
                break;
            }
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(Duration::from_secs(20), held)
        .await
        .expect("a guess's check waits for the locked table");
    let salt = field(&ack, "salt").expect("salt");
    let hash = msim_chat::crypto::challenge_hash(&salt, PASSWORD.as_bytes());
    owner_client
        .send(&format!("CONNECT-CONTINUE hash={hash}"))
        .await;
    // While the database is still stuck: the guesses past the queue's bound at once, those
    // waiting after the turn's wait, and the owner too; only the check holding the turn waits.
    // (Less than the client's own read timeout: the check holding the turn is not answered.)
    let within = Duration::from_secs(8);
    let answers = futures::future::join_all(
        guesses
            .iter_mut()
            .chain([&mut owner_client])
            .map(|c| tokio::time::timeout(within, c.expect("CONNECT-FAILED"))),
    )
    .await;
    let owners = answers[20]
        .as_ref()
        .expect("the owner is answered within the turn's bound, not queued behind the flood");
    assert_eq!(field(owners, "reason").as_deref(), Some("throttled"));
    assert_eq!(
        field(owners, "retry-after").as_deref(),
        Some("1"),
        "{owners}"
    );
    assert_eq!(throttled(&answers[..20]), 19, "{answers:?}");
    // The database answers again: the owner logs in (from his known address: the guess
    // that was checked now slows every new one).
    sqlx::query("COMMIT")
        .execute(&mut slow)
        .await
        .expect("commit");
    let mut c = Client::connect_from(n[0].addr, known).await;
    c.login("bob", PASSWORD).await;
}

/// Attack 4, L1: the login's turn was keyed by the login alone, so a flood of guesses that
/// filled it (8 checks holding or waiting for the turn) got the owner `throttled` even from an
/// address he had logged in from, which SECURITY.md promises strangers never slow. Now a
/// known address takes turns apart. The guesses' checks are held up by an uncommitted row of
/// the login's failure count (their record waits for it); the owner's check does not touch it.
#[tokio::test]
async fn a_flood_of_guesses_does_not_delay_the_owner_at_a_known_address() {
    use sqlx::Connection;
    let Some(url) = database("throttle known address").await else {
        return;
    };
    let n = nodes(&url, 1, &[]).await;
    let known: IpAddr = Ipv4Addr::new(127, 0, 0, 1).into();
    drop(n[0].user("bob").await);
    let mut blocker = sqlx::PgConnection::connect(&url).await.expect("connection");
    sqlx::query("BEGIN")
        .execute(&mut blocker)
        .await
        .expect("begin");
    // The login's count of failures from unknown addresses (scope 2), not yet committed.
    sqlx::query(
        "INSERT INTO cluster_login_failures (scope, key, failures, last_us, expires_us) \
         VALUES (2, 'bob', 0, 0, 9223372036854775807)",
    )
    .execute(&mut blocker)
    .await
    .expect("insert");
    let attacker: IpAddr = Ipv4Addr::new(127, 0, 0, 6).into();
    let mut guesses = guesses_for_bob(&[n[0].addr], attacker, 20).await;
    answer_wrongly(&mut guesses).await;
    // 12 are refused at once (8 hold or wait for the turn: one holds it, waiting for the row).
    let answers = futures::future::join_all(
        guesses
            .iter_mut()
            .map(|c| tokio::time::timeout(Duration::from_secs(1), c.expect("CONNECT-FAILED"))),
    )
    .await;
    assert_eq!(
        throttled(&answers),
        12,
        "the turn's queue is full: {answers:?}"
    );
    // The owner, from his known address, while the queue is full.
    let mut owner = Client::connect_from(n[0].addr, known).await;
    tokio::time::timeout(Duration::from_secs(2), owner.login("bob", PASSWORD))
        .await
        .expect("the owner at a known address is not queued behind the guesses");
    sqlx::query("ROLLBACK")
        .execute(&mut blocker)
        .await
        .expect("rollback");
}

/// `count` connections from `attacker` that asked to log in as bob (each got its salt), spread
/// over `nodes` in turn.
async fn guesses_for_bob(
    nodes: &[std::net::SocketAddr],
    attacker: IpAddr,
    count: usize,
) -> Vec<Client> {
    let mut guesses = Vec::with_capacity(count);
    for k in 0..count {
        let mut c = Client::connect_from(nodes[k % nodes.len()], attacker).await;
        c.send("CONNECT login=bob").await;
        c.expect("CONNECT-ACK").await;
        guesses.push(c);
    }
    guesses
}

/// Every guess answers its challenge wrongly.
async fn answer_wrongly(guesses: &mut [Client]) {
    let wrong = "0".repeat(64);
    for c in guesses {
        c.send(&format!("CONNECT-CONTINUE hash={wrong}")).await;
    }
}

/// How many of `answers` say `throttled`.
fn throttled<E>(answers: &[Result<String, E>]) -> usize {
    answers
        .iter()
        .filter(|a| matches!(a, Ok(l) if field(l, "reason").as_deref() == Some("throttled")))
        .count()
}
