//! Several msim-chat nodes, each the real binary in a process of its own, on one throwaway
//! PostgreSQL database: one service (issue 13, docs/OPERATING.md "Scaling out"). Every node
//! holds the first node's `secret.key`, as an operator's would. Skipped loudly without
//! PostgreSQL's server binaries (a failure with `MSIM_REQUIRE_POSTGRES=1`).

mod failover;
mod fanout;
mod federation;
mod frozen;
mod netcut;
mod netcut_commit;
mod restart;
mod throttle;

use crate::common::{self, field, Client, PASSWORD};
use msim_testkit::ServerProcess;
use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::sync::mpsc;

/// The cluster timing of every node: quick, so the tests are.
pub const HEARTBEAT: Duration = Duration::from_millis(200);
pub const NODE_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest wait for anything that should happen (a loaded machine is slow).
pub const WAIT: Duration = Duration::from_secs(30);
/// The log line of a cluster listener that (re)connected.
pub const LISTENING: &[&str] = &["cluster listener connected: catching up"];

/// One msim-chat process.
pub struct Node {
    pub proc: ServerProcess,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    log: mpsc::UnboundedReceiver<String>,
    /// Every log line read so far.
    history: Vec<String>,
}

impl Node {
    /// Starts a node on database `url` with `key` as its `secret.key` (none: it makes one),
    /// the cluster timing above, registration unlimited, and `extra` arguments.
    pub async fn start(url: &str, key: Option<&[u8]>, extra: &[&str]) -> Node {
        Node::start_in(tempfile::tempdir().unwrap(), url, key, extra).await
    }

    /// Like [`Node::start`], in a data directory prepared by the caller.
    pub async fn start_in(
        dir: tempfile::TempDir,
        url: &str,
        key: Option<&[u8]>,
        extra: &[&str],
    ) -> Node {
        if let Some(key) = key {
            msim_chat::db::create_data_dir(dir.path()).unwrap();
            std::fs::write(dir.path().join("secret.key"), key).unwrap();
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let private = std::fs::Permissions::from_mode(0o600);
                std::fs::set_permissions(dir.path().join("secret.key"), private).unwrap();
            }
        }
        let mut c = common::chat_binary(dir.path());
        let ms = |d: Duration| format!("{}ms", d.as_millis());
        c.env("MSIM_CHAT_DATABASE_URL", url)
            .args(["--register-burst", "0", "--register-prefix-burst", "0"])
            .args(extra);
        if !extra.contains(&"--cluster-heartbeat") {
            c.args(["--cluster-heartbeat", &ms(HEARTBEAT)]);
        }
        if !extra.contains(&"--cluster-node-timeout") {
            c.args(["--cluster-node-timeout", &ms(NODE_TIMEOUT)]);
        }
        let mut proc = ServerProcess::spawn(c).unwrap();
        let addr = proc.listening("msim-chat listening").await.unwrap();
        let history = proc.log_so_far().lines().map(str::to_owned).collect();
        let log = proc.keep_reading_log();
        Node {
            proc,
            addr,
            dir,
            log,
            history,
        }
    }

    /// This node's `secret.key` (for the next nodes).
    pub fn key(&self) -> Vec<u8> {
        std::fs::read(self.dir.path().join("secret.key")).unwrap()
    }

    /// How many lines logged so far contain every one of `parts`.
    pub fn count_log(&mut self, parts: &[&str]) -> usize {
        while let Ok(line) = self.log.try_recv() {
            self.history.push(line);
        }
        let matches = |l: &&String| parts.iter().all(|p| l.contains(p));
        self.history.iter().filter(matches).count()
    }

    /// Waits until `n` log lines contain every one of `parts`.
    pub async fn wait_log_nth(&mut self, parts: &[&str], n: usize) {
        let mut count = self.count_log(parts);
        let found = tokio::time::timeout(WAIT, async {
            while count < n {
                let Some(line) = self.log.recv().await else {
                    panic!("the node exited before logging {parts:?}");
                };
                if parts.iter().all(|p| line.contains(p)) {
                    count += 1;
                }
                self.history.push(line);
            }
        });
        found
            .await
            .unwrap_or_else(|_| panic!("no log line with {parts:?}"))
    }

    /// Waits for a log line containing every one of `parts` (if none was logged yet).
    pub async fn wait_log(&mut self, parts: &[&str]) {
        self.wait_log_nth(parts, 1).await
    }

    /// Kills the process with SIGKILL (no clean-up of any kind).
    pub async fn kill(&mut self) {
        self.proc.child.start_kill().unwrap();
        self.proc.child.wait().await.unwrap();
    }

    /// Sends `signal` (`STOP`, `CONT`) to the process.
    pub fn signal(&self, signal: &str) {
        let pid = self.proc.child.id().expect("running").to_string();
        let ok = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{signal} {pid}");
    }

    /// A registered user's new session here.
    pub async fn session(&self, login: &str) -> Client {
        let mut c = Client::connect(self.addr).await;
        c.login(login, PASSWORD).await;
        c
    }

    /// Registers `login` here and returns a session of it.
    pub async fn user(&self, login: &str) -> Client {
        let mut c = Client::connect(self.addr).await;
        c.send(&format!("REGISTER login={login} password={PASSWORD}"))
            .await;
        c.expect("REGISTER-OK").await;
        c.login(login, PASSWORD).await;
        c
    }
}

