//! Presence consent, last-seen visibility and blocking (PROTOCOL.md §7.1–§7.4). Incoming
//! `PRESENCE-REQUEST`s arrive on [`crate::Events`] as [`Event::PresenceRequest`]; answer them
//! with [`Client::approve_presence`] or [`Client::deny_presence`].

use msim_shared::proto::{
    Block, BlockFailed, BlockOk, Body, Event, LastSeenVisibility, PresenceAnswerFailed,
    PresenceApprove, PresenceApproveOk, PresenceDeny, PresenceDenyOk, PrivacyFailed, PrivacyGet,
    PrivacySet, PrivacySetOk, PrivacySettings, Unblock, UnblockFailed, UnblockOk,
};

use crate::client::unexpected;
use crate::{Client, ClientError};

impl Client {
    /// `PRESENCE-APPROVE id=`: lets `id` see your presence.
    pub async fn approve_presence(&self, id: &str) -> Result<(), ClientError> {
        let r = PresenceApprove { id: id.to_owned() };
        let expects = &[PresenceApproveOk::VERB, PresenceAnswerFailed::VERB];
        presence_answer(self.request(r, expects).await?)
    }

    /// `PRESENCE-DENY id=`: refuses `id`'s request, or revokes an approval.
    pub async fn deny_presence(&self, id: &str) -> Result<(), ClientError> {
        let r = PresenceDeny { id: id.to_owned() };
        let expects = &[PresenceDenyOk::VERB, PresenceAnswerFailed::VERB];
        presence_answer(self.request(r, expects).await?)
    }

    /// `BLOCK id=`.
    pub async fn block(&self, id: &str) -> Result<(), ClientError> {
        let r = Block { id: id.to_owned() };
        match self.request(r, &[BlockOk::VERB, BlockFailed::VERB]).await? {
            Event::BlockOk(_) => Ok(()),
            Event::BlockFailed(f) => Err(ClientError::BlockFailed {
                id: f.id,
                reason: f.reason,
            }),
            other => Err(unexpected(&other)),
        }
    }

    /// `UNBLOCK id=`.
    pub async fn unblock(&self, id: &str) -> Result<(), ClientError> {
        let r = Unblock { id: id.to_owned() };
        match self
            .request(r, &[UnblockOk::VERB, UnblockFailed::VERB])
            .await?
        {
            Event::UnblockOk(_) => Ok(()),
            Event::UnblockFailed(f) => Err(ClientError::BlockFailed {
                id: f.id,
                reason: f.reason,
            }),
            other => Err(unexpected(&other)),
        }
    }

    /// `PRIVACY-SET last-seen=`: who sees your presence.
    pub async fn set_last_seen_visibility(
        &self,
        visibility: LastSeenVisibility,
    ) -> Result<(), ClientError> {
        let r = PrivacySet {
            last_seen: visibility,
        };
        match self
            .request(r, &[PrivacySetOk::VERB, PrivacyFailed::VERB])
            .await?
        {
            Event::PrivacySetOk(_) => Ok(()),
            other => Err(privacy_failed(other)),
        }
    }

    /// `PRIVACY-GET`: your last-seen visibility and block list.
    pub async fn privacy(&self) -> Result<PrivacySettings, ClientError> {
        match self
            .request(PrivacyGet {}, &[PrivacySettings::VERB, PrivacyFailed::VERB])
            .await?
        {
            Event::PrivacySettings(p) => Ok(p),
            other => Err(privacy_failed(other)),
        }
    }
}

fn presence_answer(event: Event) -> Result<(), ClientError> {
    match event {
        Event::PresenceApproveOk(_) | Event::PresenceDenyOk(_) => Ok(()),
        Event::PresenceAnswerFailed(f) => Err(ClientError::PresenceFailed {
            id: Some(f.id),
            reason: f.reason,
        }),
        other => Err(unexpected(&other)),
    }
}

fn privacy_failed(event: Event) -> ClientError {
    match event {
        Event::PrivacyFailed(f) => ClientError::PresenceFailed {
            id: None,
            reason: f.reason,
        },
        other => unexpected(&other),
    }
}
