//! Requests in progress per token sender, bounded: one account holding many grants cannot
//! take many connection slots at once, even with every transfer above the minimum rate
//! (attack H1). Uploads and downloads are counted apart: the sender's own uploads, and the
//! downloads of its files per downloading address (IPv6 by its /64). A download token names
//! the file's sender, not the downloader, so counting downloads by sender alone let one
//! recipient of a few of a sender's files hold every place and lock the sender's other
//! recipients out (attack 4, M1). A real client runs a handful at once; over the bound the
//! relay answers `429` (retried).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use msim_shared::token::{Capability, Direction};

/// Sender, direction and, for a download, the downloader's address.
type Key = (String, Direction, Option<IpAddr>);

type Counts = Arc<Mutex<HashMap<Key, usize>>>;

/// Requests in progress, by sender and direction.
#[derive(Default)]
pub struct SenderRequests {
    counts: Counts,
}

/// One counted request; uncounted when dropped.
pub struct SenderRequest {
    key: Key,
    counts: Counts,
}

impl SenderRequests {
    /// Count a request with `cap` from the address `from` (already reduced to what the
    /// per-address cap counts); `None` when `max` of its sender and direction (and, for a
    /// download, that address) are already in progress (`max == 0`: no bound).
    pub fn admit(
        &self,
        cap: &Capability,
        from: Option<IpAddr>,
        max: usize,
    ) -> Option<SenderRequest> {
        let from = match cap.direction {
            Direction::Download => from,
            Direction::Upload => None,
        };
        let key = (cap.sender.clone(), cap.direction, from);
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
        let a = r.admit(&up, None, 2).expect("first");
        let _b = r.admit(&up, None, 2).expect("second");
        assert!(
            r.admit(&up, None, 2).is_none(),
            "third upload of one sender refused"
        );
        let _down = r
            .admit(&cap("mallory@x", Direction::Download), None, 2)
            .expect("downloads are counted apart");
        let _other = r
            .admit(&cap("alice@x", Direction::Upload), None, 2)
            .expect("another sender unaffected");
        drop(a);
        assert!(
            r.admit(&up, None, 2).is_some(),
            "a finished request frees its place"
        );
        assert!(r.admit(&up, None, 0).is_some(), "0: no bound");
    }

    #[test]
    fn downloads_of_one_senders_files_are_counted_per_downloading_address() {
        let r = SenderRequests::default();
        let down = cap("alice@x", Direction::Download);
        let mallory = Some(IpAddr::from([10, 0, 0, 66]));
        let bob = Some(IpAddr::from([10, 0, 0, 2]));
        let _held: Vec<_> = (0..2)
            .map(|_| r.admit(&down, mallory, 2).expect("within the bound"))
            .collect();
        assert!(r.admit(&down, mallory, 2).is_none(), "mallory's third");
        assert!(
            r.admit(&down, bob, 2).is_some(),
            "another recipient of alice's files is not locked out"
        );
        let up = cap("alice@x", Direction::Upload);
        let _a = r.admit(&up, mallory, 2).expect("first upload");
        let _b = r.admit(&up, bob, 2).expect("second upload");
        assert!(
            r.admit(&up, Some(IpAddr::from([10, 0, 0, 3])), 2).is_none(),
            "uploads are counted per sender whatever the address"
        );
    }
}
