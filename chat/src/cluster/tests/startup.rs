//! A node that has joined hears the other nodes at once: the cause of the
//! `live_packets_and_presence_cross_nodes` flake (a packet published for a session on a node
//! whose listener was still connecting was lost; `Cluster::start` returned before `LISTEN`).

use super::*;

/// Right after `Cluster::start` returns, a session on the new node gets a live packet another
/// node publishes. Before, the listener connected in the background: the NOTIFY went out
/// before the `LISTEN` and was lost (almost every time here, since the publisher does not
/// wait for a reader tick).
#[tokio::test]
async fn a_started_node_hears_live_packets_at_once() {
    let Some(url) = msim_testkit::postgres::database("cluster startup listening") else {
        return;
    };
    let a = node(&url, "a").await;
    for round in 0..3 {
        let b = node(&url, &format!("b{round}")).await;
        let (tx, mut rx) = mpsc::channel(8);
        b.hub.register("bob", tx);
        let packet = format!("TYPING-STARTED from=alice@localhost round={round}\n");
        let payload = format!("e {} bob {packet}", a.cluster.node());
        fanout::notify(&a.pool, &payload, WAIT).await.unwrap();
        let got = timeout(WAIT, rx.recv()).await;
        assert!(
            matches!(&got, Ok(Some(i)) if i.bytes == packet.as_bytes()),
            "round {round}: {got:?}"
        );
        b.cluster.stop().await;
    }
}
