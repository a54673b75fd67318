//! The `msim` program against a real msim-chat server and relay (in-process, see `common`).

use crate::common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;

use common::{run_expect, run_with_stdin, stdout_json, Running, TestServer};
use msim_testkit::{pseudo_random_bytes, sha256_file_hex};

/// How long a test waits for something observable before failing.
const WAIT: std::time::Duration = std::time::Duration::from_secs(30);

fn register(srv: &TestServer, login: &str) {
    let out = run_expect(srv.as_user(login).args(["register", "--json"]), 0);
    let v = stdout_json(&out);
    assert_eq!(v[0]["login"], format!("{login}@localhost"));
}

#[test]
fn help_documents_commands_and_exit_codes() {
    let srv = TestServer::start();
    let out = run_expect(srv.msim().arg("--help"), 0);
    let text = String::from_utf8_lossy(&out.stdout);
    for word in [
        "register",
        "login",
        "send-file",
        "receive",
        "listen",
        "contacts",
        "Exit codes",
    ] {
        assert!(text.contains(word), "--help lacks {word}:\n{text}");
    }
    for word in ["--password-stdin", "typing"] {
        assert!(text.contains(word), "--help lacks {word}:\n{text}");
    }
    for sub in [
        "register",
        "login",
        "send",
        "listen",
        "typing",
        "send-file",
        "receive",
        "read",
    ] {
        let out = run_expect(srv.msim().args([sub, "--help"]), 0);
        assert!(String::from_utf8_lossy(&out.stdout).contains("Example"));
    }
    // Usage errors exit with 2.
    run_expect(srv.msim().arg("no-such-command"), 2);
    run_expect(srv.msim().arg("send"), 2);
    // Missing credentials are a usage error too.
    run_expect(srv.msim().args(["send", "bob", "hi"]), 2);
    // `receive` cannot ask y/n without a terminal.
    run_expect(
        srv.as_user("bob")
            .arg("receive")
            .stdin(std::process::Stdio::null()),
        2,
    );
}

