//! Requests in progress per token sender, bounded: one account holding many grants cannot
//! take many connection slots at once, even with every transfer above the minimum rate
//! (attack H1). Uploads and downloads are counted apart: the sender's own uploads, and the
//! downloads of its files per downloading address (IPv6 by its /64). A download token names
//! the file's sender, not the downloader, so counting downloads by sender alone let one
//! recipient of a few of a sender's files hold every place and lock the sender's other
//! recipients out (attack 4, M1). Counted per address alone, though, one account with a
//! prefix of IPv6 addresses (a /48 holds 65,536 /64s) had no bound at all: the downloads of
//! a sender's files over all addresses are bounded too, at [`DOWNLOAD_SPREAD`] times the
//! bound (attack 5), far above what a sender's open offers (16 per account at msim-chat)
//! can give honest recipients. A real client runs a handful at once; over the bound the
//! relay answers `429` (retried).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use msim_shared::token::{Capability, Direction};

/// The downloads of one sender's files over all addresses may be this many times the bound
/// of one address.
pub const DOWNLOAD_SPREAD: usize = 8;

/// Sender, direction and, for a download per address, the downloader's address (`None`:
/// the sender's uploads, or the downloads of its files over all addresses).
type Key = (String, Direction, Option<IpAddr>);

type Counts = Arc<Mutex<HashMap<Key, usize>>>;

/// Requests in progress, by sender and direction.
#[derive(Default)]
pub struct SenderRequests {
    counts: Counts,
}

/// One counted request; uncounted when dropped.
pub struct SenderRequest {
    keys: Vec<Key>,
    counts: Counts,
}

impl SenderRequests {
    /// Count a request with `cap` from the address `from` (already reduced to what the
    /// per-address cap counts); `None` when `max` uploads of its sender, or `max` downloads
    /// of the sender's files from that address or `max` × [`DOWNLOAD_SPREAD`] from all
    /// addresses, are already in progress (`max == 0`: no bound).
    pub fn admit(
        &self,
        cap: &Capability,
        from: Option<IpAddr>,
        max: usize,
    ) -> Option<SenderRequest> {
        let all = (cap.sender.clone(), cap.direction, None);
        let keys = match (cap.direction, from) {
            (Direction::Download, Some(from)) => vec![
                (all, max.saturating_mul(DOWNLOAD_SPREAD)),
                ((cap.sender.clone(), cap.direction, Some(from)), max),
            ],
            _ => vec![(all, max)],
        };
        let mut map = lock(&self.counts);
        // Only an admitted request creates entries, so a refusal leaves the map unchanged.
        let full =
            |(key, bound): &(Key, usize)| max > 0 && map.get(key).is_some_and(|n| *n >= *bound);
        if keys.iter().any(full) {
            return None;
        }
        let keys: Vec<Key> = keys.into_iter().map(|(key, _)| key).collect();
        for key in &keys {
            *map.entry(key.clone()).or_insert(0) += 1;
        }
        Some(SenderRequest {
            keys,
            counts: self.counts.clone(),
        })
    }
}

impl Drop for SenderRequest {
    fn drop(&mut self) {
        let mut map = lock(&self.counts);
        for key in &self.keys {
            if let Some(n) = map.get_mut(key) {
                *n -= 1;
                if *n == 0 {
                    map.remove(key);
                }
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

    #[test]
    fn downloads_of_one_senders_files_are_bounded_over_all_addresses_too() {
        let r = SenderRequests::default();
        let down = cap("mallory@x", Direction::Download);
        let addr = |i: u16| Some(IpAddr::from([0x2001, 0xdb8, 7, i, 0, 0, 0, 1]));
        let held: Vec<_> = (0..DOWNLOAD_SPREAD as u16)
            .flat_map(|i| [addr(i), addr(i)])
            .map(|from| r.admit(&down, from, 2).expect("within both bounds"))
            .collect();
        assert!(
            r.admit(&down, addr(100), 2).is_none(),
            "a fresh /64 of the same prefix gets no more of mallory's files"
        );
        assert!(
            r.admit(&cap("alice@x", Direction::Download), addr(100), 2)
                .is_some(),
            "another sender's files are unaffected"
        );
        drop(held);
        assert!(lock(&r.counts).is_empty(), "no entry left behind");
    }
}
