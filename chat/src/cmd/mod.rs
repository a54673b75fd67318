//! One module per command family. [`dispatch`] routes a packet by verb and enforces the
//! session state (login required, not allowed while logged in).

pub mod auth;
pub mod contacts;
pub mod files;
pub mod keepalive;
pub mod messages;
pub mod presence;
pub mod profile;
pub mod typing;

use crate::session::Session;
use msim_shared::{Address, Packet};

/// Handles one request.
pub async fn dispatch(s: &mut Session<'_>, p: Packet) {
    match p.verb.as_str() {
        "PING" => return keepalive::ping(s, &p),
        "PONG" => return,
        "REGISTER" => return auth::register(s, &p).await,
        "CONNECT" => return auth::connect(s, &p).await,
        "CONNECT-CONTINUE" => return auth::connect_continue(s, &p).await,
        _ => {}
    }
    let known = matches!(
        p.verb.as_str(),
        "MESSAGE"
            | "MESSAGE-READ"
            | "MESSAGE-ACK"
            | "TYPING-STARTED"
            | "TYPING-END"
            | "CONTACTS-GET"
            | "CONTACTS-ADD"
            | "CONTACTS-CHANGE"
            | "CONTACTS-DELETE"
            | "PROFILE-UPDATE"
            | "PROFILE-GET"
            | "SEND-FILE-PROXY"
            | "SEND-FILE-PROXY-ACCEPT"
            | "SEND-FILE-PROXY-REJECT"
    );
    if !known {
        s.reply(
            &p,
            Packet::new("ERROR-NOT-IMPLEMENTED").with("type", p.verb.clone()),
        );
        return;
    }
    let Some(login) = s.login().map(str::to_owned) else {
        s.reply(
            &p,
            Packet::new("ERROR-NOT-LOGGED-IN").with("type", p.verb.clone()),
        );
        return;
    };
    match p.verb.as_str() {
        "MESSAGE" => messages::submit(s, p.clone()).await,
        "MESSAGE-READ" => messages::read(s, &p, &login).await,
        "MESSAGE-ACK" => messages::ack(s, &p, &login),
        "TYPING-STARTED" => typing::started(s, &p, &login),
        "TYPING-END" => typing::ended(s, &p, &login),
        "CONTACTS-GET" => contacts::get(s, &p, &login).await,
        "CONTACTS-ADD" => contacts::add(s, &p, &login).await,
        "CONTACTS-CHANGE" => contacts::change(s, &p, &login).await,
        "CONTACTS-DELETE" => contacts::delete(s, &p, &login).await,
        "PROFILE-UPDATE" => profile::update(s, &p, &login).await,
        "PROFILE-GET" => profile::get(s, &p, &login).await,
        "SEND-FILE-PROXY" => files::offer(s, &p, &login).await,
        "SEND-FILE-PROXY-ACCEPT" => files::answer(s, &p, &login, true).await,
        "SEND-FILE-PROXY-REJECT" => files::answer(s, &p, &login, false).await,
        _ => {}
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
