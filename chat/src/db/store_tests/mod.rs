//! The store's test suite, run against every backend: each test is one async function over a
//! fresh [`Db`], called by [`on_each_backend`] with SQLite and — when PostgreSQL's server
//! binaries are installed (else it says `SKIPPED` loudly, or fails under
//! `MSIM_REQUIRE_POSTGRES=1`) — with a new database on a throwaway PostgreSQL cluster.

use super::*;
use msim_shared::proto::{FileRejected, FileRejection};
use std::future::Future;

/// Runs `test` on a new SQLite store, then on a new PostgreSQL database.
async fn on_each_backend<F, Fut>(name: &str, test: F)
where
    F: Fn(Db) -> Fut,
    Fut: Future<Output = ()>,
{
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(dir.path()).await.expect("open SQLite");
    test(db.clone()).await;
    db.close().await;
    let url = tokio::task::spawn_blocking({
        let name = name.to_owned();
        move || msim_testkit::postgres::database(&name)
    })
    .await
    .expect("cluster thread");
    if let Some(url) = url {
        let db = Db::open_postgres(&url).await.expect("open PostgreSQL");
        test(db.clone()).await;
        db.close().await;
    }
}

fn message(id: &str, recipient: &str, text: &str) -> WriteOp {
    WriteOp::InsertMessage(StoredMessage {
        seq: 0,
        id: id.into(),
        sender: "alice".into(),
        recipient: recipient.into(),
        at: 1,
        text: text.into(),
    })
}

fn user(login: &str) -> WriteOp {
    WriteOp::CreateUser {
        login: login.into(),
        sealed: login.as_bytes().to_vec(),
        now: 1,
    }
}

async fn batch(db: &Db, ops: Vec<WriteOp>) -> Vec<Result<Outcome, DbError>> {
    db.apply_batch(ops).await.expect("batch commits")
}

async fn pending(db: &Db, login: &str) -> Vec<String> {
    db.pending_messages(login, 0, i64::MAX, 100)
        .await
        .expect("pending")
        .into_iter()
        .map(|m| m.text)
        .collect()
}

fn offer(id: &str, created_at: i64) -> Offer {
    Offer {
        id: id.into(),
        sender: "alice".into(),
        recipient: "bob".into(),
        filename: "f.txt".into(),
        size: 10,
        sha256: None,
        mime: Some("text/plain".into()),
        created_at,
        expires_at: created_at + 1_000,
        state: OfferState::Pending,
        relay: None,
    }
}

fn create_offer(o: Offer) -> WriteOp {
    WriteOp::Privacy(PrivacyOp::CreateOffer {
        offer: Box::new(o),
        addr: "127.0.0.1".into(),
        limits: OfferLimits {
            account_count: 3,
            account_bytes: 1_000,
            addr_count: 10,
            addr_bytes: 10_000,
            accepted_since: 0,
        },
    })
}

#[tokio::test]
async fn messages_are_stored_acknowledged_read_and_numbered_in_commit_order() {
    on_each_backend("store: messages", |db| async move {
        let r = batch(&db, vec![user("alice"), user("bob"), user("alice")]).await;
        assert!(matches!(
            r[..],
            [Ok(Outcome::Done), Ok(Outcome::Done), Ok(Outcome::Taken)]
        ));
        let before = db.marks().await.expect("marks");
        let r = batch(
            &db,
            vec![
                message("m1", "bob", "one"),
                message("m2", "nobody", "lost"),
                message("m3", "bob", "three"),
            ],
        )
        .await;
        let seq = |o: &Result<Outcome, DbError>| match o {
            Ok(Outcome::Stored(s)) => *s,
            other => panic!("not stored: {other:?}"),
        };
        assert!(matches!(r[1], Ok(Outcome::UnknownUser)), "{r:?}");
        let (s1, s3) = (seq(&r[0]), seq(&r[2]));
        assert!(before.messages < s1 && s1 < s3);
        let later = batch(&db, vec![message("m4", "bob", "four")]).await;
        assert!(seq(&later[0]) > s3, "a later batch numbers higher");
        let marks = db.marks().await.expect("marks");
        assert_eq!(marks.messages, seq(&later[0]));
        assert_eq!(pending(&db, "bob").await, ["one", "three", "four"]);
        // Only messages above `after` and up to the mark.
        let window = db
            .pending_messages("bob", s1, s3, 10)
            .await
            .expect("window");
        assert_eq!(window.len(), 1);
        assert_eq!(window[0].id, "m3");

        // Acknowledged: no longer pending; an ack naming another recipient changes nothing.
        let ack = |id: &str, recipient: &str| WriteOp::Ack {
            id: id.into(),
            recipient: recipient.into(),
        };
        batch(&db, vec![ack("m1", "bob"), ack("m3", "alice")]).await;
        assert_eq!(pending(&db, "bob").await, ["three", "four"]);

        // Read: a receipt for the sender, numbered; reading twice keeps the first time.
        let read = |at| WriteOp::MarkRead {
            id: "m3".into(),
            reader: "bob".into(),
            at,
        };
        let r = batch(&db, vec![read(50)]).await;
        let Ok(Outcome::Read {
            sender,
            receipt,
            at,
        }) = &r[0]
        else {
            panic!("{r:?}")
        };
        assert_eq!((sender.as_str(), *at), ("alice", 50));
        let r = batch(&db, vec![read(60)]).await;
        assert!(matches!(r[0], Ok(Outcome::Read { at: 50, .. })), "{r:?}");
        let marks = db.marks().await.expect("marks");
        let receipts = db
            .pending_receipts("alice", marks.receipts)
            .await
            .expect("receipts");
        assert_eq!(receipts.len(), 2);
        assert_eq!(receipts[0].seq, *receipt);
        assert_eq!(pending(&db, "bob").await, ["four"]);
        batch(&db, vec![WriteOp::DeleteReceipts(vec![*receipt])]).await;
        let left = db.pending_receipts("alice", i64::MAX).await.expect("left");
        assert_eq!(left.len(), 1);
        let r = batch(
            &db,
            vec![WriteOp::MarkRead {
                id: "m4".into(),
                reader: "alice".into(),
                at: 1,
            }],
        )
        .await;
        assert!(matches!(r[0], Ok(Outcome::UnknownMessage)));
    })
    .await;
}

