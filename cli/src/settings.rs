//! The settled configuration: every setting resolved once, in one order — flag, then
//! environment (clap merges those two), then the config file, then a prompt on the terminal —
//! and validated. Commands read [`Settings`], never the raw flags.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use msim::transfer::TransferOptions;
use msim::ClientOptions;

use crate::args::{Cli, Command, DEFAULT_SERVER};
use crate::config_file::{self, ConfigFile};
use crate::error::UsageError;
use crate::output::Output;

/// Resolved settings.
pub struct Settings {
    /// `HOST:PORT` or `tls://HOST:PORT`.
    pub server: String,
    pub login: Option<String>,
    pub password: Option<String>,
    /// Where `--save` writes.
    pub(crate) config_path: Option<PathBuf>,
    /// The config file as read (kept whole so that `--save` keeps its other keys).
    file: ConfigFile,
    pub output: Output,
    pub options: ClientOptions,
    /// Trust for TLS (tls:// servers, https:// relays).
    pub tls: Option<std::sync::Arc<msim::tls::rustls::ClientConfig>>,
    /// The password was read from standard input (`--password-stdin`).
    pub password_from_stdin: bool,
}

impl Settings {
    /// Everything but the password prompt (see [`Settings::resolve_password`]).
    pub fn from_cli(cli: &Cli) -> Result<Settings> {
        // `--save` may name a file that does not exist yet.
        let saving = cli.command.saves_config();
        let explicit = cli.config.as_deref().filter(|p| !saving || p.exists());
        let file = if cli.config.is_some() && explicit.is_none() {
            ConfigFile::default()
        } else {
            ConfigFile::load_or_default(explicit)
                .map_err(|e| UsageError(format!("config file: {e}")))?
        };
        let ca_file = cli.ca_file.clone().or_else(|| file.ca_file.clone());
        let tls = match ca_file {
            Some(path) => Some(
                msim::tls::client_config(&[path])
                    .map_err(|e| UsageError(format!("--ca-file: {e}")))?,
            ),
            None => None,
        };
        let options = ClientOptions {
            request_timeout: Duration::from_secs(cli.timeout.max(1)),
            tls: tls.clone(),
            ..ClientOptions::default()
        };
        Ok(Settings {
            // clap already gave flags priority over the environment.
            server: config_file::pick(cli.server.clone(), None, file.server.clone())
                .unwrap_or_else(|| DEFAULT_SERVER.to_owned()),
            login: config_file::pick(cli.login.clone(), None, file.login.clone()),
            password: config_file::pick(cli.password.clone(), None, file.password.clone()),
            config_path: cli.config.clone().or_else(config_file::default_path),
            file,
            output: Output { json: cli.json },
            options,
            tls,
            password_from_stdin: false,
        })
    }

    /// Fills in the password from `--password-stdin`, or asks for it on the terminal when no
    /// flag, environment variable or config file gave one.
    pub fn resolve_password(&mut self, cli: &Cli) -> Result<()> {
        if cli.password_stdin {
            if cli.password_from_flag {
                bail!(UsageError(
                    "--password and --password-stdin cannot be used together".into()
                ));
            }
            if cli.command.reads_stdin() {
                bail!(UsageError(
                    "--password-stdin cannot be used with a command that reads standard input \
                     (`send … -`, or `receive` asking y/n): give the password another way"
                        .into()
                ));
            }
            let line = {
                let stdin = std::io::stdin();
                let mut lock = stdin.lock();
                read_password_line(&mut lock)?
            };
            self.password = Some(line);
            self.password_from_stdin = true;
            return Ok(());
        }
        if self.password.is_some() || !std::io::stdin().is_terminal() {
            return Ok(());
        }
        // Without a login there is nothing to ask for; `credentials` reports it.
        let Some(login) = self.login.clone() else {
            return Ok(());
        };
        let prompt = format!("Password for {login} on {}: ", self.server);
        let password = rpassword::prompt_password(prompt)
            .context("cannot read the password from the terminal")?;
        if password.is_empty() {
            bail!(UsageError("empty password".into()));
        }
        if matches!(cli.command, Command::Register(_)) {
            let again = rpassword::prompt_password("Repeat the password: ")
                .context("cannot read the password from the terminal")?;
            if again != password {
                bail!(UsageError("the passwords do not match".into()));
            }
        }
        self.password = Some(password);
        Ok(())
    }

    /// Login and password, or the usage error saying how to give them.
    pub fn credentials(&self) -> Result<(&str, &str)> {
        let login = self.login.as_deref().ok_or_else(|| {
            UsageError("no login: use --login, MSIM_LOGIN or `login = …` in the config file".into())
        })?;
        let password = self.password.as_deref().ok_or_else(|| {
            UsageError(
                "no password: use --password, --password-stdin, MSIM_PASSWORD or `password = …` in \
                 the config file, or run msim in a terminal to be asked for it"
                    .into(),
            )
        })?;
        Ok((login, password))
    }

    /// Where `receive` saves files without `--out`: the config's `download_dir`, else here.
    pub fn download_dir(&self) -> PathBuf {
        self.file
            .download_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("."))
    }

    /// Transfer options: the default retries, the TLS trust of the settings.
    pub fn transfer_options(&self) -> TransferOptions {
        TransferOptions {
            tls: self.tls.clone(),
            ..TransferOptions::default()
        }
    }

    /// Writes server, login and password to the config file (`--save`).
    pub fn save(&self) -> Result<PathBuf> {
        let path = self
            .config_path
            .clone()
            .ok_or_else(|| anyhow!("no config path: use --config FILE"))?;
        let mut file = self.file.clone();
        file.server = Some(self.server.clone());
        file.login = self.login.clone();
        file.password = self.password.clone();
        file.save(&path)?;
        Ok(path)
    }
}

/// The password on the first line of `input` (`--password-stdin`), without its line ending.
fn read_password_line(input: &mut impl std::io::BufRead) -> Result<String> {
    let mut line = String::new();
    input
        .read_line(&mut line)
        .context("--password-stdin: cannot read standard input")?;
    let password = line
        .strip_suffix('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .unwrap_or(&line);
    if password.is_empty() {
        bail!(UsageError(
            "--password-stdin: the first line of standard input is empty".into()
        ));
    }
    Ok(password.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Exit;

    fn password_of(input: &str) -> Result<String> {
        read_password_line(&mut std::io::Cursor::new(input.as_bytes()))
    }

    #[test]
    fn password_stdin_takes_the_first_line_without_its_line_ending() {
        assert_eq!(password_of("secret\n").ok().as_deref(), Some("secret"));
        assert_eq!(password_of("secret\r\n").ok().as_deref(), Some("secret"));
        assert_eq!(password_of("secret").ok().as_deref(), Some("secret"));
        assert_eq!(
            password_of("with spaces \nnext line\n").ok().as_deref(),
            Some("with spaces ")
        );
        for empty in ["", "\n", "\r\n"] {
            let error = password_of(empty).expect_err("empty password");
            assert!(error.downcast_ref::<UsageError>().is_some(), "{error:#}");
            assert_eq!(Exit::of(&error).code(), 2);
        }
    }
}
