//! The group commit's set-based statements on PostgreSQL: a run of new messages, of
//! acknowledgements or of receipts delivered live is ONE statement with one array argument
//! per column (`UNNEST`), whatever the number of rows. The statement text never changes, so
//! it is parsed and planned once per connection (sqlx's statement cache) instead of once per
//! batch for a `VALUES` list or `IN (…)` list of that batch's length, and the arguments are
//! a handful of arrays instead of thousands of separate parameters.

use crate::db::StoredMessage;
use sqlx::PgConnection;

/// Most rows per statement (a batch holds at most `commit::MAX_BATCH` ops).
pub(in crate::db) const ROWS: usize = 2048;

/// The batch's insert of new messages (arguments `$1`–`$6`: one array per column).
macro_rules! insert_sql {
    () => {
        "INSERT INTO messages (seq, id, sender, recipient, at, body) \
         SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::text[], $5::bigint[], \
         $6::text[]) ON CONFLICT (id) DO NOTHING RETURNING seq"
    };
}

/// The acknowledgement, its arguments named by the caller (so it can follow the insert's six
/// in one statement): the ids, the recipients, this node, how far this node has passed.
macro_rules! ack_sql {
    ($ids:literal, $recipients:literal, $node:literal, $passed:literal) => {
        concat!(
            "UPDATE messages AS m SET pending = 0, body = CASE WHEN (m.origin = ",
            $node,
            " OR m.seq <= ",
            $passed,
            ") AND NOT EXISTS (SELECT 1 FROM cluster_nodes n WHERE n.node <> ",
            $node,
            " AND n.node <> m.origin AND COALESCE(n.fed_messages, 0) < m.seq) \
             THEN '' ELSE m.body END FROM UNNEST(",
            $ids,
            "::text[], ",
            $recipients,
            "::text[]) AS a (id, recipient) \
             WHERE m.id = a.id AND m.recipient = a.recipient AND m.pending <> 0"
        )
    };
}

/// Inserts `rows` (already numbered) and returns the seqs of the rows stored: a row whose id is
/// already stored is skipped (answered alone by the caller). The acknowledgements `acks` (as
/// [`ack_messages`]) go in the same statement, as a data-modifying `WITH`: each of a batch's
/// round trips costs a wake-up of the writer task and of the backend. The `WITH` runs on the
/// statement's snapshot, so it does not see the messages this same statement inserts; none of
/// them can be acknowledged yet (a message reaches its recipient only after its batch
/// committed), and an acknowledgement of a message not stored yet does nothing, as before.
pub(in crate::db) async fn insert_messages_acking(
    c: &mut PgConnection,
    rows: &[(usize, StoredMessage)],
    acks: &[(usize, String, String)],
    node: i64,
    passed: i64,
) -> Result<Vec<i64>, sqlx::Error> {
    let seqs: Vec<i64> = rows.iter().map(|(_, m)| m.seq).collect();
    let ids: Vec<&str> = rows.iter().map(|(_, m)| m.id.as_str()).collect();
    let senders: Vec<&str> = rows.iter().map(|(_, m)| m.sender.as_str()).collect();
    let recipients: Vec<&str> = rows.iter().map(|(_, m)| m.recipient.as_str()).collect();
    let ats: Vec<i64> = rows.iter().map(|(_, m)| m.at).collect();
    let bodies: Vec<&str> = rows.iter().map(|(_, m)| m.text.as_str()).collect();
    let q = if acks.is_empty() {
        sqlx::query_as(insert_sql!())
    } else {
        sqlx::query_as(concat!(
            "WITH acked AS (",
            ack_sql!("$7", "$8", "$9", "$10"),
            ") ",
            insert_sql!()
        ))
    };
    let q = q
        .bind(seqs)
        .bind(ids)
        .bind(senders)
        .bind(recipients)
        .bind(ats)
        .bind(bodies);
    let q = if acks.is_empty() {
        q
    } else {
        let (ack_ids, ack_recipients) = ack_columns(acks);
        q.bind(ack_ids).bind(ack_recipients).bind(node).bind(passed)
    };
    let stored: Vec<(i64,)> = q.fetch_all(c).await?;
    Ok(stored.into_iter().map(|(seq,)| seq).collect())
}

/// Marks the messages `(id, recipient)` acknowledged with one statement. Rows already
/// acknowledged (a second session's ack, a repeated ack) are left alone: no new row version.
///
/// The body is cleared in the same row version when no node may still have to push the
/// message to a session: the node that committed it pushed it then (from memory), this node
/// (`node`) has read up to `passed`, and every other node up to the position it last recorded
/// (`cluster_nodes.fed_messages`; NULL, not yet recorded, holds back). A node that registers
/// later starts reading above everything committed before (`fanout::Reader::run`), so it never
/// needs these bodies. Otherwise the body stays and the leader clears it once every node has
/// passed the message (`cluster::scrub`): one row version fewer per message when it is not.
pub(in crate::db) async fn ack_messages(
    c: &mut PgConnection,
    acks: &[(usize, String, String)],
    node: i64,
    passed: i64,
) -> Result<u64, sqlx::Error> {
    let (ids, recipients) = ack_columns(acks);
    let r = sqlx::query(ack_sql!("$1", "$2", "$3", "$4"))
        .bind(ids)
        .bind(recipients)
        .bind(node)
        .bind(passed)
        .execute(c)
        .await?;
    Ok(r.rows_affected())
}

/// Marks receipts delivered live (kept until every node has passed them, `cluster::scrub`)
/// with one statement.
pub(in crate::db) async fn receipts_delivered(
    c: &mut PgConnection,
    seqs: &[i64],
) -> Result<u64, sqlx::Error> {
    let r = sqlx::query(
        "UPDATE receipts SET delivered = 1 WHERE seq = ANY($1::bigint[]) AND delivered = 0",
    )
    .bind(seqs)
    .execute(c)
    .await?;
    Ok(r.rows_affected())
}

/// The acknowledgements' id and recipient columns.
fn ack_columns(acks: &[(usize, String, String)]) -> (Vec<&str>, Vec<&str>) {
    acks.iter()
        .map(|(_, id, r)| (id.as_str(), r.as_str()))
        .unzip()
}
