//! A tiny authoritative DNS server on 127.0.0.1 (UDP) for the `.test` domains of the
//! federation tests, answering from a zone the tests edit while it runs. Messages are parsed
//! and built with hickory-proto's types (no hand-written wire code). TTLs are 0: a change is
//! seen at the next lookup (the servers under test bound their caches to 1 ms).

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, SRV, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use tokio::net::UdpSocket;

#[derive(Default)]
struct Zone {
    records: HashMap<(String, RecordType), Vec<RData>>,
    /// Queries received per (name, type).
    asked: HashMap<(String, RecordType), usize>,
    /// Answer every query with SERVFAIL.
    failing: bool,
}

pub struct TestDns {
    pub addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestDns {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn key(name: &str, t: RecordType) -> (String, RecordType) {
    (name.trim_end_matches('.').to_ascii_lowercase(), t)
}

impl TestDns {
    pub async fn start() -> TestDns {
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = sock.local_addr().unwrap();
        let zone: Arc<Mutex<Zone>> = Arc::default();
        let z = zone.clone();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((n, from)) = sock.recv_from(&mut buf).await else {
                    return;
                };
                let Ok(q) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                let answer = answer(&z, &q);
                if let Ok(bytes) = answer.to_vec() {
                    let _ = sock.send_to(&bytes, from).await;
                }
            }
        });
        TestDns { addr, zone, task }
    }

    fn set(&self, name: &str, t: RecordType, data: Vec<RData>) {
        let mut z = self.zone.lock().unwrap();
        if data.is_empty() {
            z.records.remove(&key(name, t));
        } else {
            z.records.insert(key(name, t), data);
        }
    }

    /// Several TXT records under one name.
    pub fn set_txts(&self, name: &str, values: &[String]) {
        let data = values
            .iter()
            .map(|v| RData::TXT(TXT::new(vec![v.clone()])))
            .collect();
        self.set(name, RecordType::TXT, data);
    }

    /// SRV records (priority, weight, port, target) under one name.
    pub fn set_srvs(&self, name: &str, targets: &[(u16, u16, u16, &str)]) {
        let data = targets
            .iter()
            .map(|&(priority, weight, port, target)| {
                let target = Name::from_ascii(format!("{target}.")).unwrap();
                RData::SRV(SRV::new(priority, weight, port, target))
            })
            .collect();
        self.set(name, RecordType::SRV, data);
    }

    /// How many queries for `name` of type `t` arrived so far.
    pub fn asked(&self, name: &str, t: RecordType) -> usize {
        let z = self.zone.lock().unwrap();
        z.asked.get(&key(name, t)).copied().unwrap_or(0)
    }

    pub fn set_txt(&self, name: &str, value: &str) {
        self.set(
            name,
            RecordType::TXT,
            vec![RData::TXT(TXT::new(vec![value.to_owned()]))],
        );
    }

    pub fn set_srv(&self, name: &str, target: &str, port: u16) {
        let target = Name::from_ascii(format!("{target}.")).unwrap();
        self.set(
            name,
            RecordType::SRV,
            vec![RData::SRV(SRV::new(0, 0, port, target))],
        );
    }

    pub fn remove(&self, name: &str, t: RecordType) {
        self.set(name, t, Vec::new());
    }

    pub fn set_a(&self, name: &str, ip: Ipv4Addr) {
        self.set(name, RecordType::A, vec![RData::A(A(ip))]);
    }

    /// Every answer is SERVFAIL while `on`.
    pub fn fail(&self, on: bool) {
        self.zone.lock().unwrap().failing = on;
    }
}

fn answer(zone: &Mutex<Zone>, q: &Message) -> Message {
    let mut m = Message::new(q.metadata.id, MessageType::Response, OpCode::Query);
    m.metadata.authoritative = true;
    m.metadata.recursion_desired = q.metadata.recursion_desired;
    m.metadata.recursion_available = true;
    m.queries = q.queries.clone();
    let mut z = zone.lock().unwrap();
    if let Some(q) = q.queries.first() {
        *z.asked
            .entry(key(&q.name().to_ascii(), q.query_type()))
            .or_default() += 1;
    }
    if z.failing {
        m.metadata.response_code = ResponseCode::ServFail;
        return m;
    }
    let Some(query) = q.queries.first() else {
        m.metadata.response_code = ResponseCode::FormErr;
        return m;
    };
    let name = query.name().to_ascii();
    match z.records.get(&key(&name, query.query_type())) {
        Some(data) => {
            for d in data {
                m.answers
                    .push(Record::from_rdata(query.name().clone(), 0, d.clone()));
            }
        }
        None => {
            let exists = z
                .records
                .keys()
                .any(|(n, _)| *n == key(&name, RecordType::A).0);
            if !exists {
                m.metadata.response_code = ResponseCode::NXDomain;
            }
        }
    }
    m
}
