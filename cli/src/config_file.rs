//! `msim`'s configuration file (`~/.config/msim/config.toml`):
//!
//! ```toml
//! server = "tls://chat.example.org:3214"   # or "127.0.0.1:3214" (plain TCP)
//! ca_file = "/etc/msim/ca.pem"              # optional extra trusted CA
//! login = "alice"
//! password = "correct horse battery staple"
//! download_dir = "~/Downloads"
//! ```
//!
//! Every key is optional. Command-line flags override the environment (`MSIM_SERVER`,
//! `MSIM_CA_FILE`, `MSIM_LOGIN`, `MSIM_PASSWORD`), which overrides the file (see
//! [`crate::settings`]). A file holding a password is written with mode 0600.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Contents of the configuration file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Server address, `host:port` or `tls://host:port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// Extra trusted CA certificate(s) (PEM) for TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Login (bare or `login@domain`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub login: Option<String>,
    /// Password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// Where `msim receive` saves files by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub download_dir: Option<PathBuf>,
}

/// Errors reading or writing the configuration file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown keys.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

impl ConfigFile {
    /// Parses TOML text.
    pub fn parse(text: &str) -> Result<ConfigFile, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// Reads a file.
    pub fn load(path: &Path) -> Result<ConfigFile, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_owned(),
            source,
        })?;
        ConfigFile::parse(&text).map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })
    }

    /// Reads `path` when given (it must exist), else the default file when it exists.
    pub fn load_or_default(path: Option<&Path>) -> Result<ConfigFile, ConfigError> {
        match path {
            Some(path) => ConfigFile::load(path),
            None => match default_path() {
                Some(path) if path.is_file() => ConfigFile::load(&path),
                _ => Ok(ConfigFile::default()),
            },
        }
    }

    /// Writes the file (creating its directory), readable only by the owner.
    pub fn save(&self, path: &Path) -> Result<(), ConfigError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| ConfigError::Io {
                path: path.to_owned(),
                source,
            })?;
        }
        save_private(self, path)
    }
}

/// Most device cookies kept in the devices file (the newest win).
const MAX_DEVICES: usize = 32;

/// The device cookies file (`devices.toml` next to the configuration file): one cookie per
/// server and login, from the last `CONNECT-OK` (PROTOCOL.md §4.3). Secret, mode 0600.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceFile {
    /// Cookies, oldest first.
    #[serde(default)]
    pub device: Vec<DeviceEntry>,
}

/// One device cookie.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceEntry {
    /// Server as configured.
    pub server: String,
    /// Login as configured, lower-cased.
    pub login: String,
    /// The cookie.
    pub cookie: String,
}

impl DeviceFile {
    /// Where the cookies of the configuration file `config` live.
    pub fn path_for(config: &Path) -> PathBuf {
        config.with_file_name("devices.toml")
    }

    /// Reads `path`; a missing or unreadable file holds no cookies (a login without a cookie
    /// still works).
    pub fn load(path: &Path) -> DeviceFile {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|text| toml::from_str(&text).ok())
            .unwrap_or_default()
    }

    /// The cookie for `login` at `server`.
    pub fn cookie(&self, server: &str, login: &str) -> Option<String> {
        let login = login.to_lowercase();
        self.device
            .iter()
            .rev()
            .find(|d| d.server == server && d.login == login)
            .map(|d| d.cookie.clone())
    }

    /// Replaces the cookie for `login` at `server`, keeping the newest [`MAX_DEVICES`].
    pub fn set(&mut self, server: &str, login: &str, cookie: String) {
        let login = login.to_lowercase();
        self.device
            .retain(|d| !(d.server == server && d.login == login));
        self.device.push(DeviceEntry {
            server: server.to_owned(),
            login,
            cookie,
        });
        let excess = self.device.len().saturating_sub(MAX_DEVICES);
        self.device.drain(..excess);
    }

    /// Writes the file, readable only by the owner.
    pub fn save(&self, path: &Path) -> Result<(), ConfigError> {
        save_private(self, path)
    }
}

/// Writes `value` as TOML to `path`, readable only by the owner.
fn save_private(value: &impl Serialize, path: &Path) -> Result<(), ConfigError> {
    let text = toml::to_string(value).map_err(|e| ConfigError::Parse {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    write_private(path, text.as_bytes()).map_err(|source| ConfigError::Io {
        path: path.to_owned(),
        source,
    })
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    // An existing file keeps its mode on open: tighten it.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, bytes)
}

/// `$XDG_CONFIG_HOME/msim/config.toml`, else `~/.config/msim/config.toml`.
pub fn default_path() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir).join("msim").join("config.toml"));
    }
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|home| {
            PathBuf::from(home)
                .join(".config")
                .join("msim")
                .join("config.toml")
        })
}

/// The first value present, in priority order (flag, environment, file).
pub fn pick<T>(flag: Option<T>, env: Option<T>, file: Option<T>) -> Option<T> {
    flag.or(env).or(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_full_and_empty_files() {
        let c = ConfigFile::parse(
            "server = \"example.org:3214\"\nlogin = \"alice\"\npassword = \"p w\"\ndownload_dir = \"/tmp/x\"\n",
        )
        .expect("valid");
        assert_eq!(c.server.as_deref(), Some("example.org:3214"));
        assert_eq!(c.login.as_deref(), Some("alice"));
        assert_eq!(c.password.as_deref(), Some("p w"));
        assert_eq!(c.download_dir, Some(PathBuf::from("/tmp/x")));
        assert_eq!(ConfigFile::parse("").expect("empty"), ConfigFile::default());
    }

    #[test]
    fn rejects_unknown_keys_and_bad_types() {
        assert!(ConfigFile::parse("passwd = \"x\"").is_err());
        assert!(ConfigFile::parse("login = 3").is_err());
        assert!(ConfigFile::parse("login = ").is_err());
    }

    #[test]
    fn saves_privately_and_round_trips() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub").join("config.toml");
        let c = ConfigFile {
            server: Some("h:1".into()),
            login: Some("bob".into()),
            password: Some("secret".into()),
            ca_file: Some(PathBuf::from("/etc/msim/ca.pem")),
            download_dir: None,
        };
        c.save(&path).expect("save");
        assert_eq!(ConfigFile::load(&path).expect("load"), c);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn missing_explicit_file_is_an_error() {
        assert!(ConfigFile::load_or_default(Some(Path::new("/nonexistent/msim.toml"))).is_err());
    }

    #[test]
    fn priority() {
        assert_eq!(pick(Some(1), Some(2), Some(3)), Some(1));
        assert_eq!(pick(None, Some(2), Some(3)), Some(2));
        assert_eq!(pick(None, None, Some(3)), Some(3));
        assert_eq!(pick::<u8>(None, None, None), None);
    }
}
