//! A TCP proxy in front of the relay that misbehaves on purpose: it cuts a response after some
//! body bytes, flips a body byte, or holds a request back until the test lets it go on.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// What the proxy does to connections.
#[derive(Clone, Copy, Debug)]
pub enum Fault {
    /// Close the first connection after this many response body bytes.
    CutFirstResponseAfter(usize),
    /// Invert the response body byte at this offset (every connection).
    FlipResponseByte(usize),
    /// Forward this many request bytes, then wait for [`Proxy::release`].
    HoldRequestAfter(usize),
    /// Invert the request byte (head included) at this offset (every connection).
    FlipRequestByte(usize),
}

pub struct Proxy {
    pub addr: SocketAddr,
    /// The request heads seen, in order (up to the blank line).
    pub heads: Arc<Mutex<Vec<String>>>,
    gate: Arc<Semaphore>,
    /// Request bytes forwarded so far (all connections).
    pub forwarded: Arc<AtomicUsize>,
}

impl Proxy {
    pub async fn start(upstream: SocketAddr, fault: Fault) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let gate = Arc::new(Semaphore::new(0));
        let forwarded = Arc::new(AtomicUsize::new(0));
        let (h, g, f) = (heads.clone(), gate.clone(), forwarded.clone());
        tokio::spawn(async move {
            let mut index = 0usize;
            while let Ok((client, _)) = listener.accept().await {
                let upstream = TcpStream::connect(upstream).await.unwrap();
                tokio::spawn(relay_connection(
                    client,
                    upstream,
                    fault,
                    index == 0,
                    h.clone(),
                    g.clone(),
                    f.clone(),
                ));
                index += 1;
            }
        });
        Proxy {
            addr,
            heads,
            gate,
            forwarded,
        }
    }

    /// Lets a held request go on.
    pub fn release(&self) {
        self.gate.add_permits(1_000);
    }

    /// `url` with its authority replaced by the proxy's.
    pub fn url(&self, url: &str) -> String {
        let rest = url.strip_prefix("http://").unwrap();
        let path = &rest[rest.find('/').unwrap()..];
        format!("http://{}{path}", self.addr)
    }
}

async fn relay_connection(
    client: TcpStream,
    upstream: TcpStream,
    fault: Fault,
    first: bool,
    heads: Arc<Mutex<Vec<String>>>,
    gate: Arc<Semaphore>,
    forwarded: Arc<AtomicUsize>,
) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut up_read, mut up_write) = upstream.into_split();
    let requests = async move {
        let mut buf = vec![0u8; 64 * 1024];
        let mut head = Vec::new();
        let mut head_done = false;
        let mut sent = 0usize;
        loop {
            let n = match client_read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if !head_done {
                head.extend_from_slice(&buf[..n]);
                if let Some(end) = find(&head, b"\r\n\r\n") {
                    heads
                        .lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&head[..end]).into_owned());
                    head_done = true;
                }
            }
            if let Fault::FlipRequestByte(at) = fault {
                if sent <= at && at < sent + n {
                    buf[at - sent] ^= 0xff;
                }
            }
            let mut chunk = &buf[..n];
            if let Fault::HoldRequestAfter(limit) = fault {
                if sent < limit && sent + n >= limit {
                    let before = limit - sent;
                    if up_write.write_all(&chunk[..before]).await.is_err() {
                        break;
                    }
                    forwarded.fetch_add(before, Ordering::SeqCst);
                    sent += before;
                    chunk = &chunk[before..];
                    let _ = gate.acquire().await;
                }
            }
            if up_write.write_all(chunk).await.is_err() {
                break;
            }
            sent += chunk.len();
            forwarded.fetch_add(chunk.len(), Ordering::SeqCst);
        }
        let _ = up_write.shutdown().await;
    };
    let responses = async move {
        let mut buf = vec![0u8; 64 * 1024];
        let mut head = Vec::new();
        let mut body_at: Option<usize> = None;
        let mut body_seen = 0usize;
        loop {
            let n = match up_read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let mut data = buf[..n].to_vec();
            // Where the body starts in `data` (all of it once the head has passed).
            let start = match body_at {
                Some(_) => 0,
                None => {
                    head.extend_from_slice(&data);
                    match find(&head, b"\r\n\r\n") {
                        Some(end) => {
                            let in_data = end + 4 - (head.len() - data.len());
                            body_at = Some(end + 4);
                            in_data
                        }
                        None => data.len(),
                    }
                }
            };
            let body_len = data.len() - start;
            match fault {
                Fault::CutFirstResponseAfter(limit) if first && body_seen + body_len >= limit => {
                    let keep = start + (limit - body_seen);
                    let _ = client_write.write_all(&data[..keep]).await;
                    // Both directions end here: a cut connection.
                    return;
                }
                Fault::FlipResponseByte(at) if body_seen <= at && at < body_seen + body_len => {
                    data[start + at - body_seen] ^= 0xff;
                }
                _ => {}
            }
            body_seen += body_len;
            if client_write.write_all(&data).await.is_err() {
                break;
            }
        }
    };
    // A cut (or the relay closing) ends the whole connection.
    let forwarding = tokio::spawn(requests);
    responses.await;
    forwarding.abort();
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
