//! A presence note older than what the last presence read showed (its later note lost) is
//! repaired: the logins of applied notes are read again on the next tick.

use super::*;

/// Reader state: the incremental read in snapshot S already showed eve offline; then the
/// stale note "eve online" arrives (the later "offline" note was lost). Eve's change is
/// visible in S, so "changed since S" never reads her again: before the fix she stayed
/// online in the mirror until she next changed (or the listener reconnected).
#[tokio::test]
async fn a_stale_presence_note_is_repaired_on_the_next_tick() {
    let Some(url) = msim_testkit::postgres::database("cluster stale presence note") else {
        return;
    };
    // Nobody reaped; a slow tick, so the test sees the stale note applied before the repair.
    let timing = Timing {
        node_timeout: Duration::from_secs(3600),
        poll: Duration::from_secs(2),
        ..fast()
    };
    let a = node_with(&url, "a", timing.clone()).await;
    let b = node_with(&url, "b", timing).await;
    let _carol = b.session("carol").await;
    wait_until("a never heard of carol", || a.hub.is_online("carol")).await;
    // Another node's row, written and removed without notes: the reads see both.
    let other = NodeId::random();
    sqlx::query("INSERT INTO cluster_nodes (node, name) VALUES ($1, 'silent')")
        .bind(other.0)
        .execute(&a.pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO cluster_presence (login, node) VALUES ('eve', $1)")
        .bind(other.0)
        .execute(&a.pool)
        .await
        .unwrap();
    wait_until("the mirror never learnt eve is online", || {
        a.hub.is_online("eve")
    })
    .await;
    sqlx::query("DELETE FROM cluster_presence WHERE node = $1")
        .bind(other.0)
        .execute(&a.pool)
        .await
        .unwrap();
    wait_until("the mirror never learnt eve left", || {
        !a.hub.is_online("eve")
    })
    .await;
    // The delayed note of eve's first session: applied, it claims eve online.
    fanout::notify(&a.pool, &format!("s {other} eve 1"), WAIT)
        .await
        .unwrap();
    wait_until("the stale note was never applied", || {
        a.hub.is_online("eve")
    })
    .await;
    wait_until("the stale note stayed in the mirror", || {
        !a.hub.is_online("eve")
    })
    .await;
    // Legitimate presence is untouched by the rechecks.
    assert!(a.hub.is_online("carol"));
}
