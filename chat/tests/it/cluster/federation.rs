//! Federation on a cluster: two nodes of a.test on one PostgreSQL database and a remote
//! server r.test. `fed_queue` is one table for both nodes: only the leader drains it (the
//! other node never dials for queued items), a kill -9 of the leader hands the queue to the
//! other node with nothing lost, and the per-recipient pending cap holds across nodes.

use super::*;
use crate::federation::dns::TestDns;
use crate::federation::{publish, Fed};
use msim_chat::federation::keys;

/// The log line of a link this node dialed (with the peer's name on it).
const LINK_OUT: &str = "s2s link out";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Copies a.test's federation key directory from `from` into the data directory `to`.
fn copy_keys(from: &std::path::Path, to: &std::path::Path) {
    let (src, dst) = (keys::key_dir(from), keys::key_dir(to));
    std::fs::create_dir_all(&dst).unwrap();
    for e in std::fs::read_dir(&src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
}

/// Both a.test nodes' federation arguments (each its own s2s port).
fn fed_args(dns: &TestDns, s2s_port: u16) -> Vec<String> {
    [
        "--domain",
        "a.test",
        "--federation",
        "open",
        "--s2s-allow-private",
        "true",
        "--s2s-listen",
        &format!("127.0.0.1:{s2s_port}"),
        "--dns-server",
        &dns.addr.to_string(),
    ]
    .map(str::to_owned)
    .to_vec()
}

/// Reads `zed`'s pushes until `n` messages arrived (acknowledging them); (from, text) in
/// arrival order.
async fn receive(zed: &mut Client, n: usize) -> Vec<(String, String)> {
    let mut got = Vec::new();
    let all = tokio::time::timeout(WAIT, async {
        while got.len() < n {
            let l = zed.line().await;
            if l.starts_with("MESSAGE ") {
                let id = field(&l, "id").unwrap();
                zed.send(&format!("MESSAGE-ACK id={id}")).await;
                got.push((field(&l, "from").unwrap(), field(&l, "text").unwrap()));
            }
        }
    })
    .await;
    assert!(all.is_ok(), "only {} of {n} messages: {got:?}", got.len());
    got
}

#[tokio::test]
async fn only_the_leader_drains_the_queue_and_the_other_node_takes_it_over() {
    let Some(url) = database("federation_drain").await else {
        return;
    };
    let dns = TestDns::start().await;
    // r.test is published (key and port) but not running yet: everything queues.
    let remote_dir = tempfile::tempdir().unwrap();
    keys::generate(&remote_dir.path().join("chat"), "r.test").unwrap();
    let remote_port = free_port();
    publish(&dns, "r.test", &remote_dir.path().join("chat"), remote_port);

    let (dir0, dir1) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    keys::generate(dir0.path(), "a.test").unwrap();
    copy_keys(dir0.path(), dir1.path());
    let (port0, port1) = (free_port(), free_port());
    publish(&dns, "a.test", dir0.path(), port0);
    let args0 = fed_args(&dns, port0);
    let args0: Vec<&str> = args0.iter().map(String::as_str).collect();
    let mut n0 = Node::start_in(dir0, &url, None, &args0).await;
    n0.wait_log(&["cluster leadership changed", "leader=true"])
        .await;
    let args1 = fed_args(&dns, port1);
    let args1: Vec<&str> = args1.iter().map(String::as_str).collect();
    let mut n1 = Node::start_in(dir1, &url, Some(&n0.key()), &args1).await;

    let mut alice = n0.user("alice").await;
    let mut bob = n1.user("bob").await;
    let first: Vec<String> = (0..20).map(|i| format!("a{i}")).collect();
    send_all(&mut alice, "zed@r.test", &first).await;
    let second: Vec<String> = (0..20).map(|i| format!("b{i}")).collect();
    send_all(&mut bob, "zed@r.test", &second).await;
    // The leader tries r.test (and fails: it is down), for items queued on either node.
    n0.wait_log(&["s2s link out failed", "r.test"]).await;
    // The other node never dials for the queue (it would send the same items again).
    assert_eq!(n1.count_log(&[LINK_OUT]), 0, "node 1 dialed r.test");

    // kill -9 of the leader; r.test comes up: node 1 takes the queue over.
    n0.kill().await;
    n1.wait_log(&["cluster leadership changed", "leader=true"])
        .await;
    let remote = Fed::start_in(&dns, "r.test", remote_dir, remote_port, |_| {}).await;
    let mut zed = remote.user("zed").await;
    // Sent after the take-over, from the surviving node: after the rest in bob's order.
    let third: Vec<String> = (20..25).map(|i| format!("b{i}")).collect();
    send_all(&mut bob, "zed@r.test", &third).await;
    let got = receive(&mut zed, 45).await;
    let from = |who: &str| -> Vec<String> {
        got.iter()
            .filter(|(f, _)| f == who)
            .map(|(_, t)| t.clone())
            .collect()
    };
    assert_eq!(from("alice@a.test"), first, "alice's, once, in order");
    let bobs: Vec<String> = second.iter().chain(&third).cloned().collect();
    assert_eq!(from("bob@a.test"), bobs, "bob's, once, in order");
    // Nothing more (a duplicate would follow within a round trip).
    zed.send("PING ref=end").await;
    loop {
        let l = zed.line().await;
        assert!(!l.starts_with("MESSAGE "), "more than once: {l}");
        if l.starts_with("PONG") {
            break;
        }
    }
}

/// `--max-pending-messages 5` on both nodes, a sender on each filling the (offline) pending
/// messages of five recipients at once: 5 each are stored in total, not 5 per node (the nodes'
/// batches run concurrently; with the cap counted per node, one overshoots).
#[tokio::test]
async fn the_pending_cap_holds_across_nodes() {
    let Some(url) = database("pending_cap").await else {
        return;
    };
    let n = nodes(&url, 2, &["--max-pending-messages", "5"]).await;
    const RECIPIENTS: usize = 5;
    for r in 0..RECIPIENTS {
        drop(n[0].user(&format!("carol{r}")).await);
    }
    let mut alice = n[0].user("alice").await;
    let mut bob = n[1].user("bob").await;
    let burst = |who: &str| {
        let mut b = String::new();
        for i in 0..5 {
            for r in 0..RECIPIENTS {
                b.push_str(&format!("MESSAGE to=carol{r} text={who}{i}\n"));
            }
        }
        b
    };
    // Both bursts in flight before either is answered.
    alice.send_raw(burst("a").as_bytes()).await;
    bob.send_raw(burst("b").as_bytes()).await;
    let (mut sent, mut full) = (0, 0);
    for c in [&mut alice, &mut bob] {
        let mut answers = 0;
        while answers < 5 * RECIPIENTS {
            let l = c.line().await;
            if l.starts_with("MESSAGE-SENT ") {
                sent += 1;
                answers += 1;
            } else if l.starts_with("MESSAGE-SEND-FAILED") {
                assert!(l.contains("recipient-queue-full"), "{l}");
                full += 1;
                answers += 1;
            }
        }
    }
    assert_eq!(sent, 5 * RECIPIENTS, "the cap is for all nodes together");
    assert_eq!(full, 5 * RECIPIENTS);
    // Each recipient gets exactly the 5 stored for them.
    for r in 0..RECIPIENTS {
        let mut carol = n[1].session(&format!("carol{r}")).await;
        carol.send("PING ref=p").await;
        let mut got = 0;
        loop {
            let l = carol.line().await;
            if l.starts_with("MESSAGE ") {
                got += 1;
            }
            if l.starts_with("PONG") {
                break;
            }
        }
        assert_eq!(got, 5, "carol{r}");
    }
}
