//! Connection-level promises of PROTOCOL.md §1.2 and §3.2 and the resource limits of
//! SECURITY.md, over real TCP with the timers shortened through the configuration.

use crate::common;
use common::{field, Client, TestServer};
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;

/// Reads from a raw socket until the server closes it; returns how much arrived.
async fn read_until_closed(stream: &mut tokio::net::TcpStream) -> usize {
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0;
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .expect("the server did not close the connection")
            .unwrap_or(0);
        if n == 0 {
            return total;
        }
        total += n;
    }
}

#[tokio::test]
async fn silent_connection_is_pinged_then_closed() {
    let srv = TestServer::start_with(|c| {
        c.ping_after = Duration::from_millis(150);
        c.idle_timeout = Duration::from_millis(600);
    })
    .await;
    let started = Instant::now();
    let mut a = srv.user("alice").await;
    // One PING per silent period, then the close, without a packet.
    assert_eq!(a.line().await, "PING");
    assert!(started.elapsed() >= Duration::from_millis(150));
    assert_eq!(a.try_line().await, None);
    assert!(started.elapsed() >= Duration::from_millis(600));
    srv.stop().await;
}

#[tokio::test]
async fn answering_pings_keeps_the_connection() {
    let srv = TestServer::start_with(|c| {
        c.ping_after = Duration::from_millis(100);
        c.idle_timeout = Duration::from_millis(300);
    })
    .await;
    let mut a = srv.user("alice").await;
    let started = Instant::now();
    // Well past the idle timeout, kept alive only by the PONGs.
    while started.elapsed() < Duration::from_millis(1000) {
        assert_eq!(a.line().await, "PING");
        a.send("PONG").await;
    }
    a.send("PING ref=alive").await;
    assert_eq!(a.expect_skip("PONG").await, "PONG ref=alive");
    srv.stop().await;
}

