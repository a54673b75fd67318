//! Routing of incoming packets: replies to the request that is waiting for them (matched by
//! `ref=`), transfer answers to the offer or acceptance waiting for them (matched by
//! `transfer-id=`), everything else to the event stream.
//!
//! The router is plain data behind a mutex; the connection's reader task calls
//! [`Router::route`] for every packet, request methods call [`Router::register`] before they
//! send. Keeping it free of I/O makes the matching rules unit-testable.

use std::collections::HashMap;

use msim_shared::proto::{
    BlockFailed, BlockOk, Body, ConnectAck, ConnectFailed, ConnectOk, ContactsAddFailed,
    ContactsAddOk, ContactsChangeFailed, ContactsChangeOk, ContactsDeleteFailed, ContactsDeleteOk,
    ContactsList, Event, FileAnswerFailed, FileDoneFailed, FileDoneOk, FileHashFailed, FileHashOk,
    FilePending, MarkReadFailed, MessageSendFailed, MessageSent, Pong, PresenceAnswerFailed,
    PresenceApproveOk, PresenceDenyOk, PrivacyFailed, PrivacySetOk, PrivacySettings, Profile,
    ProfileGetFailed, ProfileUpdateFailed, ProfileUpdateOk, RegisterFailed, RegisterOk,
    UnblockFailed, UnblockOk,
};
use msim_shared::Packet;
use tokio::sync::oneshot;

/// Verbs that are only ever sent as the direct answer to a request. When the server leaves out
/// `ref=` on one of these, it goes to the oldest waiting request that expects that verb.
const REPLY_ONLY: &[&str] = &[
    RegisterOk::VERB,
    RegisterFailed::VERB,
    ConnectAck::VERB,
    ConnectOk::VERB,
    ConnectFailed::VERB,
    MessageSent::VERB,
    MessageSendFailed::VERB,
    MarkReadFailed::VERB,
    ContactsList::VERB,
    ContactsAddOk::VERB,
    ContactsAddFailed::VERB,
    ContactsChangeOk::VERB,
    ContactsChangeFailed::VERB,
    ContactsDeleteOk::VERB,
    ContactsDeleteFailed::VERB,
    ProfileUpdateOk::VERB,
    ProfileUpdateFailed::VERB,
    Profile::VERB,
    ProfileGetFailed::VERB,
    FilePending::VERB,
    FileAnswerFailed::VERB,
    FileHashOk::VERB,
    FileHashFailed::VERB,
    FileDoneOk::VERB,
    FileDoneFailed::VERB,
    PresenceApproveOk::VERB,
    PresenceDenyOk::VERB,
    PresenceAnswerFailed::VERB,
    BlockOk::VERB,
    BlockFailed::VERB,
    UnblockOk::VERB,
    UnblockFailed::VERB,
    PrivacySetOk::VERB,
    PrivacyFailed::VERB,
    PrivacySettings::VERB,
    Pong::VERB,
];

/// At most this many transfers are watched at once; further answers go to the event stream.
pub(crate) const MAX_WATCHED_TRANSFERS: usize = 1024;

struct Pending {
    seq: u64,
    verb: String,
    expects: &'static [&'static str],
    tx: oneshot::Sender<Event>,
}

enum Slot {
    Armed,
    Waiting(oneshot::Sender<Event>),
    Arrived(Box<Event>),
}

/// Where packets go. See the module documentation.
#[derive(Default)]
pub(crate) struct Router {
    pending: HashMap<String, Pending>,
    transfers: HashMap<String, Slot>,
    /// Transfers whose sender's deferred SHA-256 (`SEND-FILE-PROXY-HASH`) is awaited.
    hashes: HashMap<String, Slot>,
    seq: u64,
    closed: bool,
}

fn transfer_id(event: &Event) -> Option<&str> {
    match event {
        Event::UploadGrant(g) => Some(&g.transfer_id),
        Event::DownloadGrant(g) => Some(&g.transfer_id),
        Event::FileRejected(r) => Some(&r.transfer_id),
        _ => None,
    }
}

fn error_type(event: &Event) -> Option<&str> {
    match event {
        Event::ErrorNotLoggedIn(e) => Some(&e.verb),
        Event::ErrorBadState(e) => Some(&e.verb),
        Event::ErrorNotImplemented(e) => Some(&e.verb),
        Event::ErrorRateLimited(e) => Some(&e.verb),
        _ => None,
    }
}

