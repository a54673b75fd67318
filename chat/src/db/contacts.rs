//! Writes to contact lists.

use super::apply::exists;
use super::Tx;
use super::*;

/// Adds a contact (refused when present, when the list is full, or for an unknown local user).
pub(super) async fn add_contact(
    tx: &mut Tx<'_>,
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
    let r: Option<(i32,)> = on!(tx, c => sqlx::query_as("SELECT 1 FROM contacts WHERE owner = $1 AND contact = $2")
            .bind(&owner)
            .bind(&contact)
            .fetch_optional(c)
            .await)?;
    if r.is_some() {
        return Ok(Outcome::Exists);
    }
    let n: (i64,) = on!(tx, c => sqlx::query_as("SELECT COUNT(*) FROM contacts WHERE owner = $1")
        .bind(&owner)
        .fetch_one(c)
        .await)?;
    if n.0 >= max {
        return Ok(Outcome::TooMany);
    }
    on!(tx, c => sqlx::query(
        "INSERT INTO contacts (owner, contact, contact_local, name, grp) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(&owner)
    .bind(&contact)
    .bind(&contact_local)
    .bind(&name)
    .bind(&group)
    .execute(c)
    .await.map(|r| r.rows_affected()))?;
    Ok(Outcome::Done)
}

/// Changes a contact; `Some(None)` clears the group.
pub(super) async fn change_contact(
    tx: &mut Tx<'_>,
    owner: String,
    contact: String,
    name: Option<String>,
    group: Option<Option<String>>,
) -> Result<Outcome, DbError> {
    let r: Option<(i32,)> = on!(tx, c => sqlx::query_as("SELECT 1 FROM contacts WHERE owner = $1 AND contact = $2")
            .bind(&owner)
            .bind(&contact)
            .fetch_optional(c)
            .await)?;
    if r.is_none() {
        return Ok(Outcome::NotFound);
    }
    if let Some(name) = name {
        on!(tx, c => sqlx::query("UPDATE contacts SET name = $1 WHERE owner = $2 AND contact = $3")
            .bind(name)
            .bind(&owner)
            .bind(&contact)
            .execute(c)
            .await.map(|r| r.rows_affected()))?;
    }
    if let Some(group) = group {
        on!(tx, c => sqlx::query("UPDATE contacts SET grp = $1 WHERE owner = $2 AND contact = $3")
            .bind(group)
            .bind(&owner)
            .bind(&contact)
            .execute(c)
            .await.map(|r| r.rows_affected()))?;
    }
    Ok(Outcome::Done)
}

/// Deletes a contact.
pub(super) async fn delete_contact(
    tx: &mut Tx<'_>,
    owner: String,
    contact: String,
) -> Result<Outcome, DbError> {
    let r = on!(tx, c => sqlx::query("DELETE FROM contacts WHERE owner = $1 AND contact = $2")
        .bind(&owner)
        .bind(&contact)
        .execute(c)
        .await.map(|r| r.rows_affected()))?;
    Ok(if r == 0 {
        Outcome::NotFound
    } else {
        Outcome::Done
    })
}
