//! The integration tests of this crate, one binary (one link) with a module per area.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;
mod failed_start;
mod library;
mod login_then;
mod pause;
mod pipeline;
mod slow_sender;
mod stalled_upload;
mod verification;
