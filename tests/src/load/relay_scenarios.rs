//! The relay scenarios of `msim-load`: the msim-relay they run on, its token keyring and the
//! baselines its figures are compared with.

use anyhow::{Context, Result};
use msim_shared::token::{generate_secret_text, Keyring};

use super::cli::Args;
use super::report::Report;
use super::{procs, relay};

/// Reads a token secret file the way msim-relay does.
pub fn load_keyring(path: &std::path::Path) -> Result<Keyring> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading --relay-secret-file {}", path.display()))?;
    Keyring::from_secret_text(&text).with_context(|| format!("token secret in {}", path.display()))
}

/// Baselines the relay figures are compared with, bytes/s.
pub struct RelayBaselines {
    pub loopback: f64,
    pub disk: f64,
    pub sha: f64,
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

/// Runs the relay scenarios on the relay at --relay (`external`: its keyring) or one started
/// here, adding their figures to `report`.
pub async fn run_relay(
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
    eprintln!(
        "== one {} MiB transfer relayed while uploading, Msim-Sha256: skip",
        size >> 20
    );
    let cpu_before = relay_cpu();
    let unhashed = relay::relayed_hashing(addr, &keyring, size, false).await?;
    report.add_ratio(
        "relay",
        "single transfer, Msim-Sha256: skip",
        gib(unhashed),
        "GB/s",
        Some(("loopback TCP", gib(loopback))),
        None,
    );
    if let (Some(before), Some(after)) = (cpu_before, relay_cpu()) {
        report.add_ratio(
            "relay",
            "relay CPU per relayed GB, Msim-Sha256: skip",
            per_gb(after - before),
            "core-s/GB",
            None,
            Some("<= 1.0"),
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
    // What the relay spends per transfer: CPU time and thread hand-overs (context switches),
    // figures that depend much less on what else runs on the machine than throughput does.
    type Costs = Option<(Option<f64>, Option<u64>)>;
    let relay_costs =
        || -> Costs { pid.map(|p| (procs::cpu_seconds(p), procs::context_switches(p))) };
    let add_costs = |report: &mut Report, what: &str, before: Costs, after: Costs, n: usize| {
        let (Some((Some(c0), Some(s0))), Some((Some(c1), Some(s1)))) = (before, after) else {
            return;
        };
        let n = n.max(1) as f64;
        report.add(
            "relay",
            &format!("relay CPU per {what}"),
            (c1 - c0) / n * 1e3,
            "ms",
        );
        report.add(
            "relay",
            &format!("relay context switches per {what}"),
            s1.saturating_sub(s0) as f64 / n,
            "1",
        );
    };
    for &conns in &args.small_connections {
        let before = relay_costs();
        let small = relay::small(
            addr,
            &keyring,
            100 << 10,
            args.small_transfers,
            conns.max(1),
        )
        .await?;
        add_costs(
            report,
            &format!("100 KiB transfer, {conns} connections"),
            before,
            relay_costs(),
            args.small_transfers,
        );
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
    let before = relay_costs();
    let (per_sec, bytes) = relay::concurrent(addr, &keyring, 1 << 20, args.concurrent).await?;
    add_costs(
        report,
        "concurrent 1 MiB transfer",
        before,
        relay_costs(),
        args.concurrent,
    );
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
