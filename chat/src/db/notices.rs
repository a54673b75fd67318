//! Results stored for a user and delivered at each login until they expire (PROTOCOL.md §10.6
//! file results, §5.6 expired messages), kept as data — one column per field, the kind as a
//! word — never as encoded wire lines: the packet is built when it is delivered, so a protocol
//! change never needs a data migration.

use super::{DbError, Outcome, Tx};
use msim_shared::packet::Packet;
use msim_shared::proto::{
    Body, DownloadGrant, FileHash, FileRejected, FileRejection, MessageSendFailed, SendFailure,
    UploadGrant,
};
use time::OffsetDateTime;

/// A stored result for one user.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Notice {
    /// Recipient login.
    pub login: String,
    /// Transfer id (the message id for an expired message).
    pub transfer_id: String,
    /// What to tell the user.
    pub body: NoticeBody,
    /// Kept until then (micros since epoch).
    pub expires_at: i64,
}

/// What a stored notice tells its user; each is delivered as the protocol packet of the same
/// name (its transfer or message id is [`Notice::transfer_id`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum NoticeBody {
    /// `SEND-FILE-PROXY-OK` for the sender: where and how to upload.
    UploadGrant(UploadGrant),
    /// `SEND-FILE-PROXY-READY` for the recipient: where and how to download.
    DownloadGrant(DownloadGrant),
    /// `SEND-FILE-PROXY-REJECTED`.
    FileRejected(FileRejected),
    /// `SEND-FILE-PROXY-HASH` for the recipient: the sender's SHA-256, declared after upload.
    FileHash(FileHash),
    /// `MESSAGE-SEND-FAILED` (the message expired undelivered).
    MessageFailed(MessageSendFailed),
}

impl NoticeBody {
    /// The packet delivered to the user.
    pub(crate) fn to_packet(&self) -> Packet {
        match self {
            NoticeBody::UploadGrant(b) => b.to_packet(),
            NoticeBody::DownloadGrant(b) => b.to_packet(),
            NoticeBody::FileRejected(b) => b.to_packet(),
            NoticeBody::FileHash(b) => b.to_packet(),
            NoticeBody::MessageFailed(b) => b.to_packet(),
        }
    }

    /// `SEND-FILE-PROXY-REJECTED` of transfer `id`.
    pub(crate) fn rejected(id: &str, reason: FileRejection) -> NoticeBody {
        NoticeBody::FileRejected(FileRejected {
            transfer_id: id.to_owned(),
            reason,
        })
    }

    /// `MESSAGE-SEND-FAILED reason=expired` of message `id`.
    pub(crate) fn expired_message(id: &str) -> NoticeBody {
        NoticeBody::MessageFailed(MessageSendFailed {
            id: id.to_owned(),
            reason: SendFailure::Expired,
        })
    }

    /// The transfer (or message) id the body is about.
    #[cfg(test)]
    fn id(&self) -> &str {
        match self {
            NoticeBody::UploadGrant(b) => &b.transfer_id,
            NoticeBody::DownloadGrant(b) => &b.transfer_id,
            NoticeBody::FileRejected(b) => &b.transfer_id,
            NoticeBody::FileHash(b) => &b.transfer_id,
            NoticeBody::MessageFailed(b) => &b.id,
        }
    }
}

/// The `notices` columns after `seq`, in the order [`NoticeRow`] reads and [`insert`] writes.
pub(super) const NOTICE_COLS: &str = "login, transfer_id, expires_at, kind, reason, peer, \
     filename, size, relay_host, relay_port, url, token, token_expires, sha256, mime";

/// Binds a [`NoticeRow`]'s body columns (`kind` … `mime`, the order of [`NOTICE_COLS`]) to a
/// query: the insert here and the legacy converter write the same twelve columns.
macro_rules! bind_notice_body {
    ($query:expr, $row:expr) => {
        $query
            .bind(&$row.kind)
            .bind(&$row.reason)
            .bind(&$row.peer)
            .bind(&$row.filename)
            .bind($row.size)
            .bind(&$row.relay_host)
            .bind($row.relay_port)
            .bind(&$row.url)
            .bind(&$row.token)
            .bind($row.token_expires)
            .bind(&$row.sha256)
            .bind(&$row.mime)
    };
}
pub(super) use bind_notice_body;

