//! Messages and receipts (PROTOCOL.md §5). `MESSAGE-SENT` is sent only after the group-commit
//! writer has committed the message.

use crate::clock::datetime;
use crate::cmd::{discovery, parse_target, typing, Target};
use crate::db::{DbError, Notice, Outcome, PrivacyOp, StoredMessage, WriteOp};
use crate::hub::{encode, Stream};
use crate::server::Shared;
use crate::session::{InFlight, Session};
use msim_shared::proto::{
    AckMessage, Body, MarkRead, MarkReadFailed, Message, MessageSendFailed, MessageSent,
    ReadFailure, ReadReceipt, SendFailure, SendMessage,
};
use msim_shared::Packet;
use tracing::{info, warn};

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

fn failed(id: &str, reason: SendFailure) -> Packet {
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

/// The retention job: every `purge_interval`, [`purge`] until nothing is left to do.
pub async fn purge_loop(sh: std::sync::Arc<Shared>, stop: tokio_util::sync::CancellationToken) {
    let mut tick = tokio::time::interval(sh.config.purge_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {
                // Bounded steps; other writes get their turn in between.
                while purge(&sh).await {
                    tokio::task::yield_now().await;
                }
            }
        }
    }
}

/// One retention step (PROTOCOL.md §5.7): expires pending messages past `message_ttl`
/// (their senders get `MESSAGE-SEND-FAILED reason=expired`, live and at their next logins
/// until `receipt_retention` has passed) and forgets delivered messages and receipts older
/// than `receipt_retention`. Returns whether more is left to do.
pub async fn purge(sh: &Shared) -> bool {
    let c = &sh.config;
    let now = c.clock.now_micros();
    let op = WriteOp::Purge {
        expire_before: now.saturating_sub(c.message_ttl.as_micros() as i64),
        forget_before: now.saturating_sub(c.receipt_retention.as_micros() as i64),
        limit: i64::from(c.purge_batch.max(1)),
    };
    let purged = match sh.writer.write(op).await {
        Ok(Outcome::Purged(p)) => p,
        Ok(_) => return false,
        Err(e) => {
            warn!("message retention: {e}");
            return false;
        }
    };
    if purged.forgotten > 0 || !purged.expired.is_empty() {
        info!(
            expired = purged.expired.len(),
            forgotten = purged.forgotten,
            "message retention"
        );
    }
    if !purged.expired.is_empty() {
        tell_expired(sh, purged.expired, now).await;
    }
    purged.more
}

/// Tells senders that their messages expired: stored (one write for the whole step) for their
/// logins until the receipt retention has passed, and pushed to their live sessions, tagged
/// with the notice's seq so a session logging in meanwhile gets it once.
async fn tell_expired(sh: &Shared, expired: Vec<(String, String)>, now: i64) {
    let expires = now.saturating_add(sh.config.receipt_retention.as_micros() as i64);
    let packets: Vec<(String, Packet)> = expired
        .into_iter()
        .map(|(id, sender)| (sender, failed(&id, SendFailure::Expired)))
        .collect();
    let rows = packets
        .iter()
        .map(|(sender, p)| Notice {
            login: sender.clone(),
            transfer_id: p.get("id").unwrap_or_default().to_owned(),
            packet: p.to_wire(),
            expires_at: expires,
        })
        .collect();
    let seqs = match sh.writer.write(WriteOp::AddNotices(rows)).await {
        Ok(Outcome::Notices(seqs)) => seqs,
        r => {
            if let Err(e) = r {
                warn!("storing expiry notices: {e}");
            }
            Vec::new()
        }
    };
    for (i, (sender, p)) in packets.iter().enumerate() {
        let bytes = encode(p);
        match seqs.get(i) {
            Some(seq) => sh.hub.send_seq(sender, None, Stream::Notices, *seq, &bytes),
            None => sh.hub.send(sender, &bytes),
        };
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
