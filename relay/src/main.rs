//! `msim-relay`: the mSIM file relay server, and `msim-relay sweep` for cron.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use msim_relay::size::parse_size;
use msim_relay::{RelayConfig, DEFAULT_LISTEN};
use msim_shared::token::{generate_secret_text, Keyring};
use serde::Deserialize;

/// mSIM file relay: authenticated HTTP/1.1 uploads, streaming downloads, temporary storage
/// with a TTL.
///
/// Sizes accept plain bytes or units (100MiB, 1.5GB, 512k); durations are humantime
/// (90s, 5m, 24h, 7days). Options can also come from a TOML file (--config) with the same
/// names as keys (e.g. `max-file-size = "100MiB"`); command-line flags win. With --tls-cert
/// and --tls-key it serves HTTPS (the files are read at start; a new certificate needs a
/// restart). The token secret
/// is read from --secret-file or the MSIM_RELAY_SECRET environment variable and is never
/// logged. Log level from RUST_LOG (default info).
#[derive(Parser, Debug)]
#[command(name = "msim-relay", version, about, long_about)]
struct Cli {
    #[command(flatten)]
    opts: Opts,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the relay (the default when no subcommand is given).
    Serve,
    /// Run one sweep of expired blobs and abandoned uploads, print what was removed, exit.
    /// Safe while a relay serves from the same data directory (for cron).
    Sweep,
    /// Print a fresh random secret in the secret-file format (save it with umask 077).
    GenSecret,
}

#[derive(clap::Args, Debug, Default)]
struct Opts {
    /// TOML configuration file with the same keys as the long options.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:3215].
    #[arg(long, global = true, value_name = "ADDR")]
    listen: Option<String>,
    /// Storage directory [default: ./relay-data].
    #[arg(long, global = true, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// File with the token secret (`kid:secret` per line, the first signs). Without it the
    /// MSIM_RELAY_SECRET environment variable holds the secret text.
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        env = "MSIM_RELAY_SECRET_FILE"
    )]
    secret_file: Option<PathBuf>,
    /// How long an upload is kept [default: 24h].
    #[arg(long, global = true, value_name = "DURATION")]
    ttl: Option<String>,
    /// Largest accepted file [default: 100MiB].
    #[arg(long, global = true, value_name = "SIZE")]
    max_file_size: Option<String>,
    /// Total bytes stored at once [default: 10GiB].
    #[arg(long, global = true, value_name = "SIZE")]
    capacity: Option<String>,
    /// Free-disk watermark: refuse uploads that would leave less [default: 1GiB].
    #[arg(long, global = true, value_name = "SIZE")]
    min_free: Option<String>,
    /// Bytes one sender may store at once [default: 1GiB].
    #[arg(long, global = true, value_name = "SIZE")]
    quota: Option<String>,
    /// Interval of the built-in sweeper [default: 5m].
    #[arg(long, global = true, value_name = "DURATION")]
    sweep_interval: Option<String>,
    /// Sweep partial uploads with no progress for this long [default: 1h].
    #[arg(long, global = true, value_name = "DURATION")]
    abandon_after: Option<String>,
    /// Maximum simultaneous connections [default: 1024].
    #[arg(long, global = true, value_name = "N")]
    max_connections: Option<usize>,
    /// Maximum simultaneous connections from one client address; more are closed at once
    /// (0: no limit) [default: 64].
    #[arg(long, global = true, value_name = "N")]
    max_connections_per_address: Option<usize>,
    /// Longest wait for a request head, on a new connection and on an idle keep-alive
    /// connection [default: 10s].
    #[arg(long, global = true, value_name = "DURATION")]
    header_timeout: Option<String>,
    /// Cut an upload whose client sends nothing, or a download whose client reads nothing,
    /// for this long; the upload stays resumable [default: 60s].
    #[arg(long, global = true, value_name = "DURATION")]
    body_idle_timeout: Option<String>,
    /// A partial upload without progress (and no connection) for this long gives its
    /// reserved room to a new upload that would otherwise be refused [default: 2m].
    #[arg(long, global = true, value_name = "DURATION")]
    reservation_idle: Option<String>,
    /// Serve GET /metrics on this separate address (keep it internal). Without it, and
    /// without --metrics-on-main-port, metrics are not served.
    #[arg(long, global = true, value_name = "ADDR")]
    metrics_listen: Option<String>,
    /// Also serve GET /metrics on the transfer port, to anyone who can reach it.
    #[arg(long, global = true)]
    metrics_on_main_port: bool,
    /// Serve HTTPS with this certificate chain (PEM, leaf first); needs --tls-key.
    #[arg(long, global = true, value_name = "FILE", env = "MSIM_RELAY_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long, global = true, value_name = "FILE", env = "MSIM_RELAY_TLS_KEY")]
    tls_key: Option<PathBuf>,
}

