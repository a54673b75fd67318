//! `msim-chat`: the mSIM messaging server. Its options: [`msim_chat::settings`].

use anyhow::{Context, Result};
use clap::Parser;
use msim_chat::settings::{ChatSettings, DEFAULT_EMBEDDED_RELAY_LISTEN};
use msim_chat::Config;
use std::path::PathBuf;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tracing::info;

/// mSIM messaging server. With no --relay it runs an embedded file relay too.
///
/// Every option is also an environment variable (MSIM_CHAT_*) and a key of the TOML file
/// given with --config (keys as the long flags, e.g. `max-text = 16384`,
/// `login-timeout = "30s"`, `relay = ["http://relay1:3215"]`); flag > environment > file.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Cli {
    /// Operator commands; without one, the server runs.
    #[command(subcommand)]
    command: Option<Command>,
    /// TOML configuration file (keys as the long flags, e.g. `domain = "example.org"`).
    #[arg(long, env = "MSIM_CHAT_CONFIG")]
    config: Option<PathBuf>,
    #[command(flatten)]
    settings: ChatSettings,
}

/// Operator commands on a stopped server's data directory (`--data-dir`, `--config` apply).
#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Start over after secret.key is lost for good: makes a new key and clears every stored
    /// password. Accounts keep their contacts and messages but cannot log in until an
    /// operator runs `set-password` for them. Refused while the present key works. Stop
    /// msim-chat first.
    ResetSecretKey {
        /// Confirms that every account is to be locked.
        #[arg(long, required = true)]
        lock_all_accounts: bool,
    },
    /// Sets an account's password, read from the first line of standard input.
    SetPassword {
        /// The account's login.
        login: String,
    },
    /// Federation keys.
    #[command(subcommand)]
    Federation(FederationCommand),
    /// Prints the settings given by flags, environment and --config file, merged, as TOML
    /// (options not shown take their defaults), and exits.
    PrintConfig,
    /// Database operations.
    #[command(subcommand)]
    Db(DbCommand),
}

/// `msim-chat db …`.
#[derive(Debug, clap::Subcommand)]
enum DbCommand {
    /// Copies a SQLite installation into an empty PostgreSQL database: users with their
    /// sealed passwords, profiles, contacts, presence consent, blocks, messages, receipts,
    /// offers and stored file results, in one transaction. Stop msim-chat first; then start
    /// the nodes with --database and the same secret.key (and relay secret) as the old data
    /// directory.
    Copy {
        /// The SQLite data directory (or its msim.db).
        #[arg(long, value_name = "PATH")]
        from: PathBuf,
        /// The PostgreSQL database: postgres://user:password@host:5432/db.
        #[arg(long, value_name = "URL")]
        to: String,
    },
}

/// `msim-chat federation ...`.
#[derive(Debug, clap::Subcommand)]
enum FederationCommand {
    /// Creates a new signing key (a new key id) in DATA-DIR/federation/ (mode 0600) and
    /// prints the DNS TXT record to publish. The server signs with the newest key from its
    /// next start; see docs/OPERATING.md "Federation" for rotation.
    Keygen {
        /// Data directory [default: --data-dir of the server settings].
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// This server's domain [default: --domain of the server settings].
        #[arg(long)]
        domain: Option<String>,
    },
}

/// Runs an operator command against the data directory.
async fn operator_command(
    command: Command,
    settings: &ChatSettings,
    config: &Config,
) -> Result<()> {
    use msim_chat::secret_key;
    let dir = &config.data_dir;
    match command {
        Command::ResetSecretKey { .. } => {
            let locked = secret_key::reset_secret_key(dir, config.database.as_deref()).await?;
            println!(
                "new {}; {locked} account(s) locked until `msim-chat set-password LOGIN`",
                dir.join("secret.key").display()
            );
        }
        Command::Federation(FederationCommand::Keygen { data_dir, domain }) => {
            let dir = data_dir.unwrap_or_else(|| dir.clone());
            let domain = domain
                .unwrap_or_else(|| config.domain.clone())
                .to_ascii_lowercase();
            msim_chat::db::create_data_dir(&dir)
                .with_context(|| format!("creating {}", dir.display()))?;
            let key = msim_chat::federation::keys::generate(&dir, &domain)?;
            eprintln!(
                "new federation key {} for {domain} in {}; publish this DNS record:",
                key.kid,
                msim_chat::federation::keys::key_dir(&dir).display()
            );
            println!("{}", key.record(&domain));
        }
        Command::PrintConfig => {
            // Printed settings end up in bug reports: never the database password.
            let mut shown = settings.clone();
            shown.database = shown
                .database
                .map(|url| msim_chat::db::redact_database_url(&url));
            print!("{}", toml::to_string(&shown)?)
        }
        Command::Db(DbCommand::Copy { from, to }) => {
            let counts = msim_chat::db::copy::copy(&from, &to).await?;
            let total: u64 = counts.iter().map(|(_, n)| n).sum();
            for (table, n) in counts {
                println!("{table}: {n}");
            }
            println!("copied {total} row(s) to PostgreSQL");
        }
        Command::SetPassword { login } => {
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .context("reading the password from standard input")?;
            let password = line.trim_end_matches(['\r', '\n']);
            let chars = password.chars().count();
            if chars < config.password_min || chars > config.password_max {
                anyhow::bail!(
                    "the password must have {} to {} characters",
                    config.password_min,
                    config.password_max
                );
            }
            secret_key::set_password(dir, config.database.as_deref(), &login, password).await?;
            println!("password of {login} set");
        }
    }
    Ok(())
}

