//! The server's Ed25519 federation key (PROTOCOL.md §12.2): created by
//! `msim-chat federation keygen`, kept in `<data-dir>/federation/<kid>.key` (0600, in a 0700
//! directory); the newest key id signs. Also the DNS TXT record format and its parser.

use base64::Engine;
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use std::path::{Path, PathBuf};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;
/// First line of a key file.
const MAGIC: &str = "msim-federation-key v1";

/// Key file failure.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// I/O on the key directory or file.
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    /// A key file that is not one of ours.
    #[error("{0}: not a federation key file")]
    Bad(PathBuf),
    /// The newest key names another domain.
    #[error("{0}: the key is for {1}, this server is {2}")]
    Domain(PathBuf, String, String),
    /// No key at all.
    #[error(
        "federation is on but there is no federation key in {0}: create one with \
         `msim-chat federation keygen --data-dir DIR --domain DOMAIN`, publish the DNS record \
         it prints (docs/OPERATING.md \"Federation\"), or set --federation off"
    )]
    Missing(PathBuf),
}

/// A loaded signing key.
pub struct ServerKey {
    /// Key id (the DNS selector).
    pub kid: String,
    pair: Ed25519KeyPair,
}

impl std::fmt::Debug for ServerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ServerKey({})", self.kid)
    }
}

impl ServerKey {
    /// Signs `msg`.
    pub fn sign(&self, msg: &[u8]) -> Vec<u8> {
        self.pair.sign(msg).as_ref().to_vec()
    }

    /// The public key, raw 32 bytes.
    pub fn public(&self) -> &[u8] {
        self.pair.public_key().as_ref()
    }

    /// The TXT record to publish for this key.
    pub fn record(&self, domain: &str) -> String {
        record_line(domain, &self.kid, self.public())
    }
}

/// `<kid>._msim-key.<domain>. IN TXT "v=msim1; k=ed25519; p=<base64>"`.
pub fn record_line(domain: &str, kid: &str, public: &[u8]) -> String {
    format!(
        "{}. IN TXT \"{}\"",
        key_name(kid, domain),
        txt_value(public)
    )
}

/// The DNS name of a key.
pub fn key_name(kid: &str, domain: &str) -> String {
    format!("{kid}._msim-key.{domain}")
}

/// The TXT value of a public key (empty `public`: the revocation record).
pub fn txt_value(public: &[u8]) -> String {
    format!("v=msim1; k=ed25519; p={}", B64.encode(public))
}

/// What a key record says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyRecord {
    /// A public key, 32 bytes.
    Key(Vec<u8>),
    /// `p=` empty: the key was revoked.
    Revoked,
}

/// Parses a TXT value (`v=msim1; k=ed25519; p=...`, tags in any order, spaces around `;`
/// and `=` ignored, as DKIM). `None`: not an msim key record.
pub fn parse_txt(value: &str) -> Option<KeyRecord> {
    let (mut v, mut k, mut p) = (None, None, None);
    for tag in value.split(';') {
        let Some((name, val)) = tag.split_once('=') else {
            if tag.trim().is_empty() {
                continue;
            }
            return None;
        };
        let val: String = val.chars().filter(|c| !c.is_whitespace()).collect();
        match name.trim() {
            "v" => v = Some(val),
            "k" => k = Some(val),
            "p" => p = Some(val),
            _ => {}
        }
    }
    if v.as_deref() != Some("msim1") {
        return None;
    }
    // k= defaults to ed25519 (the only algorithm); any other is not for us.
    if k.as_deref().is_some_and(|k| k != "ed25519") {
        return None;
    }
    match p?.as_str() {
        "" => Some(KeyRecord::Revoked),
        b => {
            let raw = B64.decode(b).ok()?;
            (raw.len() == 32).then_some(KeyRecord::Key(raw))
        }
    }
}

/// Whether `sig` is `public`'s signature of `msg`.
pub fn verify(public: &[u8], msg: &[u8], sig: &[u8]) -> bool {
    UnparsedPublicKey::new(&ED25519, public)
        .verify(msg, sig)
        .is_ok()
}

/// The key directory.
pub fn key_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("federation")
}

