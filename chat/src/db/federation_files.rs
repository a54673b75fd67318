//! The one lookup file offers across servers need beyond `db::files` (PROTOCOL.md §12.10).

use super::rows::OFFER_COLS;
use super::{Db, DbError, Offer, OfferState};

impl Db {
    /// The offer with this transfer id, in whatever state.
    pub(crate) async fn offer_by_id(&self, id: &str) -> Result<Option<Offer>, DbError> {
        Ok(read!(self, p => sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {OFFER_COLS} FROM offers WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(p)
        .await)?)
    }
}

impl Db {
    /// Moves offer `id` from state `old` to `new` (compare-and-set: a packet repeated or
    /// racing another finds it moved already); true when this call moved it.
    pub(crate) async fn offer_move(
        &self,
        id: &str,
        old: OfferState,
        new: OfferState,
    ) -> Result<bool, DbError> {
        let n = writes!(self, w => sqlx::query("UPDATE offers SET state = $1 WHERE id = $2 AND state = $3")
            .bind(new.as_str())
            .bind(id)
            .bind(old.as_str())
            .execute(w)
            .await
            .map(|r| r.rows_affected()))?;
        Ok(n == 1)
    }

    /// Notes that the download grant of accepted remote offer `id` arrived (its relay marker
    /// `relay` becomes `relay` + `#ready`); true the first time only.
    pub(crate) async fn offer_mark_ready(&self, id: &str, relay: &str) -> Result<bool, DbError> {
        let n = writes!(self, w => sqlx::query("UPDATE offers SET relay = $1 WHERE id = $2 AND state = 'accepted' AND relay = $3")
            .bind(format!("{relay}#ready"))
            .bind(id)
            .bind(relay)
            .execute(w)
            .await
            .map(|r| r.rows_affected()))?;
        Ok(n == 1)
    }
}
