//! Which node drains the outbound queue when several nodes share one PostgreSQL database
//! (`fed_queue` is one table for all of them). Only the cluster leader (the holder of the
//! leader lock, `cluster::leader`) reads the queue and sends its items; every node still
//! accepts inbound links, enqueues for its local users and opens links for live requests
//! (typing, profile lookups). Every heartbeat the leader wakes the dialer of each peer with
//! queued items, so items queued on other nodes go out within a heartbeat, and a new leader
//! (after the old one died or was cut off) takes the queue over within the leader lock's
//! hand-over time. Items the old leader had in flight are sent again: receivers dedupe by
//! message id (PROTOCOL.md §12.6), as after any broken link. On SQLite (one node) the node
//! always drains.

use crate::server::Shared;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// Whether this node may read and send the outbound queue now.
pub(crate) fn may_drain(sh: &Shared) -> bool {
    sh.cluster.as_ref().is_none_or(|c| c.is_leader())
}

/// On a cluster node: every `heartbeat`, while this node leads, wakes the dialer of every
/// peer with queued items (queued here or on any other node).
pub(crate) async fn leader_loop(
    sh: Arc<Shared>,
    heartbeat: std::time::Duration,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if !may_drain(&sh) {
            continue;
        }
        let Some(fed) = &sh.federation else {
            return;
        };
        match sh.db.federation_peers().await {
            Ok(peers) => {
                for p in peers {
                    fed.wake(&p);
                }
            }
            Err(e) => warn!("federation queue: {e}"),
        }
    }
}
