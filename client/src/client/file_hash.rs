//! The deferred SHA-256 of a large file (PROTOCOL.md §10.7): the sender declares it once its
//! upload is done (`SEND-FILE-PROXY-HASH`); the recipient watches for it while it downloads.

use msim_shared::proto::{
    Event, FileDone, FileDoneFailed, FileDoneOk, FileHash, FileHashFailed, FileHashOk,
};

use super::{unexpected, Client};
use crate::error::ClientError;
use msim_shared::proto::Body;

impl Client {
    /// `SEND-FILE-PROXY-HASH`: declares the SHA-256 (lowercase hex) of a file this client
    /// offered without one and the recipient accepted. The server passes it on to the
    /// recipient, whose client verifies the download against it.
    pub async fn declare_file_hash(
        &self,
        transfer_id: &str,
        sha256: &str,
    ) -> Result<(), ClientError> {
        let declare = FileHash {
            transfer_id: transfer_id.to_owned(),
            sha256: sha256.to_owned(),
        };
        match self
            .request(declare, &[FileHashOk::VERB, FileHashFailed::VERB])
            .await?
        {
            Event::FileHashOk(_) => Ok(()),
            Event::FileHashFailed(f) => Err(ClientError::HashFailed {
                transfer_id: f.transfer_id,
                reason: f.reason,
            }),
            other => Err(unexpected(&other)),
        }
    }

    /// `SEND-FILE-PROXY-DONE` (PROTOCOL.md §10.6): this user has handled `transfer_id`
    /// (uploaded, downloaded or dismissed it), so the server stops sending its stored results
    /// at this user's later logins. Idempotent.
    pub async fn file_done(&self, transfer_id: &str) -> Result<(), ClientError> {
        let done = FileDone {
            transfer_id: transfer_id.to_owned(),
        };
        match self
            .request(done, &[FileDoneOk::VERB, FileDoneFailed::VERB])
            .await?
        {
            Event::FileDoneOk(_) => Ok(()),
            Event::FileDoneFailed(f) => Err(ClientError::DoneFailed {
                transfer_id: f.transfer_id,
                reason: f.reason,
            }),
            other => Err(unexpected(&other)),
        }
    }

    /// Starts watching for the sender's SHA-256 of `transfer_id` (pushed as
    /// `SEND-FILE-PROXY-HASH` when it was offered without one). Call it before accepting, so a
    /// hash that arrives at any time later is kept; the watch ends when the handle is dropped.
    pub fn watch_file_hash(&self, transfer_id: &str) -> Result<HashWatch, ClientError> {
        if !self.router().arm_hash(transfer_id) {
            return Err(ClientError::Protocol("too many watched transfers".into()));
        }
        Ok(HashWatch {
            client: self.clone(),
            transfer_id: transfer_id.to_owned(),
        })
    }
}

/// A watch for the sender's deferred SHA-256 of one transfer ([`Client::watch_file_hash`]).
#[derive(Debug)]
pub struct HashWatch {
    client: Client,
    transfer_id: String,
}

impl HashWatch {
    /// The sender's SHA-256 (lowercase hex), once it arrives (at once if it already did).
    /// No timeout: wrap it in `tokio::time::timeout`. Can be awaited once.
    pub async fn sha256(&self) -> Result<String, ClientError> {
        let rx = self
            .client
            .router()
            .wait_hash(&self.transfer_id)
            .ok_or_else(|| ClientError::Protocol("hash not watched".into()))?;
        match rx.await.map_err(|_| ClientError::Closed)? {
            Event::FileHash(h) => Ok(h.sha256.to_ascii_lowercase()),
            other => Err(unexpected(&other)),
        }
    }
}

impl Drop for HashWatch {
    fn drop(&mut self) {
        self.client.router().disarm_hash(&self.transfer_id);
    }
}
