//! What an idle cluster costs the database with many users online (review LOW 9): every
//! node's poll tick used to read the whole presence table. Measured as the blocks the node's
//! incremental read touches (`EXPLAIN (ANALYZE, BUFFERS)` of its statement, with the snapshot
//! of a real read): rows returned alone would not tell an index probe from a full scan.
//! (On a server of its own: under a long transaction elsewhere the read looks at every
//! record changed since it began — review LOW 7a, documented in OPERATING.md.)

use super::*;

/// Users online on another node during the measurement.
const USERS: i64 = 5000;
/// Most blocks an incremental read that finds nothing may touch (an index probe: a few).
const IDLE_BLOCKS: i64 = 10;

/// Blocks (shared hits and reads) of the incremental read from `snapshot`, run as the node
/// runs it, on a warm session: the first run also reads the catalogue (sort operators).
async fn blocks_read(conn: &mut sqlx::PgConnection, me: NodeId, snapshot: &str) -> i64 {
    explain(conn, me, snapshot).await;
    explain(conn, me, snapshot).await
}

async fn explain(conn: &mut sqlx::PgConnection, me: NodeId, snapshot: &str) -> i64 {
    let plan: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "EXPLAIN (ANALYZE, BUFFERS) {}",
        nodes::CHANGED_SINCE
    )))
    .bind(me.0)
    .bind(snapshot)
    .bind(Vec::<String>::new())
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    // The first "Buffers:" line is the top node's (its children's included); none: nothing
    // touched. Planning's own come last.
    if std::env::var_os("MSIM_SHOW_PLAN").is_some() {
        eprintln!("{}", plan.join("\n"));
    }
    let Some(line) = plan.iter().find(|l| l.trim_start().starts_with("Buffers:")) else {
        return 0;
    };
    let count = |what: &str| -> i64 {
        line.split([' ', ','])
            .find_map(|w| w.strip_prefix(what))
            .map_or(0, |n| n.parse().unwrap())
    };
    count("hit=") + count("read=")
}

/// 5,000 users online on another node, a node idle: its presence read finds nothing, in a
/// few blocks, instead of reading every record (the same statement without its index: more
/// than the bound, so the bound tells the two apart).
#[tokio::test]
async fn an_idle_node_reads_only_presence_changes() {
    // A server of its own: a transaction running anywhere on the server (another test's, in
    // another database) holds back the snapshots' xmin, and with it what the read must look
    // at (docs/OPERATING.md: long transactions).
    let Some(pg) = msim_testkit::postgres::PgCluster::start("cluster idle presence cost").unwrap()
    else {
        return;
    };
    let url = pg.create_database().unwrap();
    let admin = pool(&url).await;
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
    wait_until("a never saw the users", || a.hub.is_online(&last)).await;
    // A read as a's, then the next one, which finds nothing changed.
    let me = a.cluster.node();
    let read = nodes::presence_since(&admin, me, None, &[]).await.unwrap();
    assert_eq!(read.rows.len(), USERS as usize);
    let idle = nodes::presence_since(&admin, me, Some(&read.snapshot), &[])
        .await
        .unwrap();
    assert_eq!(idle.logins, Some(Vec::new()));
    let mut conn = admin.acquire().await.unwrap();
    let blocks = blocks_read(&mut conn, me, &idle.snapshot).await;
    // The node's prepared statement may run with a generic plan (after five runs).
    sqlx::query("SET plan_cache_mode = force_generic_plan")
        .execute(&mut *conn)
        .await
        .unwrap();
    let generic = blocks_read(&mut conn, me, &idle.snapshot).await;
    sqlx::query("SET enable_indexscan = off")
        .execute(&mut *conn)
        .await
        .unwrap();
    sqlx::query("SET enable_bitmapscan = off")
        .execute(&mut *conn)
        .await
        .unwrap();
    let scanned = blocks_read(&mut conn, me, &idle.snapshot).await;
    eprintln!("idle presence read, {USERS} users online elsewhere: {blocks} blocks ({generic} with a generic plan); a full scan {scanned}");
    assert!(
        blocks <= IDLE_BLOCKS,
        "{blocks} blocks for a read that finds nothing"
    );
    assert!(
        scanned > IDLE_BLOCKS,
        "a full scan reads only {scanned} blocks"
    );
    assert!(a.hub.is_online(&last));
    conn.detach();
}
