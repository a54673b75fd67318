//! Presence consent, last-seen visibility and blocking (PROTOCOL.md §7.1–§7.4).

use super::{Body, FieldReader, ProtoError};
use crate::packet::{Fields, Packet};

reasons! {
    /// `last-seen=`: who sees a user's presence (online and last seen).
    LastSeenVisibility {
        /// Every user who has not been blocked.
        Everyone = "everyone",
        /// Approved watchers only (the default).
        Contacts = "contacts",
        /// No one.
        Nobody = "nobody",
    }
}

reasons! {
    /// `PRESENCE-ANSWER-FAILED reason=`.
    PresenceFailure {
        BadAddress = "bad-address",
        NotFound = "not-found",
        StorageError = "storage-error",
    }
}

reasons! {
    /// `BLOCK-FAILED reason=` / `UNBLOCK-FAILED reason=`.
    BlockFailure {
        BadAddress = "bad-address",
        FederationDisabled = "federation-disabled",
        SelfBlock = "self",
        UnknownUser = "unknown-user",
        TooManyBlocks = "too-many-blocks",
        NotFound = "not-found",
        StorageError = "storage-error",
    }
}

body! {
    /// `PRESENCE-REQUEST from=` (→C): `from` asks to see your presence.
    PresenceRequest = "PRESENCE-REQUEST" { from: text = "from" }
}
body! {
    /// `PRESENCE-APPROVE id=` (→S): let `id` see your presence.
    PresenceApprove = "PRESENCE-APPROVE" { id: text = "id" }
}
body! {
    /// `PRESENCE-APPROVE-OK id=` (→C).
    PresenceApproveOk = "PRESENCE-APPROVE-OK" { id: text = "id" }
}
body! {
    /// `PRESENCE-DENY id=` (→S): refuse a request, or revoke an approval.
    PresenceDeny = "PRESENCE-DENY" { id: text = "id" }
}
body! {
    /// `PRESENCE-DENY-OK id=` (→C).
    PresenceDenyOk = "PRESENCE-DENY-OK" { id: text = "id" }
}
body! {
    /// `PRESENCE-ANSWER-FAILED id= reason=` (→C): answer to `PRESENCE-APPROVE` / `-DENY`.
    PresenceAnswerFailed = "PRESENCE-ANSWER-FAILED" {
        id: text = "id",
        reason: (reason PresenceFailure) = "reason",
    }
}
body! {
    /// `BLOCK id=` (→S).
    Block = "BLOCK" { id: text = "id" }
}
body! {
    /// `UNBLOCK id=` (→S).
    Unblock = "UNBLOCK" { id: text = "id" }
}
id_answers!(
    BlockOk = "BLOCK-OK",
    BlockFailed = "BLOCK-FAILED"(BlockFailure)
);
id_answers!(
    UnblockOk = "UNBLOCK-OK",
    UnblockFailed = "UNBLOCK-FAILED"(BlockFailure)
);
body! {
    /// `PRIVACY-SET last-seen=` (→S).
    PrivacySet = "PRIVACY-SET" { last_seen: (reason LastSeenVisibility) = "last-seen" }
}
body! {
    /// `PRIVACY-SET-OK last-seen=` (→C).
    PrivacySetOk = "PRIVACY-SET-OK" { last_seen: (reason LastSeenVisibility) = "last-seen" }
}
body! {
    /// `PRIVACY-FAILED reason=` (→C): `PRIVACY-SET` or `PRIVACY-GET` failed (`storage-error`).
    PrivacyFailed = "PRIVACY-FAILED" { reason: (reason PresenceFailure) = "reason" }
}
body! {
    /// `PRIVACY-GET` (→S).
    PrivacyGet = "PRIVACY-GET" {}
}

/// `PRIVACY last-seen=` + list of `id=` records, the blocked users (→C).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrivacySettings {
    pub last_seen: LastSeenVisibility,
    /// Blocked addresses, ordered.
    pub blocked: Vec<String>,
}

impl Body for PrivacySettings {
    const VERB: &'static str = "PRIVACY";

    fn read(r: &FieldReader<'_>) -> Result<Self, ProtoError> {
        let blocked = r
            .list(Self::VERB)?
            .iter()
            .map(|rec| FieldReader::record(rec).text("id"))
            .collect::<Result<_, _>>()?;
        Ok(PrivacySettings {
            last_seen: LastSeenVisibility::parse(&r.text("last-seen")?),
            blocked,
        })
    }

    fn write(&self, p: &mut Packet) {
        p.fields.set("last-seen", self.last_seen.as_str());
        p.list = Some(
            self.blocked
                .iter()
                .map(|id| Fields::new().with("id", id))
                .collect(),
        );
    }
}
