//! The s2s listener (PROTOCOL.md §12.4–12.5): TLS, the signed handshake, then what an
//! authenticated peer may send. A packet whose `from` is not on the peer's domain, or whose
//! `to` is not ours, is refused and logged; the third such packet closes the link. Before the
//! handshake is done a connection holds one of its address's few places, has one deadline for
//! TLS and handshake together, and may send only short lines ([`super::guard`]).

use super::answers::{ack, check_addresses, refused, Handled};
use super::guard::Limited;
use super::handshake::{self, check_auth, Role, Session};
use super::links::link_retry;
use crate::clock::datetime;
use crate::db::{Outcome, QueueWrite, StoredMessage, WriteOp};
use crate::hub::{encode, Stream};
use crate::server::Shared;
use futures::{SinkExt, StreamExt};
use msim_shared::proto::{Body, Message, ReadReceipt};
use msim_shared::{Packet, PacketCodec};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// Most messages being committed per link before we stop reading.
const WINDOW: usize = 256;
/// Refused packets after which a link is closed.
const MAX_VIOLATIONS: u32 = 3;
/// Longest s2s line (a message of max-text bytes percent-encoded fits).
pub const S2S_MAX_LINE: usize = 256 * 1024;

/// Accepts s2s connections until `stop`.
pub async fn accept_loop(sh: Arc<Shared>, listener: TcpListener, stop: CancellationToken) {
    let Some(fed) = sh.federation.clone() else {
        return;
    };
    let slots = Arc::new(Semaphore::new(fed.config.max_inbound));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.cancelled() => return,
        };
        match accepted {
            Ok((stream, addr)) => {
                let Some(place) = fed.guard.admit(addr.ip()) else {
                    debug!(%addr, "s2s: too many unauthenticated connections from this address");
                    drop(stream);
                    continue;
                };
                let sh = sh.clone();
                let stop = stop.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = serve(sh, stream, addr, place) => {}
                        _ = stop.cancelled() => {}
                    }
                    drop(permit);
                });
            }
            Err(e) => {
                warn!("s2s accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn serve(
    sh: Arc<Shared>,
    stream: TcpStream,
    addr: std::net::SocketAddr,
    place: super::guard::Unauthenticated,
) {
    let Some(fed) = sh.federation.clone() else {
        return;
    };
    let _ = stream.set_nodelay(true);
    let acceptor = msim_shared::tls::tokio_rustls::TlsAcceptor::from(fed.tls_server.clone());
    // One deadline for TLS and the signed handshake together.
    let deadline = tokio::time::Instant::now() + fed.config.handshake_timeout;
    let tls = match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return debug!(%addr, "s2s TLS: {e}"),
        Err(_) => return debug!(%addr, "s2s TLS handshake timed out"),
    };
    let Some(exporter) = handshake::exporter(tls.get_ref().1) else {
        return;
    };
    let codec = PacketCodec::new(fed.config.unauthenticated_max_line).with_max_records(0);
    let mut link = Framed::new(tls, codec);
    let peer = match tokio::time::timeout_at(deadline, authenticate(&sh, &mut link, exporter)).await
    {
        Ok(Ok(peer)) => peer,
        Ok(Err(reason)) => {
            info!(%addr, reason, "s2s handshake refused");
            let _ = link
                .send(Packet::new("S2S-FAILED").with("reason", reason))
                .await;
            return;
        }
        Err(_) => return debug!(%addr, "s2s handshake timed out"),
    };
    drop(place);
    // Limits count per registrable domain: one zone's many names are one peer for them.
    let group = super::domain::registrable(&peer);
    let link_place = match fed.guard.link(&group, addr.ip()) {
        Ok(p) => p,
        Err(reason) => {
            info!(%addr, %peer, reason, "s2s link refused");
            let _ = link.send(link_retry(reason)).await;
            return;
        }
    };
    *link.codec_mut() = PacketCodec::new(S2S_MAX_LINE).with_max_records(0);
    info!(%addr, %peer, "s2s link in");
    tokio::select! {
        r = receive(&sh, &mut link, &peer) => {
            if let Err(e) = r {
                debug!(%peer, "s2s link in closed: {e}");
            }
        }
        () = link_place.evicted() => {
            // Another peer took this place (places are shared out evenly when all are
            // taken); what the peer sent and we did not acknowledge, it sends again.
            info!(%peer, "s2s link in given up to another peer");
            let _ = tokio::time::timeout(Duration::from_secs(1), link.send(link_retry("busy"))).await;
        }
    }
}

