//! Chat scenarios: idle connections, message throughput and latency, logins per second.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use futures::{SinkExt, StreamExt};
use msim_shared::proto::{AckMessage, Body, Event, SendMessage};
use tokio::sync::{oneshot, Semaphore};
use tokio::task::JoinSet;

use super::ledger::{self, Integrity, Received};
use super::wire::{self, connect_from, frame, next_event};

/// Password of every simulated user.
pub const PASSWORD: &str = "load-test-password";

/// The login of simulated user `i` with a run-specific prefix.
pub fn user(prefix: &str, i: usize) -> String {
    format!("{prefix}{i:06}")
}

/// Registers users `0..n`, pipelining over one connection per source address.
pub async fn register_users(
    server: SocketAddr,
    prefix: &str,
    n: usize,
    sources: &[IpAddr],
) -> Result<()> {
    let mut tasks = JoinSet::new();
    let per = n.div_ceil(sources.len());
    for (k, &ip) in sources.iter().enumerate() {
        let range = (k * per)..((k + 1) * per).min(n);
        if range.is_empty() {
            continue;
        }
        let prefix = prefix.to_owned();
        tasks.spawn(async move {
            let mut w = frame(connect_from(server, Some(ip)).await?);
            // Pipeline a window of registrations, then collect their answers.
            let ids: Vec<usize> = range.collect();
            for chunk in ids.chunks(64) {
                for &i in chunk {
                    let r = msim_shared::proto::Register {
                        login: user(&prefix, i),
                        password: PASSWORD.into(),
                    };
                    w.feed(r.to_packet()).await?;
                }
                w.flush().await?;
                for &i in chunk {
                    match next_event(&mut w).await? {
                        Event::RegisterOk(_) => {}
                        Event::RegisterFailed(f) if f.reason.as_str() == "login-taken" => {}
                        Event::RegisterFailed(f) => {
                            return Err(wire::register_refused(
                                server,
                                &user(&prefix, i),
                                f.reason.as_str(),
                            ))
                        }
                        other => bail!("REGISTER {}: {other:?}", user(&prefix, i)),
                    }
                }
            }
            anyhow::Ok(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    Ok(())
}

/// Opens `n` authenticated connections (users `0..n`) and keeps them open; returns them and
/// the rate at which they logged in.
pub async fn open_idle(
    server: SocketAddr,
    prefix: &str,
    n: usize,
    sources: &[IpAddr],
    concurrency: usize,
) -> Result<(Vec<wire::Wire>, f64)> {
    let limit = Arc::new(Semaphore::new(concurrency));
    let mut tasks = JoinSet::new();
    let start = Instant::now();
    for i in 0..n {
        let permit = limit.clone().acquire_owned().await?;
        let ip = sources[i % sources.len()];
        let login = user(prefix, i);
        tasks.spawn(async move {
            let _permit = permit;
            let mut w = frame(connect_from(server, Some(ip)).await?);
            wire::login(&mut w, &login, PASSWORD).await?;
            anyhow::Ok(w)
        });
    }
    let mut conns = Vec::with_capacity(n);
    while let Some(r) = tasks.join_next().await {
        conns.push(r??);
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    Ok((conns, rate))
}

/// Logins per second: `workers` loops of connect → challenge → CONNECT-OK → close for `secs`.
pub async fn logins(
    server: SocketAddr,
    prefix: &str,
    users: usize,
    workers: usize,
    sources: &[IpAddr],
    secs: f64,
) -> Result<f64> {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = JoinSet::new();
    for k in 0..workers {
        let (stop, done, prefix) = (stop.clone(), done.clone(), prefix.to_owned());
        let sources = sources.to_vec();
        tasks.spawn(async move {
            let mut i = k;
            while !stop.load(Ordering::Relaxed) {
                let ip = sources[i % sources.len()];
                let mut w = frame(connect_from(server, Some(ip)).await?);
                wire::login(&mut w, &user(&prefix, i % users), PASSWORD).await?;
                done.fetch_add(1, Ordering::Relaxed);
                i += workers;
            }
            anyhow::Ok(())
        });
    }
    let start = Instant::now();
    let before = done.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    let count = done.load(Ordering::Relaxed) - before;
    let rate = count as f64 / start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    Ok(rate)
}

/// Shape of a message run.
#[derive(Debug, Clone, Copy)]
pub struct MessageRun {
    /// Sender → recipient pairs; users `0..pairs` send to `pairs..2*pairs`.
    pub pairs: usize,
    /// Messages in flight per sender (awaiting MESSAGE-SENT) when running at saturation.
    pub window: usize,
    /// Offered rate over all senders, messages/s; `None` means as fast as possible.
    pub rate: Option<f64>,
    pub warmup: Duration,
    pub measure: Duration,
    /// Recipients acknowledge every message (MESSAGE-ACK), as a real client does.
    pub ack: bool,
    /// Recipients are users of another, federated server: its address and domain.
    pub remote: Option<(SocketAddr, &'static str)>,
}

/// What a message run measured.
#[derive(Debug, Clone)]
pub struct MessageResult {
    /// Messages delivered to recipients per second during the measured window.
    pub delivered_per_sec: f64,
    /// MESSAGE-SENT acknowledgements per second during the window.
    pub sent_per_sec: f64,
    /// End-to-end latency samples (send → recipient has it), seconds, sorted.
    pub latencies: Vec<f64>,
    /// Lost, duplicated or altered messages over the whole run (warm-up included).
    pub integrity: Integrity,
}

/// How long, after the senders stopped, their last acknowledgements and the recipients' last
/// messages may take before they count as missing.
const DRAIN: Duration = Duration::from_secs(30);

/// Runs senders and recipients; latency is measured from just before the sender writes the
/// message to when the recipient decodes it (both in this process, on one clock). `nodes`
/// are the nodes of one service (usually one): pair `i`'s sender connects to node `i mod n`
/// and its recipient to the next node, so with several nodes every message crosses nodes.
pub async fn messages(
    nodes: &[SocketAddr],
    prefix: &str,
    run: MessageRun,
) -> Result<MessageResult> {
    anyhow::ensure!(!nodes.is_empty(), "no chat node to connect to");
    let sender_node = |i: usize| nodes[i % nodes.len()];
    let recipient_node = |i: usize| nodes[(i + 1) % nodes.len()];
    let base = Instant::now();
    let run_no = ledger::next_run();
    let delivered = Arc::new(AtomicU64::new(0));
    let acked = Arc::new(AtomicU64::new(0));
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let mut recipients = JoinSet::new();
    let mut senders = JoinSet::new();

    // Each recipient learns, once its sender has stopped, which ids were acknowledged, and
    // reads until it has them all (or DRAIN passes: they are lost).
    let mut expect_tx = Vec::with_capacity(run.pairs);
    for r in 0..run.pairs {
        let at = run.remote.map_or(recipient_node(r), |(addr, _)| addr);
        let mut w = frame(connect_from(at, None).await?);
        wire::login(&mut w, &user(prefix, run.pairs + r), PASSWORD).await?;
        let (delivered, measuring) = (delivered.clone(), measuring.clone());
        let ack = run.ack;
        let (tx, mut expect_rx) = oneshot::channel::<Vec<String>>();
        expect_tx.push(Some(tx));
        let from_login = user(prefix, r);
        recipients.spawn(async move {
            let mut samples = Vec::new();
            let mut got = Received::default();
            let mut unflushed = 0usize;
            // Acknowledged ids not received yet, once the sender has stopped.
            let mut missing: Option<std::collections::HashSet<String>> = None;
            let mut deadline = tokio::time::Instant::now() + Duration::from_secs(86_400);
            loop {
                if missing.as_ref().is_some_and(|m| m.is_empty()) {
                    break;
                }
                let next = tokio::select! {
                    next = w.next() => next,
                    acked = &mut expect_rx, if missing.is_none() => {
                        let acked = acked.unwrap_or_default();
                        missing = Some(acked.into_iter().filter(|id| !got.has(id)).collect());
                        deadline = tokio::time::Instant::now() + DRAIN;
                        continue;
                    }
                    _ = tokio::time::sleep_until(deadline), if missing.is_some() => break,
                };
                let Some(item) = next else { break };
                let packet = item?.map_err(|e| anyhow::anyhow!("{e}"))?;
                match Event::from_packet(&packet)? {
                    Event::Message(m) => {
                        got.record((run_no, r), &from_login, &m.id, &m.from, &m.text);
                        if let Some(missing) = missing.as_mut() {
                            missing.remove(&m.id);
                        }
                        if measuring.load(Ordering::Relaxed) {
                            delivered.fetch_add(1, Ordering::Relaxed);
                            if let Some(sent_at) =
                                m.text.split(' ').next().and_then(|t| t.parse::<u64>().ok())
                            {
                                let now = base.elapsed().as_nanos() as u64;
                                samples.push(now.saturating_sub(sent_at) as f64 / 1e9);
                            }
                        }
                        if ack {
                            w.feed(AckMessage { id: m.id }.to_packet()).await?;
                            unflushed += 1;
                            if unflushed >= 32 {
                                w.flush().await?;
                                unflushed = 0;
                            }
                        }
                    }
                    Event::Ping(_) => w.send(msim_shared::Packet::new("PONG")).await?,
                    _ => {}
                }
                if unflushed > 0 && w.read_buffer().is_empty() {
                    w.flush().await?;
                    unflushed = 0;
                }
            }
            // Acknowledge everything received, so that the next run is not sent it again.
            if unflushed > 0 {
                w.flush().await?;
            }
            anyhow::Ok((r, samples, got))
        });
    }

    for s in 0..run.pairs {
        let mut w = frame(connect_from(sender_node(s), None).await?);
        wire::login(&mut w, &user(prefix, s), PASSWORD).await?;
        let to = match run.remote {
            Some((_, domain)) => format!("{}@{domain}", user(prefix, run.pairs + s)),
            None => user(prefix, run.pairs + s),
        };
        let (acked, measuring, stop) = (acked.clone(), measuring.clone(), stop.clone());
        let period = run
            .rate
            .map(|r| Duration::from_secs_f64(run.pairs as f64 / r));
        let window = run.window;
        senders.spawn(async move {
            let mut outstanding = 0usize;
            let start = tokio::time::Instant::now();
            let mut k: u32 = 0;
            // Messages written so far (the tag's number) and ids acknowledged.
            let mut n: u64 = 0;
            let mut acked_ids = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let due = match period {
                    Some(p) => start + p * k,
                    None => tokio::time::Instant::now(),
                };
                let can_send = outstanding < window;
                tokio::select! {
                    biased;
                    next = w.next(), if outstanding > 0 || !can_send || period.is_some() => {
                        let Some(item) = next else { break };
                        let packet = item?.map_err(|e| anyhow::anyhow!("{e}"))?;
                        match Event::from_packet(&packet)? {
                            Event::MessageSent(m) => {
                                outstanding -= 1;
                                acked_ids.push(m.id);
                                if measuring.load(Ordering::Relaxed) {
                                    acked.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                            Event::MessageSendFailed(f) => bail!("send failed: {}", f.reason),
                            Event::Ping(_) => w.send(msim_shared::Packet::new("PONG")).await?,
                            _ => {}
                        }
                    }
                    _ = tokio::time::sleep_until(due), if can_send => {
                        // At a fixed rate, latency counts from the scheduled time, so a late
                        // sender cannot hide queueing delay (no coordinated omission).
                        let stamp = match period {
                            Some(_) => due.into_std().saturating_duration_since(base).as_nanos() as u64,
                            None => base.elapsed().as_nanos() as u64,
                        };
                        let m = SendMessage { to: to.clone(), text: ledger::text(stamp, run_no, s, n) };
                        n += 1;
                        if period.is_some() {
                            w.send(m.to_packet()).await?;
                            outstanding += 1;
                        } else {
                            // At saturation, fill the window in one write.
                            w.feed(m.to_packet()).await?;
                            outstanding += 1;
                            while outstanding < window {
                                let now = base.elapsed().as_nanos() as u64;
                                let m = SendMessage { to: to.clone(), text: ledger::text(now, run_no, s, n) };
                                n += 1;
                                w.feed(m.to_packet()).await?;
                                outstanding += 1;
                            }
                            w.flush().await?;
                        }
                        k += 1;
                    }
                }
            }
            // Collect the acknowledgements of what is still in flight.
            let drained = tokio::time::timeout(DRAIN, async {
                while outstanding > 0 {
                    let Some(item) = w.next().await else {
                        bail!("connection closed with {outstanding} messages unacknowledged")
                    };
                    let packet = item?.map_err(|e| anyhow::anyhow!("{e}"))?;
                    match Event::from_packet(&packet)? {
                        Event::MessageSent(m) => {
                            outstanding -= 1;
                            acked_ids.push(m.id);
                        }
                        Event::MessageSendFailed(f) => bail!("send failed: {}", f.reason),
                        Event::Ping(_) => w.send(msim_shared::Packet::new("PONG")).await?,
                        _ => {}
                    }
                }
                anyhow::Ok(())
            })
            .await;
            match drained {
                Ok(r) => r?,
                Err(_) => bail!("{outstanding} MESSAGE-SENT missing after {DRAIN:?}"),
            }
            anyhow::Ok((s, acked_ids))
        });
    }

    tokio::time::sleep(run.warmup).await;
    let d0 = delivered.load(Ordering::Relaxed);
    let a0 = acked.load(Ordering::Relaxed);
    measuring.store(true, Ordering::Relaxed);
    let t0 = Instant::now();
    tokio::time::sleep(run.measure).await;
    measuring.store(false, Ordering::Relaxed);
    let secs = t0.elapsed().as_secs_f64();
    let d = delivered.load(Ordering::Relaxed) - d0;
    let a = acked.load(Ordering::Relaxed) - a0;
    stop.store(true, Ordering::Relaxed);
    let mut acked = vec![Vec::new(); run.pairs];
    while let Some(r) = senders.join_next().await {
        let (s, ids) = r??;
        if let Some(tx) = expect_tx[s].take() {
            let _ = tx.send(ids.clone());
        }
        acked[s] = ids;
    }
    let mut latencies = Vec::new();
    let mut integrity = Integrity::default();
    while let Some(r) = recipients.join_next().await {
        let (r, samples, got) = r??;
        latencies.extend(samples);
        integrity.add(&acked[r], &got);
    }
    latencies.sort_by(f64::total_cmp);
    Ok(MessageResult {
        delivered_per_sec: d as f64 / secs,
        sent_per_sec: a as f64 / secs,
        latencies,
        integrity,
    })
}
