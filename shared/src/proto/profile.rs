//! Profiles (PROTOCOL.md §9).

reasons! {
    /// `PROFILE-UPDATE-FAILED reason=`.
    ProfileFailure {
        BadName = "bad-name",
        NoteTooLong = "note-too-long",
        NothingToChange = "nothing-to-change",
        UnknownUser = "unknown-user",
        StorageError = "storage-error",
    }
}

reasons! {
    /// `PROFILE-GET-FAILED reason=`.
    ProfileGetFailure {
        BadAddress = "bad-address",
        FederationDisabled = "federation-disabled",
        UnknownUser = "unknown-user",
        StorageError = "storage-error",
    }
}

body! {
    /// `PROFILE-UPDATE [name=] [note=]` (→S).
    ProfileUpdate = "PROFILE-UPDATE" { name: opt_text = "name", note: opt_text = "note" }
}
body! {
    /// `PROFILE-UPDATE-OK` (→C).
    ProfileUpdateOk = "PROFILE-UPDATE-OK" {}
}
body! {
    /// `PROFILE-UPDATE-FAILED reason=` (→C).
    ProfileUpdateFailed = "PROFILE-UPDATE-FAILED" { reason: (reason ProfileFailure) = "reason" }
}
body! {
    /// `PROFILE-GET [id=]` (→S): your own profile, or a local user's.
    ProfileGet = "PROFILE-GET" { id: opt_text = "id" }
}
body! {
    /// `PROFILE-GET-FAILED id= reason=` (→C).
    ProfileGetFailed = "PROFILE-GET-FAILED" {
        id: text = "id",
        reason: (reason ProfileGetFailure) = "reason",
    }
}
/// `PROFILE id= name= note= [presence=]` (→C): `presence` is `online` or the last-seen time
/// (absent when the user has never been seen).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    pub id: String,
    pub name: String,
    pub note: String,
    pub presence: Option<super::Presence>,
}

impl super::Body for Profile {
    const VERB: &'static str = "PROFILE";

    fn read(r: &super::FieldReader<'_>) -> Result<Self, super::ProtoError> {
        Ok(Profile {
            id: r.text("id")?,
            name: r.text("name")?,
            note: r.text("note")?,
            presence: r
                .opt_text("presence")
                .map(|p| super::Presence::parse(&p).ok_or(super::ProtoError::BadValue("presence")))
                .transpose()?,
        })
    }

    fn write(&self, p: &mut crate::packet::Packet) {
        p.fields.set("id", &self.id);
        p.fields.set("name", &self.name);
        p.fields.set("note", &self.note);
        if let Some(presence) = self.presence {
            p.fields.set("presence", presence.to_wire());
        }
    }
}
