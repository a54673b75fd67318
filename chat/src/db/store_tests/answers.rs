//! An answer stored with its results in one transaction, and the sender's deferred SHA-256:
//! what is stored only when the write is allowed, on every backend.

use super::*;
use msim_shared::proto::{FileHash, HashFailure};

fn result(login: &str, id: &str) -> Notice {
    Notice {
        login: login.into(),
        transfer_id: id.into(),
        body: NoticeBody::rejected(id, FileRejection::Rejected),
        expires_at: 10_000,
    }
}

fn answer(id: &str, by: &str, results: Vec<Notice>) -> WriteOp {
    WriteOp::AnswerWithResults {
        id: id.into(),
        by: by.into(),
        relay: None,
        now: 200,
        results,
    }
}

async fn notices(db: &Db, login: &str) -> Vec<String> {
    db.pending_notices(login, 0, i64::MAX)
        .await
        .expect("notices")
        .into_iter()
        .map(|n| format!("{}", n.body.to_packet()))
        .collect()
}

#[tokio::test]
async fn an_answers_results_are_stored_only_with_the_answer() {
    on_each_backend("store: answers", |db| async move {
        batch(&db, vec![user("alice"), user("bob")]).await;
        batch(&db, vec![create_offer(offer("o1", 100))]).await;
        let r = batch(
            &db,
            vec![
                // Refused (not the recipient; then already answered): nothing of them stored.
                answer("o1", "alice", vec![result("alice", "o1")]),
                answer(
                    "o1",
                    "bob",
                    vec![result("alice", "o1"), result("bob", "o1")],
                ),
                answer("o1", "bob", vec![result("alice", "o1")]),
                answer("nope", "bob", vec![result("alice", "nope")]),
            ],
        )
        .await;
        assert!(matches!(r[0], Ok(Outcome::NotRecipient)), "{r:?}");
        let Ok(Outcome::AnsweredWithResults(o, seqs)) = &r[1] else {
            panic!("{r:?}")
        };
        assert_eq!(o.state, OfferState::Rejected);
        assert!(seqs.len() == 2 && seqs[0] < seqs[1], "{seqs:?}");
        assert!(matches!(r[2], Ok(Outcome::AlreadyAnswered)), "{r:?}");
        assert!(matches!(r[3], Ok(Outcome::UnknownTransfer)), "{r:?}");
        assert_eq!(notices(&db, "alice").await.len(), 1);
        assert_eq!(notices(&db, "bob").await.len(), 1);
        let marks = db.marks().await.expect("marks");
        assert_eq!(marks.notices, seqs[1]);
    })
    .await;
}

#[tokio::test]
async fn the_senders_hash_is_stored_once_for_its_accepted_offer() {
    on_each_backend("store: hashes", |db| async move {
        batch(&db, vec![user("alice"), user("bob")]).await;
        batch(
            &db,
            vec![
                create_offer(offer("o1", 100)),
                create_offer(Offer {
                    sha256: Some("ab".repeat(32)),
                    ..offer("o2", 100)
                }),
            ],
        )
        .await;
        let hash = |id: &str, by: &str| WriteOp::SetOfferHash {
            id: id.into(),
            by: by.into(),
            sha256: "cd".repeat(32),
            notice_expires: 10_000,
        };
        let refused = |r: &Result<Outcome, DbError>| match r {
            Ok(Outcome::HashRefused(reason)) => reason.clone(),
            other => panic!("{other:?}"),
        };
        let r = batch(&db, vec![hash("o1", "alice")]).await;
        assert_eq!(refused(&r[0]), HashFailure::NotAccepted);
        let accept = |id: &str| WriteOp::AnswerOffer {
            sender: None,
            id: id.into(),
            by: "bob".into(),
            relay: Some("http://relay".into()),
            now: 200,
        };
        batch(&db, vec![accept("o1"), accept("o2")]).await;
        let r = batch(
            &db,
            vec![
                hash("o1", "bob"),
                hash("nope", "alice"),
                hash("o2", "alice"),
                hash("o1", "alice"),
                hash("o1", "alice"),
            ],
        )
        .await;
        assert_eq!(refused(&r[0]), HashFailure::NotSender);
        assert_eq!(refused(&r[1]), HashFailure::UnknownTransfer);
        assert_eq!(refused(&r[2]), HashFailure::AlreadyHashed);
        assert!(
            matches!(&r[3], Ok(Outcome::Hashed { recipient, .. }) if recipient == "bob"),
            "{r:?}"
        );
        assert_eq!(refused(&r[4]), HashFailure::AlreadyHashed);
        let stored = db.offer_by_id("o1").await.expect("read").expect("o1");
        assert_eq!(stored.sha256, Some("cd".repeat(32)));
        let pushed = FileHash {
            transfer_id: "o1".into(),
            sha256: "cd".repeat(32),
        };
        use msim_shared::proto::Body;
        assert_eq!(
            notices(&db, "bob").await,
            [format!("{}", pushed.to_packet())]
        );
    })
    .await;
}
