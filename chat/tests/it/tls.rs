//! The msim-chat binary with `--tls-cert`/`--tls-key`: the chat port speaks TLS, the embedded
//! relay serves HTTPS with the same certificate and clients are handed `https://` URLs; bad
//! TLS options stop it with a clear message.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use crate::common;
use msim_shared::tls;
use msim_testkit::{addr_in, SelfSigned, ServerProcess};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

const WAIT: Duration = Duration::from_secs(30);
const PASSWORD: &str = "correct horse battery";

/// Starts the binary with TLS; returns it with the chat and embedded relay addresses.
async fn start(dir: &Path, cert: &Path, key: &Path) -> (ServerProcess, SocketAddr, SocketAddr) {
    let mut command = common::chat_binary(&dir.join("data"));
    command
        .arg("--tls-cert")
        .arg(cert)
        .arg("--tls-key")
        .arg(key);
    let mut server = ServerProcess::spawn(command).unwrap();
    let relay = server.listening("embedded relay").await.unwrap();
    let line = server
        .wait_for_log(|l| l.contains("msim-chat listening"))
        .await
        .unwrap();
    assert!(line.contains("tls=true"), "{line}");
    let chat = addr_in(&line).unwrap();
    server.keep_reading_log();
    (server, chat, relay)
}

type Stream = tls::ClientStream<tokio::net::TcpStream>;

struct TlsClient {
    r: BufReader<tokio::io::ReadHalf<Stream>>,
    w: tokio::io::WriteHalf<Stream>,
}

impl TlsClient {
    async fn connect(addr: SocketAddr, cert: &Path) -> TlsClient {
        let config = tls::client_config(&[cert.to_owned()]).unwrap();
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let s = tls::connect(config, "127.0.0.1", tcp, WAIT).await.unwrap();
        let (r, w) = tokio::io::split(s);
        TlsClient {
            r: BufReader::new(r),
            w,
        }
    }

    async fn send(&mut self, line: &str) {
        self.w
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
    }

    async fn expect(&mut self, verb: &str) -> String {
        loop {
            let mut s = String::new();
            let n = tokio::time::timeout(WAIT, self.r.read_line(&mut s))
                .await
                .expect("a line in time")
                .unwrap();
            assert!(n > 0, "closed while waiting for {verb}");
            let l = s.trim_end().to_owned();
            if l == verb || l.starts_with(&format!("{verb} ")) {
                return l;
            }
        }
    }

    async fn user(addr: SocketAddr, cert: &Path, login: &str) -> TlsClient {
        let mut c = TlsClient::connect(addr, cert).await;
        c.send(&format!(
            "REGISTER login={login} password=correct%20horse%20battery"
        ))
        .await;
        c.expect("REGISTER-OK").await;
        c.send(&format!("CONNECT login={login}")).await;
        let ack = c.expect("CONNECT-ACK").await;
        let salt = field(&ack, "salt");
        let hash = msim_chat::crypto::challenge_hash(&salt, PASSWORD.as_bytes());
        c.send(&format!("CONNECT-CONTINUE hash={hash}")).await;
        c.expect("CONNECT-OK").await;
        c
    }
}

fn field(line: &str, key: &str) -> String {
    let p = msim_shared::Packet::parse_line(line.as_bytes()).unwrap();
    p.get(key).unwrap().to_owned()
}

/// `GET path` over TLS; the status code.
async fn https_get(addr: SocketAddr, cert: &Path, path: &str) -> u16 {
    let config: Arc<_> = tls::client_config(&[cert.to_owned()]).unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let s = tls::connect(config, "127.0.0.1", tcp, WAIT).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(s))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get(path)
        .header(http::header::HOST, addr.to_string())
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    sender.send_request(req).await.unwrap().status().as_u16()
}

#[tokio::test]
async fn chat_and_embedded_relay_serve_tls() {
    let dir = tempfile::tempdir().unwrap();
    let SelfSigned { cert, key } = SelfSigned::write_to(dir.path()).unwrap();
    let (_child, chat, relay) = start(dir.path(), &cert, &key).await;

    let mut a = TlsClient::user(chat, &cert, "alice").await;
    let mut b = TlsClient::user(chat, &cert, "bob").await;
    a.send("SEND-FILE-PROXY to=bob filename=cat.jpg size=5")
        .await;
    let pending = a.expect("SEND-FILE-PROXY-PENDING").await;
    let tid = field(&pending, "transfer-id");
    b.expect("SEND-FILE-PROXY-REQUEST").await;
    b.send(&format!("SEND-FILE-PROXY-ACCEPT transfer-id={tid}"))
        .await;
    let ok = a.expect("SEND-FILE-PROXY-OK").await;
    let url = field(&ok, "url");
    assert_eq!(url, format!("https://{relay}/v1/transfers/{tid}"));
    let ready = b.expect("SEND-FILE-PROXY-READY").await;
    assert!(field(&ready, "url").starts_with("https://"), "{ready}");

    // The embedded relay speaks HTTPS with the same certificate.
    assert_eq!(https_get(relay, &cert, "/healthz").await, 200);
}

#[tokio::test]
async fn bad_tls_options_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let SelfSigned { cert, key } = SelfSigned::write_to(dir.path()).unwrap();
    let run = |args: Vec<std::ffi::OsString>| {
        let data = dir.path().join("data");
        async move {
            let out = Command::new(env!("CARGO_BIN_EXE_msim-chat"))
                .args(["--listen", "127.0.0.1:0"])
                .args(["--embedded-relay-listen", "127.0.0.1:0"])
                .arg("--data-dir")
                .arg(data)
                .args(args)
                .env("NO_COLOR", "1")
                .stdin(Stdio::null())
                .output();
            let out = tokio::time::timeout(WAIT, out).await.unwrap().unwrap();
            assert!(!out.status.success());
            String::from_utf8_lossy(&out.stderr).into_owned()
        }
    };
    let err = run(vec!["--tls-cert".into(), cert.clone().into()]).await;
    assert!(err.contains("--tls-key"), "{err}");
    let missing = dir.path().join("missing-key.pem");
    let err = run(vec![
        "--tls-cert".into(),
        cert.clone().into(),
        "--tls-key".into(),
        missing.into(),
    ])
    .await;
    assert!(err.contains("missing-key.pem"), "{err}");
    // Certificate and key swapped.
    let err = run(vec![
        "--tls-cert".into(),
        key.clone().into(),
        "--tls-key".into(),
        cert.clone().into(),
    ])
    .await;
    assert!(err.contains("no certificate found"), "{err}");
}
