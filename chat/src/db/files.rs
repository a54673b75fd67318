//! Writes to file offers and their stored results.

use super::rows::OFFER_COLS;
use super::Tx;
use super::*;

/// The offer `id`, read inside the writer's transaction.
async fn offer_by_id(tx: &mut Tx<'_>, id: &str) -> Result<Option<Offer>, DbError> {
    Ok(on!(tx, c => sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {OFFER_COLS} FROM offers WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(c)
    .await)?)
}

/// The recipient accepts (with this relay) or rejects (`None`) an offer.
pub(super) async fn answer_offer(
    tx: &mut Tx<'_>,
    id: String,
    by: String,
    sender: Option<String>,
    relay: Option<String>,
    now: i64,
) -> Result<Outcome, DbError> {
    let r = offer_by_id(tx, &id).await?;
    let Some(mut offer) = r.filter(|o| sender.as_ref().is_none_or(|s| *s == o.sender)) else {
        return Ok(Outcome::UnknownTransfer);
    };
    if offer.recipient != by {
        return Ok(Outcome::NotRecipient);
    }
    if offer.state == OfferState::Expired
        || (offer.state == OfferState::Pending && offer.expires_at <= now)
    {
        return Ok(Outcome::OfferExpired);
    }
    if offer.state != OfferState::Pending {
        return Ok(Outcome::AlreadyAnswered);
    }
    offer.state = if relay.is_some() {
        OfferState::Accepted
    } else {
        OfferState::Rejected
    };
    offer.relay = relay;
    on!(tx, c => sqlx::query("UPDATE offers SET state = $1, relay = $2, answered_at = $3 WHERE id = $4")
        .bind(offer.state.as_str())
        .bind(&offer.relay)
        .bind(now)
        .bind(&offer.id)
        .execute(c)
        .await.map(|r| r.rows_affected()))?;
    Ok(Outcome::Answered(offer))
}

/// [`answer_offer`] of a local offer, storing `results` (notices) when the answer is recorded.
pub(super) async fn answer_with_results(
    tx: &mut Tx<'_>,
    id: String,
    by: String,
    relay: Option<String>,
    now: i64,
    results: Vec<Notice>,
) -> Result<Outcome, DbError> {
    match answer_offer(tx, id, by, None, relay, now).await? {
        Outcome::Answered(offer) => {
            let mut seqs = Vec::with_capacity(results.len());
            for n in &results {
                seqs.push(super::notices::insert(tx, n).await?);
            }
            Ok(Outcome::AnsweredWithResults(offer, seqs))
        }
        other => Ok(other),
    }
}

/// The sender `by` declares the SHA-256 of its accepted offer `id` that was offered without one
/// (PROTOCOL.md §10.7): stored on the offer once, and as a notice for the recipient, in one
/// transaction (so two racing declarations cannot both pass).
pub(super) async fn set_offer_hash(
    tx: &mut Tx<'_>,
    id: String,
    by: String,
    sha256: String,
    notice_expires: i64,
) -> Result<Outcome, DbError> {
    use msim_shared::proto::{FileHash, HashFailure};
    let r = offer_by_id(tx, &id).await?;
    let refused = |reason| Ok(Outcome::HashRefused(reason));
    let Some(offer) = r else {
        return refused(HashFailure::UnknownTransfer);
    };
    if offer.sender != by {
        return refused(HashFailure::NotSender);
    }
    // Remote recipients get the hash in the offer (the CLI hashes first for them).
    if offer.recipient.contains('@') {
        return refused(HashFailure::RemoteRecipient);
    }
    if offer.sha256.is_some() {
        return refused(HashFailure::AlreadyHashed);
    }
    if offer.state != OfferState::Accepted {
        return refused(HashFailure::NotAccepted);
    }
    on!(tx, c => sqlx::query("UPDATE offers SET sha256 = $1 WHERE id = $2")
        .bind(&sha256)
        .bind(&offer.id)
        .execute(c)
        .await.map(|r| r.rows_affected()))?;
    let notice = Notice {
        login: offer.recipient.clone(),
        transfer_id: offer.id.clone(),
        body: NoticeBody::FileHash(FileHash {
            transfer_id: offer.id,
            sha256,
        }),
        expires_at: notice_expires,
    };
    let seq = super::notices::insert(tx, &notice).await?;
    Ok(Outcome::Hashed {
        recipient: offer.recipient,
        seq,
    })
}

/// Marks every pending offer past its expiry as expired and drops expired notices.
pub(super) async fn expire_offers(tx: &mut Tx<'_>, now: i64) -> Result<Outcome, DbError> {
    let rows: Vec<Offer> = on!(tx, c => sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {OFFER_COLS} FROM offers WHERE state IN ('pending', 'hidden') AND expires_at <= $1 LIMIT 10000"
    )))
    .bind(now)
    .fetch_all(c)
    .await)?;
    for r in &rows {
        on!(tx, c => sqlx::query("UPDATE offers SET state = 'expired' WHERE id = $1")
            .bind(&r.id)
            .execute(c)
            .await.map(|r| r.rows_affected()))?;
    }
    on!(tx, c => sqlx::query("DELETE FROM notices WHERE expires_at <= $1")
        .bind(now)
        .execute(c)
        .await.map(|r| r.rows_affected()))?;
    Ok(Outcome::Expired(rows))
}
