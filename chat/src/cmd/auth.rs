//! Registration and login (PROTOCOL.md §4). What happens once logged in (hub registration,
//! the offline backlog, logout) is the session's (`crate::session::login`).

use crate::cmd::context::{Ctx, Gate, Reply, RequestRef};
use crate::db::{Outcome, WriteOp};
use msim_shared::proto::{
    Body, Connect, ConnectAck, ConnectContinue, ConnectFailed, ConnectFailure, ConnectOk, Register,
    RegisterFailed, RegisterFailure, RegisterOk,
};
use msim_shared::Packet;
use tracing::{info, warn};

/// A login in progress: `CONNECT-ACK` sent, waiting for `CONNECT-CONTINUE`.
#[derive(Debug)]
pub(crate) struct Challenge {
    /// Canonical login asked for.
    login: String,
    /// Sealed password (None: unknown login).
    sealed: Option<Vec<u8>>,
    /// The salt, good for this one attempt.
    salt: String,
    /// The `device=` cookie presented with `CONNECT`, if any (checked with the answer).
    device: Option<String>,
}

fn failed(reason: RegisterFailure) -> Packet {
    RegisterFailed { reason }.to_packet()
}

/// `REGISTER login= password=` (the dispatcher has checked the state).
pub(crate) async fn register(ctx: &Ctx<'_>, gate: &Gate<'_>, reply: Reply<'_>, r: Register) {
    let Register { login, password } = r;
    let password = password.as_str();
    let c = ctx.config;
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
    } else if !allow_register(ctx, gate).await {
        Some(RegisterFailure::RateLimited)
    } else {
        None
    };
    if let Some(r) = reason {
        return reply.send(failed(r));
    }
    let sealed = gate.sealer.seal(&login, password);
    let now = ctx.now();
    match ctx
        .writer
        .write(WriteOp::CreateUser {
            login: login.clone(),
            sealed,
            now,
        })
        .await
    {
        Ok(Outcome::Taken) => reply.send(failed(RegisterFailure::LoginTaken)),
        Ok(_) => {
            info!(login, "registered");
            let login = ctx.addr(&login);
            reply.send(RegisterOk { login }.to_packet());
        }
        Err(e) => {
            warn!("register: {e}");
            reply.send(failed(RegisterFailure::StorageError));
        }
    }
}

/// Takes a registration token: from the buckets every node shares in a cluster (this node's
/// own when the database cannot answer), else from this node's.
async fn allow_register(ctx: &Ctx<'_>, gate: &Gate<'_>) -> bool {
    let (ip, now) = (gate.peer.ip(), ctx.now());
    if let Some(shared) = gate.shared {
        match shared.register.allow_register(ip, now).await {
            Ok(allowed) => return allowed,
            Err(e) => warn!("shared registration limits: {e}"),
        }
    }
    ctx.limits.allow_register(ip, now)
}

/// How long `login` from `ip` must still wait: the longer of this node's throttle and, in a
/// cluster, the shared one (failures on every node count).
async fn throttle_wait(
    ctx: &Ctx<'_>,
    gate: &Gate<'_>,
    login: &str,
    ip: std::net::IpAddr,
    known: bool,
) -> std::time::Duration {
    let local = gate.throttle.wait(login, ip);
    let Some(shared) = gate.shared else {
        return local;
    };
    match shared
        .throttle
        .wait_known(login, ip, ctx.now(), known)
        .await
    {
        Ok(w) => w.max(local),
        Err(e) => {
            warn!("shared login throttle: {e}");
            local
        }
    }
}

/// Whether `ip` is an address known for `login` in the shared throttle (cluster only; asked
/// once per attempt). When the database cannot tell: not known.
async fn known_address(
    ctx: &Ctx<'_>,
    shared: &crate::server::SharedGate,
    login: &str,
    ip: std::net::IpAddr,
) -> bool {
    match shared.throttle.is_known(login, ip, ctx.now()).await {
        Ok(known) => known,
        Err(e) => {
            warn!("shared login throttle: {e}");
            false
        }
    }
}

/// Which turn a login attempt without a trusted device waits for (cluster only): the login's,
/// or, from an address known for it, that address's own.
fn turn_key(login: &str, ip: std::net::IpAddr, known: bool) -> String {
    match known {
        true => format!("{login} {ip}"),
        false => login.to_owned(),
    }
}