/// The listener's half of the handshake; returns the proven peer domain or a reason.
async fn authenticate<S: AsyncRead + AsyncWrite + Unpin>(
    sh: &Shared,
    link: &mut Framed<S, PacketCodec>,
    exporter: [u8; 32],
) -> Result<String, &'static str> {
    let fed = sh.federation.as_ref().ok_or("federation-disabled")?;
    let hello = next(link).await.ok_or("malformed")?;
    let (Some(from), Some(to), Some(nonce)) =
        (hello.get("from"), hello.get("to"), hello.get("nonce"))
    else {
        return Err("malformed");
    };
    if hello.verb != "S2S-HELLO" || hello.get("version") != Some(handshake::VERSION) {
        return Err("bad-version");
    }
    if !to.eq_ignore_ascii_case(&fed.domain) {
        return Err("unknown-domain");
    }
    // The peer's domain exactly in canonical form (no port, no trailing dot, lower case).
    let Some(from) = super::domain::canonical_domain(from)
        .filter(|d| from.eq_ignore_ascii_case(d) && *d != fed.domain)
    else {
        return Err("malformed");
    };
    if nonce.len() != 64 || !nonce.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("malformed");
    }
    if !fed.config.allows(&from) {
        return Err("not-allowed");
    }
    let session = Session {
        dialer: from.clone(),
        listener: fed.domain.clone(),
        dialer_nonce: nonce.to_ascii_lowercase(),
        listener_nonce: handshake::nonce(),
        exporter,
    };
    let challenge = Packet::new("S2S-CHALLENGE")
        .with("from", fed.domain.clone())
        .with("nonce", session.listener_nonce.clone());
    link.send(challenge).await.map_err(|_| "io")?;
    let auth = next(link).await.ok_or("malformed")?;
    let now = sh.config.clock.now_micros();
    if let Err(e) = check_auth(
        &fed.dns,
        &session,
        Role::Dialer,
        &from,
        &auth,
        now,
        fed.config.max_clock_skew,
    )
    .await
    {
        warn!(peer = %from, "s2s handshake: {e}");
        return Err(e.reason());
    }
    let ours = handshake::auth_packet(&session, Role::Listener, &fed.key, now);
    link.send(ours).await.map_err(|_| "io")?;
    Ok(from)
}

async fn next<S: AsyncRead + AsyncWrite + Unpin>(
    link: &mut Framed<S, PacketCodec>,
) -> Option<Packet> {
    match link.next().await? {
        Ok(Ok(p)) => Some(p),
        Ok(Err(_)) | Err(_) => None,
    }
}

/// A message being committed.
struct Storing {
    qid: String,
    message: StoredMessage,
    done: crate::db::commit::Pending,
}

