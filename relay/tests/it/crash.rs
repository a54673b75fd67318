//! The real `msim-relay` binary as a separate process: SIGKILL during uploads and right after
//! `201` (completed uploads are served intact, partial ones resume, recovery reconciles the
//! index with `blobs/`), and SIGTERM (in-flight downloads finish, new connections are refused,
//! interrupted uploads stay resumable, exit 0). docs/OPERATING.md "Storage and crash safety".

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use msim_shared::token::{Capability, Direction, Keyring, TokenKey};
use msim_storage::{blob_file, Clock, SystemClock};
use msim_testkit::{pseudo_random_bytes, sha256_hex, ServerProcess};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::Command;
use tokio::sync::mpsc;
use tokio::time::timeout;

/// Deadline of every network wait and process exit.
const WAIT: Duration = Duration::from_secs(20);
const SECRET: [u8; 32] = [7; 32];

struct Relay {
    server: ServerProcess,
    addr: SocketAddr,
    /// The relay's log lines (stderr).
    log: mpsc::UnboundedReceiver<String>,
}

fn ring() -> Keyring {
    Keyring::new(vec![TokenKey {
        id: "k1".into(),
        secret: SECRET.to_vec(),
    }])
}

fn token(id: &str, dir: Direction, size: u64) -> String {
    ring().sign(&Capability {
        transfer_id: id.into(),
        direction: dir,
        size,
        sha256: None,
        sender: "alice@example.com".into(),
        max_downloads: None,
        expires: SystemClock.now() + 3600,
    })
}

impl Relay {
    /// Starts the binary on an ephemeral port; the address is read from its log.
    async fn start(dir: &Path) -> Relay {
        Relay::start_with(dir, &[]).await
    }

    /// [`Relay::start`] with more command-line options.
    async fn start_with(dir: &Path, options: &[&str]) -> Relay {
        let secret: String = SECRET.iter().map(|b| format!("{b:02x}")).collect();
        let mut command = Command::new(env!("CARGO_BIN_EXE_msim-relay"));
        command
            .args(["--listen", "127.0.0.1:0", "--min-free", "0"])
            .args(options)
            .arg("--data-dir")
            .arg(dir)
            .env("MSIM_RELAY_SECRET", format!("k1:{secret}"));
        let mut server = ServerProcess::spawn(command).unwrap();
        let addr = server.listening("addr=127.0.0.1:").await.unwrap();
        let log = server.keep_reading_log();
        Relay { server, addr, log }
    }

    async fn kill(mut self) {
        self.server.child.start_kill().unwrap();
        timeout(WAIT, self.server.child.wait())
            .await
            .unwrap()
            .unwrap();
    }

    fn sigterm(&self) {
        let pid = self.server.child.id().unwrap() as libc::pid_t;
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    }

