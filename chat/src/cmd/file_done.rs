//! `SEND-FILE-PROXY-DONE transfer-id=` (PROTOCOL.md §10.6): a user who has handled a transfer
//! (uploaded, downloaded or dismissed it) says so, and the results stored for that user are no
//! longer sent at each login. Without it a busy sender's every login replays up to 10,000
//! upload grants until their tokens expire.

use crate::cmd::context::{Ctx, Me, Reply};
use crate::db::{Outcome, WriteOp};
use msim_shared::proto::{Body, DoneFailure, FileDone, FileDoneFailed, FileDoneOk};

/// Forgets the user's stored results of one transfer; answers once the deletion is committed
/// (also when nothing was stored: the request is idempotent).
pub(crate) async fn done(ctx: &Ctx<'_>, me: Me<'_>, reply: Reply<'_>, r: FileDone) {
    let FileDone { transfer_id } = r;
    let op = WriteOp::ForgetResults {
        login: me.login.to_owned(),
        transfer_id: transfer_id.clone(),
    };
    match ctx.writer.write(op).await {
        Ok(Outcome::Done) => reply.send(FileDoneOk { transfer_id }.to_packet()),
        Ok(_) | Err(_) => reply.send(
            FileDoneFailed {
                transfer_id,
                reason: DoneFailure::StorageError,
            }
            .to_packet(),
        ),
    }
}
