//! Capability tokens for relay transfers.
//!
//! msim-chat issues one token per side of a transfer (upload for the sender, download for the
//! recipient); relays verify them offline with an HMAC-SHA256 key shared with the chat server.
//!
//! Token text: `v1.<kid>.<payload>.<mac>` where `<payload>` and `<mac>` are base64url without
//! padding, `<kid>` names the key (so keys can rotate) and
//! `mac = HMAC-SHA256(secret[kid], "v1.<kid>.<payload>")` (the ASCII text before the last dot).
//!
//! The decoded payload is UTF-8, seven `key=value` lines joined by `\n`, in this exact order and
//! with no trailing newline:
//!
//! ```text
//! tid=<transfer id, [A-Za-z0-9-]{1,64}>
//! dir=<up|down>
//! size=<decimal u64>
//! sha256=<64 lowercase hex digits, or empty>
//! sender=<sender address, percent-encoded>
//! max-downloads=<decimal u32, or empty>
//! exp=<unix seconds, decimal u64>
//! ```
//!
//! PROTOCOL.md ("Relay HTTP API") is the normative description.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Token format version prefix.
pub const TOKEN_VERSION: &str = "v1";
/// Minimum secret length accepted by [`Keyring::from_secret_text`].
pub const MIN_SECRET_LEN: usize = 32;
/// Longest token text [`Keyring::verify`] looks at.
pub const MAX_TOKEN_LEN: usize = 4096;

/// Bytes of the sender address left unencoded in the payload.
const SENDER_SET: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'@')
    .remove(b'.')
    .remove(b'-')
    .remove(b'_');

/// Which side of a transfer a token authorises.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// The sender uploads the file to the relay.
    Upload,
    /// The recipient downloads the file from the relay.
    Download,
}

impl Direction {
    /// The payload spelling: `up` or `down`.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Upload => "up",
            Direction::Download => "down",
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Upload => "upload",
            Direction::Download => "download",
        })
    }
}

/// What a token allows: one direction of one transfer, until `expires`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Capability {
    /// Transfer id, `[A-Za-z0-9-]{1,64}`.
    pub transfer_id: String,
    /// Upload or download.
    pub direction: Direction,
    /// Declared file size in bytes.
    pub size: u64,
    /// Lowercase hex SHA-256 of the file, when the sender declared it.
    pub sha256: Option<String>,
    /// Sender address (`login@domain`), used for the relay's per-sender quota.
    pub sender: String,
    /// Download limit (`Some(1)` = one-shot); `None` = unlimited until expiry.
    pub max_downloads: Option<u32>,
    /// Token expiry, unix seconds.
    pub expires: u64,
}

/// One HMAC key with its id.
#[derive(Clone)]
pub struct TokenKey {
    /// Key id, `[A-Za-z0-9_-]{1,32}`; written into every token signed with this key.
    pub id: String,
    /// Secret bytes.
    pub secret: Vec<u8>,
}

impl fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the secret.
        f.debug_struct("TokenKey")
            .field("id", &self.id)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// Why a token or a secret was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The token text is not `v1.<kid>.<payload>.<mac>` or its payload does not parse.
    #[error("malformed token")]
    Malformed,
    /// The token names a key this keyring does not have.
    #[error("token signed with an unknown key")]
    UnknownKey,
    /// The MAC does not match: forged or tampered token.
    #[error("bad token signature")]
    BadSignature,
    /// The token's expiry has passed.
    #[error("token expired")]
    Expired,
    /// The secret text is unusable (line number and reason).
    #[error("invalid secret: {0}")]
    InvalidSecret(String),
}

/// A set of keys: the first signs, all verify (for key rotation).
#[derive(Clone)]
pub struct Keyring {
    keys: Vec<TokenKey>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("keys", &self.keys.iter().map(|k| &k.id).collect::<Vec<_>>())
            .finish()
    }
}

