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
body! {
    /// `PROFILE id= name= note=` (→C).
    Profile = "PROFILE" { id: text = "id", name: text = "name", note: text = "note" }
}