/// One `notices` row as stored.
#[derive(Debug, Clone, Default, sqlx::FromRow)]
pub(super) struct NoticeRow {
    pub login: String,
    pub transfer_id: String,
    pub expires_at: i64,
    /// `upload-grant`, `download-grant`, `file-rejected`, `file-hash` or `message-failed`.
    pub kind: String,
    /// The rejection or failure reason code.
    pub reason: Option<String>,
    /// The other party's address (`from=` of a download grant).
    pub peer: Option<String>,
    pub filename: Option<String>,
    pub size: Option<i64>,
    /// The relay host and port to connect to.
    pub relay_host: Option<String>,
    pub relay_port: Option<i64>,
    pub url: Option<String>,
    pub token: Option<String>,
    /// When the grant's token expires (micros).
    pub token_expires: Option<i64>,
    pub sha256: Option<String>,
    pub mime: Option<String>,
}

/// A row the current code cannot read (an unknown kind or a missing field).
#[derive(Debug, thiserror::Error)]
#[error("unreadable stored notice ({0})")]
pub(crate) struct BadNotice(&'static str);

fn micros(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000).clamp(i64::MIN as i128, i64::MAX as i128) as i64
}

impl From<&Notice> for NoticeRow {
    fn from(n: &Notice) -> NoticeRow {
        let mut r = NoticeRow {
            login: n.login.clone(),
            transfer_id: n.transfer_id.clone(),
            expires_at: n.expires_at,
            ..NoticeRow::default()
        };
        match &n.body {
            NoticeBody::UploadGrant(g) => {
                r.kind = "upload-grant".into();
                r.relay_host = Some(g.connect.clone());
                r.relay_port = Some(g.port.into());
                r.url = Some(g.url.clone());
                r.token = Some(g.token.clone());
                r.token_expires = Some(micros(g.expires));
            }
            NoticeBody::DownloadGrant(g) => {
                r.kind = "download-grant".into();
                r.peer = Some(g.from.clone());
                r.filename = Some(g.filename.clone());
                r.size = Some(g.size.min(i64::MAX as u64) as i64);
                r.relay_host = Some(g.connect.clone());
                r.relay_port = Some(g.port.into());
                r.url = Some(g.url.clone());
                r.token = Some(g.token.clone());
                r.token_expires = Some(micros(g.expires));
                r.sha256 = g.sha256.clone();
                r.mime = g.mime.clone();
            }
            NoticeBody::FileRejected(f) => {
                r.kind = "file-rejected".into();
                r.reason = Some(f.reason.as_str().to_owned());
            }
            NoticeBody::FileHash(h) => {
                r.kind = "file-hash".into();
                r.sha256 = Some(h.sha256.clone());
            }
            NoticeBody::MessageFailed(f) => {
                r.kind = "message-failed".into();
                r.reason = Some(f.reason.as_str().to_owned());
            }
        }
        r
    }
}

impl TryFrom<NoticeRow> for Notice {
    type Error = BadNotice;

    fn try_from(r: NoticeRow) -> Result<Notice, BadNotice> {
        let need = |v: Option<String>, what| v.ok_or(BadNotice(what));
        let port = |p: Option<i64>| {
            p.and_then(|p| u16::try_from(p).ok())
                .ok_or(BadNotice("relay_port"))
        };
        let expires = |t: Option<i64>| t.map(crate::clock::datetime).ok_or(BadNotice("expiry"));
        let id = r.transfer_id.clone();
        let body = match r.kind.as_str() {
            "upload-grant" => NoticeBody::UploadGrant(UploadGrant {
                transfer_id: id,
                connect: need(r.relay_host, "relay_host")?,
                port: port(r.relay_port)?,
                url: need(r.url, "url")?,
                token: need(r.token, "token")?,
                expires: expires(r.token_expires)?,
            }),
            "download-grant" => NoticeBody::DownloadGrant(DownloadGrant {
                transfer_id: id,
                from: need(r.peer, "peer")?,
                filename: need(r.filename, "filename")?,
                size: r
                    .size
                    .and_then(|s| u64::try_from(s).ok())
                    .ok_or(BadNotice("size"))?,
                connect: need(r.relay_host, "relay_host")?,
                port: port(r.relay_port)?,
                url: need(r.url, "url")?,
                token: need(r.token, "token")?,
                expires: expires(r.token_expires)?,
                sha256: r.sha256,
                mime: r.mime,
            }),
            "file-rejected" => NoticeBody::FileRejected(FileRejected {
                transfer_id: id,
                reason: FileRejection::parse(&need(r.reason, "reason")?),
            }),
            "file-hash" => NoticeBody::FileHash(FileHash {
                transfer_id: id,
                sha256: need(r.sha256, "sha256")?,
            }),
            "message-failed" => NoticeBody::MessageFailed(MessageSendFailed {
                id,
                reason: SendFailure::parse(&need(r.reason, "reason")?),
            }),
            _ => return Err(BadNotice("kind")),
        };
        Ok(Notice {
            login: r.login,
            transfer_id: r.transfer_id,
            body,
            expires_at: r.expires_at,
        })
    }
}

