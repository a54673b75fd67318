//! File offers across servers (PROTOCOL.md §12.10). The file stays on the **sender's** relay:
//! the sender's server stores the offer and forwards it (`S2S-FILE-OFFER`); the recipient's
//! server stores a copy, shows it and sends the answer back (`S2S-FILE-ANSWER`); on acceptance
//! the sender's server picks one of its relays, gives its user the upload grant and sends the
//! download grant over (`S2S-FILE-READY`), whose token only that relay accepts and only for
//! that transfer. A refusal or a failure on either side closes the other's copy
//! (`S2S-FILE-CLOSED`). Both copies expire at the offer's `expires` on their own.

use super::answers::{ack, addressed, refused, retry, Handled};
use super::Federation;
use crate::clock::datetime;
use crate::cmd::context::{Ctx, Relays, Reply};
use crate::cmd::files::{
    first_state, grants, offer_limits, request_packet, valid_mime, valid_sha256,
};
use crate::cmd::notices::{notify, Note};
use crate::db::{
    NoticeBody, Offer, OfferState, Outcome, PrivacyOp, PrivacyOutcome, QueueWrite, WriteOp,
};
use crate::hub::{encode, Stream};
use crate::server::Shared;
use msim_shared::proto::{
    sanitize_filename, AnswerFailure, Body, DownloadGrant, FileAnswerFailed, FileRejection,
};
use msim_shared::Packet;
use tracing::{info, warn};

/// Longest `url`, `token` and `connect` accepted in a download grant from a peer.
const MAX_URL: usize = 2048;
const MAX_TOKEN: usize = 4096;
const MAX_HOST: usize = 255;
/// Shortest life of a remote offer's copy here (µs; capped by the offer TTL): one hour.
const MIN_OFFER_LIFETIME: i64 = 3_600_000_000;
/// Appended to an accepted remote offer's relay marker once its download grant arrived.
const READY_MARK: &str = "#ready";

/// The domain of a canonical address.
fn domain_of(addr: &str) -> &str {
    addr.rsplit_once('@').map_or(addr, |(_, d)| d)
}

/// Whether an offer to remote address `to` may be made (the policy allows its domain).
pub(crate) fn may_offer(fed: &Federation, to: &str) -> bool {
    fed.config.allows(domain_of(to))
}

/// The queue budget of replies to `peer`'s packets (§12.5): a peer's packets cannot use up
/// the local users' budgets.
fn peer_budget(peer: &str) -> String {
    super::queue::reply_budget(peer)
}

/// Queues a packet for `peer`, charged to `budget` (the local user it is for, or
/// [`peer_budget`]); false when it could not be queued.
async fn queue(fed: &Federation, ctx: &Ctx<'_>, peer: &str, budget: &str, p: Packet) -> bool {
    let add = QueueWrite::Add {
        peer: peer.to_owned(),
        line: p.to_wire().trim_end().to_owned(),
        sender: budget.to_owned(),
        message_id: String::new(),
        recipient: String::new(),
        at: ctx.now(),
        expires_at: ctx
            .now()
            .saturating_add(fed.config.queue_ttl.as_micros() as i64),
        merge_key: String::new(),
    };
    match fed.queue().write(add).await {
        Ok(_) => {
            fed.wake(peer);
            true
        }
        Err(e) => {
            warn!(%peer, verb = %p.verb, "federation queue: {e}: dropped");
            false
        }
    }
}

/// Tells local user `login` that transfer `id` ended with `reason` (stored for later logins
/// like every file result, §10.6).
pub(super) async fn tell(ctx: &Ctx<'_>, login: &str, id: &str, reason: FileRejection) {
    let expires = ctx.now() + ctx.config.offer_ttl.as_micros() as i64;
    let note = Note::new(login.to_owned(), id, NoticeBody::rejected(id, reason));
    notify(ctx, expires, vec![note]).await;
}

fn closed(id: &str, from: &str, to: &str, reason: &str) -> Packet {
    Packet::new("S2S-FILE-CLOSED")
        .with("transfer-id", id)
        .with("from", from)
        .with("to", to)
        .with("reason", reason)
}

// ---- The sender's server ----

