//! The `cluster` scenario (`--only cluster`, never part of a default run): msim-chat's durable
//! message throughput and latency on SQLite with one node, on PostgreSQL with one node, and on
//! PostgreSQL with two nodes where every sender is on one node and its recipient on the other
//! (issue 13), in one run on one throwaway PostgreSQL cluster (msim-testkit), as ratios to each
//! other and to the fdatasync/s baseline. Skipped with a note without PostgreSQL's binaries.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use msim_testkit::postgres::PgCluster;

use super::chat_scenarios::check_messages;
use super::cli::Args;
use super::report::{percentile, Report};
use super::{chat, procs, wire};

/// One configuration's figures.
struct Figures {
    label: &'static str,
    durable: f64,
    p50: f64,
    p99: f64,
    p999: f64,
}

/// Starts `n` msim-chat nodes in `dir` on `database` (SQLite when `None`); every node gets
/// the first one's `secret.key`.
fn start_nodes(
    args: &Args,
    dir: &Path,
    database: Option<&str>,
    n: usize,
) -> Result<Vec<procs::Proc>> {
    let bin = procs::sibling_binary("msim-chat")?;
    let mut nodes: Vec<procs::Proc> = Vec::new();
    for i in 0..n {
        let data = dir.join(format!("node{i}"));
        if i > 0 {
            std::fs::create_dir_all(&data)?;
            // The first node listens before it has opened its data directory: wait for it.
            let key = dir.join("node0/secret.key");
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while !key.exists() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let listing: Vec<String> = std::fs::read_dir(dir.join("node0"))
                .map(|d| {
                    d.flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
            std::fs::copy(&key, data.join("secret.key"))
                .with_context(|| format!("sharing {} (node0 has {listing:?})", key.display()))?;
        }
        let addr = procs::free_addr()?;
        let relay_addr = procs::free_addr()?;
        let flags: Vec<String> = [
            "--listen",
            &addr.to_string(),
            "--embedded-relay-listen",
            &relay_addr.to_string(),
            "--data-dir",
            &data.display().to_string(),
            "--max-connections",
            &(args.connections + 2_000).to_string(),
            "--register-burst",
            "0",
            "--register-prefix-burst",
            "0",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let env: Vec<(&str, &str)> = database
            .map(|url| ("MSIM_CHAT_DATABASE_URL", url))
            .into_iter()
            .collect();
        nodes.push(procs::start(&bin, &flags, addr, &env)?);
    }
    Ok(nodes)
}

/// Saturation and fixed-rate runs on `nodes` (senders on the first node of each pair, their
/// recipients on the next).
async fn measure(
    args: &Args,
    label: &'static str,
    nodes: &[SocketAddr],
    prefix: &str,
) -> Result<Figures> {
    let pairs = args.pairs;
    let sources = wire::sources_for(nodes[0], args.sources);
    chat::register_users(nodes[0], prefix, 2 * pairs, &sources).await?;
    let run = |rate| chat::MessageRun {
        pairs,
        window: args.window,
        rate,
        warmup: Duration::from_secs_f64(if args.smoke { 0.2 } else { 1.0 }),
        measure: Duration::from_secs_f64(args.seconds),
        ack: true,
        remote: None,
    };
    eprintln!("== {label}: message throughput at saturation");
    let sat = chat::messages(nodes, prefix, run(None)).await?;
    check_messages(&sat)?;
    eprintln!("== {label}: latency at {} msg/s offered", args.rate);
    let fixed = chat::messages(nodes, prefix, run(Some(args.rate))).await?;
    check_messages(&fixed)?;
    Ok(Figures {
        label,
        durable: sat.delivered_per_sec,
        p50: percentile(&fixed.latencies, 50.0) * 1e3,
        p99: percentile(&fixed.latencies, 99.0) * 1e3,
        p999: percentile(&fixed.latencies, 99.9) * 1e3,
    })
}

/// Runs the three configurations and adds their figures to `report`.
pub async fn run_cluster(args: &Args, data: &Path, report: &mut Report, fsyncs: f64) -> Result<()> {
    let started = tokio::task::spawn_blocking(|| PgCluster::start("msim-load cluster")).await??;
    let Some(pg) = started else {
        eprintln!("note: cluster scenario skipped: PostgreSQL's server binaries are not installed");
        return Ok(());
    };
    let configs: [(&'static str, bool, usize); 3] = [
        ("SQLite, 1 node", false, 1),
        ("PostgreSQL, 1 node", true, 1),
        ("PostgreSQL, 2 nodes (sender and recipient apart)", true, 2),
    ];
    let mut figures = Vec::new();
    for (k, (label, postgres, n)) in configs.into_iter().enumerate() {
        let url = match postgres {
            true => Some(pg.create_database()?),
            false => None,
        };
        let dir = data.join(format!("cluster{k}"));
        let nodes = start_nodes(args, &dir, url.as_deref(), n)?;
        let addrs: Vec<SocketAddr> = nodes.iter().map(|p| p.addr).collect();
        figures.push(measure(args, label, &addrs, &format!("cl{k}u")).await?);
        drop(nodes);
    }
    let base = figures[0].durable;
    let one = figures[1].durable;
    for f in &figures {
        let goal = match f.label {
            l if l.starts_with("PostgreSQL, 1") => Some(">= 30000 msg/s"),
            _ => None,
        };
        report.add_ratio(
            "cluster",
            &format!("{}: durable msg/s", f.label),
            f.durable,
            "msg/s",
            Some(("fdatasync/s", fsyncs)),
            goal,
        );
        for (name, v) in [("p50", f.p50), ("p99", f.p99), ("p99.9", f.p999)] {
            let goal = (name == "p99" && f.label.contains("2 nodes")).then_some("<= 20 ms");
            report.add_ratio(
                "cluster",
                &format!("{}: send→deliver {name} at {} msg/s", f.label, args.rate),
                v,
                "ms",
                None,
                goal,
            );
        }
    }
    report.add(
        "cluster",
        "PostgreSQL 1 node / SQLite 1 node (durable msg/s)",
        one / base,
        "x",
    );
    report.add(
        "cluster",
        "PostgreSQL 2 nodes / PostgreSQL 1 node (durable msg/s)",
        figures[2].durable / one,
        "x",
    );
    Ok(())
}
