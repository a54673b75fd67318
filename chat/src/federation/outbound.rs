//! One task per peer domain drains that peer's durable queue (PROTOCOL.md §12.6): dial
//! (SRV, else A/AAAA on 3216), TLS, the signed handshake, then send the queued packets in order
//! with `qid=` and delete each once the peer acknowledges it. A broken link is retried with a
//! jittered exponential backoff capped at `retry_max` (minutes); items past their expiry fail
//! back to their senders.

use super::handshake::{self, check_auth, Role, Session};
use super::inbound::S2S_MAX_LINE;
use crate::cmd::context::Ctx;
use crate::cmd::notices::{notify, Note};
use crate::db::{NoticeBody, QueueDone, QueueWrite};
use crate::server::Shared;
use futures::{SinkExt, StreamExt};
use msim_shared::proto::{MessageSendFailed, SendFailure};
use msim_shared::{Packet, PacketCodec};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// Most unacknowledged packets on a link.
const WINDOW: i64 = 128;

type Link =
    Framed<msim_shared::tls::tokio_rustls::client::TlsStream<tokio::net::TcpStream>, PacketCodec>;

/// Why a link ended.
#[derive(Debug)]
enum LinkEnd {
    /// Nothing to send for a while.
    Idle,
    /// Broken or refused; back off (at least this long, when the peer said so).
    Failed(String, Option<Duration>),
}

/// A peer's dialer.
pub(crate) struct PeerTask {
    pub sh: Arc<Shared>,
    pub peer: String,
    pub wake: Arc<Notify>,
    pub wakes: Arc<std::sync::atomic::AtomicU64>,
    pub up: Arc<AtomicBool>,
    pub wanted: Arc<std::sync::atomic::AtomicUsize>,
    pub down: Arc<AtomicBool>,
    pub live: mpsc::Receiver<super::Live>,
    pub stop: CancellationToken,
}