/// A constraint violation fails its own op (or its multi-row statement) and nothing else;
/// the transaction and the connection go on (PostgreSQL aborts a transaction on any error
/// outside a savepoint, so this checks the savepoints too).
#[tokio::test]
async fn a_failing_op_fails_alone() {
    on_each_backend("store: failing op", |db| async move {
        batch(&db, vec![user("alice"), user("bob")]).await;
        batch(&db, vec![message("x1", "bob", "kept")]).await;
        let r = batch(
            &db,
            vec![
                user("carol"),
                message("x1", "bob", "duplicate id"),
                message("x2", "bob", "same statement"),
                user("dave"),
            ],
        )
        .await;
        assert!(matches!(r[0], Ok(Outcome::Done)), "{r:?}");
        // The duplicate id fails alone: the other message of its statement is stored.
        assert!(r[1].is_err(), "{r:?}");
        assert!(matches!(r[2], Ok(Outcome::Stored(_))), "{r:?}");
        assert!(matches!(r[3], Ok(Outcome::Done)), "{r:?}");
        assert_eq!(pending(&db, "bob").await, ["kept", "same statement"]);
        assert!(db.password("carol").await.expect("carol").is_some());
        assert!(db.password("dave").await.expect("dave").is_some());
        let r = batch(&db, vec![message("x3", "bob", "after")]).await;
        assert!(matches!(r[0], Ok(Outcome::Stored(_))));
        assert_eq!(
            pending(&db, "bob").await,
            ["kept", "same statement", "after"]
        );
    })
    .await;
}

#[tokio::test]
async fn contacts_profiles_and_passwords() {
    on_each_backend("store: contacts", |db| async move {
        batch(&db, vec![user("alice"), user("bob")]).await;
        let add = |contact: &str, local: Option<&str>, max| WriteOp::AddContact {
            owner: "alice".into(),
            contact: contact.into(),
            contact_local: local.map(str::to_owned),
            name: None,
            group: Some("friends".into()),
            max,
        };
        let r = batch(
            &db,
            vec![
                add("bob@x", Some("bob"), 5),
                add("bob@x", Some("bob"), 5),
                add("ghost@x", Some("ghost"), 5),
                add("far@y", None, 1),
            ],
        )
        .await;
        assert!(matches!(
            r[..],
            [
                Ok(Outcome::Done),
                Ok(Outcome::Exists),
                Ok(Outcome::UnknownUser),
                Ok(Outcome::TooMany)
            ]
        ));
        batch(
            &db,
            vec![WriteOp::ChangeContact {
                owner: "alice".into(),
                contact: "bob@x".into(),
                name: Some("Bobby".into()),
                group: Some(None),
            }],
        )
        .await;
        let r = batch(
            &db,
            vec![WriteOp::UpdateProfile {
                login: "bob".into(),
                name: Some("Bob".into()),
                note: None,
            }],
        )
        .await;
        assert!(matches!(&r[0], Ok(Outcome::OldProfile(p)) if p.name.is_empty()));
        let list = db.contacts("alice").await.expect("contacts");
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].name.as_deref(), Some("Bobby"));
        assert_eq!(list[0].group, None);
        assert_eq!(list[0].profile_name.as_deref(), Some("Bob"));
        assert_eq!(
            db.watchers("bob").await.expect("w"),
            [("alice".into(), false)]
        );
        assert!(db.has_contact("alice", "bob").await.expect("has"));
        let r = batch(
            &db,
            vec![WriteOp::DeleteContact {
                owner: "alice".into(),
                contact: "bob@x".into(),
            }],
        )
        .await;
        assert!(matches!(r[0], Ok(Outcome::Done)));
        assert!(db.contacts("alice").await.expect("c").is_empty());

        batch(
            &db,
            vec![WriteOp::SetLastSeen {
                login: "bob".into(),
                at: 77,
            }],
        )
        .await;
        let p = db.profile("bob").await.expect("p").expect("bob");
        assert_eq!((p.name.as_str(), p.last_seen), ("Bob", Some(77)));

        assert_eq!(db.sealed_password_count().await.expect("count"), 2);
        let sample = db.sample_sealed_passwords(1).await.expect("sample");
        assert_eq!(sample.len(), 1);
        assert!(db.set_password("bob", b"new").await.expect("set"));
        assert!(!db.set_password("nobody", b"new").await.expect("set"));
        assert_eq!(db.password("bob").await.expect("pw"), Some(b"new".to_vec()));
        assert_eq!(db.clear_passwords().await.expect("clear"), 2);
        assert_eq!(db.sealed_password_count().await.expect("count"), 0);
    })
    .await;
}

