//! The password key and the database belong together (SECURITY.md): a server whose
//! `secret.key` is missing or belongs to another installation refuses to start, and no stored
//! password that cannot be opened ever matches — the critical login bypass of the review was a
//! restart without the key, after which `hash = SHA-256(salt)` logged in to every account.

use crate::common;
use common::{field, Client, PASSWORD};
use msim_testkit::{addr_in, ServerProcess};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

const DEADLINE: Duration = Duration::from_secs(30);

enum Started {
    Running(Box<ServerProcess>, SocketAddr),
    Refused(String),
}

fn chat(dir: &Path) -> Command {
    let mut c = common::chat_binary(dir);
    // Every failed login below must reach the password check, not the throttle.
    c.args(["--throttle-max", "0s"])
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .envs(common::database_env(dir))
        .kill_on_drop(true);
    c
}

/// Starts the binary; either it listens, or it exits non-zero and its log is returned.
async fn start(dir: &Path) -> Started {
    let mut server = ServerProcess::spawn(chat(dir)).unwrap();
    match server
        .wait_for_log(|l| l.contains("msim-chat listening"))
        .await
    {
        Ok(line) => {
            server.keep_reading_log();
            Started::Running(Box::new(server), addr_in(&line).unwrap())
        }
        Err(e) => {
            let status = tokio::time::timeout(DEADLINE, server.child.wait())
                .await
                .unwrap_or_else(|_| panic!("msim-chat neither listened nor exited: {e}"))
                .unwrap();
            let log = server.log_so_far();
            assert!(!status.success(), "exited 0 without listening:\n{log}");
            Started::Refused(log)
        }
    }
}

async fn running(dir: &Path) -> (ServerProcess, SocketAddr) {
    match start(dir).await {
        Started::Running(c, a) => (*c, a),
        Started::Refused(log) => panic!("msim-chat refused to start:\n{log}"),
    }
}

async fn refused(dir: &Path) -> String {
    match start(dir).await {
        Started::Running(..) => panic!("msim-chat started"),
        Started::Refused(log) => log,
    }
}

/// Runs an operator command; returns (success, stdout + stderr).
async fn operator(dir: &Path, args: &[&str], stdin: &str) -> (bool, String) {
    let mut child = chat(dir)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.as_bytes()).await.unwrap();
    drop(input);
    let out = tokio::time::timeout(DEADLINE, child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

async fn stop(mut server: ServerProcess) {
    server.child.kill().await.unwrap();
}

async fn register(addr: SocketAddr, login: &str, password: &str) {
    let mut c = Client::connect(addr).await;
    c.send(&format!("REGISTER login={login} password={password}"))
        .await;
    c.expect("REGISTER-OK").await;
}

/// Answers the challenge with `hash(salt)`; returns the server's verdict line.
async fn login_answer(addr: SocketAddr, login: &str, hash: impl Fn(&str) -> String) -> String {
    let mut c = Client::connect(addr).await;
    c.send(&format!("CONNECT login={login}")).await;
    let ack = c.expect("CONNECT-ACK").await;
    let salt = field(&ack, "salt").unwrap();
    c.send(&format!("CONNECT-CONTINUE hash={}", hash(&salt)))
        .await;
    c.line().await
}

fn password_hash(password: &'static str) -> impl Fn(&str) -> String {
    move |salt| msim_chat::crypto::challenge_hash(salt, password.as_bytes())
}

/// The attack of the review: the hash of the empty password, which anyone can compute.
fn empty_password_hash(salt: &str) -> String {
    msim_chat::crypto::challenge_hash(salt, b"")
}

fn secret_key(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("secret.key")).unwrap()
}

