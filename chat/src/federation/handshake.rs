//! The signed s2s handshake (PROTOCOL.md §12.4). Each side signs a transcript that binds both
//! domains, both nonces, its own time and the TLS session's exporter value, so an answer
//! captured on one connection is useless on any other.

use super::dns::{Dns, DnsError, KeyAnswer};
use super::keys::{verify, ServerKey};
use base64::Engine;
use msim_shared::tls::rustls;
use msim_shared::Packet;
use std::time::Duration;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;
/// TLS exporter label (RFC 5705 / 8446 §7.5).
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-msim-s2s-v1";
/// Handshake protocol version.
pub const VERSION: &str = "1";

/// Which side signs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The side that opened the connection.
    Dialer,
    /// The side that accepted it.
    Listener,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::Dialer => "dialer",
            Role::Listener => "listener",
        }
    }
}

/// What both sides know once `S2S-HELLO` and `S2S-CHALLENGE` have crossed.
#[derive(Debug, Clone)]
pub struct Session {
    /// The dialing server's domain.
    pub dialer: String,
    /// The listening server's domain.
    pub listener: String,
    /// The dialer's nonce (hex).
    pub dialer_nonce: String,
    /// The listener's nonce (hex).
    pub listener_nonce: String,
    /// The TLS exporter value (32 bytes).
    pub exporter: [u8; 32],
}

/// Why a handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Missing or malformed fields.
    #[error("malformed S2S-AUTH")]
    Malformed,
    /// `at=` too far from our clock.
    #[error("clock skew too large")]
    Skew,
    /// No key under that id (unpublished or revoked).
    #[error("no key {0} for {1}")]
    NoKey(String, String),
    /// The signature does not verify with the named key.
    #[error("bad signature")]
    BadSignature,
    /// DNS could not be asked.
    #[error(transparent)]
    Dns(#[from] DnsError),
}

impl AuthError {
    /// The `S2S-FAILED reason=` code.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Malformed => "malformed",
            AuthError::Skew => "clock-skew",
            AuthError::NoKey(..) => "unknown-key",
            AuthError::BadSignature => "bad-signature",
            AuthError::Dns(_) => "dns-failure",
        }
    }
}

/// A fresh 32-byte nonce in hex.
pub fn nonce() -> String {
    let mut b = [0u8; 32];
    rand::Rng::fill_bytes(&mut rand::rng(), &mut b);
    hex::encode(b)
}

/// The exporter value of a TLS connection.
pub fn exporter<D>(conn: &rustls::ConnectionCommon<D>) -> Option<[u8; 32]> {
    conn.export_keying_material([0u8; 32], EXPORTER_LABEL, None)
        .ok()
}

/// The bytes `role` signs.
pub fn transcript(s: &Session, role: Role, kid: &str, at: &str) -> Vec<u8> {
    format!(
        "msim-s2s-v1\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n",
        role.as_str(),
        s.dialer,
        s.listener,
        s.dialer_nonce,
        s.listener_nonce,
        hex::encode(s.exporter),
        kid,
        at
    )
    .into_bytes()
}

/// Our `S2S-AUTH` for `role`.
pub fn auth_packet(s: &Session, role: Role, key: &ServerKey, now_micros: i64) -> Packet {
    let at = msim_shared::timestamp::format(crate::clock::datetime(now_micros));
    let sig = key.sign(&transcript(s, role, &key.kid, &at));
    Packet::new("S2S-AUTH")
        .with("kid", key.kid.clone())
        .with("at", at)
        .with("sig", B64.encode(sig))
}

/// Checks the other side's `S2S-AUTH`: its time, then the signature with the key its `kid`
/// names in `domain`'s DNS, fetched again if a cached key does not verify (a revocation may
/// have been published since), at most once per refetch interval.
pub async fn check_auth(
    dns: &Dns,
    s: &Session,
    role: Role,
    domain: &str,
    p: &Packet,
    now_micros: i64,
    max_skew: Duration,
) -> Result<String, AuthError> {
    let (Some(kid), Some(at), Some(sig)) = (p.get("kid"), p.get("at"), p.get("sig")) else {
        return Err(AuthError::Malformed);
    };
    if p.verb != "S2S-AUTH"
        || kid.is_empty()
        || kid.len() > 63
        || !kid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(AuthError::Malformed);
    }
    let when = msim_shared::timestamp::parse(at).ok_or(AuthError::Malformed)?;
    let when_micros = (when.unix_timestamp_nanos() / 1000) as i64;
    if (when_micros - now_micros).unsigned_abs() > max_skew.as_micros() as u64 {
        return Err(AuthError::Skew);
    }
    let sig = B64.decode(sig).map_err(|_| AuthError::Malformed)?;
    let msg = transcript(s, role, kid, at);
    // "No key" is believed from the cache (negative caching); only a cached key that fails
    // is fetched again, at most once per refetch interval (the cache decides).
    match dns.key(domain, kid, false).await? {
        KeyAnswer::Key(k) if verify(&k, &msg, &sig) => return Ok(kid.to_owned()),
        KeyAnswer::Key(_) => {}
        KeyAnswer::NoKey => return Err(AuthError::NoKey(kid.into(), domain.into())),
    }
    match dns.key(domain, kid, true).await? {
        KeyAnswer::Key(k) if verify(&k, &msg, &sig) => Ok(kid.to_owned()),
        KeyAnswer::Key(_) => Err(AuthError::BadSignature),
        KeyAnswer::NoKey => Err(AuthError::NoKey(kid.into(), domain.into())),
    }
}
