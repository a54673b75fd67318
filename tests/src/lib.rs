//! End-to-end test helpers and the `msim-load` load generator.

pub mod load;
