//! `PING` / `PONG` (PROTOCOL.md §3). Server-initiated pings live in the session timers.

use crate::cmd::context::Reply;
use msim_shared::proto::{Body, Pong};

/// Answers `PING` with `PONG`.
pub(crate) fn ping(reply: Reply<'_>) {
    reply.send(Pong.to_packet());
}
