//! The writes the group-commit writer applies ([`WriteOp`]) and their results ([`Outcome`]).

use super::{Notice, Offer, PrivacyOp, PrivacyOutcome, Profile, Purged, StoredMessage};

/// A write, applied by the group-commit writer inside a shared transaction.
#[derive(Debug, Clone)]
pub(crate) enum WriteOp {
    /// Register a user.
    CreateUser {
        /// Canonical login.
        login: String,
        /// Sealed password.
        sealed: Vec<u8>,
        /// Now (micros).
        now: i64,
    },
    /// Store a message for a local recipient.
    InsertMessage(StoredMessage),
    /// Mark a message read by its recipient and queue a receipt for the sender.
    MarkRead {
        /// Message id.
        id: String,
        /// Reader login.
        reader: String,
        /// Now (micros).
        at: i64,
    },
    /// The recipient has the message; stop redelivering.
    Ack {
        /// Message id.
        id: String,
        /// Recipient login.
        recipient: String,
    },
    /// Receipts delivered live; drop them from the queue.
    DeleteReceipts(Vec<i64>),
    /// Persist last seen.
    SetLastSeen {
        /// Login.
        login: String,
        /// Micros.
        at: i64,
    },
    /// Add a contact.
    AddContact {
        /// Owner login.
        owner: String,
        /// Full address.
        contact: String,
        /// Local login when on this server (must exist).
        contact_local: Option<String>,
        /// Explicit name.
        name: Option<String>,
        /// Group.
        group: Option<String>,
        /// Limit.
        max: i64,
    },
    /// Change a contact; `Some(None)` clears the field.
    ChangeContact {
        /// Owner login.
        owner: String,
        /// Full address.
        contact: String,
        /// New name.
        name: Option<String>,
        /// New group (`Some(None)` removes it).
        group: Option<Option<String>>,
    },
    /// Delete a contact.
    DeleteContact {
        /// Owner login.
        owner: String,
        /// Full address.
        contact: String,
    },
    /// Update one's profile.
    UpdateProfile {
        /// Login.
        login: String,
        /// New name.
        name: Option<String>,
        /// New note.
        note: Option<String>,
    },
    /// The recipient answers an offer.
    AnswerOffer {
        /// Transfer id.
        id: String,
        /// Who answers.
        by: String,
        /// The sender the offer must be from (a peer's answer names it), checked in the same
        /// transaction: any other offer is `UnknownTransfer` and unchanged.
        sender: Option<String>,
        /// Accept (with this relay) or reject (`None`).
        relay: Option<String>,
        /// Now (micros).
        now: i64,
    },
    /// The recipient answers a local offer ([`WriteOp::AnswerOffer`] without `sender`), and its
    /// results for the users' logins (§10.6: the grants, or the rejection) are stored in the
    /// same transaction when it is recorded: one commit, so the sender may upload one fsync
    /// sooner.
    AnswerWithResults {
        /// Transfer id.
        id: String,
        /// Who answers.
        by: String,
        /// Accept (with this relay) or reject (`None`).
        relay: Option<String>,
        /// Now (micros).
        now: i64,
        /// Stored only when the answer is recorded.
        results: Vec<Notice>,
    },
    /// The sender declares the SHA-256 of its accepted offer that had none
    /// (`SEND-FILE-PROXY-HASH`): stored on the offer, and as a notice for the recipient.
    SetOfferHash {
        /// Transfer id.
        id: String,
        /// Who declares it (must be the offer's sender).
        by: String,
        /// Lowercase hex SHA-256.
        sha256: String,
        /// The recipient's notice is kept until then (micros).
        notice_expires: i64,
    },
    /// Store file results for delivery at login.
    AddNotices(Vec<Notice>),
    /// The user has handled a transfer (`SEND-FILE-PROXY-DONE`): its results stored for that
    /// user are no longer sent at login.
    ForgetResults {
        /// Whose results.
        login: String,
        /// Transfer id.
        transfer_id: String,
    },
    /// Mark every pending offer past its expiry as expired (and drop expired notices).
    ExpireOffers {
        /// Now (micros).
        now: i64,
    },
    /// Presence consent, visibility, blocks and offer quotas.
    Privacy(PrivacyOp),
    /// One bounded step of the retention job (see [`Purged`]).
    Purge {
        /// Pending messages sent before this (micros) expire.
        expire_before: i64,
        /// Delivered messages' receipt data and receipts older than this (micros) go.
        forget_before: i64,
        /// Most rows of each kind this step removes.
        limit: i64,
    },
}

impl WriteOp {
    /// Whether the write stores new data (refused below the free-space watermark; writes that
    /// change or remove rows still run, they are what frees space).
    pub(crate) fn grows_storage(&self) -> bool {
        matches!(
            self,
            WriteOp::CreateUser { .. }
                | WriteOp::InsertMessage(_)
                | WriteOp::MarkRead { .. }
                | WriteOp::AddContact { .. }
                | WriteOp::UpdateProfile { .. }
                | WriteOp::Privacy(PrivacyOp::CreateOffer { .. })
                | WriteOp::AddNotices(_)
                | WriteOp::SetOfferHash { .. }
                | WriteOp::AnswerWithResults { .. }
        )
    }
}

/// The result of one [`WriteOp`].
#[derive(Debug, Clone)]
pub(crate) enum Outcome {
    /// Done, nothing to report.
    Done,
    /// Stored with this sequence number (message seq, offer seq).
    Stored(i64),
    /// Notices stored, with their sequence numbers.
    Notices(Vec<i64>),
    /// The login already exists.
    Taken,
    /// Unknown local user (recipient, contact, …).
    UnknownUser,
    /// The message was marked read; the sender must be told.
    Read {
        /// Sender login.
        sender: String,
        /// Receipt row.
        receipt: i64,
        /// When it was read.
        at: i64,
    },
    /// Not a message addressed to the reader.
    UnknownMessage,
    /// Contact already in the list.
    Exists,
    /// Contact list full.
    TooMany,
    /// Contact not in the list.
    NotFound,
    /// Profile before the update.
    OldProfile(Profile),
    /// Offer answered (accepted or rejected).
    Answered(Offer),
    /// Offer answered, and its results stored with these sequence numbers (in order).
    AnsweredWithResults(Offer, Vec<i64>),
    /// The sender's SHA-256 is stored on its offer and as the recipient's notice `seq`.
    Hashed {
        /// The offer's recipient (login).
        recipient: String,
        /// The notice's sequence number.
        seq: i64,
    },
    /// `SEND-FILE-PROXY-HASH` refused.
    HashRefused(msim_shared::proto::HashFailure),
    /// Offer does not exist.
    UnknownTransfer,
    /// Only the recipient may answer.
    NotRecipient,
    /// Already answered.
    AlreadyAnswered,
    /// Expired.
    OfferExpired,
    /// Offers expired by a sweep.
    Expired(Vec<Offer>),
    /// The result of a [`PrivacyOp`].
    Privacy(PrivacyOutcome),
    /// The recipient already has the most pending messages allowed.
    QueueFull,
    /// What a retention step removed.
    Purged(Purged),
}
