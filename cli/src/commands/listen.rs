//! `listen`: print pushed events until Ctrl-C or `--count`, reconnecting when the connection
//! drops, without printing anything twice.

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use anyhow::Result;
use msim::backoff::Backoff;
use msim::{Client, ClientError, Event, Events};

use super::Ctx;
use crate::error::{is_connection_loss, Exit};
use crate::output::human;
use crate::output::json::EventLine;

/// `msim listen`'s options.
#[derive(Debug, Clone)]
pub struct ListenOptions {
    pub count: Option<u64>,
    pub ack: bool,
    pub mark_read: bool,
    pub reconnect: bool,
}

/// A connection that stayed up this long is healthy: the next loss starts the backoff over.
const HEALTHY_AFTER: Duration = Duration::from_secs(10);
/// Without any event for this long, `listen` checks the connection with a `PING`.
const LIVENESS_CHECK: Duration = Duration::from_secs(60);
/// How many printed message ids (and other redeliverable items) `listen` remembers.
const SEEN_CAPACITY: usize = 10_000;

/// A bounded set of recently printed keys: the oldest are forgotten first.
struct Seen {
    keys: HashSet<String>,
    order: VecDeque<String>,
    capacity: usize,
}

impl Seen {
    fn new(capacity: usize) -> Seen {
        Seen {
            keys: HashSet::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    /// Records `key`; `false` when it was already there.
    fn insert(&mut self, key: String) -> bool {
        if self.keys.contains(&key) {
            return false;
        }
        if self.order.len() >= self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.keys.remove(&old);
            }
        }
        self.keys.insert(key.clone());
        self.order.push_back(key);
        true
    }
}

/// What identifies an event the server may send again at the next login (pending messages,
/// offers and file results; receipts are sent once but cost nothing to remember).
fn redelivery_key(event: &Event) -> Option<String> {
    Some(match event {
        Event::Message(m) => format!("message {}", m.id),
        Event::ReadReceipt(r) => format!("read {} {}", r.id, r.by),
        Event::FileOffered(f) => format!("offer {}", f.transfer_id),
        Event::DownloadGrant(g) => format!("ready {}", g.transfer_id),
        Event::UploadGrant(g) => format!("accepted {}", g.transfer_id),
        Event::FileRejected(r) => format!("rejected {}", r.transfer_id),
        _ => return None,
    })
}

/// How one logged-in session of `listen` ended.
enum SessionEnd {
    /// Ctrl-C, or `--count` reached.
    Done,
    /// The connection is gone.
    Lost(anyhow::Error),
}

/// State kept across reconnections.
struct ListenState {
    printed: u64,
    seen: Seen,
}

/// `msim listen`: prints events until Ctrl-C or `--count`; reconnects unless `--no-reconnect`.
pub async fn listen(ctx: &Ctx<'_>, options: &ListenOptions) -> Result<()> {
    let settings = ctx.settings;
    let (mut client, mut events) = ctx.interruptible(settings.login()).await?;
    if let Some(me) = client.me() {
        ctx.out
            .notice(|| format!("Listening as {me}; Ctrl-C to stop."));
    }
    if options.count == Some(0) {
        return Ok(());
    }
    let mut state = ListenState {
        printed: 0,
        seen: Seen::new(SEEN_CAPACITY),
    };
    let mut backoff = Backoff::default();
    loop {
        let connected_at = tokio::time::Instant::now();
        let lost = match listen_session(ctx, options, &client, &mut events, &mut state).await? {
            SessionEnd::Done => return Ok(()),
            SessionEnd::Lost(error) => error,
        };
        drop((client, events));
        if !options.reconnect {
            return Err(lost);
        }
        if connected_at.elapsed() >= HEALTHY_AFTER {
            backoff.reset();
        }
        let mut delay = backoff.next_delay();
        eprintln!(
            "msim: connection to {} lost ({lost:#}); reconnecting in {:.1} s",
            settings.server,
            delay.as_secs_f64()
        );
        (client, events) = loop {
            tokio::select! {
                _ = ctx.cancel.cancelled() => return Ok(()),
                _ = tokio::time::sleep(delay) => {}
            }
            let attempt = tokio::select! {
                _ = ctx.cancel.cancelled() => return Ok(()),
                attempt = settings.login() => attempt,
            };
            match attempt {
                Ok(connected) => break connected,
                // A refused login (or a usage problem) does not get better by retrying.
                Err(error) if Exit::of(&error) != Exit::Error => return Err(error),
                Err(error) => {
                    delay = backoff.next_delay();
                    eprintln!(
                        "msim: reconnecting to {} failed ({error:#}); retrying in {:.1} s",
                        settings.server,
                        delay.as_secs_f64()
                    );
                }
            }
        };
        eprintln!(
            "msim: reconnected to {} as {}",
            settings.server,
            client.me().unwrap_or_default()
        );
    }
}

