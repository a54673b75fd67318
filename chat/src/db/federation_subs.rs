//! Presence and profile subscriptions across servers (PROTOCOL.md §12.9): which remote users
//! asked to follow which local user (`fed_subs`, on the subject's server), and the contact
//! lookups both sides need. Plain statements on the writer's or readers' pool, like the
//! federation queue's.

use super::{Db, DbError};

/// Most subscriptions one peer domain may hold on this server.
pub(crate) const MAX_SUBS_PER_PEER: i64 = 100_000;
/// Most watchers of one peer domain subscribed to one local user.
pub(crate) const MAX_SUBS_PER_PEER_SUBJECT: i64 = 1_000;

/// The result of storing a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Subscribed {
    /// Stored: new, or one past its lifetime taken up again.
    Stored,
    /// A live subscription renewed.
    Renewed,
    /// No such local user.
    UnknownUser,
    /// The peer holds its maximum.
    TooMany,
}

/// A remote watcher of a local user.
#[derive(Debug, Clone)]
pub(crate) struct Subscriber {
    /// The watcher's domain.
    pub peer: String,
    /// The watcher's address.
    pub watcher: String,
    /// The subject has the watcher in its contacts (a remote user's approval) and has not
    /// blocked them.
    pub approved: bool,
    /// The subject's `last-seen` setting is not `nobody`.
    pub shown: bool,
}

impl Subscriber {
    /// Whether the watcher may see the subject's presence now.
    pub(crate) fn sees_presence(&self) -> bool {
        self.approved && self.shown
    }
}

impl Db {
    /// Stores (or renews) `watcher`'s subscription to local user `subject`, within the
    /// per-peer bounds; one stored or renewed before `live_since` had lapsed (not swept yet).
    pub(crate) async fn federation_subscribe(
        &self,
        peer: &str,
        watcher: &str,
        subject: &str,
        now: i64,
        live_since: i64,
    ) -> Result<Subscribed, DbError> {
        writes!(self, pool => {
            let mut tx = pool.begin().await?;
            let user: Option<(String,)> = sqlx::query_as("SELECT login FROM users WHERE login = $1")
                .bind(subject)
                .fetch_optional(&mut *tx)
                .await?;
            if user.is_none() {
                return Ok(Subscribed::UnknownUser);
            }
            let before: Option<(i64,)> = sqlx::query_as(
                "SELECT at FROM fed_subs WHERE subject = $1 AND watcher = $2",
            )
            .bind(subject)
            .bind(watcher)
            .fetch_optional(&mut *tx)
            .await?;
            if before.is_some() {
                sqlx::query("UPDATE fed_subs SET at = $1 WHERE subject = $2 AND watcher = $3")
                    .bind(now)
                    .bind(subject)
                    .bind(watcher)
                    .execute(&mut *tx)
                    .await?;
            } else {
                let (all, this): (i64, i64) = sqlx::query_as(
                    "SELECT COUNT(*), COALESCE(SUM(CASE WHEN subject = $2 THEN 1 ELSE 0 END), 0) \
                     FROM fed_subs WHERE peer = $1",
                )
                .bind(peer)
                .bind(subject)
                .fetch_one(&mut *tx)
                .await?;
                if all >= MAX_SUBS_PER_PEER || this >= MAX_SUBS_PER_PEER_SUBJECT {
                    return Ok(Subscribed::TooMany);
                }
                sqlx::query(
                    "INSERT INTO fed_subs (subject, watcher, peer, at) VALUES ($1, $2, $3, $4)",
                )
                .bind(subject)
                .bind(watcher)
                .bind(peer)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok(match before {
                Some((at,)) if at >= live_since => Subscribed::Renewed,
                _ => Subscribed::Stored,
            })
        })
    }

    /// Forgets subscriptions not renewed since `before` (at most `limit`); returns how many.
    pub(crate) async fn federation_subs_expire(
        &self,
        before: i64,
        limit: i64,
    ) -> Result<u64, DbError> {
        Ok(writes!(self, w => sqlx::query(
            "DELETE FROM fed_subs WHERE (subject, watcher) IN \
             (SELECT subject, watcher FROM fed_subs WHERE at < $1 LIMIT $2)",
        )
        .bind(before)
        .bind(limit)
        .execute(w)
        .await
        .map(|r| r.rows_affected()))?)
    }

    /// Forgets `watcher`'s subscription to `subject` (nothing when there is none).
    pub(crate) async fn federation_unsubscribe(
        &self,
        watcher: &str,
        subject: &str,
    ) -> Result<(), DbError> {
        writes!(self, w => sqlx::query("DELETE FROM fed_subs WHERE subject = $1 AND watcher = $2")
            .bind(subject)
            .bind(watcher)
            .execute(w)
            .await
            .map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// The remote watchers of local user `subject` (at most [`MAX_SUBS_PER_PEER_SUBJECT`] per
    /// peer) whose subscription was stored or renewed since `live_since`, with what decides
    /// whether each may see the presence. `only` limits them to one watcher.
    pub(crate) async fn federation_subscribers(
        &self,
        subject: &str,
        only: Option<&str>,
        live_since: i64,
    ) -> Result<Vec<Subscriber>, DbError> {
        let rows: Vec<(String, String, i64, i64)> = read!(self, p => sqlx::query_as(
            "SELECT s.peer, s.watcher, CAST(CASE WHEN \
               EXISTS (SELECT 1 FROM contacts c WHERE c.owner = s.subject AND c.contact = s.watcher) \
               AND NOT EXISTS (SELECT 1 FROM blocks b WHERE b.owner = s.subject AND b.blocked = s.watcher) \
               THEN 1 ELSE 0 END AS BIGINT), \
               CAST(CASE WHEN u.last_seen_visibility != 'nobody' THEN 1 ELSE 0 END AS BIGINT) \
             FROM fed_subs s JOIN users u ON u.login = s.subject \
             WHERE s.subject = $1 AND ($2 = '' OR s.watcher = $2) AND s.at >= $3 \
             ORDER BY s.peer, s.watcher",
        )
        .bind(subject)
        .bind(only.unwrap_or_default())
        .bind(live_since)
        .fetch_all(p)
        .await)?;
        Ok(rows
            .into_iter()
            .map(|(peer, watcher, approved, shown)| Subscriber {
                peer,
                watcher,
                approved: approved != 0,
                shown: shown != 0,
            })
            .collect())
    }

    /// The remote contacts (addresses not on this server) of local user `owner`.
    pub(crate) async fn remote_contacts(&self, owner: &str) -> Result<Vec<String>, DbError> {
        let rows: Vec<(String,)> = read!(self, p => sqlx::query_as(
            "SELECT contact FROM contacts WHERE owner = $1 AND contact_local IS NULL ORDER BY contact",
        )
        .bind(owner)
        .fetch_all(p)
        .await)?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }

    /// `owner`'s contact entry for address `contact`: `None` when it is not a contact, else
    /// the name `owner` gave it (if any).
    pub(crate) async fn contact_entry(
        &self,
        owner: &str,
        contact: &str,
    ) -> Result<Option<Option<String>>, DbError> {
        let row: Option<(Option<String>,)> = read!(self, p => sqlx::query_as(
            "SELECT name FROM contacts WHERE owner = $1 AND contact = $2",
        )
        .bind(owner)
        .bind(contact)
        .fetch_optional(p)
        .await)?;
        Ok(row.map(|r| r.0))
    }
}
