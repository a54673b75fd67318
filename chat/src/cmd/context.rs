//! What a command may touch. A command gets a [`Reply`] for its one direct answer (it carries
//! the request's `ref=`), the logged-in identity ([`Me`]), and capability structs that hold only
//! the handles its family uses: [`Ctx`] (store, hub, blocks, rate limits, settings) for every
//! family, plus [`Relays`] for file negotiation and [`Gate`] for registration and login. Session
//! state (login, queues, backlog) stays in `crate::session`.

use crate::blocks::Blocks;
use crate::config::Config;
use crate::crypto::{SaltGen, Sealer};
use crate::db::commit::Writer;
use crate::db::Db;
use crate::device::DeviceCookies;
use crate::hub::Hub;
use crate::rate::Limits;
use crate::relays::RelayPool;
use crate::server::Shared;
use crate::session::Outbox;
use crate::throttle::Throttle;
use msim_shared::token::Keyring;
use msim_shared::Packet;
use std::net::SocketAddr;

/// The handles every command family uses.
pub(crate) struct Ctx<'a> {
    /// Settings (read only).
    pub(crate) config: &'a Config,
    /// Reads.
    pub(crate) db: &'a Db,
    /// Writes (group commit).
    pub(crate) writer: &'a Writer,
    /// Live sessions, to push to other users and to one's own other sessions.
    pub(crate) hub: &'a Hub,
    /// Who blocked whom.
    pub(crate) blocks: &'a Blocks,
    /// Registration and account-discovery rate limits.
    pub(crate) limits: &'a Limits,
    /// Federation, when on (remote addresses).
    pub(crate) federation: Option<&'a crate::federation::Federation>,
}

impl<'a> Ctx<'a> {
    pub(crate) fn new(sh: &'a Shared) -> Ctx<'a> {
        Ctx {
            config: &sh.config,
            db: &sh.db,
            writer: &sh.writer,
            hub: &sh.hub,
            blocks: &sh.blocks,
            limits: &sh.limits,
            federation: sh.federation.as_deref(),
        }
    }

    /// `login@domain` for a local login.
    pub(crate) fn addr(&self, login: &str) -> String {
        addr_in(&self.config.domain, login)
    }

    /// The server clock, in microseconds.
    pub(crate) fn now(&self) -> i64 {
        self.config.clock.now_micros()
    }
}

/// What file negotiation uses beyond [`Ctx`]: the relays and the key that signs their tokens.
pub(crate) struct Relays<'a> {
    pub(crate) pool: &'a RelayPool,
    pub(crate) keyring: &'a Keyring,
}

impl<'a> Relays<'a> {
    pub(crate) fn new(sh: &'a Shared) -> Relays<'a> {
        Relays {
            pool: &sh.relays,
            keyring: &sh.keyring,
        }
    }
}

/// What registration and login use beyond [`Ctx`]: passwords, salts, throttling, device
/// cookies and the client's address.
pub(crate) struct Gate<'a> {
    pub(crate) sealer: &'a Sealer,
    pub(crate) salts: &'a SaltGen,
    pub(crate) throttle: &'a Throttle,
    /// In a cluster: the counters every node shares (they count too).
    pub(crate) shared: Option<&'a crate::server::SharedGate>,
    pub(crate) devices: &'a DeviceCookies,
    pub(crate) peer: SocketAddr,
}

impl<'a> Gate<'a> {
    pub(crate) fn new(sh: &'a Shared, peer: SocketAddr) -> Gate<'a> {
        Gate {
            sealer: &sh.sealer,
            salts: &sh.salts,
            throttle: &sh.throttle,
            shared: sh.shared_gate.as_ref(),
            devices: &sh.devices,
            peer,
        }
    }
}

/// The logged-in user on whose behalf a command runs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Me<'a> {
    /// Canonical login.
    pub(crate) login: &'a str,
    /// This session's hub id (to reach only one's *other* sessions).
    pub(crate) session: u64,
}

/// The request's `ref=`, kept while its answer waits (a pipelined `MESSAGE`).
#[derive(Debug, Clone, Default)]
pub(crate) struct RequestRef(Option<String>);

impl RequestRef {
    pub(crate) fn of(req: &Packet) -> RequestRef {
        RequestRef(req.reference().map(str::to_owned))
    }
}

/// The direct answer to one request: written to the connection with the request's `ref=`.
/// Sending consumes it, so a command answers at most once.
pub(crate) struct Reply<'o> {
    out: &'o mut Outbox,
    verb: &'o str,
    reference: RequestRef,
}

impl<'o> Reply<'o> {
    /// The reply handle for `req`.
    pub(crate) fn to(out: &'o mut Outbox, req: &'o Packet) -> Reply<'o> {
        Reply {
            out,
            verb: &req.verb,
            reference: RequestRef::of(req),
        }
    }

    /// The reply handle for a request answered later (its verb is no longer needed).
    pub(crate) fn resume(out: &'o mut Outbox, reference: RequestRef) -> Reply<'o> {
        Reply {
            out,
            verb: "",
            reference,
        }
    }

    /// The request's verb (for `type=` in error answers).
    pub(crate) fn verb(&self) -> &str {
        self.verb
    }

    /// Keeps only the `ref=`, to answer later with [`Reply::resume`].
    pub(crate) fn defer(self) -> RequestRef {
        self.reference
    }

    /// Sends the answer.
    pub(crate) fn send(self, p: Packet) {
        self.out.push(&p.with_opt("ref", self.reference.0));
    }
}

/// `login@domain` for a local login of `domain`.
pub(crate) fn addr_in(domain: &str, login: &str) -> String {
    // Remote users (federation) are stored with their full address.
    if login.contains('@') {
        return login.to_owned();
    }
    format!("{login}@{domain}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(out: &Outbox) -> String {
        String::from_utf8_lossy(out.bytes()).into_owned()
    }

    #[test]
    fn a_reply_carries_the_requests_ref_now_or_later() {
        let req = Packet::new("PING").with("ref", "r1");
        let mut out = Outbox::default();
        Reply::to(&mut out, &req).send(Packet::new("PONG"));
        assert_eq!(wire(&out), Packet::new("PONG").with("ref", "r1").to_wire());

        let mut later = Outbox::default();
        let deferred = Reply::to(&mut later, &req).defer();
        assert!(later.is_empty(), "deferring sends nothing");
        Reply::resume(&mut later, deferred).send(Packet::new("PONG"));
        assert_eq!(wire(&later), wire(&out));

        let bare = Packet::new("PING");
        let mut none = Outbox::default();
        Reply::to(&mut none, &bare).send(Packet::new("PONG"));
        assert_eq!(wire(&none), Packet::new("PONG").to_wire());
    }
}
