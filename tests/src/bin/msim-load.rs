//! msim-load: load generator and benchmark driver for mSIM.
//!
//! Starts the real `msim-chat` and `msim-relay` binaries (from the same target directory) with
//! fresh data directories, or uses servers already running at given addresses (`--chat`,
//! `--relay`), drives them with many simulated users, and reports a table (stderr/stdout) and
//! JSON. Every figure that has a natural baseline — loopback TCP throughput, disk write
//! throughput, fsyncs per second, TCP round trip — is also given as a ratio to that baseline
//! measured in the same run.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{CommandFactory, Parser};
use msim_shared::token::{generate_secret_text, Keyring};
use msim_tests::load::report::{percentile, Report};
use msim_tests::load::{baseline, chat, procs, relay, wire};

const AFTER_HELP: &str = "\
Examples:
  cargo build --release --workspace
  target/release/msim-load                 # everything, full size (minutes)
  target/release/msim-load --smoke         # every scenario, tiny, seconds
  target/release/msim-load --only messages --json out.json

Against servers that are already running (nothing is started for the scenarios they serve):
  target/release/msim-load --only messages,latency --chat 127.0.0.1:3214 \\
      --chat-pid \"$(pgrep -x msim-chat)\"
  target/release/msim-load --only relay --relay 127.0.0.1:3215 \\
      --relay-secret-file /etc/msim/relay-secret --relay-pid \"$(pgrep -x msim-relay)\" \\
      --transfer-size 104857600
  The chat server must accept REGISTER (users are named ld<run id>NNNNNN); the relay's
  --max-file-size must allow --transfer-size. Without --chat-pid / --relay-pid the server's
  RSS and CPU figures are not measured (left out of the report, with a note on stderr).";

/// Parses `host:port` (or `http://host:port/` for a relay) into the first address it
/// resolves to.
fn parse_addr(text: &str) -> Result<SocketAddr, String> {
    let hostport = text
        .strip_prefix("http://")
        .unwrap_or(text)
        .trim_end_matches('/');
    hostport
        .to_socket_addrs()
        .map_err(|e| format!("{text:?} is not a reachable host:port: {e}"))?
        .next()
        .ok_or_else(|| format!("{text:?} resolves to no address"))
}

#[derive(Parser, Debug)]
#[command(
    name = "msim-load",
    version,
    about = "Load generator and benchmark driver for msim-chat and msim-relay",
    long_about = "Load generator and benchmark driver for msim-chat and msim-relay.\n\n\
        By default it starts target/<profile>/msim-chat and msim-relay itself with fresh data \
        directories. With --chat ADDR and/or --relay ADDR it drives servers that are already \
        running instead; a server is still started here for the selected scenarios that no \
        address covers.",
    after_help = AFTER_HELP
)]
struct Args {
    /// Run every scenario at a tiny size (seconds); used by CI to keep the tool working.
    #[arg(long)]
    smoke: bool,
    /// Run only these scenarios (baseline is always run).
    #[arg(long, value_delimiter = ',', value_parser = ["connections", "messages", "latency", "logins", "soak", "relay"])]
    only: Vec<String>,
    /// Write the report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Idle authenticated connections to open.
    #[arg(long, default_value_t = 20_000)]
    connections: usize,
    /// Source addresses 127.0.0.1..=N used for client sockets.
    #[arg(long, default_value_t = 32)]
    sources: u8,
    /// Sender→recipient pairs for the message scenarios.
    #[arg(long, default_value_t = 50)]
    pairs: usize,
    /// Messages in flight per sender at saturation.
    #[arg(long, default_value_t = 64)]
    window: usize,
    /// Offered rate for the latency scenario, messages/s.
    #[arg(long, default_value_t = 10_000.0)]
    rate: f64,
    /// Seconds measured per message/login scenario (after 1 s of warm-up).
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Soak: rounds of logins + messages + acknowledgements (RSS and database size after each)
    /// [default: 40; 3 with --smoke].
    #[arg(long)]
    soak_rounds: Option<usize>,
    /// Soak: sender→recipient pairs logging in per round [default: 200; 4 with --smoke].
    #[arg(long)]
    soak_pairs: Option<usize>,
    /// Soak: messages per pair and round [default: 5].
    #[arg(long)]
    soak_messages: Option<usize>,
    /// Size of the large relayed transfer, bytes.
    #[arg(long, default_value_t = 1 << 30)]
    transfer_size: u64,
    /// Number of 100 KiB transfers on kept-alive connections.
    #[arg(long, default_value_t = 5_000)]
    small_transfers: usize,
    /// Number of concurrent 1 MiB transfers.
    #[arg(long, default_value_t = 200)]
    concurrent: usize,
    /// Kept-alive connections for the 100 KiB transfers: one run per value.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
    small_connections: Vec<usize>,
    /// Directory for server data (default: a fresh temporary directory).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Use the msim-chat already running at this address (host:port) instead of starting one.
    /// It must accept REGISTER: each run registers its own users (unique names).
    #[arg(long, value_name = "ADDR", value_parser = parse_addr)]
    chat: Option<SocketAddr>,
    /// Process id of the msim-chat at --chat (on this machine), for its RSS figures; without
    /// it they are not measured.
    #[arg(long, value_name = "PID", requires = "chat")]
    chat_pid: Option<u32>,
    /// Use the msim-relay already running at this address (host:port) instead of starting
    /// one; needs --relay-secret-file.
    #[arg(long, value_name = "ADDR", value_parser = parse_addr)]
    relay: Option<SocketAddr>,
    /// The token secret file of the relay at --relay (the file msim-relay reads with
    /// --secret-file: `kid:secret` lines, the first signs).
    #[arg(long, value_name = "PATH", requires = "relay")]
    relay_secret_file: Option<PathBuf>,
    /// Process id of the msim-relay at --relay (on this machine), for its CPU and RSS figures;
    /// without it they are not measured.
    #[arg(long, value_name = "PID", requires = "relay")]
    relay_pid: Option<u32>,
}