/// Serves an authenticated peer's packets.
async fn receive<S: AsyncRead + AsyncWrite + Unpin>(
    sh: &Arc<Shared>,
    link: &mut Framed<S, PacketCodec>,
    peer: &str,
) -> Result<(), String> {
    let fed = sh.federation.clone().ok_or("off")?;
    let mut storing: VecDeque<Storing> = VecDeque::new();
    let mut violations = 0u32;
    let idle = fed.config.link_idle * 2;
    let group = super::domain::registrable(peer);
    let result = loop {
        let can_read = storing.len() < WINDOW;
        let event = {
            let front = async {
                match storing.front_mut() {
                    Some(s) => (&mut s.done).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                r = front => Event::Stored(r),
                p = tokio::time::timeout(idle, link.next()), if can_read => Event::Read(p.ok().flatten()),
            }
        };
        let p = match event {
            Event::Stored(r) => {
                let s = storing.pop_front().expect("front exists");
                fed.inflight
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&s.message.id);
                let answer = stored(sh, &s, r);
                if answer.verb == "S2S-ACK" {
                    // Remembered for the peers' whole resend window, after the row is gone.
                    let seen = QueueWrite::Seen {
                        peer: peer.to_owned(),
                        id: s.message.id.clone(),
                        at: sh.config.clock.now_micros(),
                    };
                    fed.queue().write_detached(seen).await;
                }
                link.send(answer).await.map_err(|e| e.to_string())?;
                continue;
            }
            Event::Read(None) => break Ok(()),
            Event::Read(Some(Err(e))) => break Err(e.to_string()),
            Event::Read(Some(Ok(Err(e)))) => {
                warn!(%peer, "s2s: malformed line: {e}");
                violations += 1;
                if violations >= MAX_VIOLATIONS {
                    break Err("too many bad packets".into());
                }
                continue;
            }
            Event::Read(Some(Ok(Ok(p)))) => p,
        };
        // One bucket for the peer's registrable domain, all its links together, and one for
        // all peers.
        // When only all peers together are over their rate (and this domain over its fair
        // share), the link is read more slowly instead of being closed: a peer is not cut off
        // because others send much.
        let mut limited = fed.guard.take(&group);
        while let Err(Limited::Total(wait)) = limited {
            tokio::time::sleep(Duration::from_secs(wait.min(1))).await;
            limited = fed.guard.take(&group);
        }
        if let Err(Limited::Peer(wait)) = limited {
            let retry = Packet::new("S2S-RETRY").with("retry-after", wait.to_string());
            let _ = link
                .send(retry.with_opt("qid", p.get("qid").map(str::to_owned)))
                .await;
            break Err("rate limited".into());
        }
        match handle(sh, peer, p, &mut storing).await {
            Handled::Reply(r) => link.send(r).await.map_err(|e| e.to_string())?,
            Handled::Nothing => {}
            Handled::Violation(r) => {
                violations += 1;
                link.send(r).await.map_err(|e| e.to_string())?;
                if violations >= MAX_VIOLATIONS {
                    warn!(%peer, "s2s: closing the link after repeated violations");
                    break Err("violations".into());
                }
            }
            Handled::Retry(r) => {
                let _ = link.send(r).await;
                break Err("retry later".into());
            }
        }
    };
    let mut inflight = fed.inflight.lock().unwrap_or_else(|e| e.into_inner());
    for s in storing {
        inflight.remove(&s.message.id);
    }
    result
}

enum Event {
    Stored(Result<Outcome, crate::db::DbError>),
    Read(Option<Result<Result<Packet, msim_shared::PacketError>, std::io::Error>>),
}

