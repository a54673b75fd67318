//! Typing notifications (PROTOCOL.md §6): forwarded, never stored. The server ends a typing
//! notification itself when the typist disconnects or stays silent past the timeout.

use crate::cmd::context::{Ctx, Me};
use crate::cmd::{parse_target, Target};
use msim_shared::proto::{Body, TypingEnded, TypingStarted};
use tokio::time::Instant;

/// Most peers one session can be typing to at once (bounded state).
const MAX_TYPING: usize = 64;

/// One session's typing notifications in progress: (recipient login, deadline).
#[derive(Debug, Default)]
pub(crate) struct Typing {
    peers: Vec<(String, Instant)>,
}

impl Typing {
    /// The earliest deadline, if any.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.peers.iter().map(|(_, d)| *d).min()
    }

    /// Forgets typing towards `to` (a message was sent; the client ends typing itself).
    pub(crate) fn clear(&mut self, to: &str) {
        self.peers.retain(|(t, _)| t != to);
    }

    /// Sends `TYPING-END` for notifications past their deadline.
    pub(crate) fn expire(&mut self, ctx: &Ctx<'_>, login: &str, now: Instant) {
        let expired: Vec<String> = self
            .peers
            .iter()
            .filter(|(_, d)| *d <= now)
            .map(|(t, _)| t.clone())
            .collect();
        self.peers.retain(|(_, d)| *d > now);
        for to in expired {
            forward(ctx, &to, Kind::Ended, login);
        }
    }

    /// The typist disconnects: end everything.
    pub(crate) fn end_all(&mut self, ctx: &Ctx<'_>, login: &str) {
        for (to, _) in std::mem::take(&mut self.peers) {
            forward(ctx, &to, Kind::Ended, login);
        }
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Started,
    Ended,
}

fn forward(ctx: &Ctx<'_>, to: &str, kind: Kind, from: &str) {
    let from = ctx.addr(from);
    let p = match kind {
        Kind::Started => TypingStarted { from }.to_packet(),
        Kind::Ended => TypingEnded { from }.to_packet(),
    };
    ctx.hub.send_packet(to, &p);
}

/// The local recipient of a typing notification; `None` (dropped) for bad and remote
/// addresses and for a recipient who blocked the typist.
fn target(ctx: &Ctx<'_>, me: Me<'_>, to: &str) -> Option<String> {
    match parse_target(to, &ctx.config.domain) {
        Some(Target::Local(l)) if ctx.blocks.is_blocked(&l, me.login) => None,
        Some(Target::Local(l)) => Some(l),
        // Remote peers: nothing to forward while federation is off; bad addresses are ignored.
        _ => None,
    }
}

/// Typing to a remote user goes over the peer's link when federation is on.
fn remote(ctx: &Ctx<'_>, me: Me<'_>, to: &str, started: bool) -> bool {
    match (parse_target(to, &ctx.config.domain), ctx.federation) {
        (Some(Target::Remote(a)), Some(fed)) => {
            crate::federation::hooks::typing(fed, ctx, me.login, &a, started);
            true
        }
        _ => false,
    }
}

/// `TYPING-STARTED to=`.
pub(crate) fn started(ctx: &Ctx<'_>, typing: &mut Typing, me: Me<'_>, to: &str) {
    if remote(ctx, me, to, true) {
        return;
    }
    let Some(to) = target(ctx, me, to) else {
        return;
    };
    let deadline = Instant::now() + ctx.config.typing_timeout;
    if let Some(e) = typing.peers.iter_mut().find(|(t, _)| *t == to) {
        e.1 = deadline;
    } else {
        if typing.peers.len() >= MAX_TYPING {
            return;
        }
        typing.peers.push((to.clone(), deadline));
    }
    forward(ctx, &to, Kind::Started, me.login);
}

/// `TYPING-END to=`.
pub(crate) fn ended(ctx: &Ctx<'_>, typing: &mut Typing, me: Me<'_>, to: &str) {
    if remote(ctx, me, to, false) {
        return;
    }
    let Some(to) = target(ctx, me, to) else {
        return;
    };
    typing.clear(&to);
    forward(ctx, &to, Kind::Ended, me.login);
}