impl Args {
    fn wants(&self, scenario: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|s| s == scenario)
    }

    fn shrink_for_smoke(&mut self) {
        self.connections = 200;
        self.sources = 2;
        self.pairs = 4;
        self.window = 8;
        self.rate = 200.0;
        self.seconds = 0.5;
        self.transfer_size = 8 << 20;
        self.small_transfers = 20;
        self.concurrent = 8;
        // Explicit soak sizes win: `--smoke --soak-rounds 40` soaks with quick baselines.
        self.soak_rounds.get_or_insert(3);
        self.soak_pairs.get_or_insert(4);
    }

    fn soak(&self) -> (usize, usize, usize) {
        (
            self.soak_rounds.unwrap_or(40),
            self.soak_pairs.unwrap_or(200),
            self.soak_messages.unwrap_or(5),
        )
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let mut args = Args::parse();
    if args.relay.is_some() && args.relay_secret_file.is_none() {
        Args::command()
            .error(
                clap::error::ErrorKind::MissingRequiredArgument,
                "--relay ADDR needs --relay-secret-file PATH: the token secret file of that relay \
                 (the one msim-relay reads with --secret-file), to sign tokens it accepts",
            )
            .exit();
    }
    if args.smoke {
        args.shrink_for_smoke();
    }
    let chat_scenarios = ["connections", "messages", "latency", "logins", "soak"];
    let wants_chat = chat_scenarios.iter().any(|s| args.wants(s));
    // Everything about a given server is checked before the baselines, so a mistake costs
    // seconds, not a whole run.
    let external_relay = match (args.relay, &args.relay_secret_file) {
        (Some(addr), Some(file)) if args.wants("relay") => {
            let keyring = load_keyring(file)?;
            if let Some(pid) = args.relay_pid {
                procs::check_pid(pid, "msim-relay").context("--relay-pid")?;
            }
            // The largest file of the run: the big transfer, or the 1 MiB concurrent ones.
            relay::check(addr, &keyring, args.transfer_size.max(1 << 20))
                .await
                .with_context(|| format!("checking the relay at {addr} (--relay)"))?;
            Some(keyring)
        }
        (Some(_), _) => {
            eprintln!("note: --relay is ignored: the relay scenario is not selected");
            None
        }
        _ => None,
    };
    if let Some(addr) = args.chat {
        if wants_chat {
            if let Some(pid) = args.chat_pid {
                procs::check_pid(pid, "msim-chat").context("--chat-pid")?;
            }
            check_chat(addr)
                .await
                .with_context(|| format!("checking the chat server at {addr} (--chat)"))?;
        } else {
            eprintln!("note: --chat is ignored: no chat scenario is selected");
        }
    }
    // Room for every client socket here and every server socket in the children.
    let limit = procs::raise_nofile_limit(args.connections as u64 + 4_096);
    if limit < args.connections as u64 + 1_024 {
        eprintln!(
            "warning: open-file limit {limit} is too low for {} connections; lowering",
            args.connections
        );
        args.connections = (limit as usize).saturating_sub(1_024).max(1);
    }
    let tmp = tempfile::tempdir()?;
    let data = args.data_dir.clone().unwrap_or_else(|| tmp.path().into());
    std::fs::create_dir_all(&data)?;
    let mut report = Report::default();

    eprintln!("== baselines");
    let tcp_bytes = if args.smoke { 64 << 20 } else { 2 << 30 };
    let loopback = baseline::loopback_tcp(tcp_bytes).await?;
    report.add(
        "baseline",
        "loopback TCP throughput",
        loopback / 1e9,
        "GB/s",
    );
    let disk = baseline::disk_write(&data, if args.smoke { 16 << 20 } else { 1 << 30 })?;
    report.add(
        "baseline",
        "disk write throughput (+fsync)",
        disk / 1e9,
        "GB/s",
    );
    let fsyncs = baseline::fsyncs(&data, if args.smoke { 20 } else { 500 })?;
    report.add("baseline", "fdatasync per second", fsyncs, "1/s");
    let (rtts, rtt_p50) =
        baseline::loopback_round_trip(if args.smoke { 200 } else { 20_000 }).await?;
    report.add("baseline", "loopback round trips per second", rtts, "1/s");
    report.add("baseline", "loopback round trip p50", rtt_p50 * 1e3, "ms");
    let sha = baseline::sha256(if args.smoke { 64 << 20 } else { 1 << 30 });
    report.add("baseline", "SHA-256 of one stream", sha / 1e9, "GB/s");

    if wants_chat {
        run_chat(&args, &data, &mut report, fsyncs, rtt_p50).await?;
    }
    if args.wants("relay") {
        let b = RelayBaselines {
            loopback,
            disk,
            sha,
        };
        run_relay(&args, external_relay, &data, &mut report, b).await?;
    }

    println!("{}", report.table());
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

async fn run_chat(
    args: &Args,
    data: &std::path::Path,
    report: &mut Report,
    fsyncs: f64,
    rtt_p50: f64,
) -> Result<()> {
    // The server: given (and left running), or started here (and stopped at the end).
    let (addr, pid, server, prefix) = match args.chat {
        Some(addr) => (addr, args.chat_pid, None, msim_tests::load::run_id()),
        None => {
            let server = start_chat(args, data)?;
            (server.addr, Some(server.pid()), Some(server), "load")
        }
    };
    let sources = wire::sources_for(addr, args.sources);
    let users = args.connections.max(2 * args.pairs);
    eprintln!("== registering {users} users");
    chat::register_users(addr, prefix, users, &sources).await?;

    if args.wants("connections") {
        eprintln!("== {} idle authenticated connections", args.connections);
        let before = pid.and_then(procs::rss);
        let (conns, rate) = chat::open_idle(addr, prefix, args.connections, &sources, 256).await?;
        report.add(
            "connections",
            "idle authenticated connections",
            conns.len() as f64,
            "conns",
        );
        if let Some(pid) = pid {
            // Let the server settle its per-session allocations before reading RSS.
            tokio::time::sleep(Duration::from_millis(500)).await;
            match (before, procs::rss(pid)) {
                (Some(before), Some(after)) => {
                    let per = after.saturating_sub(before) as f64 / conns.len() as f64;
                    report.add_ratio(
                        "connections",
                        "server RSS per idle connection",
                        per / 1024.0,
                        "KiB",
                        None,
                        Some("<= 10 KiB"),
                    );
                    report.add(
                        "connections",
                        "server RSS with all connected",
                        after as f64 / 1048576.0,
                        "MiB",
                    );
                }
                _ => {
                    eprintln!("note: server RSS not measured: /proc/{pid}/status could not be read")
                }
            }
        } else {
            eprintln!(
                "note: server RSS per idle connection not measured: pass --chat-pid with the \
                 process id of the msim-chat at {addr}"
            );
        }
        report.add(
            "connections",
            "concurrent logins while connecting",
            rate,
            "1/s",
        );
        drop(conns);
    }

    let run = |rate| chat::MessageRun {
        pairs: args.pairs,
        window: args.window,
        rate,
        warmup: Duration::from_secs_f64(if args.smoke { 0.2 } else { 1.0 }),
        measure: Duration::from_secs_f64(args.seconds),
        ack: true,
    };
    if args.wants("messages") {
        eprintln!(
            "== message throughput at saturation ({} pairs, window {})",
            args.pairs, args.window
        );
        let r = chat::messages(addr, prefix, run(None)).await?;
        check_messages(&r)?;
        report.add_ratio(
            "messages",
            "online→online delivered, durable",
            r.delivered_per_sec,
            "msg/s",
            Some(("fdatasync/s", fsyncs)),
            Some(">= 50000 msg/s"),
        );
        report.add(
            "messages",
            "MESSAGE-SENT acknowledged",
            r.sent_per_sec,
            "msg/s",
        );
    }
    if args.wants("latency") {
        eprintln!("== latency at {} msg/s offered", args.rate);
        let r = chat::messages(addr, prefix, run(Some(args.rate))).await?;
        check_messages(&r)?;
        report.add(
            "latency",
            "delivered at fixed offered rate",
            r.delivered_per_sec,
            "msg/s",
        );
        for (name, p) in [("p50", 50.0), ("p99", 99.0), ("p99.9", 99.9)] {
            let v = percentile(&r.latencies, p);
            report.add_ratio(
                "latency",
                &format!("send→deliver {name}"),
                v * 1e3,
                "ms",
                Some(("loopback RTT p50", rtt_p50 * 1e3)),
                (name == "p99").then_some("<= 10 ms"),
            );
        }
    }
    if args.wants("logins") {
        eprintln!("== logins per second");
        let rate = chat::logins(addr, prefix, users, 32, &sources, args.seconds).await?;
        report.add(
            "logins",
            "logins per second (connect+challenge+OK)",
            rate,
            "1/s",
        );
    }
    drop(server);
    if args.wants("soak") {
        run_soak(args, data, report).await?;
    }
    Ok(())
}

/// Starts target/<profile>/msim-chat with a fresh data directory.
fn start_chat(args: &Args, data: &std::path::Path) -> Result<procs::Proc> {
    start_chat_in(args, &data.join("chat"), &[])
}

/// Starts target/<profile>/msim-chat on `chat_dir` with extra flags.
fn start_chat_in(args: &Args, chat_dir: &std::path::Path, extra: &[&str]) -> Result<procs::Proc> {
    let bin = procs::sibling_binary("msim-chat")?;
    let addr = procs::free_addr()?;
    let relay_addr = procs::free_addr()?;
    let mut flags: Vec<String> = vec![
        "--listen".into(),
        addr.to_string(),
        "--embedded-relay-listen".into(),
        relay_addr.to_string(),
        "--data-dir".into(),
        chat_dir.display().to_string(),
        "--max-connections".into(),
        (args.connections + 2_000).to_string(),
        // A benchmark registers thousands of users from a few addresses.
        "--register-burst".into(),
        "0".into(),
        "--register-prefix-burst".into(),
        "0".into(),
    ];
    flags.extend(extra.iter().map(|f| f.to_string()));
    procs::start(&bin, &flags, addr, &[])
}

/// Checks that `addr` speaks the chat protocol and accepts this run's users, by registering
/// the first of them (registered again later, which the server answers `login-taken`).
async fn check_chat(addr: SocketAddr) -> Result<()> {
    let stream = tokio::time::timeout(Duration::from_secs(10), wire::connect_from(addr, None))
        .await
        .context("no connection within 10 s")??;
    let mut w = wire::frame(stream);
    let login = chat::user(msim_tests::load::run_id(), 0);
    tokio::time::timeout(
        Duration::from_secs(10),
        wire::register(&mut w, &login, chat::PASSWORD),
    )
    .await
    .context("no answer to REGISTER within 10 s: is it an msim-chat?")?
}

/// Reads a token secret file the way msim-relay does.
fn load_keyring(path: &std::path::Path) -> Result<Keyring> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading --relay-secret-file {}", path.display()))?;
    Keyring::from_secret_text(&text).with_context(|| format!("token secret in {}", path.display()))
}

