//! What an idle cluster costs the database with many users online (review LOW 9): every
//! node's poll tick used to read the whole presence table. Measured with
//! `pg_stat_statements` on a server of its own.

use super::*;

/// Users online on another node during the measurement.
const USERS: i64 = 5000;

/// 5,000 users online on a third node, a node idle for 3 s: its presence reads return only
/// what changed (nothing), instead of 5,000 rows per tick (~75,000 rows at a 200 ms tick).
#[tokio::test]
async fn an_idle_node_reads_only_presence_changes() {
    let test = "cluster idle presence cost";
    let Some(mut pg) = msim_testkit::postgres::PgCluster::start(test).unwrap() else {
        return;
    };
    pg.psql(
        "postgres",
        "ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'",
    )
    .unwrap();
    pg.restart().unwrap();
    let url = pg.create_database().unwrap();
    let admin = pool(&url).await;
    sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        .execute(&admin)
        .await
        .unwrap();
    let quiet = Timing {
        node_timeout: Duration::from_secs(3600),
        ..fast()
    };
    let a = node_with(&url, "a", quiet).await;
    // The users' node (its rows only: its heartbeat stays fresh enough, nobody reaps).
    let other = NodeId::random().0;
    sqlx::query("INSERT INTO cluster_nodes (node, name) VALUES ($1, 'other')")
        .bind(other)
        .execute(&admin)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO cluster_presence (login, node) \
         SELECT 'user' || g, $1 FROM generate_series(1, $2) g",
    )
    .bind(other)
    .bind(USERS)
    .execute(&admin)
    .await
    .unwrap();
    let last = format!("user{USERS}");
    // The read that found them has been counted (before its answer came).
    wait_until("a never saw the users", || a.hub.is_online(&last)).await;
    sqlx::query("SELECT pg_stat_statements_reset()")
        .execute(&admin)
        .await
        .unwrap();
    // The measurement's window (what is measured is what the node does meanwhile, at idle).
    let window = Duration::from_secs(3);
    tokio::time::sleep(window).await;
    let (calls, rows): (i64, i64) = sqlx::query_as(
        "SELECT COALESCE(sum(calls), 0)::bigint, COALESCE(sum(rows), 0)::bigint \
         FROM pg_stat_statements WHERE query ILIKE '%cluster_presence%' \
         AND query NOT ILIKE '%pg_stat_statements%'",
    )
    .fetch_one(&admin)
    .await
    .unwrap();
    let (all_calls, all_rows): (i64, i64) = sqlx::query_as(
        "SELECT COALESCE(sum(calls), 0)::bigint, COALESCE(sum(rows), 0)::bigint \
         FROM pg_stat_statements WHERE query NOT ILIKE '%pg_stat_statements%'",
    )
    .fetch_one(&admin)
    .await
    .unwrap();
    let per_s = |n: i64| n as f64 / window.as_secs_f64();
    eprintln!(
        "idle node, {USERS} users online elsewhere, {window:?}: presence reads {:.1} \
         statements/s returning {:.0} rows/s; all statements {:.1}/s, {:.0} rows/s",
        per_s(calls),
        per_s(rows),
        per_s(all_calls),
        per_s(all_rows)
    );
    assert!(calls > 0, "the node did not poll");
    // One row (the snapshot) per read; a full read would be USERS + 1.
    assert!(rows <= calls * 2, "{rows} rows in {calls} presence reads");
    assert!(a.hub.is_online(&last));
}
