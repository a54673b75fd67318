//! Presence consent, last-seen visibility, blocks (PROTOCOL.md §7) and offer quotas (§10.2):
//! the SQL, kept out of `mod.rs`. Writes are [`PrivacyOp`]s applied by the group-commit writer
//! as [`super::WriteOp::Privacy`].

use super::apply::exists;
use super::contacts::{list_refusal, list_remove, OwnedList};
use super::Tx;
use super::{Db, DbError, Offer, Outcome};
use std::collections::HashSet;

/// Limits on the open offers of one sender account and one sender address.
#[derive(Debug, Clone, Copy)]
pub(crate) struct OfferLimits {
    /// Most open offers per account.
    pub account_count: i64,
    /// Most bytes in open offers per account.
    pub account_bytes: i64,
    /// Most open offers per address.
    pub addr_count: i64,
    /// Most bytes in open offers per address.
    pub addr_bytes: i64,
    /// Accepted offers answered after this time (micros) still count as open (their upload
    /// may be running; msim-chat does not see the relay finish it).
    pub accepted_since: i64,
}

/// A privacy or quota write.
#[derive(Debug, Clone)]
pub(crate) enum PrivacyOp {
    /// `watcher` added `subject` (a local user) as a contact: ask for presence.
    Subscribe {
        /// Who wants to see.
        watcher: String,
        /// Whose presence.
        subject: String,
        /// Now (micros).
        now: i64,
        /// Most open requests one subject may have.
        max_requests: i64,
    },
    /// `watcher` removed `subject` from their contacts: forget the request or approval (a
    /// denial stays).
    Unsubscribe {
        /// Who watched.
        watcher: String,
        /// Whose presence.
        subject: String,
    },
    /// `subject` approves or denies `watcher`.
    Answer {
        /// Whose presence.
        subject: String,
        /// Who asked.
        watcher: String,
        /// Approve (or deny / revoke).
        approve: bool,
        /// Now (micros).
        now: i64,
    },
    /// `owner` blocks `blocked`.
    Block {
        /// Who blocks.
        owner: String,
        /// Who is blocked.
        blocked: String,
        /// Now (micros).
        now: i64,
        /// Most blocks per user.
        max: i64,
    },
    /// `owner` unblocks `blocked`.
    Unblock {
        /// Who blocked.
        owner: String,
        /// Who was blocked.
        blocked: String,
    },
    /// Set who sees `login`'s presence.
    SetVisibility {
        /// Login.
        login: String,
        /// `everyone`, `contacts` or `nobody`.
        visibility: String,
    },
    /// Writes nothing: completes with the next commit (a blocked sender's message is answered
    /// as late as a stored one would be).
    Nothing,
    /// Store an offer if the sender's account and address stay within `limits`.
    CreateOffer {
        /// The offer (its `state` is `pending`, or `hidden` when the recipient blocked the
        /// sender: never shown, it expires like an ignored offer).
        offer: Box<Offer>,
        /// The sender's address key (see [`crate::cmd::files`]).
        addr: String,
        /// Limits.
        limits: OfferLimits,
    },
}

/// The result of a [`PrivacyOp`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PrivacyOutcome {
    /// After a subscription.
    Subscribed {
        /// The watcher may now see the subject (already approved, or mutual contacts).
        approved: bool,
        /// A request is open for the subject to answer (new or asked again).
        request: bool,
        /// The subject had asked to see the watcher: adding them back approved it.
        approved_back: bool,
    },
    /// A request was answered; whether the watcher had been approved before.
    Answered {
        /// Approved before.
        was_approved: bool,
    },
    /// The visibility before the change.
    OldVisibility(String),
    /// The sender's (or address's) open offers would exceed the count limit.
    TooManyOffers,
    /// The sender's (or address's) open offers would exceed the bytes limit.
    OfferQuotaExceeded,
}

