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

pub mod blocks;
pub mod clock;
pub mod cmd;
pub mod config;
pub mod crypto;
pub mod db;
pub mod device;
pub mod embedded_relay;
pub mod hub;
pub mod rate;
pub mod relays;
pub mod secret_key;
pub mod server;
pub mod session;
pub mod settings;
pub mod throttle;

pub use clock::Clock;
pub use config::Config;
pub use server::{run, Error, Server};
