//! The programs' logs: to stderr, filtered by `RUST_LOG`.

use tracing_subscriber::EnvFilter;

/// Sends the logs to stderr, filtered by `RUST_LOG` or else by `default` (e.g. `info`).
pub fn init(default: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default)),
        )
        .with_writer(std::io::stderr)
        .init();
}
