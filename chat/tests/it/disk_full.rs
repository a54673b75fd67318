//! A full disk: the data directory lives on a small tmpfs that the test mounts (CI runs as
//! root; without the mount the test fails, it does not skip). No message answered
//! `MESSAGE-SENT` may be lost, the writer must resume once space is freed, and the free-space
//! watermark refuses writes with `reason=storage-full` before SQLite hits the wall.

use crate::common;
use common::{field, Client, TestServer, PASSWORD};
use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A tmpfs mounted on a fresh temporary directory, unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(bytes: u64) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={bytes},mode=0700"))
            .arg("tmpfs")
            .arg(dir.path())
            .status()
            .expect("running mount");
        assert!(
            status.success(),
            "mounting a tmpfs failed ({status}): this test needs root (CI runs as root)"
        );
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Bytes available to unprivileged writers.
    fn free(&self) -> u64 {
        let out = Command::new("df")
            .args(["--output=avail", "-B1"])
            .arg(self.path())
            .output()
            .unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        text.lines().nth(1).unwrap().trim().parse().unwrap()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(self.dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            // Still busy (a file held open): detach it so the directory can go.
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .status();
        }
    }
}

/// Writes `filler` until the file system is full (or `limit` bytes written).
fn fill(filler: &Path, limit: u64) {
    let mut f = std::fs::File::create(filler).unwrap();
    let chunk = vec![0x55u8; 16 * 1024];
    let mut written = 0;
    while written < limit {
        let n = (limit - written).min(chunk.len() as u64) as usize;
        match f.write(&chunk[..n]) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(_) => break,
        }
    }
    let _ = f.sync_all();
}

async fn register(s: &TestServer, logins: &[&str]) {
    let mut c = s.client().await;
    for u in logins {
        c.send(&format!("REGISTER login={u} password={PASSWORD}"))
            .await;
        c.expect("REGISTER-OK").await;
    }
}

/// Sends `n` messages to bob pipelined and returns the answers: ids acknowledged with
/// `MESSAGE-SENT`, and failure reasons. Stops early if the server closes the connection.
async fn send_burst(c: &mut Client, n: usize, text: &str) -> (Vec<String>, Vec<String>, bool) {
    for k in 0..n {
        c.send(&format!("MESSAGE to=bob text={text} ref={k}")).await;
    }
    let (mut sent, mut failed) = (Vec::new(), Vec::new());
    while sent.len() + failed.len() < n {
        let Some(l) = c.try_line().await else {
            return (sent, failed, true);
        };
        if l.starts_with("MESSAGE-SENT ") {
            sent.push(field(&l, "id").unwrap());
        } else if l.starts_with("MESSAGE-SEND-FAILED ") {
            failed.push(field(&l, "reason").unwrap());
        }
    }
    (sent, failed, false)
}

/// Every message id bob receives at login (his backlog), read up to a PING round trip.
async fn delivered(s: &TestServer) -> HashSet<String> {
    let mut bob = s.session("bob").await;
    bob.send("PING ref=end").await;
    let mut ids = HashSet::new();
    loop {
        let l = bob.line().await;
        if l.starts_with("PONG") {
            return ids;
        }
        if l.starts_with("MESSAGE ") {
            ids.insert(field(&l, "id").unwrap());
        }
    }
}

fn data_dir_in(fs: &Tmpfs) -> tempfile::TempDir {
    tempfile::tempdir_in(fs.path()).unwrap()
}

fn filler_path(fs: &Tmpfs) -> PathBuf {
    fs.path().join("filler")
}

/// Fill the disk while alice sends: every `MESSAGE-SENT` message reaches bob after a restart,
/// and once space is freed, sending works again without a restart.
#[tokio::test]
async fn acknowledged_messages_survive_a_full_disk() {
    let fs = Tmpfs::mount(12 << 20);
    let s = TestServer::start_in(data_dir_in(&fs), |c| {
        // No watermark: this test drives SQLite itself into the wall.
        c.min_free_space = 0;
        c.database = None;
    })
    .await;
    register(&s, &["alice", "bob"]).await;
    let mut alice = s.session("alice").await;
    let text = "x".repeat(4000);
    // Leave ~1 MiB: the next bursts run into the wall part way.
    fill(&filler_path(&fs), fs.free().saturating_sub(1 << 20));

    let mut acked = Vec::new();
    let mut failures = 0;
    for _ in 0..40 {
        let (sent, failed, closed) = send_burst(&mut alice, 64, &text).await;
        acked.extend(sent);
        failures += failed.len();
        for reason in &failed {
            assert!(
                reason == "storage-error" || reason == "storage-full",
                "unexpected reason {reason}"
            );
        }
        if closed {
            alice = s.session("alice").await;
        }
        if failures >= 128 {
            break;
        }
    }
    assert!(failures >= 128, "the disk never filled up");
    assert!(
        !acked.is_empty(),
        "nothing was stored before the disk filled"
    );

    // Space comes back: the writer resumes without a restart.
    std::fs::remove_file(filler_path(&fs)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (sent, _, closed) = send_burst(&mut alice, 1, "after").await;
        if closed {
            alice = s.session("alice").await;
        }
        if let Some(id) = sent.into_iter().next() {
            acked.push(id);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "writes still fail after space was freed"
        );
        tokio::task::yield_now().await;
    }
    drop(alice);

    let dir = s.stop().await;
    let s = TestServer::start_in(dir, |c| {
        c.min_free_space = 0;
        c.database = None;
    })
    .await;
    let got = delivered(&s).await;
    let lost: Vec<_> = acked.iter().filter(|id| !got.contains(*id)).collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged messages lost",
        lost.len(),
        acked.len()
    );
    s.stop().await;
}

/// Below the free-space watermark new messages are refused with `reason=storage-full`
/// before SQLite runs out of room; the session stays usable, reading still works, and
/// sending resumes once space is back.
#[tokio::test]
async fn free_space_watermark_refuses_new_messages_cleanly() {
    let fs = Tmpfs::mount(16 << 20);
    let s = TestServer::start_in(data_dir_in(&fs), |c| {
        c.min_free_space = 6 << 20;
        c.free_space_check_interval = Duration::ZERO;
        c.database = None; // the watermark guards SQLite's file system
    })
    .await;
    register(&s, &["alice", "bob"]).await;
    let mut alice = s.session("alice").await;
    let (before, _, _) = send_burst(&mut alice, 1, "before").await;
    assert_eq!(before.len(), 1);

    // 4 MiB left: below the watermark, far from the wall.
    fill(&filler_path(&fs), fs.free().saturating_sub(4 << 20));
    let (sent, failed, closed) = send_burst(&mut alice, 3, "refused").await;
    assert!(sent.is_empty() && !closed, "{sent:?} closed={closed}");
    assert_eq!(failed, ["storage-full"; 3]);
    alice.sync().await;
    // Bob can still log in and fetch what was stored before.
    let got = delivered(&s).await;
    assert!(got.contains(&before[0]) && got.len() == 1, "{got:?}");

    std::fs::remove_file(filler_path(&fs)).unwrap();
    let (after, failed, _) = send_burst(&mut alice, 1, "after").await;
    assert_eq!((after.len(), failed.len()), (1, 0), "{failed:?}");
    let dir = s.stop().await;
    let s = TestServer::start_in(dir, |c| {
        c.min_free_space = 6 << 20;
        c.database = None;
    })
    .await;
    let got = delivered(&s).await;
    assert!(got.contains(&before[0]) && got.contains(&after[0]) && got.len() == 2);
    s.stop().await;
}
