//! `msim-relay`: the mSIM file relay server, and `msim-relay sweep` for cron.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use msim_relay::size::ByteSize;
use msim_relay::{RelayConfig, DEFAULT_LISTEN};
use msim_shared::settings::HumanDuration;
use msim_shared::token::{generate_secret_text, Keyring};
use serde::{Deserialize, Serialize};

/// mSIM file relay: authenticated HTTP/1.1 uploads, streaming downloads, temporary storage
/// with a TTL.
///
/// Sizes accept plain bytes or units (100MiB, 1.5GB, 512k); durations are humantime
/// (90s, 5m, 24h, 7days). Every option is also an environment variable (MSIM_RELAY_*, e.g.
/// MSIM_RELAY_MAX_FILE_SIZE) and a key of the TOML file given with --config (the long name,
/// e.g. `max-file-size = "100MiB"`); flag > environment > file. With --tls-cert
/// and --tls-key it serves HTTPS (the files are read at start; a new certificate needs a
/// restart). The token secret
/// is read from --secret-file or the MSIM_RELAY_SECRET environment variable and is never
/// logged. Log level from RUST_LOG (default info).
#[derive(Parser, Debug)]
#[command(name = "msim-relay", version, about, long_about)]
struct Cli {
    /// TOML configuration file with the same keys as the long options.
    #[arg(long, global = true, value_name = "FILE", env = "MSIM_RELAY_CONFIG")]
    config: Option<PathBuf>,
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
    /// Print the options given by flags, environment and --config file, merged, as TOML
    /// (options not shown take their defaults), and exit.
    PrintConfig,
}