#[test]
fn register_send_listen_read() {
    let srv = TestServer::start();
    register(&srv, "alice");
    register(&srv, "bob");
    // Registering again is refused.
    run_expect(srv.as_user("alice").arg("register"), 4);

    let out = run_expect(srv.as_user("alice").args(["login", "--json"]), 0);
    assert_eq!(stdout_json(&out)[0]["login"], "alice@localhost");

    let out = run_expect(
        srv.as_user("alice")
            .args(["send", "bob", "hello bob, über 100% unicode ✓", "--json"]),
        0,
    );
    let sent = &stdout_json(&out)[0];
    let id = sent["id"].as_str().unwrap().to_owned();

    // Credentials from the environment; text from stdin.
    let mut child = srv
        .msim()
        .env("MSIM_LOGIN", "alice")
        .env("MSIM_PASSWORD", common::password("alice"))
        .args(["send", "bob", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"second line\n").unwrap();
    }
    assert!(child.wait_with_output().unwrap().status.success());

    // Offline delivery at login, in order; --count bounds the run.
    let out = run_expect(
        srv.as_user("bob")
            .args(["listen", "--json", "--count", "2", "--no-ack"]),
        0,
    );
    let msgs: Vec<_> = stdout_json(&out)
        .into_iter()
        .filter(|v| v["type"] == "message")
        .collect();
    assert_eq!(msgs.len(), 2, "{msgs:?}");
    assert_eq!(msgs[0]["id"], id.as_str());
    assert_eq!(msgs[0]["from"], "alice@localhost");
    assert_eq!(msgs[0]["text"], "hello bob, über 100% unicode ✓");
    assert_eq!(msgs[1]["text"], "second line");

    // Not acknowledged: delivered again; this time acknowledged (the default).
    let out = run_expect(srv.as_user("bob").args(["listen", "--json", "-n", "2"]), 0);
    assert_eq!(
        stdout_json(&out)
            .iter()
            .filter(|v| v["type"] == "message")
            .count(),
        2
    );

    // Human output.
    let out = run_expect(srv.as_user("bob").args(["read", &id]), 0);
    assert!(String::from_utf8_lossy(&out.stdout).contains("read"));
    // The read receipt reaches alice (stored while she is offline).
    let mut listen = srv
        .as_user("alice")
        .args(["listen", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(listen.stdout.take().unwrap()).lines();
    let receipt = loop {
        let line = lines.next().expect("listen ended").unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        if v["type"] == "read" {
            break v;
        }
    };
    assert_eq!(receipt["id"], id.as_str());
    assert_eq!(receipt["by"], "bob@localhost");
    listen.kill().unwrap();
    let _ = listen.wait();
}

#[test]
fn error_exit_codes() {
    let srv = TestServer::start();
    register(&srv, "alice");
    // Unknown recipient → 4.
    let out = run_expect(srv.as_user("alice").args(["send", "nobody", "hi"]), 4);
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown-recipient"));
    run_expect(
        srv.as_user("alice")
            .args(["send-file", "nobody", "Cargo.toml"]),
        4,
    );
    run_expect(
        srv.as_user("alice").args(["contacts", "delete", "nobody"]),
        4,
    );
    // Connection refused → 1.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap().to_string();
    drop(closed);
    run_expect(
        srv.as_user("alice")
            .args(["--server", &addr, "send", "bob", "hi"]),
        1,
    );
    // Wrong password → 3, with a JSON error object under --json.
    let out = run_expect(
        srv.msim().args([
            "--login",
            "alice",
            "--password",
            "wrong-password",
            "login",
            "--json",
        ]),
        3,
    );
    assert_eq!(stdout_json(&out)[0]["kind"], "auth");
    run_expect(
        srv.msim()
            .args(["-l", "nobody", "-p", "whatever-password", "send", "x", "y"]),
        3,
    );
}

#[test]
fn contacts_and_profile() {
    let srv = TestServer::start();
    register(&srv, "alice");
    register(&srv, "bob");
    run_expect(
        srv.as_user("bob")
            .args(["profile", "set", "--name", "Bob B.", "--note", "hi there"]),
        0,
    );
    let out = run_expect(srv.as_user("bob").args(["profile", "show", "--json"]), 0);
    let p = &stdout_json(&out)[0];
    assert_eq!(
        (p["name"].as_str(), p["note"].as_str()),
        (Some("Bob B."), Some("hi there"))
    );

    run_expect(
        srv.as_user("alice")
            .args(["contacts", "add", "bob", "--group", "Work/Mobile"]),
        0,
    );
    run_expect(srv.as_user("alice").args(["contacts", "add", "bob"]), 4);
    let out = run_expect(srv.as_user("alice").args(["contacts", "list", "--json"]), 0);
    let list = stdout_json(&out);
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["id"], "bob@localhost");
    assert_eq!(list[0]["name"], "Bob B.");
    assert_eq!(list[0]["group"], "Work/Mobile");
    assert_eq!(list[0]["note"], "hi there");

    run_expect(
        srv.as_user("alice").args([
            "contacts", "change", "bob", "--name", "Bobby", "--group", "",
        ]),
        0,
    );
    let out = run_expect(srv.as_user("alice").args(["contacts", "list"]), 0);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Bobby") && !text.contains("Work"), "{text}");
    run_expect(srv.as_user("alice").args(["contacts", "change", "bob"]), 2);
    run_expect(srv.as_user("alice").args(["contacts", "delete", "bob"]), 0);
    let out = run_expect(srv.as_user("alice").args(["contacts", "list", "--json"]), 0);
    assert!(stdout_json(&out).is_empty());
}

#[test]
fn privacy_commands() {
    let srv = TestServer::start();
    register(&srv, "alice");
    register(&srv, "bob");
    run_expect(srv.as_user("alice").args(["contacts", "add", "bob"]), 0);
    run_expect(srv.as_user("bob").args(["privacy", "approve", "alice"]), 0);
    run_expect(srv.as_user("bob").args(["privacy", "deny", "alice"]), 0);
    // Nobody asked: refused (exit 4).
    run_expect(srv.as_user("bob").args(["privacy", "approve", "carol"]), 4);
    run_expect(
        srv.as_user("bob").args(["privacy", "last-seen", "nobody"]),
        0,
    );
    run_expect(
        srv.as_user("bob")
            .args(["privacy", "last-seen", "sometimes"]),
        2,
    );
    run_expect(srv.as_user("bob").args(["privacy", "block", "alice"]), 0);
    let out = run_expect(srv.as_user("bob").args(["privacy", "show", "--json"]), 0);
    let v = &stdout_json(&out)[0];
    assert_eq!(v["last-seen"], "nobody");
    assert_eq!(v["blocked"][0], "alice@localhost");
    run_expect(srv.as_user("bob").args(["privacy", "unblock", "alice"]), 0);
    run_expect(srv.as_user("bob").args(["privacy", "unblock", "alice"]), 4);
    run_expect(srv.as_user("bob").args(["privacy", "block", "bob"]), 4);
}

#[test]
fn config_file_and_save() {
    let srv = TestServer::start();
    let dir = srv.subdir("cfg").unwrap();
    let config = dir.join("alice.toml");
    run_expect(
        srv.as_user("alice")
            .args(["register", "--save", "--config"])
            .arg(&config),
        0,
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&config).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // Everything from the file: no --server, --login or --password.
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_msim"));
    cmd.env_remove("MSIM_LOGIN")
        .env_remove("MSIM_PASSWORD")
        .env_remove("MSIM_SERVER")
        .env("HOME", srv.dir.path())
        .arg("--config")
        .arg(&config)
        .args(["login", "--json"]);
    let out = run_expect(&mut cmd, 0);
    assert_eq!(stdout_json(&out)[0]["login"], "alice@localhost");
    // The device cookie of that login is kept next to the file, owner-only, and presented
    // (and renewed) by the next login.
    let devices = dir.join("devices.toml");
    let first = std::fs::read_to_string(&devices).unwrap();
    assert!(
        first.contains("login = \"alice\"") && first.contains("cookie = "),
        "{first}"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&devices).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    run_expect(&mut cmd, 0);
    let second = std::fs::read_to_string(&devices).unwrap();
    assert_ne!(first, second);
    assert_eq!(second.matches("[[device]]").count(), 1);
    // A broken file is a usage error.
    std::fs::write(dir.join("bad.toml"), "pasword = 1").unwrap();
    run_expect(
        srv.msim()
            .arg("--config")
            .arg(dir.join("bad.toml"))
            .arg("login"),
        2,
    );
}

#[test]
fn send_file_and_receive_are_byte_identical() {
    let srv = TestServer::start();
    register(&srv, "alice");
    register(&srv, "bob");
    let files = srv.subdir("send").unwrap();
    let out_dir = srv.subdir("inbox").unwrap();
    let src = files.join("cat picture.jpg");
    std::fs::write(&src, pseudo_random_bytes(2_345_678, 7)).unwrap();
    // A file with the same name already exists: it must not be overwritten.
    std::fs::write(out_dir.join("cat picture.jpg"), b"old").unwrap();

    let receiver = srv
        .as_user("bob")
        .args(["receive", "--accept-all", "--count", "1", "--json", "--out"])
        .arg(&out_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Whether bob's receive is logged in yet or not, the offer reaches him (offers are
    // delivered at login too).
    let out = run_expect(
        srv.as_user("alice")
            .args(["send-file", "bob", "--json"])
            .arg(&src),
        0,
    );
    let events = stdout_json(&out);
    assert_eq!(events[0]["event"], "pending");
    let sent = events.last().unwrap();
    assert_eq!(sent["event"], "sent");
    assert_eq!(sent["filename"], "cat picture.jpg");

    let received = receiver.wait_with_output().unwrap();
    assert!(
        received.status.success(),
        "{}",
        String::from_utf8_lossy(&received.stderr)
    );
    let got = stdout_json(&received);
    let r = got.last().unwrap();
    assert_eq!(r["event"], "received");
    assert_eq!(r["verified"], true);
    let path = std::path::PathBuf::from(r["path"].as_str().unwrap());
    assert_eq!(path, out_dir.join("cat picture (1).jpg"));
    assert_eq!(
        sha256_file_hex(&path).unwrap(),
        sha256_file_hex(&src).unwrap()
    );
    assert_eq!(r["sha256"], sha256_file_hex(&src).unwrap().as_str());
    assert_eq!(
        std::fs::read(out_dir.join("cat picture.jpg")).unwrap(),
        b"old"
    );
    // Both sides said SEND-FILE-PROXY-DONE: neither gets the transfer's result again at its
    // next login (PROTOCOL §10.6).
    let tid = sent["transfer_id"].as_str().unwrap();
    assert_eq!(
        common::stored_results_at_login(&srv, "alice"),
        Vec::<String>::new(),
        "{tid}"
    );
    assert_eq!(
        common::stored_results_at_login(&srv, "bob"),
        Vec::<String>::new(),
        "{tid}"
    );
}

#[test]
fn rejected_file_exits_with_4() {
    let srv = TestServer::start();
    register(&srv, "alice");
    register(&srv, "bob");
    let src = srv.subdir("send").unwrap().join("x.txt");
    std::fs::write(&src, b"no thanks").unwrap();
    let receiver = srv
        .as_user("bob")
        .args(["receive", "--reject-all", "--count", "1", "--json"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = run_expect(
        srv.as_user("alice")
            .args(["send-file", "bob", "--json"])
            .arg(&src),
        4,
    );
    assert_eq!(stdout_json(&out).last().unwrap()["kind"], "refused");
    let got = receiver.wait_with_output().unwrap();
    assert!(got.status.success());
    assert_eq!(stdout_json(&got)[0]["event"], "rejected");
}

#[test]
fn password_stdin_logs_in_and_a_wrong_one_exits_3() {
    let srv = TestServer::start();
    let pw = common::password("alice");
    // Register and log in with the password on standard input (CRLF accepted too).
    let out = run_with_stdin(
        srv.msim()
            .args(["-l", "alice", "--password-stdin", "register", "--json"]),
        format!("{pw}\n").as_bytes(),
        0,
    );
    assert_eq!(stdout_json(&out)[0]["login"], "alice@localhost");
    for input in [format!("{pw}\n"), format!("{pw}\r\n"), pw.clone()] {
        let out = run_with_stdin(
            srv.msim()
                .args(["-l", "alice", "login", "--password-stdin", "--json"]),
            input.as_bytes(),
            0,
        );
        assert_eq!(stdout_json(&out)[0]["login"], "alice@localhost");
    }
    // Only the first line is the password.
    run_with_stdin(
        srv.msim()
            .args(["-l", "alice", "--password-stdin", "login"]),
        format!("{pw}\nsomething else\n").as_bytes(),
        0,
    );
    // The flag beats the environment.
    run_with_stdin(
        srv.msim().env("MSIM_PASSWORD", "not-the-password").args([
            "-l",
            "alice",
            "--password-stdin",
            "login",
        ]),
        format!("{pw}\n").as_bytes(),
        0,
    );

    // A wrong password → 3.
    let out = run_with_stdin(
        srv.msim()
            .args(["-l", "alice", "--password-stdin", "login", "--json"]),
        b"wrong-password\n",
        3,
    );
    assert_eq!(stdout_json(&out)[0]["kind"], "auth");

    // Usage errors (2) with a clear message.
    let out = run_with_stdin(
        srv.msim()
            .args(["-l", "alice", "--password-stdin", "login"]),
        b"\n",
        2,
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("empty"));
    run_with_stdin(
        srv.msim()
            .args(["-l", "alice", "--password-stdin", "login"]),
        b"",
        2,
    );
    let out = run_with_stdin(
        srv.msim()
            .args(["-l", "alice", "-p", &pw, "--password-stdin", "login"]),
        format!("{pw}\n").as_bytes(),
        2,
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("together"));
    // `send … -` reads the message from stdin: it cannot carry the password too.
    let out = run_with_stdin(
        srv.msim()
            .args(["-l", "alice", "--password-stdin", "send", "alice", "-"]),
        format!("{pw}\nhello\n").as_bytes(),
        2,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("standard input"), "{err}");
    // `send` with the text as an argument is fine.
    run_with_stdin(
        srv.msim().args([
            "-l",
            "alice",
            "--password-stdin",
            "send",
            "alice",
            "note to self",
        ]),
        format!("{pw}\n").as_bytes(),
        0,
    );
    // The refused `send … -` sent nothing: the oldest (and only) pending message is the note.
    let out = run_expect(
        srv.as_user("alice")
            .args(["listen", "--json", "--count", "1", "--no-ack"]),
        0,
    );
    let msgs: Vec<_> = stdout_json(&out)
        .into_iter()
        .filter(|v| v["type"] == "message")
        .collect();
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0]["text"], "note to self");
}

#[test]
fn typing_reaches_the_peers_listener() {
    let srv = TestServer::start();
    register(&srv, "alice");
    register(&srv, "bob");
    let mut bob = Running::spawn(srv.as_user("bob").args(["listen", "--json"]));
    // Typing is not stored: make sure bob's listener is logged in first. A message delivered
    // to it proves that.
    run_expect(
        srv.as_user("alice").args(["send", "bob", "are you there?"]),
        0,
    );
    bob.stdout
        .wait_for_json("the message", WAIT, |v| v["type"] == "message");

    let out = run_expect(srv.as_user("alice").args(["typing", "bob", "--json"]), 0);
    assert_eq!(stdout_json(&out)[0]["typing"], true);
    let v = bob
        .stdout
        .wait_for_json("typing started", WAIT, |v| v["type"] == "typing");
    assert_eq!(
        (v["from"].as_str(), v["typing"].as_bool()),
        (Some("alice@localhost"), Some(true))
    );
    // alice's `typing` hung up, so the server ended it.
    let v = bob
        .stdout
        .wait_for_json("typing ended", WAIT, |v| v["type"] == "typing");
    assert_eq!(v["typing"], false);

    // --stop sends TYPING-END itself.
    let out = run_expect(srv.as_user("alice").args(["typing", "bob", "--stop"]), 0);
    assert!(String::from_utf8_lossy(&out.stdout).contains("stopped typing"));
    let v = bob
        .stdout
        .wait_for_json("typing ended by --stop", WAIT, |v| v["type"] == "typing");
    assert_eq!(
        (v["from"].as_str(), v["typing"].as_bool()),
        (Some("alice@localhost"), Some(false))
    );

    // --for: started, then ended when the time is up.
    run_expect(
        srv.as_user("alice").args(["typing", "bob", "--for", "1"]),
        0,
    );
    let v = bob
        .stdout
        .wait_for_json("typing started (--for)", WAIT, |v| v["type"] == "typing");
    assert_eq!(v["typing"], true);
    let v = bob
        .stdout
        .wait_for_json("typing ended (--for)", WAIT, |v| v["type"] == "typing");
    assert_eq!(v["typing"], false);
    bob.assert_running();
    // --stop and --for do not go together.
    run_expect(
        srv.as_user("alice")
            .args(["typing", "bob", "--stop", "--for", "3"]),
        2,
    );
}
