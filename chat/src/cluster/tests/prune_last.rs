//! Pruning the presence records skips a record locked by a running presence change instead
//! of waiting for it (a pool slot held for PostgreSQL's lock_timeout, every beat one more).

use super::*;

#[tokio::test]
async fn pruning_skips_locked_records_and_keeps_fresh_ones() {
    let Some(url) = msim_testkit::postgres::database("cluster prune presence records") else {
        return;
    };
    let pool = pool(&url).await;
    ensure_schema(&pool).await.unwrap();
    for (login, age) in [("old1", 3600.0), ("old2", 3600.0), ("fresh", 0.0)] {
        sqlx::query(
            "INSERT INTO cluster_presence_last (login, online, node, change, xid, at) \
             VALUES ($1, false, 0, 0, pg_current_xact_id(), now() - make_interval(secs => $2))",
        )
        .bind(login)
        .bind(age)
        .execute(&pool)
        .await
        .unwrap();
    }
    // A presence change of old1 still running: its record is row-locked.
    let mut stuck = pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM cluster_presence_last WHERE login = 'old1' FOR UPDATE")
        .execute(&mut *stuck)
        .await
        .unwrap();
    let keep = Duration::from_secs(60);
    let limit = Duration::from_secs(5);
    let mut conn = pool.acquire().await.unwrap();
    let started = Instant::now();
    let pruned = timeout(WAIT, nodes::prune_last(&mut conn, keep, 100, limit))
        .await
        .expect("prune never returned");
    assert_eq!(pruned.unwrap(), 1, "only old2 is prunable now");
    // Not waited for the lock (that would take the whole limit, then fail).
    assert!(started.elapsed() < limit, "prune waited for the lock");
    let left: Vec<String> =
        sqlx::query_scalar("SELECT login FROM cluster_presence_last ORDER BY login")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(left, vec!["fresh".to_owned(), "old1".to_owned()]);
    // Once the change is over, the old record goes too; the fresh one stays.
    stuck.rollback().await.unwrap();
    let pruned = timeout(WAIT, nodes::prune_last(&mut conn, keep, 100, limit))
        .await
        .expect("prune never returned");
    assert_eq!(pruned.unwrap(), 1);
    let left: Vec<String> = sqlx::query_scalar("SELECT login FROM cluster_presence_last")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(left, vec!["fresh".to_owned()]);
}
