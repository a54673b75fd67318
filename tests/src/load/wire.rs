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
/// source address) to `server`.
pub async fn connect_from(server: SocketAddr, source: Option<IpAddr>) -> Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    if let Some(ip) = source {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let stream = socket.connect(server).await?;
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
        other => bail!("REGISTER {login}: {:?}", other),
    }
}

/// Logs in with the challenge.
pub async fn login(wire: &mut Wire, login: &str, password: &str) -> Result<()> {
    wire.send(
        Connect {
            login: login.into(),
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