/// Every relay option: a flag, an `MSIM_RELAY_*` environment variable and a key of the TOML
/// file (kebab-case, as the long flag). `None` = not set at this layer.
#[derive(clap::Args, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", default, deny_unknown_fields)]
struct Opts {
    /// Address to listen on [default: 127.0.0.1:3215].
    #[arg(long, global = true, value_name = "ADDR", env = "MSIM_RELAY_LISTEN")]
    listen: Option<String>,
    /// Storage directory [default: ./relay-data].
    #[arg(long, global = true, value_name = "DIR", env = "MSIM_RELAY_DATA_DIR")]
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
    #[arg(long, global = true, value_name = "DURATION", env = "MSIM_RELAY_TTL")]
    ttl: Option<HumanDuration>,
    /// Largest accepted file [default: 100MiB].
    #[arg(
        long,
        global = true,
        value_name = "SIZE",
        env = "MSIM_RELAY_MAX_FILE_SIZE"
    )]
    max_file_size: Option<ByteSize>,
    /// Total bytes stored at once [default: 10GiB].
    #[arg(long, global = true, value_name = "SIZE", env = "MSIM_RELAY_CAPACITY")]
    capacity: Option<ByteSize>,
    /// Free-disk watermark: refuse uploads that would leave less [default: 1GiB].
    #[arg(long, global = true, value_name = "SIZE", env = "MSIM_RELAY_MIN_FREE")]
    min_free: Option<ByteSize>,
    /// Bytes of undelivered files one sender may store at once (a file downloaded to its
    /// last byte stops counting) [default: 2GiB].
    #[arg(long, global = true, value_name = "SIZE", env = "MSIM_RELAY_QUOTA")]
    quota: Option<ByteSize>,
    /// Uploads of at least this size write their data with O_DIRECT, skipping the copy into
    /// the page cache (where the file system allows it; 0 = never) [default: 8MiB].
    #[arg(
        long,
        global = true,
        value_name = "SIZE",
        env = "MSIM_RELAY_DIRECT_WRITE_MIN"
    )]
    direct_write_min: Option<ByteSize>,
    /// Interval of the built-in sweeper [default: 5m].
    #[arg(
        long,
        global = true,
        value_name = "DURATION",
        env = "MSIM_RELAY_SWEEP_INTERVAL"
    )]
    sweep_interval: Option<HumanDuration>,
    /// Sweep partial uploads with no progress for this long [default: 1h].
    #[arg(
        long,
        global = true,
        value_name = "DURATION",
        env = "MSIM_RELAY_ABANDON_AFTER"
    )]
    abandon_after: Option<HumanDuration>,
    /// Maximum simultaneous connections [default: 1024].
    #[arg(
        long,
        global = true,
        value_name = "N",
        env = "MSIM_RELAY_MAX_CONNECTIONS"
    )]
    max_connections: Option<usize>,
    /// Maximum simultaneous connections from one client address; more are closed at once
    /// (0: no limit) [default: 64].
    #[arg(
        long,
        global = true,
        value_name = "N",
        env = "MSIM_RELAY_MAX_CONNECTIONS_PER_ADDRESS"
    )]
    max_connections_per_address: Option<usize>,
    /// Maximum downloads of one transfer in progress at once; more are answered 429 until one
    /// ends (0: no limit) [default: 8].
    #[arg(
        long,
        global = true,
        value_name = "N",
        env = "MSIM_RELAY_MAX_DOWNLOADS_PER_TRANSFER"
    )]
    max_downloads_per_transfer: Option<usize>,
    /// Maximum uploads of one sender (the account a token names) in progress at once, and
    /// apart from them downloads of one sender's files from one client address (IPv6: its
    /// /64), and 8 times as many from all addresses; more are answered 429 until one ends, so
    /// one account cannot hold many connection slots (0: no limit) [default: 32].
    #[arg(
        long,
        global = true,
        value_name = "N",
        env = "MSIM_RELAY_MAX_REQUESTS_PER_SENDER"
    )]
    max_requests_per_sender: Option<usize>,
    /// Longest wait for a request head, on a new connection and on an idle keep-alive
    /// connection [default: 10s].
    #[arg(
        long,
        global = true,
        value_name = "DURATION",
        env = "MSIM_RELAY_HEADER_TIMEOUT"
    )]
    header_timeout: Option<HumanDuration>,
    /// Cut an upload whose client sends nothing, a download whose client reads nothing, or a
    /// download that waited for upload data that did not come, for this long; both stay
    /// resumable [default: 60s].
    #[arg(
        long,
        global = true,
        value_name = "DURATION",
        env = "MSIM_RELAY_BODY_IDLE_TIMEOUT"
    )]
    body_idle_timeout: Option<HumanDuration>,
    /// When every connection slot is taken, a connection whose request in progress moved
    /// fewer bytes than this over --min-rate-window is closed to make room for a new one (the
    /// transfer resumes); 0: no minimum [default: 64KiB].
    #[arg(long, global = true, value_name = "SIZE", env = "MSIM_RELAY_MIN_RATE")]
    min_rate: Option<ByteSize>,
    /// The window of --min-rate [default: 30s].
    #[arg(
        long,
        global = true,
        value_name = "DURATION",
        env = "MSIM_RELAY_MIN_RATE_WINDOW"
    )]
    min_rate_window: Option<HumanDuration>,
    /// A partial upload without progress for this long (connected or not; progress is its
    /// share of the rest at the pace that completes it before it expires) gives its reserved
    /// room to a new upload that would otherwise be refused [default: 2m].
    #[arg(
        long,
        global = true,
        value_name = "DURATION",
        env = "MSIM_RELAY_RESERVATION_IDLE"
    )]
    reservation_idle: Option<HumanDuration>,
    /// Serve GET /metrics on this separate address (keep it internal). Without it, and
    /// without --metrics-on-main-port, metrics are not served.
    #[arg(
        long,
        global = true,
        value_name = "ADDR",
        env = "MSIM_RELAY_METRICS_LISTEN"
    )]
    metrics_listen: Option<String>,
    /// Also serve GET /metrics on the transfer port, to anyone who can reach it.
    #[arg(long, global = true, env = "MSIM_RELAY_METRICS_ON_MAIN_PORT")]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    metrics_on_main_port: bool,
    /// Serve HTTPS with this certificate chain (PEM, leaf first); needs --tls-key.
    #[arg(long, global = true, value_name = "FILE", env = "MSIM_RELAY_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long, global = true, value_name = "FILE", env = "MSIM_RELAY_TLS_KEY")]
    tls_key: Option<PathBuf>,
}

fn positive(d: Duration, name: &str) -> Result<()> {
    if d.is_zero() {
        bail!("--{name} must be more than 0");
    }
    Ok(())
}

/// What `msim-relay` runs: the relay's configuration and where it listens.
struct Settings {
    /// The options laid over the defaults of [`RelayConfig::new`]. Its keyring is a throwaway
    /// one until `serve` loads the token secret (`sweep` needs none).
    config: RelayConfig,
    listen: String,
    metrics_listen: Option<String>,
    /// Certificate chain and key files, both or neither; read when serving.
    tls_files: Option<(PathBuf, PathBuf)>,
}

