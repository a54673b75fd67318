//! `msim-chat`: the mSIM messaging server.
//!
//! Configuration comes from flags, environment variables (`MSIM_CHAT_*`) and a TOML file
//! (`--config`, keys named like the long flags, e.g. `max-text = 16384`,
//! `login-timeout = "30s"`); flags and environment win over the file.

use anyhow::{Context, Result};
use clap::Parser;
use msim_chat::Config;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::info;

fn parse_duration(s: &str) -> Result<Duration, humantime::DurationError> {
    humantime::parse_duration(s)
}

/// mSIM messaging server. With no --relay it runs an embedded file relay too.
#[derive(Debug, Parser, Default, Deserialize)]
#[command(version, about)]
#[serde(rename_all = "kebab-case", default, deny_unknown_fields)]
struct Cli {
    /// Operator commands; without one, the server runs.
    #[command(subcommand)]
    #[serde(skip)]
    command: Option<Command>,
    /// TOML configuration file (keys as the long flags, e.g. `domain = "example.org"`).
    #[arg(long, env = "MSIM_CHAT_CONFIG")]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:3214].
    #[arg(long, env = "MSIM_CHAT_LISTEN")]
    listen: Option<SocketAddr>,
    /// This server's domain (addresses are login@domain) [default: localhost].
    #[arg(long, env = "MSIM_CHAT_DOMAIN")]
    domain: Option<String>,
    /// Data directory: msim.db (SQLite), secret.key, relay.secret, relay/ [default: ./data].
    #[arg(long, env = "MSIM_CHAT_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Relay base URL, e.g. http://relay1:3215 or https://relay1.example.org:3215 (repeatable).
    /// Without any, an embedded relay runs.
    #[arg(long = "relay", env = "MSIM_CHAT_RELAYS", value_delimiter = ',')]
    #[serde(rename = "relay")]
    relays: Vec<String>,
    /// Listen address of the embedded relay [default: 127.0.0.1:3215].
    #[arg(long, env = "MSIM_CHAT_EMBEDDED_RELAY_LISTEN")]
    embedded_relay_listen: Option<SocketAddr>,
    /// Serve the embedded relay's GET /metrics on this separate address (keep it internal);
    /// without it the embedded relay serves no metrics.
    #[arg(
        long,
        env = "MSIM_CHAT_EMBEDDED_RELAY_METRICS_LISTEN",
        value_name = "ADDR"
    )]
    embedded_relay_metrics_listen: Option<SocketAddr>,
    /// Serve TLS with this certificate chain (PEM, leaf first); needs --tls-key. The embedded
    /// relay, if any, serves TLS with the same certificate.
    #[arg(
        long,
        env = "MSIM_CHAT_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(
        long,
        env = "MSIM_CHAT_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    tls_key: Option<PathBuf>,
    /// Extra CA certificate(s) (PEM) trusted for https:// relay health checks, besides the
    /// bundled public roots.
    #[arg(long, env = "MSIM_CHAT_RELAY_CA_FILE", value_name = "FILE")]
    relay_ca_file: Option<PathBuf>,
    /// URL of the embedded relay handed to clients [default: http(s)://<embedded-relay-listen>].
    /// With TLS its host must match the certificate.
    #[arg(long, env = "MSIM_CHAT_EMBEDDED_RELAY_URL", value_name = "URL")]
    embedded_relay_url: Option<String>,
    /// Relay token secret file (`kid:secret` lines) for external relays; otherwise the
    /// MSIM_RELAY_SECRET environment variable holds the secret text.
    #[arg(long, env = "MSIM_CHAT_RELAY_SECRET_FILE")]
    relay_secret_file: Option<PathBuf>,
    /// Refuse REGISTER (registration-closed).
    #[arg(long, env = "MSIM_CHAT_REGISTRATION_CLOSED")]
    registration_closed: Option<bool>,
    /// Minimum login length [default: 3].
    #[arg(long, env = "MSIM_CHAT_LOGIN_MIN")]
    login_min: Option<usize>,
    /// Maximum login length [default: 32].
    #[arg(long, env = "MSIM_CHAT_LOGIN_MAX")]
    login_max: Option<usize>,
    /// Minimum password length [default: 8].
    #[arg(long, env = "MSIM_CHAT_PASSWORD_MIN")]
    password_min: Option<usize>,
    /// Registrations one client address (IPv6: one /64) may make at once; 0 = unlimited
    /// [default: 5].
    #[arg(long, env = "MSIM_CHAT_REGISTER_BURST")]
    register_burst: Option<u32>,
    /// Registrations per client address refilled per hour [default: 5].
    #[arg(long, env = "MSIM_CHAT_REGISTER_PER_HOUR")]
    register_per_hour: Option<u32>,
    /// Registrations one network (IPv4 /24, IPv6 /48) may make at once; 0 = unlimited
    /// [default: 20].
    #[arg(long, env = "MSIM_CHAT_REGISTER_PREFIX_BURST")]
    register_prefix_burst: Option<u32>,
    /// Registrations per network refilled per hour [default: 20].
    #[arg(long, env = "MSIM_CHAT_REGISTER_PREFIX_PER_HOUR")]
    register_prefix_per_hour: Option<u32>,
    /// Lookups of unknown users (unknown-user, unknown-recipient) one account may make at
    /// once; 0 = unlimited [default: 20].
    #[arg(long, env = "MSIM_CHAT_DISCOVERY_BURST")]
    discovery_burst: Option<u32>,
    /// Lookups of unknown users per account refilled per hour [default: 20].
    #[arg(long, env = "MSIM_CHAT_DISCOVERY_PER_HOUR")]
    discovery_per_hour: Option<u32>,
    /// Maximum message text in bytes [default: 16384].
    #[arg(long, env = "MSIM_CHAT_MAX_TEXT")]
    max_text: Option<usize>,
    /// Maximum line length in bytes [default: 65536].
    #[arg(long, env = "MSIM_CHAT_MAX_LINE")]
    max_line: Option<usize>,
    /// Maximum file size offered through relays, bytes [default: 1073741824].
    #[arg(long, env = "MSIM_CHAT_MAX_FILE_SIZE")]
    max_file_size: Option<u64>,
    /// Maximum simultaneous connections [default: 25000].
    #[arg(long, env = "MSIM_CHAT_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    /// Most open file offers (unanswered, or accepted in the last 10 min) per sender account
    /// [default: 16].
    #[arg(long, env = "MSIM_CHAT_MAX_OPEN_OFFERS")]
    max_open_offers: Option<u64>,
    /// Most bytes in open file offers per sender account [default: 4294967296].
    #[arg(long, env = "MSIM_CHAT_MAX_OFFERED_BYTES")]
    max_offered_bytes: Option<u64>,
    /// Most open file offers per client address (IPv4, IPv6 /64) [default: 64].
    #[arg(long, env = "MSIM_CHAT_MAX_OPEN_OFFERS_PER_ADDRESS")]
    max_open_offers_per_address: Option<u64>,
    /// Most bytes in open file offers per client address [default: 17179869184].
    #[arg(long, env = "MSIM_CHAT_MAX_OFFERED_BYTES_PER_ADDRESS")]
    max_offered_bytes_per_address: Option<u64>,
    /// Most users one user may block [default: 1000].
    #[arg(long, env = "MSIM_CHAT_MAX_BLOCKS")]
    max_blocks: Option<usize>,
    /// Refuse new messages (`storage-full`) when the data directory's file system has fewer
    /// free bytes than this; 0 = off [default: 67108864 (64 MiB)].
    #[arg(long, env = "MSIM_CHAT_MIN_FREE_SPACE")]
    min_free_space: Option<u64>,
    /// Most undelivered messages one recipient may have waiting (`recipient-queue-full`
    /// beyond); 0 = unlimited [default: 10000].
    #[arg(long, env = "MSIM_CHAT_MAX_PENDING_MESSAGES")]
    max_pending_messages: Option<u64>,
    /// Undelivered messages expire after this long; their senders get
    /// `MESSAGE-SEND-FAILED reason=expired` [default: 30days].
    #[arg(long, env = "MSIM_CHAT_MESSAGE_TTL", value_parser = parse_duration)]
    #[serde(skip)]
    message_ttl: Option<Duration>,
    /// How long a delivered message's receipt data (id, sender, state; never its text) and
    /// undelivered read receipts are kept [default: 7days].
    #[arg(long, env = "MSIM_CHAT_RECEIPT_RETENTION", value_parser = parse_duration)]
    #[serde(skip)]
    receipt_retention: Option<Duration>,
    /// How often the retention job runs (expiry, purge of delivered messages) [default: 60s].
    #[arg(long, env = "MSIM_CHAT_PURGE_INTERVAL", value_parser = parse_duration)]
    #[serde(skip)]
    purge_interval: Option<Duration>,
    /// Unanswered file offers expire after this long [default: 24h].
    #[arg(long, env = "MSIM_CHAT_OFFER_TTL", value_parser = parse_duration)]
    #[serde(skip)]
    offer_ttl: Option<Duration>,
    /// Close connections that have not logged in after this long [default: 30s].
    #[arg(long, env = "MSIM_CHAT_LOGIN_TIMEOUT", value_parser = parse_duration)]
    #[serde(skip)]
    login_timeout: Option<Duration>,
    /// Longest delay imposed after failed logins [default: 5m].
    #[arg(long, env = "MSIM_CHAT_THROTTLE_MAX", value_parser = parse_duration)]
    #[serde(skip)]
    throttle_max: Option<Duration>,
    /// Relay health-check period [default: 10s].
    #[arg(long, env = "MSIM_CHAT_RELAY_HEALTH_INTERVAL", value_parser = parse_duration)]
    #[serde(skip)]
    relay_health_interval: Option<Duration>,
    /// Durations from the TOML file (humantime strings).
    #[arg(skip)]
    #[serde(rename = "offer-ttl")]
    file_offer_ttl: Option<String>,
    #[arg(skip)]
    #[serde(rename = "message-ttl")]
    file_message_ttl: Option<String>,
    #[arg(skip)]
    #[serde(rename = "receipt-retention")]
    file_receipt_retention: Option<String>,
    #[arg(skip)]
    #[serde(rename = "purge-interval")]
    file_purge_interval: Option<String>,
    #[arg(skip)]
    #[serde(rename = "login-timeout")]
    file_login_timeout: Option<String>,
    #[arg(skip)]
    #[serde(rename = "throttle-max")]
    file_throttle_max: Option<String>,
    #[arg(skip)]
    #[serde(rename = "relay-health-interval")]
    file_relay_health_interval: Option<String>,
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
}

