//! A silent network cut between a node and PostgreSQL (packets dropped, no reset: a TCP proxy
//! that stops forwarding but keeps accepting bytes). The node's writes must answer within
//! the database timeout instead of hanging; the other node declares it dead; once the network
//! is back the node recovers by itself: it registers again, its user is announced online
//! again to a watcher on the other node, and nothing acknowledged is lost.

use super::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A TCP proxy to `upstream` that can be cut (bytes are accepted by the kernel and held,
/// nothing is forwarded either way) and restored (the held bytes go on, as after a network
/// cut that heals before TCP gives up).
struct CuttableProxy {
    addr: SocketAddr,
    open: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl CuttableProxy {
    async fn start(upstream: SocketAddr) -> CuttableProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (open, _) = watch::channel(true);
        let gate = open.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(upstream).await else {
                    continue;
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pump(cr, sw, gate.subscribe()));
                tokio::spawn(pump(sr, cw, gate.subscribe()));
            }
        });
        CuttableProxy { addr, open, task }
    }

    fn cut(&self) {
        self.open.send_replace(false);
    }

    fn restore(&self) {
        self.open.send_replace(true);
    }
}

impl Drop for CuttableProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies `from` to `to` while the gate is open; holds everything while it is shut.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut open: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if open.wait_for(|o| *o).await.is_err() {
            return;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        // Read just before a cut: held until the network is back.
        if open.wait_for(|o| *o).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

/// `url` (a database of the shared test cluster, over its unix socket) over TCP through
/// `proxy`.
fn through(url: &str, proxy: SocketAddr) -> String {
    let cluster = msim_testkit::postgres::shared("cluster::netcut").expect("running");
    let name = url
        .rsplit_once('/')
        .and_then(|(_, rest)| rest.split('?').next())
        .expect("database name");
    let direct = cluster.tcp_url(name);
    direct.replace(
        &format!("127.0.0.1:{}/", cluster.port()),
        &format!("{proxy}/"),
    )
}

/// Sends one message until it is answered `MESSAGE-SENT` (a recovering node may still fail
/// a few); returns its id and the ids answered with a failure meanwhile.
async fn send_until_sent(c: &mut Client, to: &str, text: &str) -> (String, Vec<String>) {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut failed = Vec::new();
    loop {
        c.send(&format!("MESSAGE to={to} text={text}")).await;
        let l = loop {
            let l = c.line().await;
            if l.starts_with("MESSAGE-SENT ") || l.starts_with("MESSAGE-SEND-FAILED ") {
                break l;
            }
        };
        let id = field(&l, "id").unwrap();
        if l.starts_with("MESSAGE-SENT ") {
            return (id, failed);
        }
        assert_eq!(field(&l, "reason").as_deref(), Some("storage-error"), "{l}");
        failed.push(id);
        assert!(
            tokio::time::Instant::now() < deadline,
            "the node never recovered"
        );
        // A retry, as a client would (the connection pool reconnects meanwhile).
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_silent_network_cut_answers_in_time_and_the_node_recovers() {
    let Some(url) = database("netcut").await else {
        return;
    };
    let upstream: SocketAddr = {
        let cluster = msim_testkit::postgres::shared("cluster::netcut").expect("running");
        format!("127.0.0.1:{}", cluster.port()).parse().unwrap()
    };
    let proxy = CuttableProxy::start(upstream).await;
    // Node b (direct, the leader) holds bob; node a reaches the database through the proxy.
    let mut n = nodes(&url, 1, &[]).await;
    let key = n[0].key();
    let mut a = Node::start(
        &through(&url, proxy.addr),
        Some(&key),
        &["--database-timeout", "1s"],
    )
    .await;
    a.wait_log(LISTENING).await;
    let mut bob = n[0].user("bob").await;
    let mut alice = a.user("alice").await;
    // bob watches alice (approved).
    bob.send("CONTACTS-ADD id=alice").await;
    bob.expect("CONTACTS-ADD-OK").await;
    alice.expect_skip("PRESENCE-REQUEST").await;
    alice.send("PRESENCE-APPROVE id=bob").await;
    alice.expect("PRESENCE-APPROVE-OK").await;
    bob.expect_skip("CONTACT-UPDATED").await;
    assert_eq!(bob.list().await, vec!["id=alice@localhost presence=online"]);
    let before = send_all(&mut alice, "bob", &["before".into()]).await;
    let l = bob.expect_skip("MESSAGE").await;
    assert_eq!(field(&l, "id"), Some(before[0].clone()));
    let mut sent = Vec::new();

    // The cut: a message gets its answer (a failure: its COMMIT was never sent) within the
    // bound, not never.
    proxy.cut();
    let cut_at = std::time::Instant::now();
    alice.send("MESSAGE to=bob text=during").await;
    // The bound: the database timeout for the batch, plus (had its COMMIT been on the way)
    // six more for learning its outcome. Without the timeouts, the writer waits for the
    // pool's 10 s connection wait, or for ever on a connection taken before the cut.
    let bound = Duration::from_secs(1) * 7;
    let answer = loop {
        let l = alice
            .try_line_within(bound)
            .await
            .unwrap_or_else(|| panic!("no answer within {bound:?} of the cut"));
        if l.starts_with("MESSAGE-SEN") {
            break l;
        }
    };
    assert!(
        answer.starts_with("MESSAGE-SEND-FAILED "),
        "nothing can commit through a cut network: {answer}"
    );
    let mut failed = vec![field(&answer, "id").unwrap()];
    assert!(
        cut_at.elapsed() < bound,
        "answered after {:?}",
        cut_at.elapsed()
    );
    // The other node declares a dead and bob sees alice go offline.
    n[0].wait_log(&["dead nodes reaped"]).await;
    bob.expect_skip("CONTACT-UPDATED").await;
    let list = bob.list().await;
    assert!(
        list[0].starts_with("id=alice@localhost presence=20"),
        "{list:?}"
    );

    // The network is back: a registers again and alice is online again for bob.
    proxy.restore();
    a.wait_log(&["this node was declared dead: registering again"])
        .await;
    bob.expect_skip("CONTACT-UPDATED").await;
    assert_eq!(bob.list().await, vec!["id=alice@localhost presence=online"]);
    // a's writes work again; nothing acknowledged is lost, nothing failed arrives.
    let (id, more_failed) = send_until_sent(&mut alice, "bob", "after").await;
    sent.push(id);
    failed.extend(more_failed);
    let (marker, _) = send_until_sent(&mut alice, "bob", "end-1").await;
    drop(marker);
    let got = messages_until(&mut bob, &sent, "end-1").await;
    exactly_once("bob", &got, &sent);
    for id in &failed {
        assert!(
            got.iter().all(|(g, _)| g != id),
            "failed {id} was delivered"
        );
    }
}
