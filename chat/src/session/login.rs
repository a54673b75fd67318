//! Logging a session in (after `CONNECT-CONTINUE` proved the password) and out: hub
//! registration, `CONNECT-OK`, presence, the offline backlog, and the clean-up at the end.

use super::{LoggedIn, Session};
use crate::cmd::auth::{connect_failed, connect_ok};
use crate::cmd::context::{Ctx, Gate, Reply, RequestRef};
use crate::cmd::presence;
use crate::db::WriteOp;
use crate::hub::Stream;
use msim_shared::proto::ConnectFailure;
use tokio::sync::mpsc;
use tracing::{info, warn};

impl Session<'_> {
    /// Logs `login` in and answers `CONNECT-OK` to `reply`, then sends what is waiting.
    pub(super) async fn log_in(&mut self, login: String, reply: RequestRef) {
        let sh = self.sh.clone();
        let ctx = Ctx::new(&sh);
        // Register first: from now on every stored item reaches this session live (queued in
        // its channel). Then snapshot the high-water marks: the backlog sends every stored item
        // up to them from the database, and the session drops live items at or below them
        // (PROTOCOL.md §5.4). Nothing is lost and nothing is sent twice.
        let (tx, rx) = mpsc::channel(sh.config.outbound_queue);
        let (id, first) = sh.hub.register(&login, tx);
        let (marks, backlog) = match sh.db.login_marks(&login, ctx.now()).await {
            Ok(v) => v,
            Err(e) => {
                warn!("login: {e}");
                sh.hub.unregister(&login, id);
                let failed = connect_failed(ConnectFailure::Invalid);
                return Reply::resume(&mut self.out, reply).send(failed);
            }
        };
        self.rx = Some(rx);
        self.marks[Stream::Messages as usize] = marks.messages;
        self.marks[Stream::Receipts as usize] = marks.receipts;
        self.marks[Stream::Offers as usize] = marks.offers;
        self.marks[Stream::Notices as usize] = marks.notices;
        info!(login, session = id, peer = %self.peer, "logged in");
        let ok = connect_ok(&ctx, &Gate::new(&sh, self.peer), &login);
        Reply::resume(&mut self.out, reply).send(ok);
        self.login = Some(LoggedIn {
            login: login.clone(),
            id,
        });
        // In a cluster, "first session" means first on any node (decided in the database).
        // Decided before the backlog is read: once the row is committed, a change another
        // node makes after this session's reads is pushed here (`cluster::mirror`). Every
        // login syncs, not only this node's first: a second one waits for the first one's
        // row being written (a per-login turn; nothing is written when it is stored).
        let first = match &sh.cluster {
            Some(cluster) => cluster.session_opened(&login).await,
            None => first,
        };
        // The presence announcement goes to the watchers, the backlog to this session: neither
        // waits for the other's database reads, so they run side by side and the requests
        // queued behind the login (a `send-file`'s offer) are reached one read sooner.
        let announce = async {
            if first {
                presence::announce(&ctx, &login, true).await;
            }
        };
        tokio::join!(announce, self.replay_backlog(&ctx, &login, &marks, backlog));
    }

    /// Cleans up after a connection: typing ends, hub removal, presence when last session.
    pub(super) async fn log_out(&mut self) {
        let Some(LoggedIn { login, id }) = self.login.take() else {
            return;
        };
        let sh = self.sh.clone();
        let ctx = Ctx::new(&sh);
        self.typing.end_all(&ctx, &login);
        self.rx = None;
        let last = sh.hub.unregister(&login, id);
        info!(login, session = id, "logged out");
        let last = match &sh.cluster {
            Some(cluster) if last => cluster.session_closed(&login).await,
            _ => last,
        };
        if last {
            let op = WriteOp::SetLastSeen {
                login: login.clone(),
                at: ctx.now(),
            };
            if let Err(e) = sh.writer.write(op).await {
                warn!("last seen: {e}");
            }
            presence::announce(&ctx, &login, false).await;
        }
    }
}
