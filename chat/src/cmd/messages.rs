//! Messages and receipts (PROTOCOL.md §5). `MESSAGE-SENT` is sent only after the group-commit
//! writer has committed the message.

use crate::clock::datetime;
use crate::cmd::context::{addr_in, Ctx, Me, Reply, RequestRef};
use crate::cmd::typing::Typing;
use crate::cmd::{discovery, parse_target, Target};
use crate::db::commit;
use crate::db::{DbError, Outcome, PrivacyOp, StoredMessage, WriteOp};
use crate::hub::{encode, Stream};
use msim_shared::proto::{
    AckMessage, Body, MarkRead, MarkReadFailed, Message, MessageSendFailed, MessageSent,
    ReadFailure, ReadReceipt, SendFailure, SendMessage,
};
use msim_shared::Packet;
use tracing::warn;

/// A `MESSAGE` submitted to the group-commit writer, waiting for its commit.
#[derive(Debug)]
pub(crate) struct InFlight {
    /// Completes once committed.
    pub(crate) done: commit::Pending,
    /// Where the answer goes.
    reply: RequestRef,
    /// The message as stored.
    message: StoredMessage,
    /// The recipient blocked the sender: answered as sent, never stored or delivered.
    discard: bool,
}

/// The `MESSAGE` packet for a stored message.
pub(crate) fn message_packet(ctx: &Ctx<'_>, m: &StoredMessage) -> Packet {
    message_packet_in(&ctx.config.domain, m)
}

/// The `MESSAGE` packet for a stored message of `domain`.
pub(crate) fn message_packet_in(domain: &str, m: &StoredMessage) -> Packet {
    Message {
        id: m.id.clone(),
        from: addr_in(domain, &m.sender),
        to: addr_in(domain, &m.recipient),
        at: datetime(m.at),
        text: m.text.clone(),
    }
    .to_packet()
}