/// A local user's offer to a remote user was stored: forward it.
pub(crate) async fn offered(fed: &Federation, ctx: &Ctx<'_>, o: &Offer) {
    let p = Packet::new("S2S-FILE-OFFER")
        .with("transfer-id", o.id.clone())
        .with("from", ctx.addr(&o.sender))
        .with("to", o.recipient.clone())
        .with("filename", o.filename.clone())
        .with("size", o.size.to_string())
        .with(
            "expires",
            msim_shared::timestamp::format(datetime(o.expires_at)),
        )
        .with_opt("sha256", o.sha256.clone())
        .with_opt("mime", o.mime.clone());
    if !queue(fed, ctx, domain_of(&o.recipient), &o.sender, p).await {
        // Never shown to the recipient: closed now rather than left to expire.
        let op = WriteOp::AnswerOffer {
            sender: None,
            id: o.id.clone(),
            by: o.recipient.clone(),
            relay: None,
            now: ctx.now(),
        };
        let _ = ctx.writer.write(op).await;
        tell(
            ctx,
            &o.sender,
            &o.id,
            FileRejection::Other("peer-unreachable".into()),
        )
        .await;
    }
}

/// The remote recipient answered: on acceptance, grants from one of our relays.
async fn answered(
    sh: &Shared,
    qid: &str,
    from: &str,
    login: &str,
    id: &str,
    accept: bool,
) -> Handled {
    let Some(fed) = sh.federation.as_deref() else {
        return Handled::Nothing;
    };
    let ctx = Ctx::new(sh);
    let relays = Relays::new(sh);
    let relay = if accept { relays.pool.peek() } else { None };
    let op = WriteOp::AnswerOffer {
        sender: Some(login.to_owned()),
        id: id.to_owned(),
        by: from.to_owned(),
        relay: relay.as_ref().map(|r| r.base.clone()),
        now: ctx.now(),
    };
    let offer = match ctx.writer.write(op).await {
        Ok(Outcome::Answered(o)) => o,
        Ok(Outcome::UnknownTransfer | Outcome::NotRecipient) => {
            return Handled::Reply(refused(qid, "unknown-transfer"))
        }
        Ok(Outcome::OfferExpired) => {
            let p = closed(id, &ctx.addr(login), from, "expired");
            queue(fed, &ctx, domain_of(from), &peer_budget(domain_of(from)), p).await;
            return Handled::Reply(ack(qid));
        }
        Ok(Outcome::AlreadyAnswered) => return Handled::Reply(ack(qid)),
        Ok(_) | Err(_) => return Handled::Retry(retry(qid, 5)),
    };
    let Some(relay) = relay else {
        let reason = if accept {
            FileRejection::NoRelay
        } else {
            FileRejection::Rejected
        };
        info!(transfer = %id, reason = reason.as_str(), "remote offer rejected");
        if accept {
            let p = closed(id, &ctx.addr(login), from, reason.as_str());
            queue(fed, &ctx, domain_of(from), &peer_budget(domain_of(from)), p).await;
        }
        tell(&ctx, login, id, reason).await;
        return Handled::Reply(ack(qid));
    };
    let (ok, ready, expires) = grants(&ctx, &relays, &offer, &relay);
    let p = Packet::new("S2S-FILE-READY")
        .with("transfer-id", id)
        .with("from", ctx.addr(login))
        .with("to", from)
        .with("connect", ready.connect)
        .with("port", ready.port.to_string())
        .with("url", ready.url)
        .with("token", ready.token)
        .with("expires", msim_shared::timestamp::format(ready.expires));
    queue(fed, &ctx, domain_of(from), &peer_budget(domain_of(from)), p).await;
    let note = Note::new(login.to_owned(), id, NoticeBody::UploadGrant(ok));
    notify(&ctx, expires, vec![note]).await;
    Handled::Reply(ack(qid))
}

// ---- The recipient's server ----

