//! mSIM protocol types shared by the server, the relay and the client.
pub mod token;
