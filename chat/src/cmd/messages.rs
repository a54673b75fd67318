//! Messages and receipts (PROTOCOL.md §5). `MESSAGE-SENT` is sent only after the group-commit
//! writer has committed the message.

use crate::clock::datetime;
use crate::cmd::{discovery, parse_target, typing, Target};
use crate::db::{DbError, Outcome, PrivacyOp, StoredMessage, WriteOp};
use crate::hub::{encode, Stream};
use crate::session::{InFlight, Session};
use msim_shared::proto::{
    AckMessage, Body, MarkRead, MarkReadFailed, Message, MessageSendFailed, MessageSent,
    ReadFailure, ReadReceipt, SendFailure, SendMessage,
};
use msim_shared::Packet;
use tracing::warn;

/// The `MESSAGE` packet for a stored message.
pub fn message_packet(s: &Session<'_>, m: &StoredMessage) -> Packet {
    Message {
        id: m.id.clone(),
        from: s.addr(&m.sender),
        to: s.addr(&m.recipient),
        at: datetime(m.at),
        text: m.text.clone(),
    }
    .to_packet()
}

pub(crate) fn failed(id: &str, reason: SendFailure) -> Packet {
    MessageSendFailed {
        id: id.to_owned(),
        reason,
    }
    .to_packet()
}

/// `MESSAGE to= text=`: validated, then submitted to the group-commit writer; the session
/// answers it (in request order) once committed, see [`complete`].
pub async fn submit(s: &mut Session<'_>, p: &Packet, r: SendMessage) {
    let Some(login) = s.login().map(str::to_owned) else {
        return;
    };
    let SendMessage { to, text } = r;
    let id = uuid::Uuid::now_v7().to_string();
    let fail = match parse_target(&to, &s.sh.config.domain) {
        None => Err(SendFailure::BadAddress),
        Some(Target::Remote(_)) => Err(SendFailure::FederationDisabled),
        Some(Target::Local(_)) if text.is_empty() => Err(SendFailure::EmptyText),
        Some(Target::Local(_)) if text.len() > s.sh.config.max_text => {
            Err(SendFailure::TextTooLong)
        }
        Some(Target::Local(l)) => Ok(l),
    };
    let recipient = match fail {
        Ok(r) => r,
        Err(reason) => {
            s.drain().await;
            return s.reply(p, failed(&id, reason));
        }
    };
    if let Some(refused) = discovery::check(s, p, &login, &recipient).await {
        s.drain().await;
        return s.reply(p, refused);
    }
    let m = StoredMessage {
        seq: 0,
        id: id.clone(),
        sender: login,
        recipient,
        at: s.sh.config.clock.now_micros(),
        text,
    };
    let reference = p.reference().map(str::to_owned);
    // A recipient who blocked the sender never gets the message; the sender is answered
    // `MESSAGE-SENT` as usual, after the next commit like a stored message (SECURITY.md).
    let discard = s.sh.blocks.is_blocked(&m.recipient, &m.sender);
    let op = if discard {
        WriteOp::Privacy(PrivacyOp::Nothing)
    } else {
        WriteOp::InsertMessage(m.clone())
    };
    match s.sh.writer.submit(op).await {
        Ok(done) => s.pending.push_back(InFlight {
            done,
            reference,
            message: m,
            discard,
        }),
        Err(e) => {
            warn!("message: {e}");
            s.drain().await;
            s.reply(p, failed(&id, SendFailure::StorageError));
        }
    }
}

/// Answers a committed (or failed) message and delivers it.
pub fn complete(
    s: &mut Session<'_>,
    reference: Option<String>,
    m: StoredMessage,
    discard: bool,
    r: Result<Outcome, DbError>,
) {
    let mut seq = 0;
    let answer = match r {
        Ok(Outcome::UnknownUser) => {
            discovery::miss(s, &m.sender);
            failed(&m.id, SendFailure::UnknownRecipient)
        }
        Ok(Outcome::QueueFull) => failed(&m.id, SendFailure::RecipientQueueFull),
        Err(DbError::StorageFull) => failed(&m.id, SendFailure::StorageFull),
        Ok(o) => {
            if let Outcome::Stored(n) = o {
                seq = n;
            }
            MessageSent {
                id: m.id.clone(),
                at: datetime(m.at),
            }
            .to_packet()
        }
        Err(e) => {
            warn!("message: {e}");
            failed(&m.id, SendFailure::StorageError)
        }
    };
    let ok = answer.verb == MessageSent::VERB;
    s.push(&answer.with_opt("ref", reference));
    if !ok {
        return;
    }
    typing::clear(s, &m.recipient);
    let bytes = encode(&message_packet(s, &m));
    if discard {
        // Only the sender's other sessions see it, as for any sent message.
        s.sh.hub.send_except(&m.sender, s.session_id(), &bytes);
        return;
    }
    // Tagged with its seq: a session whose login backlog already had it drops it.
    if m.recipient != m.sender {
        s.sh.hub
            .send_seq(&m.recipient, None, Stream::Messages, seq, &bytes);
        // Carbon copy to the sender's other sessions (never part of their backlog).
        s.sh.hub.send_except(&m.sender, s.session_id(), &bytes);
    } else {
        s.sh.hub
            .send_seq(&m.sender, s.session_id(), Stream::Messages, seq, &bytes);
    }
}

/// `MESSAGE-READ id=` from the recipient.
pub async fn read(s: &mut Session<'_>, p: &Packet, r: MarkRead, login: &str) {
    let id = r.id.as_str();
    let op = WriteOp::MarkRead {
        id: id.to_owned(),
        reader: login.to_owned(),
        at: s.sh.config.clock.now_micros(),
    };
    let fail = |reason: ReadFailure| {
        MarkReadFailed {
            id: id.to_owned(),
            reason,
        }
        .to_packet()
    };
    match s.sh.writer.write(op).await {
        Ok(Outcome::Read {
            sender,
            receipt,
            at,
        }) => {
            let pkt = ReadReceipt {
                id: id.to_owned(),
                by: s.addr(login),
                at: datetime(at),
            };
            let bytes = encode(&pkt.to_packet());
            if s.sh
                .hub
                .send_seq(&sender, None, Stream::Receipts, receipt, &bytes)
                > 0
            {
                s.sh.writer
                    .write_detached(WriteOp::DeleteReceipts(vec![receipt]));
            }
            if sender != login {
                s.sh.hub.send_except(login, s.session_id(), &bytes);
            }
        }
        Ok(_) => s.reply(p, fail(ReadFailure::UnknownMessage)),
        Err(e) => {
            warn!("message read: {e}");
            s.reply(p, fail(ReadFailure::StorageError));
        }
    }
}

/// `MESSAGE-ACK id=`: stop redelivering.
pub fn ack(s: &mut Session<'_>, r: AckMessage, login: &str) {
    s.sh.writer.write_detached(WriteOp::Ack {
        id: r.id,
        recipient: login.to_owned(),
    });
}
