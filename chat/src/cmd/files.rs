//! File negotiation through a relay (PROTOCOL.md §10). msim-chat validates and stores the offer,
//! tells the recipient, and on acceptance picks a healthy relay and issues one capability token
//! per side. Expired offers are rejected by `crate::jobs`, a background task.

use crate::clock::datetime;
use crate::cmd::context::{Ctx, Me, Relays, Reply};
use crate::cmd::notices::{deliver, notify, Note};
use crate::cmd::{discovery, parse_target, Target};
use crate::db::{
    NoticeBody, Offer, OfferLimits, OfferState, Outcome, PrivacyOp, PrivacyOutcome, WriteOp,
};
use crate::hub::{encode, Stream};
use msim_shared::token::{Capability, Direction};
use msim_shared::Packet;
use std::net::SocketAddr;
use tracing::info;

use msim_shared::proto::{
    sanitize_filename, AnswerFailure, Body, DownloadGrant, ErrorMalformed, FileAnswerFailed,
    FileOffered, FilePending, FileRejected, FileRejection, OfferFile, UploadGrant,
};

/// The key under which a client address's open offers are counted: the IPv4 address, or the
/// /64 prefix of an IPv6 address (one host usually holds a whole /64).
pub(crate) fn address_key(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(v4) => v4.to_string(),
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
    }
}

pub(crate) fn valid_sha256(v: &str) -> bool {
    v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit())
}

pub(crate) fn valid_mime(v: &str) -> bool {
    v.len() <= 127
        && v.split_once('/')
            .is_some_and(|(a, b)| !a.is_empty() && !b.is_empty())
        && v.bytes().all(|b| b.is_ascii_graphic())
}

pub(crate) fn rejected(id: &str, reason: FileRejection) -> Packet {
    FileRejected {
        transfer_id: id.to_owned(),
        reason,
    }
    .to_packet()
}

fn bad_value(field: &str) -> Packet {
    ErrorMalformed {
        reason: "bad-value".into(),
        detail: Some(field.into()),
    }
    .to_packet()
}

/// The `SEND-FILE-PROXY-REQUEST` shown to the recipient.
pub(crate) fn request_packet(ctx: &Ctx<'_>, o: &Offer) -> Packet {
    request_packet_in(&ctx.config.domain, o)
}

/// The offer packet for the recipient of an offer of `domain`.
pub(crate) fn request_packet_in(domain: &str, o: &Offer) -> Packet {
    FileOffered {
        transfer_id: o.id.clone(),
        from: crate::cmd::context::addr_in(domain, &o.sender),
        filename: o.filename.clone(),
        size: o.size as u64,
        expires: datetime(o.expires_at),
        sha256: o.sha256.clone(),
        mime: o.mime.clone(),
    }
    .to_packet()
}

/// The state a new offer from `sender` to `recipient` is stored in: hidden when the recipient
/// blocked the sender (never shown, it expires like an ignored one; SECURITY.md).
pub(crate) fn first_state(ctx: &Ctx<'_>, recipient: &str, sender: &str) -> OfferState {
    if ctx.blocks.is_blocked(recipient, sender) {
        OfferState::Hidden
    } else {
        OfferState::Pending
    }
}

/// The open-offer limits (§10.2) a new offer is checked against at `now`.
pub(crate) fn offer_limits(ctx: &Ctx<'_>, now: i64) -> OfferLimits {
    let quota = ctx.config.offer_quota;
    OfferLimits {
        account_count: quota.per_account.min(i64::MAX as u64) as i64,
        account_bytes: quota.bytes_per_account.min(i64::MAX as u64) as i64,
        addr_count: quota.per_address.min(i64::MAX as u64) as i64,
        addr_bytes: quota.bytes_per_address.min(i64::MAX as u64) as i64,
        accepted_since: now - quota.upload_window.as_micros() as i64,
    }
}