#[tokio::test]
async fn offers_and_notices_are_numbered_answered_and_expired() {
    on_each_backend("store: offers", |db| async move {
        batch(&db, vec![user("alice"), user("bob")]).await;
        let r = batch(
            &db,
            vec![
                create_offer(offer("o1", 100)),
                create_offer(offer("o2", 100)),
                create_offer(Offer {
                    size: 2_000,
                    ..offer("big", 100)
                }),
                create_offer(Offer {
                    recipient: "ghost".into(),
                    ..offer("o3", 100)
                }),
            ],
        )
        .await;
        let (Ok(Outcome::Stored(s1)), Ok(Outcome::Stored(s2))) = (&r[0], &r[1]) else {
            panic!("{r:?}")
        };
        assert!(s1 < s2);
        assert!(matches!(
            r[2],
            Ok(Outcome::Privacy(PrivacyOutcome::OfferQuotaExceeded))
        ));
        assert!(matches!(r[3], Ok(Outcome::UnknownUser)), "{r:?}");
        let marks = db.marks().await.expect("marks");
        assert_eq!(marks.offers, *s2);
        let open = db
            .pending_offers("bob", 150, marks.offers)
            .await
            .expect("o");
        assert_eq!(
            open.iter().map(|o| o.id.as_str()).collect::<Vec<_>>(),
            ["o1", "o2"]
        );
        assert_eq!(open[0].mime.as_deref(), Some("text/plain"));
        let answer = |id: &str, by: &str, relay: Option<&str>| WriteOp::AnswerOffer {
            sender: None,
            id: id.into(),
            by: by.into(),
            relay: relay.map(str::to_owned),
            now: 200,
        };
        let r = batch(
            &db,
            vec![
                answer("o1", "alice", None),
                answer("o1", "bob", Some("http://relay")),
                answer("o1", "bob", None),
                answer("nope", "bob", None),
            ],
        )
        .await;
        assert!(matches!(r[0], Ok(Outcome::NotRecipient)));
        assert!(matches!(&r[1], Ok(Outcome::Answered(o))
            if o.state == OfferState::Accepted && o.relay.as_deref() == Some("http://relay")));
        assert!(matches!(r[2], Ok(Outcome::AlreadyAnswered)));
        assert!(matches!(r[3], Ok(Outcome::UnknownTransfer)));
        let r = batch(&db, vec![WriteOp::ExpireOffers { now: 5_000 }]).await;
        let Ok(Outcome::Expired(expired)) = &r[0] else {
            panic!("{r:?}")
        };
        assert_eq!(expired.len(), 1);
        assert_eq!(expired[0].id, "o2");

        let rejected = |login: &str, seq_expires: i64| Notice {
            login: login.into(),
            transfer_id: "o2".into(),
            body: NoticeBody::FileRejected(FileRejected {
                transfer_id: "o2".into(),
                reason: FileRejection::Expired,
            }),
            expires_at: seq_expires,
        };
        let r = batch(
            &db,
            vec![WriteOp::AddNotices(vec![
                rejected("alice", 10_000),
                rejected("alice", 20_000),
            ])],
        )
        .await;
        let Ok(Outcome::Notices(seqs)) = &r[0] else {
            panic!("{r:?}")
        };
        assert!(seqs[0] < seqs[1]);
        let marks = db.marks().await.expect("marks");
        assert_eq!(marks.notices, seqs[1]);
        let got = db
            .pending_notices("alice", 0, marks.notices)
            .await
            .expect("notices");
        assert_eq!(got, [rejected("alice", 10_000), rejected("alice", 20_000)]);
        assert_eq!(
            db.pending_notices("alice", 0, seqs[0])
                .await
                .expect("n")
                .len(),
            1
        );
        // Expired notices go with the next sweep.
        batch(&db, vec![WriteOp::ExpireOffers { now: 15_000 }]).await;
        assert_eq!(
            db.pending_notices("alice", 0, i64::MAX)
                .await
                .expect("n")
                .len(),
            1
        );
    })
    .await;
}

