//! Three real msim-chat processes (a.test, b.test, c.test) federating through the test DNS
//! server: messages among all three, then one server killed (SIGKILL) while the others keep
//! sending to it, restarted, and everything arrives once, in each sender's order.

use super::dns::TestDns;
use super::publish;
use crate::common::{chat_binary, database_env, field, Client, PASSWORD};
use msim_chat::federation::keys;
use msim_testkit::ServerProcess;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

/// One federated msim-chat process.
struct Node {
    domain: String,
    dir: tempfile::TempDir,
    s2s_port: u16,
    process: ServerProcess,
    addr: SocketAddr,
}

/// A port free right now on 127.0.0.1 (the s2s port is published before the server starts).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn spawn(
    dns: &TestDns,
    domain: &str,
    dir: &Path,
    s2s_port: u16,
) -> (ServerProcess, SocketAddr) {
    publish(dns, domain, dir, s2s_port);
    let mut cmd = chat_binary(dir);
    cmd.args(["--domain", domain, "--federation", "open"])
        .args(["--s2s-listen", &format!("127.0.0.1:{s2s_port}")])
        .args(["--s2s-allow-private", "true"])
        .args(["--dns-server", &dns.addr.to_string()])
        .envs(database_env(dir));
    let mut server = ServerProcess::spawn(cmd).unwrap();
    let addr = server.listening("msim-chat listening").await.unwrap();
    // The servers' logs, shown when the test fails.
    let mut log = server.keep_reading_log();
    let domain = domain.to_owned();
    tokio::spawn(async move {
        while let Some(line) = log.recv().await {
            println!("[{domain}] {line}");
        }
    });
    (server, addr)
}

impl Node {
    async fn start(dns: &TestDns, domain: &str) -> Node {
        let dir = tempfile::tempdir().unwrap();
        keys::generate(dir.path(), domain).unwrap();
        let s2s_port = free_port();
        let (process, addr) = spawn(dns, domain, dir.path(), s2s_port).await;
        Node {
            domain: domain.to_owned(),
            dir,
            s2s_port,
            process,
            addr,
        }
    }

    /// Kills the process without warning.
    async fn kill(&mut self) {
        self.process.child.kill().await.unwrap();
    }

    /// Starts the process again on the same data and s2s port.
    async fn restart(&mut self, dns: &TestDns) {
        let (process, addr) = spawn(dns, &self.domain, self.dir.path(), self.s2s_port).await;
        self.process = process;
        self.addr = addr;
    }

    async fn register(&self, login: &str) -> User {
        let mut c = Client::connect(self.addr).await;
        c.send(&format!("REGISTER login={login} password={PASSWORD}"))
            .await;
        c.expect("REGISTER-OK").await;
        c.login(login, PASSWORD).await;
        User::new(c)
    }

    async fn session(&self, login: &str) -> User {
        let mut c = Client::connect(self.addr).await;
        c.login(login, PASSWORD).await;
        User::new(c)
    }
}

/// A logged-in client that keeps every `MESSAGE` it receives, also while it waits for the
/// answer to its own.
struct User {
    c: Client,
    /// (id, from, text) received and not collected yet.
    inbox: Vec<(String, String, String)>,
}

impl User {
    fn new(c: Client) -> User {
        User {
            c,
            inbox: Vec::new(),
        }
    }

    /// Keeps `l` if it is a `MESSAGE`, acknowledging it (so that a later login does not get
    /// it again, PROTOCOL.md §5.5).
    async fn keep(&mut self, l: &str) {
        if l.starts_with("MESSAGE ") {
            let id = field(l, "id").unwrap();
            self.c.send(&format!("MESSAGE-ACK id={id}")).await;
            let m = (id, field(l, "from").unwrap(), field(l, "text").unwrap());
            self.inbox.push(m);
        }
    }

    /// Sends a message, asserting `MESSAGE-SENT`.
    async fn send(&mut self, to: &str, text: &str) {
        self.c.send(&format!("MESSAGE to={to} text={text}")).await;
        loop {
            let l = self.c.line().await;
            if l.starts_with("MESSAGE-SENT ") {
                return;
            }
            assert!(!l.starts_with("MESSAGE-SEND-FAILED"), "{l}");
            self.keep(&l).await;
        }
    }

