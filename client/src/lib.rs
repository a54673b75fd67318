//! mSIM client library: an async API over the whole mSIM protocol and the relay's file
//! transfer API.
//!
//! ```no_run
//! # async fn demo() -> Result<(), msim::ClientError> {
//! let (client, mut events) = msim::Client::connect("127.0.0.1:3214").await?;
//! client.login("alice", "correct horse").await?;
//! let sent = client.send_message("bob", "hello").await?;
//! println!("sent as {}", sent.id);
//! while let Some(event) = events.recv().await {
//!     println!("{event:?}");
//! }
//! # Ok(()) }
//! ```
//!
//! Every request carries a unique `ref=`; one background task reads the connection, answers
//! the server's `PING`s, hands each reply to the call waiting for it and sends everything else
//! to [`Events`]. Calls may run concurrently from clones of the [`Client`].
#![warn(missing_docs, clippy::unwrap_used)]

pub mod backoff;
mod client;
mod error;
mod privacy;
mod router;
pub mod timing;
pub mod transfer;

pub use client::{
    Client, ClientOptions, Events, HashWatch, LoginOptions, OutgoingOffer, ServerAddr,
};
pub use error::ClientError;
pub use msim_shared::proto::{self, Event};
pub use msim_shared::tls;
pub use transfer::{DownloadReport, Progress, Transfer, TransferOptions, UploadReport};
