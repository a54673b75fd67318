//! The group-commit writer with several batches in flight (PostgreSQL keeps two going,
//! `db::commit`): what it answers must be what one batch after the other would answer.

use super::*;
use crate::db::commit::{HookSlot, Writer};
use crate::db::space::Watermark;
use std::time::Duration;

/// Messages submitted without waiting, several batches' worth: the ones stored are numbered
/// in submission order, so each batch committed after the one before (a batch that took the
/// batch lock first would number its messages below the earlier ones), and the pending cap,
/// checked by each batch under the lock, counts every earlier batch's messages.
#[tokio::test]
async fn pipelined_batches_commit_in_order_and_count_each_other() {
    on_each_backend("store: pipelined writer", |db| async move {
        batch(&db, vec![user("alice"), user("bob")]).await;
        const CAP: usize = 3_000;
        const SENT: usize = 7_000;
        let db = db.with_pending_cap(CAP as u64);
        let dir = tempfile::tempdir().expect("tempdir");
        let space = Watermark::new(dir.path(), 0, Duration::from_secs(60));
        let (writer, task) = Writer::start(db.clone(), space, HookSlot::default());
        let mut submitted = Vec::with_capacity(SENT);
        for i in 0..SENT {
            let op = message(&format!("p{i}"), "bob", &i.to_string());
            submitted.push(writer.submit(op).await.expect("queued"));
        }
        let mut last = 0;
        for (i, done) in submitted.into_iter().enumerate() {
            match tokio::time::timeout(Duration::from_secs(60), done)
                .await
                .expect("committed in time")
            {
                Ok(Outcome::Stored(seq)) if i < CAP => {
                    assert!(seq > last, "message {i}: seq {seq} after {last}");
                    last = seq;
                }
                Ok(Outcome::QueueFull) if i >= CAP => {}
                other => panic!("message {i}: {other:?}"),
            }
        }
        drop(writer);
        tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("writer stops")
            .expect("writer task");
        let stored = db
            .pending_messages("bob", 0, i64::MAX, SENT as i64)
            .await
            .expect("pending");
        let texts: Vec<String> = stored.into_iter().map(|m| m.text).collect();
        let expected: Vec<String> = (0..CAP).map(|i| i.to_string()).collect();
        assert_eq!(texts, expected);
    })
    .await;
}