/// A size in the config file: an integer or a string with a unit.
#[derive(Deserialize, Debug, Clone)]
#[serde(untagged)]
enum SizeValue {
    Int(u64),
    Text(String),
}

impl SizeValue {
    fn text(&self) -> String {
        match self {
            SizeValue::Int(n) => n.to_string(),
            SizeValue::Text(s) => s.clone(),
        }
    }
}

#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    data_dir: Option<PathBuf>,
    secret_file: Option<PathBuf>,
    ttl: Option<String>,
    max_file_size: Option<SizeValue>,
    capacity: Option<SizeValue>,
    min_free: Option<SizeValue>,
    quota: Option<SizeValue>,
    sweep_interval: Option<String>,
    abandon_after: Option<String>,
    max_connections: Option<usize>,
    max_connections_per_address: Option<usize>,
    header_timeout: Option<String>,
    body_idle_timeout: Option<String>,
    reservation_idle: Option<String>,
    metrics_listen: Option<String>,
    metrics_on_main_port: Option<bool>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
}

/// Flags merged over the config file.
struct Settings {
    listen: String,
    data_dir: PathBuf,
    secret_file: Option<PathBuf>,
    ttl: Duration,
    max_file_size: u64,
    capacity: Option<u64>,
    min_free: Option<u64>,
    quota: Option<u64>,
    sweep_interval: Duration,
    abandon_after: Duration,
    max_connections: Option<usize>,
    max_connections_per_address: usize,
    header_timeout: Duration,
    body_idle_timeout: Duration,
    reservation_idle: Duration,
    metrics_listen: Option<String>,
    metrics_on_main_port: bool,
    /// Certificate chain and key files, both or neither.
    tls: Option<(PathBuf, PathBuf)>,
}

fn duration(name: &str, v: Option<String>, default: Duration) -> Result<Duration> {
    match v {
        None => Ok(default),
        Some(s) => humantime::parse_duration(&s).with_context(|| format!("--{name} {s:?}")),
    }
}

fn positive(d: Duration, name: &str) -> Result<Duration> {
    if d.is_zero() {
        bail!("--{name} must be more than 0");
    }
    Ok(d)
}

fn size(name: &str, v: Option<String>) -> Result<Option<u64>> {
    v.map(|s| parse_size(&s).map_err(|e| anyhow::anyhow!("--{name}: {e}")))
        .transpose()
}

fn settings(opts: Opts) -> Result<Settings> {
    let file = match &opts.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading config file {}", path.display()))?;
            toml::from_str::<FileConfig>(&text)
                .with_context(|| format!("parsing config file {}", path.display()))?
        }
        None => FileConfig::default(),
    };
    let sz = |flag: Option<String>, file: Option<SizeValue>| flag.or(file.map(|v| v.text()));
    Ok(Settings {
        listen: opts
            .listen
            .or(file.listen)
            .unwrap_or_else(|| DEFAULT_LISTEN.to_owned()),
        data_dir: opts
            .data_dir
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from("./relay-data")),
        secret_file: opts.secret_file.or(file.secret_file),
        ttl: duration("ttl", opts.ttl.or(file.ttl), msim_relay::DEFAULT_TTL)?,
        max_file_size: size("max-file-size", sz(opts.max_file_size, file.max_file_size))?
            .unwrap_or(msim_relay::DEFAULT_MAX_FILE_SIZE),
        capacity: size("capacity", sz(opts.capacity, file.capacity))?,
        min_free: size("min-free", sz(opts.min_free, file.min_free))?,
        quota: size("quota", sz(opts.quota, file.quota))?,
        sweep_interval: duration(
            "sweep-interval",
            opts.sweep_interval.or(file.sweep_interval),
            Duration::from_secs(300),
        )?,
        abandon_after: duration(
            "abandon-after",
            opts.abandon_after.or(file.abandon_after),
            Duration::from_secs(3600),
        )?,
        max_connections: opts.max_connections.or(file.max_connections),
        max_connections_per_address: opts
            .max_connections_per_address
            .or(file.max_connections_per_address)
            .unwrap_or(msim_relay::DEFAULT_MAX_CONNECTIONS_PER_ADDRESS),
        header_timeout: positive(
            duration(
                "header-timeout",
                opts.header_timeout.or(file.header_timeout),
                msim_relay::DEFAULT_HEADER_TIMEOUT,
            )?,
            "header-timeout",
        )?,
        body_idle_timeout: positive(
            duration(
                "body-idle-timeout",
                opts.body_idle_timeout.or(file.body_idle_timeout),
                msim_relay::DEFAULT_BODY_IDLE_TIMEOUT,
            )?,
            "body-idle-timeout",
        )?,
        reservation_idle: duration(
            "reservation-idle",
            opts.reservation_idle.or(file.reservation_idle),
            msim_relay::DEFAULT_RESERVATION_IDLE,
        )?,
        metrics_listen: opts.metrics_listen.or(file.metrics_listen),
        metrics_on_main_port: opts.metrics_on_main_port
            || file.metrics_on_main_port.unwrap_or(false),
        tls: match (
            opts.tls_cert.or(file.tls_cert),
            opts.tls_key.or(file.tls_key),
        ) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            (Some(_), None) => bail!("--tls-cert needs --tls-key"),
            (None, Some(_)) => bail!("--tls-key needs --tls-cert"),
        },
    })
}

