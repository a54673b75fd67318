//! Requests in progress per token sender, bounded: one account holding many grants cannot
//! take many connection slots at once, even with every transfer above the minimum rate
//! (attack H1). Uploads and downloads are counted apart (a downloader's token names the
//! file's sender, not the downloader): the sender's own uploads, and the downloads of its files.
//! A real client runs a handful at once; over the bound the relay answers `429` (retried).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use msim_shared::token::{Capability, Direction};

type Counts = Arc<Mutex<HashMap<(String, Direction), usize>>>;

/// Requests in progress, by sender and direction.
#[derive(Default)]
pub struct SenderRequests {
    counts: Counts,
}

/// One counted request; uncounted when dropped.
pub struct SenderRequest {
    key: (String, Direction),
    counts: Counts,
}

impl SenderRequests {
    /// Count a request with `cap`; `None` when `max` of its sender and direction are already
    /// in progress (`max == 0`: no bound).
    pub fn admit(&self, cap: &Capability, max: usize) -> Option<SenderRequest> {
        let key = (cap.sender.clone(), cap.direction);
        let mut map = lock(&self.counts);
        // Only an admitted request creates an entry, so a refusal leaves the map unchanged.
        if max > 0 && map.get(&key).is_some_and(|n| *n >= max) {
            return None;
        }
        *map.entry(key.clone()).or_insert(0) += 1;
        Some(SenderRequest {
            key,
            counts: self.counts.clone(),
        })
    }
}

impl Drop for SenderRequest {
    fn drop(&mut self) {
        let mut map = lock(&self.counts);
        if let Some(n) = map.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.key);
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cap(sender: &str, direction: Direction) -> Capability {
        Capability {
            transfer_id: "t".into(),
            direction,
            size: 1,
            sha256: None,
            sender: sender.into(),
            max_downloads: None,
            expires: 0,
        }
    }

    #[test]
    fn bounded_per_sender_and_direction_and_released() {
        let r = SenderRequests::default();
        let up = cap("mallory@x", Direction::Upload);
        let a = r.admit(&up, 2).expect("first");
        let _b = r.admit(&up, 2).expect("second");
        assert!(
            r.admit(&up, 2).is_none(),
            "third upload of one sender refused"
        );
        let _down = r
            .admit(&cap("mallory@x", Direction::Download), 2)
            .expect("downloads are counted apart");
        let _other = r
            .admit(&cap("alice@x", Direction::Upload), 2)
            .expect("another sender unaffected");
        drop(a);
        assert!(
            r.admit(&up, 2).is_some(),
            "a finished request frees its place"
        );
        assert!(r.admit(&up, 0).is_some(), "0: no bound");
    }
}
