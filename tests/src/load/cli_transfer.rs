//! The `cli-transfer` scenario: what a user feels, from the start of `msim send-file` to a
//! verified file on the recipient's disk, with the real `msim` binary on both sides (a
//! `msim receive --accept-all` waiting) through a real msim-chat and msim-relay. One large file
//! and a batch of small pictures, reported next to the same run's loopback and disk-write
//! baselines, the relay alone (no client programs) and, when given, a plain piping relay
//! (magic-wormhole's transit relay, which stores and hashes nothing).

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use msim_shared::token::{generate_secret_text, Keyring};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

use super::cli::Args;
use super::report::{percentile, Report};
use super::{chat, content, procs, relay};

/// Size of each picture of the batch.
const PICTURE: u64 = 200_000;
/// The longest wait for one file to arrive.
const FILE_TIMEOUT: Duration = Duration::from_secs(300);

/// Baselines of the same run, bytes/s.
pub struct CliBaselines {
    pub loopback: f64,
    pub disk: f64,
}

/// A `msim receive --accept-all --json` and the lines it prints, each with the time it came.
struct Receiver {
    child: Child,
    lines: mpsc::Receiver<(Instant, serde_json::Value)>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Receiver {
    /// Waits for the `received` line of `filename`; its time, and checks it is verified with
    /// the expected SHA-256.
    fn wait_for(&mut self, filename: &str, sha256: &str) -> Result<Instant> {
        let deadline = Instant::now() + FILE_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let (at, line) = match self.lines.recv_timeout(left) {
                Ok(got) => got,
                Err(_) => bail!("msim receive: no file {filename} within {FILE_TIMEOUT:?}"),
            };
            if line["event"] != "received" {
                bail!("msim receive printed {line}");
            }
            if line["filename"] != filename {
                continue;
            }
            if line["verified"] != true || line["sha256"] != sha256 {
                bail!("{filename} arrived unverified or altered: {line}");
            }
            if let Some(path) = line["path"].as_str() {
                // Room on disk for the next run; the figure is taken already.
                let _ = std::fs::remove_file(path);
            }
            return Ok(at);
        }
    }
}

/// The `msim` command with the server, credentials and an empty home (no config file).
fn msim(bin: &Path, server: SocketAddr, home: &Path, login: &str) -> Command {
    let mut cmd = Command::new(bin);
    cmd.arg("--server")
        .arg(server.to_string())
        .args(["--login", login, "--password", chat::PASSWORD])
        .env_remove("MSIM_LOGIN")
        .env_remove("MSIM_PASSWORD")
        .env_remove("MSIM_SERVER")
        .env_remove("MSIM_CONFIG")
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join("xdg"))
        .stdin(Stdio::null());
    cmd
}

