//! Typed packets: one struct per packet, grouped by family, and one enum per direction
//! ([`Request`]: client → server, [`Event`]: server → client). Server and client both use these
//! types; `from_packet` / `to_packet` convert to and from the generic [`Packet`].
//!
//! Unknown fields are ignored (forward compatibility); a missing required field or a value of
//! the wrong shape is a [`ProtoError`], reported as `ERROR-MALFORMED reason=missing-field` /
//! `reason=bad-value`. An unknown verb decodes as `Unknown`, so the receiver can answer
//! `ERROR-NOT-IMPLEMENTED` instead of dropping the connection.

mod fields;
#[macro_use]
mod reason;

pub mod auth;
pub mod contacts;
pub mod errors;
pub mod files;
pub mod messages;
pub mod privacy;
pub mod profile;
pub mod typing;

pub use auth::*;
pub use contacts::*;
pub use errors::*;
pub use fields::{FieldReader, ProtoError};
pub use files::*;
pub use messages::*;
pub use privacy::*;
pub use profile::*;
pub use typing::*;

use crate::packet::Packet;

/// The verbs that are always followed by a list block.
pub fn carries_list(verb: &str) -> bool {
    matches!(
        verb,
        ContactsList::VERB | ContactUpdated::VERB | PrivacySettings::VERB
    )
}

/// A typed packet body with a fixed verb.
pub trait Body: Sized {
    /// The packet's verb.
    const VERB: &'static str;
    /// Reads the body from a packet whose verb is `VERB`.
    fn read(packet: &FieldReader<'_>) -> Result<Self, ProtoError>;
    /// Writes the body's fields (and list) into `packet`.
    fn write(&self, packet: &mut Packet);

    /// The body as a packet.
    fn to_packet(&self) -> Packet {
        let mut packet = Packet::new(Self::VERB);
        self.write(&mut packet);
        packet
    }
}

/// Declares a body with no fields.
macro_rules! empty_body {
    ($(#[$meta:meta])* $name:ident = $verb:literal) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
        pub struct $name;

        impl $crate::proto::Body for $name {
            const VERB: &'static str = $verb;
            fn read(_: &$crate::proto::FieldReader<'_>) -> Result<Self, $crate::proto::ProtoError> {
                Ok($name)
            }
            fn write(&self, _: &mut $crate::packet::Packet) {}
        }
    };
}
pub(crate) use empty_body;

/// Declares a direction's enum with `from_packet` / `to_packet`.
macro_rules! direction {
    ($(#[$meta:meta])* $name:ident { $($variant:ident($ty:ty)),* $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub enum $name {
            $($variant($ty),)*
            /// A verb this side does not know.
            Unknown(Packet),
        }

        impl $name {
            /// Converts a generic packet. Unknown verbs give `Unknown`.
            pub fn from_packet(packet: &Packet) -> Result<$name, ProtoError> {
                let reader = FieldReader::new(packet);
                $(
                    if packet.verb == <$ty as Body>::VERB {
                        return Ok($name::$variant(<$ty as Body>::read(&reader)?));
                    }
                )*
                Ok($name::Unknown(packet.clone()))
            }

            /// Converts to a generic packet.
            pub fn to_packet(&self) -> Packet {
                match self {
                    $($name::$variant(body) => body.to_packet(),)*
                    $name::Unknown(packet) => packet.clone(),
                }
            }

            /// The verb.
            pub fn verb(&self) -> &str {
                match self {
                    $($name::$variant(_) => <$ty as Body>::VERB,)*
                    $name::Unknown(packet) => &packet.verb,
                }
            }
        }

        $(
            impl From<$ty> for $name {
                fn from(body: $ty) -> $name {
                    $name::$variant(body)
                }
            }
        )*
    };
}

direction! {
    /// Everything a client sends to a server.
    Request {
        Register(Register),
        Connect(Connect),
        ConnectContinue(ConnectContinue),
        SendMessage(SendMessage),
        MarkRead(MarkRead),
        AckMessage(AckMessage),
        TypingStart(TypingStart),
        TypingStop(TypingStop),
        ContactsGet(ContactsGet),
        ContactsAdd(ContactsAdd),
        ContactsChange(ContactsChange),
        ContactsDelete(ContactsDelete),
        ProfileUpdate(ProfileUpdate),
        ProfileGet(ProfileGet),
        OfferFile(OfferFile),
        AcceptFile(AcceptFile),
        RejectFile(RejectFile),
        FileHash(FileHash),
        FileDone(FileDone),
        PresenceApprove(PresenceApprove),
        PresenceDeny(PresenceDeny),
        Block(Block),
        Unblock(Unblock),
        PrivacySet(PrivacySet),
        PrivacyGet(PrivacyGet),
        Ping(Ping),
        Pong(Pong),
    }
}

direction! {
    /// Everything a server sends to a client.
    Event {
        RegisterOk(RegisterOk),
        RegisterFailed(RegisterFailed),
        ConnectAck(ConnectAck),
        ConnectOk(ConnectOk),
        ConnectFailed(ConnectFailed),
        MessageSent(MessageSent),
        MessageSendFailed(MessageSendFailed),
        Message(Message),
        ReadReceipt(ReadReceipt),
        MarkReadFailed(MarkReadFailed),
        TypingStarted(TypingStarted),
        TypingEnded(TypingEnded),
        UpdateLastSeen(UpdateLastSeen),
        ContactsList(ContactsList),
        ContactsGetFailed(ContactsGetFailed),
        ContactUpdated(ContactUpdated),
        ContactsAddOk(ContactsAddOk),
        ContactsAddFailed(ContactsAddFailed),
        ContactsChangeOk(ContactsChangeOk),
        ContactsChangeFailed(ContactsChangeFailed),
        ContactsDeleteOk(ContactsDeleteOk),
        ContactsDeleteFailed(ContactsDeleteFailed),
        ProfileUpdateOk(ProfileUpdateOk),
        ProfileUpdateFailed(ProfileUpdateFailed),
        Profile(Profile),
        ProfileGetFailed(ProfileGetFailed),
        FilePending(FilePending),
        FileOffered(FileOffered),
        FileAnswerFailed(FileAnswerFailed),
        UploadGrant(UploadGrant),
        DownloadGrant(DownloadGrant),
        FileRejected(FileRejected),
        FileHash(FileHash),
        FileHashOk(FileHashOk),
        FileHashFailed(FileHashFailed),
        FileDoneOk(FileDoneOk),
        FileDoneFailed(FileDoneFailed),
        PresenceRequest(PresenceRequest),
        PresenceApproveOk(PresenceApproveOk),
        PresenceDenyOk(PresenceDenyOk),
        PresenceAnswerFailed(PresenceAnswerFailed),
        BlockOk(BlockOk),
        BlockFailed(BlockFailed),
        UnblockOk(UnblockOk),
        UnblockFailed(UnblockFailed),
        PrivacySetOk(PrivacySetOk),
        PrivacyFailed(PrivacyFailed),
        PrivacySettings(PrivacySettings),
        ErrorMalformed(ErrorMalformed),
        ErrorLineTooLong(ErrorLineTooLong),
        ErrorNotLoggedIn(ErrorNotLoggedIn),
        ErrorBadState(ErrorBadState),
        ErrorNotImplemented(ErrorNotImplemented),
        ErrorRateLimited(ErrorRateLimited),
        Ping(Ping),
        Pong(Pong),
    }
}

empty_body!(
    /// `PING` — keepalive, either direction.
    Ping = "PING"
);
empty_body!(
    /// `PONG` — the answer to `PING`.
    Pong = "PONG"
);

#[cfg(test)]
mod tests;
