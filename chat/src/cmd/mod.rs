//! One module per command family. [`dispatch`] routes a packet by verb and enforces the
//! session state (login required, not allowed while logged in).

pub(crate) mod auth;
pub(crate) mod contacts;
pub(crate) mod context;
pub(crate) mod discovery;
pub(crate) mod file_done;
pub(crate) mod file_hash;
pub(crate) mod files;
pub(crate) mod keepalive;
pub(crate) mod messages;
pub(crate) mod notices;
pub(crate) mod presence;
pub(crate) mod privacy;
pub(crate) mod profile;
pub(crate) mod typing;

use crate::server::Shared;
use crate::session::Outbox;
use context::{Ctx, Gate, Me, Relays, Reply, RequestRef};
use msim_shared::proto::{
    Body, Connect, ConnectContinue, ErrorBadState, ErrorMalformed, ErrorNotImplemented,
    ErrorNotLoggedIn, Ping, Pong, Register, Request, SendMessage,
};
use msim_shared::Packet;
use std::net::SocketAddr;

/// The parts of a connection's state that requests may change, lent by the session.
pub(crate) struct Conn<'s> {
    /// Where direct answers go.
    pub(crate) out: &'s mut Outbox,
    /// The client's address.
    pub(crate) peer: SocketAddr,
    /// The logged-in user, if any.
    pub(crate) me: Option<Me<'s>>,
    /// The login challenge in progress (set by `CONNECT`, taken by `CONNECT-CONTINUE`).
    pub(crate) challenge: &'s mut Option<auth::Challenge>,
    /// Typing notifications in progress.
    pub(crate) typing: &'s mut typing::Typing,
}

/// What the session still has to do after [`dispatch`].
pub(crate) enum Effect {
    /// Nothing.
    Done,
    /// The password was right: log `login` in and answer `CONNECT-OK` to `reply`.
    LoggedIn { login: String, reply: RequestRef },
    /// A `MESSAGE` went to the group-commit writer; answered once committed.
    Submitted(messages::InFlight),
    /// The answer to a pipelined `MESSAGE` that was not submitted: sent after the answers to
    /// the messages before it, to keep request order.
    AfterDrain(RequestRef, Packet),
}

/// Whether `p` is a `MESSAGE` of a logged-in session, which is pipelined: the session does not
/// wait for earlier messages' commits before handing it to [`dispatch`].
pub(crate) fn is_pipelined(p: &Packet, logged_in: bool) -> bool {
    logged_in && p.verb == SendMessage::VERB
}

