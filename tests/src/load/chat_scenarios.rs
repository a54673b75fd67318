//! The chat scenarios of `msim-load` (connections, messages, latency, logins, soak): the
//! msim-chat servers they run on and the integrity check of every message run.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};

use super::cli::Args;
use super::report::{percentile, Report};
use super::{chat, procs, wire};

/// Runs the selected chat scenarios on the server at --chat or one started here, then the soak
/// on its own server, adding their figures to `report`.
pub async fn run_chat(
    args: &Args,
    data: &std::path::Path,
    report: &mut Report,
    fsyncs: f64,
    rtt_p50: f64,
) -> Result<()> {
    // The server: given (and left running), or started here (and stopped at the end).
    let (addr, pid, server, prefix) = match args.chat {
        Some(addr) => (addr, args.chat_pid, None, super::run_id()),
        None => {
            let server = start_chat(args, data)?;
            (server.addr, Some(server.pid()), Some(server), "load")
        }
    };
    // Further nodes of the same service (--chat-node): message runs cross them.
    let nodes: Vec<SocketAddr> = std::iter::once(addr)
        .chain(args.chat_nodes.iter().copied())
        .collect();
    if nodes.len() > 1 {
        eprintln!(
            "== {} chat nodes: each message's sender and recipient are on different nodes",
            nodes.len()
        );
    }
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
        remote: None,
    };
    if args.wants("messages") {
        eprintln!(
            "== message throughput at saturation ({} pairs, window {})",
            args.pairs, args.window
        );
        let r = chat::messages(&nodes, prefix, run(None)).await?;
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
        let r = chat::messages(&nodes, prefix, run(Some(args.rate))).await?;
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
    if args.wants("federation") {
        super::federation::run_federation(args, data, report).await?;
    }
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
pub(super) fn start_chat_in(
    args: &Args,
    chat_dir: &std::path::Path,
    extra: &[&str],
) -> Result<procs::Proc> {
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
pub async fn check_chat(addr: SocketAddr) -> Result<()> {
    let stream = tokio::time::timeout(Duration::from_secs(10), wire::connect_from(addr, None))
        .await
        .context("no connection within 10 s")??;
    let mut w = wire::frame(stream);
    let login = chat::user(super::run_id(), 0);
    tokio::time::timeout(
        Duration::from_secs(10),
        wire::register(&mut w, &login, chat::PASSWORD),
    )
    .await
    .context("no answer to REGISTER within 10 s: is it an msim-chat?")?
}

/// The soak, on its own server (started here unless --chat): the receipt retention is cut to
/// seconds so that "delivered messages leave" shows within the run, which the throughput
/// scenarios' server should not pay for.
async fn run_soak(args: &Args, data: &std::path::Path, report: &mut Report) -> Result<()> {
    let (rounds, pairs, messages) = args.soak();
    let dir = data.join("soak");
    let (addr, pid, server, data_dir, prefix) = match args.chat {
        Some(addr) => (addr, args.chat_pid, None, None, super::run_id()),
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
    let run = super::soak::SoakRun {
        rounds,
        pairs,
        messages,
        pid,
        data_dir,
    };
    super::soak::report_soak(addr, prefix, &run, &sources, report).await?;
    drop(server);
    Ok(())
}

/// Figures are worth nothing if the messages did not arrive as sent: any lost, duplicated or
/// altered message fails the run (and so the `--smoke` run of CI).
pub(super) fn check_messages(r: &chat::MessageResult) -> Result<()> {
    let i = &r.integrity;
    i.ensure()?;
    eprintln!(
        "   checked: {} acknowledged, {} delivered, none lost, duplicated or altered",
        i.acknowledged, i.delivered
    );
    Ok(())
}
