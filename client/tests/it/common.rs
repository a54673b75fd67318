//! The servers behind the library's tests: msim-chat with its embedded relay (msim-testkit's
//! wiring, the binary's), on a runtime of their own.

use msim_testkit::{System, ThreadedSystem};

/// Starts msim-chat with its embedded relay; blocks until both listen.
pub fn start() -> ThreadedSystem {
    System::builder()
        .start_on_thread()
        .expect("msim-chat and its relay start")
}

/// The password the tests give `login`.
pub fn password(login: &str) -> String {
    format!("{login}-password-123")
}
