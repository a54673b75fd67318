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

    /// The fingerprint of the password key this database was set up with, recording `mine`
    /// first when none is recorded yet (the first node to start wins a race between fresh
    /// nodes). The caller compares the answer with its own key's.
    pub(crate) async fn claim_key_fingerprint(&self, mine: &str) -> Result<String, DbError> {
        writes!(self, w => sqlx::query(
            "INSERT INTO key_check (id, fingerprint) VALUES (1, $1) ON CONFLICT (id) DO NOTHING"
        )
        .bind(mine)
        .execute(w)
        .await
        .map(|r| r.rows_affected()))?;
        self.key_fingerprint()
            .await?
            .ok_or_else(|| DbError::Sql(sqlx::Error::RowNotFound))
    }

    /// The recorded fingerprint of the password key, if any.
    pub(crate) async fn key_fingerprint(&self) -> Result<Option<String>, DbError> {
        let row: Option<(String,)> = read!(self, p => sqlx::query_as(
            "SELECT fingerprint FROM key_check WHERE id = 1"
        )
        .fetch_optional(p)
        .await)?;
        Ok(row.map(|r| r.0))
    }

    /// Records a new password key (after `reset-secret-key`).
    pub(crate) async fn replace_key_fingerprint(&self, fingerprint: &str) -> Result<(), DbError> {
        writes!(self, w => sqlx::query(
            "INSERT INTO key_check (id, fingerprint) VALUES (1, $1) \
             ON CONFLICT (id) DO UPDATE SET fingerprint = EXCLUDED.fingerprint"
        )
        .bind(fingerprint)
        .execute(w)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(())
    }
}