async fn handle(
    sh: &Arc<Shared>,
    peer: &str,
    p: Packet,
    storing: &mut VecDeque<Storing>,
) -> Handled {
    let qid = p.get("qid").unwrap_or_default().to_owned();
    let field = |k: &str| p.get(k).map(str::to_owned);
    match p.verb.as_str() {
        "PING" => Handled::Reply(Packet::new("PONG").with_opt("ref", field("ref"))),
        "PONG" => Handled::Nothing,
        "S2S-MESSAGE" => {
            let (Some(id), Some(from), Some(to), Some(at), Some(text)) = (
                field("id"),
                field("from"),
                field("to"),
                field("at"),
                field("text"),
            ) else {
                return Handled::Violation(refused(&qid, "malformed"));
            };
            let (from, recipient) = match check_addresses(sh, peer, &from, &to) {
                Ok(x) => x,
                Err(reason) => {
                    warn!(%peer, %from, %to, reason, "s2s: refused message");
                    return Handled::Violation(refused(&qid, reason));
                }
            };
            let Some(at) = msim_shared::timestamp::parse(&at) else {
                return Handled::Violation(refused(&qid, "malformed"));
            };
            if uuid::Uuid::parse_str(&id).is_err() || id.len() != 36 {
                return Handled::Violation(refused(&qid, "malformed"));
            }
            if text.is_empty() || text.len() > sh.config.max_text {
                return Handled::Reply(refused(&qid, "text-too-long"));
            }
            let id = id.to_ascii_lowercase();
            let fed = sh.federation.as_ref().expect("federation on");
            if !fed
                .inflight
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(id.clone())
            {
                // The same id is being stored from another link: ask for it again later.
                return Handled::Retry(
                    Packet::new("S2S-RETRY")
                        .with("qid", qid)
                        .with("retry-after", "1"),
                );
            }
            // Stored already, or seen from this peer within the resend window (the row may be
            // gone: delivered and purged).
            let exists = sh.db.federation_known_message(peer, &id).await;
            let release = || {
                fed.inflight
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&id);
            };
            match exists {
                Ok(true) => {
                    release();
                    return Handled::Reply(ack(&qid));
                }
                Ok(false) => {}
                Err(e) => {
                    release();
                    warn!("s2s: {e}");
                    return Handled::Retry(
                        Packet::new("S2S-RETRY")
                            .with("qid", qid)
                            .with("retry-after", "5"),
                    );
                }
            }
            let m = StoredMessage {
                seq: 0,
                id: id.clone(),
                sender: from,
                recipient,
                at: sane_time(sh, at),
                text,
            };
            if sh.blocks.is_blocked(&m.recipient, &m.sender) {
                release();
                return Handled::Reply(ack(&qid));
            }
            match sh.writer.submit(WriteOp::InsertMessage(m.clone())).await {
                Ok(done) => {
                    storing.push_back(Storing {
                        qid,
                        message: m,
                        done,
                    });
                    Handled::Nothing
                }
                Err(e) => {
                    release();
                    warn!("s2s: {e}");
                    Handled::Retry(
                        Packet::new("S2S-RETRY")
                            .with("qid", qid)
                            .with("retry-after", "5"),
                    )
                }
            }
        }
        "S2S-READ" => {
            let (Some(id), Some(by), Some(to), Some(at)) =
                (field("id"), field("by"), field("to"), field("at"))
            else {
                return Handled::Violation(refused(&qid, "malformed"));
            };
            let (by, sender) = match check_addresses(sh, peer, &by, &to) {
                Ok(x) => x,
                Err(reason) => {
                    warn!(%peer, %by, %to, reason, "s2s: refused receipt");
                    return Handled::Violation(refused(&qid, reason));
                }
            };
            let Some(at) = msim_shared::timestamp::parse(&at) else {
                return Handled::Violation(refused(&qid, "malformed"));
            };
            if uuid::Uuid::parse_str(&id).is_err() || id.len() != 36 {
                return Handled::Violation(refused(&qid, "malformed"));
            }
            let id = id.to_ascii_lowercase();
            // A reading time far from our clock (past or future) is replaced by now.
            let at = sane_time(sh, at);
            // Only a message this sender really sent to this reader gets a receipt.
            match sh.db.federation_sent_by(&id, &by).await {
                Ok(Some(s)) if s == sender => {}
                Ok(_) => return Handled::Reply(refused(&qid, "unknown-message")),
                Err(e) => {
                    warn!("s2s: {e}");
                    return Handled::Retry(
                        Packet::new("S2S-RETRY")
                            .with("qid", qid)
                            .with("retry-after", "5"),
                    );
                }
            }
            match sh.db.federation_store_receipt(&sender, &id, &by, at).await {
                Ok(seq) => {
                    let pkt = ReadReceipt {
                        id,
                        by,
                        at: datetime(at),
                    }
                    .to_packet();
                    let bytes = encode(&pkt);
                    if let Some(seq) = seq {
                        if sh
                            .hub
                            .send_seq(&sender, None, Stream::Receipts, seq, &bytes)
                            > 0
                        {
                            sh.writer.write_detached(WriteOp::DeleteReceipts(vec![seq]));
                        }
                    }
                    Handled::Reply(ack(&qid))
                }
                Err(e) => {
                    warn!("s2s: {e}");
                    Handled::Retry(
                        Packet::new("S2S-RETRY")
                            .with("qid", qid)
                            .with("retry-after", "5"),
                    )
                }
            }
        }
        "S2S-PROFILE-GET" => {
            let (Some(rid), Some(from), Some(id)) = (field("rid"), field("from"), field("id"))
            else {
                return Handled::Violation(refused(&qid, "malformed"));
            };
            let login = match check_addresses(sh, peer, &from, &id) {
                Ok((_, login)) => login,
                Err(reason) => return Handled::Violation(refused(&qid, reason)),
            };
            // What any user of this server may see of a profile (PROTOCOL.md §9): name and
            // note; presence is not shared across servers in this version.
            Handled::Reply(match sh.db.profile(&login).await {
                Ok(Some(p)) => Packet::new("S2S-PROFILE")
                    .with("rid", rid)
                    .with("id", format!("{login}@{}", sh.config.domain))
                    .with("name", p.name)
                    .with_opt("note", (!p.note.is_empty()).then_some(p.note)),
                Ok(None) => Packet::new("S2S-PROFILE-FAILED")
                    .with("rid", rid)
                    .with("reason", "unknown-user"),
                Err(e) => {
                    warn!("s2s profile: {e}");
                    Packet::new("S2S-PROFILE-FAILED")
                        .with("rid", rid)
                        .with("reason", "storage-error")
                }
            })
        }
        "S2S-TYPING" => {
            let (Some(from), Some(to), Some(state)) = (field("from"), field("to"), field("state"))
            else {
                return Handled::Nothing;
            };
            let Ok((from, login)) = check_addresses(sh, peer, &from, &to) else {
                return Handled::Violation(refused("", "forged-from"));
            };
            let verb = match state.as_str() {
                "started" => "TYPING-STARTED",
                "ended" => "TYPING-END",
                _ => return Handled::Nothing,
            };
            if !sh.blocks.is_blocked(&login, &from) {
                sh.hub
                    .send_packet(&login, &Packet::new(verb).with("from", from));
            }
            Handled::Nothing
        }
        "S2S-SUBSCRIBE" | "S2S-UNSUBSCRIBE" | "S2S-PRESENCE" | "S2S-PROFILE-CHANGED" => {
            super::subscriptions::handle(sh, peer, p).await
        }
        "S2S-FILE-OFFER" | "S2S-FILE-ANSWER" | "S2S-FILE-READY" | "S2S-FILE-CLOSED" => {
            super::files::handle(sh, peer, p).await
        }
        _ => Handled::Reply(Packet::new("ERROR-NOT-IMPLEMENTED").with("type", p.verb.clone())),
    }
}

