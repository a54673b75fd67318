//! `msim listen` across a restart of the chat server (same port, same data directory).

use crate::common;

use std::time::Duration;

use common::{run_expect, stdout_json, Running, TestServer};

/// How long a test waits for something observable before failing.
const WAIT: Duration = Duration::from_secs(30);

fn register(srv: &TestServer, login: &str) {
    run_expect(srv.as_user(login).args(["register", "--json"]), 0);
}

fn send(srv: &TestServer, text: &str) -> String {
    let out = run_expect(
        srv.as_user("alice").args(["send", "bob", text, "--json"]),
        0,
    );
    stdout_json(&out)[0]["id"].as_str().unwrap().to_owned()
}

fn message_with(text: &'static str) -> impl Fn(&serde_json::Value) -> bool {
    move |v| v["type"] == "message" && v["text"] == text
}

#[test]
fn listen_keeps_going_across_a_server_restart() {
    let mut srv = TestServer::start();
    register(&srv, "alice");
    register(&srv, "bob");
    // --no-ack: the server redelivers "one" at the reconnection; it must not be printed twice.
    let mut bob = Running::spawn(
        srv.as_user("bob")
            .args(["listen", "--json", "--no-ack", "--count", "3"]),
    );
    let one = send(&srv, "one");
    let v = bob.stdout.wait_for_json("one", WAIT, message_with("one"));
    assert_eq!(v["id"], one.as_str());

    srv.stop().unwrap();
    let notice = bob
        .stderr
        .wait_for("the disconnect notice", WAIT, |l| l.contains("lost"));
    assert!(notice.contains("reconnecting in"), "{notice}");
    bob.assert_running();

    srv.restart().unwrap();
    bob.stderr
        .wait_for("the reconnect notice", WAIT, |l| l.contains("reconnected"));
    bob.assert_running();
    let two = send(&srv, "two");
    let v = bob.stdout.wait_for_json("two", WAIT, message_with("two"));
    assert_eq!(v["id"], two.as_str());
    bob.assert_running();

    // --count counts across the reconnection: the third message ends it.
    let three = send(&srv, "three");
    let status = bob.wait_exit(WAIT);
    assert!(
        status.success(),
        "{status}; stderr: {:?}",
        bob.stderr.seen()
    );
    let texts: Vec<_> = bob
        .stdout
        .seen_json()
        .into_iter()
        .filter(|v| v["type"] == "message")
        .map(|v| {
            (
                v["id"].as_str().unwrap().to_owned(),
                v["text"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        texts,
        [
            (one, "one".to_owned()),
            (two, "two".to_owned()),
            (three, "three".to_owned())
        ],
        "stdout: {:?}",
        bob.stdout.seen()
    );
    // stdout carried JSON only: the notices went to stderr.
    assert!(bob
        .stdout
        .seen()
        .iter()
        .all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()));
}

#[test]
fn default_ack_mode_prints_each_message_once_across_a_restart() {
    let mut srv = TestServer::start();
    register(&srv, "alice");
    register(&srv, "bob");
    let mut bob = Running::spawn(srv.as_user("bob").args(["listen", "--json"]));
    send(&srv, "before");
    bob.stdout
        .wait_for_json("before", WAIT, message_with("before"));
    // Whether or not the server handled bob's ACK before it stopped, "before" is printed once.
    srv.stop().unwrap();
    bob.stderr
        .wait_for("the disconnect notice", WAIT, |l| l.contains("lost"));
    srv.restart().unwrap();
    bob.stderr
        .wait_for("the reconnect notice", WAIT, |l| l.contains("reconnected"));
    send(&srv, "after");
    bob.stdout
        .wait_for_json("after", WAIT, message_with("after"));
    bob.assert_running();
    let texts: Vec<_> = bob
        .stdout
        .seen_json()
        .into_iter()
        .filter(|v| v["type"] == "message")
        .map(|v| v["text"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(texts, ["before", "after"]);
}

#[test]
fn listen_with_no_reconnect_exits_when_the_connection_drops() {
    let mut srv = TestServer::start();
    register(&srv, "bob");
    let mut bob = Running::spawn(srv.as_user("bob").args(["listen", "--no-reconnect"]));
    bob.stderr
        .wait_for("the listening notice", WAIT, |l| l.contains("Listening as"));
    srv.stop().unwrap();
    let status = bob.wait_exit(WAIT);
    assert_eq!(status.code(), Some(1), "stderr: {:?}", bob.stderr.seen());
    assert!(
        bob.stderr.seen().iter().any(|l| l.contains("closed")),
        "{:?}",
        bob.stderr.seen()
    );
    assert!(!bob.stderr.seen().iter().any(|l| l.contains("reconnect")));
}