/// `SEND-FILE-PROXY-ACCEPT`/`-REJECT` of an offer: one from a remote sender is answered here
/// (the answer goes to the sender's server); otherwise the reply is handed back.
pub(crate) async fn answer<'o>(
    fed: &Federation,
    ctx: &Ctx<'_>,
    login: &str,
    reply: Reply<'o>,
    id: &str,
    accept: bool,
) -> Option<Reply<'o>> {
    let offer = match ctx.db.offer_by_id(id).await {
        Ok(Some(o)) if o.sender.contains('@') => o,
        _ => return Some(reply),
    };
    let fail = |reason: AnswerFailure| {
        FileAnswerFailed {
            transfer_id: id.to_owned(),
            reason,
        }
        .to_packet()
    };
    let peer = domain_of(&offer.sender).to_owned();
    let op = WriteOp::AnswerOffer {
        sender: None,
        id: id.to_owned(),
        by: login.to_owned(),
        // Accepted offers name their relay; this one is on the sender's side.
        relay: accept.then(|| format!("s2s:{peer}")),
        now: ctx.now(),
    };
    let failure = match ctx.writer.write(op).await {
        Ok(Outcome::Answered(_)) => None,
        Ok(Outcome::UnknownTransfer) => Some(AnswerFailure::UnknownTransfer),
        Ok(Outcome::NotRecipient) => Some(AnswerFailure::NotRecipient),
        Ok(Outcome::AlreadyAnswered) => Some(AnswerFailure::AlreadyAnswered),
        Ok(Outcome::OfferExpired) => Some(AnswerFailure::Expired),
        Ok(_) | Err(_) => Some(AnswerFailure::StorageError),
    };
    if let Some(reason) = failure {
        reply.send(fail(reason));
        return None;
    }
    let p = Packet::new("S2S-FILE-ANSWER")
        .with("transfer-id", id)
        .with("from", ctx.addr(login))
        .with("to", offer.sender.clone())
        .with("answer", if accept { "accept" } else { "reject" });
    if !queue(fed, ctx, &peer, login, p).await && accept {
        tell(
            ctx,
            login,
            id,
            FileRejection::Other("peer-unreachable".into()),
        )
        .await;
    }
    None
}

/// Stores and shows an offer from a remote sender.
async fn offer_in(sh: &Shared, peer: &str, from: String, login: String, p: &Packet) -> Handled {
    let qid = p.get("qid").unwrap_or_default();
    let malformed = || Handled::Violation(refused(qid, "malformed"));
    let (Some(id), Some(filename), Some(size), Some(expires)) = (
        p.get("transfer-id"),
        p.get("filename"),
        p.get("size").and_then(|s| s.parse::<u64>().ok()),
        p.get("expires").and_then(msim_shared::timestamp::parse),
    ) else {
        return malformed();
    };
    let sha256 = p.get("sha256").map(str::to_ascii_lowercase);
    let mime = p.get("mime").map(str::to_owned);
    if uuid::Uuid::parse_str(id).is_err()
        || id.len() != 36
        || size > i64::MAX as u64
        || sha256.as_deref().is_some_and(|v| !valid_sha256(v))
        || mime.as_deref().is_some_and(|v| !valid_mime(v))
    {
        return malformed();
    }
    let Some(filename) = sanitize_filename(filename) else {
        return malformed();
    };
    let Some(fed) = sh.federation.as_deref() else {
        return Handled::Nothing;
    };
    let ctx = Ctx::new(sh);
    let id = id.to_ascii_lowercase();
    // A resend of an offer already stored (its acknowledgement was lost).
    match ctx.db.offer_by_id(&id).await {
        Ok(Some(o)) if o.sender == from && o.recipient == login => return Handled::Reply(ack(qid)),
        Ok(Some(_)) => return Handled::Reply(refused(qid, "malformed")),
        Ok(None) => {}
        Err(e) => {
            warn!("s2s offer: {e}");
            return Handled::Retry(retry(qid, 5));
        }
    }
    // Our own file size limit holds for remote senders too: a peer's offer above it (or
    // declaring 0 bytes and streaming more: the recipient's client takes the size as exact)
    // is closed back rather than shown.
    if size > ctx.config.max_file_size {
        let back = closed(
            &id,
            &ctx.addr(&login),
            &from,
            FileRejection::FileTooLarge.as_str(),
        );
        queue(fed, &ctx, peer, &peer_budget(peer), back).await;
        return Handled::Reply(ack(qid));
    }
    let now = ctx.now();
    // The sender's server decides when it lapses, within our own offer TTL, and not sooner
    // than a floor: offers lapsing within seconds would free the offer limits below for the
    // next ones at once (the recipient's answer after the sender's expiry is closed there).
    let ttl = ctx.config.offer_ttl.as_micros() as i64;
    let asked = (expires.unix_timestamp_nanos() / 1000) as i64;
    if asked <= now {
        return Handled::Reply(ack(qid));
    }
    let expires_at = asked.clamp(now + ttl.min(MIN_OFFER_LIFETIME), now + ttl);
    let o = Offer {
        id: id.clone(),
        sender: from.clone(),
        recipient: login.clone(),
        filename,
        size: size as i64,
        sha256,
        mime,
        created_at: now,
        expires_at,
        state: first_state(&ctx, &login, &from),
        relay: None,
    };
    // A remote sender's open offers count against its account, and all of a peer's together
    // against one "address", with the local limits (§10.2).
    let op = PrivacyOp::CreateOffer {
        offer: Box::new(o.clone()),
        addr: peer_budget(peer),
        limits: offer_limits(&ctx, now),
    };
    let refusal = match ctx.writer.write(WriteOp::Privacy(op)).await {
        Ok(Outcome::Stored(seq)) => {
            if o.state != OfferState::Hidden {
                let req = encode(&request_packet(&ctx, &o));
                sh.hub.send_seq(&login, None, Stream::Offers, seq, &req);
            }
            return Handled::Reply(ack(qid));
        }
        Ok(Outcome::UnknownUser) => FileRejection::UnknownRecipient,
        Ok(Outcome::Privacy(PrivacyOutcome::TooManyOffers)) => FileRejection::TooManyOffers,
        Ok(Outcome::Privacy(PrivacyOutcome::OfferQuotaExceeded)) => {
            FileRejection::OfferQuotaExceeded
        }
        Ok(_) | Err(_) => return Handled::Retry(retry(qid, 5)),
    };
    let back = closed(&id, &ctx.addr(&login), &from, refusal.as_str());
    queue(fed, &ctx, peer, &peer_budget(peer), back).await;
    Handled::Reply(ack(qid))
}

