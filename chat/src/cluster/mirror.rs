//! Who is online on the other nodes, as this node knows it (for `Hub::is_online`): kept from
//! the presence notifications, and from `cluster_presence`: all of it when the listener
//! (re)connects, the logins changed since the last read on every poll tick (see
//! `fanout::Reader`, `nodes::presence_since`).
//!
//! The mirror lags a login elsewhere by a notification's trip, so a live-only packet for a
//! user it does not show online is not dropped at once: it waits (bounded) until the login's
//! note arrives, or until a read of the table that started after the packet was offered says
//! the user is offline. A session reads its login state (open presence requests, contacts)
//! only after its presence row is committed (`session::login`), so a change made on this node
//! after that read is always either pushed or, being older, in that read.

use bytes::Bytes;
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Instant;
use tracing::info;

/// Most packets waiting for the mirror to learn whether their user is online elsewhere (a
/// second of a busy node's copies for its senders' other sessions fits).
const MAX_WAITING: usize = 32_768;
/// Most bytes of them (beyond either bound a packet is dropped as before: only the
/// just-logged-in user can miss it, until its next login).
const MAX_WAITING_BYTES: usize = 8 << 20;
/// Most packets waiting for one user (one busy user does not take the others' room).
const MAX_WAITING_PER_USER: usize = 256;

/// Hands a live packet to the other nodes (`Outbox::live`); false when there is no room for
/// it now (it then stays waiting, or, for a user known online, is dropped as the outbox's
/// own overflow is).
pub(crate) type Publish = Box<dyn Fn(&str, &Bytes) -> bool + Send + Sync>;

#[derive(Default)]
struct State {
    /// login → nodes.
    online: HashMap<String, HashSet<i64>>,
    /// login → packets offered while it was not known online, with when.
    waiting: HashMap<String, Vec<(Instant, Bytes)>>,
    waiting_count: usize,
    waiting_bytes: usize,
    /// Packets dropped at a bound since start, and when that was last logged.
    dropped: u64,
    dropped_logged: Option<Instant>,
}

/// Who is online on the other nodes: login → nodes; and the packets waiting to know.
pub(crate) struct Mirror {
    state: Mutex<State>,
    publish: Publish,
}

impl std::fmt::Debug for Mirror {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Mirror")
    }
}