/// Prints events from one logged-in connection until Ctrl-C, `--count`, or the connection
/// is lost. Errors other than a lost connection end `listen`.
async fn listen_session(
    ctx: &Ctx<'_>,
    options: &ListenOptions,
    client: &Client,
    events: &mut Events,
    state: &mut ListenState,
) -> Result<SessionEnd> {
    // Connection losses become `SessionEnd::Lost`; anything else is returned as an error.
    macro_rules! check {
        ($e:expr) => {
            match $e {
                Ok(v) => v,
                Err(error) => {
                    let error = anyhow::Error::from(error);
                    if is_connection_loss(&error) {
                        return Ok(SessionEnd::Lost(error));
                    }
                    return Err(error);
                }
            }
        };
    }
    loop {
        let event = tokio::select! {
            _ = ctx.cancel.cancelled() => return Ok(SessionEnd::Done),
            event = events.recv() => match event {
                Some(event) => event,
                None => return Ok(SessionEnd::Lost(ClientError::Closed.into())),
            },
            _ = tokio::time::sleep(LIVENESS_CHECK) => {
                // Quiet for a while: make sure the server is still there (a connection can
                // die without the socket noticing).
                let pong = tokio::select! {
                    _ = ctx.cancel.cancelled() => return Ok(SessionEnd::Done),
                    pong = client.ping() => pong,
                };
                check!(pong);
                continue;
            }
        };
        let fresh = redelivery_key(&event).is_none_or(|key| state.seen.insert(key));
        if fresh {
            ctx.out
                .print(&EventLine::from(&event), || human::event(&event));
        }
        let Event::Message(m) = &event else { continue };
        // Acknowledge redelivered copies too: the earlier acknowledgement may have been lost
        // with the connection.
        if options.mark_read {
            match client.mark_read(&m.id).await {
                // Marked read before the connection dropped.
                Err(ClientError::ReadFailed { .. }) if !fresh => {}
                other => check!(other),
            }
        } else if options.ack {
            check!(client.ack(&m.id).await);
        }
        if !fresh {
            continue;
        }
        state.printed += 1;
        if options.count.is_some_and(|n| state.printed >= n) {
            if options.ack || options.mark_read {
                // A round trip makes sure the ACK reached the server before we hang up.
                if let Err(error) = client.ping().await {
                    eprintln!(
                        "msim: the server may not have the last acknowledgement ({error}); \
                         the message can be delivered again at the next login"
                    );
                }
            }
            return Ok(SessionEnd::Done);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::UsageError;

    #[test]
    fn seen_is_bounded_and_forgets_the_oldest_first() {
        let mut seen = Seen::new(3);
        for k in ["a", "b", "c"] {
            assert!(seen.insert(k.to_owned()));
        }
        assert!(!seen.insert("a".to_owned()));
        assert!(seen.insert("d".to_owned())); // forgets "a"
        assert_eq!(seen.keys.len(), 3);
        assert!(!seen.insert("d".to_owned()));
        assert!(seen.insert("a".to_owned())); // forgets "b"
        assert!(seen.insert("b".to_owned()));
        assert!(seen.keys.len() <= 3 && seen.order.len() <= 3);
    }

    #[test]
    fn connection_losses_are_told_apart_from_other_errors() {
        assert!(is_connection_loss(&ClientError::Closed.into()));
        assert!(is_connection_loss(&ClientError::Timeout.into()));
        assert!(is_connection_loss(
            &anyhow::Error::from(ClientError::Io(std::io::ErrorKind::ConnectionReset.into()))
                .context("while listening")
        ));
        assert!(!is_connection_loss(&ClientError::NotLoggedIn.into()));
        assert!(!is_connection_loss(&UsageError("x".into()).into()));
    }
}
