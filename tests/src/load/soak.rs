//! Churn soak: rounds of logins, messages and acknowledgements, everything acknowledged, as a
//! steady population of users would make. After each round it records the server's RSS and
//! the size of its database files: under steady churn both must stay flat (delivered messages
//! leave the database, caches are bounded).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use futures::SinkExt;
use msim_shared::proto::{AckMessage, Body, Event, SendMessage};
use tokio::task::JoinSet;

use super::chat::{user, PASSWORD};
use super::procs;
use super::wire::{self, connect_from, frame, next_event};

/// Shape of a soak.
#[derive(Debug, Clone)]
pub struct SoakRun {
    /// Rounds to run.
    pub rounds: usize,
    /// Sender → recipient pairs logging in each round (users `0..pairs` send to
    /// `pairs..2*pairs`).
    pub pairs: usize,
    /// Messages per pair and round, all acknowledged by the recipient.
    pub messages: usize,
    /// The server's process id (RSS is not measured without it).
    pub pid: Option<u32>,
    /// The server's data directory (database size is not measured without it).
    pub data_dir: Option<PathBuf>,
}

/// Figures after one round.
#[derive(Debug, Clone, Copy)]
pub struct SoakRound {
    /// Server RSS, bytes.
    pub rss: Option<u64>,
    /// `msim.db` plus its WAL, bytes.
    pub db_bytes: Option<u64>,
    /// Of which the WAL (reused from its start after each checkpoint, so it stays at its
    /// high-water mark), bytes.
    pub wal_bytes: Option<u64>,
}

/// Runs the soak and returns one entry per round.
pub async fn soak(
    server: SocketAddr,
    prefix: &str,
    run: &SoakRun,
    sources: &[IpAddr],
) -> Result<Vec<SoakRound>> {
    let mut rounds = Vec::with_capacity(run.rounds);
    for round in 0..run.rounds {
        let mut tasks = JoinSet::new();
        for p in 0..run.pairs {
            let ip = sources[p % sources.len()];
            let (from, to) = (user(prefix, p), user(prefix, run.pairs + p));
            let n = run.messages;
            tasks.spawn(async move { pair(server, ip, &from, &to, round, n).await });
        }
        while let Some(r) = tasks.join_next().await {
            r??;
        }
        let figures = SoakRound {
            rss: run.pid.and_then(procs::rss),
            db_bytes: run
                .data_dir
                .as_deref()
                .map(|d| file_bytes(d, &["msim.db", "msim.db-wal"])),
            wal_bytes: run
                .data_dir
                .as_deref()
                .map(|d| file_bytes(d, &["msim.db-wal"])),
        };
        eprintln!(
            "   round {:>3}: server RSS {} MiB, database + WAL {} MiB (WAL {} MiB)",
            round + 1,
            mib(figures.rss),
            mib(figures.db_bytes),
            mib(figures.wal_bytes)
        );
        rounds.push(figures);
    }
    Ok(rounds)
}

fn mib(v: Option<u64>) -> String {
    v.map_or("?".into(), |b| format!("{:.1}", b as f64 / 1048576.0))
}

/// Total size of `files` in `dir` (missing ones count 0).
fn file_bytes(dir: &Path, files: &[&str]) -> u64 {
    files
        .iter()
        .filter_map(|f| std::fs::metadata(dir.join(f)).ok())
        .map(|m| m.len())
        .sum()
}

/// One pair's round: both log in, the sender sends `n` messages and waits for every
/// `MESSAGE-SENT`, the recipient acknowledges every delivery (as a real client does, including
/// repeats: delivery is at least once) until it has this round's `n`; then both disconnect.
async fn pair(
    server: SocketAddr,
    ip: IpAddr,
    from: &str,
    to: &str,
    round: usize,
    n: usize,
) -> Result<()> {
    let mut r = frame(connect_from(server, Some(ip)).await?);
    wire::login(&mut r, to, PASSWORD).await?;
    let mut s = frame(connect_from(server, Some(ip)).await?);
    wire::login(&mut s, from, PASSWORD).await?;
    for k in 0..n {
        let m = SendMessage {
            to: to.to_owned(),
            text: format!("soak r{round} m{k} from {from}, long enough to look like chat text"),
        };
        s.feed(m.to_packet()).await?;
    }
    s.flush().await?;
    let mut sent = 0;
    while sent < n {
        match next_event(&mut s).await? {
            Event::MessageSent(_) => sent += 1,
            Event::MessageSendFailed(f) => bail!("{from}: MESSAGE-SEND-FAILED {}", f.reason),
            _ => {}
        }
    }
    let this_round = format!("soak r{round} ");
    let mut got = std::collections::HashSet::new();
    while got.len() < n {
        if let Event::Message(m) = next_event(&mut r).await? {
            if m.text.starts_with(&this_round) {
                got.insert(m.id.clone());
            }
            r.feed(AckMessage { id: m.id }.to_packet()).await?;
        }
    }
    r.flush().await?;
    // A round trip: the acknowledgements were read before the connection closes.
    r.send(msim_shared::Packet::new("PING")).await?;
    loop {
        match next_event(&mut r).await? {
            Event::Pong(_) => return Ok(()),
            Event::Message(m) => r.send(AckMessage { id: m.id }.to_packet()).await?,
            _ => {}
        }
    }
}

/// The soak scenario: runs [`soak`] and reports RSS and database size after the first,
/// second and last rounds (the first warms caches and pools; flat means the rest stays there).
pub async fn report_soak(
    server: SocketAddr,
    prefix: &str,
    run: &SoakRun,
    sources: &[IpAddr],
    report: &mut super::report::Report,
) -> Result<()> {
    eprintln!(
        "== soak: {} rounds of {} pairs logging in, {} messages each, all acknowledged",
        run.rounds, run.pairs, run.messages
    );
    let rounds = soak(server, prefix, run, sources).await?;
    let (Some(first), Some(last)) = (rounds.first(), rounds.last()) else {
        return Ok(());
    };
    let second = rounds.get(1).unwrap_or(first);
    let mib = |b: u64| b as f64 / 1048576.0;
    for (name, a, b, c) in [
        ("server RSS", first.rss, second.rss, last.rss),
        (
            "database + WAL",
            first.db_bytes,
            second.db_bytes,
            last.db_bytes,
        ),
    ] {
        if let (Some(a), Some(b), Some(c)) = (a, b, c) {
            report.add("soak", &format!("{name} after round 1"), mib(a), "MiB");
            report.add("soak", &format!("{name} after round 2"), mib(b), "MiB");
            report.add(
                "soak",
                &format!("{name} after the last round"),
                mib(c),
                "MiB",
            );
        } else {
            eprintln!("note: soak {name} not measured (server not started here, or no --chat-pid)");
        }
    }
    Ok(())
}
