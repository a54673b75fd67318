//! What the client commands do with remote addresses when federation is on.

use crate::clock::datetime;
use crate::cmd::messages::failed;
use crate::db::QueueWrite;
use crate::federation::queue::QueueError;
use crate::hub::encode;
use crate::session::Session;
use msim_shared::proto::{Body, Message, MessageSent, SendFailure};
use msim_shared::Packet;
use tracing::warn;

/// The domain of a canonical remote address.
fn domain_of(addr: &str) -> &str {
    addr.rsplit_once('@').map(|(_, d)| d).unwrap_or(addr)
}

/// `MESSAGE to=<remote>`: queued durably for the peer, then `MESSAGE-SENT` (the message is
/// then delivered or its sender told why not, PROTOCOL.md §12.6).
pub async fn send_message(s: &mut Session<'_>, p: &Packet, login: &str, to: String, text: String) {
    let id = uuid::Uuid::now_v7().to_string();
    let sh = s.sh.clone();
    // Answers stay in request order.
    s.drain().await;
    let Some(fed) = sh.federation.clone() else {
        return s.reply(p, failed(&id, SendFailure::FederationDisabled));
    };
    let reason = if text.is_empty() {
        Some(SendFailure::EmptyText)
    } else if text.len() > sh.config.max_text {
        Some(SendFailure::TextTooLong)
    } else if !fed.config.allows(domain_of(&to)) {
        Some(SendFailure::Other("peer-not-allowed".into()))
    } else {
        None
    };
    if let Some(reason) = reason {
        return s.reply(p, failed(&id, reason));
    }
    let peer = domain_of(&to).to_owned();
    let at = sh.config.clock.now_micros();
    let from = s.addr(login);
    let pkt = Message {
        id: id.clone(),
        from: from.clone(),
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
            sender: login.to_owned(),
            message_id: id.clone(),
            recipient: to.clone(),
            at,
            expires_at: expires,
        })
        .await;
    match queued {
        Ok(_) => {
            s.reply(
                p,
                MessageSent {
                    id: id.clone(),
                    at: datetime(at),
                }
                .to_packet(),
            );
            // Carbon copy to the sender's other sessions.
            sh.hub
                .send_except(login, s.session_id(), &encode(&pkt.to_packet()));
            fed.wake(&sh, &peer);
        }
        Err(QueueError::Full) => s.reply(p, failed(&id, SendFailure::RecipientQueueFull)),
        Err(e) => {
            warn!("federation queue: {e}");
            s.reply(p, failed(&id, SendFailure::StorageError));
        }
    }
}

/// A local user read a message from a remote sender: the receipt goes to the sender's server.
pub async fn forward_receipt(
    sh: &std::sync::Arc<crate::server::Shared>,
    id: &str,
    sender: &str,
    reader: &str,
    at: i64,
) {
    let Some(fed) = sh.federation.clone() else {
        return;
    };
    let peer = domain_of(sender).to_owned();
    let line = Packet::new("S2S-READ")
        .with("id", id)
        .with("by", format!("{reader}@{}", sh.config.domain))
        .with("to", sender)
        .with("at", msim_shared::timestamp::format(datetime(at)))
        .to_wire();
    let expires = at.saturating_add(fed.config.queue_ttl.as_micros() as i64);
    let add = QueueWrite::Add {
        peer: peer.clone(),
        line: line.trim_end().to_owned(),
        sender: String::new(),
        message_id: String::new(),
        recipient: String::new(),
        at,
        expires_at: expires,
    };
    match fed.queue().write(add).await {
        Ok(_) => fed.wake(sh, &peer),
        Err(QueueError::Full) => warn!(%peer, "federation queue full: receipt dropped"),
        Err(e) => warn!("{e}"),
    }
}

/// `TYPING-STARTED`/`-END` to a remote user: sent live if the link is up, else dropped.
pub fn typing(sh: &crate::server::Shared, login: &str, to: &str, started: bool) {
    let Some(fed) = sh.federation.as_ref() else {
        return;
    };
    let peer = domain_of(to);
    if !fed.config.allows(peer) {
        return;
    }
    let p = Packet::new("S2S-TYPING")
        .with("from", format!("{login}@{}", sh.config.domain))
        .with("to", to)
        .with("state", if started { "started" } else { "ended" });
    fed.send_live(peer, p);
}
