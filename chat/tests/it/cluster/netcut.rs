//! A silent network cut between a node and PostgreSQL (packets dropped, no reset: a TCP proxy
//! that stops forwarding but keeps accepting bytes). The node's writes must answer within
//! the database timeout instead of hanging; the other node declares it dead; once the network
//! is back the node recovers by itself: it registers again, its user is announced online
//! again to a watcher on the other node, and nothing acknowledged is lost.

use super::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};

/// A TCP proxy to `upstream` that can be cut (bytes are accepted by the kernel and held,
/// nothing is forwarded either way) and restored (the held bytes go on, as after a network
/// cut that heals before TCP gives up). Armed, it cuts itself just after forwarding the next
/// `COMMIT` of the node's writer connection (the one that stores batch marks): the COMMIT
/// reaches PostgreSQL, its answer does not.
pub(super) struct CuttableProxy {
    pub(super) addr: SocketAddr,
    open: watch::Sender<bool>,
    armed: Arc<AtomicBool>,
    cut_at_commit: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

/// Whether `hay` contains `needle`.
fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

impl CuttableProxy {
    pub(super) async fn start(upstream: SocketAddr) -> CuttableProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (open, _) = watch::channel(true);
        let gate = open.clone();
        let armed = Arc::new(AtomicBool::new(false));
        let cut_at_commit = Arc::new(Notify::new());
        let (arm, seen) = (armed.clone(), cut_at_commit.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(upstream).await else {
                    continue;
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                let commit = Some((gate.clone(), arm.clone(), seen.clone()));
                tokio::spawn(pump(cr, sw, gate.subscribe(), commit));
                tokio::spawn(pump(sr, cw, gate.subscribe(), None));
            }
        });
        CuttableProxy {
            addr,
            open,
            armed,
            cut_at_commit,
            task,
        }
    }

    pub(super) fn cut(&self) {
        self.open.send_replace(false);
    }

    pub(super) fn restore(&self) {
        self.open.send_replace(true);
    }

    /// Cuts the network just after the writer's next `COMMIT` has gone through.
    pub(super) fn arm_commit_cut(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }

    /// Waits until the armed cut happened.
    pub(super) async fn commit_cut(&self) {
        tokio::time::timeout(WAIT, self.cut_at_commit.notified())
            .await
            .expect("no COMMIT of the writer went through the proxy");
    }
}

impl Drop for CuttableProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What a client-to-server pump needs to cut at a `COMMIT`: the gate, whether armed, and
/// whom to tell.
type CommitCut = (watch::Sender<bool>, Arc<AtomicBool>, Arc<Notify>);

/// Copies `from` to `to` while the gate is open; holds everything while it is shut.
/// `commit`: this is a client-to-server direction (see [`CuttableProxy::arm_commit_cut`]).
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut open: watch::Receiver<bool>,
    commit: Option<CommitCut>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    // The writer's connection prepares the batch statement that stores marks.
    let mut writer = false;
    loop {
        if open.wait_for(|o| *o).await.is_err() {
            return;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some((gate, armed, seen)) = &commit {
            writer = writer || contains(&buf[..n], b"UPDATE batch_marks SET mark");
            if writer && contains(&buf[..n], b"COMMIT") && armed.swap(false, Ordering::SeqCst) {
                // Shut first (nothing comes back, no other connection gets through), then
                // let this COMMIT reach the server.
                gate.send_replace(false);
                if to.write_all(&buf[..n]).await.is_err() {
                    break;
                }
                seen.notify_one();
                continue;
            }
        }
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
pub(super) fn through(url: &str, proxy: SocketAddr) -> String {
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
pub(super) async fn send_until_sent(c: &mut Client, to: &str, text: &str) -> (String, Vec<String>) {
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
    // bob asks the instant alice is in: his node's mirror may not show her login yet, the
    // request reaches her all the same (it used to wait for her next login).
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