/// Writes the generated file of `size` bytes to `path`; its SHA-256.
fn write_file(path: &Path, size: u64, offset: u64) -> Result<String> {
    use sha2::{Digest, Sha256};
    let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let mut h = Sha256::new();
    let mut pos = 0;
    while pos < size {
        let n = (size - pos).min(1 << 20) as usize;
        let piece = content::piece(offset + pos, n);
        h.update(&piece);
        f.write_all(&piece)?;
        pos += n as u64;
    }
    f.flush()?;
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Who sends, who receives, and how to run `msim` for them.
struct Users {
    bin: PathBuf,
    server: SocketAddr,
    home: PathBuf,
    sender: String,
    recipient: String,
}

/// One `msim send-file` to the recipient, timed from its start to the recipient's verified
/// file; (end to end, the sender's own run time).
fn send_one(
    users: &Users,
    receiver: &mut Receiver,
    file: &Path,
    sha256: &str,
) -> Result<(Duration, Duration)> {
    let name = file
        .file_name()
        .and_then(|n| n.to_str())
        .context("file name")?;
    let start = Instant::now();
    let out = msim(&users.bin, users.server, &users.home, &users.sender)
        .args(["send-file", &users.recipient])
        .arg(file)
        .args(["--json", "--wait", "300"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .context("running msim send-file")?;
    let sender = start.elapsed();
    if !out.status.success() {
        bail!(
            "msim send-file {name}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let arrived = receiver.wait_for(name, sha256)?;
    Ok((arrived.saturating_duration_since(start), sender))
}

/// Starts msim-relay (no quota in the way) and msim-chat using it; (chat, relay, keyring).
fn start_servers(args: &Args, data: &Path) -> Result<(procs::Proc, procs::Proc, Keyring)> {
    let secret = generate_secret_text();
    let keyring = Keyring::from_secret_text(&secret)?;
    let relay_addr = procs::free_addr()?;
    let relay = procs::start(
        &procs::sibling_binary("msim-relay")?,
        &[
            "--listen".into(),
            relay_addr.to_string(),
            "--data-dir".into(),
            data.join("relay").display().to_string(),
            "--max-file-size".into(),
            args.transfer_size.max(1 << 20).to_string(),
            "--quota".into(),
            (u64::MAX / 4).to_string(),
            "--capacity".into(),
            (u64::MAX / 4).to_string(),
            "--min-free".into(),
            "0".into(),
        ],
        relay_addr,
        &[("MSIM_RELAY_SECRET", secret.as_str())],
    )?;
    let chat_addr = procs::free_addr()?;
    let chat = procs::start(
        &procs::sibling_binary("msim-chat")?,
        &[
            "--listen".into(),
            chat_addr.to_string(),
            "--relay".into(),
            format!("http://{relay_addr}"),
            "--data-dir".into(),
            data.join("chat").display().to_string(),
            "--max-file-size".into(),
            args.transfer_size.max(1 << 20).to_string(),
            // Accepted offers count for 10 minutes; the batch sends more than the default 16.
            "--max-open-offers".into(),
            (args.pictures + 16).to_string(),
            "--max-open-offers-per-address".into(),
            (args.pictures + 16).to_string(),
        ],
        chat_addr,
        &[("MSIM_RELAY_SECRET", secret.as_str())],
    )?;
    Ok((chat, relay, keyring))
}

/// Starts `msim receive --accept-all --json` as the recipient, saving into `out`.
fn start_receiver(users: &Users, out: &Path) -> Result<Receiver> {
    let mut child = msim(&users.bin, users.server, &users.home, &users.recipient)
        .args(["receive", "--accept-all", "--json", "--out"])
        .arg(out)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting msim receive")?;
    let stdout = child.stdout.take().context("stdout")?;
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let at = Instant::now();
            let value = serde_json::from_str(&line)
                .unwrap_or_else(|_| serde_json::Value::String(line.clone()));
            if tx.send((at, value)).is_err() {
                break;
            }
        }
    });
    Ok(Receiver { child, lines })
}

/// Runs the scenario with `args.msim` (or target/<profile>/msim) on both sides.
pub async fn run_cli_transfer(
    args: &Args,
    data: &Path,
    report: &mut Report,
    b: CliBaselines,
) -> Result<()> {
    let bin = match &args.msim {
        Some(path) => path.clone(),
        None => procs::sibling_binary("msim")?,
    };
    let data = data.join("cli-transfer");
    let home = data.join("home");
    let files = data.join("files");
    let out = data.join("received");
    for dir in [&home, &files, &out] {
        std::fs::create_dir_all(dir)?;
    }
    let (chat_server, relay_server, keyring) = start_servers(args, &data)?;
    let server = chat_server.addr;
    chat::register_users(server, "clitx", 2, &["127.0.0.1".parse().expect("address")]).await?;
    let users = Users {
        bin: bin.clone(),
        server,
        home: home.clone(),
        sender: chat::user("clitx", 0),
        recipient: chat::user("clitx", 1),
    };
    let size = args.transfer_size;
    eprintln!(
        "== msim send-file → msim receive: {} MiB and {} pictures of 200 KB ({})",
        size >> 20,
        args.pictures,
        bin.display()
    );
    let big = files.join("big.bin");
    let big_sha = write_file(&big, size, 0)?;
    let pictures: Vec<(PathBuf, String)> = (0..=args.pictures)
        .map(|i| {
            let path = files.join(format!("picture-{i:04}.jpg"));
            let sha = write_file(&path, PICTURE, 7_777 * (i as u64 + 1))?;
            Ok((path, sha))
        })
        .collect::<Result<_>>()?;
    let big_file = big.clone();
    let relay_pid = relay_server.pid();
    // The relay's CPU time over the large file's whole run (upload, downloads read back by a
    // recipient that falls behind): what the real path costs, unlike the relay alone below.
    type Run = (Duration, Duration, Option<f64>, Vec<f64>);
    let run = tokio::task::spawn_blocking(move || -> Result<Run> {
        let mut receiver = start_receiver(&users, &out)?;
        // Picture 0 warms up (and shows that the recipient's receive is logged in); not
        // counted.
        let (first, rest) = pictures.split_first().context("pictures")?;
        send_one(&users, &mut receiver, &first.0, &first.1)?;
        let cpu_before = procs::cpu_seconds(relay_pid);
        let (big_e2e, big_sender) = send_one(&users, &mut receiver, &big_file, &big_sha)?;
        let big_cpu = cpu_before
            .zip(procs::cpu_seconds(relay_pid))
            .map(|(before, after)| after - before);
        let mut samples = Vec::with_capacity(rest.len());
        for (path, sha) in rest {
            let (e2e, _) = send_one(&users, &mut receiver, path, sha)?;
            samples.push(e2e.as_secs_f64());
        }
        Ok((big_e2e, big_sender, big_cpu, samples))
    });
    let (big_e2e, big_sender, big_cpu, mut samples) = run.await??;
    let per_gb = |secs: f64| secs / (size as f64 / 1e9);
    let _ = std::fs::remove_file(&big);
    let gb = |bytes_per_sec: f64| bytes_per_sec / 1e9;
    let e2e_rate = size as f64 / big_e2e.as_secs_f64();
    let name = format!("{} MiB end to end (send-file → verified)", size >> 20);
    report.add_ratio(
        "cli-transfer",
        &name,
        gb(e2e_rate),
        "GB/s",
        Some(("loopback TCP", gb(b.loopback))),
        Some(">= 0.5 GB/s, >= 0.2 of loopback"),
    );
    report.add_ratio(
        "cli-transfer",
        &format!("{} MiB end to end vs disk write", size >> 20),
        gb(e2e_rate),
        "GB/s",
        Some(("disk write (+fsync)", gb(b.disk))),
        None,
    );
    report.add(
        "cli-transfer",
        &format!("{} MiB: send-file's own run time", size >> 20),
        big_sender.as_secs_f64(),
        "s",
    );
    samples.sort_by(f64::total_cmp);
    report.add_ratio(
        "cli-transfer",
        "200 KB picture end to end p50",
        percentile(&samples, 50.0) * 1e3,
        "ms",
        None,
        Some("<= 6 ms"),
    );
    report.add(
        "cli-transfer",
        "200 KB picture end to end p99",
        percentile(&samples, 99.0) * 1e3,
        "ms",
    );

    if let Some(cpu) = big_cpu {
        report.add_ratio(
            "cli-transfer",
            &format!("relay CPU per relayed GB, {} MiB via msim", size >> 20),
            per_gb(cpu),
            "core-s/GB",
            None,
            Some("<= 1.0"),
        );
    }

    eprintln!("== the same relay alone: one {} MiB transfer", size >> 20);
    let cpu_before = relay_server.cpu_seconds();
    let alone = relay::relayed(relay_server.addr, &keyring, size).await?;
    if let Some((before, after)) = cpu_before.zip(relay_server.cpu_seconds()) {
        report.add(
            "cli-transfer",
            "relay CPU per relayed GB, relay alone",
            per_gb(after - before),
            "core-s/GB",
        );
    }
    let cpu_before = relay_server.cpu_seconds();
    relay::relayed_hashing(relay_server.addr, &keyring, size, false).await?;
    if let Some((before, after)) = cpu_before.zip(relay_server.cpu_seconds()) {
        report.add(
            "cli-transfer",
            "relay CPU per relayed GB, relay alone, Msim-Sha256: skip",
            per_gb(after - before),
            "core-s/GB",
        );
    }
    report.add_ratio(
        "cli-transfer",
        "relay alone, download while uploading",
        gb(alone),
        "GB/s",
        Some(("loopback TCP", gb(b.loopback))),
        None,
    );
    report.add_ratio(
        "cli-transfer",
        "end to end vs relay alone",
        gb(e2e_rate),
        "GB/s",
        Some(("relay alone", gb(alone))),
        None,
    );
    if let Some(transit) = args.transit_relay {
        eprintln!(
            "== piping relay at {transit}: one {} MiB transfer",
            size >> 20
        );
        let piped = piping_relay(transit, size).await?;
        report.add_ratio(
            "cli-transfer",
            "piping relay (magic-wormhole transit)",
            gb(piped),
            "GB/s",
            Some(("loopback TCP", gb(b.loopback))),
            None,
        );
        report.add_ratio(
            "cli-transfer",
            "end to end vs piping relay",
            gb(e2e_rate),
            "GB/s",
            Some(("piping relay", gb(piped))),
            Some(">= 0.7"),
        );
    }
    drop(chat_server);
    drop(relay_server);
    let _ = std::fs::remove_dir_all(&data);
    Ok(())
}

/// One transfer of `size` bytes through a magic-wormhole transit relay (two TCP connections
/// glued by the same handshake line); bytes/s from the first connect to the last byte read.
async fn piping_relay(addr: SocketAddr, size: u64) -> Result<f64> {
    let token = format!("{:064x}", rand_u128());
    let handshake = |side: &str| format!("please relay {token} for side {side}\n");
    let start = Instant::now();
    let connect = |line: String| async move {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        s.write_all(line.as_bytes()).await?;
        let mut reader = tokio::io::BufReader::new(s);
        let mut answer = String::new();
        reader.read_line(&mut answer).await?;
        anyhow::ensure!(answer == "ok\n", "transit relay answered {answer:?}");
        anyhow::Ok(reader.into_inner())
    };
    let (sender, receiver) = tokio::try_join!(
        connect(handshake("00000000000000a1")),
        connect(handshake("00000000000000b2"))
    )?;
    let send = async move {
        let mut s = sender;
        let mut pos = 0;
        while pos < size {
            let n = (size - pos).min(1 << 20) as usize;
            s.write_all(&content::piece(pos, n)).await?;
            pos += n as u64;
        }
        s.shutdown().await?;
        anyhow::Ok(s)
    };
    let recv = async move {
        let mut r = receiver;
        let mut buf = vec![0u8; 1 << 20];
        let mut got = 0u64;
        while got < size {
            let n = r.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            got += n as u64;
        }
        anyhow::Ok(got)
    };
    let (_, got) = tokio::try_join!(send, recv)?;
    anyhow::ensure!(got == size, "piping relay delivered {got} of {size} bytes");
    Ok(size as f64 / start.elapsed().as_secs_f64())
}

/// A token for the transit relay that no other run uses.
fn rand_u128() -> u128 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    nanos ^ (u128::from(std::process::id()) << 64)
}
