//! An opt-in timing log for finding where the milliseconds of a transfer go: with
//! `MSIM_TIMING=1` in the environment, each [`mark`] prints one line to stderr,
//!
//! ```text
//! msim-timing pid=1234 us=1795703282029440 offer-pending
//! ```
//!
//! `us` is wall-clock time in microseconds since the Unix epoch, so the lines of a sender and
//! a recipient on one machine can be merged into one timeline (BENCHMARKS.md,
//! "Where a picture's milliseconds go"). Without the variable a mark costs one relaxed load.

use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

/// The environment variable that turns the log on (any non-empty value but `0`).
pub const ENV: &str = "MSIM_TIMING";

fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var_os(ENV).is_some_and(|v| !v.is_empty() && v != "0"))
}

/// Logs that `what` happened now, when the timing log is on.
pub fn mark(what: &str) {
    if !enabled() {
        return;
    }
    let us = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros());
    // One write per line: lines of concurrent tasks do not interleave, and a mark costs
    // one system call.
    let line = format!("msim-timing pid={} us={us} {what}\n", std::process::id());
    let _ = std::io::Write::write_all(&mut std::io::stderr().lock(), line.as_bytes());
}
