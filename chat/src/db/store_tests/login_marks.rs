//! The login's probe (`Db::login_marks`): which stored backlogs hold something, read with the
//! marks, so a login skips the reads of the empty ones — and never one that is not empty.

use super::*;

fn notice(login: &str, id: &str, expires_at: i64) -> Notice {
    Notice {
        login: login.into(),
        transfer_id: id.into(),
        body: NoticeBody::rejected(id, FileRejection::Rejected),
        expires_at,
    }
}

#[tokio::test]
async fn the_login_probe_names_exactly_the_backlogs_that_hold_something() {
    on_each_backend("store: login probe", |db| async move {
        batch(&db, vec![user("alice"), user("bob")]).await;
        let probe = |login: &'static str, now: i64| {
            let db = db.clone();
            async move { db.login_marks(login, now).await.expect("probe") }
        };
        let (marks, backlog) = probe("bob", 100).await;
        assert_eq!(backlog, Backlog::default(), "a new user has nothing");
        assert_eq!(marks.messages, db.marks().await.expect("marks").messages);

        // A message for bob: his messages; once acknowledged, nothing again.
        batch(&db, vec![message("m1", "bob", "one")]).await;
        let (marks, backlog) = probe("bob", 100).await;
        assert!(backlog.messages && !backlog.receipts && !backlog.offers && !backlog.notices);
        assert_eq!(marks, db.marks().await.expect("marks"));
        assert_eq!(probe("alice", 100).await.1, Backlog::default());
        batch(
            &db,
            vec![WriteOp::MarkRead {
                id: "m1".into(),
                reader: "bob".into(),
                at: 5,
            }],
        )
        .await;
        // Read: no longer pending for bob; alice (the sender) has a receipt waiting.
        assert_eq!(probe("bob", 100).await.1, Backlog::default());
        let alice = probe("alice", 100).await.1;
        assert!(alice.receipts && !alice.messages, "{alice:?}");

        // An offer to bob, a result for bob: both count until they expire.
        batch(&db, vec![create_offer(offer("t1", 100))]).await;
        batch(
            &db,
            vec![WriteOp::AddNotices(vec![notice("bob", "t2", 600)])],
        )
        .await;
        let bob = probe("bob", 200).await.1;
        assert!(bob.offers && bob.notices && !bob.messages, "{bob:?}");
        let bob = probe("bob", 2_000).await.1;
        assert!(!bob.offers && !bob.notices, "expired by then: {bob:?}");
    })
    .await;
}
