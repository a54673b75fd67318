//! One write of the general path, inside its own savepoint: dispatch to the write families.

use super::{
    contacts, files, messages, notices, privacy, retention, users, DbError, Outcome, Tx, WriteOp,
};

/// Whether a local user exists, read inside the writer's transaction.
pub(super) async fn exists(tx: &mut Tx<'_>, login: &str) -> Result<bool, DbError> {
    let r: Option<(i32,)> = on!(tx, c => sqlx::query_as("SELECT 1 FROM users WHERE login = $1")
        .bind(login)
        .fetch_optional(c)
        .await)?;
    Ok(r.is_some())
}

/// Applies one write.
pub(super) async fn apply(tx: &mut Tx<'_>, op: WriteOp) -> Result<Outcome, DbError> {
    match op {
        WriteOp::CreateUser { login, sealed, now } => {
            users::create_user(tx, login, sealed, now).await
        }
        WriteOp::InsertMessage(m) => messages::insert_message(tx, m).await,
        WriteOp::MarkRead { id, reader, at } => messages::mark_read(tx, id, reader, at).await,
        WriteOp::Ack { id, recipient } => messages::ack(tx, id, recipient).await,
        WriteOp::DeleteReceipts(seqs) => messages::delete_receipts(tx, seqs).await,
        WriteOp::SetLastSeen { login, at } => users::set_last_seen(tx, login, at).await,
        WriteOp::AddContact {
            owner,
            contact,
            contact_local,
            name,
            group,
            max,
        } => contacts::add_contact(tx, owner, contact, contact_local, name, group, max).await,
        WriteOp::ChangeContact {
            owner,
            contact,
            name,
            group,
        } => contacts::change_contact(tx, owner, contact, name, group).await,
        WriteOp::DeleteContact { owner, contact } => {
            contacts::delete_contact(tx, owner, contact).await
        }
        WriteOp::UpdateProfile { login, name, note } => {
            users::update_profile(tx, login, name, note).await
        }
        WriteOp::AnswerOffer {
            id,
            by,
            sender,
            relay,
            now,
        } => files::answer_offer(tx, id, by, sender, relay, now).await,
        WriteOp::AnswerWithResults {
            id,
            by,
            relay,
            now,
            results,
        } => files::answer_with_results(tx, id, by, relay, now, results).await,
        WriteOp::SetOfferHash {
            id,
            by,
            sha256,
            notice_expires,
        } => files::set_offer_hash(tx, id, by, sha256, notice_expires).await,
        WriteOp::AddNotices(notices) => notices::add_notices(tx, notices).await,
        WriteOp::ForgetResults { login, transfer_id } => {
            notices::forget(tx, &login, &transfer_id).await
        }
        WriteOp::ExpireOffers { now } => files::expire_offers(tx, now).await,
        WriteOp::Purge {
            expire_before,
            forget_before,
            limit,
        } => retention::purge(tx, expire_before, forget_before, limit)
            .await
            .map(Outcome::Purged),
        WriteOp::Privacy(op) => privacy::apply(tx, op).await,
    }
}