fn is_error(verb: &str) -> bool {
    verb.starts_with("ERROR-")
}

impl Router {
    /// Registers a request sent with `reference` (verb `verb`) that waits for one of
    /// `expects` (or an `ERROR-…` packet).
    pub(crate) fn register(
        &mut self,
        reference: &str,
        verb: &str,
        expects: &'static [&'static str],
    ) -> oneshot::Receiver<Event> {
        let (tx, rx) = oneshot::channel();
        if self.closed {
            // The connection is gone: the caller sees the channel closed at once.
            return rx;
        }
        self.seq += 1;
        self.pending.insert(
            reference.to_owned(),
            Pending {
                seq: self.seq,
                verb: verb.to_owned(),
                expects,
                tx,
            },
        );
        rx
    }

    /// The connection closed: every waiter sees its channel closed, and so will later ones.
    pub(crate) fn close(&mut self) {
        self.closed = true;
        self.pending.clear();
        self.transfers.clear();
        self.hashes.clear();
    }

    /// Stops waiting for `reference` (the request was cancelled or timed out).
    pub(crate) fn forget(&mut self, reference: &str) {
        self.pending.remove(reference);
    }

    /// Number of requests waiting.
    #[cfg(test)]
    pub(crate) fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Starts watching `transfer_id` so that its answer (`SEND-FILE-PROXY-OK`, `-READY`,
    /// `-REJECTED`) is kept for [`Router::wait_transfer`] instead of going to the events.
    /// Returns false when too many transfers are watched.
    pub(crate) fn arm_transfer(&mut self, transfer_id: &str) -> bool {
        if self.transfers.contains_key(transfer_id) {
            return true;
        }
        if self.transfers.len() >= MAX_WATCHED_TRANSFERS {
            return false;
        }
        self.transfers.insert(transfer_id.to_owned(), Slot::Armed);
        true
    }

    /// The answer for an armed transfer (at once if it already arrived). `None` when the
    /// transfer is not armed.
    pub(crate) fn wait_transfer(&mut self, transfer_id: &str) -> Option<oneshot::Receiver<Event>> {
        let (tx, rx) = oneshot::channel();
        if self.closed {
            return Some(rx);
        }
        match self.transfers.remove(transfer_id)? {
            Slot::Arrived(event) => {
                // The receiver is alive: it is in our hands.
                let _ = tx.send(*event);
            }
            Slot::Armed | Slot::Waiting(_) => {
                self.transfers
                    .insert(transfer_id.to_owned(), Slot::Waiting(tx));
            }
        }
        Some(rx)
    }

    /// Stops watching a transfer.
    pub(crate) fn disarm_transfer(&mut self, transfer_id: &str) {
        self.transfers.remove(transfer_id);
    }

    /// Starts watching for the sender's SHA-256 of `transfer_id` (`SEND-FILE-PROXY-HASH`), so
    /// that it is kept for [`Router::wait_hash`] instead of going to the events. Returns false
    /// when too many are watched.
    pub(crate) fn arm_hash(&mut self, transfer_id: &str) -> bool {
        if self.hashes.contains_key(transfer_id) {
            return true;
        }
        if self.hashes.len() >= MAX_WATCHED_TRANSFERS {
            return false;
        }
        self.hashes.insert(transfer_id.to_owned(), Slot::Armed);
        true
    }

    /// The sender's hash packet for an armed transfer (at once if it already arrived). `None`
    /// when the transfer is not armed.
    pub(crate) fn wait_hash(&mut self, transfer_id: &str) -> Option<oneshot::Receiver<Event>> {
        let (tx, rx) = oneshot::channel();
        if self.closed {
            return Some(rx);
        }
        match self.hashes.remove(transfer_id)? {
            Slot::Arrived(event) => {
                let _ = tx.send(*event);
            }
            Slot::Armed | Slot::Waiting(_) => {
                self.hashes
                    .insert(transfer_id.to_owned(), Slot::Waiting(tx));
            }
        }
        Some(rx)
    }

    /// Stops watching for a transfer's hash.
    pub(crate) fn disarm_hash(&mut self, transfer_id: &str) {
        self.hashes.remove(transfer_id);
    }

    /// Routes one incoming packet. Returns the event when it belongs to the event stream,
    /// `None` when it was handed to a waiting request.
    pub(crate) fn route(&mut self, packet: &Packet, event: Event) -> Option<Event> {
        let verb = packet.verb.as_str();
        // 1. A reply carrying the ref of a waiting request.
        if let Some(reference) = packet.reference() {
            let matches = self
                .pending
                .get(reference)
                .is_some_and(|p| p.expects.contains(&verb) || is_error(verb));
            if matches {
                if let Some(pending) = self.pending.remove(reference) {
                    return self.deliver(pending, event);
                }
            }
        }
        // 2. A transfer answer, or a sender's hash, somebody is waiting for.
        if let Some(id) = transfer_id(&event) {
            if self.transfers.contains_key(id) {
                let id = id.to_owned();
                return fill(&mut self.transfers, id, event);
            }
        }
        if let Event::FileHash(h) = &event {
            if self.hashes.contains_key(&h.transfer_id) {
                let id = h.transfer_id.clone();
                return fill(&mut self.hashes, id, event);
            }
        }
        // 3. A reply without (or with an unknown) ref: the oldest request expecting it.
        if packet
            .reference()
            .is_none_or(|r| !self.pending.contains_key(r))
        {
            let wanted = if REPLY_ONLY.contains(&verb) {
                self.oldest(|p| p.expects.contains(&verb))
            } else if let Some(of) = error_type(&event) {
                self.oldest(|p| p.verb == of)
            } else {
                None
            };
            if let Some(reference) = wanted {
                if let Some(pending) = self.pending.remove(&reference) {
                    return self.deliver(pending, event);
                }
            }
        }
        Some(event)
    }

    fn oldest(&self, filter: impl Fn(&Pending) -> bool) -> Option<String> {
        self.pending
            .iter()
            .filter(|(_, p)| filter(p))
            .min_by_key(|(_, p)| p.seq)
            .map(|(r, _)| r.clone())
    }

    fn deliver(&mut self, pending: Pending, event: Event) -> Option<Event> {
        // An accepted offer: watch its transfer at once, so an answer that arrives before
        // the caller asks for it is kept.
        if let Event::FilePending(p) = &event {
            self.arm_transfer(&p.transfer_id);
        }
        // The waiter gave up (timeout, cancellation): nothing to do.
        let _ = pending.tx.send(event);
        None
    }
}

