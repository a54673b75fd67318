//! Typing notifications (PROTOCOL.md §6): forwarded, never stored. The server ends a typing
//! notification itself when the typist disconnects or stays silent past the timeout.

use crate::cmd::{parse_target, Target};
use crate::session::Session;
use msim_shared::proto::{Body, TypingEnded, TypingStarted};
use tokio::time::Instant;

/// Most peers one session can be typing to at once (bounded state).
const MAX_TYPING: usize = 64;

#[derive(Clone, Copy)]
enum Kind {
    Started,
    Ended,
}

fn forward(s: &Session<'_>, to: &str, kind: Kind, from: &str) {
    let from = s.addr(from);
    let p = match kind {
        Kind::Started => TypingStarted { from }.to_packet(),
        Kind::Ended => TypingEnded { from }.to_packet(),
    };
    s.sh.hub.send_packet(to, &p);
}

/// The local recipient of a typing notification; `None` (dropped) for bad and remote
/// addresses and for a recipient who blocked the typist.
fn target(s: &Session<'_>, to: &str) -> Option<String> {
    match parse_target(to, &s.sh.config.domain) {
        Some(Target::Local(l)) if s.login().is_some_and(|me| s.sh.blocks.is_blocked(&l, me)) => {
            None
        }
        Some(Target::Local(l)) => Some(l),
        // Remote peers: nothing to forward while federation is off; bad addresses are ignored.
        _ => None,
    }
}

/// `TYPING-STARTED to=`.
pub fn started(s: &mut Session<'_>, to: &str, login: &str) {
    let Some(to) = target(s, to) else { return };
    let deadline = Instant::now() + s.sh.config.typing_timeout;
    if let Some(e) = s.typing.iter_mut().find(|(t, _)| *t == to) {
        e.1 = deadline;
    } else {
        if s.typing.len() >= MAX_TYPING {
            return;
        }
        s.typing.push((to.clone(), deadline));
    }
    forward(s, &to, Kind::Started, login);
}

/// `TYPING-END to=`.
pub fn ended(s: &mut Session<'_>, to: &str, login: &str) {
    let Some(to) = target(s, to) else { return };
    s.typing.retain(|(t, _)| *t != to);
    forward(s, &to, Kind::Ended, login);
}

/// Forgets typing towards `to` (a message was sent; the client ends typing itself).
pub fn clear(s: &mut Session<'_>, to: &str) {
    s.typing.retain(|(t, _)| t != to);
}

/// Sends `TYPING-END` for notifications past their deadline.
pub fn expire(s: &mut Session<'_>, now: Instant) {
    let Some(login) = s.login().map(str::to_owned) else {
        return;
    };
    let expired: Vec<String> = s
        .typing
        .iter()
        .filter(|(_, d)| *d <= now)
        .map(|(t, _)| t.clone())
        .collect();
    s.typing.retain(|(_, d)| *d > now);
    for to in expired {
        forward(s, &to, Kind::Ended, &login);
    }
}

/// The typist disconnects: end everything.
pub fn end_all(s: &mut Session<'_>, login: &str) {
    let all = std::mem::take(&mut s.typing);
    for (to, _) in all {
        forward(s, &to, Kind::Ended, login);
    }
}
