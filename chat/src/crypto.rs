//! Password sealing, login salts and the challenge hash.
//!
//! Passwords are stored sealed with ChaCha20-Poly1305 under a key kept in
//! `<data-dir>/secret.key` (mode 0600). The server must be able to recover the password because
//! the login challenge is `SHA-256(salt ‖ password)`; see SECURITY.md for the trade-off.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use rand::Rng;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use subtle::ConstantTimeEq;

/// Errors of the sealing layer.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// Reading or creating the key file failed.
    #[error("secret key file {path}: {source}")]
    KeyFile {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The key file does not hold 32 bytes (64 hex digits).
    #[error("secret key file {0} is not 64 hex digits")]
    BadKey(String),
    /// A sealed value could not be opened (corrupt data or wrong key).
    #[error("sealed value cannot be opened")]
    Open,
}

/// Fills a buffer from the OS-seeded thread RNG.
pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    rand::rng().fill_bytes(&mut b);
    b
}

/// Lowercase hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    hex::decode(s).ok()
}

/// Reads the 32-byte hex secret at `path`; `None` when the file does not exist.
/// A key file readable by others (copied to a node with `cp` under a loose umask) is
/// tightened to 0600 first.
pub(crate) fn read_secret(path: &Path) -> Result<Option<[u8; 32]>, CryptoError> {
    match std::fs::read_to_string(path) {
        Ok(s) => {
            tighten(path).map_err(|source| CryptoError::KeyFile {
                path: path.display().to_string(),
                source,
            })?;
            let bad = || CryptoError::BadKey(path.display().to_string());
            let bytes = unhex(s.trim()).ok_or_else(bad)?;
            bytes.try_into().map(Some).map_err(|_| bad())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CryptoError::KeyFile {
            path: path.display().to_string(),
            source,
        }),
    }
}

/// Sets a key file that others may read or write to mode 0600, and says so.
fn tighten(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
            tracing::warn!(path = %path.display(), mode = format!("{mode:o}"), "key file was readable by others; set to 0600");
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// Creates a new random secret at `path` (mode 0600, synced); fails if the file exists.
pub(crate) fn create_secret(path: &Path) -> Result<[u8; 32], CryptoError> {
    let err = |source| CryptoError::KeyFile {
        path: path.display().to_string(),
        source,
    };
    let key = random_bytes::<32>();
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(err)?;
    f.write_all(format!("{}\n", hex(&key)).as_bytes())
        .map_err(err)?;
    f.sync_all().map_err(err)?;
    Ok(key)
}

/// Seals and opens passwords.
pub(crate) struct Sealer {
    cipher: ChaCha20Poly1305,
    /// A public name of the key (HMAC of a constant under it): stored in the database so a
    /// node with another key is refused even before any password is stored.
    fingerprint: String,
    /// A sealed random password used for unknown logins so both paths do the same work.
    dummy: Vec<u8>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(..)")
    }
}

impl Sealer {
    /// A sealer with the given key.
    pub(crate) fn new(key: [u8; 32]) -> Sealer {
        use hmac::{Hmac, Mac};
        let cipher = ChaCha20Poly1305::new(&Key::from(key));
        let mut mac = <Hmac<sha2::Sha256>>::new_from_slice(&key).expect("HMAC takes any key");
        mac.update(b"msim-chat secret.key fingerprint v1");
        let fingerprint = hex(&mac.finalize().into_bytes()[..16]);
        let mut s = Sealer {
            cipher,
            fingerprint,
            dummy: Vec::new(),
        };
        let pw = hex(&random_bytes::<8>());
        s.dummy = s.seal("", &pw);
        s
    }

