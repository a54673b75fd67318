//! The integration tests of this crate, one binary (one link) with a module per area.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod cluster;
mod common;
mod connection;
mod contacts_typing_limits;
mod crash;
mod disk_full;
mod durability;
mod embedded_relay;
mod federation;
mod file_done;
mod file_hash;
mod files;
mod limits;
mod load;
mod login_backlog;
mod login_hardening;
mod login_race;
mod postgres;
mod privacy;
mod retention;
mod secret_key;
mod server;
mod settings;
mod tls;
