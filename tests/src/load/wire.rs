//! A minimal protocol driver over the shared codec. The load generator speaks the protocol
//! directly (rather than through the full client library) so that it stays cheaper than the
//! server it measures: one task per simulated user, no extra routing tasks.

use std::net::{IpAddr, SocketAddr};

use anyhow::{bail, Context, Result};
use futures::{SinkExt, StreamExt};
use msim_shared::proto::{challenge_hash, Body, Connect, ConnectContinue, Event, Register};
use msim_shared::{Packet, PacketCodec};
use tokio::net::{TcpSocket, TcpStream};
use tokio_util::codec::Framed;

/// A framed protocol connection.
pub type Wire = Framed<TcpStream, PacketCodec>;

/// Connects from `source` (a 127.0.0.x address, to get past the ephemeral-port limit of one
/// source address; an unspecified address or `None` lets the kernel choose) to `server`.
pub async fn connect_from(server: SocketAddr, source: Option<IpAddr>) -> Result<TcpStream> {
    let socket = if server.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = source.filter(|ip| !ip.is_unspecified()) {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let stream = socket
        .connect(server)
        .await
        .with_context(|| format!("connecting to {server}"))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Wraps a stream with small buffers, as an idle client would have.
pub fn frame(stream: TcpStream) -> Wire {
    Framed::with_capacity(stream, PacketCodec::default(), 1024)
}

/// Reads the next event, skipping PINGs (answered) and failing on EOF or malformed input.
pub async fn next_event(wire: &mut Wire) -> Result<Event> {
    loop {
        let packet = match wire.next().await {
            Some(item) => item?.map_err(|e| anyhow::anyhow!("malformed from server: {e}"))?,
            None => bail!("server closed the connection"),
        };
        let event = Event::from_packet(&packet)?;
        if let Event::Ping(_) = event {
            wire.send(Packet::new("PONG")).await?;
            continue;
        }
        return Ok(event);
    }
}

/// Registers `login`; an already-taken login counts as success so runs can reuse data.
pub async fn register(wire: &mut Wire, login: &str, password: &str) -> Result<()> {
    let request = Register {
        login: login.into(),
        password: password.into(),
    };
    wire.send(request.to_packet()).await?;
    match next_event(wire).await? {
        Event::RegisterOk(_) => Ok(()),
        Event::RegisterFailed(f) if f.reason.as_str() == "login-taken" => Ok(()),
        Event::RegisterFailed(f) => {
            let server = wire.get_ref().peer_addr()?;
            Err(register_refused(server, login, f.reason.as_str()))
        }
        other => bail!("REGISTER {login}: {:?}", other),
    }
}

/// Logs in with the challenge.
pub async fn login(wire: &mut Wire, login: &str, password: &str) -> Result<()> {
    wire.send(
        Connect {
            login: login.into(),
            device: None,
        }
        .to_packet(),
    )
    .await?;
    let salt = match next_event(wire).await? {
        Event::ConnectAck(ack) => ack.salt,
        other => bail!("CONNECT {login}: {:?}", other),
    };
    let hash = challenge_hash(&salt, password);
    wire.send(ConnectContinue { hash }.to_packet()).await?;
    loop {
        match next_event(wire).await.context("waiting for CONNECT-OK")? {
            Event::ConnectOk(_) => return Ok(()),
            Event::ConnectFailed(f) => bail!("login {login} failed: {}", f.reason),
            // Offline deliveries and presence may arrive; they do not matter here.
            _ => continue,
        }
    }
}

/// Source addresses 127.0.0.1 … 127.0.0.n.
pub fn sources(n: u8) -> Vec<IpAddr> {
    (1..=n.max(1))
        .map(|i| IpAddr::from([127, 0, 0, i]))
        .collect()
}

/// Source addresses for connections to `server`: 127.0.0.1 … 127.0.0.n when it listens on
/// IPv4 loopback, otherwise the unspecified address alone (the kernel picks the source; several
/// 127.0.0.x sources cannot reach another host).
pub fn sources_for(server: SocketAddr, n: u8) -> Vec<IpAddr> {
    match server.ip() {
        IpAddr::V4(ip) if ip.is_loopback() => sources(n),
        IpAddr::V4(_) => vec![IpAddr::from([0, 0, 0, 0])],
        IpAddr::V6(_) => vec![IpAddr::from([0u16; 8])],
    }
}

/// Why a `REGISTER` of the load generator's users failed, in words an operator can act on.
pub fn register_refused(server: SocketAddr, login: &str, reason: &str) -> anyhow::Error {
    match reason {
        "registration-closed" => anyhow::anyhow!(
            "the chat server at {server} refuses registration (REGISTER-FAILED \
             reason=registration-closed): msim-load registers its own users, so run msim-chat \
             with registration open (without --registration-closed true)"
        ),
        "rate-limited" => anyhow::anyhow!(
            "the chat server at {server} rate-limits registration (REGISTER-FAILED \
             reason=rate-limited; by default 5 per client address and 20 per /24 an hour, which \
             suits people, not benchmarks): start that msim-chat with --register-burst 0 \
             --register-prefix-burst 0 for the benchmark"
        ),
        other => anyhow::anyhow!("REGISTER {login} at {server}: REGISTER-FAILED reason={other}"),
    }
}
