//! What the s2s listener answers a peer's packet with, and the address check every packet
//! addressed to a user passes (PROTOCOL.md §12.5): `from` on the peer's own domain, `to` ours.

use crate::server::Shared;
use msim_shared::Packet;
use tracing::warn;

/// What handling a peer's packet came to.
pub(super) enum Handled {
    Reply(Packet),
    Nothing,
    Violation(Packet),
    Retry(Packet),
}

pub(super) fn refused(qid: &str, reason: &str) -> Packet {
    Packet::new("S2S-REFUSED")
        .with("qid", qid)
        .with("reason", reason)
}

pub(super) fn ack(qid: &str) -> Packet {
    Packet::new("S2S-ACK").with("qid", qid)
}

/// `S2S-RETRY` for an item that could not be taken now.
pub(super) fn retry(qid: &str, after_secs: u32) -> Packet {
    Packet::new("S2S-RETRY")
        .with("qid", qid)
        .with("retry-after", after_secs.to_string())
}

/// A packet's `qid`, and its `from` and `to` checked as [`check_addresses`] does: (qid, from,
/// local login), or the answer that refuses it.
pub(super) fn addressed(
    sh: &Shared,
    peer: &str,
    p: &Packet,
) -> Result<(String, String, String), Handled> {
    let qid = p.get("qid").unwrap_or_default().to_owned();
    let (Some(from), Some(to)) = (p.get("from"), p.get("to")) else {
        return Err(Handled::Violation(refused(&qid, "malformed")));
    };
    match check_addresses(sh, peer, from, to) {
        Ok((from, login)) => Ok((qid, from, login)),
        Err(reason) => {
            warn!(%peer, %from, %to, reason, verb = %p.verb, "s2s: refused");
            Err(Handled::Violation(refused(&qid, reason)))
        }
    }
}

/// Checks that `from` is a user of the peer and `to` one of ours; returns (from, local login).
pub(super) fn check_addresses(
    sh: &Shared,
    peer: &str,
    from: &str,
    to: &str,
) -> Result<(String, String), &'static str> {
    let domain = &sh.config.domain;
    match crate::cmd::parse_target(from, domain) {
        Some(crate::cmd::Target::Remote(a)) if a.ends_with(&format!("@{peer}")) => {
            match crate::cmd::parse_target(to, domain) {
                Some(crate::cmd::Target::Local(l)) if to.contains('@') => Ok((a, l)),
                _ => Err("bad-to"),
            }
        }
        _ => Err("forged-from"),
    }
}