/// `true` when `id` is a valid transfer id (`[A-Za-z0-9-]{1,64}`).
pub fn valid_transfer_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// `true` when `kid` is a valid key id (`[A-Za-z0-9_-]{1,32}`).
pub fn valid_key_id(kid: &str) -> bool {
    !kid.is_empty()
        && kid.len() <= 32
        && kid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn valid_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl Capability {
    /// The canonical payload text (before base64url).
    pub fn payload(&self) -> String {
        let sender = utf8_percent_encode(&self.sender, SENDER_SET);
        format!(
            "tid={}\ndir={}\nsize={}\nsha256={}\nsender={}\nmax-downloads={}\nexp={}",
            self.transfer_id,
            self.direction.as_str(),
            self.size,
            self.sha256.as_deref().unwrap_or(""),
            sender,
            self.max_downloads
                .map(|n| n.to_string())
                .unwrap_or_default(),
            self.expires
        )
    }

    /// Parse a canonical payload; strict (field order, syntax).
    pub fn parse_payload(text: &str) -> Result<Capability, TokenError> {
        let mut lines = text.split('\n');
        let mut field = |key: &str| -> Result<&str, TokenError> {
            let line = lines.next().ok_or(TokenError::Malformed)?;
            let (k, v) = line.split_once('=').ok_or(TokenError::Malformed)?;
            if k != key {
                return Err(TokenError::Malformed);
            }
            Ok(v)
        };
        let tid = field("tid")?;
        let dir = field("dir")?;
        let size = field("size")?;
        let sha = field("sha256")?;
        let sender = field("sender")?;
        let maxdl = field("max-downloads")?;
        let exp = field("exp")?;
        if lines.next().is_some() {
            return Err(TokenError::Malformed);
        }
        if !valid_transfer_id(tid) {
            return Err(TokenError::Malformed);
        }
        let direction = match dir {
            "up" => Direction::Upload,
            "down" => Direction::Download,
            _ => return Err(TokenError::Malformed),
        };
        let sha256 = match sha {
            "" => None,
            s if valid_sha256(s) => Some(s.to_owned()),
            _ => return Err(TokenError::Malformed),
        };
        let sender = percent_decode_str(sender)
            .decode_utf8()
            .map_err(|_| TokenError::Malformed)?
            .into_owned();
        let max_downloads = match maxdl {
            "" => None,
            s => Some(parse_dec::<u32>(s)?),
        };
        Ok(Capability {
            transfer_id: tid.to_owned(),
            direction,
            size: parse_dec(size)?,
            sha256,
            sender,
            max_downloads,
            expires: parse_dec(exp)?,
        })
    }
}

fn parse_dec<T: std::str::FromStr>(s: &str) -> Result<T, TokenError> {
    // Canonical decimal only: no sign, no leading zeros (except "0").
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0'))
    {
        return Err(TokenError::Malformed);
    }
    s.parse().map_err(|_| TokenError::Malformed)
}

fn mac_for(secret: &[u8], signed: &str) -> HmacSha256 {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = match HmacSha256::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC takes keys of any length"),
    };
    mac.update(signed.as_bytes());
    mac
}

impl Keyring {
    /// A keyring from keys; the first one signs.
    ///
    /// # Panics
    /// If `keys` is empty (use [`Keyring::try_new`] to get an error instead).
    pub fn new(keys: Vec<TokenKey>) -> Keyring {
        match Keyring::try_new(keys) {
            Ok(k) => k,
            Err(e) => panic!("Keyring::new: {e}"),
        }
    }

    /// A keyring from keys; the first one signs. Refuses an empty list, invalid or duplicate
    /// key ids.
    pub fn try_new(keys: Vec<TokenKey>) -> Result<Keyring, TokenError> {
        if keys.is_empty() {
            return Err(TokenError::InvalidSecret("no keys".into()));
        }
        for (i, k) in keys.iter().enumerate() {
            if !valid_key_id(&k.id) {
                return Err(TokenError::InvalidSecret(format!(
                    "key id {:?} is not [A-Za-z0-9_-]{{1,32}}",
                    k.id
                )));
            }
            if keys[..i].iter().any(|o| o.id == k.id) {
                return Err(TokenError::InvalidSecret(format!(
                    "duplicate key id {:?}",
                    k.id
                )));
            }
        }
        Ok(Keyring { keys })
    }

    /// The key that signs new tokens (the first).
    pub fn signing_key(&self) -> &TokenKey {
        &self.keys[0]
    }

    /// All keys, signing key first.
    pub fn keys(&self) -> &[TokenKey] {
        &self.keys
    }

