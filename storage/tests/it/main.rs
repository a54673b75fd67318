//! The integration tests of this crate, one binary (one link) with a module per area.

mod direct;
mod lifecycle;
mod store_support;
mod streaming;
mod unhashed;
mod verified;
