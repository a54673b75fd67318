//! msim-load: load generator and benchmark driver for mSIM.
//!
//! Starts the real `msim-chat` and `msim-relay` binaries (from the same target directory) with
//! fresh data directories, or uses servers already running at given addresses (`--chat`,
//! `--relay`), drives them with many simulated users, and reports a table (stderr/stdout) and
//! JSON. Every figure that has a natural baseline — loopback TCP throughput, disk write
//! throughput, fsyncs per second, TCP round trip — is also given as a ratio to that baseline
//! measured in the same run.

use anyhow::{Context, Result};
use clap::{CommandFactory, Parser};
use msim_tests::load::chat_scenarios::{check_chat, run_chat};
use msim_tests::load::cli::Args;
use msim_tests::load::cli_transfer::{run_cli_transfer, CliBaselines};
use msim_tests::load::relay_scenarios::{load_keyring, run_relay, RelayBaselines};
use msim_tests::load::report::Report;
use msim_tests::load::{baseline, procs, relay};

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
    let chat_scenarios = [
        "connections",
        "messages",
        "latency",
        "logins",
        "soak",
        "federation",
    ];
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
    // Only on request: it starts a PostgreSQL cluster and three sets of servers.
    if args.only.iter().any(|s| s == "cluster") {
        msim_tests::load::cluster::run_cluster(&args, &data, &mut report, fsyncs).await?;
    }
    if args.wants("relay") {
        let b = RelayBaselines {
            loopback,
            disk,
            sha,
        };
        run_relay(&args, external_relay, &data, &mut report, b).await?;
    }

    if args.wants("cli-transfer") {
        let b = CliBaselines { loopback, disk };
        run_cli_transfer(&args, &data, &mut report, b).await?;
    }

    println!("{}", report.table());
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