    /// Sign a capability with the signing key.
    ///
    /// The capability's fields should be valid (transfer id syntax, lowercase sha256); a token
    /// carrying invalid fields is refused as [`TokenError::Malformed`] by `verify`.
    pub fn sign(&self, cap: &Capability) -> String {
        let key = self.signing_key();
        let payload = URL_SAFE_NO_PAD.encode(cap.payload());
        let signed = format!("{TOKEN_VERSION}.{}.{payload}", key.id);
        let tag = mac_for(&key.secret, &signed).finalize().into_bytes();
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(tag))
    }

    /// Check a token's MAC (in constant time) and expiry; return what it allows.
    ///
    /// A token is valid while `now_unix < expires`.
    pub fn verify(&self, token: &str, now_unix: u64) -> Result<Capability, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed);
        }
        let (signed, mac_b64) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
        let mut parts = signed.split('.');
        let (Some(ver), Some(kid), Some(payload_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        if ver != TOKEN_VERSION || !valid_key_id(kid) {
            return Err(TokenError::Malformed);
        }
        let tag = URL_SAFE_NO_PAD
            .decode(mac_b64)
            .map_err(|_| TokenError::Malformed)?;
        let key = self
            .keys
            .iter()
            .find(|k| k.id == kid)
            .ok_or(TokenError::UnknownKey)?;
        mac_for(&key.secret, signed)
            .verify_slice(&tag)
            .map_err(|_| TokenError::BadSignature)?;
        let payload = URL_SAFE_NO_PAD
            .decode(payload_b64)
            .map_err(|_| TokenError::Malformed)?;
        let text = std::str::from_utf8(&payload).map_err(|_| TokenError::Malformed)?;
        let cap = Capability::parse_payload(text)?;
        if now_unix >= cap.expires {
            return Err(TokenError::Expired);
        }
        Ok(cap)
    }

    /// Parse the secret file format: one key per line, `kid:secret`, where the secret is hex
    /// (even length, only hex digits) or base64 (standard or url-safe, padding optional) and at
    /// least 32 bytes long. The first key signs. Blank lines and lines starting with `#` are
    /// ignored; surrounding whitespace is trimmed.
    pub fn from_secret_text(text: &str) -> Result<Keyring, TokenError> {
        let mut keys = Vec::new();
        for (n, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let lineno = n + 1;
            let (kid, secret) = line.split_once(':').ok_or_else(|| {
                TokenError::InvalidSecret(format!("line {lineno}: expected kid:secret"))
            })?;
            let (kid, secret) = (kid.trim(), secret.trim());
            let bytes = decode_secret(secret).ok_or_else(|| {
                TokenError::InvalidSecret(format!(
                    "line {lineno}: secret is neither hex nor base64"
                ))
            })?;
            if bytes.len() < MIN_SECRET_LEN {
                return Err(TokenError::InvalidSecret(format!(
                    "line {lineno}: secret is {} bytes, at least {MIN_SECRET_LEN} required",
                    bytes.len()
                )));
            }
            keys.push(TokenKey {
                id: kid.to_owned(),
                secret: bytes,
            });
        }
        Keyring::try_new(keys)
    }
}

fn decode_secret(s: &str) -> Option<Vec<u8>> {
    if s.len().is_multiple_of(2) && !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
            .collect();
    }
    use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD as URL};
    let trimmed = s.trim_end_matches('=');
    STANDARD_NO_PAD
        .decode(trimmed)
        .or_else(|_| URL.decode(trimmed))
        .ok()
}

