//! The command line of `msim-load`: its options, their `--smoke` sizes and soak defaults.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

use anyhow::Result;
use clap::Parser;

const AFTER_HELP: &str = "\
Examples:
  cargo build --release --workspace
  target/release/msim-load                 # everything, full size (minutes)
  target/release/msim-load --smoke         # every scenario, tiny, seconds
  target/release/msim-load --only messages --json out.json
  target/release/msim-load --only cluster  # SQLite vs PostgreSQL 1 and 2 nodes (never by default)

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
pub struct Args {
    /// Run every scenario at a tiny size (seconds); used by CI to keep the tool working.
    #[arg(long)]
    pub smoke: bool,
    /// Run only these scenarios (baseline is always run). `cluster` runs only when named: it
    /// starts a throwaway PostgreSQL (its server binaries must be installed).
    #[arg(long, value_delimiter = ',', value_parser = ["connections", "messages", "latency", "logins", "soak", "federation", "relay", "cli-transfer", "cluster"])]
    pub only: Vec<String>,
    /// Write the report as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Idle authenticated connections to open.
    #[arg(long, default_value_t = 20_000)]
    pub connections: usize,
    /// Source addresses 127.0.0.1..=N used for client sockets.
    #[arg(long, default_value_t = 32)]
    pub sources: u8,
    /// Sender→recipient pairs for the message scenarios.
    #[arg(long, default_value_t = 50)]
    pub pairs: usize,
    /// Messages in flight per sender at saturation.
    #[arg(long, default_value_t = 64)]
    pub window: usize,
    /// Offered rate for the latency scenario, messages/s.
    #[arg(long, default_value_t = 10_000.0)]
    pub rate: f64,
    /// Seconds measured per message/login scenario (after 1 s of warm-up).
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    /// Soak: rounds of logins + messages + acknowledgements (RSS and database size after each)
    /// [default: 40; 3 with --smoke].
    #[arg(long)]
    pub soak_rounds: Option<usize>,
    /// Soak: sender→recipient pairs logging in per round [default: 200; 4 with --smoke].
    #[arg(long)]
    pub soak_pairs: Option<usize>,
    /// Soak: messages per pair and round [default: 5].
    #[arg(long)]
    pub soak_messages: Option<usize>,
    /// Size of the large relayed transfer, bytes.
    #[arg(long, default_value_t = 1 << 30)]
    pub transfer_size: u64,
    /// Number of 100 KiB transfers on kept-alive connections.
    #[arg(long, default_value_t = 5_000)]
    pub small_transfers: usize,
    /// Number of concurrent 1 MiB transfers.
    #[arg(long, default_value_t = 200)]
    pub concurrent: usize,
    /// Kept-alive connections for the 100 KiB transfers: one run per value.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
    pub small_connections: Vec<usize>,
    /// cli-transfer: pictures of 200 KB sent one after the other (after one warm-up picture).
    #[arg(long, default_value_t = 50)]
    pub pictures: usize,
    /// cli-transfer: the `msim` program on both sides [default: target/<profile>/msim]; give
    /// an older build to compare.
    #[arg(long, value_name = "PATH")]
    pub msim: Option<PathBuf>,
    /// cli-transfer: a magic-wormhole transit relay (`twistd transitrelay`, PyPI
    /// magic-wormhole-transit-relay) at host:port, to compare with a plain piping relay.
    #[arg(long, value_name = "ADDR", value_parser = parse_addr)]
    pub transit_relay: Option<SocketAddr>,
    /// Directory for server data (default: a fresh temporary directory).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Use the msim-chat already running at this address (host:port) instead of starting one.
    /// It must accept REGISTER: each run registers its own users (unique names).
    #[arg(long, value_name = "ADDR", value_parser = parse_addr)]
    pub chat: Option<SocketAddr>,
    /// Another node of the same service as --chat (repeatable; e.g. msim-chat nodes on one
    /// PostgreSQL): the message and latency runs put each sender on one node and its
    /// recipient on the next, so every message crosses nodes. Users register at --chat.
    #[arg(long = "chat-node", value_name = "ADDR", value_parser = parse_addr, requires = "chat")]
    pub chat_nodes: Vec<SocketAddr>,
    /// Process id of the msim-chat at --chat (on this machine), for its RSS figures; without
    /// it they are not measured.
    #[arg(long, value_name = "PID", requires = "chat")]
    pub chat_pid: Option<u32>,
    /// Use the msim-relay already running at this address (host:port) instead of starting
    /// one; needs --relay-secret-file.
    #[arg(long, value_name = "ADDR", value_parser = parse_addr)]
    pub relay: Option<SocketAddr>,
    /// The token secret file of the relay at --relay (the file msim-relay reads with
    /// --secret-file: `kid:secret` lines, the first signs).
    #[arg(long, value_name = "PATH", requires = "relay")]
    pub relay_secret_file: Option<PathBuf>,
    /// Process id of the msim-relay at --relay (on this machine), for its CPU and RSS figures;
    /// without it they are not measured.
    #[arg(long, value_name = "PID", requires = "relay")]
    pub relay_pid: Option<u32>,
}

impl Args {
    pub fn wants(&self, scenario: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|s| s == scenario)
    }

    pub fn shrink_for_smoke(&mut self) {
        self.connections = 200;
        self.sources = 2;
        self.pairs = 4;
        self.window = 8;
        self.rate = 200.0;
        self.seconds = 0.5;
        self.transfer_size = 8 << 20;
        self.small_transfers = 20;
        // Above the relay's default `--max-requests-per-sender` (32), so that a smoke run
        // shows the concurrent scenario still spreads its transfers over many senders.
        self.concurrent = 40;
        self.pictures = 5;
        // Explicit soak sizes win: `--smoke --soak-rounds 40` soaks with quick baselines.
        self.soak_rounds.get_or_insert(3);
        self.soak_pairs.get_or_insert(4);
    }

    pub fn soak(&self) -> (usize, usize, usize) {
        (
            self.soak_rounds.unwrap_or(40),
            self.soak_pairs.unwrap_or(200),
            self.soak_messages.unwrap_or(5),
        )
    }
}
