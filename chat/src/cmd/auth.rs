//! Registration and login (PROTOCOL.md §4), and what happens at login and logout.

use crate::clock::datetime;
use crate::cmd::{files, presence};
use crate::db::{Outcome, WriteOp};
use crate::hub::Stream;
use crate::session::{Session, State};
use msim_shared::proto::{
    Body, Connect, ConnectAck, ConnectContinue, ConnectFailed, ConnectFailure, ConnectOk,
    ReadReceipt, Register, RegisterFailed, RegisterFailure, RegisterOk,
};
use msim_shared::Packet;
use tokio::sync::mpsc;
use tracing::{info, warn};

/// Pending messages sent per database page at login.
const PAGE: i64 = 256;

fn failed(reason: RegisterFailure) -> Packet {
    RegisterFailed { reason }.to_packet()
}

/// `REGISTER login= password=` (the dispatcher has checked the state).
pub async fn register(s: &mut Session<'_>, p: &Packet, r: Register) {
    let Register { login, password } = r;
    let password = password.as_str();
    let c = &s.sh.config;
    let login = login.to_lowercase();
    let reason = if !c.registration_open {
        Some(RegisterFailure::Closed)
    } else if !login
        .chars()
        .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || matches!(ch, '.' | '_' | '-'))
    {
        Some(RegisterFailure::LoginInvalid)
    } else if login.len() < c.login_min {
        Some(RegisterFailure::LoginTooShort)
    } else if login.len() > c.login_max {
        Some(RegisterFailure::LoginTooLong)
    } else if password.chars().count() < c.password_min {
        Some(RegisterFailure::PasswordTooShort)
    } else if password.chars().count() > c.password_max {
        Some(RegisterFailure::PasswordTooLong)
    } else if !s
        .sh
        .limits
        .allow_register(s.peer.ip(), c.clock.now_micros())
    {
        Some(RegisterFailure::RateLimited)
    } else {
        None
    };
    if let Some(r) = reason {
        s.reply(p, failed(r));
        return;
    }
    let sealed = s.sh.sealer.seal(&login, password);
    let now = s.sh.config.clock.now_micros();
    match s
        .sh
        .writer
        .write(WriteOp::CreateUser {
            login: login.clone(),
            sealed,
            now,
        })
        .await
    {
        Ok(Outcome::Taken) => s.reply(p, failed(RegisterFailure::LoginTaken)),
        Ok(_) => {
            info!(login, "registered");
            let login = s.addr(&login);
            s.reply(p, RegisterOk { login }.to_packet());
        }
        Err(e) => {
            warn!("register: {e}");
            s.reply(p, failed(RegisterFailure::StorageError));
        }
    }
}

fn throttled(wait: std::time::Duration) -> Packet {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    ConnectFailed {
        reason: ConnectFailure::Throttled,
        retry_after: Some(secs.max(1)),
    }
    .to_packet()
}

fn connect_failed(reason: ConnectFailure) -> Packet {
    ConnectFailed {
        reason,
        retry_after: None,
    }
    .to_packet()
}

/// `CONNECT login= [device=]`: always answered with `CONNECT-ACK salt=`, with the same work for
/// known and unknown logins.
pub async fn connect(s: &mut Session<'_>, p: &Packet, r: Connect) {
    let raw = r.login.as_str();
    // A cookie too long to be ours is ignored rather than kept.
    let device = r
        .device
        .filter(|d| d.len() <= crate::device::MAX_COOKIE_LEN);
    // Any text is accepted as a login: an invalid one behaves exactly like an unknown one.
    let login = match crate::cmd::parse_target(raw, &s.sh.config.domain) {
        Some(crate::cmd::Target::Local(l)) => l,
        _ => raw.to_lowercase(),
    };
    // Throttling is enforced at CONNECT-CONTINUE: CONNECT is always answered with a salt
    // (design.md), so its answer never depends on the login's history.
    let sealed = match s.sh.db.password(&login).await {
        Ok(v) => v,
        Err(e) => {
            warn!("connect: {e}");
            None
        }
    };
    let salt = s.sh.salts.next();
    s.reply(p, ConnectAck { salt: salt.clone() }.to_packet());
    s.state = State::Challenged {
        login,
        sealed,
        salt,
        device,
    };
}

/// `CONNECT-CONTINUE hash=`.
pub async fn connect_continue(s: &mut Session<'_>, p: &Packet, r: ConnectContinue) {
    let hash = r.hash.as_str();
    let State::Challenged {
        login,
        sealed,
        salt,
        device,
    } = std::mem::replace(&mut s.state, State::Greeting)
    else {
        s.reply(p, connect_failed(ConnectFailure::BadState));
        return;
    };
    let ip = s.peer.ip();
    let sh = s.sh.clone();
    // A trusted device answers for itself (its own failure budget); anyone else waits out
    // the throttle (SECURITY.md, "Login hardening").
    let device = device.and_then(|d| sh.devices.verify(&login, &d));
    if device.is_none() {
        let wait = sh.throttle.wait(&login, ip);
        if !wait.is_zero() {
            s.reply(p, throttled(wait));
            return;
        }
    }
    if !sh.sealer.verify(&login, sealed.as_deref(), &salt, hash) {
        match device {
            Some(d) => sh.devices.failure(d),
            None => sh.throttle.failure(&login, ip),
        }
        info!(peer = %s.peer, device = device.is_some(), "login failed");
        s.reply(p, connect_failed(ConnectFailure::Invalid));
        return;
    }
    if let Some(d) = device {
        sh.devices.success(d);
    }
    sh.throttle.success(&login, ip);
    logged_in(s, p, login).await;
}

