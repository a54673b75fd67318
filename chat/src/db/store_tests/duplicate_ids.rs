//! A message id stored twice (the same federated message reaching two nodes at once, or a
//! client reusing another message's id) fails alone.

use super::*;

/// One batch carries a message whose id is already stored, among other users' messages: only
/// that one fails; before, the unique violation failed every message of its insert statement.
#[tokio::test]
async fn a_duplicate_id_fails_only_its_own_message() {
    on_each_backend("store: duplicate message id in a batch", |db| async move {
        batch(&db, vec![user("alice"), user("bob"), user("carol")]).await;
        let r = batch(&db, vec![message("dup", "bob", "first")]).await;
        assert!(matches!(r[0], Ok(Outcome::Stored(_))), "{r:?}");
        let r = batch(
            &db,
            vec![
                message("b1", "bob", "1"),
                message("dup", "carol", "again"),
                message("c1", "carol", "2"),
                message("c2", "carol", "2"),
                message("c2", "bob", "twice in one batch"),
            ],
        )
        .await;
        assert!(matches!(r[0], Ok(Outcome::Stored(_))), "{r:?}");
        assert!(r[1].is_err(), "{r:?}");
        assert!(matches!(r[2], Ok(Outcome::Stored(_))), "{r:?}");
        assert!(matches!(r[3], Ok(Outcome::Stored(_))), "{r:?}");
        assert!(r[4].is_err(), "{r:?}");
        assert_eq!(pending(&db, "bob").await, ["first", "1"]);
        assert_eq!(pending(&db, "carol").await, ["2", "2"]);
    })
    .await;
}