    /// The `MESSAGE`s received until `want` have arrived (a round trip at a time, so no read
    /// waits long), or panics after `within`; (id, sender, text) in arrival order.
    async fn collect_ids(
        &mut self,
        want: usize,
        within: Duration,
    ) -> Vec<(String, String, String)> {
        let deadline = Instant::now() + within;
        let mut round = 0u32;
        loop {
            round += 1;
            self.c.send(&format!("PING ref=r{round}")).await;
            loop {
                let l = self.c.line().await;
                if l.starts_with("PONG") && field(&l, "ref") == Some(format!("r{round}")) {
                    break;
                }
                self.keep(&l).await;
            }
            if self.inbox.len() >= want {
                return std::mem::take(&mut self.inbox);
            }
            assert!(
                Instant::now() < deadline,
                "only {} of {want} messages: {:?}",
                self.inbox.len(),
                self.inbox
            );
            // Between round trips: the senders' servers retry with their backoff.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Like [`User::collect_ids`], without the ids.
    async fn collect(&mut self, want: usize, within: Duration) -> Vec<(String, String)> {
        let got = self.collect_ids(want, within).await;
        got.into_iter()
            .map(|(_, from, text)| (from, text))
            .collect()
    }
}

#[tokio::test]
async fn three_servers_exchange_messages_and_survive_a_killed_peer() {
    let dns = TestDns::start().await;
    let a = Node::start(&dns, "a.test").await;
    let b = Node::start(&dns, "b.test").await;
    let mut c = Node::start(&dns, "c.test").await;
    let mut alice = a.register("alice").await;
    let mut bob = b.register("bob").await;
    let mut carol = c.register("carol").await;

    // Everyone to everyone.
    let wait = Duration::from_secs(30);
    alice.send("bob@b.test", "a2b").await;
    alice.send("carol@c.test", "a2c").await;
    bob.send("alice@a.test", "b2a").await;
    bob.send("carol@c.test", "b2c").await;
    carol.send("alice@a.test", "c2a").await;
    carol.send("bob@b.test", "c2b").await;
    let mut got = alice.collect(2, wait).await;
    got.sort();
    assert_eq!(
        got,
        [
            ("bob@b.test".into(), "b2a".into()),
            ("carol@c.test".into(), "c2a".into())
        ]
    );
    let mut got = bob.collect(2, wait).await;
    got.sort();
    assert_eq!(
        got,
        [
            ("alice@a.test".into(), "a2b".into()),
            ("carol@c.test".into(), "c2b".into())
        ]
    );
    let got = carol.collect_ids(2, wait).await;
    // Acknowledgements are best effort (§5.5): killed right after, c.test may deliver these
    // two again at the next login (at least once per device, §5.6); clients de-duplicate by id.
    let before_kill: Vec<String> = got.iter().map(|(id, _, _)| id.clone()).collect();
    let mut got: Vec<(String, String)> = got.into_iter().map(|(_, f, t)| (f, t)).collect();
    got.sort();
    assert_eq!(
        got,
        [
            ("alice@a.test".into(), "a2c".into()),
            ("bob@b.test".into(), "b2c".into())
        ]
    );

    // c.test dies; a.test and b.test keep accepting messages for carol (queued).
    drop(carol);
    c.kill().await;
    const N: usize = 15;
    for i in 0..N {
        alice.send("carol@c.test", &format!("a{i}")).await;
        bob.send("carol@c.test", &format!("b{i}")).await;
    }
    c.restart(&dns).await;
    let mut carol = c.session("carol").await;
    let mut ids = std::collections::HashSet::new();
    let mut per_sender: HashMap<String, Vec<String>> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while ids.len() < 2 * N {
        assert!(Instant::now() < deadline, "only {per_sender:?}");
        for (id, from, text) in carol.collect_ids(1, Duration::from_secs(60)).await {
            if before_kill.contains(&id) {
                continue;
            }
            assert!(ids.insert(id.clone()), "{id} ({text}) delivered twice");
            per_sender.entry(from).or_default().push(text);
        }
    }
    let expect = |p: &str| (0..N).map(|i| format!("{p}{i}")).collect::<Vec<_>>();
    assert_eq!(
        per_sender["alice@a.test"],
        expect("a"),
        "alice's, once, in order"
    );
    assert_eq!(
        per_sender["bob@b.test"],
        expect("b"),
        "bob's, once, in order"
    );

    // Nothing more after a last message from each (no late duplicates), and carol can answer.
    alice.send("carol@c.test", "last-a").await;
    bob.send("carol@c.test", "last-b").await;
    let mut tail = carol.collect(2, wait).await;
    tail.sort();
    assert_eq!(
        tail,
        [
            ("alice@a.test".into(), "last-a".into()),
            ("bob@b.test".into(), "last-b".into())
        ]
    );
    carol.send("alice@a.test", "back").await;
    let got = alice.collect(1, wait).await;
    assert_eq!(got, [("carol@c.test".into(), "back".into())]);
}
