//! Presence and profile subscriptions across servers (PROTOCOL.md §12.9).
//!
//! The watcher's server asks (`S2S-SUBSCRIBE`) when a local user adds a remote contact, and
//! again when that user's first session logs in (the subject's server then sends the state of
//! the moment, so nothing missed while away or while either server restarted stays wrong);
//! it cancels (`S2S-UNSUBSCRIBE`) when the user deletes the contact. The subject's server keeps
//! the subscriptions (`fed_subs`, bounded per peer) and queues `S2S-PRESENCE` /
//! `S2S-PROFILE-CHANGED` to subscribed watchers only, under the same consent rules as for local
//! watchers (§7): presence only to a watcher the subject has as a contact (a remote user's
//! approval), never to a blocked one, never with `last-seen=nobody`. Everything travels in the
//! durable per-peer queue, so it is ordered and survives broken links and restarts.

use super::answers::{ack, addressed, refused, retry, Handled};
use super::Federation;
use crate::cmd::context::Ctx;
use crate::db::federation_subs::{Subscribed, Subscriber};
use crate::db::QueueWrite;
use crate::hub::encode;
use crate::server::Shared;
use msim_shared::proto::{Body, ContactUpdate, ContactUpdated, Presence, UpdateLastSeen};
use msim_shared::Packet;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use tracing::{debug, warn};

/// The domain of a canonical address.
fn domain_of(addr: &str) -> &str {
    addr.rsplit_once('@').map_or(addr, |(_, d)| d)
}

/// Queues a packet for `peer` (not a message: nobody is told if it fails), charged to
/// `budget` like [`queue_all`].
async fn queue(fed: &Federation, ctx: &Ctx<'_>, peer: &str, budget: &str, p: Packet) {
    queue_all(fed, ctx, budget, vec![(peer.to_owned(), p)]).await;
}

/// Queues packets for their peers, all at once (the queue writer commits them together, in
/// this order), charged to `budget`: the local user who asks (its own subscriptions share
/// the per-sender bounds with its messages, so one user cannot fill the queue with made-up
/// domains), or `s2s:<peer>` for replies to a peer's packets.
async fn queue_all(fed: &Federation, ctx: &Ctx<'_>, budget: &str, items: Vec<(String, Packet)>) {
    queue_charged(fed, ctx, Charge::To(budget), items).await
}

/// Whose budget queued items are charged to.
#[derive(Clone, Copy)]
enum Charge<'a> {
    /// One budget for all: a local user, or `s2s:<peer>`.
    To(&'a str),
    /// Each item to the reply budget of its peer (`s2s:<registrable>`): pushes to remote
    /// watchers, so the peers that subscribed pay for them, not the user they watch (else
    /// a zone's many names subscribing to alice would fill her budget with one change).
    ItsPeer,
}

async fn queue_charged(
    fed: &Federation,
    ctx: &Ctx<'_>,
    charge: Charge<'_>,
    items: Vec<(String, Packet)>,
) {
    let expires_at = ctx
        .now()
        .saturating_add(fed.config.queue_ttl.as_micros() as i64);
    let writes = items
        .iter()
        .filter(|(peer, _)| fed.config.allows(peer))
        .map(|(peer, p)| async move {
            let sender = match charge {
                Charge::To(budget) => budget.to_owned(),
                Charge::ItsPeer => super::queue::reply_budget(peer),
            };
            let add = QueueWrite::Add {
                peer: peer.clone(),
                line: p.to_wire().trim_end().to_owned(),
                sender,
                message_id: String::new(),
                recipient: String::new(),
                at: ctx.now(),
                expires_at,
                merge_key: merge_key(p),
            };
            match fed.queue().write(add).await {
                Ok(_) => Some(peer),
                Err(e) => {
                    warn!(%peer, verb = %p.verb, "federation queue: {e}: dropped");
                    None
                }
            }
        });
    let mut woken = std::collections::HashSet::new();
    for peer in futures::future::join_all(writes)
        .await
        .into_iter()
        .flatten()
    {
        if woken.insert(peer) {
            fed.wake(peer);
        }
    }
}