/// Applies one privacy op inside the writer's transaction.
pub(super) async fn apply(tx: &mut Tx<'_>, op: PrivacyOp) -> Result<Outcome, DbError> {
    let done = |o| Ok(Outcome::Privacy(o));
    match op {
        PrivacyOp::Subscribe {
            watcher,
            subject,
            now,
            max_requests,
        } => {
            // The mutual-contacts shortcut, part 1: adding someone who asked to see you
            // approves them.
            let back = on!(tx, c => sqlx::query(
                "UPDATE presence_subs SET state = 'approved', at = $1 \
                 WHERE subject = $2 AND watcher = $3 AND state = 'requested'",
            )
            .bind(now)
            .bind(&watcher)
            .bind(&subject)
            .execute(c)
            .await.map(|r| r.rows_affected()))?;
            let approved_back = back > 0;
            let state: Option<(String,)> = on!(tx, c => sqlx::query_as("SELECT state FROM presence_subs WHERE subject = $1 AND watcher = $2")
                    .bind(&subject)
                    .bind(&watcher)
                    .fetch_optional(c)
                    .await)?;
            let (approved, request) = match state.as_ref().map(|s| s.0.as_str()) {
                Some("approved") => (true, false),
                Some(_) => {
                    // Asked again (also after a denial: the subject is asked, never bypassed).
                    on!(tx, c => sqlx::query(
                        "UPDATE presence_subs SET state = 'requested', at = $1 \
                         WHERE subject = $2 AND watcher = $3",
                    )
                    .bind(now)
                    .bind(&subject)
                    .bind(&watcher)
                    .execute(c)
                    .await.map(|r| r.rows_affected()))?;
                    (false, true)
                }
                None => {
                    // Part 2: a subject who has the watcher as a contact (and did not block
                    // them) pre-approved them by adding them.
                    let (mutual,): (i64,) = on!(tx, c => sqlx::query_as(
                        "SELECT COUNT(*) FROM contacts c WHERE c.owner = $1 AND c.contact_local = $2 \
                         AND NOT EXISTS (SELECT 1 FROM blocks b WHERE b.owner = c.owner AND b.blocked = $3)",
                    )
                    .bind(&subject)
                    .bind(&watcher)
                    .bind(&watcher)
                    .fetch_one(c)
                    .await)?;
                    let (open,): (i64,) = on!(tx, c => sqlx::query_as(
                        "SELECT COUNT(*) FROM presence_subs WHERE subject = $1 AND state = 'requested'",
                    )
                    .bind(&subject)
                    .fetch_one(c)
                    .await)?;
                    if mutual == 0 && open >= max_requests {
                        // Too many open requests: dropped silently (the requester cannot tell).
                        return done(PrivacyOutcome::Subscribed {
                            approved: false,
                            request: false,
                            approved_back,
                        });
                    }
                    let state = if mutual > 0 { "approved" } else { "requested" };
                    on!(tx, c => sqlx::query(
                        "INSERT INTO presence_subs (subject, watcher, state, at) VALUES ($1, $2, $3, $4)",
                    )
                    .bind(&subject)
                    .bind(&watcher)
                    .bind(state)
                    .bind(now)
                    .execute(c)
                    .await.map(|r| r.rows_affected()))?;
                    (mutual > 0, mutual == 0)
                }
            };
            done(PrivacyOutcome::Subscribed {
                approved,
                request,
                approved_back,
            })
        }
        PrivacyOp::Unsubscribe { watcher, subject } => {
            on!(tx, c => sqlx::query(
                "DELETE FROM presence_subs WHERE subject = $1 AND watcher = $2 AND state != 'denied'",
            )
            .bind(&subject)
            .bind(&watcher)
            .execute(c)
            .await.map(|r| r.rows_affected()))?;
            Ok(Outcome::Done)
        }
        PrivacyOp::Answer {
            subject,
            watcher,
            approve,
            now,
        } => {
            let state: Option<(String,)> = on!(tx, c => sqlx::query_as("SELECT state FROM presence_subs WHERE subject = $1 AND watcher = $2")
                    .bind(&subject)
                    .bind(&watcher)
                    .fetch_optional(c)
                    .await)?;
            let Some((state,)) = state else {
                return Ok(Outcome::NotFound);
            };
            on!(tx, c => sqlx::query(
                "UPDATE presence_subs SET state = $1, at = $2 WHERE subject = $3 AND watcher = $4",
            )
            .bind(if approve { "approved" } else { "denied" })
            .bind(now)
            .bind(&subject)
            .bind(&watcher)
            .execute(c)
            .await.map(|r| r.rows_affected()))?;
            done(PrivacyOutcome::Answered {
                was_approved: state == "approved",
            })
        }
        PrivacyOp::Block {
            owner,
            blocked,
            now,
            max,
        } => {
            // A remote user (full address, federation) cannot be checked here.
            if !blocked.contains('@') && !exists(tx, &blocked).await? {
                return Ok(Outcome::UnknownUser);
            }
            if let Some(refusal) =
                list_refusal(tx, OwnedList::Blocks, &owner, &blocked, max).await?
            {
                return Ok(refusal);
            }
            on!(tx, c => sqlx::query("INSERT INTO blocks (owner, blocked, at) VALUES ($1, $2, $3)")
                .bind(&owner)
                .bind(&blocked)
                .bind(now)
                .execute(c)
                .await.map(|r| r.rows_affected()))?;
            Ok(Outcome::Done)
        }
        PrivacyOp::Unblock { owner, blocked } => {
            list_remove(tx, OwnedList::Blocks, &owner, &blocked).await
        }
        PrivacyOp::SetVisibility { login, visibility } => {
            let old: Option<(String,)> = on!(tx, c => sqlx::query_as("SELECT last_seen_visibility FROM users WHERE login = $1")
                    .bind(&login)
                    .fetch_optional(c)
                    .await)?;
            let Some((old,)) = old else {
                return Ok(Outcome::UnknownUser);
            };
            on!(tx, c => sqlx::query("UPDATE users SET last_seen_visibility = $1 WHERE login = $2")
                .bind(&visibility)
                .bind(&login)
                .execute(c)
                .await.map(|r| r.rows_affected()))?;
            done(PrivacyOutcome::OldVisibility(old))
        }
        PrivacyOp::Nothing => Ok(Outcome::Done),
        PrivacyOp::CreateOffer {
            offer: o,
            addr,
            limits,
        } => {
            // The open offers of the sender and of its address, and whether the recipient
            // exists, in one statement (one trip to the database's thread instead of three);
            // checked in the same order as ever.
            let (account_n, account_bytes, addr_n, addr_bytes, known): (i64, i64, i64, i64, i32) =
                on!(tx, c => sqlx::query_as(OFFER_CHECK)
                    .bind(&o.sender)
                    .bind(&addr)
                    .bind(o.created_at)
                    .bind(limits.accepted_since)
                    .bind(&o.recipient)
                    .fetch_one(c)
                    .await)?;
            for (n, bytes, max_count, max_bytes) in [
                (
                    account_n,
                    account_bytes,
                    limits.account_count,
                    limits.account_bytes,
                ),
                (addr_n, addr_bytes, limits.addr_count, limits.addr_bytes),
            ] {
                if n >= max_count {
                    return done(PrivacyOutcome::TooManyOffers);
                }
                if bytes.saturating_add(o.size) > max_bytes {
                    return done(PrivacyOutcome::OfferQuotaExceeded);
                }
            }
            // A remote recipient (an address) is checked by its own server.
            if !o.recipient.contains('@') && known == 0 {
                return Ok(Outcome::UnknownUser);
            }
            let (seq,): (i64,) = on!(tx, c => sqlx::query_as(
                "INSERT INTO offers (id, sender, recipient, filename, size, sha256, mime, \
                 created_at, expires_at, state, relay, sender_addr) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING seq",
            )
            .bind(&o.id)
            .bind(&o.sender)
            .bind(&o.recipient)
            .bind(&o.filename)
            .bind(o.size)
            .bind(&o.sha256)
            .bind(&o.mime)
            .bind(o.created_at)
            .bind(o.expires_at)
            .bind(o.state.as_str())
            .bind(&o.relay)
            .bind(&addr)
            .fetch_one(c)
            .await)?;
            Ok(Outcome::Stored(seq))
        }
    }
}

