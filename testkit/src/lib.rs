//! Test support for the mSIM workspace: [`System`] (a chat server with n relays, or with its
//! embedded relay, TLS or not, in-process on free 127.0.0.1 ports), [`SelfSigned`]
//! certificates, deterministic [`test_data`] and [`sha256_hex`], and throwaway PostgreSQL
//! clusters ([`postgres`]); [`ThreadedSystem`] runs a system on a runtime of its own for
//! blocking tests, [`ServerProcess`] runs a server binary.

pub mod postgres;
mod process;
pub mod settings;
mod system;
mod threaded;

pub use process::{addr_in, ServerProcess, LOG_WAIT};
pub use system::{System, SystemBuilder};
pub use threaded::ThreadedSystem;

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// The password tests give their users.
pub const PASSWORD: &str = "correct horse battery";

/// Lower-case hex SHA-256 of `data`, as the protocol writes it.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Lower-case hex SHA-256 of the file at `path`.
pub fn sha256_file_hex(path: &Path) -> std::io::Result<String> {
    Ok(sha256_hex(&std::fs::read(path)?))
}

/// `len` pseudo-random bytes (xorshift), a different sequence for each `seed`: data no
/// compression or deduplication helps with.
pub fn pseudo_random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// `len` bytes of a fixed, non-repeating-looking pattern (no run of equal bytes), so that a
/// byte moved to a wrong offset shows.
pub fn test_data(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i.wrapping_mul(31) % 251) as u8).collect()
}

/// A self-signed certificate for `localhost` and `127.0.0.1`, written as PEM files.
#[derive(Debug, Clone)]
pub struct SelfSigned {
    /// Certificate chain file (the one certificate).
    pub cert: PathBuf,
    /// Private key file.
    pub key: PathBuf,
}

impl SelfSigned {
    /// Makes a new certificate and key as `cert.pem` and `key.pem` in `dir`.
    pub fn write_to(dir: &Path) -> anyhow::Result<SelfSigned> {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])?;
        let cert = dir.join("cert.pem");
        let key = dir.join("key.pem");
        std::fs::write(&cert, ck.cert.pem())?;
        std::fs::write(&key, ck.signing_key.serialize_pem())?;
        Ok(SelfSigned { cert, key })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_of_the_empty_input() {
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn test_data_has_no_equal_neighbours() {
        let d = test_data(10_000);
        assert!(d.windows(2).all(|w| w[0] != w[1]));
    }
}
