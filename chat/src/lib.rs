//! msim-chat: the mSIM messaging server.
//!
//! Start one in-process (tests, load tools):
//!
//! ```no_run
//! # async fn f() -> Result<(), msim_chat::Error> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let config = msim_chat::Config::for_tests("/tmp/msim-data");
//! msim_chat::run(listener, config, tokio::signal::ctrl_c()).await
//! # }
//! ```
#![warn(missing_docs, clippy::unwrap_used)]

// Public: what the binary (main.rs), the tests, msim-load and the client tests use; the rest
// is crate-private so that rustc reports what nothing uses.

pub(crate) mod blocks;
pub(crate) mod clock;
pub(crate) mod cluster;
pub(crate) mod cmd;
pub mod config;
pub mod crypto;
pub mod db;
pub(crate) mod device;
pub mod embedded_relay;
pub mod federation;
pub(crate) mod hub;
pub(crate) mod jobs;
pub(crate) mod rate;
pub mod relays;
pub mod secret_key;
pub(crate) mod server;
pub(crate) mod session;
pub mod settings;
pub(crate) mod throttle;

pub use clock::Clock;
pub use config::Config;
pub use server::{run, Error};