    async fn wait_log(&mut self, needle: &str) {
        timeout(WAIT, async {
            loop {
                let l = self.log.recv().await.expect("log ended");
                if l.contains(needle) {
                    return;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no log line {needle:?}"));
    }

    async fn connect(&self) -> TcpStream {
        timeout(WAIT, TcpStream::connect(self.addr))
            .await
            .unwrap()
            .unwrap()
    }

    /// One request with `body`; returns the response head and body.
    async fn exchange(&self, head: &str, body: &[u8]) -> (String, Vec<u8>) {
        let mut s = self.connect().await;
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(body).await.unwrap();
        let head = read_head(&mut s).await;
        let len = header(&head, "content-length").map_or(0, |v| v.parse().unwrap());
        let mut body = vec![0; len];
        timeout(WAIT, s.read_exact(&mut body))
            .await
            .unwrap()
            .unwrap();
        (head, body)
    }

    async fn put(&self, id: &str, payload: &[u8]) -> String {
        let up = token(id, Direction::Upload, payload.len() as u64);
        let head = format!(
            "PUT /v1/transfers/{id} HTTP/1.1\r\nHost: r\r\nAuthorization: Bearer {up}\r\n\
             Content-Length: {}\r\n\r\n",
            payload.len()
        );
        self.exchange(&head, payload).await.0
    }

    async fn patch(&self, id: &str, size: u64, offset: u64, piece: &[u8]) -> String {
        let up = token(id, Direction::Upload, size);
        let head = format!(
            "PATCH /v1/transfers/{id} HTTP/1.1\r\nHost: r\r\nAuthorization: Bearer {up}\r\n\
             Upload-Offset: {offset}\r\nContent-Length: {}\r\n\r\n",
            piece.len()
        );
        self.exchange(&head, piece).await.0
    }

    async fn head(&self, id: &str, size: u64) -> String {
        let up = token(id, Direction::Upload, size);
        let mut s = self.connect().await;
        s.write_all(
            format!(
                "HEAD /v1/transfers/{id} HTTP/1.1\r\nHost: r\r\nAuthorization: Bearer {up}\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        read_head(&mut s).await
    }

    async fn get(&self, id: &str, size: u64) -> (String, Vec<u8>) {
        let down = token(id, Direction::Download, size);
        let head = format!(
            "GET /v1/transfers/{id} HTTP/1.1\r\nHost: r\r\nAuthorization: Bearer {down}\r\n\r\n"
        );
        self.exchange(&head, &[]).await
    }

    /// Starts a download and returns the stream positioned at the start of the body.
    async fn start_get(&self, id: &str, size: u64) -> TcpStream {
        let down = token(id, Direction::Download, size);
        let mut s = self.connect().await;
        s.write_all(
            format!(
                "GET /v1/transfers/{id} HTTP/1.1\r\nHost: r\r\nAuthorization: Bearer {down}\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        let head = read_head(&mut s).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        s
    }

    /// Starts a `PUT` of `size` bytes and sends the first `sent` of `payload`, leaving the
    /// request open.
    async fn start_put(&self, id: &str, payload: &[u8], sent: usize) -> TcpStream {
        let up = token(id, Direction::Upload, payload.len() as u64);
        let mut s = self.connect().await;
        s.write_all(
            format!(
                "PUT /v1/transfers/{id} HTTP/1.1\r\nHost: r\r\nAuthorization: Bearer {up}\r\n\
                 Content-Length: {}\r\n\r\n",
                payload.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        timeout(WAIT, s.write_all(&payload[..sent]))
            .await
            .unwrap()
            .unwrap();
        s
    }
}

async fn read_head(s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    timeout(WAIT, async {
        while !head.ends_with(b"\r\n\r\n") {
            let n = s.read(&mut byte).await.unwrap();
            assert!(n > 0, "connection closed mid-head: {head:?}");
            head.push(byte[0]);
        }
    })
    .await
    .expect("no response head before the deadline");
    String::from_utf8(head).unwrap()
}

fn header(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
    })
}

/// Reads `n` body bytes (or until the stream ends) within the deadline.
async fn read_body(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut got = vec![0; n];
    let mut at = 0;
    timeout(WAIT, async {
        while at < n {
            match s.read(&mut got[at..]).await {
                Ok(0) | Err(_) => break,
                Ok(k) => at += k,
            }
        }
    })
    .await
    .expect("download stalled");
    got.truncate(at);
    got
}

/// Sets a transfer's index row as a crash could leave it (the relay is not running).
async fn edit_index(dir: &Path, sql: &str) {
    use sqlx::ConnectOptions;
    let mut db = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(dir.join("index.sqlite"))
        .connect()
        .await
        .unwrap();
    let done = sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(&mut db)
        .await
        .unwrap();
    assert_eq!(done.rows_affected(), 1, "{sql}");
    sqlx::Connection::close(db).await.unwrap();
}

#[tokio::test]
async fn sigkill_during_uploads_and_after_201_then_recovery() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path()).await;
    let done = pseudo_random_bytes(3 << 20, 1);
    let flipped = pseudo_random_bytes(100_000, 2);
    let lost = pseudo_random_bytes(1000, 3);
    let partial = pseudo_random_bytes(6 << 20, 4);
    for (id, p) in [("flipped", &flipped), ("lost", &lost)] {
        assert!(relay.put(id, p).await.starts_with("HTTP/1.1 201"));
    }
    // A partial upload: 2 MiB sent and seen by a download following it (so the relay stored
    // it), the request still open.
    let _upload = relay.start_put("partial", &partial, 2 << 20).await;
    let mut follow = relay.start_get("partial", partial.len() as u64).await;
    let seen = read_body(&mut follow, 1 << 20).await;
    assert_eq!(seen[..], partial[..1 << 20]);
    // A complete upload, killed right after its 201.
    assert!(relay.put("done", &done).await.starts_with("HTTP/1.1 201"));
    relay.kill().await;

    // What a crash at other moments leaves behind, for recovery's other branches:
    // - a `.blob` renamed but not yet marked complete in the index (crash before the update);
    edit_index(
        dir.path(),
        "UPDATE blobs SET state = 0 WHERE id = 'flipped'",
    )
    .await;
    // - an index row whose data is gone (not servable, not resumable);
    std::fs::remove_file(dir.path().join(blob_file("lost", true))).unwrap();
    // - orphan files with no index row.
    std::fs::write(dir.path().join(blob_file("ghost", true)), b"orphan").unwrap();
    std::fs::write(dir.path().join(blob_file("ghost2", false)), b"orphan").unwrap();

    let relay = Relay::start(dir.path()).await;
    // Completed uploads are served intact.
    for (id, p) in [("done", &done), ("flipped", &flipped)] {
        let (head, body) = relay.get(id, p.len() as u64).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{id}: {head}");
        assert_eq!(
            header(&head, "msim-upload-complete").as_deref(),
            Some("true")
        );
        assert_eq!(sha256_hex(&body), sha256_hex(p), "{id}");
        assert_eq!(header(&head, "msim-sha256"), Some(sha256_hex(p)), "{id}");
    }
    // The partial upload resumes from what was stored.
    let size = partial.len() as u64;
    let h = relay.head("partial", size).await;
    assert!(h.starts_with("HTTP/1.1 200"), "{h}");
    assert_eq!(header(&h, "msim-upload-complete").as_deref(), Some("false"));
    let offset: usize = header(&h, "upload-offset").unwrap().parse().unwrap();
    assert!(
        (1 << 20..=2 << 20).contains(&offset),
        "offset {offset}: the relay kept what it received"
    );
    let r = relay
        .patch("partial", size, offset as u64, &partial[offset..])
        .await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert_eq!(header(&r, "msim-sha256"), Some(sha256_hex(&partial)));
    let (_, body) = relay.get("partial", size).await;
    assert_eq!(sha256_hex(&body), sha256_hex(&partial));
    // The row without data was dropped, the orphans deleted.
    let h = relay.head("lost", lost.len() as u64).await;
    assert!(h.starts_with("HTTP/1.1 404"), "{h}");
    assert!(relay.put("lost", &lost).await.starts_with("HTTP/1.1 201"));
    assert!(!dir.path().join(blob_file("ghost", true)).exists());
    assert!(!dir.path().join(blob_file("ghost2", false)).exists());
    assert!(relay.head("ghost", 6).await.starts_with("HTTP/1.1 404"));
    relay.kill().await;
}

/// Uploads written with `O_DIRECT` (every size, `--direct-write-min 1`), sizes and offsets
/// off the block size: a complete one killed right after its `201` is served intact, a partial
/// one resumes from what was stored, also at an odd offset, and a download following it sees
/// what was acknowledged.
#[tokio::test]
async fn sigkill_during_direct_uploads_then_recovery_and_odd_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let direct = ["--direct-write-min", "1"];
    let relay = Relay::start_with(dir.path(), &direct).await;
    let done = pseudo_random_bytes((3 << 20) + 5, 11);
    let partial = pseudo_random_bytes((5 << 20) + 333, 12);
    let sent = (2 << 20) + 777;
    let _upload = relay.start_put("partial", &partial, sent).await;
    let mut follow = relay.start_get("partial", partial.len() as u64).await;
    let seen = read_body(&mut follow, (1 << 20) + 1).await;
    assert_eq!(seen[..], partial[..(1 << 20) + 1]);
    assert!(relay.put("done", &done).await.starts_with("HTTP/1.1 201"));
    relay.kill().await;

    let relay = Relay::start_with(dir.path(), &direct).await;
    let (head, body) = relay.get("done", done.len() as u64).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(sha256_hex(&body), sha256_hex(&done));
    let size = partial.len() as u64;
    let h = relay.head("partial", size).await;
    let offset: usize = header(&h, "upload-offset").unwrap().parse().unwrap();
    assert!(
        ((1 << 20) + 1..=sent).contains(&offset),
        "offset {offset}: the relay kept what it acknowledged"
    );
    // Resumed in two pieces, the second at an odd offset.
    let odd = offset + 1_000_001;
    let r = relay
        .patch("partial", size, offset as u64, &partial[offset..odd])
        .await;
    assert!(r.starts_with("HTTP/1.1 20"), "{r}");
    let h = relay.head("partial", size).await;
    assert_eq!(header(&h, "upload-offset"), Some(odd.to_string()));
    let r = relay
        .patch("partial", size, odd as u64, &partial[odd..])
        .await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert_eq!(header(&r, "msim-sha256"), Some(sha256_hex(&partial)));
    let (_, body) = relay.get("partial", size).await;
    assert_eq!(sha256_hex(&body), sha256_hex(&partial));
    relay.kill().await;
}

#[tokio::test]
async fn sigterm_finishes_downloads_keeps_uploads_resumable_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let mut relay = Relay::start(dir.path()).await;
    // Large enough that the response is far from sent when SIGTERM arrives.
    let big = pseudo_random_bytes(24 << 20, 5);
    let partial = pseudo_random_bytes(4 << 20, 6);
    assert!(relay.put("big", &big).await.starts_with("HTTP/1.1 201"));
    let mut download = relay.start_get("big", big.len() as u64).await;
    let first = read_body(&mut download, 1 << 20).await;
    let mut upload = relay.start_put("partial", &partial, 1 << 20).await;
    let mut follow = relay.start_get("partial", partial.len() as u64).await;
    assert_eq!(read_body(&mut follow, 1 << 20).await, partial[..1 << 20]);
    drop(follow);

    relay.sigterm();
    relay.wait_log("no longer accepting connections").await;
    // New connections are refused.
    assert!(TcpStream::connect(relay.addr).await.is_err());
    // The download in flight completes, byte for byte.
    let rest = read_body(&mut download, big.len() - first.len()).await;
    assert_eq!(rest.len(), big.len() - first.len(), "download cut short");
    assert_eq!(sha256_hex(&[first, rest].concat()), sha256_hex(&big));
    drop(download);
    // The upload's client goes away mid-body: the relay keeps what arrived.
    upload.shutdown().await.unwrap();
    drop(upload);
    let status = timeout(WAIT, relay.server.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "exit status {status:?}");

    let relay = Relay::start(dir.path()).await;
    let size = partial.len() as u64;
    let h = relay.head("partial", size).await;
    assert!(h.starts_with("HTTP/1.1 200"), "{h}");
    let offset: usize = header(&h, "upload-offset").unwrap().parse().unwrap();
    assert_eq!(offset, 1 << 20);
    let r = relay
        .patch("partial", size, offset as u64, &partial[offset..])
        .await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let (_, body) = relay.get("partial", size).await;
    assert_eq!(sha256_hex(&body), sha256_hex(&partial));
    let (_, body) = relay.get("big", big.len() as u64).await;
    assert_eq!(sha256_hex(&body), sha256_hex(&big));
    relay.kill().await;
}
