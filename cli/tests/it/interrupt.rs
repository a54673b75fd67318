//! Ctrl-C (SIGINT) through the one cancellation path: commands that can stop cleanly do (exit
//! 0), `send-file` gives up waiting (exit 1), and the others end at once with 130.

use crate::common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{run_expect, Lines, Running, TestServer};

/// How long a test waits for something observable before failing.
const WAIT: Duration = Duration::from_secs(30);

fn register(srv: &TestServer, login: &str) {
    run_expect(srv.as_user(login).args(["register", "--json"]), 0);
}

/// Waits until the process catches SIGINT (bit 2 of `SigCgt` in /proc/PID/status), so that
/// the signal sent next reaches msim's handler rather than the default action.
fn wait_catching_sigint(pid: u32) {
    let deadline = Instant::now() + WAIT;
    loop {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let caught = status
            .lines()
            .find_map(|l| l.strip_prefix("SigCgt:"))
            .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
            .unwrap();
        if caught & (1 << (2 - 1)) != 0 {
            return;
        }
        assert!(Instant::now() < deadline, "msim never caught SIGINT");
        std::thread::yield_now();
    }
}

fn ctrl_c(running: &mut Running) {
    wait_catching_sigint(running.child.id());
    let status = Command::new("kill")
        .args(["-INT", &running.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn ctrl_c_stops_listen_and_receive_cleanly() {
    let srv = TestServer::start();
    register(&srv, "bob");

    let mut listen = Running::spawn(srv.as_user("bob").arg("listen"));
    listen.stderr.wait_for("the listening notice", WAIT, |l| {
        l.starts_with("Listening as")
    });
    ctrl_c(&mut listen);
    assert_eq!(listen.wait_exit(WAIT).code(), Some(0));

    let out = srv.subdir("in").unwrap();
    let mut receive = Running::spawn(
        srv.as_user("bob")
            .args(["receive", "--accept-all", "--out"])
            .arg(&out),
    );
    receive.stderr.wait_for("the waiting notice", WAIT, |l| {
        l.starts_with("Waiting for files")
    });
    ctrl_c(&mut receive);
    assert_eq!(receive.wait_exit(WAIT).code(), Some(0));
}

#[test]
fn ctrl_c_gives_up_a_pending_file_offer() {
    let srv = TestServer::start();
    register(&srv, "alice");
    register(&srv, "bob");
    let file = srv.subdir("out").unwrap().join("note.txt");
    std::fs::write(&file, b"hello").unwrap();

    let mut send = Running::spawn(srv.as_user("alice").arg("send-file").arg("bob").arg(&file));
    send.stderr
        .wait_for("the offer", WAIT, |l| l.starts_with("Offered note.txt"));
    ctrl_c(&mut send);
    assert_eq!(send.wait_exit(WAIT).code(), Some(1));
    assert!(
        send.stderr
            .seen()
            .iter()
            .any(|l| l.contains("interrupted while waiting for bob")),
        "{:?}",
        send.stderr.seen()
    );
}

#[test]
fn ctrl_c_ends_other_commands_with_130() {
    let srv = TestServer::start();
    register(&srv, "alice");
    // `send bob -` waits for standard input, which stays open.
    let mut child = srv
        .as_user("alice")
        .args(["send", "bob", "-", "--json"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdin = child.stdin.take();
    let stdout = Lines::new(child.stdout.take().unwrap());
    let stderr = Lines::new(child.stderr.take().unwrap());
    let mut send = Running {
        child,
        stdout,
        stderr,
    };
    ctrl_c(&mut send);
    assert_eq!(send.wait_exit(WAIT).code(), Some(130));
    let failure: serde_json::Value = serde_json::from_str(&send.stdout.seen()[0]).unwrap();
    assert_eq!(failure["kind"], "interrupted");
    assert_eq!(failure["exit"], 130);
    assert!(send.stderr.seen().iter().any(|l| l == "msim: interrupted"));
    drop(stdin);
}
