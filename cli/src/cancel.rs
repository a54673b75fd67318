//! The one Ctrl-C path: a signal listener cancels a token that every command can watch.

use tokio_util::sync::CancellationToken;

/// A token cancelled by the first Ctrl-C (SIGINT). Call inside the runtime.
///
/// Commands that can stop cleanly (`listen`, `receive`, `typing --for`, the wait in
/// `send-file`) watch it themselves; [`crate::commands::run`] turns it into
/// [`crate::error::Interrupted`] for the others.
pub fn on_ctrl_c() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        // An error means no handler could be installed: nothing will cancel then, which is
        // what the default SIGINT action gave before.
        if tokio::signal::ctrl_c().await.is_ok() {
            cancel.cancel();
        }
    });
    token
}