#[tokio::test]
async fn lost_key_refuses_to_start_and_never_logs_in_with_the_empty_hash() {
    let dir = tempfile::tempdir().unwrap();
    let (child, addr) = running(dir.path()).await;
    register(addr, "alice", "a-strong-password-1").await;
    register(addr, "bob", PASSWORD).await;
    stop(child).await;
    let original_key = secret_key(dir.path());

    // A backup restored without its key: msim-chat refuses, and makes no new key.
    std::fs::remove_file(dir.path().join("secret.key")).unwrap();
    let log = refused(dir.path()).await;
    assert!(log.contains("secret.key is missing"), "{log}");
    assert!(log.contains("2 sealed password"), "{log}");
    assert!(!dir.path().join("secret.key").exists());

    // Another installation's key: refused too.
    let other = tempfile::tempdir().unwrap();
    let (child, other_addr) = running(other.path()).await;
    register(other_addr, "carol", PASSWORD).await;
    stop(child).await;
    std::fs::copy(
        other.path().join("secret.key"),
        dir.path().join("secret.key"),
    )
    .unwrap();
    let log = refused(dir.path()).await;
    assert!(log.contains("does not open the stored passwords"), "{log}");

    // With the right key back, the users are unaffected.
    std::fs::write(dir.path().join("secret.key"), &original_key).unwrap();
    let (child, addr) = running(dir.path()).await;
    let ok = login_answer(addr, "alice", password_hash("a-strong-password-1")).await;
    assert!(ok.starts_with("CONNECT-OK"), "{ok}");
    let attack = login_answer(addr, "alice", empty_password_hash).await;
    assert!(attack.starts_with("CONNECT-FAILED"), "{attack}");
    stop(child).await;
}

#[tokio::test]
async fn reset_secret_key_locks_accounts_until_set_password() {
    let dir = tempfile::tempdir().unwrap();
    let (child, addr) = running(dir.path()).await;
    register(addr, "alice", "a-strong-password-1").await;
    register(addr, "bob", PASSWORD).await;
    stop(child).await;

    // Refused while the key works: it would lock everyone out for nothing.
    let (ok, out) = operator(dir.path(), &["reset-secret-key", "--lock-all-accounts"], "").await;
    assert!(!ok && out.contains("nothing to reset"), "{out}");
    // Refused without the confirmation flag.
    let (ok, _) = operator(dir.path(), &["reset-secret-key"], "").await;
    assert!(!ok);

    std::fs::remove_file(dir.path().join("secret.key")).unwrap();
    let (ok, out) = operator(dir.path(), &["reset-secret-key", "--lock-all-accounts"], "").await;
    assert!(ok && out.contains("2 account(s) locked"), "{out}");
    let (ok, out) = operator(dir.path(), &["set-password", "alice"], "new-password-22\n").await;
    assert!(ok, "{out}");
    let (ok, out) = operator(dir.path(), &["set-password", "nobody"], "new-password-22\n").await;
    assert!(!ok && out.contains("no account nobody"), "{out}");
    let (ok, out) = operator(dir.path(), &["set-password", "bob"], "short\n").await;
    assert!(!ok && out.contains("characters"), "{out}");

    let (child, addr) = running(dir.path()).await;
    let mode = {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(dir.path().join("secret.key"))
            .unwrap()
            .permissions()
            .mode()
    };
    assert_eq!(mode & 0o777, 0o600);
    for (login, hash) in [
        ("alice", empty_password_hash as fn(&str) -> String),
        ("bob", empty_password_hash),
        ("alice", |s: &str| {
            msim_chat::crypto::challenge_hash(s, b"a-strong-password-1")
        }),
        ("bob", |s: &str| {
            msim_chat::crypto::challenge_hash(s, PASSWORD.as_bytes())
        }),
    ] {
        let verdict = login_answer(addr, login, hash).await;
        assert!(verdict.starts_with("CONNECT-FAILED"), "{login}: {verdict}");
    }
    let ok = login_answer(addr, "alice", password_hash("new-password-22")).await;
    assert!(ok.starts_with("CONNECT-OK"), "{ok}");
    // A locked login name cannot be taken over by registering it again.
    let mut c = Client::connect(addr).await;
    c.send(&format!("REGISTER login=bob password={PASSWORD}"))
        .await;
    c.expect("REGISTER-FAILED").await;
    stop(child).await;
}