/// The `MESSAGE-READ` receipt packet: message `id` read by `reader` of `domain` at `at`.
pub(crate) fn receipt_packet_in(domain: &str, id: &str, reader: &str, at: i64) -> Packet {
    ReadReceipt {
        id: id.to_owned(),
        by: addr_in(domain, reader),
        at: datetime(at),
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
/// answers it (in request order) once committed, see [`complete`]. `Err`: the answer to send
/// (after the answers to the messages before it).
pub(crate) async fn submit(
    ctx: &Ctx<'_>,
    me: Me<'_>,
    reply: Reply<'_>,
    r: SendMessage,
) -> Result<InFlight, (RequestRef, Packet)> {
    let login = me.login.to_owned();
    let SendMessage { to, text } = r;
    let id = uuid::Uuid::now_v7().to_string();
    let fail = match parse_target(&to, &ctx.config.domain) {
        None => Err(SendFailure::BadAddress),
        Some(Target::Remote(to)) => {
            // Queued for the peer; answered in order after the messages before it.
            let answer = match ctx.federation {
                Some(fed) => crate::federation::hooks::send_message(fed, ctx, me, to, text).await,
                None => failed(&id, SendFailure::FederationDisabled),
            };
            return Err((reply.defer(), answer));
        }
        Some(Target::Local(_)) if text.is_empty() => Err(SendFailure::EmptyText),
        Some(Target::Local(_)) if text.len() > ctx.config.max_text => Err(SendFailure::TextTooLong),
        Some(Target::Local(l)) => Ok(l),
    };
    let recipient = match fail {
        Ok(r) => r,
        Err(reason) => return Err((reply.defer(), failed(&id, reason))),
    };
    if let Some(refused) = discovery::check(ctx, reply.verb(), &login, &recipient).await {
        return Err((reply.defer(), refused));
    }
    let m = StoredMessage {
        seq: 0,
        id: id.clone(),
        sender: login,
        recipient,
        at: ctx.now(),
        text,
    };
    // A recipient who blocked the sender never gets the message; the sender is answered
    // `MESSAGE-SENT` as usual, after the next commit like a stored message (SECURITY.md).
    let discard = ctx.blocks.is_blocked(&m.recipient, &m.sender);
    let op = if discard {
        WriteOp::Privacy(PrivacyOp::Nothing)
    } else {
        WriteOp::InsertMessage(m.clone())
    };
    match ctx.writer.submit(op).await {
        Ok(done) => Ok(InFlight {
            done,
            reply: reply.defer(),
            message: m,
            discard,
        }),
        Err(e) => {
            warn!("message: {e}");
            Err((reply.defer(), failed(&id, SendFailure::StorageError)))
        }
    }
}

/// Answers a committed (or failed) message, through `out`, and delivers it.
pub(crate) fn complete(
    ctx: &Ctx<'_>,
    me: Me<'_>,
    typing: &mut Typing,
    out: &mut crate::session::Outbox,
    f: InFlight,
    r: Result<Outcome, DbError>,
) {
    let InFlight {
        reply,
        message: m,
        discard,
        ..
    } = f;
    let mut seq = 0;
    let answer = match r {
        Ok(Outcome::UnknownUser) => {
            discovery::miss(ctx, &m.sender);
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
    Reply::resume(out, reply).send(answer);
    if !ok {
        return;
    }
    typing.clear(&m.recipient);
    let bytes = encode(&message_packet(ctx, &m));
    if discard {
        // Only the sender's other sessions see it, as for any sent message.
        ctx.hub.send_except(&m.sender, Some(me.session), &bytes);
        return;
    }
    // Tagged with its seq: a session whose login backlog already had it drops it.
    if m.recipient != m.sender {
        ctx.hub
            .send_seq(&m.recipient, None, Stream::Messages, seq, &bytes);
        // Carbon copy to the sender's other sessions (never part of their backlog).
        ctx.hub.send_except(&m.sender, Some(me.session), &bytes);
    } else {
        ctx.hub
            .send_seq(&m.sender, Some(me.session), Stream::Messages, seq, &bytes);
    }
}

/// `MESSAGE-READ id=` from the recipient.
pub(crate) async fn read(ctx: &Ctx<'_>, me: Me<'_>, reply: Reply<'_>, r: MarkRead) {
    let login = me.login;
    let id = r.id.as_str();
    let op = WriteOp::MarkRead {
        id: id.to_owned(),
        reader: login.to_owned(),
        at: ctx.now(),
    };
    let fail = |reason: ReadFailure| {
        MarkReadFailed {
            id: id.to_owned(),
            reason,
        }
        .to_packet()
    };
    match ctx.writer.write(op).await {
        Ok(Outcome::Read {
            sender,
            receipt,
            at,
        }) => {
            let pkt = ReadReceipt {
                id: id.to_owned(),
                by: ctx.addr(login),
                at: datetime(at),
            };
            let bytes = encode(&pkt.to_packet());
            if let (true, Some(fed)) = (sender.contains('@'), ctx.federation) {
                // A remote sender's receipt travels to its server (PROTOCOL.md §12.5).
                ctx.writer
                    .write_detached(WriteOp::DeleteReceipts(vec![receipt]));
                crate::federation::hooks::forward_receipt(fed, ctx, id, &sender, login, at).await;
                ctx.hub.send_except(login, Some(me.session), &bytes);
                return;
            }
            if ctx
                .hub
                .send_seq(&sender, None, Stream::Receipts, receipt, &bytes)
                > 0
            {
                ctx.writer
                    .write_detached(WriteOp::DeleteReceipts(vec![receipt]));
            }
            if sender != login {
                ctx.hub.send_except(login, Some(me.session), &bytes);
            }
        }
        Ok(_) => reply.send(fail(ReadFailure::UnknownMessage)),
        Err(e) => {
            warn!("message read: {e}");
            reply.send(fail(ReadFailure::StorageError));
        }
    }
}

/// `MESSAGE-ACK id=`: stop redelivering.
pub(crate) fn ack(ctx: &Ctx<'_>, me: Me<'_>, r: AckMessage) {
    ctx.writer.write_detached(WriteOp::Ack {
        id: r.id,
        recipient: me.login.to_owned(),
    });
}