/// Creates a new key for `domain` with a fresh key id (never one in use: ids are UTC times to
/// the second, plus a suffix if that file exists). Returns it.
pub fn generate(data_dir: &Path, domain: &str) -> Result<ServerKey, KeyError> {
    let dir = key_dir(data_dir);
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |e| KeyError::Io(p, e)
    };
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(&dir).map_err(io(&dir))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).map_err(io(&dir))?;
    }
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| KeyError::Bad(dir.clone()))?;
    let now = time::OffsetDateTime::now_utc();
    let base = format!(
        "k{:04}{:02}{:02}{:02}{:02}{:02}",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second()
    );
    for n in 0u32..1000 {
        let kid = if n == 0 {
            base.clone()
        } else {
            format!("{base}n{n}")
        };
        let path = dir.join(format!("{kid}.key"));
        let mut o = std::fs::OpenOptions::new();
        o.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
        let mut f = match o.open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(KeyError::Io(path, e)),
        };
        let text = format!(
            "{MAGIC}\ndomain {domain}\nkid {kid}\npkcs8 {}\n",
            B64.encode(pkcs8.as_ref())
        );
        use std::io::Write;
        f.write_all(text.as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(io(&path))?;
        let pair =
            Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|_| KeyError::Bad(path.clone()))?;
        return Ok(ServerKey { kid, pair });
    }
    Err(KeyError::Bad(dir))
}

/// Loads the newest key (greatest key id) of the data directory, checking its domain.
pub fn load_newest(data_dir: &Path, domain: &str) -> Result<ServerKey, KeyError> {
    let dir = key_dir(data_dir);
    let entries = std::fs::read_dir(&dir).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => KeyError::Missing(dir.clone()),
        _ => KeyError::Io(dir.clone(), e),
    })?;
    let mut newest: Option<(String, PathBuf)> = None;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(kid) = name.strip_suffix(".key") else {
            continue;
        };
        // Newer ids sort after older ones: equal-length times, then the `nN` suffix.
        let key = (kid.len(), kid.to_owned());
        if newest
            .as_ref()
            .is_none_or(|(k, _)| key > (k.len(), k.clone()))
        {
            newest = Some((kid.to_owned(), e.path()));
        }
    }
    let (kid, path) = newest.ok_or(KeyError::Missing(dir))?;
    let text = std::fs::read_to_string(&path).map_err(|e| KeyError::Io(path.clone(), e))?;
    let mut lines = text.lines();
    if lines.next() != Some(MAGIC) {
        return Err(KeyError::Bad(path));
    }
    let (mut file_domain, mut file_kid, mut pkcs8) = (None, None, None);
    for l in lines {
        match l.split_once(' ') {
            Some(("domain", v)) => file_domain = Some(v.to_owned()),
            Some(("kid", v)) => file_kid = Some(v.to_owned()),
            Some(("pkcs8", v)) => pkcs8 = B64.decode(v).ok(),
            _ => {}
        }
    }
    let (Some(file_domain), Some(file_kid), Some(pkcs8)) = (file_domain, file_kid, pkcs8) else {
        return Err(KeyError::Bad(path));
    };
    if file_kid != kid {
        return Err(KeyError::Bad(path));
    }
    if !file_domain.eq_ignore_ascii_case(domain) {
        return Err(KeyError::Domain(path, file_domain, domain.to_owned()));
    }
    let pair = Ed25519KeyPair::from_pkcs8(&pkcs8).map_err(|_| KeyError::Bad(path))?;
    Ok(ServerKey { kid, pair })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_parse_and_revoke() {
        let pk = [7u8; 32];
        assert_eq!(
            parse_txt(&txt_value(&pk)),
            Some(KeyRecord::Key(pk.to_vec()))
        );
        assert_eq!(
            parse_txt("v=msim1; k=ed25519; p="),
            Some(KeyRecord::Revoked)
        );
        assert_eq!(parse_txt("k=ed25519;v=msim1;p= "), Some(KeyRecord::Revoked));
        assert_eq!(parse_txt("v=DKIM1; k=ed25519; p="), None);
        assert_eq!(parse_txt("v=msim1; k=rsa; p=AAAA"), None);
        assert_eq!(parse_txt("v=msim1; p=AAAA"), None, "wrong length");
    }

    #[test]
    fn keygen_then_load_signs_verifiably() {
        let dir = tempfile::tempdir().expect("tempdir");
        let k = generate(dir.path(), "a.test").expect("keygen");
        let k2 = generate(dir.path(), "a.test").expect("keygen");
        assert_ne!(k.kid, k2.kid, "key ids are never reused");
        let loaded = load_newest(dir.path(), "a.test").expect("load");
        assert_eq!(loaded.kid, k2.kid);
        let sig = loaded.sign(b"x");
        assert!(verify(k2.public(), b"x", &sig));
        assert!(!verify(k.public(), b"x", &sig));
        assert!(matches!(
            load_newest(dir.path(), "b.test"),
            Err(KeyError::Domain(..))
        ));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let meta = std::fs::metadata(key_dir(dir.path()).join(format!("{}.key", k.kid)))
                .expect("key file");
            assert_eq!(meta.permissions().mode() & 0o777, 0o600);
            let meta = std::fs::metadata(key_dir(dir.path())).expect("key dir");
            assert_eq!(meta.permissions().mode() & 0o777, 0o700);
        }
    }
}
