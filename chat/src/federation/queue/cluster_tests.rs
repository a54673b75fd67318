//! The queue's bounds with two nodes (two `Db`s, two writers) on one PostgreSQL database.

use super::*;

fn add(peer: &str, sender: &str, n: usize) -> QueueWrite {
    QueueWrite::Add {
        peer: peer.into(),
        line: format!("S2S-MESSAGE id={sender}{n}"),
        sender: sender.into(),
        message_id: format!("{sender}{n}"),
        recipient: format!("zed@{peer}"),
        at: 1,
        expires_at: i64::MAX,
        merge_key: String::new(),
    }
}

/// Each node's writer admits against the table, not its own counts: the per-peer, per-sender
/// and peers bounds hold for both nodes together (with per-node counts, each would admit up
/// to the bound).
#[tokio::test]
async fn bounds_hold_across_nodes() {
    let Some(url) = tokio::task::spawn_blocking(|| {
        msim_testkit::postgres::database("federation queue: bounds across nodes")
    })
    .await
    .expect("cluster thread") else {
        return;
    };
    let a = Db::open_postgres(&url).await.expect("node a");
    let b = Db::open_postgres(&url).await.expect("node b");
    let limits = Limits {
        per_peer: 4,
        per_sender: 3,
        peers_per_sender: 0,
        peers: 2,
    };
    let wa = QueueWriter::start(a, limits).await.expect("writer a");
    let wb = QueueWriter::start(b, limits).await.expect("writer b");
    // Per sender: alice's items on both nodes together.
    for i in 0..2 {
        wa.write(add("r.test", "alice", i))
            .await
            .expect("alice on a");
    }
    wb.write(add("r.test", "alice", 2))
        .await
        .expect("alice on b");
    assert!(matches!(
        wb.write(add("r.test", "alice", 3)).await,
        Err(QueueError::SenderFull)
    ));
    assert!(matches!(
        wa.write(add("r.test", "alice", 4)).await,
        Err(QueueError::SenderFull)
    ));
    // Per peer: 3 queued, one more fits, then neither node admits.
    wb.write(add("r.test", "bob", 0)).await.expect("bob on b");
    assert!(matches!(
        wa.write(add("r.test", "carol", 0)).await,
        Err(QueueError::Full)
    ));
    assert!(matches!(
        wb.write(add("r.test", "carol", 1)).await,
        Err(QueueError::Full)
    ));
    // Peers: a second peer fits, a third does not, on either node.
    wa.write(add("s.test", "carol", 2))
        .await
        .expect("second peer");
    assert!(matches!(
        wb.write(add("t.test", "carol", 3)).await,
        Err(QueueError::TooManyPeers)
    ));
    // Concurrent adds from both nodes for one new peer's last places: exactly the bound.
    let (ra, rb) = tokio::join!(
        async {
            let mut ok = 0;
            for i in 0..4 {
                ok += wa.write(add("s.test", "dave", i)).await.is_ok() as usize;
            }
            ok
        },
        async {
            let mut ok = 0;
            for i in 0..4 {
                ok += wb.write(add("s.test", "erin", i)).await.is_ok() as usize;
            }
            ok
        }
    );
    assert_eq!(ra + rb, 3, "s.test had 1 item, its bound is 4");
}

fn merge(peer: &str, sender: &str, key: &str) -> QueueWrite {
    QueueWrite::Add {
        peer: peer.into(),
        line: format!("S2S-PRESENCE key={key} sender={sender}"),
        sender: sender.into(),
        message_id: String::new(),
        recipient: String::new(),
        at: 1,
        expires_at: i64::MAX,
        merge_key: key.into(),
    }
}

/// On PostgreSQL the bounds are counted after a merge's older item is deleted (it goes), but
/// when the newer one is refused the deletion is rolled back: before, the peer got neither.
#[tokio::test]
async fn a_refused_merge_deletes_nothing() {
    let Some(url) = tokio::task::spawn_blocking(|| {
        msim_testkit::postgres::database("federation queue: a refused merge")
    })
    .await
    .expect("cluster thread") else {
        return;
    };
    let db = Db::open_postgres(&url).await.expect("node");
    let limits = Limits {
        per_peer: 0,
        per_sender: 1,
        peers_per_sender: 0,
        peers: 0,
    };
    let w = QueueWriter::start(db.clone(), limits)
        .await
        .expect("writer");
    w.write(merge("r.test", "s2s:r.test", "p:bob:w0"))
        .await
        .expect("first");
    // A newer item of the same budget replaces it although the budget is full.
    assert!(matches!(
        w.write(merge("r.test", "s2s:r.test", "p:bob:w0")).await,
        Ok(QueueDone::Replaced(items)) if items.len() == 1
    ));
    // Another budget, full: refused, and the older item stays.
    w.write(add("q.test", "alice", 0)).await.expect("alice");
    assert!(matches!(
        w.write(merge("r.test", "alice", "p:bob:w0")).await,
        Err(QueueError::SenderFull)
    ));
    let counts = db.federation_counts_by_sender().await.expect("counts");
    assert!(
        counts
            .iter()
            .any(|(p, s, n)| (p.as_str(), s.as_str(), *n) == ("r.test", "s2s:r.test", 1)),
        "{counts:?}"
    );
}