#[tokio::test]
async fn empty_relay_secret_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.secret");
    std::fs::write(&empty, "\n").unwrap();
    let relay = ["--relay", "http://127.0.0.1:9"];
    for (args, env) in [
        (vec!["--relay-secret-file", empty.to_str().unwrap()], None),
        (vec![], Some("")),
        (vec![], Some("  \n")),
    ] {
        let mut cmd = chat(dir.path());
        cmd.args(relay).args(&args).env_remove("MSIM_RELAY_SECRET");
        if let Some(v) = env {
            cmd.env("MSIM_RELAY_SECRET", v);
        }
        let out = tokio::time::timeout(DEADLINE, cmd.output())
            .await
            .unwrap()
            .unwrap();
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "started with {args:?} {env:?}");
        assert!(log.contains("relay token secret"), "{log}");
    }
}

/// One process at a time owns a SQLite data directory: a second server (or a `db copy`, or
/// `reset-secret-key`) beside a live one is refused with a clear message instead of writing
/// beside it; `set-password` still works beside the live server; the lock goes with the process.
#[tokio::test]
async fn a_live_sqlite_data_directory_is_not_opened_twice() {
    let dir = tempfile::tempdir().unwrap();
    if !common::database_env(dir.path()).is_empty() {
        // On PostgreSQL several nodes share one database by design (cluster tests).
        return;
    }
    let (child, addr) = running(dir.path()).await;
    register(addr, "alice", "a-strong-password-1").await;

    let log = refused(dir.path()).await;
    assert!(log.contains("in use by another msim-chat process"), "{log}");
    std::fs::remove_file(dir.path().join("secret.key")).unwrap();
    let (ok, out) = operator(dir.path(), &["reset-secret-key", "--lock-all-accounts"], "").await;
    assert!(
        !ok && out.contains("in use by another msim-chat process"),
        "{out}"
    );
    let (ok, out) = operator(dir.path(), &["set-password", "alice"], "new-password-22\n").await;
    // The key file is gone, so the password cannot be sealed; the error is about the key, not
    // the lock: set-password opened the live store.
    assert!(!ok && !out.contains("in use"), "{out}");
    let ok = login_answer(addr, "alice", password_hash("a-strong-password-1")).await;
    assert!(ok.starts_with("CONNECT-OK"), "{ok}");
    stop(child).await;

    // The lock died with the process: the operator command now runs.
    let (ok, out) = operator(dir.path(), &["reset-secret-key", "--lock-all-accounts"], "").await;
    assert!(ok && out.contains("1 account(s) locked"), "{out}");
    let (ok, out) = operator(dir.path(), &["set-password", "alice"], "new-password-22\n").await;
    assert!(ok, "{out}");
    let (child, addr) = running(dir.path()).await;
    let ok = login_answer(addr, "alice", password_hash("new-password-22")).await;
    assert!(ok.starts_with("CONNECT-OK"), "{ok}");
    stop(child).await;
}

/// The key is bound to the database from the first start, before any password is stored: a
/// data directory whose `secret.key` was swapped (another installation's backup) is refused,
/// and `reset-secret-key` records the new key so the server starts again.
#[tokio::test]
async fn a_swapped_key_is_refused_even_before_anyone_registered() {
    let dir = tempfile::tempdir().unwrap();
    let (child, _) = running(dir.path()).await;
    stop(child).await;
    std::fs::write(
        dir.path().join("secret.key"),
        format!("{}\n", "07".repeat(32)),
    )
    .unwrap();
    let log = refused(dir.path()).await;
    assert!(
        log.contains("is not the secret.key this database was set up with"),
        "{log}"
    );
    // The copied key file was left readable by others (umask 022): it is tightened.
    let mode = {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(dir.path().join("secret.key"))
            .unwrap()
            .permissions()
            .mode()
    };
    assert_eq!(mode & 0o777, 0o600);
    let (ok, out) = operator(dir.path(), &["reset-secret-key", "--lock-all-accounts"], "").await;
    assert!(ok && out.contains("0 account(s) locked"), "{out}");
    let (child, addr) = running(dir.path()).await;
    register(addr, "alice", "a-strong-password-1").await;
    let ok = login_answer(addr, "alice", password_hash("a-strong-password-1")).await;
    assert!(ok.starts_with("CONNECT-OK"), "{ok}");
    stop(child).await;
}