/// The open offers (count, bytes) of sender $1 and of address $2 — pending or hidden and
/// unexpired at $3, or accepted since $4 — and whether user $5 exists (1) or not (0).
const OFFER_CHECK: &str = "SELECT a.n, a.b, s.n, s.b, \
     CASE WHEN EXISTS (SELECT 1 FROM users WHERE login = $5) THEN 1 ELSE 0 END \
     FROM (SELECT COUNT(*) AS n, CAST(COALESCE(SUM(size), 0) AS BIGINT) AS b FROM offers \
     WHERE sender = $1 AND ((state IN ('pending', 'hidden') AND expires_at > $3) \
     OR (state = 'accepted' AND answered_at > $4))) a, \
     (SELECT COUNT(*) AS n, CAST(COALESCE(SUM(size), 0) AS BIGINT) AS b FROM offers \
     WHERE sender_addr = $2 AND ((state IN ('pending', 'hidden') AND expires_at > $3) \
     OR (state = 'accepted' AND answered_at > $4))) s";

/// The condition "viewer $2 sees the presence of subject u.login": not blocked, and the
/// subject shows presence to everyone or to approved watchers of whom the viewer is one.
const VISIBLE: &str = "NOT EXISTS (SELECT 1 FROM blocks b WHERE b.owner = u.login AND b.blocked = $2) \
     AND (u.last_seen_visibility = 'everyone' OR (u.last_seen_visibility = 'contacts' AND EXISTS \
     (SELECT 1 FROM presence_subs s WHERE s.subject = u.login AND s.watcher = $2 AND s.state = 'approved')))";