impl PeerTask {
    pub(crate) async fn run(mut self) {
        let Some(fed) = self.sh.federation.clone() else {
            return;
        };
        let mut delay = fed.config.retry_base;
        loop {
            // Wait for work (the waker was notified once at spawn).
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(fed.config.link_idle) => {
                    // Read before looking at the queue: a wake after this stops the retirement.
                    let seen = self.wakes.load(Ordering::SeqCst);
                    if let Ok(v) = self.sh.db.federation_queued(&self.peer, 0, 1).await {
                        let live = &self.live;
                        let nothing = v.is_empty() || !super::drain::may_drain(&self.sh);
                        if nothing && fed.retire(&self.peer, &self.wake, seen, || live.is_empty()) {
                            return;
                        }
                    }
                }
            }
            let requests = self.wanted.load(Ordering::Relaxed) > 0 || !self.live.is_empty();
            // Another node drains the queue (a cluster's leader): only requests need a link.
            let drains = super::drain::may_drain(&self.sh);
            match self.sh.db.federation_queued(&self.peer, 0, 1).await {
                Ok(v) if (v.is_empty() || !drains) && !requests => continue,
                Ok(_) => {}
                Err(e) => {
                    warn!("federation queue: {e}");
                    continue;
                }
            }
            let stop = self.stop.clone();
            let end = tokio::select! {
                _ = stop.cancelled() => return,
                r = self.connect_and_send() => r,
            };
            self.up.store(false, Ordering::Relaxed);
            match end {
                LinkEnd::Idle => delay = fed.config.retry_base,
                LinkEnd::Failed(why, after) => {
                    // Waiting requests fail now rather than after their timeout.
                    self.down.store(true, Ordering::Relaxed);
                    while self.live.try_recv().is_ok() {}
                    let wait = next_wait(&mut delay, after, &fed.config);
                    info!(peer = %self.peer, %why, retry_in = ?wait, "s2s link out failed");
                    tokio::select! {
                        _ = self.stop.cancelled() => return,
                        _ = tokio::time::sleep(wait) => {}
                    }
                    // Try again even if nothing new was queued.
                    self.wake.notify_one();
                }
            }
        }
    }

    async fn connect_and_send(&mut self) -> LinkEnd {
        let mut link = match self.dial().await {
            Ok(l) => l,
            Err(e) => return LinkEnd::Failed(e, None),
        };
        info!(peer = %self.peer, "s2s link out");
        // Typing from before the link was up is stale; requests still wait for answers.
        let mut early = Vec::new();
        while let Ok(l) = self.live.try_recv() {
            if l.reply.is_some() {
                early.push(l);
            }
        }
        self.up.store(true, Ordering::Relaxed);
        self.down.store(false, Ordering::Relaxed);
        self.send_queue(&mut link, early).await
    }

    /// Resolves, then tries each address in order (SRV targets by priority and weight, then
    /// the domain's own addresses), each with its own deadline for connect + TLS + handshake,
    /// so one dead or silent target does not stall the peer.
    async fn dial(&self) -> Result<Link, String> {
        let fed = self.sh.federation.clone().expect("federation on");
        if !fed.config.allows(&self.peer) {
            return Err("peer not allowed".into());
        }
        let addrs = fed
            .dns
            .s2s_addrs(&self.peer, fed.config.default_port)
            .await
            .map_err(|e| e.to_string())?;
        let mut last = String::from("no usable address");
        for addr in addrs {
            if !fed.config.may_dial(&addr) {
                last = format!("{addr} is a private address (--s2s-allow-private)");
                continue;
            }
            match tokio::time::timeout(fed.config.handshake_timeout, self.dial_one(addr)).await {
                Ok(Ok(link)) => return Ok(link),
                Ok(Err(e)) => last = format!("{addr}: {e}"),
                Err(_) => {
                    last = format!(
                        "{addr}: no handshake within {:?}",
                        fed.config.handshake_timeout
                    )
                }
            }
            debug!(peer = %self.peer, "s2s dial: {last}");
        }
        Err(last)
    }

    /// Connects to one address, runs TLS and the handshake.
    async fn dial_one(&self, addr: std::net::SocketAddr) -> Result<Link, String> {
        let fed = self.sh.federation.clone().expect("federation on");
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        let _ = tcp.set_nodelay(true);
        let connector = msim_shared::tls::tokio_rustls::TlsConnector::from(fed.tls_client.clone());
        let name = msim_shared::tls::server_name(&self.peer).map_err(|e| e.to_string())?;
        let tls = connector
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        let exporter = handshake::exporter(tls.get_ref().1).ok_or("no TLS exporter")?;
        // Short lines until the peer has proven its domain.
        let codec = PacketCodec::new(fed.config.unauthenticated_max_line).with_max_records(0);
        let mut link = Framed::new(tls, codec);
        let mut session = Session {
            dialer: fed.domain.clone(),
            listener: self.peer.clone(),
            dialer_nonce: handshake::nonce(),
            listener_nonce: String::new(),
            exporter,
        };
        let hello = Packet::new("S2S-HELLO")
            .with("version", handshake::VERSION)
            .with("from", fed.domain.clone())
            .with("to", self.peer.clone())
            .with("nonce", session.dialer_nonce.clone());
        link.send(hello).await.map_err(|e| e.to_string())?;
        let challenge = next(&mut link).await?;
        match (challenge.verb.as_str(), challenge.get("nonce")) {
            ("S2S-CHALLENGE", Some(n))
                if n.len() == 64 && n.bytes().all(|b| b.is_ascii_hexdigit()) =>
            {
                session.listener_nonce = n.to_ascii_lowercase();
            }
            _ => return Err(refusal(&challenge)),
        }
        let now = self.sh.config.clock.now_micros();
        link.send(handshake::auth_packet(
            &session,
            Role::Dialer,
            &fed.key,
            now,
        ))
        .await
        .map_err(|e| e.to_string())?;
        let auth = next(&mut link).await?;
        if auth.verb != "S2S-AUTH" {
            return Err(refusal(&auth));
        }
        check_auth(
            &fed.dns,
            &session,
            Role::Listener,
            &self.peer,
            &auth,
            now,
            fed.config.max_clock_skew,
        )
        .await
        .map_err(|e| format!("peer's proof: {e}"))?;
        *link.codec_mut() = PacketCodec::new(S2S_MAX_LINE).with_max_records(0);
        Ok(link)
    }

    /// Sends the queue in order and handles the peer's answers until idle or broken.
    async fn send_queue(&mut self, link: &mut Link, early: Vec<super::Live>) -> LinkEnd {
        let fed = self.sh.federation.clone().expect("federation on");
        // Requests sent and not answered yet, by `rid=`.
        let mut asked: HashMap<u64, oneshot::Sender<Packet>> = HashMap::new();
        let mut next_rid = 0u64;
        for l in early {
            if let Err(e) = send_live(link, l, &mut asked, &mut next_rid).await {
                return LinkEnd::Failed(e, None);
            }
        }
        let mut last_sent = 0i64;
        // Items sent on this link and not answered yet: only these may be acknowledged or
        // refused (a forged `qid=` must not open the window or remove anything).
        let mut in_flight: std::collections::HashSet<i64> = Default::default();
        // Answers for anything else, ignored (counted to log once).
        let mut stray = 0u64;
        // Whether the queue may hold items not sent yet (reads only then, not at every ack).
        let mut more = true;
        // Last traffic on the link: the quiet timer runs from here, not from the last wake
        // (a cluster leader is woken every heartbeat while items, in flight ones too, are
        // queued: a silent peer must still time out).
        let mut active = tokio::time::Instant::now();
        loop {
            let unacked = in_flight.len() as i64;
            // Read only while this node drains (it may have stopped leading since the last
            // read: what is in flight still gets its answers, the new leader sends the rest).
            if more && unacked <= WINDOW / 2 && super::drain::may_drain(&self.sh) {
                match self
                    .sh
                    .db
                    .federation_queued(&self.peer, last_sent, WINDOW - unacked)
                    .await
                {
                    Ok(items) => {
                        more = items.len() as i64 == WINDOW - unacked;
                        for it in items {
                            let Ok(p) = Packet::parse_line(it.line.as_bytes()) else {
                                warn!(seq = it.seq, "federation queue: unreadable item dropped");
                                fed.queue()
                                    .write_detached(QueueWrite::Remove {
                                        peer: self.peer.clone(),
                                        seq: it.seq,
                                    })
                                    .await;
                                continue;
                            };
                            if let Err(e) = link.feed(p.with("qid", it.seq.to_string())).await {
                                return LinkEnd::Failed(e.to_string(), None);
                            }
                            last_sent = it.seq;
                            in_flight.insert(it.seq);
                            active = tokio::time::Instant::now();
                        }
                        if let Err(e) = link.flush().await {
                            return LinkEnd::Failed(e.to_string(), None);
                        }
                    }
                    Err(e) => return LinkEnd::Failed(e.to_string(), None),
                }
            }
            // Idle: close after `link_idle`; waiting for answers: give the peer at least the
            // handshake's time before calling the link broken.
            let quiet = if in_flight.is_empty() && asked.is_empty() {
                fed.config.link_idle
            } else {
                fed.config.link_idle.max(fed.config.handshake_timeout)
            };
            tokio::select! {
                p = link.next() => {
                    active = tokio::time::Instant::now();
                    let p = match p {
                        Some(Ok(Ok(p))) => p,
                        Some(Ok(Err(e))) => return LinkEnd::Failed(format!("bad line: {e}"), None),
                        Some(Err(e)) => return LinkEnd::Failed(e.to_string(), None),
                        None => return LinkEnd::Failed("closed by peer".into(), None),
                    };
                    let qid = p.get("qid").and_then(|q| q.parse::<i64>().ok());
                    let qid = match (p.verb.as_str(), qid) {
                        ("S2S-ACK" | "S2S-REFUSED", Some(q)) if !in_flight.remove(&q) => {
                            stray += 1;
                            if stray == 1 {
                                warn!(peer = %self.peer, qid = q, verb = %p.verb, "s2s: answer for an item not in flight on this link; ignored (logged once per link)");
                            }
                            continue;
                        }
                        (_, q) => q,
                    };
                    match (p.verb.as_str(), qid) {
                        ("S2S-ACK", Some(q)) => {
                            fed.queue().write_detached(QueueWrite::Remove { peer: self.peer.clone(), seq: q }).await;
                        }
                        ("S2S-REFUSED", Some(q)) => {
                            let reason = p.get("reason").unwrap_or("refused").to_owned();
                            warn!(peer = %self.peer, qid = q, %reason, "s2s: peer refused a packet");
                            match fed.queue().write(QueueWrite::Remove { peer: self.peer.clone(), seq: q }).await {
                                Ok(QueueDone::Removed(Some(item))) if !item.message_id.is_empty() => {
                                    tell_failed(&self.sh, vec![(item.message_id, item.sender)], SendFailure::parse(&reason)).await;
                                }
                                Ok(QueueDone::Removed(Some(item))) => {
                                    super::file_refusals::refused(&self.sh, &self.peer, &item.line, &reason).await;
                                }
                                Ok(_) => {}
                                Err(e) => return LinkEnd::Failed(e.to_string(), None),
                            }
                        }
                        ("S2S-RETRY", _) => {
                            let after = p.get("retry-after").and_then(|s| s.parse::<u64>().ok()).map(|s| Duration::from_secs(s.min(3600)));
                            return LinkEnd::Failed("peer asked to retry later".into(), after);
                        }
                        ("S2S-PROFILE" | "S2S-PROFILE-FAILED", _) => {
                            let rid = p.get("rid").and_then(|r| r.parse::<u64>().ok());
                            if let Some(tx) = rid.and_then(|r| asked.remove(&r)) {
                                let _ = tx.send(p);
                            }
                        }
                        ("PING", _) => {
                            let _ = link.send(Packet::new("PONG").with_opt("ref", p.get("ref").map(str::to_owned))).await;
                        }
                        _ => debug!(peer = %self.peer, verb = %p.verb, "s2s: ignored"),
                    }
                }
                _ = self.wake.notified() => more = true,
                Some(live) = self.live.recv() => {
                    active = tokio::time::Instant::now();
                    if let Err(e) = send_live(link, live, &mut asked, &mut next_rid).await {
                        return LinkEnd::Failed(e, None);
                    }
                }
                _ = tokio::time::sleep_until(active + quiet) => {
                    // Requests whose askers gave up (their own deadline) are forgotten.
                    asked.retain(|_, tx| !tx.is_closed());
                    if in_flight.is_empty() && asked.is_empty() && self.wanted.load(Ordering::Relaxed) == 0 {
                        return LinkEnd::Idle;
                    }
                    if in_flight.is_empty() {
                        active = tokio::time::Instant::now();
                        continue;
                    }
                    return LinkEnd::Failed("no acknowledgement".into(), None);
                }
            }
        }
    }
}

