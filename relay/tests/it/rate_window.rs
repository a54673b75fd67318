//! The minimum rate judges each connection on its last window only (review item 3): a request
//! that started slowly and is fast now keeps its slot when slots are short.

use crate::support;

use std::time::Duration;

use msim_shared::token::Direction;
use support::{parse_response, utf8, Relay, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::time::timeout;

#[tokio::test]
async fn an_upload_that_started_slowly_and_is_fast_now_keeps_its_slot() {
    let dir = tempfile::tempdir().unwrap();
    let window = Duration::from_millis(300);
    // About 107 KiB/s.
    let relay = Relay::start_judging_rate(dir.path(), 1, 32 << 10, window).await;
    let data: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
    let up = relay.token("late", Direction::Upload, data.len() as u64);
    let (fast_for_a_while, mut newcomer_may_come) = oneshot::channel();
    let addr = relay.addr;
    let sent = data.clone();
    let upload = tokio::spawn(async move {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "PUT /v1/transfers/late HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {up}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            sent.len()
        );
        s.write_all(head.as_bytes()).await.unwrap();
        // A bad start: one byte every 50 ms for 4 s (pacing the link, not synchronisation).
        let (slow, fast) = sent.split_at(80);
        for b in slow {
            s.write_all(std::slice::from_ref(b)).await?;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Then about 640 KiB/s, six times the minimum: over the whole request still below it
        // when the newcomer arrives (about 400 KiB in 4.6 s).
        let mut signal = Some(fast_for_a_while);
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        for (i, part) in fast.chunks(32 << 10).enumerate() {
            tick.tick().await;
            s.write_all(part).await?;
            if i == 12 {
                if let Some(tx) = signal.take() {
                    let _ = tx.send(());
                }
            }
        }
        let mut out = Vec::new();
        timeout(WAIT, s.read_to_end(&mut out))
            .await
            .expect("answer to the upload")?;
        Ok::<_, std::io::Error>(parse_response(&out))
    });
    timeout(WAIT * 2, &mut newcomer_may_come)
        .await
        .expect("the upload went fast")
        .expect("signal");
    // Every slot is taken by a request that is fast now: the newcomer waits for it to end.
    let (status, body) = relay.request("GET", "/healthz", None, b"").await;
    assert_eq!((status, utf8(&body).as_str()), (200, "ok\n"));
    let (status, body) = upload
        .await
        .unwrap()
        .expect("the upload was not cut while fast");
    assert_eq!(status, 201, "{}", utf8(&body));
    let down = relay.token("late", Direction::Download, data.len() as u64);
    let (status, got) = relay
        .request("GET", "/v1/transfers/late", Some(&down), b"")
        .await;
    assert_eq!(status, 200);
    assert!(got == data, "downloaded bytes differ");
    relay.stop().await;
}
