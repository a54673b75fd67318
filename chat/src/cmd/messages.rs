//! Messages and receipts (PROTOCOL.md §5). `MESSAGE-SENT` is sent only after the group-commit
//! writer has committed the message.

use crate::clock::rfc3339_micros;
use crate::cmd::{parse_target, typing, Target};
use crate::db::{Outcome, StoredMessage, WriteOp};
use crate::hub::encode;
use crate::session::Session;
use msim_shared::Packet;
use tracing::warn;

/// The `MESSAGE` packet for a stored message.
pub fn message_packet(s: &Session<'_>, m: &StoredMessage) -> Packet {
    Packet::new("MESSAGE")
        .with("id", m.id.clone())
        .with("from", s.addr(&m.sender))
        .with("to", s.addr(&m.recipient))
        .with("at", rfc3339_micros(m.at))
        .with("text", m.text.clone())
}

fn failed(id: &str, reason: &str) -> Packet {
    Packet::new("MESSAGE-SEND-FAILED")
        .with("id", id)
        .with("reason", reason)
}

/// `MESSAGE to= text=`.
pub async fn send(s: &mut Session<'_>, p: &Packet, login: &str) {
    let Some(to) = s.require(p, "to") else { return };
    let Some(text) = s.require(p, "text") else {
        return;
    };
    let id = uuid::Uuid::now_v7().to_string();
    let recipient = match parse_target(to, &s.sh.config.domain) {
        None => return s.reply(p, failed(&id, "bad-address")),
        Some(Target::Remote(_)) => return s.reply(p, failed(&id, "federation-disabled")),
        Some(Target::Local(l)) => l,
    };
    if text.is_empty() {
        return s.reply(p, failed(&id, "empty-text"));
    }
    if text.len() > s.sh.config.max_text {
        return s.reply(p, failed(&id, "text-too-long"));
    }
    let m = StoredMessage {
        seq: 0,
        id: id.clone(),
        sender: login.to_owned(),
        recipient: recipient.clone(),
        at: s.sh.config.clock.now_micros(),
        text: text.to_owned(),
    };
    match s.sh.writer.write(WriteOp::InsertMessage(m.clone())).await {
        Ok(Outcome::UnknownUser) => s.reply(p, failed(&id, "unknown-recipient")),
        Ok(_) => {
            s.reply(
                p,
                Packet::new("MESSAGE-SENT")
                    .with("id", id)
                    .with("at", rfc3339_micros(m.at)),
            );
            typing::clear(s, &recipient);
            let bytes = encode(&message_packet(s, &m));
            let me = s.session_id();
            if recipient != login {
                s.sh.hub.send(&recipient, &bytes);
            }
            // Carbon copy to the sender's other sessions.
            s.sh.hub.send_except(login, me, &bytes);
        }
        Err(e) => {
            warn!("message: {e}");
            s.reply(p, failed(&id, "storage-error"));
        }
    }
}

/// `MESSAGE-READ id=` from the recipient.
pub async fn read(s: &mut Session<'_>, p: &Packet, login: &str) {
    let Some(id) = s.require(p, "id") else { return };
    let op = WriteOp::MarkRead {
        id: id.to_owned(),
        reader: login.to_owned(),
        at: s.sh.config.clock.now_micros(),
    };
    let fail = |reason: &str| {
        Packet::new("MESSAGE-READ-FAILED")
            .with("id", id)
            .with("reason", reason)
    };
    match s.sh.writer.write(op).await {
        Ok(Outcome::Read {
            sender,
            receipt,
            at,
        }) => {
            let pkt = Packet::new("MESSAGE-READ")
                .with("id", id)
                .with("by", s.addr(login))
                .with("at", rfc3339_micros(at));
            let bytes = encode(&pkt);
            if s.sh.hub.send(&sender, &bytes) > 0 {
                s.sh.writer
                    .write_detached(WriteOp::DeleteReceipts(vec![receipt]));
            }
            if sender != login {
                s.sh.hub.send_except(login, s.session_id(), &bytes);
            }
        }
        Ok(_) => s.reply(p, fail("unknown-message")),
        Err(e) => {
            warn!("message read: {e}");
            s.reply(p, fail("storage-error"));
        }
    }
}

/// `MESSAGE-ACK id=`: stop redelivering.
pub fn ack(s: &mut Session<'_>, p: &Packet, login: &str) {
    let Some(id) = s.require(p, "id") else { return };
    s.sh.writer.write_detached(WriteOp::Ack {
        id: id.to_owned(),
        recipient: login.to_owned(),
    });
}