/// A peer's timestamp in micros, or now when it is further from our clock than the handshake
/// allows: retention counts from `at`, so a peer must not make its messages expire at once or
/// never.
fn sane_time(sh: &Shared, at: time::OffsetDateTime) -> i64 {
    let now = sh.config.clock.now_micros();
    let at = (at.unix_timestamp_nanos() / 1000) as i64;
    let skew = sh
        .federation
        .as_ref()
        .map_or(0, |f| f.config.max_clock_skew.as_micros() as i64);
    if (at - now).abs() > skew {
        now
    } else {
        at
    }
}

/// The answer to a committed (or failed) inbound message; delivers it live.
fn stored(sh: &Shared, s: &Storing, r: Result<Outcome, crate::db::DbError>) -> Packet {
    match r {
        Ok(Outcome::UnknownUser) => refused(&s.qid, "unknown-recipient"),
        Ok(Outcome::QueueFull) => refused(&s.qid, "recipient-queue-full"),
        Ok(o) => {
            let m = &s.message;
            let pkt = Message {
                id: m.id.clone(),
                from: m.sender.clone(),
                to: format!("{}@{}", m.recipient, sh.config.domain),
                at: datetime(m.at),
                text: m.text.clone(),
            }
            .to_packet();
            let seq = if let Outcome::Stored(n) = o { n } else { 0 };
            sh.hub
                .send_seq(&m.recipient, None, Stream::Messages, seq, &encode(&pkt));
            ack(&s.qid)
        }
        Err(e) => {
            warn!("s2s: storing a message: {e}");
            Packet::new("S2S-RETRY")
                .with("qid", s.qid.clone())
                .with("retry-after", "5")
        }
    }
}