/// Stores one notice; returns its sequence number.
pub(super) async fn insert(tx: &mut Tx<'_>, n: &Notice) -> Result<i64, DbError> {
    let r = NoticeRow::from(n);
    let sql = format!(
        "INSERT INTO notices ({NOTICE_COLS}) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) RETURNING seq"
    );
    let (seq,): (i64,) = on!(tx, c => bind_notice_body!(
        sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(&r.login)
            .bind(&r.transfer_id)
            .bind(r.expires_at),
        r
    )
    .fetch_one(c)
    .await)?;
    Ok(seq)
}

/// Stores file results (or expiry notices) for delivery at login.
pub(super) async fn add_notices(tx: &mut Tx<'_>, notices: Vec<Notice>) -> Result<Outcome, DbError> {
    let mut seqs = Vec::with_capacity(notices.len());
    for n in &notices {
        seqs.push(insert(tx, n).await?);
    }
    Ok(Outcome::Notices(seqs))
}

/// Removes the results of transfer `transfer_id` stored for `login` (its other party's, if
/// any, stay).
pub(super) async fn forget(
    tx: &mut Tx<'_>,
    login: &str,
    transfer_id: &str,
) -> Result<Outcome, DbError> {
    on!(tx, c => sqlx::query("DELETE FROM notices WHERE login = $1 AND transfer_id = $2")
        .bind(login)
        .bind(transfer_id)
        .execute(c)
        .await
        .map(|_| ()))?;
    Ok(Outcome::Done)
}

impl super::Db {
    /// Unexpired notices for `login` with `seq <= max_seq`, oldest first. A row this version
    /// cannot read is skipped (and logged).
    pub(crate) async fn pending_notices(
        &self,
        login: &str,
        now: i64,
        max_seq: i64,
    ) -> Result<Vec<Notice>, DbError> {
        let sql = format!(
            "SELECT {NOTICE_COLS} FROM notices \
             WHERE login = $1 AND seq <= $2 AND expires_at > $3 ORDER BY seq LIMIT 10000"
        );
        let rows: Vec<NoticeRow> = read!(self, p => sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(login)
            .bind(max_seq)
            .bind(now)
            .fetch_all(p)
            .await)?;
        Ok(rows
            .into_iter()
            .filter_map(|r| match Notice::try_from(r) {
                Ok(n) => Some(n),
                Err(e) => {
                    tracing::warn!(login, "{e}");
                    None
                }
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(micros: i64) -> OffsetDateTime {
        crate::clock::datetime(micros)
    }

    /// Every kind survives the trip through its row unchanged.
    #[test]
    fn every_kind_round_trips_through_its_row() {
        let bodies = [
            NoticeBody::UploadGrant(UploadGrant {
                transfer_id: "t1".into(),
                connect: "relay.example".into(),
                port: 3215,
                url: "http://relay.example:3215/t/t1".into(),
                token: "tok".into(),
                expires: at(1_700_000_000_123_000),
            }),
            NoticeBody::DownloadGrant(DownloadGrant {
                transfer_id: "t1".into(),
                from: "alice@x".into(),
                filename: "a b.png".into(),
                size: 42,
                connect: "relay.example".into(),
                port: 3215,
                url: "http://relay.example:3215/t/t1".into(),
                token: "tok2".into(),
                expires: at(1_700_000_000_123_000),
                sha256: Some("ab".repeat(32)),
                mime: None,
            }),
            NoticeBody::FileRejected(FileRejected {
                transfer_id: "t1".into(),
                reason: FileRejection::NoRelay,
            }),
            NoticeBody::FileHash(FileHash {
                transfer_id: "t1".into(),
                sha256: "cd".repeat(32),
            }),
            NoticeBody::MessageFailed(MessageSendFailed {
                id: "t1".into(),
                reason: SendFailure::Expired,
            }),
        ];
        for body in bodies {
            let n = Notice {
                login: "bob".into(),
                transfer_id: body.id().to_owned(),
                body,
                expires_at: 7,
            };
            let back = Notice::try_from(NoticeRow::from(&n)).expect("readable");
            assert_eq!(back, n);
        }
        let unknown = NoticeRow {
            kind: "from-the-future".into(),
            ..NoticeRow::default()
        };
        assert!(Notice::try_from(unknown).is_err());
    }
}
