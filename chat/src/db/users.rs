//! Writes to users: registration, last seen, profile.

use super::apply::exists;
use super::*;
use sqlx::{Sqlite, Transaction};

/// Registers a user ([`Outcome::Taken`] when the login exists).
pub(super) async fn create_user(
    tx: &mut Transaction<'_, Sqlite>,
    login: String,
    sealed: Vec<u8>,
    now: i64,
) -> Result<Outcome, DbError> {
    if exists(tx, &login).await? {
        return Ok(Outcome::Taken);
    }
    sqlx::query("INSERT INTO users (login, password, created_at) VALUES (?, ?, ?)")
        .bind(&login)
        .bind(sealed)
        .bind(now)
        .execute(&mut **tx)
        .await?;
    Ok(Outcome::Done)
}

/// Persists last seen.
pub(super) async fn set_last_seen(
    tx: &mut Transaction<'_, Sqlite>,
    login: String,
    at: i64,
) -> Result<Outcome, DbError> {
    sqlx::query("UPDATE users SET last_seen = ? WHERE login = ?")
        .bind(at)
        .bind(&login)
        .execute(&mut **tx)
        .await?;
    Ok(Outcome::Done)
}

/// Updates a profile; answers the profile before the update.
pub(super) async fn update_profile(
    tx: &mut Transaction<'_, Sqlite>,
    login: String,
    name: Option<String>,
    note: Option<String>,
) -> Result<Outcome, DbError> {
    let r: Option<(String, String, Option<i64>)> =
        sqlx::query_as("SELECT name, note, last_seen FROM users WHERE login = ?")
            .bind(&login)
            .fetch_optional(&mut **tx)
            .await?;
    let Some((old_name, old_note, last_seen)) = r else {
        return Ok(Outcome::UnknownUser);
    };
    sqlx::query("UPDATE users SET name = ?, note = ? WHERE login = ?")
        .bind(name.as_deref().unwrap_or(&old_name))
        .bind(note.as_deref().unwrap_or(&old_note))
        .bind(&login)
        .execute(&mut **tx)
        .await?;
    Ok(Outcome::OldProfile(Profile {
        name: old_name,
        note: old_note,
        last_seen,
    }))
}
