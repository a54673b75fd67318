//! The shared login throttle's tables stay bounded when an attacker spreads guesses over many
//! addresses, and the bound unlocks nobody (review: per-address rows had no cap).

use super::*;
use crate::throttle::Delays;

/// Rows of `cluster_login_failures` per scope, and what the triggers counted per scope.
async fn counts(pool: &PgPool) -> (Vec<(i16, i64)>, Vec<(i16, i64)>) {
    let rows =
        sqlx::query_as("SELECT scope, count(*) FROM cluster_login_failures GROUP BY 1 ORDER BY 1")
            .fetch_all(pool)
            .await
            .unwrap();
    let counted = sqlx::query_as(
        "SELECT scope, sum(n)::bigint FROM cluster_throttle_rows GROUP BY 1 \
         HAVING sum(n) > 0 ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    (rows, counted)
}

/// 40 guesses at alice from 40 addresses in 20 networks, over two nodes, with room for 4 rows
/// per scope. Before: 40 rows per address scope (no cap; an attacker with a million addresses
/// wrote a million rows). Now: each scope holds at most 4 rows, and every one of the 40
/// addresses is still made to wait, for alice and for any other login.
#[tokio::test]
async fn many_addresses_fill_a_capped_table_and_all_stay_throttled() {
    let Some(url) = msim_testkit::postgres::database("cluster throttle cap") else {
        return;
    };
    let (p1, p2) = (pool(&url).await, pool(&url).await);
    ensure_schema(&p1).await.unwrap();
    let delays = Delays {
        base: Duration::from_secs(1),
        max: Duration::from_secs(300),
        decay: Duration::from_secs(600),
        known_for: Duration::from_secs(3600),
    };
    const CAP: i64 = 4;
    let n1 = throttle::SharedThrottle::with_cap(p1.clone(), delays, CAP);
    let n2 = throttle::SharedThrottle::with_cap(p2.clone(), delays, CAP);
    let owner: std::net::IpAddr = "198.51.100.1".parse().unwrap();
    let fresh: std::net::IpAddr = "192.0.2.9".parse().unwrap();
    let now = 1_000_000_000_000;
    n1.success("alice", owner, now).await.unwrap();
    let attackers: Vec<std::net::IpAddr> = (0..40)
        .map(|k| {
            format!("10.{}.{}.{}", k / 20, k % 20, k % 2 + 1)
                .parse()
                .unwrap()
        })
        .collect();
    for (k, ip) in attackers.iter().enumerate() {
        // While the table has room, a fresh address of another network is not slowed.
        if k < 2 {
            assert_eq!(n1.wait("bob", fresh, now).await.unwrap(), Duration::ZERO);
        }
        let n = if k % 2 == 0 { &n1 } else { &n2 };
        n.failure("alice", *ip, now).await.unwrap();
    }
    let (rows, counted) = counts(&p1).await;
    assert_eq!(rows, counted, "the triggers count every row");
    for (scope, n) in &rows {
        assert!(
            *n <= CAP,
            "scope {scope} holds {n} rows, cap {CAP}: {rows:?}"
        );
    }
    for ip in &attackers {
        for n in [&n1, &n2] {
            assert!(
                n.wait("alice", *ip, now).await.unwrap() > Duration::ZERO,
                "{ip} alice"
            );
            assert!(
                n.wait("bob", *ip, now).await.unwrap() > Duration::ZERO,
                "{ip} bob"
            );
        }
    }
    // The owner's known address is not slowed by the strangers' per-login failures.
    assert_eq!(n1.wait("alice", owner, now).await.unwrap(), Duration::ZERO);
    // Everything decays and is pruned as before; the counts follow the deletes, so the
    // table has room again and a fresh address is not slowed.
    let far = now + delays.horizon() + 1;
    throttle::prune(&p1, far, WAIT).await.unwrap();
    let (rows, counted) = counts(&p1).await;
    assert!(
        rows.is_empty() && counted.is_empty(),
        "{rows:?} {counted:?}"
    );
    assert_eq!(n2.wait("bob", fresh, far).await.unwrap(), Duration::ZERO);
    n2.failure("bob", fresh, far).await.unwrap();
    let exact: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM cluster_login_failures WHERE scope = 1 AND key = '192.0.2.9'",
    )
    .fetch_one(&p1)
    .await
    .unwrap();
    assert_eq!(exact, 1, "with room again, the address has its own row");
}