/// Most requests waiting for answers on one link.
const MAX_ASKED: usize = 256;

/// Writes a live packet; a request gets a `rid=` and its answer's destination is kept.
async fn send_live(
    link: &mut Link,
    live: super::Live,
    asked: &mut HashMap<u64, oneshot::Sender<Packet>>,
    next_rid: &mut u64,
) -> Result<(), String> {
    let mut packet = live.packet;
    if let Some(reply) = live.reply {
        if asked.len() >= MAX_ASKED || reply.is_closed() {
            return Ok(());
        }
        *next_rid += 1;
        asked.insert(*next_rid, reply);
        packet = packet.with("rid", next_rid.to_string());
    }
    link.send(packet).await.map_err(|e| e.to_string())
}

async fn next(link: &mut Link) -> Result<Packet, String> {
    match link.next().await {
        Some(Ok(Ok(p))) => Ok(p),
        Some(Ok(Err(e))) => Err(format!("bad line: {e}")),
        Some(Err(e)) => Err(e.to_string()),
        None => Err("closed by peer".into()),
    }
}

fn refusal(p: &Packet) -> String {
    match p.get("reason") {
        Some(r) if p.verb == "S2S-FAILED" => format!("refused: {r}"),
        _ => format!("unexpected {}", p.verb),
    }
}

