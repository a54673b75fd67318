//! Listening sockets with room for bursts of connections. `tokio::net::TcpListener::bind`
//! (through the standard library) listens with a backlog of 128: a burst of more connections
//! at once — a relay's concurrent transfers, a chat server's clients all reconnecting after a
//! restart — overflows it, and every connection dropped there waits for its client's SYN
//! retransmission, a second later (measured: BENCHMARKS.md, tenth session).

use std::io;
use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpSocket, ToSocketAddrs};

/// The listen backlog asked for; the kernel caps it at `net.core.somaxconn` (4096 on
/// current Linux).
pub const LISTEN_BACKLOG: u32 = 4096;

/// Listen on the first address `addr` resolves to that can be bound, with
/// [`LISTEN_BACKLOG`].
pub async fn bind(addr: impl ToSocketAddrs) -> io::Result<TcpListener> {
    let mut last = None;
    for a in tokio::net::lookup_host(addr).await? {
        match bind_addr(a) {
            Ok(listener) => return Ok(listener),
            Err(e) => last = Some(e),
        }
    }
    Err(last
        .unwrap_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no address to listen on")))
}

/// Listen on `addr` with [`LISTEN_BACKLOG`] (in a Tokio runtime).
pub fn bind_addr(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // As the standard library's bind does on Unix: a restarted server can bind at once.
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 300 connections arriving at once all complete their handshake while the server has not
    /// accepted any yet: with the standard backlog of 128 the others' SYNs are dropped again
    /// and again, and their connects never complete while nothing is accepted.
    #[tokio::test]
    async fn a_burst_of_connections_fits_in_the_backlog() {
        let listener = bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let connects: Vec<_> = (0..300)
            .map(|_| tokio::spawn(tokio::net::TcpStream::connect(addr)))
            .collect();
        let mut streams = Vec::new();
        for c in connects {
            let s = tokio::time::timeout(std::time::Duration::from_secs(30), c)
                .await
                .expect("a connect did not complete: the listen backlog overflowed")
                .expect("task")
                .expect("connect");
            streams.push(s);
        }
        assert_eq!(streams.len(), 300);
        drop(listener);
    }

    #[tokio::test]
    async fn bind_reports_what_cannot_be_bound() {
        let taken = bind("127.0.0.1:0").await.expect("bind");
        let addr = taken.local_addr().expect("addr");
        assert!(bind(addr).await.is_err());
    }
}
