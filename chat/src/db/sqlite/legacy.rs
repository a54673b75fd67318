//! The data half of SQLite migration 0005: notices stored by earlier versions as encoded wire
//! lines (`legacy_packet`, kind `legacy`) become data columns. Runs at every open, in one
//! transaction, and does nothing once no legacy row is left.

use crate::db::notices::{bind_notice_body, Notice, NoticeBody, NoticeRow};
use crate::db::DbError;
use msim_shared::packet::Packet;
use msim_shared::proto::{
    Body, DownloadGrant, FieldReader, FileRejected, MessageSendFailed, UploadGrant,
};
use sqlx::SqlitePool;

/// What an old wire line said, or `None` when it is not a notice this version knows.
fn parse(line: &str) -> Option<NoticeBody> {
    let line = line.trim_end_matches(['\r', '\n']);
    let p = Packet::parse_line(line.as_bytes()).ok()?;
    let r = FieldReader::new(&p);
    Some(match p.verb.as_str() {
        UploadGrant::VERB => NoticeBody::UploadGrant(UploadGrant::read(&r).ok()?),
        DownloadGrant::VERB => NoticeBody::DownloadGrant(DownloadGrant::read(&r).ok()?),
        FileRejected::VERB => NoticeBody::FileRejected(FileRejected::read(&r).ok()?),
        MessageSendFailed::VERB => NoticeBody::MessageFailed(MessageSendFailed::read(&r).ok()?),
        _ => return None,
    })
}

