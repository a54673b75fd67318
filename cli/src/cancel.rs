//! The one Ctrl-C path: a signal listener cancels a token that every command can watch.

use tokio_util::sync::CancellationToken;

/// A token cancelled by the first Ctrl-C (SIGINT). Call inside the runtime.
///
/// Commands that can stop cleanly (`listen`, `receive`, `typing --for`, the wait in
/// `send-file`) watch it themselves; the others are wrapped in
/// [`crate::commands::Ctx::interruptible`] and end with [`crate::error::Interrupted`].
pub fn on_ctrl_c() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    // Registered here, before any command starts, so that no Ctrl-C falls between the two.
    #[cfg(unix)]
    let mut interrupt =
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()) {
            Ok(signal) => signal,
            // No handler: Ctrl-C keeps its default action (the process ends).
            Err(_) => return token,
        };
    tokio::spawn(async move {
        #[cfg(unix)]
        let pressed = interrupt.recv().await.is_some();
        #[cfg(not(unix))]
        let pressed = tokio::signal::ctrl_c().await.is_ok();
        if pressed {
            cancel.cancel();
        }
    });
    token
}