#[tokio::test]
async fn client_that_stops_reading_is_closed_after_the_write_timeout() {
    let srv = TestServer::start_with(|c| {
        c.max_text = 60_000;
        c.write_timeout = Duration::from_millis(300);
        c.outbound_queue = 100_000; // the queue never overflows: the write timeout acts
    })
    .await;
    let mut a = srv.user("alice").await;
    let mut bob = login_raw(&srv, "bob").await;
    let ids = fill(&mut a).await;
    // Reading would unblock the server's write, so probe by writing: once the server has
    // closed the socket, a write fails (the unread data makes it answer with a reset).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        use tokio::io::AsyncWriteExt;
        if bob.write_all(b"PONG\n").await.is_err() {
            break;
        }
        assert!(Instant::now() < deadline, "never closed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Restarted with the default write timeout, so that this test's own reader is not cut.
    let srv = TestServer::start_in(srv.stop().await, |c| c.max_text = 60_000).await;
    redelivered_in_order(&srv, "bob", &ids).await;
    srv.stop().await;
}

#[tokio::test]
async fn write_timeout_never_repeats_or_cuts_a_packet() {
    let srv = TestServer::start_with(|c| {
        c.max_text = 60_000;
        c.write_timeout = Duration::from_millis(300);
    })
    .await;
    let mut a = srv.user("alice").await;
    drop(srv.user("bob").await);
    let ids = fill(&mut a).await;
    // Bob logs in and reads his 18 MB backlog too slowly for the write timeout: the server
    // gives up mid-backlog. What he got must be whole packets, in order, each once — a write
    // that timed out used to be written again from its start.
    let mut b = srv.session("bob").await;
    let mut received = 0;
    while let Some(line) = b.try_line().await {
        let whole = field(&line, "text").is_some_and(|t| t.len() == 60_000);
        if !whole {
            // Only the very last line may be cut, where the connection was given up.
            let next = b.try_line().await.map(|l| l.len());
            assert_eq!(next, None, "packet {received} was cut mid-stream");
            break;
        }
        assert_eq!(
            field(&line, "id").unwrap(),
            ids[received],
            "packet {received}"
        );
        received += 1;
        tokio::time::sleep(Duration::from_millis(5)).await; // a slow reader
    }
    assert!(received < ids.len(), "the write timeout never acted");
    srv.stop().await;
}

#[tokio::test]
async fn client_whose_queue_overflows_is_evicted_and_loses_nothing() {
    let srv = TestServer::start_with(|c| {
        c.max_text = 60_000;
        c.outbound_queue = 4;
    })
    .await;
    let mut a = srv.user("alice").await;
    let mut bob = login_raw(&srv, "bob").await;
    let ids = fill(&mut a).await;
    // The queue overflowed long ago (18 MB against 4 packets and the socket buffers): what
    // bob reads now ends with the close, well before all of it.
    let got = read_until_closed(&mut bob).await;
    assert!(got < 300 * 60_000, "{got} bytes: not evicted");
    // Alice is unaffected.
    a.send("PING ref=a").await;
    assert_eq!(a.expect_skip("PONG").await, "PONG ref=a");
    redelivered_in_order(&srv, "bob", &ids).await;
    srv.stop().await;
}

/// Registers `login` and logs it in on a socket with a small receive buffer, which the test
/// then reads only when it wants to.
async fn login_raw(srv: &TestServer, login: &str) -> tokio::net::TcpStream {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    drop(srv.user(login).await);
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(srv.chat).await.unwrap();
    let mut line = String::new();
    stream
        .write_all(format!("CONNECT login={login}\n").as_bytes())
        .await
        .unwrap();
    BufReader::new(&mut stream)
        .read_line(&mut line)
        .await
        .unwrap();
    let salt = field(line.trim_end(), "salt").unwrap();
    let hash = msim_chat::crypto::challenge_hash(&salt, common::PASSWORD.as_bytes());
    stream
        .write_all(format!("CONNECT-CONTINUE hash={hash}\n").as_bytes())
        .await
        .unwrap();
    // Byte by byte up to the line end, so nothing after CONNECT-OK is consumed here.
    let mut ok = Vec::new();
    while ok.last() != Some(&b'\n') {
        ok.push(stream.read_u8().await.unwrap());
    }
    assert!(
        ok.starts_with(b"CONNECT-OK"),
        "{}",
        String::from_utf8_lossy(&ok)
    );
    stream
}

/// Alice sends bob 300 messages of 60,000 bytes (18 MB: far beyond socket buffers).
async fn fill(a: &mut Client) -> Vec<String> {
    let text = "y".repeat(60_000);
    let mut ids = Vec::new();
    for _ in 0..300 {
        a.send(&format!("MESSAGE to=bob text={text}")).await;
        ids.push(field(&a.expect("MESSAGE-SENT").await, "id").unwrap());
    }
    ids
}

/// A new session of `login` gets every message again, in order: closing loses nothing.
async fn redelivered_in_order(srv: &TestServer, login: &str, ids: &[String]) {
    let mut b = srv.session(login).await;
    for (i, id) in ids.iter().enumerate() {
        let m = b.expect_skip("MESSAGE").await;
        let got = field(&m, "id").unwrap();
        assert_eq!(
            &got,
            id,
            "message {i}: got #{:?}",
            ids.iter().position(|x| *x == got)
        );
    }
}

#[tokio::test]
async fn only_consecutive_overlong_lines_close() {
    let srv = TestServer::start_with(|c| c.max_line = 100).await;
    let mut c = srv.client().await;
    let long = format!("PING x={}", "a".repeat(200));
    // Two overlong, a malformed line, two overlong: never three in a row.
    for _ in 0..2 {
        c.send(&long).await;
        assert_eq!(c.line().await, "ERROR-LINE-TOO-LONG max=100");
    }
    c.send("hello").await;
    c.expect("ERROR-MALFORMED").await;
    for _ in 0..2 {
        c.send(&long).await;
        assert_eq!(c.line().await, "ERROR-LINE-TOO-LONG max=100");
    }
    c.send("PING ref=still-open").await;
    assert_eq!(c.line().await, "PONG ref=still-open");
    // Three in a row close the connection.
    for _ in 0..3 {
        c.send(&long).await;
    }
    for _ in 0..3 {
        assert_eq!(c.line().await, "ERROR-LINE-TOO-LONG max=100");
    }
    assert_eq!(c.try_line().await, None);
    srv.stop().await;
}

#[tokio::test]
async fn connections_beyond_the_maximum_wait_for_a_free_slot() {
    let srv = TestServer::start_with(|c| c.max_connections = 2).await;
    let mut first = srv.client().await;
    let mut second = srv.client().await;
    for c in [&mut first, &mut second] {
        c.send("PING ref=in").await;
        assert_eq!(c.line().await, "PONG ref=in");
    }
    // The third is not served while both slots are taken...
    let mut third = srv.client().await;
    third.send("PING ref=third").await;
    let waited = tokio::time::timeout(Duration::from_millis(300), third.try_line()).await;
    assert!(waited.is_err(), "served beyond the maximum: {waited:?}");
    // ...and is served as soon as one is free.
    drop(first);
    assert_eq!(third.line().await, "PONG ref=third");
    srv.stop().await;
}
