//! A peer refused (`S2S-REFUSED`) one of our file packets (PROTOCOL.md §12.10): the local user
//! who made it learns it, as for every other end of a transfer. The sender of a refused
//! `S2S-FILE-OFFER` gets `SEND-FILE-PROXY-REJECTED reason=peer-refused` and its offer closes;
//! the recipient whose accepting `S2S-FILE-ANSWER` was refused gets the same, since no
//! download grant will come. Both are stored for later logins (§10.6).

use super::files::tell;
use crate::cmd::context::Ctx;
use crate::db::{OfferState, Outcome, WriteOp};
use crate::server::Shared;
use msim_shared::proto::FileRejection;
use msim_shared::Packet;
use tracing::{info, warn};

/// The §10.5 reason a user is given when the peer refused the packet.
pub(crate) const PEER_REFUSED: &str = "peer-refused";

/// The queued `line` (one of ours) was refused by `peer` with `reason`.
pub(crate) async fn refused(sh: &Shared, peer: &str, line: &str, reason: &str) {
    let Ok(p) = Packet::parse_line(line.as_bytes()) else {
        return;
    };
    let (Some(id), Some(from), Some(to)) = (p.get("transfer-id"), p.get("from"), p.get("to"))
    else {
        return;
    };
    // `from` is our user: we wrote the packet.
    let Some(login) = from
        .strip_suffix(&sh.config.domain)
        .and_then(|l| l.strip_suffix('@'))
    else {
        return;
    };
    let ctx = Ctx::new(sh);
    let told = match p.verb.as_str() {
        "S2S-FILE-OFFER" => {
            let op = WriteOp::AnswerOffer {
                sender: Some(login.to_owned()),
                id: id.to_owned(),
                by: to.to_owned(),
                relay: None,
                now: ctx.now(),
            };
            matches!(ctx.writer.write(op).await, Ok(Outcome::Answered(_)))
        }
        "S2S-FILE-ANSWER" if p.get("answer") == Some("accept") => {
            match ctx
                .db
                .offer_move(id, OfferState::Accepted, OfferState::Rejected)
                .await
            {
                Ok(moved) => moved,
                Err(e) => {
                    warn!("s2s file answer refused: {e}");
                    false
                }
            }
        }
        _ => false,
    };
    if told {
        info!(%peer, transfer = %id, verb = %p.verb, %reason, "s2s: file packet refused; user told");
        tell(&ctx, login, id, FileRejection::Other(PEER_REFUSED.into())).await;
    }
}
