//! `PING` / `PONG` (PROTOCOL.md §3). Server-initiated pings live in the session timers.

use crate::session::Session;
use msim_shared::proto::{Body, Pong};
use msim_shared::Packet;

/// Answers `PING` with `PONG`.
pub fn ping(s: &mut Session<'_>, p: &Packet) {
    s.reply(p, Pong.to_packet());
}
