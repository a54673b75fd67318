//! A silent network cut while a batch's `COMMIT` is on its way: PostgreSQL commits it, the
//! node never hears so. The node must learn the outcome from the database once the network is
//! back and answer its clients accordingly: no acknowledged message lost, none delivered
//! twice, none answered failed that was stored (the client would send it again: a duplicate).

use super::netcut::{send_until_sent, through, CuttableProxy};
use super::*;

#[tokio::test]
async fn a_cut_while_a_commit_is_in_flight_loses_and_duplicates_nothing() {
    let Some(url) = database("netcut-commit").await else {
        return;
    };
    let upstream: SocketAddr = {
        let cluster = msim_testkit::postgres::shared("cluster::netcut").expect("running");
        format!("127.0.0.1:{}", cluster.port()).parse().unwrap()
    };
    let proxy = CuttableProxy::start(upstream).await;
    // Node b (direct, the leader) holds bob and carol; node a, through the proxy, holds
    // alice and a second session of bob.
    let n = nodes(&url, 1, &[]).await;
    let key = n[0].key();
    let mut a = Node::start(
        &through(&url, proxy.addr),
        Some(&key),
        &["--database-timeout", "2s"],
    )
    .await;
    a.wait_log(LISTENING).await;
    let mut bob = n[0].user("bob").await;
    let mut carol = n[0].user("carol").await;
    let mut alice = a.user("alice").await;
    let mut bob_on_a = a.session("bob").await;
    let mut sent = send_all(&mut alice, "bob", &["before".into()]).await;

    proxy.arm_commit_cut();
    alice.send("MESSAGE to=bob text=in-flight").await;
    proxy.commit_cut().await;
    // The node asks the database whether the batch committed, and gets no answer yet.
    a.wait_log(&["asking whether batch transaction", "committed"])
        .await;
    proxy.restore();
    let answer = loop {
        let l = alice.line().await;
        if l.starts_with("MESSAGE-SEN") {
            break l;
        }
    };
    // It committed: anything but MESSAGE-SENT would make the client send it again.
    assert!(answer.starts_with("MESSAGE-SENT "), "{answer}");
    a.wait_log(&["batch COMMIT failed", "but the transaction committed"])
        .await;
    sent.push(field(&answer, "id").unwrap());
    let mut failed = Vec::new();
    let (after, more_failed) = send_until_sent(&mut alice, "bob", "after").await;
    sent.push(after);
    failed.extend(more_failed);

    // Every session of bob, on either node, gets each exactly once.
    send_until_sent(&mut alice, "bob", "end-1").await;
    let got = messages_until(&mut bob, &sent, "end-1").await;
    exactly_once("bob on b", &got, &sent);
    carol.send("MESSAGE to=bob text=end-2").await;
    carol.expect_skip("MESSAGE-SENT").await;
    let got = messages_until(&mut bob_on_a, &sent, "end-2").await;
    exactly_once("bob on a", &got, &sent);
    for id in &failed {
        assert!(
            got.iter().all(|(g, _)| g != id),
            "failed {id} was delivered"
        );
    }
}