/// `SEND-FILE-PROXY to= filename= size= [sha256=] [mime=]`.
pub(crate) async fn offer(
    ctx: &Ctx<'_>,
    relays: &Relays<'_>,
    me: Me<'_>,
    peer: SocketAddr,
    reply: Reply<'_>,
    r: OfferFile,
) {
    let login = me.login;
    let OfferFile {
        to,
        filename,
        size,
        sha256,
        mime,
    } = r;
    let sha256 = sha256.map(|v| v.to_ascii_lowercase());
    if sha256.as_deref().is_some_and(|v| !valid_sha256(v)) {
        return reply.send(bad_value("sha256"));
    }
    if mime.as_deref().is_some_and(|v| !valid_mime(v)) {
        return reply.send(bad_value("mime"));
    }
    let id = uuid::Uuid::now_v7().to_string();
    // A remote recipient (federation on) is stored by address; its server shows the offer.
    let (recipient, remote) = match (parse_target(&to, &ctx.config.domain), ctx.federation) {
        (None, _) => return reply.send(rejected(&id, FileRejection::BadAddress)),
        (Some(Target::Remote(_)), None) => {
            return reply.send(rejected(&id, FileRejection::FederationDisabled))
        }
        (Some(Target::Remote(a)), Some(fed)) => {
            if !crate::federation::files::may_offer(fed, &a) {
                return reply.send(rejected(
                    &id,
                    FileRejection::Other("peer-not-allowed".into()),
                ));
            }
            (a, true)
        }
        (Some(Target::Local(l)), _) => (l, false),
    };
    if size > ctx.config.max_file_size || size > i64::MAX as u64 {
        return reply.send(rejected(&id, FileRejection::FileTooLarge));
    }
    let Some(filename) = sanitize_filename(&filename) else {
        return reply.send(rejected(&id, FileRejection::BadFilename));
    };
    if !relays.pool.any_healthy() {
        return reply.send(rejected(&id, FileRejection::NoRelay));
    }
    if !remote {
        if let Some(refused) = discovery::check(ctx, reply.verb(), login, &recipient).await {
            return reply.send(refused);
        }
    }
    let now = ctx.now();
    let o = Offer {
        id: id.clone(),
        sender: login.to_owned(),
        recipient: recipient.clone(),
        filename,
        size: size as i64,
        sha256,
        mime,
        created_at: now,
        expires_at: now + ctx.config.offer_ttl.as_micros() as i64,
        state: first_state(ctx, &recipient, login),
        relay: None,
    };
    let op = PrivacyOp::CreateOffer {
        offer: Box::new(o.clone()),
        addr: address_key(peer.ip()),
        limits: offer_limits(ctx, now),
    };
    match ctx.writer.write(WriteOp::Privacy(op)).await {
        Ok(Outcome::Privacy(PrivacyOutcome::TooManyOffers)) => {
            reply.send(rejected(&id, FileRejection::TooManyOffers))
        }
        Ok(Outcome::Privacy(PrivacyOutcome::OfferQuotaExceeded)) => {
            reply.send(rejected(&id, FileRejection::OfferQuotaExceeded))
        }
        Ok(Outcome::Stored(_)) if o.state == OfferState::Hidden => {
            let pending = FilePending {
                transfer_id: id,
                to: ctx.addr(&recipient),
                expires: datetime(o.expires_at),
            };
            reply.send(pending.to_packet());
        }
        Ok(Outcome::Stored(seq)) => {
            let pending = FilePending {
                transfer_id: id,
                to: ctx.addr(&recipient),
                expires: datetime(o.expires_at),
            };
            reply.send(pending.to_packet());
            if let (true, Some(fed)) = (remote, ctx.federation) {
                return crate::federation::files::offered(fed, ctx, &o).await;
            }
            let req = encode(&request_packet(ctx, &o));
            ctx.hub
                .send_seq(&recipient, None, Stream::Offers, seq, &req);
        }
        Ok(Outcome::UnknownUser) => {
            discovery::miss(ctx, login);
            reply.send(rejected(&id, FileRejection::UnknownRecipient));
        }
        Ok(_) | Err(_) => reply.send(rejected(&id, FileRejection::StorageError)),
    }
}

/// `SEND-FILE-PROXY-ACCEPT` / `SEND-FILE-PROXY-REJECT transfer-id=`.
/// (`AcceptFile` and `RejectFile` carry just the `transfer_id`.)
pub(crate) async fn answer(
    ctx: &Ctx<'_>,
    relays: &Relays<'_>,
    me: Me<'_>,
    reply: Reply<'_>,
    id: String,
    accept: bool,
) {
    let login = me.login;
    let fail = |reason: AnswerFailure| {
        FileAnswerFailed {
            transfer_id: id.clone(),
            reason,
        }
        .to_packet()
    };
    // An offer from a remote sender is answered through the sender's server (§12.10).
    let (reply, read) = match ctx.federation {
        Some(fed) => {
            match crate::federation::files::answer(fed, ctx, login, reply, &id, accept).await {
                Some(reply) => (reply, ctx.db.offer_by_id(&id).await),
                None => return,
            }
        }
        // Federation switched off since a remote sender's offer was stored: not ours to grant.
        // The offer read for this check is the one the results are planned from (one read
        // on the acceptance's path, not two).
        None => match ctx.db.offer_by_id(&id).await {
            Ok(Some(o)) if o.sender.contains('@') => {
                return reply.send(fail(AnswerFailure::Other("federation-disabled".into())))
            }
            read => (reply, read),
        },
    };
    let relay = if accept { relays.pool.peek() } else { None };
    // The answer's results (the grants, or the rejection) are made from the offer as read now
    // and stored in the answer's own transaction: one commit (one fsync) before the sender
    // hears, instead of two. An offer no longer pending by then is refused by the write, which
    // then stores nothing of them.
    let planned = match read {
        Ok(Some(o)) if o.recipient == login && o.state == OfferState::Pending => {
            Some(results(ctx, relays, &o, relay.as_deref(), accept))
        }
        _ => None,
    };
    let (notes, expires) = planned.unwrap_or_default();
    let op = WriteOp::AnswerWithResults {
        id: id.clone(),
        by: login.to_owned(),
        relay: relay.as_ref().map(|r| r.base.clone()),
        now: ctx.now(),
        results: notes.iter().map(|n| n.stored(expires)).collect(),
    };
    let (offer, seqs) = match ctx.writer.write(op).await {
        Ok(Outcome::AnsweredWithResults(o, seqs)) => (o, seqs),
        Ok(Outcome::UnknownTransfer) => return reply.send(fail(AnswerFailure::UnknownTransfer)),
        Ok(Outcome::NotRecipient) => return reply.send(fail(AnswerFailure::NotRecipient)),
        Ok(Outcome::AlreadyAnswered) => return reply.send(fail(AnswerFailure::AlreadyAnswered)),
        Ok(Outcome::OfferExpired) => return reply.send(fail(AnswerFailure::Expired)),
        Ok(_) | Err(_) => return reply.send(fail(AnswerFailure::StorageError)),
    };
    if notes.is_empty() {
        // Not planned (the read failed): stored in a second commit, as the results of an
        // answer always were.
        let (notes, expires) = results(ctx, relays, &offer, relay.as_deref(), accept);
        notify(ctx, expires, notes).await;
    } else {
        deliver(ctx, &notes, &seqs);
    }
}

