//! Writes to contact lists.

use super::apply::exists;
use super::Tx;
use super::*;

/// The per-owner lists with a size limit.
#[derive(Debug, Clone, Copy)]
pub(super) enum OwnedList {
    Contacts,
    Blocks,
}

/// Why `owner` may not add `other` to `list`: `Exists` when it is there already, `TooMany` when
/// the list holds `max` entries; `None` when there is room.
pub(super) async fn list_refusal(
    tx: &mut Tx<'_>,
    list: OwnedList,
    owner: &str,
    other: &str,
    max: i64,
) -> Result<Option<Outcome>, DbError> {
    let (present, count) = match list {
        OwnedList::Contacts => (
            "SELECT 1 FROM contacts WHERE owner = $1 AND contact = $2",
            "SELECT COUNT(*) FROM contacts WHERE owner = $1",
        ),
        OwnedList::Blocks => (
            "SELECT 1 FROM blocks WHERE owner = $1 AND blocked = $2",
            "SELECT COUNT(*) FROM blocks WHERE owner = $1",
        ),
    };
    let there: Option<(i32,)> = on!(tx, c => sqlx::query_as(present)
        .bind(owner)
        .bind(other)
        .fetch_optional(c)
        .await)?;
    if there.is_some() {
        return Ok(Some(Outcome::Exists));
    }
    let (n,): (i64,) = on!(tx, c => sqlx::query_as(count).bind(owner).fetch_one(c).await)?;
    Ok((n >= max).then_some(Outcome::TooMany))
}

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
    if let Some(refusal) = list_refusal(tx, OwnedList::Contacts, &owner, &contact, max).await? {
        return Ok(refusal);
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
    list_remove(tx, OwnedList::Contacts, &owner, &contact).await
}

/// Removes `other` from `owner`'s `list`: `NotFound` when it was not there.
pub(super) async fn list_remove(
    tx: &mut Tx<'_>,
    list: OwnedList,
    owner: &str,
    other: &str,
) -> Result<Outcome, DbError> {
    let sql = match list {
        OwnedList::Contacts => "DELETE FROM contacts WHERE owner = $1 AND contact = $2",
        OwnedList::Blocks => "DELETE FROM blocks WHERE owner = $1 AND blocked = $2",
    };
    let removed = on!(tx, c => sqlx::query(sql)
        .bind(owner)
        .bind(other)
        .execute(c)
        .await
        .map(|r| r.rows_affected()))?;
    Ok(if removed == 0 {
        Outcome::NotFound
    } else {
        Outcome::Done
    })
}