fn settings(opts: Opts) -> Result<Settings> {
    let data_dir = opts
        .data_dir
        .unwrap_or_else(|| PathBuf::from("./relay-data"));
    let throwaway = Keyring::from_secret_text(&generate_secret_text()).context("keyring")?;
    let mut c = RelayConfig::new(data_dir, throwaway);
    let set = |field: &mut Duration, v: Option<HumanDuration>| *field = v.map_or(*field, |v| v.0);
    set(&mut c.ttl, opts.ttl);
    set(&mut c.sweep_interval, opts.sweep_interval);
    set(&mut c.abandon_after, opts.abandon_after);
    set(&mut c.reservation_idle, opts.reservation_idle);
    set(&mut c.header_timeout, opts.header_timeout);
    set(&mut c.body_idle_timeout, opts.body_idle_timeout);
    set(&mut c.min_rate_window, opts.min_rate_window);
    positive(c.min_rate_window, "min-rate-window")?;
    positive(c.header_timeout, "header-timeout")?;
    positive(c.body_idle_timeout, "body-idle-timeout")?;
    let set = |field: &mut u64, v: Option<ByteSize>| *field = v.map_or(*field, |v| v.0);
    set(&mut c.max_file_size, opts.max_file_size);
    set(&mut c.capacity, opts.capacity);
    set(&mut c.min_free, opts.min_free);
    set(&mut c.per_sender_quota, opts.quota);
    set(&mut c.direct_write_min, opts.direct_write_min);
    set(&mut c.min_rate, opts.min_rate);
    let set = |field: &mut usize, v: Option<usize>| *field = v.unwrap_or(*field);
    set(&mut c.max_connections, opts.max_connections);
    set(
        &mut c.max_connections_per_address,
        opts.max_connections_per_address,
    );
    set(
        &mut c.max_downloads_per_transfer,
        opts.max_downloads_per_transfer,
    );
    set(&mut c.max_requests_per_sender, opts.max_requests_per_sender);
    if opts.metrics_on_main_port {
        c.metrics = msim_relay::MetricsAccess::MainPort;
    }
    let tls_files = msim_shared::settings::tls_files(opts.tls_cert, opts.tls_key)?;
    Ok(Settings {
        config: c,
        listen: opts.listen.unwrap_or_else(|| DEFAULT_LISTEN.to_owned()),
        metrics_listen: opts.metrics_listen,
        tls_files,
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
    msim_shared::logging::init("info");
    if matches!(cli.cmd, Some(Cmd::GenSecret)) {
        print!("{}", generate_secret_text());
        return Ok(());
    }
    let opts = msim_shared::settings::layer(&cli.opts, cli.config.as_deref())?;
    if matches!(cli.cmd, Some(Cmd::PrintConfig)) {
        print!("{}", toml::to_string(&opts)?);
        return Ok(());
    }
    let secret_file = opts.secret_file.clone();
    let s = settings(opts)?;
    tune_allocator();
    let rt = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    match cli.cmd {
        Some(Cmd::Sweep) => rt.block_on(sweep(s)),
        _ => rt.block_on(serve(s, secret_file.as_deref())),
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
    let dir = &s.config.data_dir;
    if !dir.join("index.sqlite").exists() {
        println!("nothing to sweep: {} has no relay index", dir.display());
        return Ok(());
    }
    let report = msim_relay::sweep_dir(
        dir,
        s.config.abandon_after,
        Arc::new(msim_shared::clock::SystemClock),
    )
    .await
    .with_context(|| format!("sweeping {}", dir.display()))?;
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

async fn serve(s: Settings, secret_file: Option<&Path>) -> Result<()> {
    let mut config = s.config;
    config.keyring = load_keyring(secret_file)?;
    if let Some((cert, key)) = &s.tls_files {
        let mut tls =
            msim_shared::tls::server_config(cert, key).context("TLS (--tls-cert, --tls-key)")?;
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        config.tls = Some(Arc::new(tls));
    }
    let listener = msim_shared::listen::bind(&s.listen)
        .await
        .with_context(|| format!("binding {}", s.listen))?;
    let metrics_listener = match &s.metrics_listen {
        Some(addr) => Some(
            msim_shared::listen::bind(addr)
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