impl Mirror {
    pub(crate) fn new(publish: Publish) -> Mirror {
        Mirror {
            state: Mutex::default(),
            publish,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn online(&self, login: &str) -> bool {
        self.lock().online.contains_key(login)
    }

    /// A live-only packet for `login`'s sessions on the other nodes: published now if the
    /// mirror shows it online there, else kept until the mirror knows (see the module doc).
    /// Decided under the lock that the notes take too, so a packet never overtakes one that
    /// waited.
    pub(crate) fn offer(&self, login: &str, bytes: &Bytes) {
        let mut s = self.lock();
        let online = s.online.contains_key(login);
        if online && !s.waiting.contains_key(login) {
            (self.publish)(login, bytes);
            return;
        }
        if s.waiting_count >= MAX_WAITING || s.waiting_bytes + bytes.len() > MAX_WAITING_BYTES {
            return dropped(&mut s);
        }
        let entry = (Instant::now(), bytes.clone());
        match s.waiting.get_mut(login) {
            Some(packets) if packets.len() >= MAX_WAITING_PER_USER => return dropped(&mut s),
            Some(packets) => packets.push(entry),
            None => {
                s.waiting.insert(login.to_owned(), vec![entry]);
            }
        }
        s.waiting_count += 1;
        s.waiting_bytes += bytes.len();
        if online {
            // Behind packets that found no room earlier: in their order.
            self.release(&mut s, login);
        }
    }

    pub(super) fn set(&self, login: &str, node: i64, on: bool) {
        let mut s = self.lock();
        if on {
            s.online.entry(login.to_owned()).or_default().insert(node);
            self.release(&mut s, login);
        } else if let Some(nodes) = s.online.get_mut(login) {
            nodes.remove(&node);
            if nodes.is_empty() {
                s.online.remove(login);
            }
        }
    }

    pub(super) fn drop_nodes(&self, dead: &[i64]) {
        self.lock().online.retain(|_, nodes| {
            nodes.retain(|n| !dead.contains(n));
            !nodes.is_empty()
        });
    }

    /// Replaces what is known of `logins` with `rows` (theirs), from a read of the table
    /// that started at `read_at`.
    pub(super) fn update(&self, logins: &[String], rows: Vec<(String, i64)>, read_at: Instant) {
        let mut s = self.lock();
        for login in logins {
            s.online.remove(login);
        }
        for (login, node) in rows {
            s.online.entry(login).or_default().insert(node);
        }
        self.settle(&mut s, read_at);
    }

    /// Replaces everything with `rows`, read from the table from `read_at` on.
    pub(super) fn replace(&self, rows: Vec<(String, i64)>, read_at: Instant) {
        let mut m = HashMap::<String, HashSet<i64>>::new();
        for (login, node) in rows {
            m.entry(login).or_default().insert(node);
        }
        let mut s = self.lock();
        s.online = m;
        self.settle(&mut s, read_at);
    }

    /// After a read that started at `read_at`: the waiting packets of users now online go;
    /// those offered before the read, of users still offline, are dropped (the read saw every
    /// login committed before they were offered).
    fn settle(&self, s: &mut State, read_at: Instant) {
        let online: Vec<String> = s
            .waiting
            .keys()
            .filter(|l| s.online.contains_key(*l))
            .cloned()
            .collect();
        for login in online {
            self.release(s, &login);
        }
        let (mut count, mut bytes) = (0, 0);
        let State {
            online, waiting, ..
        } = s;
        waiting.retain(|login, packets| {
            // A user online whose packets found no room in the outbox keeps them.
            if !online.contains_key(login) {
                packets.retain(|(at, _)| *at >= read_at);
            }
            count += packets.len();
            bytes += packets.iter().map(|(_, b)| b.len()).sum::<usize>();
            !packets.is_empty()
        });
        s.waiting_count = count;
        s.waiting_bytes = bytes;
    }

    /// Publishes `login`'s waiting packets, in the order they were offered, as far as the
    /// outbox has room (the rest wait for the next chance: a reconnect storm releasing many
    /// users at once must not drop them, nor the presence notes behind them).
    fn release(&self, s: &mut State, login: &str) {
        let Some(packets) = s.waiting.remove(login) else {
            return;
        };
        let mut left = packets.into_iter();
        for (at, b) in left.by_ref() {
            if !(self.publish)(login, &b) {
                let mut kept = vec![(at, b)];
                kept.extend(left);
                s.waiting.insert(login.to_owned(), kept);
                break;
            }
            s.waiting_count -= 1;
            s.waiting_bytes -= b.len();
        }
    }

    /// Packets dropped at a bound (tests).
    #[cfg(test)]
    fn dropped(&self) -> u64 {
        self.lock().dropped
    }

    /// Packets waiting (tests).
    #[cfg(test)]
    pub(crate) fn waiting(&self) -> usize {
        self.lock().waiting_count
    }
}

/// A packet found the waiting room full: counted, and logged at most once a minute (only a
/// user who logged in elsewhere during the mirror's lag can miss it).
fn dropped(s: &mut State) {
    s.dropped += 1;
    let now = Instant::now();
    if s.dropped_logged
        .is_none_or(|at| now.duration_since(at) >= std::time::Duration::from_secs(60))
    {
        s.dropped_logged = Some(now);
        // Info, not a warning: a busy sender's copies for its own other sessions reach the
        // per-user bound in normal operation.
        info!(
            dropped = s.dropped,
            "cluster: live packets waiting for the presence mirror are at their bound; \
             new ones for users not known online go only to this node's sessions"
        );
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests: a failed step is a failed test.
mod tests {
    use super::*;
    use std::sync::Arc;

    /// What the mirror published.
    type Sent = Arc<Mutex<Vec<(String, Bytes)>>>;

    fn mirror() -> (Mirror, Sent) {
        let out = Arc::new(Mutex::new(Vec::new()));
        let sink = out.clone();
        let m = Mirror::new(Box::new(move |l: &str, b: &Bytes| {
            sink.lock().unwrap().push((l.to_owned(), b.clone()));
            true
        }));
        (m, out)
    }

    fn sent(out: &Mutex<Vec<(String, Bytes)>>) -> Vec<(String, Bytes)> {
        std::mem::take(&mut *out.lock().unwrap())
    }

    #[test]
    fn a_packet_for_a_user_not_known_online_waits_for_the_login_note() {
        let (m, out) = mirror();
        m.offer("alice", &Bytes::from("one\n"));
        m.offer("alice", &Bytes::from("two\n"));
        assert!(sent(&out).is_empty());
        m.set("alice", 7, true);
        let got: Vec<_> = sent(&out).into_iter().map(|(_, b)| b).collect();
        assert_eq!(got, vec![Bytes::from("one\n"), Bytes::from("two\n")]);
        // Known online now: straight through.
        m.offer("alice", &Bytes::from("three\n"));
        assert_eq!(sent(&out).len(), 1);
        assert_eq!(m.waiting(), 0);
    }

    #[test]
    fn a_read_that_started_after_the_offer_decides() {
        let (m, out) = mirror();
        let before = Instant::now();
        m.offer("bob", &Bytes::from("x\n"));
        m.offer("carol", &Bytes::from("y\n"));
        // A read from before the offers cannot say bob is offline: the packets stay.
        m.update(&["bob".into()], vec![], before);
        assert_eq!(m.waiting(), 2);
        // A later read: carol logged in meanwhile (her packet goes), bob did not (dropped).
        let after = Instant::now();
        m.update(
            &["bob".into(), "carol".into()],
            vec![("carol".into(), 3)],
            after,
        );
        assert_eq!(sent(&out), vec![("carol".to_owned(), Bytes::from("y\n"))]);
        assert_eq!(m.waiting(), 0);
    }

    #[test]
    fn waiting_packets_are_bounded() {
        let (m, _out) = mirror();
        for _ in 0..MAX_WAITING_PER_USER + 10 {
            m.offer("erin", &Bytes::from("w\n"));
        }
        assert_eq!(m.waiting(), MAX_WAITING_PER_USER);
        assert_eq!(m.dropped(), 10);
        let (m, _out) = mirror();
        let big = Bytes::from(vec![b'x'; 1 << 20]);
        for i in 0..10 {
            m.offer(&format!("dave{i}"), &big);
        }
        assert_eq!(m.waiting(), 8);
        let (m, _out) = mirror();
        for i in 0..MAX_WAITING + 10 {
            m.offer(
                &format!("u{}", i % 1000),
                &Bytes::from(format!("z{}\n", i / 1000)),
            );
        }
        assert_eq!(m.waiting(), MAX_WAITING);
    }

    #[test]
    fn packets_the_outbox_has_no_room_for_keep_waiting_in_order() {
        let room = Arc::new(std::sync::atomic::AtomicUsize::new(1));
        let out = Arc::new(Mutex::new(Vec::new()));
        let (r, sink) = (room.clone(), out.clone());
        let m = Mirror::new(Box::new(move |_: &str, b: &Bytes| {
            let free = r.load(std::sync::atomic::Ordering::SeqCst);
            if free == 0 {
                return false;
            }
            r.store(free - 1, std::sync::atomic::Ordering::SeqCst);
            sink.lock().unwrap().push(b.clone());
            true
        }));
        for p in ["1\n", "2\n", "3\n"] {
            m.offer("alice", &Bytes::from(p));
        }
        m.set("alice", 1, true);
        assert_eq!(m.waiting(), 2, "room for one");
        // Online now, but a new packet goes behind the two still waiting.
        m.offer("alice", &Bytes::from("4\n"));
        assert_eq!(m.waiting(), 3);
        // A read that started later does not drop what waits for room; with room, it goes.
        m.update(&[], vec![], Instant::now());
        assert_eq!(m.waiting(), 3);
        room.store(10, std::sync::atomic::Ordering::SeqCst);
        m.update(&[], vec![], Instant::now());
        let got: Vec<_> = std::mem::take(&mut *out.lock().unwrap());
        assert_eq!(got, ["1\n", "2\n", "3\n", "4\n"].map(Bytes::from));
        assert_eq!(m.waiting(), 0);
    }
}
