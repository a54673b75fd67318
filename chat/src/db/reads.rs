//! Reads: short indexed lookups on the reader pool.

use super::rows::OFFER_COLS;
use super::*;

impl Db {
    /// The sealed password of a login.
    pub(crate) async fn password(&self, login: &str) -> Result<Option<Vec<u8>>, DbError> {
        let r: Option<(Vec<u8>,)> = read!(self, p => sqlx::query_as("SELECT password FROM users WHERE login = $1")
            .bind(login)
            .fetch_optional(p)
            .await)?;
        Ok(r.map(|r| r.0))
    }

    /// A user's profile.
    pub(crate) async fn profile(&self, login: &str) -> Result<Option<Profile>, DbError> {
        Ok(
            read!(self, p => sqlx::query_as("SELECT name, note, last_seen FROM users WHERE login = $1")
                .bind(login)
                .fetch_optional(p)
                .await)?,
        )
    }

    /// The high-water marks of the stored streams, read in one transaction. Every item
    /// committed so far has a sequence number at or below its mark, every later one above.
    pub(crate) async fn marks(&self) -> Result<Marks, DbError> {
        let r: (i64, i64, i64, i64) = read!(self, p => sqlx::query_as(
            "SELECT COALESCE((SELECT MAX(seq) FROM messages), 0), \
             COALESCE((SELECT MAX(seq) FROM receipts), 0), \
             COALESCE((SELECT MAX(seq) FROM offers), 0), \
             COALESCE((SELECT MAX(seq) FROM notices), 0)",
        )
        .fetch_one(p)
        .await)?;
        Ok(Marks {
            messages: r.0,
            receipts: r.1,
            offers: r.2,
            notices: r.3,
        })
    }

    /// [`Db::marks`], and in the same statement (one snapshot, so nothing slips between the
    /// two) which of `login`'s stored backlogs hold anything at or below them: a login reads
    /// only those (most logins, a `send-file`'s above all, have none). `now`: what has
    /// expired by then does not count.
    pub(crate) async fn login_marks(
        &self,
        login: &str,
        now: i64,
    ) -> Result<(Marks, Backlog), DbError> {
        // PostgreSQL keeps receipts delivered live (marked) until every node has passed them.
        let undelivered = match &self.backend {
            Backend::Sqlite(_) => "",
            Backend::Postgres(_) => " AND delivered = 0",
        };
        let sql = format!(
            "SELECT COALESCE((SELECT MAX(seq) FROM messages), 0), \
             COALESCE((SELECT MAX(seq) FROM receipts), 0), \
             COALESCE((SELECT MAX(seq) FROM offers), 0), \
             COALESCE((SELECT MAX(seq) FROM notices), 0), \
             EXISTS (SELECT 1 FROM messages WHERE recipient = $1 AND pending = 1), \
             EXISTS (SELECT 1 FROM receipts WHERE sender = $1{undelivered}), \
             EXISTS (SELECT 1 FROM offers WHERE recipient = $1 AND state = 'pending' \
                     AND expires_at > $2), \
             EXISTS (SELECT 1 FROM notices WHERE login = $1 AND expires_at > $2)"
        );
        type Row = (i64, i64, i64, i64, bool, bool, bool, bool);
        let r: Row = read!(self, p => sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
            .bind(login)
            .bind(now)
            .fetch_one(p)
            .await)?;
        let marks = Marks {
            messages: r.0,
            receipts: r.1,
            offers: r.2,
            notices: r.3,
        };
        let backlog = Backlog {
            messages: r.4,
            receipts: r.5,
            offers: r.6,
            notices: r.7,
        };
        Ok((marks, backlog))
    }

    /// Pending (unacknowledged, unread) messages for `login` with `after_seq < seq <= max_seq`,
    /// oldest first.
    pub(crate) async fn pending_messages(
        &self,
        login: &str,
        after_seq: i64,
        max_seq: i64,
        limit: i64,
    ) -> Result<Vec<StoredMessage>, DbError> {
        Ok(read!(self, p => sqlx::query_as(
            "SELECT seq, id, sender, recipient, at, body FROM messages \
             WHERE recipient = $1 AND pending = 1 AND seq > $2 AND seq <= $3 ORDER BY seq LIMIT $4",
        )
        .bind(login)
        .bind(after_seq)
        .bind(max_seq)
        .bind(limit)
        .fetch_all(p)
        .await)?)
    }

    /// Read receipts waiting for `sender` with `seq <= max_seq`, oldest first.
    pub(crate) async fn pending_receipts(
        &self,
        sender: &str,
        max_seq: i64,
    ) -> Result<Vec<Receipt>, DbError> {
        // PostgreSQL keeps receipts delivered live (marked) until every node has passed them.
        let undelivered = match &self.backend {
            Backend::Sqlite(_) => "",
            Backend::Postgres(_) => " AND delivered = 0",
        };
        let sql = format!(
            "SELECT seq, message_id, reader, at FROM receipts WHERE sender = $1 AND seq <= $2{undelivered} \
             ORDER BY seq LIMIT 10000"
        );
        Ok(
            read!(self, p => sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
        .bind(sender)
        .bind(max_seq)
        .fetch_all(p)
        .await)?,
        )
    }

    /// Unanswered, unexpired offers for `recipient` with `seq <= max_seq`, oldest first.
    pub(crate) async fn pending_offers(
        &self,
        recipient: &str,
        now: i64,
        max_seq: i64,
    ) -> Result<Vec<Offer>, DbError> {
        Ok(read!(self, p => sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {OFFER_COLS} FROM offers WHERE recipient = $1 AND state = 'pending' \
             AND expires_at > $2 AND seq <= $3 ORDER BY seq LIMIT 10000"
        )))
        .bind(recipient)
        .bind(now)
        .bind(max_seq)
        .fetch_all(p)
        .await)?)
    }

    /// The contact list of `owner`.
    pub(crate) async fn contacts(&self, owner: &str) -> Result<Vec<ContactRow>, DbError> {
        Ok(read!(self, p => sqlx::query_as(
            "SELECT c.contact, c.contact_local, c.name, c.grp, u.name AS profile_name, u.note, \
             u.last_seen FROM contacts c LEFT JOIN users u ON u.login = c.contact_local \
             WHERE c.owner = $1 ORDER BY c.contact",
        )
        .bind(owner)
        .fetch_all(p)
        .await)?)
    }

    /// Owners who have local user `login` as a contact, with whether their name is defaulted.
    pub(crate) async fn watchers(&self, login: &str) -> Result<Vec<(String, bool)>, DbError> {
        let rows: Vec<(String, Option<String>)> = read!(self, p => sqlx::query_as("SELECT owner, name FROM contacts WHERE contact_local = $1")
                .bind(login)
                .fetch_all(p)
                .await)?;
        Ok(rows.into_iter().map(|(o, n)| (o, n.is_none())).collect())
    }
}