/// The key under which a queued, unsent item is replaced by a newer one (PROTOCOL.md §12.9):
/// only the latest presence and profile of a subject for a watcher need to go, and only the
/// last of a watcher's subscribe / unsubscribe for a subject. So a user toggling presence or
/// its profile in a loop, or a watcher reconnecting in one, queues one item per watcher, not
/// one per change.
fn merge_key(p: &Packet) -> String {
    let kind = match p.verb.as_str() {
        "S2S-PRESENCE" => "presence",
        "S2S-PROFILE-CHANGED" => "profile",
        // A keep-alive (`state=changed`) replaces only a keep-alive: it must not take the
        // place of a renewal that asked for the state.
        "S2S-SUBSCRIBE" if p.get("state").is_some() => "keep-alive",
        "S2S-SUBSCRIBE" | "S2S-UNSUBSCRIBE" => "subscription",
        _ => return String::new(),
    };
    format!(
        "{kind} {} {}",
        p.get("from").unwrap_or_default(),
        p.get("to").unwrap_or_default()
    )
}

// ---- The watcher's side ----

/// Local user `login` wants `subject`'s (a remote address) presence and profile changes.
pub(crate) async fn subscribe(fed: &Federation, ctx: &Ctx<'_>, login: &str, subject: &str) {
    let p = Packet::new("S2S-SUBSCRIBE")
        .with("from", ctx.addr(login))
        .with("to", subject);
    queue(fed, ctx, domain_of(subject), login, p).await;
}

/// Local user `login` no longer has `subject` (a remote address) as a contact.
pub(crate) async fn unsubscribe(fed: &Federation, ctx: &Ctx<'_>, login: &str, subject: &str) {
    let p = Packet::new("S2S-UNSUBSCRIBE")
        .with("from", ctx.addr(login))
        .with("to", subject);
    queue(fed, ctx, domain_of(subject), login, p).await;
}

/// Renewals more often than this are skipped: a client reconnecting in a loop must not fill
/// the per-peer queues (which messages share) with subscriptions.
const RENEW_EVERY: Duration = Duration::from_secs(60);
/// Most users remembered per kind of renewal; beyond it, entries older than their window are
/// dropped, and if none are, all of them.
const MAX_RENEWALS: usize = 100_000;

/// When each local user last renewed its subscriptions (micros, the server's clock): at a
/// login (which asks for the state) and by any renewal (keep-alives included). Apart, so a
/// keep-alive never holds back the next login's renewal, which asks for the state.
#[derive(Debug, Default)]
pub(crate) struct Renewals {
    logins: Mutex<HashMap<String, i64>>,
    any: Mutex<HashMap<String, i64>>,
}

impl Renewals {
    /// Whether `login` may renew at a login at `now` (and notes that it does): at most once
    /// per [`RENEW_EVERY`].
    fn take(&self, login: &str, now: i64) -> bool {
        if !note_if_due(&self.logins, login, RENEW_EVERY, now) {
            return false;
        }
        note_if_due(&self.any, login, Duration::ZERO, now);
        true
    }

    /// Whether `login` last renewed (at a login or not) `every` before `now` or earlier (or
    /// never); if so, notes that it renews now.
    pub(crate) fn due(&self, login: &str, every: Duration, now: i64) -> bool {
        note_if_due(&self.any, login, every, now)
    }
}

/// Whether `login`'s entry in `map` is `every` old or more (or missing); if so, sets it to
/// `now`. Bounded: beyond [`MAX_RENEWALS`] entries, those older than `every` are dropped,
/// and if none are, all of them.
fn note_if_due(map: &Mutex<HashMap<String, i64>>, login: &str, every: Duration, now: i64) -> bool {
    let within = |at: i64| now.saturating_sub(at) < every.as_micros() as i64;
    let mut m = map.lock().unwrap_or_else(|e| e.into_inner());
    if m.get(login).is_some_and(|at| within(*at)) {
        return false;
    }
    if m.len() >= MAX_RENEWALS && !m.contains_key(login) {
        m.retain(|_, at| within(*at));
        if m.len() >= MAX_RENEWALS {
            m.clear();
        }
    }
    m.insert(login.to_owned(), now);
    true
}

/// Subscribes again to every remote contact of `login`. At a login of its first session (at
/// most once per [`RENEW_EVERY`]) their servers answer with the state of the moment, which
/// this server keeps no copy of; a renewal that only keeps the subscriptions alive
/// (`state_wanted` false, [`super::sub_lifetime`]) asks for the state only where the
/// subscription had lapsed (`state=changed`).
pub(crate) async fn resubscribe_all(
    fed: &Federation,
    ctx: &Ctx<'_>,
    login: &str,
    state_wanted: bool,
) {
    match ctx.db.remote_contacts(login).await {
        Ok(contacts) => {
            let from = ctx.addr(login);
            let items = contacts
                .into_iter()
                .map(|c| {
                    let p = Packet::new("S2S-SUBSCRIBE")
                        .with("from", from.clone())
                        .with("to", c.clone())
                        .with_opt("state", (!state_wanted).then(|| "changed".to_owned()));
                    (domain_of(&c).to_owned(), p)
                })
                .collect();
            queue_all(fed, ctx, login, items).await;
        }
        Err(e) => warn!("remote contacts: {e}"),
    }
}

