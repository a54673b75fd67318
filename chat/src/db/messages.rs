//! Writes to messages and receipts (general path; runs of them go through [`super::batch`]).

use super::apply::exists;
use super::Tx;
use super::*;

/// Stores a message for a local recipient (the general path of [`super::batch`]).
pub(super) async fn insert_message(tx: &mut Tx<'_>, m: StoredMessage) -> Result<Outcome, DbError> {
    if !exists(tx, &m.recipient).await? {
        return Ok(Outcome::UnknownUser);
    }
    on!(tx, c => sqlx::query(
        "INSERT INTO messages (seq, id, sender, recipient, at, body) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(m.seq)
    .bind(&m.id)
    .bind(&m.sender)
    .bind(&m.recipient)
    .bind(m.at)
    .bind(&m.text)
    .execute(c)
    .await.map(|r| r.rows_affected()))?;
    Ok(Outcome::Done)
}

/// Marks a message read by its recipient and queues a receipt for the sender.
pub(super) async fn mark_read(
    tx: &mut Tx<'_>,
    id: String,
    reader: String,
    at: i64,
) -> Result<Outcome, DbError> {
    let r: Option<(String, Option<i64>)> = on!(tx, c => sqlx::query_as("SELECT sender, read_at FROM messages WHERE id = $1 AND recipient = $2")
            .bind(&id)
            .bind(&reader)
            .fetch_optional(c)
            .await)?;
    let Some((sender, read_at)) = r else {
        return Ok(Outcome::UnknownMessage);
    };
    let at = read_at.unwrap_or(at);
    let sql = format!(
        "UPDATE messages SET pending = 0{}, read_at = $1 WHERE id = $2",
        clear_body(tx)
    );
    on!(tx, c => sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(at)
        .bind(&id)
        .execute(c)
        .await.map(|r| r.rows_affected()))?;
    let receipt: (i64,) = on!(tx, c => sqlx::query_as(
        "INSERT INTO receipts (sender, message_id, reader, at) VALUES ($1, $2, $3, $4) RETURNING seq",
    )
    .bind(&sender)
    .bind(&id)
    .bind(&reader)
    .bind(at)
    .fetch_one(c)
    .await)?;
    Ok(Outcome::Read {
        sender,
        receipt: receipt.0,
        at,
    })
}

/// The recipient has the message: stop redelivering it.
pub(super) async fn ack(
    tx: &mut Tx<'_>,
    id: String,
    recipient: String,
) -> Result<Outcome, DbError> {
    let sql = format!(
        "UPDATE messages SET pending = 0{} WHERE id = $1 AND recipient = $2",
        clear_body(tx)
    );
    on!(tx, c => sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(&id)
        .bind(&recipient)
        .execute(c)
        .await.map(|r| r.rows_affected()))?;
    Ok(Outcome::Done)
}

/// Drops receipts delivered live. On PostgreSQL they are only marked delivered: the other
/// nodes' readers may still have to push them to the sender's sessions there; the cluster's
/// leader deletes them once every node has passed them (`cluster::scrub`).
pub(super) async fn delete_receipts(tx: &mut Tx<'_>, seqs: Vec<i64>) -> Result<Outcome, DbError> {
    match tx {
        Tx::Sqlite(c) => {
            for s in seqs {
                sqlx::query("DELETE FROM receipts WHERE seq = $1")
                    .bind(s)
                    .execute(&mut **c)
                    .await?;
            }
        }
        Tx::Postgres(c) => {
            for chunk in seqs.chunks(super::postgres::bulk::ROWS) {
                super::postgres::bulk::receipts_delivered(c, chunk).await?;
            }
        }
    }
    Ok(Outcome::Done)
}

/// The `SET` clause that forgets an acknowledged or read message's body: at once on SQLite
/// (one node); on PostgreSQL the body stays until every node's reader has pushed the message
/// to its sessions (a recipient's other sessions may be on other nodes), then the cluster's
/// leader clears it (`cluster::scrub`); the batched acknowledgement clears it at once when
/// every node has already passed it (`postgres::bulk::ack_messages`).
pub(super) fn clear_body(tx: &Tx<'_>) -> &'static str {
    match tx {
        Tx::Sqlite(_) => ", body = ''",
        Tx::Postgres(_) => "",
    }
}
