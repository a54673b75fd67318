//! Presence records whose `xid` lies in the future (review LOW 7b): after a restore onto a
//! server whose transaction counter is lower, they counted as changed on every incremental
//! read, for ever for a user who stays online. A full read gives them a current xid.

use super::*;

#[tokio::test]
async fn a_full_read_resets_xids_from_the_future() {
    let Some(url) = msim_testkit::postgres::database("cluster presence future xid") else {
        return;
    };
    let pool = pool(&url).await;
    ensure_schema(&pool).await.unwrap();
    let (me, other) = (NodeId::random(), NodeId::random());
    let limit = Duration::from_secs(5);
    nodes::register(&pool, other, "other").await.unwrap();
    for login in ["bob", "carol"] {
        nodes::set_presence(&pool, other, login, true, 5, limit)
            .await
            .unwrap();
    }
    // bob's record as restored from a server whose counter was far ahead.
    sqlx::query("UPDATE cluster_presence_last SET xid = '1000000000000'::xid8 WHERE login = 'bob'")
        .execute(&pool)
        .await
        .unwrap();
    let full = nodes::presence_since(&pool, me, None, &[]).await.unwrap();
    assert_eq!(full.rows.len(), 2);
    let mut snapshot = full.snapshot;
    for _ in 0..3 {
        let read = nodes::presence_since(&pool, me, Some(&snapshot), &[])
            .await
            .unwrap();
        assert_eq!(read.logins, Some(Vec::new()), "nothing changed");
        snapshot = read.snapshot;
    }
    // Changes are still read.
    nodes::set_presence(&pool, other, "bob", false, 7, limit)
        .await
        .unwrap();
    let read = nodes::presence_since(&pool, me, Some(&snapshot), &[])
        .await
        .unwrap();
    assert_eq!(read.logins, Some(vec!["bob".to_owned()]));
    assert!(read.rows.is_empty());
}