/// Baselines the relay figures are compared with, bytes/s.
struct RelayBaselines {
    loopback: f64,
    disk: f64,
    sha: f64,
}

/// Starts target/<profile>/msim-relay with a fresh data directory and a new secret, with
/// limits that let every scenario through.
fn start_relay(args: &Args, data: &std::path::Path) -> Result<(procs::Proc, Keyring)> {
    let bin = procs::sibling_binary("msim-relay")?;
    let addr = procs::free_addr()?;
    let secret = generate_secret_text();
    let keyring = Keyring::from_secret_text(&secret)?;
    let relay_dir = data.join("relay");
    let server = procs::start(
        &bin,
        &[
            "--listen".into(),
            addr.to_string(),
            "--data-dir".into(),
            relay_dir.display().to_string(),
            "--max-file-size".into(),
            (args.transfer_size.max(1 << 20)).to_string(),
            "--quota".into(),
            (u64::MAX / 4).to_string(),
            "--capacity".into(),
            (u64::MAX / 4).to_string(),
            "--min-free".into(),
            "0".into(),
            // Every load connection comes from this machine.
            "--max-connections-per-address".into(),
            "0".into(),
        ],
        addr,
        &[("MSIM_RELAY_SECRET", secret.as_str())],
    )?;
    Ok((server, keyring))
}