/// Converts every legacy notice; one that cannot be read is deleted (and logged).
pub(super) async fn convert_notices(pool: &SqlitePool) -> Result<(), DbError> {
    let mut tx = pool.begin().await?;
    let rows: Vec<(i64, String, String, i64, Option<String>)> = sqlx::query_as(
        "SELECT seq, login, transfer_id, expires_at, legacy_packet FROM notices \
         WHERE kind = 'legacy'",
    )
    .fetch_all(&mut *tx)
    .await?;
    if rows.is_empty() {
        return Ok(());
    }
    let (mut converted, mut dropped) = (0u64, 0u64);
    for (seq, login, transfer_id, expires_at, line) in rows {
        let Some(body) = line.as_deref().and_then(parse) else {
            tracing::warn!(seq, %login, "dropping a stored notice that cannot be read");
            sqlx::query("DELETE FROM notices WHERE seq = $1")
                .bind(seq)
                .execute(&mut *tx)
                .await?;
            dropped += 1;
            continue;
        };
        let r = NoticeRow::from(&Notice {
            login,
            transfer_id,
            body,
            expires_at,
        });
        let update = sqlx::query(
            "UPDATE notices SET kind = $1, reason = $2, peer = $3, filename = $4, size = $5, \
             relay_host = $6, relay_port = $7, url = $8, token = $9, token_expires = $10, \
             sha256 = $11, mime = $12, legacy_packet = NULL WHERE seq = $13",
        );
        bind_notice_body!(update, r)
            .bind(seq)
            .execute(&mut *tx)
            .await?;
        converted += 1;
    }
    tx.commit().await?;
    tracing::info!(converted, dropped, "stored notices converted to data");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::Db;
    use msim_shared::proto::{FileRejection, SendFailure};

    /// The schema of the versions before the boundary: migrations 0001–0004 only.
    const OLD: [(&str, &str); 4] = [
        (
            "0001_initial.sql",
            include_str!("migrations/0001_initial.sql"),
        ),
        (
            "0002_notices.sql",
            include_str!("migrations/0002_notices.sql"),
        ),
        (
            "0003_privacy.sql",
            include_str!("migrations/0003_privacy.sql"),
        ),
        (
            "0004_retention.sql",
            include_str!("migrations/0004_retention.sql"),
        ),
    ];

    /// A database written by the old schema (notices as wire lines, offers ordered by rowid)
    /// opens with everything readable as data, in the same order, and a line no version
    /// could read is dropped instead of failing the start.
    #[tokio::test]
    async fn a_database_of_the_old_schema_is_migrated_with_its_data() {
        let dir = tempfile::tempdir().expect("tempdir");
        let old = tempfile::tempdir().expect("tempdir");
        for (name, sql) in OLD {
            std::fs::write(old.path().join(name), sql).expect("write migration");
        }
        let expires = crate::clock::datetime(1_900_000_000_000_000);
        let upload = UploadGrant {
            transfer_id: "t1".into(),
            connect: "relay.example".into(),
            port: 3215,
            url: "http://relay.example:3215/t/t1?x=a b".into(),
            token: "v1.tok=en".into(),
            expires,
        };
        let download = DownloadGrant {
            transfer_id: "t1".into(),
            from: "alice@localhost".into(),
            filename: "holiday photo.jpg".into(),
            size: 1234,
            connect: "relay.example".into(),
            port: 3215,
            url: "http://relay.example:3215/t/t1".into(),
            token: "v1.other".into(),
            expires,
            sha256: Some("ab".repeat(32)),
            mime: Some("image/jpeg".into()),
        };
        let rejected = FileRejected {
            transfer_id: "t2".into(),
            reason: FileRejection::Rejected,
        };
        let failed = MessageSendFailed {
            id: "m1".into(),
            reason: SendFailure::Expired,
        };
        {
            let opts = sqlx::sqlite::SqliteConnectOptions::new()
                .filename(dir.path().join("msim.db"))
                .create_if_missing(true);
            let pool = SqlitePool::connect_with(opts).await.expect("old database");
            sqlx::migrate::Migrator::new(old.path())
                .await
                .expect("old migrations")
                .run(&pool)
                .await
                .expect("old schema");
            let lines = [
                ("alice", "t1", upload.to_packet().to_wire()),
                ("bob", "t1", download.to_packet().to_wire()),
                ("alice", "t2", rejected.to_packet().to_wire()),
                ("alice", "zz", "NOT-A-NOTICE x=1\n".to_owned()),
                ("alice", "m1", failed.to_packet().to_wire()),
            ];
            for (login, id, line) in lines {
                sqlx::query(
                    "INSERT INTO notices (login, transfer_id, packet, expires_at) \
                     VALUES (?, ?, ?, ?)",
                )
                .bind(login)
                .bind(id)
                .bind(line)
                .bind(i64::MAX)
                .execute(&pool)
                .await
                .expect("old notice");
            }
            for (id, created) in [("o2", 2), ("o1", 1)] {
                sqlx::query(
                    "INSERT INTO offers (id, sender, recipient, filename, size, created_at, \
                     expires_at, state) VALUES (?, 'alice', 'bob', 'f', 1, ?, ?, 'pending')",
                )
                .bind(id)
                .bind(created)
                .bind(i64::MAX)
                .execute(&pool)
                .await
                .expect("old offer");
            }
            pool.close().await;
        }

        let db = Db::open(dir.path()).await.expect("open migrates");
        let marks = db.marks().await.expect("marks");
        let bodies = |login: &'static str| {
            let db = db.clone();
            async move {
                db.pending_notices(login, 0, marks.notices)
                    .await
                    .expect("notices")
                    .into_iter()
                    .map(|n| n.body)
                    .collect::<Vec<_>>()
            }
        };
        assert_eq!(
            bodies("alice").await,
            [
                NoticeBody::UploadGrant(upload),
                NoticeBody::FileRejected(rejected),
                NoticeBody::MessageFailed(failed),
            ]
        );
        assert_eq!(bodies("bob").await, [NoticeBody::DownloadGrant(download)]);
        // Offers keep their order (their old rowid is their seq).
        let offers: Vec<String> = db
            .pending_offers("bob", 0, marks.offers)
            .await
            .expect("offers")
            .into_iter()
            .map(|o| o.id)
            .collect();
        assert_eq!(offers, ["o2", "o1"]);
        db.close().await;
        drop(db);
        // Opening again finds nothing left to convert.
        let db = Db::open(dir.path()).await.expect("reopen");
        assert_eq!(
            db.pending_notices("bob", 0, i64::MAX)
                .await
                .expect("n")
                .len(),
            1
        );
        db.close().await;
    }
}