// ---- The subject's side ----

/// `subject`'s presence as a `presence=` value: `online`, the last-seen time, or `None` when
/// never seen.
async fn presence_value(ctx: &Ctx<'_>, subject: &str) -> Option<String> {
    crate::cmd::privacy::current(ctx, subject)
        .await
        .map(|p| p.to_wire())
}

fn presence_packet(ctx: &Ctx<'_>, subject: &str, watcher: &str, presence: &str) -> Packet {
    Packet::new("S2S-PRESENCE")
        .with("from", ctx.addr(subject))
        .with("to", watcher)
        .with("presence", presence)
}

/// The first time (micros) at which a subscription stored or renewed then is still live.
pub(crate) fn live_since(fed: &Federation, now: i64) -> i64 {
    now.saturating_sub(fed.config.subscription_lifetime.as_micros() as i64)
}

async fn subscribers(ctx: &Ctx<'_>, subject: &str, only: Option<&str>) -> Vec<Subscriber> {
    let Some(fed) = ctx.federation else {
        return Vec::new();
    };
    let since = live_since(fed, ctx.now());
    match ctx.db.federation_subscribers(subject, only, since).await {
        Ok(s) => s,
        Err(e) => {
            warn!("federation subscribers: {e}");
            Vec::new()
        }
    }
}

/// Local user `login` came online (first session) or went offline (last session): its
/// subscribed remote watchers who see its presence are told; coming online also renews
/// `login`'s own subscriptions.
pub(crate) async fn presence_changed(fed: &Federation, ctx: &Ctx<'_>, login: &str, online: bool) {
    let subs = subscribers(ctx, login, None).await;
    if subs.iter().any(|s| s.sees_presence()) {
        if let Some(presence) = presence_value(ctx, login).await {
            let items = subs
                .iter()
                .filter(|s| s.sees_presence())
                .map(|s| {
                    let p = presence_packet(ctx, login, &s.watcher, &presence);
                    (s.peer.clone(), p)
                })
                .collect();
            queue_charged(fed, ctx, Charge::ItsPeer, items).await;
        }
    }
    if online && fed.renewals.take(login, ctx.now()) {
        resubscribe_all(fed, ctx, login, true).await;
    }
}

/// Local user `login` changed its profile: every subscribed remote watcher is told (names and
/// notes are not presence: visible to anyone who asks, §7.2). Both fields go, whichever
/// changed, so that a newer change can replace an unsent one ([`merge_key`]).
pub(crate) async fn profile_changed(
    fed: &Federation,
    ctx: &Ctx<'_>,
    login: &str,
    name: Option<&String>,
    note: Option<&String>,
) {
    if name.is_none() && note.is_none() {
        return;
    }
    let subs = subscribers(ctx, login, None).await;
    if subs.is_empty() {
        return;
    }
    let Some(profile) = profile_fields(ctx, login).await else {
        return;
    };
    let items = subs
        .into_iter()
        .filter(|s| !ctx.blocks.is_blocked(login, &s.watcher))
        .map(|s| (s.peer, profile_packet(ctx, login, &s.watcher, &profile)))
        .collect();
    queue_charged(fed, ctx, Charge::ItsPeer, items).await;
}

/// `subject`'s profile as sent to watchers: (name, the login when unset; note).
async fn profile_fields(ctx: &Ctx<'_>, subject: &str) -> Option<(String, String)> {
    match ctx.db.profile(subject).await {
        Ok(Some(p)) => {
            let name = if p.name.is_empty() {
                subject.to_owned()
            } else {
                p.name
            };
            Some((name, p.note))
        }
        Ok(None) => None,
        Err(e) => {
            warn!("federation profile: {e}");
            None
        }
    }
}

