//! The one lookup file offers across servers need beyond `db::files` (PROTOCOL.md §12.10).

use super::rows::OFFER_COLS;
use super::{Db, DbError, Offer};

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
