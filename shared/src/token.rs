//! Capability tokens for relay transfers (owned by the relay work; see PROTOCOL.md).
