//! One module per command family. [`dispatch`] routes a packet by verb and enforces the
//! session state (login required, not allowed while logged in).

pub mod auth;
pub mod contacts;
pub mod discovery;
pub mod files;
pub mod keepalive;
pub mod messages;
pub mod presence;
pub mod privacy;
pub mod profile;
pub mod typing;

use crate::session::Session;
use msim_shared::proto::{
    Body, Connect, ConnectContinue, ErrorBadState, ErrorMalformed, ErrorNotImplemented,
    ErrorNotLoggedIn, Ping, Pong, Register, Request,
};
use msim_shared::{Address, Packet};

/// Handles one request: decoded with the shared typed packets ([`Request::from_packet`]);
/// an unknown verb gets `ERROR-NOT-IMPLEMENTED`, the session state is checked before the
/// fields, and a known request with missing or bad fields gets `ERROR-MALFORMED`.
pub async fn dispatch(s: &mut Session<'_>, p: Packet) {
    let decoded = Request::from_packet(&p);
    // Only a known verb fails to decode.
    if let Ok(Request::Unknown(_)) = decoded {
        let e = ErrorNotImplemented {
            verb: p.verb.clone(),
        };
        return s.reply(&p, e.to_packet());
    }
    // The state is checked before the fields.
    let verb = p.verb.as_str();
    let auth = [Register::VERB, Connect::VERB, ConnectContinue::VERB].contains(&verb);
    let open = auth || verb == Ping::VERB || verb == Pong::VERB;
    let login = s.login().map(str::to_owned);
    if login.is_none() && !open {
        let e = ErrorNotLoggedIn {
            verb: p.verb.clone(),
        };
        return s.reply(&p, e.to_packet());
    }
    if login.is_some() && auth {
        let e = ErrorBadState {
            verb: p.verb.clone(),
        };
        return s.reply(&p, e.to_packet());
    }
    let req = match decoded {
        Ok(r) => r,
        Err(e) => return s.reply(&p, ErrorMalformed::from_proto_error(&e).to_packet()),
    };
    let login = login.unwrap_or_default();
    match req {
        Request::Ping(_) => keepalive::ping(s, &p),
        Request::Pong(_) | Request::Unknown(_) => {}
        Request::Register(r) => auth::register(s, &p, r).await,
        Request::Connect(r) => auth::connect(s, &p, r).await,
        Request::ConnectContinue(r) => auth::connect_continue(s, &p, r).await,
        Request::SendMessage(r) => messages::submit(s, &p, r).await,
        Request::MarkRead(r) => messages::read(s, &p, r, &login).await,
        Request::AckMessage(r) => messages::ack(s, r, &login),
        Request::TypingStart(r) => typing::started(s, &r.to, &login),
        Request::TypingStop(r) => typing::ended(s, &r.to, &login),
        Request::ContactsGet(_) => contacts::get(s, &p, &login).await,
        Request::ContactsAdd(r) => contacts::add(s, &p, r, &login).await,
        Request::ContactsChange(r) => contacts::change(s, &p, r, &login).await,
        Request::ContactsDelete(r) => contacts::delete(s, &p, r, &login).await,
        Request::ProfileUpdate(r) => profile::update(s, &p, r, &login).await,
        Request::ProfileGet(r) => profile::get(s, &p, r, &login).await,
        Request::OfferFile(r) => files::offer(s, &p, r, &login).await,
        Request::AcceptFile(r) => files::answer(s, &p, r.transfer_id, &login, true).await,
        Request::RejectFile(r) => files::answer(s, &p, r.transfer_id, &login, false).await,
        Request::PresenceApprove(r) => privacy::answer(s, &p, r.id, &login, true).await,
        Request::PresenceDeny(r) => privacy::answer(s, &p, r.id, &login, false).await,
        Request::Block(r) => privacy::block(s, &p, r, &login).await,
        Request::Unblock(r) => privacy::unblock(s, &p, r, &login).await,
        Request::PrivacySet(r) => privacy::set(s, &p, r, &login).await,
        Request::PrivacyGet(_) => privacy::get(s, &p, &login).await,
    }
}

/// A parsed address relative to this server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A user of this server (canonical login).
    Local(String),
    /// A user elsewhere (canonical `login@domain`).
    Remote(String),
}

/// Parses an address; `None` when it is not a valid address.
pub fn parse_target(text: &str, domain: &str) -> Option<Target> {
    let a = Address::parse(text).ok()?;
    let login = a.login.to_lowercase();
    if !login
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        || login.len() > 64
    {
        return None;
    }
    if a.is_local(domain) {
        Some(Target::Local(login))
    } else {
        Some(Target::Remote(a.canonical(domain)))
    }
}

/// Whether `s` contains a control character.
pub fn has_control(s: &str) -> bool {
    s.chars().any(char::is_control)
}