/// A fresh secret file text with one random 32-byte key (id `k<unix seconds>`), hex encoded.
pub fn generate_secret_text() -> String {
    let mut secret = [0u8; 32];
    rand::fill(&mut secret[..]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "# mSIM relay token secret: kid:secret, one key per line, the first signs.\nk{now}:{hex}\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(id: &str, fill: u8) -> TokenKey {
        TokenKey {
            id: id.into(),
            secret: vec![fill; 32],
        }
    }

    fn cap() -> Capability {
        Capability {
            transfer_id: "T-123".into(),
            direction: Direction::Upload,
            size: 128_000,
            sha256: Some("ab".repeat(32)),
            sender: "alice@example.com".into(),
            max_downloads: Some(1),
            expires: 1_000,
        }
    }

    #[test]
    fn round_trip() {
        let ring = Keyring::new(vec![key("a", 1)]);
        let t = ring.sign(&cap());
        assert!(t.starts_with("v1.a."));
        assert_eq!(ring.verify(&t, 999), Ok(cap()));
    }

    #[test]
    fn expired() {
        let ring = Keyring::new(vec![key("a", 1)]);
        let t = ring.sign(&cap());
        assert_eq!(ring.verify(&t, 1_000), Err(TokenError::Expired));
    }

    #[test]
    fn forged_with_other_secret() {
        let ring = Keyring::new(vec![key("a", 1)]);
        let evil = Keyring::new(vec![key("a", 2)]);
        let t = evil.sign(&cap());
        assert_eq!(ring.verify(&t, 0), Err(TokenError::BadSignature));
    }

    #[test]
    fn tampered_payload() {
        let ring = Keyring::new(vec![key("a", 1)]);
        let t = ring.sign(&cap());
        let parts: Vec<&str> = t.split('.').collect();
        let mut c = cap();
        c.size = 1;
        c.direction = Direction::Download;
        let forged = format!("v1.a.{}.{}", URL_SAFE_NO_PAD.encode(c.payload()), parts[3]);
        assert_eq!(ring.verify(&forged, 0), Err(TokenError::BadSignature));
    }

    #[test]
    fn unknown_key_and_rotation() {
        let old = Keyring::new(vec![key("old", 1)]);
        let rotated = Keyring::new(vec![key("new", 2), key("old", 1)]);
        let only_new = Keyring::new(vec![key("new", 2)]);
        let t_old = old.sign(&cap());
        // Rotation: tokens signed with the old key still verify while it is listed.
        assert_eq!(rotated.verify(&t_old, 0), Ok(cap()));
        // New tokens are signed with the first key.
        let t_new = rotated.sign(&cap());
        assert!(t_new.starts_with("v1.new."));
        assert_eq!(only_new.verify(&t_new, 0), Ok(cap()));
        // Once the old key is dropped, its tokens are refused.
        assert_eq!(only_new.verify(&t_old, 0), Err(TokenError::UnknownKey));
        // Wrong key with the same id.
        let wrong = Keyring::new(vec![key("old", 9)]);
        assert_eq!(wrong.verify(&t_old, 0), Err(TokenError::BadSignature));
    }

    #[test]
    fn malformed() {
        let ring = Keyring::new(vec![key("a", 1)]);
        for t in [
            "",
            "v1",
            "v1.a.b",
            "v2.a.AAAA.AAAA",
            "v1.a.b.c.d",
            "v1..AAAA.AAAA",
            "v1.a.!!.AAAA",
        ] {
            assert!(ring.verify(t, 0).is_err(), "{t}");
        }
        // Signed but invalid payload.
        let mut c = cap();
        c.transfer_id = "../etc".into();
        assert_eq!(ring.verify(&ring.sign(&c), 0), Err(TokenError::Malformed));
    }

    #[test]
    fn secret_text() {
        let text = format!(
            "# comment\n\nnew:{}\n old : {} \n",
            "0f".repeat(32),
            URL_SAFE_NO_PAD.encode([7u8; 40])
        );
        let ring = Keyring::from_secret_text(&text).unwrap();
        assert_eq!(ring.signing_key().id, "new");
        assert_eq!(ring.signing_key().secret, vec![0x0f; 32]);
        assert_eq!(ring.keys()[1].secret, vec![7u8; 40]);
        assert!(Keyring::from_secret_text("a:00").is_err());
        assert!(Keyring::from_secret_text("# nothing\n").is_err());
        assert!(Keyring::from_secret_text("nocolon").is_err());
        let dup = format!("a:{0}\na:{0}\n", "00".repeat(32));
        assert!(Keyring::from_secret_text(&dup).is_err());
        let gen = generate_secret_text();
        let ring = Keyring::from_secret_text(&gen).unwrap();
        assert_eq!(ring.signing_key().secret.len(), 32);
        assert!(!format!("{ring:?}").contains("0f0f"));
    }

    proptest! {
        #[test]
        fn prop_round_trip(
            tid in "[A-Za-z0-9-]{1,64}",
            up in any::<bool>(),
            size in any::<u64>(),
            sha in proptest::option::of("[0-9a-f]{64}"),
            sender in "\\PC{0,40}",
            maxdl in proptest::option::of(any::<u32>()),
            exp in 1u64..,
        ) {
            let ring = Keyring::new(vec![key("k1", 3)]);
            let c = Capability {
                transfer_id: tid,
                direction: if up { Direction::Upload } else { Direction::Download },
                size, sha256: sha, sender, max_downloads: maxdl, expires: exp,
            };
            let t = ring.sign(&c);
            prop_assert_eq!(ring.verify(&t, exp - 1), Ok(c));
        }

        #[test]
        fn prop_any_byte_flip_is_refused(idx in any::<prop::sample::Index>(), bit in 0u8..8) {
            let ring = Keyring::new(vec![key("k1", 3)]);
            let t = ring.sign(&cap());
            let mut bytes = t.into_bytes();
            let i = idx.index(bytes.len());
            bytes[i] ^= 1 << bit;
            if let Ok(s) = String::from_utf8(bytes) {
                prop_assert!(ring.verify(&s, 0).is_err());
            }
        }
    }
}
