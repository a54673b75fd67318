//! The status codes of PROTOCOL.md §11 that a client library would hide (`411`, `405`, `507`,
//! `Expect: 100-continue`), over raw TCP to an in-process relay on 127.0.0.1:0.

use std::time::Duration;

use crate::support::{Relay, WAIT};
use msim_relay::RelayConfig;
use msim_shared::token::Direction;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// An in-process relay whose uploads wait 200 ms at most for their first byte.
async fn start(tweak: impl FnOnce(&mut RelayConfig)) -> (Relay, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), false, |config| {
        config.wait_for_upload = Duration::from_millis(200);
        tweak(config);
    })
    .await;
    (relay, dir)
}

/// Raw HTTP/1.1 exchanges with the relay.
trait Raw {
    async fn connect(&self) -> TcpStream;
    async fn exchange(&self, request: &str) -> String;
    async fn head(&self, id: &str, token: &str) -> String;
}

impl Raw for Relay {
    async fn connect(&self) -> TcpStream {
        timeout(WAIT, TcpStream::connect(self.addr))
            .await
            .unwrap()
            .unwrap()
    }

    /// One request on a fresh connection; the response head and body (the server closes after
    /// `Connection: close`).
    async fn exchange(&self, request: &str) -> String {
        let mut s = self.connect().await;
        s.write_all(request.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        timeout(WAIT, s.read_to_end(&mut out))
            .await
            .expect("no answer before the deadline")
            .unwrap();
        String::from_utf8_lossy(&out).into_owned()
    }

    /// HEAD of a transfer: its status line and headers.
    async fn head(&self, id: &str, token: &str) -> String {
        self.exchange(&format!(
            "HEAD /v1/transfers/{id} HTTP/1.1\r\nHost: r\r\nAuthorization: Bearer {token}\r\n\
             Connection: close\r\n\r\n"
        ))
        .await
    }
}

/// Reads one response head (up to the blank line) within the deadline.
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

fn status(response: &str) -> &str {
    response.get(9..12).unwrap_or("")
}

fn has_header(response: &str, line: &str) -> bool {
    let head = response.split("\r\n\r\n").next().unwrap_or("");
    head.lines().any(|l| l.eq_ignore_ascii_case(line))
}

#[tokio::test]
async fn upload_without_content_length_is_411_and_stores_nothing() {
    let (relay, _dir) = start(|_| {}).await;
    let up = relay.token("nolen", Direction::Upload, 5);
    // No Content-Length at all (and no body).
    let r = relay
        .exchange(&format!(
            "PUT /v1/transfers/nolen HTTP/1.1\r\nHost: r\r\nAuthorization: Bearer {up}\r\n\
             Connection: close\r\n\r\n"
        ))
        .await;
    assert_eq!(status(&r), "411", "{r}");
    assert!(r.contains("Content-Length required"), "{r}");
    // Chunked bodies are not accepted either (§11.3), for PUT and PATCH.
    for (method, extra) in [("PUT", ""), ("PATCH", "Upload-Offset: 0\r\n")] {
        let r = relay
            .exchange(&format!(
                "{method} /v1/transfers/nolen HTTP/1.1\r\nHost: r\r\nAuthorization: Bearer {up}\r\n\
                 {extra}Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
                 5\r\nhello\r\n0\r\n\r\n"
            ))
            .await;
        assert_eq!(status(&r), "411", "{method} chunked: {r}");
    }
    // The refused requests created nothing: the transfer is unknown, and a proper upload works.
    assert_eq!(status(&relay.head("nolen", &up).await), "404");
    let r = relay
        .exchange(&format!(
            "PUT /v1/transfers/nolen HTTP/1.1\r\nHost: r\r\nAuthorization: Bearer {up}\r\n\
             Content-Length: 5\r\nConnection: close\r\n\r\nhello"
        ))
        .await;
    assert_eq!(status(&r), "201", "{r}");
    relay.stop().await;
}

#[tokio::test]
async fn other_methods_on_a_transfer_are_405_with_allow() {
    let (relay, _dir) = start(|_| {}).await;
    let up = relay.token("m1", Direction::Upload, 5);
    for method in ["POST", "OPTIONS", "TRACE"] {
        let r = relay
            .exchange(&format!(
                "{method} /v1/transfers/m1 HTTP/1.1\r\nHost: r\r\nAuthorization: Bearer {up}\r\n\
                 Content-Length: 0\r\nConnection: close\r\n\r\n"
            ))
            .await;
        assert_eq!(status(&r), "405", "{method}: {r}");
        assert!(
            has_header(&r, "allow: GET, HEAD, PUT, PATCH, DELETE"),
            "{method}: {r}"
        );
    }
    relay.stop().await;
}

#[tokio::test]
async fn capacity_full_is_507_before_100_continue() {
    let (relay, _dir) = start(|c| c.capacity = 1000).await;
    // 600 of the 1000 bytes are taken.
    let up = relay.token("c1", Direction::Upload, 600);
    let body = "x".repeat(600);
    let r = relay
        .exchange(&format!(
            "PUT /v1/transfers/c1 HTTP/1.1\r\nHost: r\r\nAuthorization: Bearer {up}\r\n\
             Content-Length: 600\r\nConnection: close\r\n\r\n{body}"
        ))
        .await;
    assert_eq!(status(&r), "201", "{r}");
    // Another 600 would exceed the capacity: refused before the client sends its body.
    let up2 = relay.token("c2", Direction::Upload, 600);
    let mut s = relay.connect().await;
    s.write_all(
        format!(
            "PUT /v1/transfers/c2 HTTP/1.1\r\nHost: r\r\nAuthorization: Bearer {up2}\r\n\
             Content-Length: 600\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let head = read_head(&mut s).await;
    assert_eq!(
        status(&head),
        "507",
        "no 100 Continue, straight to 507: {head}"
    );
    drop(s);
    // It stored nothing; 400 bytes still fit.
    assert_eq!(status(&relay.head("c2", &up2).await), "404");
    let up3 = relay.token("c3", Direction::Upload, 400);
    let body = "y".repeat(400);
    let r = relay
        .exchange(&format!(
            "PUT /v1/transfers/c3 HTTP/1.1\r\nHost: r\r\nAuthorization: Bearer {up3}\r\n\
             Content-Length: 400\r\nConnection: close\r\n\r\n{body}"
        ))
        .await;
    assert_eq!(status(&r), "201", "{r}");
    relay.stop().await;
}

#[tokio::test]
async fn free_disk_watermark_is_507() {
    // No disk has this much free space.
    let (relay, _dir) = start(|c| c.min_free = u64::MAX / 4).await;
    let up = relay.token("w1", Direction::Upload, 5);
    let r = relay
        .exchange(&format!(
            "PUT /v1/transfers/w1 HTTP/1.1\r\nHost: r\r\nAuthorization: Bearer {up}\r\n\
             Content-Length: 5\r\nConnection: close\r\n\r\nhello"
        ))
        .await;
    assert_eq!(status(&r), "507", "{r}");
    relay.stop().await;
}

#[tokio::test]
async fn expect_100_continue_is_answered_only_after_the_checks() {
    let (relay, _dir) = start(|_| {}).await;
    // Accepted upload: `100 Continue` first, then the body, then `201`.
    let up = relay.token("e1", Direction::Upload, 5);
    let mut s = relay.connect().await;
    s.write_all(
        format!(
            "PUT /v1/transfers/e1 HTTP/1.1\r\nHost: r\r\nAuthorization: Bearer {up}\r\n\
             Content-Length: 5\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let interim = read_head(&mut s).await;
    assert!(
        interim.starts_with("HTTP/1.1 100 Continue\r\n"),
        "{interim}"
    );
    s.write_all(b"hello").await.unwrap();
    let done = read_head(&mut s).await;
    assert_eq!(status(&done), "201", "{done}");
    drop(s);
    // Refused uploads never get `100 Continue`: a bad token, a download token, a size over
    // the limit, and a complete transfer each answer at once with the body unsent.
    let down = relay.token("e1", Direction::Download, 5);
    let huge = relay.token("e2", Direction::Upload, 1 << 40);
    for (id, auth, len, want) in [
        ("e1", "v1.k1.bogus.bogus".to_owned(), 5u64, "401"),
        ("e1", down, 5, "403"),
        ("e2", huge, 1 << 40, "413"),
        ("e1", up.clone(), 5, "409"),
    ] {
        let mut s = relay.connect().await;
        s.write_all(
            format!(
                "PUT /v1/transfers/{id} HTTP/1.1\r\nHost: r\r\nAuthorization: Bearer {auth}\r\n\
                 Content-Length: {len}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        let head = read_head(&mut s).await;
        assert_eq!(status(&head), want, "{head}");
    }
    relay.stop().await;
}