fn profile_packet(
    ctx: &Ctx<'_>,
    subject: &str,
    watcher: &str,
    (name, note): &(String, String),
) -> Packet {
    Packet::new("S2S-PROFILE-CHANGED")
        .with("from", ctx.addr(subject))
        .with("to", watcher)
        .with("name", name.clone())
        .with("note", note.clone())
}

/// Something changed whether remote watchers (all of them, or `only` one) see `subject`'s
/// presence (its `last-seen` setting, or it added or deleted the watcher as a contact): those
/// who see it get the current presence; those who saw it before and no longer do get
/// `presence=` (empty) — unless `gained`, for a change that can only have made it visible.
/// Before a change that hid it, a watcher saw it if it is still approved (the setting moved
/// to `nobody`) or the setting still shows it (the watcher lost its approval).
pub(crate) async fn refresh(
    fed: &Federation,
    ctx: &Ctx<'_>,
    subject: &str,
    only: Option<&str>,
    gained: bool,
) {
    let subs = subscribers(ctx, subject, only).await;
    if subs.is_empty() {
        return;
    }
    let current = presence_value(ctx, subject).await;
    let mut items = Vec::new();
    for s in subs {
        let value = match (&current, s.sees_presence()) {
            (Some(v), true) => v.as_str(),
            (None, true) => continue,
            (_, false) if gained || !(s.approved || s.shown) => continue,
            (_, false) => "",
        };
        items.push((
            s.peer.clone(),
            presence_packet(ctx, subject, &s.watcher, value),
        ));
    }
    queue_charged(fed, ctx, Charge::ItsPeer, items).await;
}

// ---- What a peer sends (inbound link) ----

/// `S2S-SUBSCRIBE`, `S2S-UNSUBSCRIBE`, `S2S-PRESENCE`, `S2S-PROFILE-CHANGED` from `peer`.
pub(super) async fn handle(sh: &Shared, peer: &str, p: Packet) -> Handled {
    let (qid, from, login) = match addressed(sh, peer, &p) {
        Ok(x) => x,
        Err(refusal) => return refusal,
    };
    let Some(fed) = sh.federation.as_deref() else {
        return Handled::Nothing;
    };
    let ctx = Ctx::new(sh);
    match p.verb.as_str() {
        "S2S-SUBSCRIBE" => {
            // `state=changed`: the watcher only keeps the subscription alive; a live one gets
            // no state of the moment (every change was pushed), one that had lapsed does.
            let only_if_lapsed = p.get("state") == Some("changed");
            let since = live_since(fed, ctx.now());
            match sh
                .db
                .federation_subscribe(peer, &from, &login, ctx.now(), since)
                .await
            {
                Ok(Subscribed::Renewed) if only_if_lapsed => Handled::Reply(ack(&qid)),
                Ok(Subscribed::Stored | Subscribed::Renewed) => {
                    send_state(fed, &ctx, &login, &from).await;
                    Handled::Reply(ack(&qid))
                }
                Ok(Subscribed::UnknownUser) => Handled::Reply(refused(&qid, "unknown-user")),
                Ok(Subscribed::TooMany) => {
                    warn!(%peer, "s2s: subscription refused: too many");
                    Handled::Reply(refused(&qid, "too-many-subscriptions"))
                }
                Err(e) => {
                    warn!("s2s subscribe: {e}");
                    Handled::Retry(retry(&qid, 5))
                }
            }
        }
        "S2S-UNSUBSCRIBE" => match sh.db.federation_unsubscribe(&from, &login).await {
            Ok(()) => Handled::Reply(ack(&qid)),
            Err(e) => {
                warn!("s2s unsubscribe: {e}");
                Handled::Retry(retry(&qid, 5))
            }
        },
        "S2S-PRESENCE" => {
            let Some(value) = p.get("presence") else {
                return Handled::Violation(refused(&qid, "malformed"));
            };
            let presence = match value {
                "" => Presence::Hidden,
                "online" => Presence::Online,
                t => match msim_shared::timestamp::parse(t) {
                    Some(at) => Presence::LastSeen(not_future(&ctx, fed, at)),
                    None => return Handled::Violation(refused(&qid, "malformed")),
                },
            };
            match ctx.db.contact_entry(&login, &from).await {
                Ok(Some(_)) => {
                    let mut rec = ContactUpdate::new(from.clone());
                    rec.presence = Some(presence);
                    let mut bytes =
                        encode(&ContactUpdated { updates: vec![rec] }.to_packet()).to_vec();
                    if let Presence::LastSeen(at) = presence {
                        let seen = UpdateLastSeen { id: from, at };
                        bytes.extend_from_slice(seen.to_packet().to_wire().as_bytes());
                    }
                    sh.hub.send(&login, &bytes::Bytes::from(bytes));
                    Handled::Reply(ack(&qid))
                }
                // Deleted meanwhile (the unsubscription is on its way): dropped.
                Ok(None) => Handled::Reply(ack(&qid)),
                Err(e) => {
                    warn!("s2s presence: {e}");
                    Handled::Retry(retry(&qid, 5))
                }
            }
        }
        "S2S-PROFILE-CHANGED" => match ctx.db.contact_entry(&login, &from).await {
            Ok(Some(own_name)) => {
                let mut rec = ContactUpdate::new(from);
                // A contact renamed by its owner keeps that name (as for local contacts, §9).
                rec.name = p
                    .get("name")
                    .filter(|_| own_name.is_none())
                    .filter(|n| crate::cmd::contacts::valid_name(n))
                    .map(str::to_owned);
                rec.note = p
                    .get("note")
                    .filter(|n| n.chars().count() <= crate::cmd::profile::MAX_NOTE)
                    .map(str::to_owned);
                if rec.name.is_some() || rec.note.is_some() {
                    let pkt = ContactUpdated { updates: vec![rec] };
                    sh.hub.send_packet(&login, &pkt.to_packet());
                }
                Handled::Reply(ack(&qid))
            }
            Ok(None) => Handled::Reply(ack(&qid)),
            Err(e) => {
                warn!("s2s profile change: {e}");
                Handled::Retry(retry(&qid, 5))
            }
        },
        other => {
            debug!(%peer, verb = other, "s2s: not a subscription packet");
            Handled::Nothing
        }
    }
}

