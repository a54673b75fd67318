//! `SEND-FILE-PROXY-HASH transfer-id= sha256=` (PROTOCOL.md §10.7): the sender of a large file
//! offers it without a SHA-256, hashes it while uploading, and declares the hash afterwards;
//! the server stores it on the offer and passes it on to the recipient (live, and at each
//! later login until the download token expires), whose client verifies the download with it.

use crate::cmd::context::{Ctx, Me, Reply};
use crate::cmd::files::valid_sha256;
use crate::db::{Outcome, WriteOp};
use crate::hub::{encode, Stream};
use msim_shared::proto::{Body, ErrorMalformed, FileHash, FileHashFailed, FileHashOk, HashFailure};
use tracing::info;

/// Stores the sender's SHA-256 of its accepted offer and tells the recipient.
pub(crate) async fn declare(ctx: &Ctx<'_>, me: Me<'_>, reply: Reply<'_>, r: FileHash) {
    let FileHash {
        transfer_id,
        sha256,
    } = r;
    if !valid_sha256(&sha256) {
        return reply.send(
            ErrorMalformed {
                reason: "bad-value".into(),
                detail: Some("sha256".into()),
            }
            .to_packet(),
        );
    }
    let sha256 = sha256.to_ascii_lowercase();
    let fail = |reason: HashFailure| {
        FileHashFailed {
            transfer_id: transfer_id.clone(),
            reason,
        }
        .to_packet()
    };
    let op = WriteOp::SetOfferHash {
        id: transfer_id.clone(),
        by: me.login.to_owned(),
        sha256: sha256.clone(),
        // At most the download grant's lifetime (it was issued before now).
        notice_expires: ctx.now() + ctx.config.token_ttl.as_micros() as i64,
    };
    let (recipient, seq) = match ctx.writer.write(op).await {
        Ok(Outcome::Hashed { recipient, seq }) => (recipient, seq),
        Ok(Outcome::HashRefused(reason)) => return reply.send(fail(reason)),
        Ok(_) | Err(_) => return reply.send(fail(HashFailure::StorageError)),
    };
    info!(transfer = %transfer_id, "sender declared the file's SHA-256");
    let push = FileHash {
        transfer_id: transfer_id.clone(),
        sha256,
    };
    ctx.hub.send_seq(
        &recipient,
        None,
        Stream::Notices,
        seq,
        &encode(&push.to_packet()),
    );
    reply.send(FileHashOk { transfer_id }.to_packet());
}
