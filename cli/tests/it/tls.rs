//! TLS end to end: msim-chat and msim-relay serving TLS with a self-signed certificate
//! (from msim-testkit), the `msim` program connecting with `--server tls://…` and
//! `--ca-file`, messages and files over TLS; clear failures for an untrusted certificate and
//! for a protocol mismatch (plain client on a TLS port, TLS client on a plain port), with the
//! servers still serving others afterwards.

use crate::common;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{password, run_expect, stdout_json, TestServer};
use msim_shared::tls;
use msim_testkit::{pseudo_random_bytes, sha256_file_hex};

/// Longest a failing client may take (it runs with `--timeout 5`).
const FAIL_WITHIN: Duration = Duration::from_secs(20);

/// Runs a command that must fail with exit code 1 within [`FAIL_WITHIN`]; returns stderr.
fn fails_cleanly(cmd: &mut Command) -> String {
    let started = Instant::now();
    let out = run_expect(cmd, 1);
    assert!(
        started.elapsed() < FAIL_WITHIN,
        "took {:?}",
        started.elapsed()
    );
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

#[test]
fn message_and_file_over_tls() {
    let srv = TestServer::start_tls();
    for login in ["alice", "bob"] {
        let out = run_expect(srv.as_user(login).args(["register", "--json"]), 0);
        assert_eq!(stdout_json(&out)[0]["login"], format!("{login}@localhost"));
    }
    // The CA file from the environment works as well as the flag.
    let out = run_expect(
        srv.bare()
            .env("MSIM_CA_FILE", srv.ca_file())
            .args(["--server", &srv.server(), "-l", "alice", "-p"])
            .arg(password("alice"))
            .args(["send", "bob", "hello over TLS ✓", "--json"]),
        0,
    );
    let id = stdout_json(&out)[0]["id"].as_str().unwrap().to_owned();
    let out = run_expect(
        srv.as_user("bob")
            .args(["listen", "--json", "--count", "1"]),
        0,
    );
    let msg = stdout_json(&out)
        .into_iter()
        .find(|v| v["type"] == "message")
        .expect("a message");
    assert_eq!(msg["id"], id.as_str());
    assert_eq!(msg["text"], "hello over TLS ✓");

    // A file through the https relay, byte-identical.
    let src = srv.dir.path().join("picture.bin");
    std::fs::write(&src, pseudo_random_bytes(1_234_567, 11)).unwrap();
    let inbox = srv.dir.path().join("inbox");
    std::fs::create_dir_all(&inbox).unwrap();
    let receiver = srv
        .as_user("bob")
        .args(["receive", "--accept-all", "--count", "1", "--json", "--out"])
        .arg(&inbox)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Offers reach bob at login too, so his receive may start before or after this.
    let out = run_expect(
        srv.as_user("alice")
            .args(["send-file", "bob", "--json"])
            .arg(&src),
        0,
    );
    let sent = stdout_json(&out);
    assert_eq!(sent.last().unwrap()["event"], "sent", "{sent:?}");
    let received = receiver.wait_with_output().unwrap();
    assert!(
        received.status.success(),
        "{}",
        String::from_utf8_lossy(&received.stderr)
    );
    let got = stdout_json(&received);
    let r = got.last().unwrap();
    assert_eq!(r["event"], "received", "{got:?}");
    assert_eq!(r["verified"], true);
    let path = PathBuf::from(r["path"].as_str().unwrap());
    assert_eq!(std::fs::read(&path).unwrap(), std::fs::read(&src).unwrap());
    assert_eq!(
        sha256_file_hex(&path).unwrap(),
        sha256_file_hex(&src).unwrap()
    );
}

#[test]
fn untrusted_certificate_is_a_clear_error() {
    let srv = TestServer::start_tls();
    run_expect(srv.as_user("alice").arg("register"), 0);
    // Without the CA file: the bundled public roots do not know the self-signed certificate.
    let stderr = fails_cleanly(
        srv.bare()
            .args(["--server", &srv.server(), "-l", "alice", "-p"])
            .arg(password("alice"))
            .arg("login"),
    );
    assert!(stderr.contains("certificate"), "{stderr}");
    assert!(stderr.contains("unknown issuer"), "{stderr}");
    assert!(stderr.contains("--ca-file"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");

    // A CA file that is not a certificate is a usage error naming the file.
    let bogus = srv.dir.path().join("bogus.pem");
    std::fs::write(&bogus, "not a certificate\n").unwrap();
    let out = run_expect(
        srv.bare()
            .args(["--server", &srv.server(), "--ca-file"])
            .arg(&bogus)
            .args(["-l", "alice", "-p"])
            .arg(password("alice"))
            .arg("login"),
        2,
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("bogus.pem"));

    // The server is fine: the right CA logs in.
    run_expect(srv.as_user("alice").arg("login"), 0);
}

#[test]
fn protocol_mismatches_fail_cleanly_and_servers_keep_serving() {
    let srv = TestServer::start_tls();
    run_expect(srv.as_user("alice").arg("register"), 0);

    // A connection that never starts its handshake does not hold up others.
    let idle = std::net::TcpStream::connect(srv.chat).unwrap();

    // Plain client on the TLS chat port: the server drops it, the client says so.
    fails_cleanly(
        srv.bare()
            .args(["--server", &srv.chat.to_string(), "-l", "alice", "-p"])
            .arg(password("alice"))
            .arg("login"),
    );
    // Raw plain text on the TLS port: the connection is closed, nothing is answered.
    let mut raw = std::net::TcpStream::connect(srv.chat).unwrap();
    raw.set_read_timeout(Some(FAIL_WITHIN)).unwrap();
    raw.write_all(b"PING\n").unwrap();
    let mut buf = Vec::new();
    let _ = raw.read_to_end(&mut buf);
    assert!(!String::from_utf8_lossy(&buf).contains("PONG"), "{buf:?}");

    // Plain HTTP on the TLS relay port: no HTTP answer, the connection is closed.
    let mut raw = std::net::TcpStream::connect(srv.relays[0]).unwrap();
    raw.set_read_timeout(Some(FAIL_WITHIN)).unwrap();
    raw.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = Vec::new();
    let _ = raw.read_to_end(&mut buf);
    assert!(!buf.starts_with(b"HTTP/"), "{buf:?}");

    // TLS client on a plain chat port.
    let plain = TestServer::start();
    let stderr = fails_cleanly(
        srv.bare()
            .arg("--server")
            .arg(format!("tls://127.0.0.1:{}", plain.chat.port()))
            .arg("--ca-file")
            .arg(srv.ca_file())
            .args(["-l", "alice", "-p"])
            .arg(password("alice"))
            .arg("login"),
    );
    assert!(stderr.contains("does not speak TLS"), "{stderr}");
    // The plain server still serves plain clients.
    run_expect(
        plain
            .msim()
            .args(["-l", "carol", "-p"])
            .arg(password("carol"))
            .arg("register"),
        0,
    );

    // The TLS servers still serve TLS clients, with the idle connection still open.
    run_expect(srv.as_user("alice").arg("login"), 0);
    drop(idle);
}

#[test]
fn relay_health_checks_over_https() {
    let srv = TestServer::start_tls();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let url = format!("https://localhost:{}", srv.relays[0].port());
        let trusted = tls::client_config(&[srv.ca_file().to_path_buf()]).unwrap();
        let pool = msim_chat::relays::RelayPool::new(std::slice::from_ref(&url))
            .unwrap()
            .with_tls(Some(trusted));
        pool.check_all(Duration::from_secs(5)).await;
        assert!(pool.relays()[0].healthy());

        // Default roots only: the self-signed certificate is refused, the relay unhealthy.
        let pool = msim_chat::relays::RelayPool::new(std::slice::from_ref(&url)).unwrap();
        pool.check_all(Duration::from_secs(5)).await;
        assert!(!pool.relays()[0].healthy());

        // Plain http to the TLS relay: unhealthy too.
        let plain = format!("http://localhost:{}", srv.relays[0].port());
        let pool = msim_chat::relays::RelayPool::new(std::slice::from_ref(&plain)).unwrap();
        pool.check_all(Duration::from_secs(5)).await;
        assert!(!pool.relays()[0].healthy());

        assert!(msim_chat::relays::RelayPool::new(&["ftp://x:1".to_owned()]).is_err());
    });
}