/// Records a failed (`ok == false`) or successful attempt without a trusted device, on this
/// node and in the shared counters.
async fn throttle_record(
    ctx: &Ctx<'_>,
    gate: &Gate<'_>,
    login: &str,
    ip: std::net::IpAddr,
    ok: bool,
) {
    match ok {
        true => gate.throttle.success(login, ip),
        false => gate.throttle.failure(login, ip),
    }
    let Some(shared) = gate.shared else {
        return;
    };
    let r = match ok {
        true => shared.throttle.success(login, ip, ctx.now()).await,
        false => shared.throttle.failure(login, ip, ctx.now()).await,
    };
    if let Err(e) = r {
        warn!("shared login throttle: {e}");
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

pub(crate) fn connect_failed(reason: ConnectFailure) -> Packet {
    ConnectFailed {
        reason,
        retry_after: None,
    }
    .to_packet()
}

/// `CONNECT login= [device=]`: always answered with `CONNECT-ACK salt=`, with the same work for
/// known and unknown logins.
pub(crate) async fn connect(
    ctx: &Ctx<'_>,
    gate: &Gate<'_>,
    reply: Reply<'_>,
    r: Connect,
) -> Challenge {
    let raw = r.login.as_str();
    // A cookie too long to be ours is ignored rather than kept.
    let device = r
        .device
        .filter(|d| d.len() <= crate::device::MAX_COOKIE_LEN);
    // Any text is accepted as a login: an invalid one behaves exactly like an unknown one.
    let login = match crate::cmd::parse_target(raw, &ctx.config.domain) {
        Some(crate::cmd::Target::Local(l)) => l,
        _ => raw.to_lowercase(),
    };
    // Throttling is enforced at CONNECT-CONTINUE: CONNECT is always answered with a salt
    // (design.md), so its answer never depends on the login's history.
    let sealed = match ctx.db.password(&login).await {
        Ok(v) => v,
        Err(e) => {
            warn!("connect: {e}");
            None
        }
    };
    let salt = gate.salts.next();
    reply.send(ConnectAck { salt: salt.clone() }.to_packet());
    Challenge {
        login,
        sealed,
        salt,
        device,
    }
}

/// `CONNECT-CONTINUE hash=` answering `challenge` (None: no `CONNECT` before). Returns the
/// login and the unsent reply when the password is right; the session then logs in and
/// answers `CONNECT-OK`.
pub(crate) async fn connect_continue(
    ctx: &Ctx<'_>,
    gate: &Gate<'_>,
    reply: Reply<'_>,
    challenge: Option<Challenge>,
    r: ConnectContinue,
) -> Option<(String, RequestRef)> {
    let hash = r.hash.as_str();
    let Some(Challenge {
        login,
        sealed,
        salt,
        device,
    }) = challenge
    else {
        reply.send(connect_failed(ConnectFailure::BadState));
        return None;
    };
    let ip = gate.peer.ip();
    // A trusted device answers for itself (its own failure budget); anyone else waits out
    // the throttle (SECURITY.md, "Login hardening").
    let device = device.and_then(|d| gate.devices.verify(&login, &d));
    // In a cluster, this login's guesses on this node take turns from the shared throttle's
    // check to its record (one node's own throttle has no await in between).
    // Bounded: a flood of guesses for the login is answered `throttled`, not queued for.
    // An address known for the login takes turns apart (attack 4, L1): strangers' guesses
    // never delay the user's own addresses (SECURITY.md, "Login hardening").
    let known = match (device, gate.shared) {
        (None, Some(shared)) => known_address(ctx, shared, &login, ip).await,
        _ => false,
    };
    let _turn = match (device, gate.shared) {
        (None, Some(shared)) => match shared.checks.turn(&turn_key(&login, ip, known)).await {
            Some(turn) => Some(turn),
            None => {
                info!(peer = %gate.peer, "login check queue full or slow: throttled");
                reply.send(throttled(std::time::Duration::from_secs(1)));
                return None;
            }
        },
        _ => None,
    };
    if device.is_none() {
        let wait = throttle_wait(ctx, gate, &login, ip, known).await;
        if !wait.is_zero() {
            reply.send(throttled(wait));
            return None;
        }
    }
    if !gate.sealer.verify(&login, sealed.as_deref(), &salt, hash) {
        match device {
            Some(d) => gate.devices.failure(d),
            None => throttle_record(ctx, gate, &login, ip, false).await,
        }
        info!(peer = %gate.peer, device = device.is_some(), "login failed");
        reply.send(connect_failed(ConnectFailure::Invalid));
        return None;
    }
    if let Some(d) = device {
        gate.devices.success(d);
    }
    throttle_record(ctx, gate, &login, ip, true).await;
    Some((login, reply.defer()))
}

/// `CONNECT-OK` for `login`, with the server's limits and a fresh device cookie.
pub(crate) fn connect_ok(ctx: &Ctx<'_>, gate: &Gate<'_>, login: &str) -> Packet {
    let c = ctx.config;
    ConnectOk {
        login: ctx.addr(login),
        domain: c.domain.clone(),
        federation: ctx.federation.is_some(),
        max_line: c.max_line as u64,
        max_text: c.max_text as u64,
        max_file_size: c.max_file_size,
        server: concat!("msim-chat/", env!("CARGO_PKG_VERSION")).to_owned(),
        device: Some(gate.devices.issue(login)),
    }
    .to_packet()
}