fn load_keyring(secret_file: Option<&Path>) -> Result<Keyring> {
    let text = match secret_file {
        Some(p) => std::fs::read_to_string(p)
            .with_context(|| format!("reading secret file {}", p.display()))?,
        None => match std::env::var("MSIM_RELAY_SECRET") {
            Ok(t) if !t.trim().is_empty() => t,
            _ => bail!(
                "no token secret: pass --secret-file PATH or set MSIM_RELAY_SECRET \
                 (generate one with `msim-relay gen-secret`)"
            ),
        },
    };
    Keyring::from_secret_text(&text).context("token secret")
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    if matches!(cli.cmd, Some(Cmd::GenSecret)) {
        print!("{}", generate_secret_text());
        return Ok(());
    }
    let s = settings(cli.opts)?;
    tune_allocator();
    let rt = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    match cli.cmd {
        Some(Cmd::Sweep) => rt.block_on(sweep(s)),
        _ => rt.block_on(serve(s)),
    }
}

/// Keep transfer buffers (hundreds of KiB, allocated and freed for every chunk) in the
/// allocator's heap instead of fresh `mmap`s: each fresh mapping costs page faults and zeroing
/// on every chunk (about a tenth of the CPU time of a relayed transfer). glibc only; the
/// `MALLOC_MMAP_THRESHOLD_` / `MALLOC_TRIM_THRESHOLD_` environment variables still win.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() {
            // SAFETY: mallopt only changes allocator parameters; called before other threads
            // start allocating (the runtime is not built yet).
            unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20) };
        }
        if std::env::var_os("MALLOC_TRIM_THRESHOLD_").is_none() {
            // SAFETY: as above.
            unsafe { libc::mallopt(libc::M_TRIM_THRESHOLD, 32 << 20) };
        }
    }
}

async fn sweep(s: Settings) -> Result<()> {
    if !s.data_dir.join("index.sqlite").exists() {
        println!(
            "nothing to sweep: {} has no relay index",
            s.data_dir.display()
        );
        return Ok(());
    }
    let report = msim_relay::sweep_dir(
        &s.data_dir,
        s.abandon_after,
        Arc::new(msim_shared::clock::SystemClock),
    )
    .await
    .with_context(|| format!("sweeping {}", s.data_dir.display()))?;
    println!(
        "removed_blobs={} removed_bytes={} removed_partials={} removed_tombstones={} tombstones={}",
        report.removed_blobs,
        report.removed_bytes,
        report.removed_partials,
        report.removed_tombstones,
        report.tombstones
    );
    Ok(())
}

async fn serve(s: Settings) -> Result<()> {
    let keyring = load_keyring(s.secret_file.as_deref())?;
    let mut config = RelayConfig::new(s.data_dir, keyring);
    config.ttl = s.ttl;
    config.max_file_size = s.max_file_size;
    if let Some(v) = s.capacity {
        config.capacity = v;
    }
    if let Some(v) = s.min_free {
        config.min_free = v;
    }
    if let Some(v) = s.quota {
        config.per_sender_quota = v;
    }
    if let Some(v) = s.max_connections {
        config.max_connections = v;
    }
    config.sweep_interval = s.sweep_interval;
    config.abandon_after = s.abandon_after;
    config.max_connections_per_address = s.max_connections_per_address;
    config.header_timeout = s.header_timeout;
    config.body_idle_timeout = s.body_idle_timeout;
    config.reservation_idle = s.reservation_idle;
    if s.metrics_on_main_port {
        config.metrics = msim_relay::MetricsAccess::MainPort;
    }
    if let Some((cert, key)) = &s.tls {
        let mut tls =
            msim_shared::tls::server_config(cert, key).context("TLS (--tls-cert, --tls-key)")?;
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        config.tls = Some(Arc::new(tls));
    }
    let listener = tokio::net::TcpListener::bind(&s.listen)
        .await
        .with_context(|| format!("binding {}", s.listen))?;
    let metrics_listener = match &s.metrics_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding --metrics-listen {addr}"))?,
        ),
        None => None,
    };
    msim_relay::serve_with_metrics(listener, metrics_listener, config, shutdown_signal())
        .await
        .context("relay failed")?;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT received"),
        () = term => tracing::info!("SIGTERM received"),
    }
}
