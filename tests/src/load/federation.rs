//! The federation scenario: two msim-chat processes with federation on (domains `a.load` and
//! `b.load`, resolved through a DNS server run here on loopback), senders on one and
//! recipients on the other. Throughput and latency are reported next to the same runs with
//! sender and recipient on one server, started the same way.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, SRV, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};

use super::chat_scenarios::{check_messages, start_chat_in};
use super::cli::Args;
use super::report::{percentile, Report};
use super::{chat, procs, wire};

type Zone = Arc<Mutex<HashMap<(String, RecordType), RData>>>;

/// A UDP DNS server answering from `zone` (TTL 60 s), until dropped.
struct Dns {
    addr: SocketAddr,
    zone: Zone,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Dns {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Dns {
    async fn start() -> Result<Dns> {
        let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
        let addr = sock.local_addr()?;
        let zone: Zone = Arc::default();
        let z = zone.clone();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok((n, from)) = sock.recv_from(&mut buf).await {
                let Ok(q) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                let mut m = Message::new(q.metadata.id, MessageType::Response, OpCode::Query);
                m.metadata.authoritative = true;
                m.metadata.recursion_desired = q.metadata.recursion_desired;
                m.queries = q.queries.clone();
                if let Some(query) = q.queries.first() {
                    let name = query
                        .name()
                        .to_ascii()
                        .trim_end_matches('.')
                        .to_ascii_lowercase();
                    let zone = z.lock().unwrap_or_else(|e| e.into_inner());
                    match zone.get(&(name, query.query_type())) {
                        Some(d) => {
                            m.answers
                                .push(Record::from_rdata(query.name().clone(), 60, d.clone()))
                        }
                        None => m.metadata.response_code = ResponseCode::NXDomain,
                    }
                }
                if let Ok(bytes) = m.to_vec() {
                    let _ = sock.send_to(&bytes, from).await;
                }
            }
        });
        Ok(Dns { addr, zone, task })
    }

    fn set(&self, name: &str, data: RData) {
        let t = data.record_type();
        self.zone
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((name.to_owned(), t), data);
    }
}

/// One federated server: a key made with `msim-chat federation keygen`, its records published,
/// the process started.
fn start_server(
    args: &Args,
    dns: &Dns,
    dir: &std::path::Path,
    domain: &str,
) -> Result<procs::Proc> {
    let bin = procs::sibling_binary("msim-chat")?;
    let out = std::process::Command::new(&bin)
        .args(["federation", "keygen", "--data-dir"])
        .arg(dir)
        .args(["--domain", domain])
        .output()
        .context("msim-chat federation keygen")?;
    if !out.status.success() {
        bail!("keygen failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    // `<kid>._msim-key.<domain>. IN TXT "v=msim1; ..."`
    let record = String::from_utf8(out.stdout)?;
    let (name, rest) = record.split_once(". IN TXT ").context("keygen output")?;
    let value = rest.trim().trim_matches('"');
    dns.set(name, RData::TXT(TXT::new(vec![value.to_owned()])));
    let s2s = procs::free_addr()?;
    let target = format!("s2s.{domain}");
    dns.set(
        &format!("_msim-s2s._tcp.{domain}"),
        RData::SRV(SRV::new(
            0,
            0,
            s2s.port(),
            Name::from_ascii(format!("{target}."))?,
        )),
    );
    dns.set(&target, RData::A(A(Ipv4Addr::LOCALHOST)));
    let flags = [
        "--domain".to_owned(),
        domain.to_owned(),
        "--federation".into(),
        "open".into(),
        "--s2s-listen".into(),
        s2s.to_string(),
        "--s2s-allow-private".into(),
        "true".into(),
        // The scenario measures the federation path, not the per-peer rate limit (2,000
        // packets/s by default), which a saturating sender would hit at once.
        "--s2s-peer-rate".into(),
        "1000000".into(),
        "--s2s-peer-burst".into(),
        "1000000".into(),
        "--dns-server".into(),
        dns.addr.to_string(),
    ];
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    start_chat_in(args, dir, &flags)
}

/// Runs the federation scenario and adds its figures.
pub async fn run_federation(
    args: &Args,
    data: &std::path::Path,
    report: &mut Report,
) -> Result<()> {
    let dns = Dns::start().await?;
    let a = start_server(args, &dns, &data.join("fed-a"), "a.load")?;
    let b = start_server(args, &dns, &data.join("fed-b"), "b.load")?;
    let prefix = "fed";
    let users = 2 * args.pairs;
    for addr in [a.addr, b.addr] {
        let sources = wire::sources_for(addr, args.sources);
        chat::register_users(addr, prefix, users, &sources).await?;
    }
    let run = |rate, remote| chat::MessageRun {
        pairs: args.pairs,
        window: args.window,
        rate,
        warmup: Duration::from_secs_f64(if args.smoke { 0.5 } else { 1.0 }),
        measure: Duration::from_secs_f64(args.seconds),
        ack: true,
        remote,
    };
    let remote = Some((b.addr, "b.load"));
    eprintln!("== federation: throughput, one server (a.load → a.load)");
    let local = chat::messages(&[a.addr], prefix, run(None, None)).await?;
    check_messages(&local)?;
    eprintln!("== federation: throughput across servers (a.load → b.load)");
    let fed = chat::messages(&[a.addr], prefix, run(None, remote)).await?;
    check_messages(&fed)?;
    report.add_ratio(
        "federation",
        "a.load→b.load delivered, durable on both",
        fed.delivered_per_sec,
        "msg/s",
        Some(("one server", local.delivered_per_sec)),
        None,
    );
    eprintln!(
        "== federation: latency at {} msg/s offered, one server",
        args.rate
    );
    let local = chat::messages(&[a.addr], prefix, run(Some(args.rate), None)).await?;
    check_messages(&local)?;
    eprintln!(
        "== federation: latency at {} msg/s offered, across servers",
        args.rate
    );
    let fed = chat::messages(&[a.addr], prefix, run(Some(args.rate), remote)).await?;
    check_messages(&fed)?;
    for (name, p) in [("p50", 50.0), ("p99", 99.0)] {
        report.add_ratio(
            "federation",
            &format!("a.load→b.load send→deliver {name}"),
            percentile(&fed.latencies, p) * 1e3,
            "ms",
            Some(("one server", percentile(&local.latencies, p) * 1e3)),
            None,
        );
    }
    drop((a, b));
    Ok(())
}
