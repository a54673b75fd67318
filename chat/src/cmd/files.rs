//! File negotiation through a relay (PROTOCOL.md §10). msim-chat validates and stores the offer,
//! tells the recipient, and on acceptance picks a healthy relay and issues one capability token
//! per side. Expired offers are rejected by [`sweep`], run by a background task.

use crate::clock::datetime;
use crate::cmd::{discovery, parse_target, Target};
use crate::db::{
    Notice, Offer, OfferLimits, OfferState, Outcome, PrivacyOp, PrivacyOutcome, WriteOp,
};
use crate::hub::{encode, Stream};
use crate::server::Shared;
use crate::session::Session;
use msim_shared::token::{Capability, Direction};
use msim_shared::Packet;
use tracing::{info, warn};

use msim_shared::proto::{
    sanitize_filename, AnswerFailure, Body, DownloadGrant, ErrorMalformed, FileAnswerFailed,
    FileOffered, FilePending, FileRejected, FileRejection, OfferFile, UploadGrant,
};

/// The key under which a client address's open offers are counted: the IPv4 address, or the
/// /64 prefix of an IPv6 address (one host usually holds a whole /64).
pub fn address_key(ip: std::net::IpAddr) -> String {
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

fn valid_sha256(v: &str) -> bool {
    v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit())
}

