//! The integration tests of this crate, one binary (one link) with a module per area.

mod access;
mod crash;
mod data_dir_lock;
mod delivery;
mod follow_pace;
mod handoff;
mod hash_skip;
mod health_slots;
mod http_status;
mod http_support;
mod limits;
mod per_sender;
mod rate_window;
mod recovery_check;
mod reservation_pace;
mod settings;
mod sha_check;
mod slow_transfers;
mod support;
mod transfers;
mod waiting_downloads;
mod window_across_requests;
