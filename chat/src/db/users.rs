//! Writes to users: registration, last seen, profile.

use super::apply::exists;
use super::Tx;
use super::*;

/// Registers a user ([`Outcome::Taken`] when the login exists).
pub(super) async fn create_user(
    tx: &mut Tx<'_>,
    login: String,
    sealed: Vec<u8>,
    now: i64,
) -> Result<Outcome, DbError> {
    if exists(tx, &login).await? {
        return Ok(Outcome::Taken);
    }
    on!(tx, c => sqlx::query("INSERT INTO users (login, password, created_at) VALUES ($1, $2, $3)")
        .bind(&login)
        .bind(sealed)
        .bind(now)
        .execute(c)
        .await.map(|r| r.rows_affected()))?;
    Ok(Outcome::Done)
}

/// Persists last seen.
pub(super) async fn set_last_seen(
    tx: &mut Tx<'_>,
    login: String,
    at: i64,
) -> Result<Outcome, DbError> {
    on!(tx, c => sqlx::query("UPDATE users SET last_seen = $1 WHERE login = $2")
        .bind(at)
        .bind(&login)
        .execute(c)
        .await.map(|r| r.rows_affected()))?;
    Ok(Outcome::Done)
}

/// Updates a profile; answers the profile before the update.
pub(super) async fn update_profile(
    tx: &mut Tx<'_>,
    login: String,
    name: Option<String>,
    note: Option<String>,
) -> Result<Outcome, DbError> {
    let r: Option<(String, String, Option<i64>)> = on!(tx, c => sqlx::query_as("SELECT name, note, last_seen FROM users WHERE login = $1")
            .bind(&login)
            .fetch_optional(c)
            .await)?;
    let Some((old_name, old_note, last_seen)) = r else {
        return Ok(Outcome::UnknownUser);
    };
    on!(tx, c => sqlx::query("UPDATE users SET name = $1, note = $2 WHERE login = $3")
        .bind(name.as_deref().unwrap_or(&old_name))
        .bind(note.as_deref().unwrap_or(&old_note))
        .bind(&login)
        .execute(c)
        .await.map(|r| r.rows_affected()))?;
    Ok(Outcome::OldProfile(Profile {
        name: old_name,
        note: old_note,
        last_seen,
    }))
}