/// `d` ± 25 %, so that many servers retrying one peer spread out.
/// How long to wait before the next attempt after a link ended with a failure: `after` when
/// the peer said when to come back (it is up and pacing us with its rate limit), without
/// growing `delay`, the backoff for peers that are down (doubled here, capped at
/// `retry_max`). Growing it on every `S2S-RETRY` made a busy peer wait minutes between bursts.
fn next_wait(
    delay: &mut Duration,
    after: Option<Duration>,
    config: &super::FederationConfig,
) -> Duration {
    match after {
        Some(after) => (after + jitter(config.retry_base)).min(config.retry_max),
        None => {
            let wait = jitter(*delay).min(config.retry_max);
            *delay = (*delay * 2).min(config.retry_max);
            wait
        }
    }
}

fn jitter(d: Duration) -> Duration {
    let spread = d.as_millis() as u64 / 2;
    let mut b = [0u8; 8];
    rand::Rng::fill_bytes(&mut rand::rng(), &mut b);
    let r = u64::from_le_bytes(b) % (spread + 1);
    Duration::from_millis(d.as_millis() as u64 * 3 / 4 + r)
}

/// Tells local senders that remote messages failed: stored for their logins (as expiry
/// notices are, PROTOCOL.md §5.7) and pushed to their live sessions.
pub(crate) async fn tell_failed(sh: &Shared, failed: Vec<(String, String)>, reason: SendFailure) {
    let expires = sh
        .config
        .clock
        .now_micros()
        .saturating_add(sh.config.receipt_retention.as_micros() as i64);
    let notes = failed
        .into_iter()
        .map(|(id, sender)| {
            let body = NoticeBody::MessageFailed(MessageSendFailed {
                id: id.clone(),
                reason: reason.clone(),
            });
            Note::new(sender, &id, body)
        })
        .collect();
    notify(&Ctx::new(sh), expires, notes).await;
}