impl Db {
    /// Every block, as (owner, blocked), to fill the in-memory mirror at start.
    pub(crate) async fn all_blocks(&self) -> Result<Vec<(String, String)>, DbError> {
        Ok(
            read!(self, p => sqlx::query_as("SELECT owner, blocked FROM blocks")
            .fetch_all(p)
            .await)?,
        )
    }

    /// Whether `viewer` may see `subject`'s presence (PROTOCOL.md §7.2).
    pub(crate) async fn can_see_presence(
        &self,
        subject: &str,
        viewer: &str,
    ) -> Result<bool, DbError> {
        let r: Option<(i32,)> = read!(self, p => sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT 1 FROM users u WHERE u.login = $1 AND {VISIBLE}"
        )))
        .bind(subject)
        .bind(viewer)
        .fetch_optional(p)
        .await)?;
        Ok(r.is_some())
    }

    /// The local contacts of `owner` whose presence `owner` may see.
    pub(crate) async fn visible_contacts(&self, owner: &str) -> Result<HashSet<String>, DbError> {
        let rows: Vec<(String,)> = read!(self, p => sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT u.login FROM contacts c JOIN users u ON u.login = c.contact_local \
             WHERE c.owner = $1 AND c.contact_local IS NOT NULL AND {VISIBLE}"
        )))
        .bind(owner)
        .bind(owner)
        .fetch_all(p)
        .await)?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }

    /// Approved watchers of `subject` that it has not blocked, and its visibility setting.
    pub(crate) async fn approved_watchers(
        &self,
        subject: &str,
    ) -> Result<(Vec<String>, String), DbError> {
        let rows: Vec<(String,)> = read!(self, p => sqlx::query_as(
            "SELECT s.watcher FROM presence_subs s WHERE s.subject = $1 AND s.state = 'approved' \
             AND NOT EXISTS (SELECT 1 FROM blocks b WHERE b.owner = s.subject AND b.blocked = s.watcher)",
        )
        .bind(subject)
        .fetch_all(p)
        .await)?;
        let vis = self.visibility(subject).await?;
        Ok((rows.into_iter().map(|r| r.0).collect(), vis))
    }

    /// `login`'s visibility setting (`contacts` for an unknown user).
    pub(crate) async fn visibility(&self, login: &str) -> Result<String, DbError> {
        let r: Option<(String,)> = read!(self, p => sqlx::query_as("SELECT last_seen_visibility FROM users WHERE login = $1")
                .bind(login)
                .fetch_optional(p)
                .await)?;
        Ok(r.map_or_else(|| "contacts".to_owned(), |r| r.0))
    }

    /// Open presence requests to `subject` from users it has not blocked, oldest first.
    pub(crate) async fn presence_requests(&self, subject: &str) -> Result<Vec<String>, DbError> {
        let rows: Vec<(String,)> = read!(self, p => sqlx::query_as(
            "SELECT s.watcher FROM presence_subs s WHERE s.subject = $1 AND s.state = 'requested' \
             AND NOT EXISTS (SELECT 1 FROM blocks b WHERE b.owner = s.subject AND b.blocked = s.watcher) \
             ORDER BY s.at, s.watcher LIMIT 10000",
        )
        .bind(subject)
        .fetch_all(p)
        .await)?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }

    /// `owner`'s blocked logins, ordered.
    pub(crate) async fn blocked_by(&self, owner: &str) -> Result<Vec<String>, DbError> {
        let rows: Vec<(String,)> = read!(self, p => sqlx::query_as("SELECT blocked FROM blocks WHERE owner = $1 ORDER BY blocked")
                .bind(owner)
                .fetch_all(p)
                .await)?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }

    /// Whether `owner` has local user `contact` in their contact list.
    pub(crate) async fn has_contact(&self, owner: &str, contact: &str) -> Result<bool, DbError> {
        let r: Option<(i32,)> = read!(self, p => sqlx::query_as("SELECT 1 FROM contacts WHERE owner = $1 AND contact_local = $2")
                .bind(owner)
                .bind(contact)
                .fetch_optional(p)
                .await)?;
        Ok(r.is_some())
    }
}
