//! What msim-load uploads, and the check of what it downloads: every file is a slice of one
//! pseudo-random pattern whose length is not a multiple of the relay's or the client's chunk
//! sizes, so a lost, repeated, reordered or altered piece shows up at its position. Downloads
//! are compared byte for byte (cheaper than hashing them, so the CPU figures stay those of
//! relaying) and their `Msim-Sha256` must be the SHA-256 of the generated file; the upload
//! tokens declare that SHA-256, so the relay verifies every upload too.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use anyhow::{bail, Result};
use bytes::Bytes;
use sha2::{Digest, Sha256};

/// Length of the repeating pattern: 1 MiB + 13 bytes.
const PERIOD: usize = (1 << 20) + 13;

/// The pattern twice over, so that any piece of up to `PERIOD` bytes is one slice of it.
fn doubled() -> &'static Bytes {
    static PATTERN: OnceLock<Bytes> = OnceLock::new();
    PATTERN.get_or_init(|| {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let one: Vec<u8> = (0..PERIOD)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect();
        Bytes::from([one.clone(), one].concat())
    })
}

/// The generated file's bytes `pos..pos + n` (`n` at most 1 MiB), without copying.
pub fn piece(pos: u64, n: usize) -> Bytes {
    debug_assert!(n <= PERIOD);
    let off = (pos % PERIOD as u64) as usize;
    doubled().slice(off..off + n)
}

/// Lowercase hex SHA-256 of the generated file of `size` bytes (computed once per size).
pub fn sha256(size: u64) -> String {
    static DONE: OnceLock<Mutex<HashMap<u64, String>>> = OnceLock::new();
    let done = DONE.get_or_init(Default::default);
    let mut done = done.lock().unwrap_or_else(|e| e.into_inner());
    done.entry(size)
        .or_insert_with(|| {
            let mut h = Sha256::new();
            let mut pos = 0;
            while pos < size {
                let n = (size - pos).min(1 << 20) as usize;
                h.update(piece(pos, n));
                pos += n as u64;
            }
            h.finalize().iter().map(|b| format!("{b:02x}")).collect()
        })
        .clone()
}

/// Fails unless `data`, received at offset `pos` of a download, is what was generated there.
pub fn check(id: &str, pos: u64, data: &[u8]) -> Result<()> {
    let mut at = 0;
    while at < data.len() {
        let n = (data.len() - at).min(1 << 20);
        let want = piece(pos + at as u64, n);
        if data[at..at + n] != want[..] {
            let k = data[at..at + n]
                .iter()
                .zip(want.iter())
                .position(|(a, b)| a != b)
                .unwrap_or(0);
            bail!(
                "download {id}: byte {} differs from what was uploaded",
                pos + (at + k) as u64
            );
        }
        at += n;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_follow_the_pattern_and_changes_are_found() {
        let size = 3 * PERIOD as u64 + 5;
        let whole: Vec<u8> = (0..size)
            .step_by(1000)
            .flat_map(|p| piece(p, (size - p).min(1000) as usize).to_vec())
            .collect();
        assert_eq!(whole.len() as u64, size);
        let hex: String = Sha256::digest(&whole)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(sha256(size), hex);
        check("t", 0, &whole).unwrap();
        check("t", 777, &whole[777..]).unwrap();
        let mut bad = whole.clone();
        bad[PERIOD + 3] ^= 1;
        let e = check("t", 0, &bad).unwrap_err().to_string();
        assert!(e.contains(&format!("byte {}", PERIOD + 3)), "{e}");
        // A piece shifted by one chunk of the relay is not the same bytes.
        assert!(check("t", 0, &whole[256 << 10..]).is_err());
    }
}