async fn logged_in(s: &mut Session<'_>, p: &Packet, login: String) {
    let sh = s.sh.clone();
    let c = &sh.config;
    // Register first: from now on every stored item reaches this session live (queued in its
    // channel). Then snapshot the high-water marks: the backlog sends every stored item up to
    // them from the database, and the session drops live items at or below them (PROTOCOL.md
    // §5.4). Nothing is lost and nothing is sent twice.
    let (tx, rx) = mpsc::channel(c.outbound_queue);
    let (id, first) = sh.hub.register(&login, tx);
    let marks = match sh.db.marks().await {
        Ok(v) => v,
        Err(e) => {
            warn!("login: {e}");
            sh.hub.unregister(&login, id);
            s.reply(p, connect_failed(ConnectFailure::Invalid));
            return;
        }
    };
    s.rx = Some(rx);
    s.marks[Stream::Messages as usize] = marks.messages;
    s.marks[Stream::Receipts as usize] = marks.receipts;
    s.marks[Stream::Offers as usize] = marks.offers;
    s.marks[Stream::Notices as usize] = marks.notices;
    s.state = State::LoggedIn {
        login: login.clone(),
        id,
    };
    info!(login, session = id, peer = %s.peer, "logged in");
    let ok = ConnectOk {
        login: s.addr(&login),
        domain: c.domain.clone(),
        federation: false,
        max_line: c.max_line as u64,
        max_text: c.max_text as u64,
        max_file_size: c.max_file_size,
        server: concat!("msim-chat/", env!("CARGO_PKG_VERSION")).to_owned(),
        device: Some(sh.devices.issue(&login)),
    };
    s.reply(p, ok.to_packet());
    if first {
        presence::announce(&sh, &login, true).await;
    }
    // Pending messages, oldest first, page by page.
    let mut after = 0;
    loop {
        let page = match sh
            .db
            .pending_messages(&login, after, marks.messages, PAGE)
            .await
        {
            Ok(v) => v,
            Err(e) => {
                warn!("pending messages: {e}");
                break;
            }
        };
        for m in &page {
            after = m.seq;
            let pkt = crate::cmd::messages::message_packet(s, m);
            s.push(&pkt);
        }
        if s.flush().await.is_err() {
            s.closing = true;
            return;
        }
        if (page.len() as i64) < PAGE {
            break;
        }
    }
    // Read receipts stored while this user was offline.
    match sh.db.pending_receipts(&login, marks.receipts).await {
        Ok(receipts) if !receipts.is_empty() => {
            let mut seqs = Vec::with_capacity(receipts.len());
            for r in receipts {
                seqs.push(r.seq);
                let pkt = ReadReceipt {
                    id: r.message_id,
                    by: s.addr(&r.reader),
                    at: datetime(r.at),
                };
                s.push(&pkt.to_packet());
            }
            // Sent first, then recorded, and the login waits for the record: a receipt is
            // repeated only if the server stops in between, never to the next login (§5.6).
            if s.flush().await.is_err() {
                s.closing = true;
                return;
            }
            if let Err(e) = sh.writer.write(WriteOp::DeleteReceipts(seqs)).await {
                warn!("delivered receipts: {e}");
            }
        }
        Ok(_) => {}
        Err(e) => warn!("pending receipts: {e}"),
    }
    let now = c.clock.now_micros();
    // File offers made while offline.
    match sh.db.pending_offers(&login, now, marks.offers).await {
        Ok(offers) => {
            for o in offers {
                let pkt = files::request_packet(s, &o);
                s.push(&pkt);
            }
        }
        Err(e) => warn!("pending offers: {e}"),
    }
    // File results (SEND-FILE-PROXY-OK / -REJECTED / -READY) stored for this user.
    match sh.db.pending_notices(&login, now, marks.notices).await {
        Ok(notices) => {
            for n in notices {
                s.push_bytes(n.packet.as_bytes());
            }
        }
        Err(e) => warn!("pending notices: {e}"),
    }
    // Presence requests waiting for an answer (repeated at every login until answered).
    crate::cmd::privacy::requests_at_login(s, &login).await;
}

/// Cleans up after a connection: typing ends, hub removal, presence when last session.
pub async fn logout(s: &mut Session<'_>) {
    let State::LoggedIn { login, id } = std::mem::replace(&mut s.state, State::Greeting) else {
        return;
    };
    let sh = s.sh.clone();
    crate::cmd::typing::end_all(s, &login);
    s.rx = None;
    let last = sh.hub.unregister(&login, id);
    info!(login, session = id, "logged out");
    if last {
        let now = sh.config.clock.now_micros();
        if let Err(e) = sh
            .writer
            .write(WriteOp::SetLastSeen {
                login: login.clone(),
                at: now,
            })
            .await
        {
            warn!("last seen: {e}");
        }
        presence::announce(&sh, &login, false).await;
    }
}
