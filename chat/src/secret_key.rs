//! The password key (`<data-dir>/secret.key`) and the database must belong together.
//!
//! Every stored password is sealed under that key. Start-up refuses a data directory whose
//! database holds sealed passwords but whose key is missing or does not open them: the usual
//! cause is a backup restored without its key or a moved volume, and silently creating a new
//! key would lock every user out (or, before this check, worse). The operator either restores
//! the key or deliberately starts over with [`reset_secret_key`], then sets passwords again
//! with [`set_password`].

use crate::crypto::{create_secret, read_secret, CryptoError, Sealer};
use crate::db::{Db, DbError};
use std::path::{Path, PathBuf};

/// How many stored passwords start-up tries to open: one that opens proves the key.
const KEY_CHECK_SAMPLE: i64 = 8;

/// Why the password key cannot be used with this database.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key file is gone but passwords sealed under it are stored.
    #[error(
        "{path} is missing but the database holds {accounts} sealed password(s) made with it. \
         Restore secret.key from the backup of this data directory (it is not inside msim.db). \
         Only if it is lost for good: stop msim-chat and run `msim-chat --data-dir <DIR> \
         reset-secret-key --lock-all-accounts`, then `msim-chat set-password <LOGIN>` per user"
    )]
    Missing {
        /// The key file.
        path: PathBuf,
        /// Accounts with a sealed password.
        accounts: i64,
    },
    /// The key file opens none of the stored passwords it was tried on.
    #[error(
        "{path} does not open the stored passwords ({checked} tried): it belongs to another \
         data directory or backup (nodes sharing one database need the same secret.key). Restore the secret.key that was taken with this database; \
         only if it is lost for good, run `msim-chat --data-dir <DIR> reset-secret-key \
         --lock-all-accounts`"
    )]
    Mismatch {
        /// The key file.
        path: PathBuf,
        /// How many stored passwords were tried.
        checked: usize,
    },
    /// The key file is gone; no password is stored yet, but the database was set up with a key.
    #[error(
        "{path} is missing but this database was set up with a secret.key (fingerprint {recorded}). \
         Nodes sharing one database need the same secret.key: copy it from a node that runs, \
         or restore it from the backup of this data directory"
    )]
    MissingRecorded {
        /// The key file.
        path: PathBuf,
        /// The recorded fingerprint.
        recorded: String,
    },
    /// The database was set up with another key (its recorded fingerprint differs).
    #[error(
        "{path} (fingerprint {mine}) is not the secret.key this database was set up with \
         (fingerprint {recorded}). Nodes sharing one database need the same secret.key: copy it \
         from a node that runs (or restore the one taken with this database)"
    )]
    OtherKey {
        /// The key file.
        path: PathBuf,
        /// This key's fingerprint.
        mine: String,
        /// The recorded fingerprint.
        recorded: String,
    },
    /// `reset-secret-key` on a key that works.
    #[error("{0} opens the stored passwords: there is nothing to reset")]
    KeyWorks(PathBuf),
    /// `set-password` for an unknown login.
    #[error("no account {0}")]
    UnknownLogin(String),
    /// Reading or creating the key file.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// The database.
    #[error(transparent)]
    Db(#[from] DbError),
    /// Moving the old key aside.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

fn key_path(data_dir: &Path) -> PathBuf {
    data_dir.join("secret.key")
}

/// Loads the password key for `db`, creating it only for a database with no stored passwords,
/// and proves it opens them.
pub(crate) async fn open_sealer(data_dir: &Path, db: &Db) -> Result<Sealer, KeyError> {
    let path = key_path(data_dir);
    let key = match read_secret(&path)? {
        Some(key) => key,
        None => {
            let accounts = db.sealed_password_count().await?;
            if accounts > 0 {
                return Err(KeyError::Missing { path, accounts });
            }
            if let Some(recorded) = db.key_fingerprint().await? {
                return Err(KeyError::MissingRecorded { path, recorded });
            }
            create_secret(&path)?
        }
    };
    let sealer = Sealer::new(key);
    check_key(&path, &sealer, db).await?;
    // Recorded by the first node to start; every later start (and every other node) must
    // bring the same key, even while no password is stored yet.
    let recorded = db.claim_key_fingerprint(sealer.fingerprint()).await?;
    if recorded != sealer.fingerprint() {
        return Err(KeyError::OtherKey {
            path,
            mine: sealer.fingerprint().to_string(),
            recorded,
        });
    }
    Ok(sealer)
}

async fn check_key(path: &Path, sealer: &Sealer, db: &Db) -> Result<(), KeyError> {
    let sample = db.sample_sealed_passwords(KEY_CHECK_SAMPLE).await?;
    let opens = |(login, sealed): &(String, Vec<u8>)| sealer.open(login, sealed).is_ok();
    if sample.is_empty() || sample.iter().any(opens) {
        if let Some((login, _)) = sample.iter().find(|s| !opens(s)) {
            // One corrupt row must not take the whole service down; that account cannot log in.
            tracing::warn!(%login, "a stored password cannot be opened with secret.key");
        }
        return Ok(());
    }
    Err(KeyError::Mismatch {
        path: path.to_path_buf(),
        checked: sample.len(),
    })
}

/// Starts over after the key is lost: the old key file (if any) is kept as
/// `secret.key.replaced-<unix seconds>`, a new key is made, and every stored password is
/// cleared, so existing accounts keep their data but cannot log in until an operator sets a
/// new password. Refuses when the present key works. Returns the number of locked accounts.
pub async fn reset_secret_key(data_dir: &Path, database: Option<&str>) -> Result<u64, KeyError> {
    let db = Db::open_configured(data_dir, database).await?;
    let path = key_path(data_dir);
    if let Some(key) = read_secret(&path)? {
        let sealer = Sealer::new(key);
        let recorded = db.key_fingerprint().await?;
        let same = recorded
            .as_deref()
            .is_none_or(|r| r == sealer.fingerprint());
        if same && check_key(&path, &sealer, &db).await.is_ok() {
            return Err(KeyError::KeyWorks(path));
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        std::fs::rename(&path, data_dir.join(format!("secret.key.replaced-{now}")))?;
    }
    let locked = db.clear_passwords().await?;
    let key = create_secret(&path)?;
    db.replace_key_fingerprint(Sealer::new(key).fingerprint())
        .await?;
    db.close().await;
    Ok(locked)
}

/// Sets `login`'s password, sealed under the data directory's key (which must match the
/// database, as at start-up).
pub async fn set_password(
    data_dir: &Path,
    database: Option<&str>,
    login: &str,
    password: &str,
) -> Result<(), KeyError> {
    let db = Db::open_configured_beside_server(data_dir, database).await?;
    let sealer = open_sealer(data_dir, &db).await?;
    let stored = db
        .set_password(login, &sealer.seal(login, password))
        .await?;
    db.close().await;
    if stored {
        Ok(())
    } else {
        Err(KeyError::UnknownLogin(login.to_string()))
    }
}