/// Handles one request: the one place packets are decoded ([`Request::from_packet`]). An
/// unknown verb gets `ERROR-NOT-IMPLEMENTED`, the session state is checked before the fields,
/// and a known request with missing or bad fields gets `ERROR-MALFORMED`.
pub(crate) async fn dispatch(sh: &Shared, conn: Conn<'_>, p: &Packet) -> Effect {
    let Conn {
        out,
        peer,
        me,
        challenge,
        typing,
    } = conn;
    let reply = Reply::to(out, p);
    let decoded = Request::from_packet(p);
    // Only a known verb fails to decode.
    if let Ok(Request::Unknown(_)) = decoded {
        let e = ErrorNotImplemented {
            verb: p.verb.clone(),
        };
        reply.send(e.to_packet());
        return Effect::Done;
    }
    // The state is checked before the fields.
    let verb = p.verb.as_str();
    let auth = [Register::VERB, Connect::VERB, ConnectContinue::VERB].contains(&verb);
    let open = auth || verb == Ping::VERB || verb == Pong::VERB;
    if me.is_none() && !open {
        let e = ErrorNotLoggedIn {
            verb: p.verb.clone(),
        };
        reply.send(e.to_packet());
        return Effect::Done;
    }
    if me.is_some() && auth {
        let e = ErrorBadState {
            verb: p.verb.clone(),
        };
        reply.send(e.to_packet());
        return Effect::Done;
    }
    let req = match decoded {
        Ok(r) => r,
        Err(e) => {
            let answer = ErrorMalformed::from_proto_error(&e).to_packet();
            if is_pipelined(p, me.is_some()) {
                return Effect::AfterDrain(reply.defer(), answer);
            }
            reply.send(answer);
            return Effect::Done;
        }
    };
    let ctx = Ctx::new(sh);
    let Some(me) = me else {
        match req {
            Request::Ping(_) => keepalive::ping(reply),
            Request::Register(r) => auth::register(&ctx, &Gate::new(sh, peer), reply, r).await,
            Request::Connect(r) => {
                *challenge = Some(auth::connect(&ctx, &Gate::new(sh, peer), reply, r).await);
            }
            Request::ConnectContinue(r) => {
                let gate = Gate::new(sh, peer);
                if let Some((login, reply)) =
                    auth::connect_continue(&ctx, &gate, reply, challenge.take(), r).await
                {
                    return Effect::LoggedIn { login, reply };
                }
            }
            _ => {}
        }
        return Effect::Done;
    };
    match req {
        Request::Ping(_) => keepalive::ping(reply),
        Request::SendMessage(r) => {
            return match messages::submit(&ctx, me, reply, r).await {
                Ok(f) => Effect::Submitted(f),
                Err((reply, answer)) => Effect::AfterDrain(reply, answer),
            }
        }
        Request::MarkRead(r) => messages::read(&ctx, me, reply, r).await,
        Request::AckMessage(r) => messages::ack(&ctx, me, r),
        Request::TypingStart(r) => typing::started(&ctx, typing, me, &r.to),
        Request::TypingStop(r) => typing::ended(&ctx, typing, me, &r.to),
        Request::ContactsGet(_) => contacts::get(&ctx, me, reply).await,
        Request::ContactsAdd(r) => contacts::add(&ctx, me, reply, r).await,
        Request::ContactsChange(r) => contacts::change(&ctx, me, reply, r).await,
        Request::ContactsDelete(r) => contacts::delete(&ctx, me, reply, r).await,
        Request::ProfileUpdate(r) => profile::update(&ctx, me, reply, r).await,
        Request::ProfileGet(r) => profile::get(&ctx, me, reply, r).await,
        Request::OfferFile(r) => {
            files::offer(&ctx, &Relays::new(sh), me, peer, reply, r).await;
        }
        Request::AcceptFile(r) => {
            files::answer(&ctx, &Relays::new(sh), me, reply, r.transfer_id, true).await;
        }
        Request::RejectFile(r) => {
            files::answer(&ctx, &Relays::new(sh), me, reply, r.transfer_id, false).await;
        }
        Request::FileHash(r) => file_hash::declare(&ctx, me, reply, r).await,
        Request::FileDone(r) => file_done::done(&ctx, me, reply, r).await,
        Request::PresenceApprove(r) => privacy::answer(&ctx, me, reply, r.id, true).await,
        Request::PresenceDeny(r) => privacy::answer(&ctx, me, reply, r.id, false).await,
        Request::Block(r) => privacy::block(&ctx, me, reply, r).await,
        Request::Unblock(r) => privacy::unblock(&ctx, me, reply, r).await,
        Request::PrivacySet(r) => privacy::set(&ctx, me, reply, r).await,
        Request::PrivacyGet(_) => privacy::get(&ctx, me, reply).await,
        // Checked above: no login request once logged in; `PONG` and unknown verbs need
        // nothing.
        Request::Register(_)
        | Request::Connect(_)
        | Request::ConnectContinue(_)
        | Request::Pong(_)
        | Request::Unknown(_) => {}
    }
    Effect::Done
}

/// A parsed address relative to this server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    /// A user of this server (canonical login).
    Local(String),
    /// A user elsewhere (canonical `login@domain`).
    Remote(String),
}

/// Parses an address; `None` when it is not a valid address. The domain part is made
/// canonical first (lower case, no `:port`, no trailing dot: `federation::domain`), so that one
/// domain is one peer for policy, queues and DNS.
pub(crate) fn parse_target(text: &str, domain: &str) -> Option<Target> {
    if text.len() > msim_shared::address::MAX_ADDRESS_LEN {
        return None;
    }
    let (login, host) = match text.split_once('@') {
        Some((login, host)) => (
            login,
            Some(crate::federation::domain::canonical_domain(host)?),
        ),
        None => (text, None),
    };
    let login = login.to_lowercase();
    if login.is_empty()
        || !login
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        || login.len() > 64
    {
        return None;
    }
    match host {
        Some(h) if !h.eq_ignore_ascii_case(domain) => Some(Target::Remote(format!("{login}@{h}"))),
        _ => Some(Target::Local(login)),
    }
}

/// Whether `s` contains a control character.
pub(crate) fn has_control(s: &str) -> bool {
    s.chars().any(char::is_control)
}