/// Runs an operator command against the data directory.
async fn operator_command(command: Command, config: &Config) -> Result<()> {
    use msim_chat::secret_key;
    let dir = &config.data_dir;
    match command {
        Command::ResetSecretKey { .. } => {
            let locked = secret_key::reset_secret_key(dir).await?;
            println!(
                "new {}; {locked} account(s) locked until `msim-chat set-password LOGIN`",
                dir.join("secret.key").display()
            );
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
            secret_key::set_password(dir, &login, password).await?;
            println!("password of {login} set");
        }
    }
    Ok(())
}

fn dur(flag: Option<Duration>, file: &Option<String>, name: &str) -> Result<Option<Duration>> {
    if flag.is_some() {
        return Ok(flag);
    }
    file.as_deref()
        .map(|s| humantime::parse_duration(s).with_context(|| format!("config {name}")))
        .transpose()
}

fn merge(cli: Cli) -> Result<(Cli, Cli)> {
    let file: Cli = match &cli.config {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("reading config {}", p.display()))?;
            toml::from_str(&text).with_context(|| format!("parsing config {}", p.display()))?
        }
        None => Cli::default(),
    };
    Ok((cli, file))
}

/// Creates a file with `contents` and mode 0600 unless it exists; returns its contents.
fn read_or_create_secret(path: &Path, contents: impl FnOnce() -> String) -> Result<String> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(s),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            use std::io::Write;
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create_new(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                opts.mode(0o600);
            }
            let text = contents();
            let mut f = opts
                .open(path)
                .with_context(|| format!("creating {}", path.display()))?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            Ok(text)
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
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
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let (cli, file) = merge(Cli::parse())?;
    let mut config = Config::default();
    if let Some(v) = cli.domain.or(file.domain) {
        config.domain = v.to_ascii_lowercase();
    }
    if let Some(v) = cli.data_dir.or(file.data_dir) {
        config.data_dir = v;
    }
    if let Some(v) = cli.registration_closed.or(file.registration_closed) {
        config.registration_open = !v;
    }
    macro_rules! set {
        ($($f:ident),*) => {$(
            if let Some(v) = cli.$f.or(file.$f) { config.$f = v; }
        )*};
    }
    set!(
        login_min,
        login_max,
        password_min,
        max_text,
        max_line,
        max_file_size,
        max_connections,
        max_blocks,
        register_burst,
        register_per_hour,
        register_prefix_burst,
        register_prefix_per_hour,
        discovery_burst,
        discovery_per_hour,
        min_free_space,
        max_pending_messages
    );
    let quota = &mut config.offer_quota;
    for (flag, file, field) in [
        (
            cli.max_open_offers,
            file.max_open_offers,
            &mut quota.per_account,
        ),
        (
            cli.max_offered_bytes,
            file.max_offered_bytes,
            &mut quota.bytes_per_account,
        ),
        (
            cli.max_open_offers_per_address,
            file.max_open_offers_per_address,
            &mut quota.per_address,
        ),
        (
            cli.max_offered_bytes_per_address,
            file.max_offered_bytes_per_address,
            &mut quota.bytes_per_address,
        ),
    ] {
        if let Some(v) = flag.or(file) {
            *field = v;
        }
    }
    if let Some(v) = dur(cli.message_ttl, &file.file_message_ttl, "message-ttl")? {
        config.message_ttl = v;
    }
    if let Some(v) = dur(
        cli.receipt_retention,
        &file.file_receipt_retention,
        "receipt-retention",
    )? {
        config.receipt_retention = v;
    }
    if let Some(v) = dur(
        cli.purge_interval,
        &file.file_purge_interval,
        "purge-interval",
    )? {
        config.purge_interval = v;
    }
    if let Some(v) = dur(cli.offer_ttl, &file.file_offer_ttl, "offer-ttl")? {
        config.offer_ttl = v;
    }
    if let Some(v) = dur(cli.login_timeout, &file.file_login_timeout, "login-timeout")? {
        config.login_timeout = v;
    }
    if let Some(v) = dur(cli.throttle_max, &file.file_throttle_max, "throttle-max")? {
        config.throttle_max = v;
    }
    if let Some(v) = dur(
        cli.relay_health_interval,
        &file.file_relay_health_interval,
        "relay-health-interval",
    )? {
        config.relay_health_interval = v;
    }
    // TLS: both files or neither (flags, environment and file merged first).
    let tls_files = match (cli.tls_cert.or(file.tls_cert), cli.tls_key.or(file.tls_key)) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        (Some(_), None) => anyhow::bail!("--tls-cert needs --tls-key"),
        (None, Some(_)) => anyhow::bail!("--tls-key needs --tls-cert"),
    };
    let tls = match &tls_files {
        Some((c, k)) => Some(Arc::new(
            msim_shared::tls::server_config(c, k).context("TLS (--tls-cert, --tls-key)")?,
        )),
        None => None,
    };
    config.tls = tls.clone();
    let mut relay_cas: Vec<PathBuf> = cli
        .relay_ca_file
        .or(file.relay_ca_file)
        .into_iter()
        .collect();
    if let Some(command) = cli.command {
        return operator_command(command, &config).await;
    }
    let listen = cli
        .listen
        .or(file.listen)
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 3214)));
    msim_chat::db::create_data_dir(&config.data_dir)
        .with_context(|| format!("creating {}", config.data_dir.display()))?;

    let stop = CancellationToken::new();
    tokio::spawn(signal(stop.clone()));

    let relays = if cli.relays.is_empty() {
        file.relays
    } else {
        cli.relays
    };
    let mut relay_task = None;
    if relays.is_empty() {
        // Embedded relay with a secret generated at first start.
        let secret = read_or_create_secret(
            &config.data_dir.join("relay.secret"),
            msim_shared::token::generate_secret_text,
        )?;
        let keyring =
            msim_shared::token::Keyring::from_secret_text(&secret).context("relay.secret")?;
        let relay_listen = cli
            .embedded_relay_listen
            .or(file.embedded_relay_listen)
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 3215)));
        let listener = tokio::net::TcpListener::bind(relay_listen)
            .await
            .with_context(|| format!("binding embedded relay on {relay_listen}"))?;
        let relay_addr = listener.local_addr()?;
        let metrics_listener = match cli
            .embedded_relay_metrics_listen
            .or(file.embedded_relay_metrics_listen)
        {
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding embedded relay metrics on {addr}"))?,
            ),
            None => None,
        };
        let mut rc = msim_relay::RelayConfig::new(config.data_dir.join("relay"), keyring);
        rc.max_file_size = config.max_file_size;
        rc.tls = tls.as_ref().map(|t| {
            let mut relay_tls = (**t).clone();
            relay_tls.alpn_protocols = vec![b"http/1.1".to_vec()];
            Arc::new(relay_tls)
        });
        let stop2 = stop.clone();
        relay_task = Some(tokio::spawn(async move {
            msim_relay::serve_with_metrics(listener, metrics_listener, rc, stop2.cancelled_owned())
                .await
        }));
        let scheme = if tls.is_some() { "https" } else { "http" };
        let url = cli
            .embedded_relay_url
            .or(file.embedded_relay_url)
            .unwrap_or_else(|| format!("{scheme}://{relay_addr}"));
        if let Some((cert, _)) = &tls_files {
            // The health checks of our own relay trust our own certificate.
            relay_cas.push(cert.clone());
        }
        config.relays = vec![url];
        config.relay_secret = secret;
        info!(%relay_addr, "embedded relay");
    } else {
        config.relays = relays;
        let file_path = cli.relay_secret_file.or(file.relay_secret_file);
        config.relay_secret = match file_path {
            Some(p) => {
                std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?
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
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    msim_chat::run(listener, config, stop.clone().cancelled_owned()).await?;
    stop.cancel();
    if let Some(t) = relay_task {
        match t.await {
            Ok(r) => r.context("embedded relay")?,
            Err(e) => anyhow::bail!("embedded relay task: {e}"),
        }
    }
    Ok(())
}