async fn signal(stop: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            stop.cancel();
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
    stop.cancel();
}

#[tokio::main]
async fn main() -> Result<()> {
    msim_shared::logging::init("info");
    let cli = Cli::parse();
    let settings = msim_shared::settings::layer(&cli.settings, cli.config.as_deref())?;
    let resolved = settings.resolve()?;
    let mut config = resolved.config;
    if let Some(command) = cli.command {
        return operator_command(command, &settings, &config).await;
    }
    if let Some((cert, key)) = &resolved.tls_files {
        config.tls = Some(Arc::new(
            msim_shared::tls::server_config(cert, key).context("TLS (--tls-cert, --tls-key)")?,
        ));
    }
    let mut relay_cas: Vec<PathBuf> = settings.relay_ca_file.iter().cloned().collect();
    msim_chat::db::create_data_dir(&config.data_dir)
        .with_context(|| format!("creating {}", config.data_dir.display()))?;
    // Refuse at once, before any listener or relay starts, rather than half-start.
    if config.federation.enabled() {
        msim_chat::federation::keys::load_newest(&config.data_dir, &config.domain)?;
    }

    let stop = CancellationToken::new();
    tokio::spawn(signal(stop.clone()));

    let mut embedded = None;
    if settings.relays.is_empty() {
        let relay_listen = settings
            .embedded_relay_listen
            .unwrap_or(DEFAULT_EMBEDDED_RELAY_LISTEN);
        let listener = msim_shared::listen::bind(relay_listen)
            .await
            .with_context(|| format!("binding embedded relay on {relay_listen}"))?;
        let metrics_listener = match settings.embedded_relay_metrics_listen {
            Some(addr) => Some(
                msim_shared::listen::bind(addr)
                    .await
                    .with_context(|| format!("binding embedded relay metrics on {addr}"))?,
            ),
            None => None,
        };
        let relay = msim_chat::embedded_relay::start(
            &mut config,
            listener,
            metrics_listener,
            settings.embedded_relay_url.clone(),
            stop.clone(),
        )?;
        if let Some((cert, _)) = &resolved.tls_files {
            // The health checks of our own relay trust our own certificate.
            relay_cas.push(cert.clone());
        }
        info!(relay_addr = %relay.addr, "embedded relay");
        embedded = Some(relay);
    } else {
        config.relays = settings.relays.clone();
        config.relay_secret = match &settings.relay_secret_file {
            Some(p) => {
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?
            }
            None => std::env::var("MSIM_RELAY_SECRET").context(
                "external relays need a token secret: --relay-secret-file or MSIM_RELAY_SECRET",
            )?,
        };
        if config.relay_secret.trim().is_empty() {
            anyhow::bail!(
                "the relay token secret (--relay-secret-file or MSIM_RELAY_SECRET) is empty: \
                 relays would refuse every token; use the same secret text as the relays"
            );
        }
    }

    if config.relays.iter().any(|u| u.starts_with("https://")) {
        config.relay_tls =
            Some(msim_shared::tls::client_config(&relay_cas).context("relay CA file")?);
    }
    let listen = resolved.listen;
    let listener = msim_shared::listen::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    msim_chat::run(listener, config, stop.clone().cancelled_owned()).await?;
    stop.cancel();
    if let Some(relay) = embedded {
        relay.stopped().await?;
    }
    Ok(())
}