/// The sender's server sent the download grant of an offer our user accepted.
async fn ready_in(sh: &Shared, from: &str, login: &str, p: &Packet) -> Handled {
    let qid = p.get("qid").unwrap_or_default();
    let malformed = || Handled::Violation(refused(qid, "malformed"));
    let (Some(id), Some(connect), Some(port), Some(url), Some(token), Some(expires)) = (
        p.get("transfer-id"),
        p.get("connect"),
        p.get("port").and_then(|s| s.parse::<u16>().ok()),
        p.get("url"),
        p.get("token"),
        p.get("expires").and_then(msim_shared::timestamp::parse),
    ) else {
        return malformed();
    };
    let plain = |s: &str, max: usize| s.len() <= max && s.bytes().all(|b| b.is_ascii_graphic());
    let Some(fed) = sh.federation.as_deref() else {
        return Handled::Nothing;
    };
    let id = id.to_ascii_lowercase();
    if uuid::Uuid::parse_str(&id).is_err()
        || !super::grant_url::valid(url, &id, connect, port, fed.config.allow_private)
        || !plain(url, MAX_URL)
        || !plain(token, MAX_TOKEN)
        || !plain(connect, MAX_HOST)
        || connect.is_empty()
    {
        return malformed();
    }
    let ctx = Ctx::new(sh);
    let offer = match ctx.db.offer_by_id(&id).await {
        Ok(Some(o))
            if o.sender == from && o.recipient == login && o.state == OfferState::Accepted =>
        {
            o
        }
        Ok(_) => return Handled::Reply(refused(qid, "unknown-transfer")),
        Err(e) => {
            warn!("s2s file ready: {e}");
            return Handled::Retry(retry(qid, 5));
        }
    };
    // One grant per accepted offer: a repeat is acknowledged, not stored again.
    if offer
        .relay
        .as_deref()
        .is_some_and(|r| r.ends_with(READY_MARK))
    {
        return Handled::Reply(ack(qid));
    }
    match ctx
        .db
        .offer_mark_ready(&offer.id, offer.relay.as_deref().unwrap_or_default())
        .await
    {
        Ok(true) => {}
        Ok(false) => return Handled::Reply(ack(qid)),
        Err(e) => {
            warn!("s2s file ready: {e}");
            return Handled::Retry(retry(qid, 5));
        }
    }
    let now = ctx.now();
    let expires_micros = ((expires.unix_timestamp_nanos() / 1000) as i64)
        .min(now + ctx.config.token_ttl.as_micros() as i64);
    let ready = DownloadGrant {
        transfer_id: offer.id.clone(),
        from: offer.sender.clone(),
        filename: offer.filename.clone(),
        size: offer.size as u64,
        connect: connect.to_owned(),
        port,
        url: url.to_owned(),
        token: token.to_owned(),
        expires: datetime(expires_micros),
        sha256: offer.sha256.clone(),
        mime: offer.mime.clone(),
    };
    let note = Note::new(
        login.to_owned(),
        &offer.id,
        NoticeBody::DownloadGrant(ready),
    );
    notify(&ctx, expires_micros, vec![note]).await;
    Handled::Reply(ack(qid))
}