fn valid_mime(v: &str) -> bool {
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
pub fn request_packet(s: &Session<'_>, o: &Offer) -> Packet {
    FileOffered {
        transfer_id: o.id.clone(),
        from: s.addr(&o.sender),
        filename: o.filename.clone(),
        size: o.size as u64,
        expires: datetime(o.expires_at),
        sha256: o.sha256.clone(),
        mime: o.mime.clone(),
    }
    .to_packet()
}

/// `SEND-FILE-PROXY to= filename= size= [sha256=] [mime=]`.
pub async fn offer(s: &mut Session<'_>, p: &Packet, r: OfferFile, login: &str) {
    let OfferFile {
        to,
        filename,
        size,
        sha256,
        mime,
    } = r;
    let sha256 = sha256.map(|v| v.to_ascii_lowercase());
    if sha256.as_deref().is_some_and(|v| !valid_sha256(v)) {
        return s.reply(p, bad_value("sha256"));
    }
    if mime.as_deref().is_some_and(|v| !valid_mime(v)) {
        return s.reply(p, bad_value("mime"));
    }
    let id = uuid::Uuid::now_v7().to_string();
    let recipient = match parse_target(&to, &s.sh.config.domain) {
        None => return s.reply(p, rejected(&id, FileRejection::BadAddress)),
        Some(Target::Remote(_)) => {
            return s.reply(p, rejected(&id, FileRejection::FederationDisabled))
        }
        Some(Target::Local(l)) => l,
    };
    if size > s.sh.config.max_file_size || size > i64::MAX as u64 {
        return s.reply(p, rejected(&id, FileRejection::FileTooLarge));
    }
    let Some(filename) = sanitize_filename(&filename) else {
        return s.reply(p, rejected(&id, FileRejection::BadFilename));
    };
    if !s.sh.relays.any_healthy() {
        return s.reply(p, rejected(&id, FileRejection::NoRelay));
    }
    if let Some(refused) = discovery::check(s, p, login, &recipient).await {
        return s.reply(p, refused);
    }
    let now = s.sh.config.clock.now_micros();
    let o = Offer {
        id: id.clone(),
        sender: login.to_owned(),
        recipient: recipient.clone(),
        filename,
        size: size as i64,
        sha256,
        mime,
        created_at: now,
        expires_at: now + s.sh.config.offer_ttl.as_micros() as i64,
        // An offer to a recipient who blocked the sender is stored hidden: never shown, it
        // expires like an ignored one (SECURITY.md).
        state: if s.sh.blocks.is_blocked(&recipient, login) {
            OfferState::Hidden
        } else {
            OfferState::Pending
        },
        relay: None,
    };
    let quota = s.sh.config.offer_quota;
    let limits = OfferLimits {
        account_count: quota.per_account.min(i64::MAX as u64) as i64,
        account_bytes: quota.bytes_per_account.min(i64::MAX as u64) as i64,
        addr_count: quota.per_address.min(i64::MAX as u64) as i64,
        addr_bytes: quota.bytes_per_address.min(i64::MAX as u64) as i64,
        accepted_since: now - quota.upload_window.as_micros() as i64,
    };
    let op = PrivacyOp::CreateOffer {
        offer: Box::new(o.clone()),
        addr: address_key(s.peer.ip()),
        limits,
    };
    match s.sh.writer.write(WriteOp::Privacy(op)).await {
        Ok(Outcome::Privacy(PrivacyOutcome::TooManyOffers)) => {
            s.reply(p, rejected(&id, FileRejection::TooManyOffers))
        }
        Ok(Outcome::Privacy(PrivacyOutcome::OfferQuotaExceeded)) => {
            s.reply(p, rejected(&id, FileRejection::OfferQuotaExceeded))
        }
        Ok(Outcome::Stored(_)) if o.state == OfferState::Hidden => {
            let pending = FilePending {
                transfer_id: id,
                to: s.addr(&recipient),
                expires: datetime(o.expires_at),
            };
            s.reply(p, pending.to_packet());
        }
        Ok(Outcome::Stored(seq)) => {
            let pending = FilePending {
                transfer_id: id,
                to: s.addr(&recipient),
                expires: datetime(o.expires_at),
            };
            s.reply(p, pending.to_packet());
            let req = encode(&request_packet(s, &o));
            s.sh.hub
                .send_seq(&recipient, None, Stream::Offers, seq, &req);
        }
        Ok(Outcome::UnknownUser) => {
            discovery::miss(s, login);
            s.reply(p, rejected(&id, FileRejection::UnknownRecipient));
        }
        Ok(_) | Err(_) => s.reply(p, rejected(&id, FileRejection::StorageError)),
    }
}

/// `SEND-FILE-PROXY-ACCEPT` / `SEND-FILE-PROXY-REJECT transfer-id=`.
/// (`AcceptFile` and `RejectFile` carry just the `transfer_id`.)
pub async fn answer(s: &mut Session<'_>, p: &Packet, id: String, login: &str, accept: bool) {
    let fail = |reason: AnswerFailure| {
        FileAnswerFailed {
            transfer_id: id.clone(),
            reason,
        }
        .to_packet()
    };
    let relay = if accept { s.sh.relays.peek() } else { None };
    let op = WriteOp::AnswerOffer {
        id: id.clone(),
        by: login.to_owned(),
        relay: relay.as_ref().map(|r| r.base.clone()),
        now: s.sh.config.clock.now_micros(),
    };
    let offer = match s.sh.writer.write(op).await {
        Ok(Outcome::Answered(o)) => o,
        Ok(Outcome::UnknownTransfer) => return s.reply(p, fail(AnswerFailure::UnknownTransfer)),
        Ok(Outcome::NotRecipient) => return s.reply(p, fail(AnswerFailure::NotRecipient)),
        Ok(Outcome::AlreadyAnswered) => return s.reply(p, fail(AnswerFailure::AlreadyAnswered)),
        Ok(Outcome::OfferExpired) => return s.reply(p, fail(AnswerFailure::Expired)),
        Ok(_) | Err(_) => return s.reply(p, fail(AnswerFailure::StorageError)),
    };
    let sh = s.sh.clone();
    let Some(relay) = relay else {
        // Rejected by the recipient, or accepted while no relay was healthy.
        let reason = if accept {
            FileRejection::NoRelay
        } else {
            FileRejection::Rejected
        };
        info!(transfer = %id, reason = reason.as_str(), "offer rejected");
        let pkt = rejected(&id, reason);
        let expires = sh.config.clock.now_micros() + sh.config.offer_ttl.as_micros() as i64;
        let mut to = vec![offer.sender.clone()];
        if accept {
            to.push(offer.recipient.clone());
        }
        let notices = to.into_iter().map(|login| (login, pkt.clone())).collect();
        notify(&sh, &offer.id, expires, notices).await;
        return;
    };
    sh.relays.used(&relay);
    let expires_micros = sh.config.clock.now_micros() + sh.config.token_ttl.as_micros() as i64;
    let cap = |direction| Capability {
        transfer_id: offer.id.clone(),
        direction,
        size: offer.size as u64,
        sha256: offer.sha256.clone(),
        sender: s.addr(&offer.sender),
        max_downloads: None,
        expires: (expires_micros / 1_000_000) as u64,
    };
    let up = sh.keyring.sign(&cap(Direction::Upload));
    let down = sh.keyring.sign(&cap(Direction::Download));
    let expires = datetime(expires_micros);
    let url = relay.transfer_url(&offer.id);
    info!(transfer = %id, relay = %relay.base, "offer accepted");
    let ok = UploadGrant {
        transfer_id: offer.id.clone(),
        connect: relay.host.clone(),
        port: relay.port,
        url: url.clone(),
        token: up,
        expires,
    }
    .to_packet();
    let ready = DownloadGrant {
        transfer_id: offer.id.clone(),
        from: s.addr(&offer.sender),
        filename: offer.filename.clone(),
        size: offer.size as u64,
        connect: relay.host.clone(),
        port: relay.port,
        url,
        token: down,
        expires,
        sha256: offer.sha256.clone(),
        mime: offer.mime.clone(),
    }
    .to_packet();
    let notices = vec![(offer.sender.clone(), ok), (offer.recipient.clone(), ready)];
    notify(&sh, &offer.id, expires_micros, notices).await;
}

/// Stores file results for their users until `expires` (delivered at every login until then,
/// PROTOCOL.md §10.6) and delivers them live, tagged with their seq.
pub(crate) async fn notify(
    sh: &Shared,
    transfer: &str,
    expires: i64,
    notices: Vec<(String, Packet)>,
) {
    let rows = notices
        .iter()
        .map(|(login, p)| Notice {
            login: login.clone(),
            transfer_id: transfer.to_owned(),
            packet: p.to_wire(),
            expires_at: expires,
        })
        .collect();
    let seqs = match sh.writer.write(WriteOp::AddNotices(rows)).await {
        Ok(Outcome::Notices(seqs)) => seqs,
        r => {
            // Not stored: still tell whoever is online.
            if let Err(e) = r {
                warn!(transfer, "storing file results: {e}");
            }
            Vec::new()
        }
    };
    for (i, (login, p)) in notices.iter().enumerate() {
        let bytes = encode(p);
        match seqs.get(i) {
            Some(seq) => sh.hub.send_seq(login, None, Stream::Notices, *seq, &bytes),
            None => sh.hub.send(login, &bytes),
        };
    }
}
