//! Row models: what the store hands back and takes in.

/// A stored message.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct StoredMessage {
    /// Insertion order.
    pub seq: i64,
    /// UUIDv7.
    pub id: String,
    /// Sender login (local).
    pub sender: String,
    /// Recipient login (local).
    pub recipient: String,
    /// Micros since epoch.
    pub at: i64,
    /// Text.
    #[sqlx(rename = "body")]
    pub text: String,
}

/// A read receipt waiting for an offline sender.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct Receipt {
    /// Row id (deleted once delivered).
    pub seq: i64,
    /// Message id.
    pub message_id: String,
    /// Reader login.
    pub reader: String,
    /// When read (micros).
    pub at: i64,
}

/// High-water marks of the stored streams at one instant (see [`crate::hub::Stream`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Marks {
    /// `messages.seq`.
    pub messages: i64,
    /// `receipts.seq`.
    pub receipts: i64,
    /// `offers.seq`.
    pub offers: i64,
    /// `notices.seq`.
    pub notices: i64,
}

/// Which of a user's stored backlogs hold something ([`super::Db::login_marks`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Backlog {
    /// Pending messages for the user.
    pub messages: bool,
    /// Read receipts for the user's messages.
    pub receipts: bool,
    /// Unanswered offers to the user.
    pub offers: bool,
    /// Stored file results for the user.
    pub notices: bool,
}

/// A user's profile.
#[derive(Debug, Clone, Default, sqlx::FromRow)]
pub(crate) struct Profile {
    /// Display name ('' = none).
    pub name: String,
    /// Status note.
    pub note: String,
    /// Last seen (micros), if ever.
    pub last_seen: Option<i64>,
}

/// One contact list entry joined with the contact's profile when local.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct ContactRow {
    /// Full address.
    pub contact: String,
    /// Local login of the contact, if on this server.
    pub contact_local: Option<String>,
    /// Owner-chosen name (None = defaulted to the profile name).
    pub name: Option<String>,
    /// Group path.
    #[sqlx(rename = "grp")]
    pub group: Option<String>,
    /// The contact's profile name (local users).
    pub profile_name: Option<String>,
    /// The contact's note (local users).
    pub note: Option<String>,
    /// The contact's last seen (micros).
    pub last_seen: Option<i64>,
}

/// A file offer.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct Offer {
    /// Transfer id.
    pub id: String,
    /// Sender login.
    pub sender: String,
    /// Recipient login.
    pub recipient: String,
    /// Sanitised file name.
    pub filename: String,
    /// Declared size.
    pub size: i64,
    /// Optional lowercase hex SHA-256.
    pub sha256: Option<String>,
    /// Optional MIME type.
    pub mime: Option<String>,
    /// Created (micros).
    pub created_at: i64,
    /// Expires (micros).
    pub expires_at: i64,
    /// Where the offer stands.
    #[sqlx(try_from = "String")]
    pub state: OfferState,
    /// Relay base URL once accepted.
    pub relay: Option<String>,
}

/// Where a file offer stands (stored as lowercase text in `offers.state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OfferState {
    /// Waiting for the recipient's answer.
    Pending,
    /// To a recipient who blocked the sender: never shown, it expires like an ignored one.
    Hidden,
    /// Accepted, with a relay.
    Accepted,
    /// Rejected by the recipient.
    Rejected,
    /// Not answered in time.
    Expired,
}

impl OfferState {
    /// The stored word.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            OfferState::Pending => "pending",
            OfferState::Hidden => "hidden",
            OfferState::Accepted => "accepted",
            OfferState::Rejected => "rejected",
            OfferState::Expired => "expired",
        }
    }
}

/// A stored offer state this version does not know.
#[derive(Debug, thiserror::Error)]
#[error("unknown offer state {0:?}")]
pub(crate) struct UnknownOfferState(String);

impl TryFrom<String> for OfferState {
    type Error = UnknownOfferState;

    fn try_from(s: String) -> Result<OfferState, UnknownOfferState> {
        Ok(match s.as_str() {
            "pending" => OfferState::Pending,
            "hidden" => OfferState::Hidden,
            "accepted" => OfferState::Accepted,
            "rejected" => OfferState::Rejected,
            "expired" => OfferState::Expired,
            _ => return Err(UnknownOfferState(s)),
        })
    }
}

/// The columns of [`Offer`], for `SELECT`s.
pub(super) const OFFER_COLS: &str =
    "id, sender, recipient, filename, size, sha256, mime, created_at, expires_at, state, relay";
