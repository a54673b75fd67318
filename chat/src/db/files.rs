//! Writes to file offers and their stored results.

use super::rows::OFFER_COLS;
use super::*;
use sqlx::{Sqlite, Transaction};

/// The recipient accepts (with this relay) or rejects (`None`) an offer.
pub(super) async fn answer_offer(
    tx: &mut Transaction<'_, Sqlite>,
    id: String,
    by: String,
    relay: Option<String>,
    now: i64,
) -> Result<Outcome, DbError> {
    let r: Option<Offer> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {OFFER_COLS} FROM offers WHERE id = ?"
    )))
    .bind(&id)
    .fetch_optional(&mut **tx)
    .await?;
    let Some(mut offer) = r else {
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
    sqlx::query("UPDATE offers SET state = ?, relay = ?, answered_at = ? WHERE id = ?")
        .bind(offer.state)
        .bind(&offer.relay)
        .bind(now)
        .bind(&offer.id)
        .execute(&mut **tx)
        .await?;
    Ok(Outcome::Answered(offer))
}

/// Stores file results for delivery at login.
pub(super) async fn add_notices(
    tx: &mut Transaction<'_, Sqlite>,
    notices: Vec<Notice>,
) -> Result<Outcome, DbError> {
    let mut seqs = Vec::with_capacity(notices.len());
    for n in notices {
        let r = sqlx::query(
            "INSERT INTO notices (login, transfer_id, packet, expires_at) VALUES (?, ?, ?, ?)",
        )
        .bind(&n.login)
        .bind(&n.transfer_id)
        .bind(&n.packet)
        .bind(n.expires_at)
        .execute(&mut **tx)
        .await?;
        seqs.push(r.last_insert_rowid());
    }
    Ok(Outcome::Notices(seqs))
}

/// Marks every pending offer past its expiry as expired and drops expired notices.
pub(super) async fn expire_offers(
    tx: &mut Transaction<'_, Sqlite>,
    now: i64,
) -> Result<Outcome, DbError> {
    let rows: Vec<Offer> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {OFFER_COLS} FROM offers WHERE state IN ('pending', 'hidden') AND expires_at <= ? LIMIT 10000"
    )))
    .bind(now)
    .fetch_all(&mut **tx)
    .await?;
    for r in &rows {
        sqlx::query("UPDATE offers SET state = 'expired' WHERE id = ?")
            .bind(&r.id)
            .execute(&mut **tx)
            .await?;
    }
    sqlx::query("DELETE FROM notices WHERE expires_at <= ?")
        .bind(now)
        .execute(&mut **tx)
        .await?;
    Ok(Outcome::Expired(rows))
}