impl Drop for Node {
    /// A failed test shows the node's log.
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.count_log(&[]);
            eprintln!("---- log of the node at {} ----", self.addr);
            for l in &self.history {
                eprintln!("{l}");
            }
        }
    }
}

/// A database of the shared throwaway cluster, or `None` (skipped).
pub async fn database(test: &str) -> Option<String> {
    let test = format!("cluster::{test}");
    tokio::task::spawn_blocking(move || msim_testkit::postgres::database(&test))
        .await
        .unwrap()
}

/// `n` nodes on `url`; the first one is the leader once this returns (it is started, and
/// has taken the leader lock, before the others start).
pub async fn nodes(url: &str, n: usize, extra: &[&str]) -> Vec<Node> {
    let mut first = Node::start(url, None, extra).await;
    first
        .wait_log(&["cluster leadership changed", "leader=true"])
        .await;
    let key = first.key();
    let mut all = vec![first];
    for _ in 1..n {
        all.push(Node::start(url, Some(&key), extra).await);
    }
    all
}

/// Sends `texts` to `to` pipelined (all requests, then all answers); returns the ids of the
/// messages answered `MESSAGE-SENT`, in order.
pub async fn send_all(c: &mut Client, to: &str, texts: &[String]) -> Vec<String> {
    let mut batch = String::new();
    for t in texts {
        batch.push_str(&format!("MESSAGE to={to} text={t}\n"));
    }
    c.send_raw(batch.as_bytes()).await;
    let mut ids = Vec::new();
    while ids.len() < texts.len() {
        let l = c.line().await;
        if l.starts_with("MESSAGE-SENT ") {
            ids.push(field(&l, "id").unwrap());
        } else {
            assert!(!l.starts_with("MESSAGE-SEND-FAILED"), "{l}");
        }
    }
    ids
}

/// Reads `c`'s pushes until every id of `want` and a `MESSAGE` with text `marker` have
/// arrived; returns the other messages as (id, text), in arrival order. The marker is sent
/// last, from a node other than `c`'s: that node's reader pushes a recipient's items in
/// commit order, so a duplicate pushed by it would arrive before the marker.
pub async fn messages_until(
    c: &mut Client,
    want: &[String],
    marker: &str,
) -> Vec<(String, String)> {
    let want: HashSet<&str> = want.iter().map(String::as_str).collect();
    let mut seen = HashSet::new();
    let mut got = Vec::new();
    let mut marked = false;
    while !marked || !want.iter().all(|id| seen.contains(*id)) {
        let l = c.line().await;
        if !l.starts_with("MESSAGE ") {
            continue;
        }
        let text = field(&l, "text").unwrap();
        if text == marker {
            marked = true;
        }
        // Markers (texts `end-…`) are not part of what is counted.
        if text.starts_with("end-") {
            continue;
        }
        let id = field(&l, "id").unwrap();
        seen.insert(id.clone());
        got.push((id, text));
    }
    got
}

/// Every id of `want` exactly once in `got`, and nothing else.
pub fn exactly_once(who: &str, got: &[(String, String)], want: &[String]) {
    let mut count = BTreeMap::<&str, usize>::new();
    for (id, _) in got {
        *count.entry(id.as_str()).or_default() += 1;
    }
    let dups: Vec<_> = count.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dups.is_empty(), "{who}: duplicates {dups:?}");
    let want: HashSet<&str> = want.iter().map(String::as_str).collect();
    let missing: Vec<_> = want.iter().filter(|id| !count.contains_key(*id)).collect();
    assert!(missing.is_empty(), "{who}: {} missing", missing.len());
    let extra: Vec<_> = count.keys().filter(|id| !want.contains(*id)).collect();
    assert!(extra.is_empty(), "{who}: unexpected {extra:?}");
}
