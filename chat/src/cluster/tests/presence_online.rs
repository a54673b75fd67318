//! A presence record's `online` follows its login's rows (review LOW 4): a node of an older
//! version removing a login's last row (a rolling upgrade) left the record online for ever,
//! and pruning, which removes offline records only, never removed it.

use super::*;

async fn record(pool: &PgPool, login: &str) -> Option<(bool, i64)> {
    sqlx::query_as("SELECT online, change FROM cluster_presence_last WHERE login = $1")
        .bind(login)
        .fetch_optional(pool)
        .await
        .unwrap()
}

async fn prune_all(pool: &PgPool) -> u64 {
    let mut conn = pool.acquire().await.unwrap();
    let limit = Duration::from_secs(5);
    timeout(
        WAIT,
        nodes::prune_last(&mut conn, Duration::ZERO, 100, limit),
    )
    .await
    .expect("prune never returned")
    .unwrap()
}

#[tokio::test]
async fn a_record_whose_last_row_an_old_node_removed_goes_offline_and_is_pruned() {
    let Some(url) = msim_testkit::postgres::database("cluster presence record online") else {
        return;
    };
    let pool = pool(&url).await;
    ensure_schema(&pool).await.unwrap();
    let (new, old) = (NodeId::random(), NodeId::random());
    for n in [new, old] {
        nodes::register(&pool, n, "n").await.unwrap();
    }
    let limit = Duration::from_secs(5);
    // bob online on the old node (its insert: no record of its own, the trigger makes one),
    // carol on this version's node.
    sqlx::query("INSERT INTO cluster_presence (login, node) VALUES ('bob', $1)")
        .bind(old.0)
        .execute(&pool)
        .await
        .unwrap();
    let carol = nodes::set_presence(&pool, new, "carol", true, 77, limit)
        .await
        .unwrap();
    assert!(carol.made);
    assert_eq!(record(&pool, "bob").await, Some((true, 0)));
    assert_eq!(record(&pool, "carol").await, Some((true, 77)));
    // The old node's close: its last row goes, nothing else.
    sqlx::query("DELETE FROM cluster_presence WHERE login = 'bob'")
        .execute(&pool)
        .await
        .unwrap();
    // Offline, of nobody's change; pruned. carol (online) stays.
    assert_eq!(record(&pool, "bob").await, Some((false, 0)));
    assert_eq!(prune_all(&pool).await, 1);
    assert_eq!(record(&pool, "bob").await, None);
    assert_eq!(record(&pool, "carol").await, Some((true, 77)));
    // This version's changes still record their own transitions.
    let closed = nodes::set_presence(&pool, new, "carol", false, 79, limit)
        .await
        .unwrap();
    assert!(closed.made);
    assert_eq!(record(&pool, "carol").await, Some((false, 79)));
    // A record an old node left online before the upgrade (no rows) is set offline by the
    // migration, then pruned.
    sqlx::query(
        "INSERT INTO cluster_presence_last (login, online, node, change, xid) \
         VALUES ('dave', true, 0, 0, pg_current_xact_id())",
    )
    .execute(&pool)
    .await
    .unwrap();
    ensure_schema(&pool).await.unwrap();
    assert_eq!(record(&pool, "dave").await, Some((false, 0)));
    assert_eq!(prune_all(&pool).await, 2, "dave and carol");
}

/// Nodes starting at once on a fresh database: one node's store migrator runs while the
/// others create the cluster's tables themselves (review LOW 8c). They ran the same DDL at
/// once, unserialised: "tuple concurrently updated", or duplicate keys in the catalogue.
#[tokio::test]
async fn nodes_starting_at_once_on_a_fresh_database_all_start() {
    for round in 0..3 {
        let Some(url) = msim_testkit::postgres::database("cluster schema race") else {
            return;
        };
        let pool = pool(&url).await;
        let done = std::sync::atomic::AtomicBool::new(false);
        let migrate = async {
            let r = sqlx::migrate!("src/db/postgres/migrations")
                .run(&pool)
                .await
                .map_err(|e| e.to_string());
            done.store(true, std::sync::atomic::Ordering::SeqCst);
            r
        };
        // Nodes (re)starting all along the migration.
        let ensure = || async {
            let mut runs = 0;
            while !done.load(std::sync::atomic::Ordering::SeqCst) || runs == 0 {
                ensure_schema(&pool).await.map_err(|e| e.to_string())?;
                runs += 1;
            }
            Ok::<_, String>(runs)
        };
        let (m, e1, e2, e3) = tokio::join!(migrate, ensure(), ensure(), ensure());
        assert!(m.is_ok(), "round {round}: {m:?}");
        for r in [e1, e2, e3] {
            assert!(r.is_ok(), "round {round}: {r:?}");
        }
        // The trigger once, and its function the newest.
        let triggers: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_trigger WHERE tgname = 'cluster_presence_touch'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(triggers, 1);
        let body: String = sqlx::query_scalar(
            "SELECT prosrc FROM pg_proc WHERE proname = 'cluster_presence_touch'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        assert!(body.contains("online = EXCLUDED.online"), "{body}");
    }
}