/// A peer's last-seen time, no later than our clock allows for (§12.5: like other `at=`, a
/// time further ahead than the clock skew accepted is replaced by ours; a past one is kept).
fn not_future(ctx: &Ctx<'_>, fed: &Federation, at: time::OffsetDateTime) -> time::OffsetDateTime {
    let now = ctx.now();
    let at_micros = (at.unix_timestamp_nanos() / 1000) as i64;
    if at_micros > now.saturating_add(fed.config.max_clock_skew.as_micros() as i64) {
        crate::clock::datetime(now)
    } else {
        at
    }
}

/// After a subscription: the subject's profile and, when the watcher sees it, its presence.
async fn send_state(fed: &Federation, ctx: &Ctx<'_>, subject: &str, watcher: &str) {
    let peer = domain_of(watcher).to_owned();
    let mut items = Vec::new();
    if !ctx.blocks.is_blocked(subject, watcher) {
        if let Some(profile) = profile_fields(ctx, subject).await {
            items.push((
                peer.clone(),
                profile_packet(ctx, subject, watcher, &profile),
            ));
        }
    }
    let sees = subscribers(ctx, subject, Some(watcher))
        .await
        .first()
        .is_some_and(|s| s.sees_presence());
    if sees {
        if let Some(v) = presence_value(ctx, subject).await {
            items.push((peer.clone(), presence_packet(ctx, subject, watcher, &v)));
        }
    }
    queue_all(fed, ctx, &super::queue::reply_budget(&peer), items).await;
}

#[cfg(test)]
mod tests {
    #[test]
    fn domain_of_takes_the_part_after_the_last_at() {
        assert_eq!(super::domain_of("bob@b.example"), "b.example");
        assert_eq!(super::domain_of("b.example"), "b.example");
    }
}

#[cfg(test)]
mod renewal_tests {
    use super::{Renewals, RENEW_EVERY};
    use std::time::Duration;

    const DAY: Duration = Duration::from_secs(86_400);
    const US: i64 = 1_000_000;

    #[test]
    fn a_keep_alive_never_holds_back_a_login_renewal_but_a_login_counts_as_one() {
        let r = Renewals::default();
        // A keep-alive at t=0; a login a second later still renews (and asks for the state).
        assert!(r.due("bob", DAY, 0));
        assert!(r.take("bob", US));
        // Not twice within RENEW_EVERY.
        assert!(!r.take("bob", 2 * US));
        assert!(r.take("bob", US + RENEW_EVERY.as_micros() as i64));
        // The login renewed: no keep-alive is due until a day after it.
        assert!(!r.due("bob", DAY, 3_600 * US));
        assert!(r.due("bob", DAY, (86_400 + 61) * US));
    }
}