#[tokio::test]
async fn presence_consent_blocks_and_visibility() {
    on_each_backend("store: privacy", |db| async move {
        batch(&db, vec![user("alice"), user("bob"), user("carol")]).await;
        let sub = |watcher: &str, subject: &str| {
            WriteOp::Privacy(PrivacyOp::Subscribe {
                watcher: watcher.into(),
                subject: subject.into(),
                now: 1,
                max_requests: 10,
            })
        };
        let r = batch(&db, vec![sub("alice", "bob")]).await;
        assert!(matches!(
            r[0],
            Ok(Outcome::Privacy(PrivacyOutcome::Subscribed {
                approved: false,
                request: true,
                ..
            }))
        ));
        assert_eq!(db.presence_requests("bob").await.expect("r"), ["alice"]);
        assert!(!db.can_see_presence("bob", "alice").await.expect("see"));
        batch(
            &db,
            vec![WriteOp::Privacy(PrivacyOp::Answer {
                subject: "bob".into(),
                watcher: "alice".into(),
                approve: true,
                now: 2,
            })],
        )
        .await;
        assert!(db.can_see_presence("bob", "alice").await.expect("see"));
        assert_eq!(
            db.approved_watchers("bob").await.expect("w"),
            (vec!["alice".to_owned()], "contacts".to_owned())
        );
        let block = WriteOp::Privacy(PrivacyOp::Block {
            owner: "bob".into(),
            blocked: "alice".into(),
            now: 3,
            max: 1,
        });
        let r = batch(&db, vec![block.clone(), block]).await;
        assert!(matches!(r[..], [Ok(Outcome::Done), Ok(Outcome::Exists)]));
        assert!(!db.can_see_presence("bob", "alice").await.expect("see"));
        assert_eq!(db.blocked_by("bob").await.expect("b"), ["alice"]);
        assert_eq!(db.all_blocks().await.expect("all").len(), 1);
        let r = batch(
            &db,
            vec![WriteOp::Privacy(PrivacyOp::SetVisibility {
                login: "carol".into(),
                visibility: "everyone".into(),
            })],
        )
        .await;
        assert!(matches!(&r[0], Ok(Outcome::Privacy(PrivacyOutcome::OldVisibility(v))) if v == "contacts"));
        assert!(db.can_see_presence("carol", "alice").await.expect("see"));
        assert_eq!(db.visibility("carol").await.expect("v"), "everyone");
    })
    .await;
}

#[tokio::test]
async fn retention_expires_and_forgets_in_bounded_steps() {
    on_each_backend("store: retention", |db| async move {
        batch(&db, vec![user("alice"), user("bob")]).await;
        let at = |id: &str, at: i64| {
            WriteOp::InsertMessage(StoredMessage {
                seq: 0,
                id: id.into(),
                sender: "alice".into(),
                recipient: "bob".into(),
                at,
                text: id.into(),
            })
        };
        batch(&db, vec![at("old1", 10), at("old2", 20), at("new", 1_000)]).await;
        let purge = || WriteOp::Purge {
            expire_before: 500,
            forget_before: 0,
            limit: 1,
        };
        let r = batch(&db, vec![purge()]).await;
        let Ok(Outcome::Purged(p)) = &r[0] else {
            panic!("{r:?}")
        };
        assert_eq!(p.expired, [("old1".to_owned(), "alice".to_owned())]);
        assert!(p.more);
        batch(&db, vec![purge()]).await;
        assert_eq!(pending(&db, "bob").await, ["new"]);
    })
    .await;
}

/// The pending-message cap counts what is stored and what the batch adds.
#[tokio::test]
async fn a_full_recipient_queue_refuses_only_the_overflow() {
    on_each_backend("store: queue cap", |db| async move {
        let db = db.with_pending_cap(2);
        batch(&db, vec![user("alice"), user("bob")]).await;
        batch(&db, vec![message("q1", "bob", "1")]).await;
        let r = batch(
            &db,
            vec![message("q2", "bob", "2"), message("q3", "bob", "3")],
        )
        .await;
        assert!(matches!(
            r[..],
            [Ok(Outcome::Stored(_)), Ok(Outcome::QueueFull)]
        ));
    })
    .await;
}

mod answers;
mod duplicate_ids;
mod login_marks;
mod nodes;
mod pending_cap;
