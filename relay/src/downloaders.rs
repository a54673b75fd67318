//! Downloads in progress per transfer, bounded: one token cannot open the relay's connection
//! slots by the hundred on one transfer (PROTOCOL.md §11). A recipient's few devices and
//! their retries stay far below the bound.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

type Counts = Arc<Mutex<HashMap<String, usize>>>;

/// Downloads in progress, by transfer id.
#[derive(Default)]
pub struct Downloaders {
    by_id: Counts,
}

/// One counted download; uncounted when dropped (when its response has been sent or dropped).
pub struct Downloading {
    id: String,
    by_id: Counts,
}

impl Downloaders {
    /// Count a download of `id`; `None` when `cap` are already in progress (0: no bound).
    pub fn admit(&self, id: &str, cap: usize) -> Option<Downloading> {
        let mut map = lock(&self.by_id);
        let n = map.entry(id.to_owned()).or_insert(0);
        if cap > 0 && *n >= cap {
            if *n == 0 {
                map.remove(id);
            }
            return None;
        }
        *n += 1;
        Some(Downloading {
            id: id.to_owned(),
            by_id: self.by_id.clone(),
        })
    }
}

impl Drop for Downloading {
    fn drop(&mut self) {
        let mut map = lock(&self.by_id);
        if let Some(n) = map.get_mut(&self.id) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.id);
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

    #[test]
    fn bounded_per_transfer_and_released() {
        let d = Downloaders::default();
        let a1 = d.admit("a", 2).expect("first");
        let _a2 = d.admit("a", 2).expect("second");
        assert!(d.admit("a", 2).is_none(), "third of one transfer refused");
        let b = d.admit("b", 2).expect("another transfer unaffected");
        drop(a1);
        assert!(
            d.admit("a", 2).is_some(),
            "a finished download frees its place"
        );
        drop(b);
        assert!(!lock(&d.by_id).contains_key("b"), "no entry left behind");
    }
}