async fn run_relay(
    args: &Args,
    external: Option<Keyring>,
    data: &std::path::Path,
    report: &mut Report,
    b: RelayBaselines,
) -> Result<()> {
    let RelayBaselines {
        loopback,
        disk,
        sha,
    } = b;
    // The relay: given (and left running), or started here (and stopped at the end).
    let (addr, pid, server, keyring) = match (args.relay, external) {
        (Some(addr), Some(keyring)) => (addr, args.relay_pid, None, keyring),
        _ => {
            let (server, keyring) = start_relay(args, data)?;
            (server.addr, Some(server.pid()), Some(server), keyring)
        }
    };
    // A relay started here has its peak RSS from this run alone; a running one has its
    // lifetime peak, so it is reset first, and not reported if that is not allowed.
    let peak_valid = match (pid, &server) {
        (Some(_), Some(_)) => true,
        (Some(pid), None) => {
            let reset = procs::reset_peak_rss(pid);
            if !reset {
                eprintln!(
                    "note: relay peak RSS not measured: cannot reset the peak of process {pid} \
                     (/proc/{pid}/clear_refs), and its lifetime peak is not this run's"
                );
            }
            reset
        }
        (None, _) => {
            eprintln!(
                "note: relay CPU and RSS figures not measured: pass --relay-pid with the process \
                 id of the msim-relay at {addr}"
            );
            false
        }
    };
    let size = args.transfer_size;
    let gib = |b: f64| b / 1e9;
    eprintln!("== one {} MiB transfer relayed while uploading", size >> 20);
    let relay_cpu = || pid.and_then(procs::cpu_seconds);
    let cpu_before = (relay_cpu(), procs::self_cpu_seconds());
    let r = relay::relayed(addr, &keyring, size).await?;
    let cpu_after = (relay_cpu(), procs::self_cpu_seconds());
    report.add_ratio(
        "relay",
        "single transfer, download while uploading",
        gib(r),
        "GB/s",
        Some(("loopback TCP", gib(loopback))),
        Some(">= 0.5 of loopback"),
    );
    report.add_ratio(
        "relay",
        "single transfer vs one SHA-256 stream",
        gib(r),
        "GB/s",
        Some(("SHA-256 of one stream", gib(sha))),
        None,
    );
    // CPU per byte does not depend on what else shares the machine, unlike throughput; with
    // both sides' costs the CPU-bound ceiling on this many cores follows.
    let per_gb = |secs: f64| secs / (size as f64 / 1e9);
    let load_cpu = per_gb(cpu_after.1 - cpu_before.1);
    if let (Some(before), Some(after)) = (cpu_before.0, cpu_after.0) {
        let relay_cpu = per_gb(after - before);
        report.add_ratio(
            "relay",
            "relay CPU per relayed GB",
            relay_cpu,
            "core-s/GB",
            Some(("SHA-256 alone", 1.0 / gib(sha))),
            None,
        );
        report.add(
            "relay",
            "load generator CPU per relayed GB",
            load_cpu,
            "core-s/GB",
        );
        let ceiling = procs::cpus() as f64 / (relay_cpu + load_cpu);
        report.add_ratio(
            "relay",
            "CPU-bound ceiling of one relayed transfer",
            ceiling,
            "GB/s",
            Some(("loopback TCP", gib(loopback))),
            None,
        );
    } else {
        report.add(
            "relay",
            "load generator CPU per relayed GB",
            load_cpu,
            "core-s/GB",
        );
    }
    eprintln!("== upload alone, then stored download");
    let (up, down) = relay::upload_then_download(addr, &keyring, size).await?;
    report.add_ratio(
        "relay",
        "upload alone",
        gib(up),
        "GB/s",
        Some(("disk write", gib(disk))),
        Some(">= 1 GB/s"),
    );
    report.add_ratio(
        "relay",
        "stored download",
        gib(down),
        "GB/s",
        Some(("loopback TCP", gib(loopback))),
        Some(">= 1.5 GB/s"),
    );
    eprintln!(
        "== {} transfers of 100 KiB, kept-alive",
        args.small_transfers
    );
    for &conns in &args.small_connections {
        let small = relay::small(
            addr,
            &keyring,
            100 << 10,
            args.small_transfers,
            conns.max(1),
        )
        .await?;
        report.add_ratio(
            "relay",
            &format!("100 KiB transfers (upload+download), {conns} connections"),
            small.per_sec,
            "1/s",
            None,
            Some(">= 2000/s"),
        );
        report.add(
            "relay",
            &format!("100 KiB transfer p50, {conns} connections"),
            small.p50 * 1e3,
            "ms",
        );
        report.add(
            "relay",
            &format!("100 KiB transfer p99, {conns} connections"),
            small.p99 * 1e3,
            "ms",
        );
    }
    eprintln!("== {} concurrent 1 MiB transfers", args.concurrent);
    let (per_sec, bytes) = relay::concurrent(addr, &keyring, 1 << 20, args.concurrent).await?;
    report.add("relay", "concurrent 1 MiB transfers", per_sec, "1/s");
    report.add_ratio(
        "relay",
        "concurrent 1 MiB aggregate",
        gib(bytes),
        "GB/s",
        Some(("loopback TCP", gib(loopback))),
        None,
    );
    if let Some(peak) = pid.filter(|_| peak_valid).and_then(procs::peak_rss) {
        let budget = 64.0 + 0.25 * args.concurrent as f64;
        report.add_ratio(
            "relay",
            "relay peak RSS",
            peak as f64 / 1048576.0,
            "MiB",
            Some(("budget 64 MiB + 256 KiB/transfer", budget)),
            Some("ratio < 1"),
        );
    }
    drop(server);
    Ok(())
}

