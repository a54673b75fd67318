//! The servers' layered configuration: one settings struct per binary serves as the clap
//! arguments (flags, then `MSIM_*` environment variables, which clap resolves) and as the TOML
//! file's schema (kebab-case keys = long flag names). [`layer`] puts what flags and environment
//! set over the file; keys nobody set keep the library's defaults.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("reading config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("settings: {0}")]
    Encode(String),
    #[error("--{given} needs --{missing}")]
    Needs {
        given: &'static str,
        missing: &'static str,
    },
}

/// The `--tls-cert` and `--tls-key` files of a server: both or neither.
pub fn tls_files(
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
) -> Result<Option<(PathBuf, PathBuf)>, SettingsError> {
    match (cert, key) {
        (Some(cert), Some(key)) => Ok(Some((cert, key))),
        (None, None) => Ok(None),
        (Some(_), None) => Err(SettingsError::Needs {
            given: "tls-cert",
            missing: "tls-key",
        }),
        (None, Some(_)) => Err(SettingsError::Needs {
            given: "tls-key",
            missing: "tls-cert",
        }),
    }
}

/// `over` (what flags and environment set: its `None` fields and skipped fields are absent)
/// laid over the TOML file at `file`, key by key. Unknown or mistyped keys in the file are
/// errors, as the settings type declares (`deny_unknown_fields`).
pub fn layer<T: Serialize + DeserializeOwned>(
    over: &T,
    file: Option<&Path>,
) -> Result<T, SettingsError> {
    let mut table = toml::Table::new();
    let shown = file.map(|p| p.display().to_string()).unwrap_or_default();
    if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(|source| SettingsError::Read {
            path: shown.clone(),
            source,
        })?;
        table = text
            .parse()
            .map_err(|e: toml::de::Error| SettingsError::Parse {
                path: shown.clone(),
                message: e.to_string(),
            })?;
    }
    let over = toml::Table::try_from(over).map_err(|e| SettingsError::Encode(e.to_string()))?;
    table.extend(over);
    T::deserialize(table).map_err(|e| SettingsError::Parse {
        path: shown,
        message: e.to_string(),
    })
}

/// A duration written the humantime way (`90s`, `5m`, `24h`, `7days`) in flags, environment
/// and TOML.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl FromStr for HumanDuration {
    type Err = humantime::DurationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        humantime::parse_duration(s).map(HumanDuration)
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(self.0))
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse()
            .map_err(|e| serde::de::Error::custom(format!("duration {text:?}: {e}")))
    }
}

impl From<HumanDuration> for Duration {
    fn from(d: HumanDuration) -> Duration {
        d.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize, Deserialize, Default, Debug, PartialEq)]
    #[serde(rename_all = "kebab-case", default, deny_unknown_fields)]
    struct Example {
        #[serde(skip_serializing_if = "Option::is_none")]
        max_text: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        ttl: Option<HumanDuration>,
        #[serde(skip_serializing_if = "Option::is_none")]
        domain: Option<String>,
    }

    fn file(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), text).unwrap();
        f
    }

    #[test]
    fn set_keys_win_over_the_file_and_unset_keys_come_from_it() {
        let f = file("max-text = 10\nttl = \"5m\"\n");
        let over = Example {
            max_text: Some(20),
            ..Example::default()
        };
        let merged = layer(&over, Some(f.path())).unwrap();
        assert_eq!(merged.max_text, Some(20));
        assert_eq!(merged.ttl, Some(HumanDuration(Duration::from_secs(300))));
        assert_eq!(merged.domain, None);
    }

    #[test]
    fn unknown_and_mistyped_keys_are_errors_naming_the_file() {
        let f = file("max-txt = 10\n");
        let e = layer(&Example::default(), Some(f.path())).unwrap_err();
        assert!(e.to_string().contains("max-txt"), "{e}");
        let f = file("ttl = \"soon\"\n");
        let e = layer(&Example::default(), Some(f.path())).unwrap_err();
        assert!(e.to_string().contains("soon"), "{e}");
    }
}
