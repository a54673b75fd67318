//! Stored passwords as a whole: what the start-up key check samples and what the operator
//! commands (`msim-chat reset-secret-key`, `msim-chat set-password`) change. These run while
//! no server is serving the database, so they write directly instead of through the writer.

use super::{Db, DbError};

impl Db {
    /// How many accounts have a stored (sealed) password. Accounts locked by
    /// [`Db::clear_passwords`] hold an empty value and are not counted.
    pub(crate) async fn sealed_password_count(&self) -> Result<i64, DbError> {
        let (n,): (i64,) = read!(self, p => sqlx::query_as(
            "SELECT COUNT(*) FROM users WHERE length(password) > 0"
        )
        .fetch_one(p)
        .await)?;
        Ok(n)
    }

    /// Up to `limit` `(login, sealed password)` pairs, oldest accounts first.
    pub(crate) async fn sample_sealed_passwords(
        &self,
        limit: i64,
    ) -> Result<Vec<(String, Vec<u8>)>, DbError> {
        Ok(read!(self, p => sqlx::query_as(
            "SELECT login, password FROM users WHERE length(password) > 0 \
             ORDER BY created_at, login LIMIT $1",
        )
        .bind(limit)
        .fetch_all(p)
        .await)?)
    }

    /// Empties every stored password; returns how many accounts were locked. An empty sealed
    /// value never opens, so these accounts cannot log in until [`Db::set_password`].
    pub(crate) async fn clear_passwords(&self) -> Result<u64, DbError> {
        Ok(writes!(self, w => sqlx::query(
            "UPDATE users SET password = $1 WHERE length(password) > 0"
        )
        .bind(Vec::<u8>::new())
        .execute(w)
        .await
        .map(|r| r.rows_affected()))?)
    }

    /// Replaces one account's sealed password; false when the login does not exist.
    pub(crate) async fn set_password(&self, login: &str, sealed: &[u8]) -> Result<bool, DbError> {
        let n = writes!(self, w => sqlx::query("UPDATE users SET password = $1 WHERE login = $2")
            .bind(sealed)
            .bind(login)
            .execute(w)
            .await
            .map(|r| r.rows_affected()))?;
        Ok(n == 1)
    }
}