/// The soak, on its own server (started here unless --chat): the receipt retention is cut to
/// seconds so that "delivered messages leave" shows within the run, which the throughput
/// scenarios' server should not pay for.
async fn run_soak(args: &Args, data: &std::path::Path, report: &mut Report) -> Result<()> {
    let (rounds, pairs, messages) = args.soak();
    let dir = data.join("soak");
    let (addr, pid, server, data_dir, prefix) = match args.chat {
        Some(addr) => (addr, args.chat_pid, None, None, msim_tests::load::run_id()),
        None => {
            let flags = ["--receipt-retention", "1s", "--purge-interval", "1s"];
            let server = start_chat_in(args, &dir, &flags)?;
            (
                server.addr,
                Some(server.pid()),
                Some(server),
                Some(dir),
                "soak",
            )
        }
    };
    let sources = wire::sources_for(addr, args.sources);
    chat::register_users(addr, prefix, 2 * pairs, &sources).await?;
    let run = msim_tests::load::soak::SoakRun {
        rounds,
        pairs,
        messages,
        pid,
        data_dir,
    };
    msim_tests::load::soak::report_soak(addr, prefix, &run, &sources, report).await?;
    drop(server);
    Ok(())
}

/// Figures are worth nothing if the messages did not arrive as sent: any lost, duplicated or
/// altered message fails the run (and so the `--smoke` run of CI).
fn check_messages(r: &chat::MessageResult) -> Result<()> {
    let i = &r.integrity;
    i.ensure()?;
    eprintln!(
        "   checked: {} acknowledged, {} delivered, none lost, duplicated or altered",
        i.acknowledged, i.delivered
    );
    Ok(())
}
