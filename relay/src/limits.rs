//! Connection limits: connections per client address, and deadlines for clients that stop
//! sending (an upload body) or stop reading (a download).

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// Open connections per client address (an IPv6 client by its /64: one host usually has a
/// whole /64), bounded by a cap.
#[derive(Clone)]
pub struct PerAddress {
    cap: usize,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// One counted connection; uncounted when dropped.
pub struct AddressSlot {
    ip: IpAddr,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl PerAddress {
    /// At most `cap` connections per address (0: no limit).
    pub fn new(cap: usize) -> PerAddress {
        PerAddress {
            cap,
            open: Arc::default(),
        }
    }

    /// Count a connection from `ip`; `None` when that address already has `cap` open.
    pub fn admit(&self, ip: IpAddr) -> Option<AddressSlot> {
        let ip = address_key(ip);
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(ip).or_insert(0);
        if self.cap > 0 && *n >= self.cap {
            return None;
        }
        *n += 1;
        Some(AddressSlot {
            ip,
            open: self.open.clone(),
        })
    }
}

/// What the per-address cap counts: IPv4 (also IPv4-mapped IPv6) as is, IPv6 by its /64.
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// The next frame of an upload body, or a `TimedOut` error when the client sends nothing for
/// `idle` (the bytes received so far are kept: the upload stays resumable).
pub async fn next_frame(
    body: &mut Incoming,
    idle: Duration,
) -> Option<Result<Frame<Bytes>, Box<dyn std::error::Error + Send + Sync>>> {
    match tokio::time::timeout(idle, body.frame()).await {
        Ok(f) => f.map(|r| r.map_err(Into::into)),
        Err(_) => Some(Err(Box::new(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no data for {}", humantime::format_duration(idle)),
        )))),
    }
}

/// A connection whose writes fail with `TimedOut` once the peer has not taken any bytes for
/// `idle` (a downloader that stopped reading), so it cannot hold its slot and buffers forever.
pub struct WriteDeadline<S> {
    inner: S,
    idle: Duration,
    /// Running while a write waits for the peer to make room.
    stalled: Option<Pin<Box<Sleep>>>,
    /// Bytes read and written, for the minimum-rate check of the connection slots.
    traffic: Option<Arc<AtomicU64>>,
}

impl<S> WriteDeadline<S> {
    /// Wrap `inner`.
    pub fn new(inner: S, idle: Duration) -> WriteDeadline<S> {
        WriteDeadline {
            inner,
            idle,
            stalled: None,
            traffic: None,
        }
    }

    /// Also add every byte read or written to `traffic`.
    pub fn counting(mut self, traffic: Arc<AtomicU64>) -> WriteDeadline<S> {
        self.traffic = Some(traffic);
        self
    }

    fn count(&self, n: usize) {
        if let Some(t) = &self.traffic {
            t.fetch_add(n as u64, Ordering::Relaxed);
        }
    }

    /// `Pending` (the write waits) or a timeout error once the wait has lasted `idle`.
    fn wait(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let idle = self.idle;
        let sleep = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "peer stopped reading",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn track<T>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match r {
            Poll::Pending => match self.wait(cx) {
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                _ => Poll::Pending,
            },
            ready => {
                self.stalled = None;
                ready
            }
        }
    }

    fn track_written(
        &mut self,
        cx: &mut Context<'_>,
        r: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        if let Poll::Ready(Ok(n)) = r {
            self.count(n);
        }
        self.track(cx, r)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteDeadline<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            self.count(buf.filled().len().saturating_sub(before));
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.track_written(cx, r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.track_written(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.track(cx, r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.track(cx, r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_address_cap_counts_and_releases() {
        let limit = PerAddress::new(2);
        let a: IpAddr = "10.0.0.1".parse().expect("ip");
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().expect("ip");
        let b: IpAddr = "10.0.0.2".parse().expect("ip");
        let s1 = limit.admit(a).expect("first");
        let _s2 = limit.admit(mapped).expect("second, same address mapped");
        assert!(limit.admit(a).is_none(), "third from one address refused");
        assert!(limit.admit(b).is_some(), "another address unaffected");
        drop(s1);
        assert!(
            limit.admit(a).is_some(),
            "a closed connection frees its slot"
        );
        // One IPv6 host (its /64) counts once, whatever its interface ids.
        let v6 = |s: &str| s.parse::<IpAddr>().expect("ip");
        let _h1 = limit.admit(v6("2001:db8:1:2::1")).expect("first");
        let _h2 = limit
            .admit(v6("2001:db8:1:2:ffff::9"))
            .expect("second, same /64");
        assert!(
            limit.admit(v6("2001:db8:1:2::3")).is_none(),
            "third from the /64"
        );
        assert!(limit.admit(v6("2001:db8:1:3::1")).is_some(), "another /64");
    }
}
