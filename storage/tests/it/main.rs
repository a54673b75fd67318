//! The integration tests of this crate, one binary (one link) with a module per area.

mod lifecycle;
mod store_support;
mod streaming;
mod verified;