/// The other server closed a transfer: refused the offer (we sent it), or found no relay or
/// the offer expired (we accepted it).
async fn closed_in(sh: &Shared, from: &str, login: &str, p: &Packet) -> Handled {
    let qid = p.get("qid").unwrap_or_default();
    let (Some(id), Some(reason)) = (p.get("transfer-id"), p.get("reason")) else {
        return Handled::Violation(refused(qid, "malformed"));
    };
    // Only the reasons of §10.5, about a transfer id.
    let reason = FileRejection::parse(reason);
    if matches!(reason, FileRejection::Other(_)) || uuid::Uuid::parse_str(id).is_err() {
        return Handled::Violation(refused(qid, "malformed"));
    }
    let id = &id.to_ascii_lowercase();
    let ctx = Ctx::new(sh);
    let offer = match ctx.db.offer_by_id(id).await {
        Ok(Some(o)) => o,
        Ok(None) => return Handled::Reply(ack(qid)),
        Err(e) => {
            warn!("s2s file closed: {e}");
            return Handled::Retry(retry(qid, 5));
        }
    };
    if offer.sender == login && offer.recipient == from {
        // Ours, refused by the recipient's server: no longer open.
        let op = WriteOp::AnswerOffer {
            sender: Some(login.to_owned()),
            id: id.to_owned(),
            by: from.to_owned(),
            relay: None,
            now: ctx.now(),
        };
        if let Ok(Outcome::Answered(_)) = ctx.writer.write(op).await {
            tell(&ctx, login, id, reason).await;
        }
    } else if offer.sender == from && offer.recipient == login {
        // Our copy closes once; the user hears of it only then, and never of a hidden offer.
        let closed = if reason == FileRejection::Expired {
            OfferState::Expired
        } else {
            OfferState::Rejected
        };
        let open = [
            OfferState::Pending,
            OfferState::Hidden,
            OfferState::Accepted,
        ];
        if !open.contains(&offer.state) {
            return Handled::Reply(ack(qid));
        }
        match ctx.db.offer_move(id, offer.state, closed).await {
            Ok(true) if offer.state != OfferState::Hidden => tell(&ctx, login, id, reason).await,
            Ok(_) => {}
            Err(e) => {
                warn!("s2s file closed: {e}");
                return Handled::Retry(retry(qid, 5));
            }
        }
    }
    Handled::Reply(ack(qid))
}

/// `S2S-FILE-OFFER`, `S2S-FILE-ANSWER`, `S2S-FILE-READY`, `S2S-FILE-CLOSED` from `peer`.
pub(super) async fn handle(sh: &Shared, peer: &str, p: Packet) -> Handled {
    let (qid, from, login) = match addressed(sh, peer, &p) {
        Ok(x) => x,
        Err(refusal) => return refusal,
    };
    match p.verb.as_str() {
        "S2S-FILE-OFFER" => offer_in(sh, peer, from, login, &p).await,
        "S2S-FILE-READY" => ready_in(sh, &from, &login, &p).await,
        "S2S-FILE-CLOSED" => closed_in(sh, &from, &login, &p).await,
        "S2S-FILE-ANSWER" => {
            let (Some(id), Some(answer)) = (p.get("transfer-id"), p.get("answer")) else {
                return Handled::Violation(refused(&qid, "malformed"));
            };
            let accept = match answer {
                "accept" => true,
                "reject" => false,
                _ => return Handled::Violation(refused(&qid, "malformed")),
            };
            answered(sh, &qid, &from, &login, id, accept).await
        }
        _ => Handled::Nothing,
    }
}
