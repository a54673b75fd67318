//! Writes to messages and receipts (general path; runs of them go through [`super::batch`]).

use super::apply::exists;
use super::*;
use sqlx::{Sqlite, Transaction};

/// Stores a message for a local recipient (the general path of [`super::batch`]).
pub(super) async fn insert_message(
    tx: &mut Transaction<'_, Sqlite>,
    m: StoredMessage,
) -> Result<Outcome, DbError> {
    if !exists(tx, &m.recipient).await? {
        return Ok(Outcome::UnknownUser);
    }
    sqlx::query(
        "INSERT INTO messages (seq, id, sender, recipient, at, body) VALUES (?, ?, ?, ?, ?, ?)",
    )
    .bind(m.seq)
    .bind(&m.id)
    .bind(&m.sender)
    .bind(&m.recipient)
    .bind(m.at)
    .bind(&m.text)
    .execute(&mut **tx)
    .await?;
    Ok(Outcome::Done)
}

/// Marks a message read by its recipient and queues a receipt for the sender.
pub(super) async fn mark_read(
    tx: &mut Transaction<'_, Sqlite>,
    id: String,
    reader: String,
    at: i64,
) -> Result<Outcome, DbError> {
    let r: Option<(String, Option<i64>)> =
        sqlx::query_as("SELECT sender, read_at FROM messages WHERE id = ? AND recipient = ?")
            .bind(&id)
            .bind(&reader)
            .fetch_optional(&mut **tx)
            .await?;
    let Some((sender, read_at)) = r else {
        return Ok(Outcome::UnknownMessage);
    };
    let at = read_at.unwrap_or(at);
    sqlx::query("UPDATE messages SET pending = 0, body = '', read_at = ? WHERE id = ?")
        .bind(at)
        .bind(&id)
        .execute(&mut **tx)
        .await?;
    let receipt: (i64,) = sqlx::query_as(
        "INSERT INTO receipts (sender, message_id, reader, at) VALUES (?, ?, ?, ?) RETURNING seq",
    )
    .bind(&sender)
    .bind(&id)
    .bind(&reader)
    .bind(at)
    .fetch_one(&mut **tx)
    .await?;
    Ok(Outcome::Read {
        sender,
        receipt: receipt.0,
        at,
    })
}

/// The recipient has the message: stop redelivering it.
pub(super) async fn ack(
    tx: &mut Transaction<'_, Sqlite>,
    id: String,
    recipient: String,
) -> Result<Outcome, DbError> {
    sqlx::query("UPDATE messages SET pending = 0, body = '' WHERE id = ? AND recipient = ?")
        .bind(&id)
        .bind(&recipient)
        .execute(&mut **tx)
        .await?;
    Ok(Outcome::Done)
}

/// Drops receipts delivered live.
pub(super) async fn delete_receipts(
    tx: &mut Transaction<'_, Sqlite>,
    seqs: Vec<i64>,
) -> Result<Outcome, DbError> {
    for s in seqs {
        sqlx::query("DELETE FROM receipts WHERE seq = ?")
            .bind(s)
            .execute(&mut **tx)
            .await?;
    }
    Ok(Outcome::Done)
}