/// Hands `event` to the slot of `id` in `slots` (which holds one); returns it when the slot
/// already had its event (the first one is kept) or its waiter is gone.
fn fill(slots: &mut HashMap<String, Slot>, id: String, event: Event) -> Option<Event> {
    match slots.remove(&id) {
        Some(Slot::Armed) => {
            slots.insert(id, Slot::Arrived(Box::new(event)));
            None
        }
        Some(Slot::Waiting(tx)) => tx.send(event).err(),
        Some(Slot::Arrived(first)) => {
            // A second answer for the same transfer: keep the first one.
            slots.insert(id, Slot::Arrived(first));
            Some(event)
        }
        None => Some(event),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(line: &str) -> (Packet, Event) {
        let packet = Packet::parse_line(line.as_bytes()).expect("valid line");
        let event = Event::from_packet(&packet).expect("valid event");
        (packet, event)
    }

    fn route(router: &mut Router, line: &str) -> Option<Event> {
        let (packet, event) = event(line);
        router.route(&packet, event)
    }

    const SENT: &[&str] = &["MESSAGE-SENT", "MESSAGE-SEND-FAILED"];

    #[test]
    fn reply_goes_to_its_ref_even_out_of_order() {
        let mut r = Router::default();
        let mut a = r.register("1", "MESSAGE", SENT);
        let mut b = r.register("2", "MESSAGE", SENT);
        assert!(route(&mut r, "MESSAGE-SENT id=B at=2024-01-01T00:00:00Z ref=2").is_none());
        assert!(route(&mut r, "MESSAGE-SENT id=A at=2024-01-01T00:00:00Z ref=1").is_none());
        match (a.try_recv(), b.try_recv()) {
            (Ok(Event::MessageSent(a)), Ok(Event::MessageSent(b))) => {
                assert_eq!((a.id.as_str(), b.id.as_str()), ("A", "B"));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(r.pending_len(), 0);
    }

    #[test]
    fn pushed_events_go_to_the_stream() {
        let mut r = Router::default();
        let _a = r.register("1", "MESSAGE", SENT);
        let out = route(
            &mut r,
            "MESSAGE id=X from=bob@h to=me@h at=2024-01-01T00:00:00Z text=hi",
        );
        assert!(matches!(out, Some(Event::Message(_))));
        assert!(route(&mut r, "TYPING-STARTED from=bob@h").is_some());
        assert_eq!(r.pending_len(), 1);
    }

    #[test]
    fn unknown_ref_and_unexpected_verb_go_to_the_stream() {
        let mut r = Router::default();
        let mut a = r.register("1", "CONTACTS-GET", &["CONTACTS-GET-RESPONSE"]);
        // A packet with our ref but a verb that is not an answer to this request.
        assert!(route(&mut r, "TYPING-END from=bob@h ref=1").is_some());
        // A stale ref.
        assert!(route(&mut r, "PONG ref=99").is_some());
        assert!(a.try_recv().is_err());
    }

    #[test]
    fn errors_with_ref_answer_the_request() {
        let mut r = Router::default();
        let mut a = r.register("7", "MESSAGE", SENT);
        assert!(route(
            &mut r,
            "ERROR-RATE-LIMITED type=MESSAGE retry-after=3 ref=7"
        )
        .is_none());
        assert!(matches!(a.try_recv(), Ok(Event::ErrorRateLimited(_))));
    }

    #[test]
    fn refless_replies_go_to_the_oldest_matching_request() {
        let mut r = Router::default();
        let mut first = r.register("1", "MESSAGE", SENT);
        let mut other = r.register("2", "CONTACTS-GET", &["CONTACTS-GET-RESPONSE"]);
        let mut second = r.register("3", "MESSAGE", SENT);
        assert!(route(&mut r, "MESSAGE-SENT id=A at=2024-01-01T00:00:00Z").is_none());
        assert!(matches!(first.try_recv(), Ok(Event::MessageSent(_))));
        assert!(second.try_recv().is_err());
        assert!(other.try_recv().is_err());
        // Error packets without ref match by their type=.
        assert!(route(&mut r, "ERROR-NOT-LOGGED-IN type=CONTACTS-GET").is_none());
        assert!(matches!(other.try_recv(), Ok(Event::ErrorNotLoggedIn(_))));
    }

    #[test]
    fn transfer_answer_before_wait_is_kept() {
        let mut r = Router::default();
        let mut offer = r.register(
            "1",
            "SEND-FILE-PROXY",
            &["SEND-FILE-PROXY-PENDING", "SEND-FILE-PROXY-REJECTED"],
        );
        route(
            &mut r,
            "SEND-FILE-PROXY-PENDING transfer-id=T to=bob@h expires=2024-01-01T00:00:00Z ref=1",
        );
        assert!(matches!(offer.try_recv(), Ok(Event::FilePending(_))));
        // The answer arrives before the caller asks for it.
        let grant = "SEND-FILE-PROXY-OK transfer-id=T connect=127.0.0.1 port=3215 \
                     url=http://127.0.0.1:3215/v1/transfers/T token=tok expires=2024-01-01T00:00:00Z";
        assert!(route(&mut r, grant).is_none());
        let mut rx = r.wait_transfer("T").expect("armed");
        assert!(matches!(rx.try_recv(), Ok(Event::UploadGrant(_))));
        // Now unwatched: a repeat goes to the stream.
        assert!(route(&mut r, grant).is_some());
    }

    #[test]
    fn transfer_answer_after_wait_is_delivered() {
        let mut r = Router::default();
        assert!(r.arm_transfer("T"));
        let mut rx = r.wait_transfer("T").expect("armed");
        assert!(rx.try_recv().is_err());
        assert!(route(
            &mut r,
            "SEND-FILE-PROXY-REJECTED transfer-id=T reason=rejected"
        )
        .is_none());
        assert!(matches!(rx.try_recv(), Ok(Event::FileRejected(_))));
        // Other transfers' answers are events.
        assert!(route(
            &mut r,
            "SEND-FILE-PROXY-REJECTED transfer-id=U reason=rejected"
        )
        .is_some());
        assert!(r.wait_transfer("U").is_none());
    }

    #[test]
    fn watched_transfers_are_bounded() {
        let mut r = Router::default();
        for i in 0..MAX_WATCHED_TRANSFERS {
            assert!(r.arm_transfer(&i.to_string()));
        }
        assert!(!r.arm_transfer("one-too-many"));
        r.disarm_transfer("0");
        assert!(r.arm_transfer("one-too-many"));
    }

    #[test]
    fn forgotten_requests_do_not_swallow_replies() {
        let mut r = Router::default();
        let rx = r.register("1", "PING", &["PONG"]);
        r.forget("1");
        drop(rx);
        assert!(route(&mut r, "PONG ref=1").is_some());
    }
}
