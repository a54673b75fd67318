//! What the client commands do with remote addresses when federation is on.

use crate::clock::datetime;
use crate::cmd::messages::failed;
use crate::db::Queued;
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
    let queued = sh
        .db
        .federation_queue_message(
            &peer,
            line.trim_end(),
            login,
            &id,
            &to,
            at,
            expires,
            fed.config.queue_max_per_peer,
        )
        .await;
    match queued {
        Ok(Queued::Stored(_)) => {
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
        Ok(Queued::Full) => s.reply(p, failed(&id, SendFailure::RecipientQueueFull)),
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
    match sh
        .db
        .federation_queue_other(
            &peer,
            line.trim_end(),
            expires,
            fed.config.queue_max_per_peer,
        )
        .await
    {
        Ok(Queued::Stored(_)) => fed.wake(sh, &peer),
        Ok(Queued::Full) => warn!(%peer, "federation queue full: receipt dropped"),
        Err(e) => warn!("federation queue: {e}"),
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