/// Expires queued items past their time (their senders get `reason=expired`) and forgets old
/// `fed_sent` rows and inbound message ids past the dedupe window, every purge interval.
pub(crate) async fn expiry_loop(sh: Arc<Shared>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(sh.config.purge_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = sh.config.clock.now_micros();
        let forget = now.saturating_sub(sh.config.receipt_retention.as_micros() as i64);
        match sh.db.federation_expire(now, forget, 1000).await {
            Ok(items) => {
                if let Some(fed) = &sh.federation {
                    let gone = items
                        .iter()
                        .map(|i| (i.peer.clone(), i.sender.clone()))
                        .collect();
                    fed.queue().forget(gone).await;
                }
                let failed: Vec<(String, String)> = items
                    .into_iter()
                    .filter(|i| !i.message_id.is_empty())
                    .map(|i| (i.message_id, i.sender))
                    .collect();
                if !failed.is_empty() {
                    info!(n = failed.len(), "federation: queued messages expired");
                    tell_failed(&sh, failed, SendFailure::Expired).await;
                }
            }
            Err(e) => warn!("federation expiry: {e}"),
        }
        if let Some(fed) = &sh.federation {
            let before = now.saturating_sub(fed.config.dedupe_window.as_micros() as i64);
            if let Err(e) = sh
                .db
                .federation_forget_seen(before, fed.config.dedupe_max_per_peer)
                .await
            {
                warn!("federation dedupe expiry: {e}");
            }
        }
        super::sub_lifetime::tick(&sh).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A peer that keeps answering `S2S-RETRY retry-after=1` is tried again after about a
    /// second each time; a peer that is down is tried after a growing delay.
    #[test]
    fn a_pacing_peer_does_not_grow_the_backoff() {
        let config = super::super::FederationConfig::default();
        let mut delay = config.retry_base;
        for _ in 0..20 {
            let wait = next_wait(&mut delay, Some(Duration::from_secs(1)), &config);
            assert!(
                wait <= Duration::from_secs(1) + config.retry_base * 5 / 4,
                "{wait:?}"
            );
        }
        assert_eq!(delay, config.retry_base);
        let waits: Vec<Duration> = (0..20)
            .map(|_| next_wait(&mut delay, None, &config))
            .collect();
        assert_eq!(delay, config.retry_max);
        assert!(waits[10] > waits[0] * 8, "{waits:?}");
    }
}