/// What the users are told of the answer to `offer` (§10.3, §10.6), and until when it is kept
/// for their logins (micros): the grants on `relay`; or the rejection (`rejected`, or
/// `no-relay` for both sides when accepted without a healthy relay).
fn results(
    ctx: &Ctx<'_>,
    relays: &Relays<'_>,
    offer: &Offer,
    relay: Option<&crate::relays::Relay>,
    accept: bool,
) -> (Vec<Note>, i64) {
    let Some(relay) = relay else {
        let reason = if accept {
            FileRejection::NoRelay
        } else {
            FileRejection::Rejected
        };
        info!(transfer = %offer.id, reason = reason.as_str(), "offer rejected");
        let result = NoticeBody::rejected(&offer.id, reason);
        let expires = ctx.now() + ctx.config.offer_ttl.as_micros() as i64;
        let mut to = vec![offer.sender.clone()];
        if accept {
            to.push(offer.recipient.clone());
        }
        let notes = to
            .into_iter()
            .map(|login| Note::new(login, &offer.id, result.clone()))
            .collect();
        return (notes, expires);
    };
    let (ok, ready, expires_micros) = grants(ctx, relays, offer, relay);
    let notes = vec![
        Note::new(offer.sender.clone(), &offer.id, NoticeBody::UploadGrant(ok)),
        Note::new(
            offer.recipient.clone(),
            &offer.id,
            NoticeBody::DownloadGrant(ready),
        ),
    ];
    (notes, expires_micros)
}

/// Downloads (`GET`s, resumed ones included) the relay allows per transfer with the tokens
/// msim-chat issues (PROTOCOL.md §11.5): plenty for a recipient's devices and their retries,
/// while one token cannot open downloads without end (with the relay's bound on downloads in
/// progress at once, §11.7).
pub(crate) const TOKEN_MAX_DOWNLOADS: u32 = 64;

/// The upload grant for the sender and the download grant for the recipient of an accepted
/// `offer` on `relay`, and when their tokens expire (micros).
pub(crate) fn grants(
    ctx: &Ctx<'_>,
    relays: &Relays<'_>,
    offer: &Offer,
    relay: &crate::relays::Relay,
) -> (UploadGrant, DownloadGrant, i64) {
    relays.pool.used(relay);
    let expires_micros = ctx.now() + ctx.config.token_ttl.as_micros() as i64;
    let cap = |direction| Capability {
        transfer_id: offer.id.clone(),
        direction,
        size: offer.size as u64,
        sha256: offer.sha256.clone(),
        sender: ctx.addr(&offer.sender),
        max_downloads: Some(TOKEN_MAX_DOWNLOADS),
        expires: (expires_micros / 1_000_000) as u64,
    };
    let up = relays.keyring.sign(&cap(Direction::Upload));
    let down = relays.keyring.sign(&cap(Direction::Download));
    let expires = datetime(expires_micros);
    let url = relay.transfer_url(&offer.id);
    info!(transfer = %offer.id, relay = %relay.base, "offer accepted");
    let ok = UploadGrant {
        transfer_id: offer.id.clone(),
        connect: relay.host.clone(),
        port: relay.port,
        url: url.clone(),
        token: up,
        expires,
    };
    let ready = DownloadGrant {
        transfer_id: offer.id.clone(),
        from: ctx.addr(&offer.sender),
        filename: offer.filename.clone(),
        size: offer.size as u64,
        connect: relay.host.clone(),
        port: relay.port,
        url,
        token: down,
        expires,
        sha256: offer.sha256.clone(),
        mime: offer.mime.clone(),
    };
    (ok, ready, expires_micros)
}
