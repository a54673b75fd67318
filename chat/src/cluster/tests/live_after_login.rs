//! A live packet for a user who has just logged in on another node reaches that session even
//! though this node's mirror does not show the login yet (before: dropped, so a presence
//! request made the moment its subject logged in elsewhere waited for the next login).

use super::listener::listener_pids;
use super::repair::Stopped;
use super::*;
use crate::hub::encode;
use msim_shared::Packet;

#[tokio::test]
async fn a_push_to_a_user_whose_login_this_node_has_not_heard_of_yet_arrives() {
    let Some(url) = msim_testkit::postgres::database("cluster push after login") else {
        return;
    };
    let a = node(&url, "a").await;
    // b hears of logins only through its listener (no poll tick), and replaces a silent
    // listener after 2 s.
    let b = node_with(
        &url,
        "b",
        Timing {
            poll: Duration::from_secs(3600),
            node_timeout: Duration::from_secs(2),
            ..fast()
        },
    )
    .await;
    let deadline = Instant::now() + WAIT;
    let pid = loop {
        if let Some(pid) = listener_pids(&b.pool, b.cluster.node(), &[]).await.first() {
            break *pid;
        }
        assert!(Instant::now() < deadline, "b has no listener");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // b has read the table since its listener connected: it heard of zed's login.
    let _zed = a.session("zed").await;
    wait_until("b never heard of zed", || b.hub.is_online("zed")).await;
    // b's listener hears nothing now: alice's login on a is committed, b does not know it.
    let frozen = Stopped::stop(pid);
    let mut on_a = a.session("alice").await;
    assert!(!b.hub.is_online("alice"), "b heard of alice's login");
    let request = Packet::new("PRESENCE-REQUEST").with("from", "bob@localhost");
    assert_eq!(b.hub.send_packet("alice", &request), 0, "no session on b");
    // b replaces its silent listener, reads the presence table and sends the packet on.
    let got = collect(&mut on_a, 1).await;
    assert_eq!(got[0].bytes, encode(&request));
    assert!(got[0].seq.is_none());
    assert!(b.hub.is_online("alice"));
    drop(frozen);
}

/// Packets for users who are offline everywhere do not pile up: the next reading of the
/// presence table (here: after the listener reconnects) drops them.
#[tokio::test]
async fn a_push_to_a_user_offline_everywhere_is_dropped_at_the_next_presence_read() {
    let Some(url) = msim_testkit::postgres::database("cluster push to nobody") else {
        return;
    };
    let a = notified_node(&url, "a").await;
    for i in 0..100 {
        a.hub
            .send_packet(&format!("nobody{i}"), &Packet::new("TYPING"));
    }
    assert_eq!(a.cluster.waiting_pushes(), 100);
    let ended: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
    )
    .bind(nodes::listener_name(a.cluster.node()))
    .fetch_all(&a.pool)
    .await
    .unwrap();
    assert_eq!(ended, vec![true]);
    wait_until("the packets for nobody stayed", || {
        a.cluster.waiting_pushes() == 0
    })
    .await;
}
