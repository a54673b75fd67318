//! Registration and login (PROTOCOL.md §4), and what happens at login and logout.

use crate::clock::rfc3339_micros;
use crate::cmd::{files, presence};
use crate::db::{Outcome, WriteOp};
use crate::hub::Stream;
use crate::session::{Session, State};
use msim_shared::Packet;
use tokio::sync::mpsc;
use tracing::{info, warn};

/// Pending messages sent per database page at login.
const PAGE: i64 = 256;

fn failed(reason: &str) -> Packet {
    Packet::new("REGISTER-FAILED").with("reason", reason)
}

/// `REGISTER login= password=`.
pub async fn register(s: &mut Session<'_>, p: &Packet) {
    if s.login().is_some() {
        s.reply(p, Packet::new("ERROR-BAD-STATE").with("type", "REGISTER"));
        return;
    }
    let Some(login) = s.require(p, "login") else {
        return;
    };
    let Some(password) = s.require(p, "password") else {
        return;
    };
    let c = &s.sh.config;
    let login = login.to_lowercase();
    let reason = if !c.registration_open {
        Some("registration-closed")
    } else if !login
        .chars()
        .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || matches!(ch, '.' | '_' | '-'))
    {
        Some("login-invalid")
    } else if login.len() < c.login_min {
        Some("login-too-short")
    } else if login.len() > c.login_max {
        Some("login-too-long")
    } else if password.chars().count() < c.password_min {
        Some("password-too-short")
    } else if password.chars().count() > c.password_max {
        Some("password-too-long")
    } else if !s.sh.throttle.allow_register(s.peer.ip()) {
        Some("rate-limited")
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
        Ok(Outcome::Taken) => s.reply(p, failed("login-taken")),
        Ok(_) => {
            info!(login, "registered");
            let addr = s.addr(&login);
            s.reply(p, Packet::new("REGISTER-OK").with("login", addr));
        }
        Err(e) => {
            warn!("register: {e}");
            s.reply(p, failed("storage-error"));
        }
    }
}

fn throttled(wait: std::time::Duration) -> Packet {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    Packet::new("CONNECT-FAILED")
        .with("reason", "throttled")
        .with("retry-after", secs.max(1).to_string())
}

/// `CONNECT login=`: always answered with `CONNECT-ACK salt=` (unless throttled), with the same
/// work for known and unknown logins.
pub async fn connect(s: &mut Session<'_>, p: &Packet) {
    if s.login().is_some() {
        s.reply(p, Packet::new("ERROR-BAD-STATE").with("type", "CONNECT"));
        return;
    }
    let Some(raw) = s.require(p, "login") else {
        return;
    };
    // Any text is accepted as a login: an invalid one behaves exactly like an unknown one.
    let login = match crate::cmd::parse_target(raw, &s.sh.config.domain) {
        Some(crate::cmd::Target::Local(l)) => l,
        _ => raw.to_lowercase(),
    };
    let wait = s.sh.throttle.wait(&login, s.peer.ip());
    if !wait.is_zero() {
        s.state = State::Greeting;
        s.reply(p, throttled(wait));
        return;
    }
    let sealed = match s.sh.db.password(&login).await {
        Ok(v) => v,
        Err(e) => {
            warn!("connect: {e}");
            None
        }
    };
    let salt = s.sh.salts.next();
    s.reply(p, Packet::new("CONNECT-ACK").with("salt", salt.clone()));
    s.state = State::Challenged {
        login,
        sealed,
        salt,
    };
}

/// `CONNECT-CONTINUE hash=`.
pub async fn connect_continue(s: &mut Session<'_>, p: &Packet) {
    if s.login().is_some() {
        s.reply(
            p,
            Packet::new("ERROR-BAD-STATE").with("type", "CONNECT-CONTINUE"),
        );
        return;
    }
    let Some(hash) = s.require(p, "hash") else {
        return;
    };
    let State::Challenged {
        login,
        sealed,
        salt,
    } = std::mem::replace(&mut s.state, State::Greeting)
    else {
        s.reply(p, Packet::new("CONNECT-FAILED").with("reason", "bad-state"));
        return;
    };
    let ip = s.peer.ip();
    let wait = s.sh.throttle.wait(&login, ip);
    if !wait.is_zero() {
        s.reply(p, throttled(wait));
        return;
    }
    if !s.sh.sealer.verify(&login, sealed.as_deref(), &salt, hash) {
        s.sh.throttle.failure(&login, ip);
        info!(peer = %s.peer, "login failed");
        s.reply(p, Packet::new("CONNECT-FAILED").with("reason", "invalid"));
        return;
    }
    s.sh.throttle.success(&login);
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
            s.reply(p, Packet::new("CONNECT-FAILED").with("reason", "invalid"));
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
    s.reply(
        p,
        Packet::new("CONNECT-OK")
            .with("login", s.addr(&login))
            .with("domain", c.domain.clone())
            .with("federation", "false")
            .with("max-line", c.max_line.to_string())
            .with("max-text", c.max_text.to_string())
            .with("max-file-size", c.max_file_size.to_string())
            .with("server", concat!("msim-chat/", env!("CARGO_PKG_VERSION"))),
    );
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
                let pkt = Packet::new("MESSAGE-READ")
                    .with("id", r.message_id)
                    .with("by", s.addr(&r.reader))
                    .with("at", rfc3339_micros(r.at));
                s.push(&pkt);
            }
            sh.writer.write_detached(WriteOp::DeleteReceipts(seqs));
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
