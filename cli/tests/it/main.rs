//! The integration tests of this crate, one binary (one link) with a module per area.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod cli;
mod common;
mod deferred_hash;
#[cfg(target_os = "linux")]
mod interrupt;
mod receive_fair;
mod receive_many;
mod receive_turns;
mod reconnect;
mod stale_part;
mod timing;
mod tls;
