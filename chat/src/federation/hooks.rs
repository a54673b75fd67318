//! What the client commands do with remote addresses when federation is on.

use super::queue::QueueError;
use super::Federation;
use crate::clock::datetime;
use crate::cmd::context::{Ctx, Me};
use crate::cmd::messages::failed;
use crate::db::QueueWrite;
use crate::hub::encode;
use msim_shared::proto::{Body, Message, MessageSent, SendFailure};
use msim_shared::Packet;
use tracing::warn;

/// The domain of a canonical remote address.
fn domain_of(addr: &str) -> &str {
    addr.rsplit_once('@').map(|(_, d)| d).unwrap_or(addr)
}

/// `MESSAGE to=<remote>`: queued durably for the peer; returns the answer, `MESSAGE-SENT` once
/// committed to the queue (the message is then delivered or its sender told why not,
/// PROTOCOL.md §12.1).
pub(crate) async fn send_message(
    fed: &Federation,
    ctx: &Ctx<'_>,
    me: Me<'_>,
    to: String,
    text: String,
) -> Packet {
    let id = uuid::Uuid::now_v7().to_string();
    let reason = if text.is_empty() {
        Some(SendFailure::EmptyText)
    } else if text.len() > ctx.config.max_text {
        Some(SendFailure::TextTooLong)
    } else if !fed.config.allows(domain_of(&to)) {
        Some(SendFailure::Other("peer-not-allowed".into()))
    } else {
        None
    };
    if let Some(reason) = reason {
        return failed(&id, reason);
    }
    let peer = domain_of(&to).to_owned();
    let at = ctx.now();
    let pkt = Message {
        id: id.clone(),
        from: ctx.addr(me.login),
        to: to.clone(),
        at: datetime(at),
        text,
    };
    let mut wire = pkt.to_packet();
    wire.verb = "S2S-MESSAGE".into();
    let line = wire.to_wire();
    let expires = at.saturating_add(fed.config.queue_ttl.as_micros() as i64);
    let queued = fed
        .queue()
        .write(QueueWrite::Add {
            peer: peer.clone(),
            line: line.trim_end().to_owned(),
            sender: me.login.to_owned(),
            message_id: id.clone(),
            recipient: to,
            at,
            expires_at: expires,
            merge_key: String::new(),
        })
        .await;
    match queued {
        Ok(_) => {
            // Carbon copy to the sender's other sessions.
            ctx.hub
                .send_except(me.login, Some(me.session), &encode(&pkt.to_packet()));
            fed.wake(&peer);
            MessageSent {
                id,
                at: datetime(at),
            }
            .to_packet()
        }
        // This server's bounds (per peer, per sender, peers): the remote server is not asked.
        Err(QueueError::Full | QueueError::SenderFull | QueueError::TooManyPeers) => {
            failed(&id, SendFailure::RecipientQueueFull)
        }
        Err(e) => {
            warn!("{e}");
            failed(&id, SendFailure::StorageError)
        }
    }
}

/// A local user read a message from a remote sender: the receipt goes to the sender's server.
pub(crate) async fn forward_receipt(
    fed: &Federation,
    ctx: &Ctx<'_>,
    id: &str,
    sender: &str,
    reader: &str,
    at: i64,
) {
    let peer = domain_of(sender).to_owned();
    let line = Packet::new("S2S-READ")
        .with("id", id)
        .with("by", ctx.addr(reader))
        .with("to", sender)
        .with("at", msim_shared::timestamp::format(datetime(at)))
        .to_wire();
    let expires = ctx
        .now()
        .saturating_add(fed.config.queue_ttl.as_micros() as i64);
    let add = QueueWrite::Add {
        peer: peer.clone(),
        line: line.trim_end().to_owned(),
        sender: String::new(),
        message_id: String::new(),
        recipient: String::new(),
        at,
        expires_at: expires,
        merge_key: String::new(),
    };
    match fed.queue().write(add).await {
        Ok(_) => fed.wake(&peer),
        Err(QueueError::Full | QueueError::SenderFull | QueueError::TooManyPeers) => {
            warn!(%peer, "federation queue full: receipt dropped")
        }
        Err(e) => warn!("{e}"),
    }
}

/// `TYPING-STARTED`/`-END` to a remote user: sent live if the link is up, else dropped.
pub(crate) fn typing(fed: &Federation, ctx: &Ctx<'_>, login: &str, to: &str, started: bool) {
    let peer = domain_of(to);
    if !fed.config.allows(peer) {
        return;
    }
    let p = Packet::new("S2S-TYPING")
        .with("from", ctx.addr(login))
        .with("to", to)
        .with("state", if started { "started" } else { "ended" });
    fed.send_live(peer, p);
}

/// What the remote server said about one of its users.
pub(crate) enum RemoteProfile {
    /// The user exists: name and note.
    Found { name: String, note: Option<String> },
    /// No such user there.
    Unknown,
    /// No answer (unreachable, refused, timed out, not allowed).
    NoAnswer(&'static str),
}

/// Asks `addr`'s server for that user's profile (also: whether the account exists).
pub(crate) async fn remote_profile(
    fed: &Federation,
    ctx: &Ctx<'_>,
    me: Me<'_>,
    addr: &str,
) -> RemoteProfile {
    let peer = domain_of(addr);
    if !fed.config.allows(peer) {
        return RemoteProfile::NoAnswer("peer-not-allowed");
    }
    let ask = Packet::new("S2S-PROFILE-GET")
        .with("from", ctx.addr(me.login))
        .with("id", addr);
    let within = fed.config.handshake_timeout + std::time::Duration::from_secs(5);
    match fed.request(peer, ask, within).await {
        Some(p) if p.verb == "S2S-PROFILE" && p.get("id") == Some(addr) => RemoteProfile::Found {
            name: p.get("name").unwrap_or_default().to_owned(),
            note: p.get("note").map(str::to_owned),
        },
        Some(p) if p.get("reason") == Some("unknown-user") => RemoteProfile::Unknown,
        _ => RemoteProfile::NoAnswer("peer-unreachable"),
    }
}
