//! Writes to contact lists.

use super::apply::exists;
use super::*;
use sqlx::{Sqlite, Transaction};

/// Adds a contact (refused when present, when the list is full, or for an unknown local user).
pub(super) async fn add_contact(
    tx: &mut Transaction<'_, Sqlite>,
    owner: String,
    contact: String,
    contact_local: Option<String>,
    name: Option<String>,
    group: Option<String>,
    max: i64,
) -> Result<Outcome, DbError> {
    if let Some(l) = &contact_local {
        if !exists(tx, l).await? {
            return Ok(Outcome::UnknownUser);
        }
    }
    let r: Option<(i64,)> =
        sqlx::query_as("SELECT 1 FROM contacts WHERE owner = ? AND contact = ?")
            .bind(&owner)
            .bind(&contact)
            .fetch_optional(&mut **tx)
            .await?;
    if r.is_some() {
        return Ok(Outcome::Exists);
    }
    let n: (i64,) = sqlx::query_as("SELECT COUNT(*) FROM contacts WHERE owner = ?")
        .bind(&owner)
        .fetch_one(&mut **tx)
        .await?;
    if n.0 >= max {
        return Ok(Outcome::TooMany);
    }
    sqlx::query(
        "INSERT INTO contacts (owner, contact, contact_local, name, grp) VALUES (?, ?, ?, ?, ?)",
    )
    .bind(&owner)
    .bind(&contact)
    .bind(&contact_local)
    .bind(&name)
    .bind(&group)
    .execute(&mut **tx)
    .await?;
    Ok(Outcome::Done)
}

/// Changes a contact; `Some(None)` clears the group.
pub(super) async fn change_contact(
    tx: &mut Transaction<'_, Sqlite>,
    owner: String,
    contact: String,
    name: Option<String>,
    group: Option<Option<String>>,
) -> Result<Outcome, DbError> {
    let r: Option<(i64,)> =
        sqlx::query_as("SELECT 1 FROM contacts WHERE owner = ? AND contact = ?")
            .bind(&owner)
            .bind(&contact)
            .fetch_optional(&mut **tx)
            .await?;
    if r.is_none() {
        return Ok(Outcome::NotFound);
    }
    if let Some(name) = name {
        sqlx::query("UPDATE contacts SET name = ? WHERE owner = ? AND contact = ?")
            .bind(name)
            .bind(&owner)
            .bind(&contact)
            .execute(&mut **tx)
            .await?;
    }
    if let Some(group) = group {
        sqlx::query("UPDATE contacts SET grp = ? WHERE owner = ? AND contact = ?")
            .bind(group)
            .bind(&owner)
            .bind(&contact)
            .execute(&mut **tx)
            .await?;
    }
    Ok(Outcome::Done)
}

/// Deletes a contact.
pub(super) async fn delete_contact(
    tx: &mut Transaction<'_, Sqlite>,
    owner: String,
    contact: String,
) -> Result<Outcome, DbError> {
    let r = sqlx::query("DELETE FROM contacts WHERE owner = ? AND contact = ?")
        .bind(&owner)
        .bind(&contact)
        .execute(&mut **tx)
        .await?;
    Ok(if r.rows_affected() == 0 {
        Outcome::NotFound
    } else {
        Outcome::Done
    })
}