    /// The key's fingerprint (32 hex digits; reveals nothing about the key).
    pub(crate) fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Seals `password`, bound to `login` (as associated data): nonce ‖ ciphertext.
    pub(crate) fn seal(&self, login: &str, password: &str) -> Vec<u8> {
        let nonce_bytes = random_bytes::<12>();
        let nonce = Nonce::from(nonce_bytes);
        let ct = self
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: password.as_bytes(),
                    aad: login.as_bytes(),
                },
            )
            .unwrap_or_default();
        let mut out = Vec::with_capacity(12 + ct.len());
        out.extend_from_slice(&nonce_bytes);
        out.extend_from_slice(&ct);
        out
    }

    /// Opens a sealed password.
    pub(crate) fn open(&self, login: &str, sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if sealed.len() < 12 {
            return Err(CryptoError::Open);
        }
        let (n, ct) = sealed.split_at(12);
        let nonce_bytes: [u8; 12] = n.try_into().map_err(|_| CryptoError::Open)?;
        self.cipher
            .decrypt(
                &Nonce::from(nonce_bytes),
                Payload {
                    msg: ct,
                    aad: login.as_bytes(),
                },
            )
            .map_err(|_| CryptoError::Open)
    }

    /// Checks a login challenge answer. `sealed` is `None` for an unknown login: the same work
    /// is done on a dummy sealed password and the answer is always false.
    pub(crate) fn verify(
        &self,
        login: &str,
        sealed: Option<&[u8]>,
        salt: &str,
        hash_hex: &str,
    ) -> bool {
        let (aad, blob, known) = match sealed {
            Some(b) => (login, b, true),
            None => ("", self.dummy.as_slice(), false),
        };
        // Fail closed: a stored password that cannot be opened (wrong or replaced key, a
        // corrupt row, an account locked by `reset-secret-key`) never matches. The hash is
        // still computed, on a fresh random value, so this path takes as long as the others.
        let (password, opened) = match self.open(aad, blob) {
            Ok(p) => (p, true),
            Err(_) => (hex::encode(random_bytes::<16>()).into_bytes(), false),
        };
        let expected = challenge_hash(salt, &password);
        let given = hash_hex.as_bytes();
        let eq: bool = if given.len() == expected.len() {
            expected.as_bytes().ct_eq(given).into()
        } else {
            // Still compare something of the same length to keep timing flat.
            let _ = expected.as_bytes().ct_eq(expected.as_bytes());
            false
        };
        eq && known && opened
    }
}

/// `lowercase hex(SHA-256(salt ‖ password))`, computed by the shared implementation the
/// client uses. Passwords are UTF-8 (they arrive as protocol text).
pub fn challenge_hash(salt: &str, password: &[u8]) -> String {
    msim_shared::proto::challenge_hash(salt, std::str::from_utf8(password).unwrap_or(""))
}

/// Generates login salts: `<32 hex random>-<decimal counter>`; the counter starts at the boot
/// time in microseconds so it keeps increasing across restarts.
#[derive(Debug)]
pub(crate) struct SaltGen {
    counter: AtomicU64,
}

impl SaltGen {
    /// A generator whose counter starts at `start`.
    pub(crate) fn new(start: u64) -> SaltGen {
        SaltGen {
            counter: AtomicU64::new(start),
        }
    }

    /// A fresh salt.
    pub(crate) fn next(&self) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        format!("{}-{}", hex(&random_bytes::<16>()), n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_roundtrip_and_verify() {
        let s = Sealer::new(random_bytes());
        let sealed = s.seal("alice", "password1");
        assert_eq!(s.open("alice", &sealed).ok(), Some(b"password1".to_vec()));
        assert!(s.open("bob", &sealed).is_err());
        let salt = SaltGen::new(5).next();
        let h = challenge_hash(&salt, b"password1");
        assert!(s.verify("alice", Some(&sealed), &salt, &h));
        assert!(!s.verify("alice", Some(&sealed), &salt, "00"));
        assert!(!s.verify("alice", None, &salt, &h));
    }

    #[test]
    fn unopenable_password_never_matches() {
        // The critical defect: an unopenable sealed value was taken as the empty password.
        let old = Sealer::new(random_bytes());
        let sealed = old.seal("alice", "password1");
        let new = Sealer::new(random_bytes());
        let salt = SaltGen::new(5).next();
        for stored in [&sealed[..], &[], &[0u8; 40][..]] {
            for answer in [
                challenge_hash(&salt, b""),
                challenge_hash(&salt, b"password1"),
            ] {
                assert!(!new.verify("alice", Some(stored), &salt, &answer));
            }
        }
    }

    #[test]
    fn salts_increase() {
        let g = SaltGen::new(7);
        let a = g.next();
        let b = g.next();
        assert!(a.ends_with("-7") && b.ends_with("-8"));
        assert_eq!(a.split('-').next().map(str::len), Some(32));
    }
}
