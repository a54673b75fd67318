//! Contacts, contact updates and presence (PROTOCOL.md §7, §8).

use time::OffsetDateTime;

use super::{Body, FieldReader, ProtoError};
use crate::packet::{Fields, Packet};
use crate::timestamp;

reasons! {
    /// `CONTACTS-ADD-FAILED`, `CONTACTS-CHANGE-FAILED`, `CONTACTS-DELETE-FAILED` `reason=`.
    ContactFailure {
        UnknownUser = "unknown-user",
        AlreadyExists = "already-exists",
        BadAddress = "bad-address",
        BadName = "bad-name",
        BadGroup = "bad-group",
        TooManyContacts = "too-many-contacts",
        SelfContact = "self",
        NotFound = "not-found",
        NothingToChange = "nothing-to-change",
        StorageError = "storage-error",
    }
}

reasons! {
    /// `CONTACTS-GET-FAILED reason=`.
    ContactsGetFailure {
        StorageError = "storage-error",
    }
}

/// A contact's presence: online now, or last seen at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    Online,
    LastSeen(OffsetDateTime),
    /// Only in `CONTACT-UPDATED`: the contact's presence is no longer shown to you (a request
    /// denied or revoked, a block, or their `last-seen=` setting); wire form empty.
    Hidden,
}

impl Presence {
    /// The wire form: `online` or an RFC 3339 time.
    pub fn to_wire(&self) -> String {
        match self {
            Presence::Online => "online".to_owned(),
            Presence::LastSeen(at) => timestamp::format(*at),
            Presence::Hidden => String::new(),
        }
    }

    /// Reads the wire form.
    pub fn parse(text: &str) -> Option<Presence> {
        match text {
            "online" => Some(Presence::Online),
            "" => Some(Presence::Hidden),
            _ => timestamp::parse(text).map(Presence::LastSeen),
        }
    }
}

fn read_presence(r: &FieldReader<'_>) -> Result<Option<Presence>, ProtoError> {
    r.opt_text("presence")
        .map(|p| Presence::parse(&p).ok_or(ProtoError::BadValue("presence")))
        .transpose()
}

/// One record of `CONTACTS-GET-RESPONSE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contact {
    pub id: String,
    pub name: String,
    /// Nested groups as `a/b`.
    pub group: Option<String>,
    /// The contact's own status text, from their profile.
    pub note: Option<String>,
    pub presence: Option<Presence>,
}

impl Contact {
    fn read(r: &FieldReader<'_>) -> Result<Contact, ProtoError> {
        Ok(Contact {
            id: r.text("id")?,
            name: r.opt_text("name").unwrap_or_default(),
            group: r.opt_text("group").filter(|g| !g.is_empty()),
            note: r.opt_text("note"),
            presence: read_presence(r)?,
        })
    }

    fn to_record(&self) -> Fields {
        let mut f = Fields::new().with("id", &self.id).with("name", &self.name);
        f.set_opt("group", self.group.as_deref());
        f.set_opt("note", self.note.as_deref());
        f.set_opt("presence", self.presence.map(|p| p.to_wire()));
        f
    }
}

/// One record of `CONTACT-UPDATED`: the contact's id and only the fields that changed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ContactUpdate {
    pub id: String,
    pub name: Option<String>,
    /// `Some("")` means the contact left every group.
    pub group: Option<String>,
    pub note: Option<String>,
    pub presence: Option<Presence>,
    /// The contact was removed from the list.
    pub deleted: bool,
}

impl ContactUpdate {
    /// An update of `id` with nothing changed yet.
    pub fn new(id: impl Into<String>) -> ContactUpdate {
        ContactUpdate {
            id: id.into(),
            ..ContactUpdate::default()
        }
    }

    fn read(r: &FieldReader<'_>) -> Result<ContactUpdate, ProtoError> {
        Ok(ContactUpdate {
            id: r.text("id")?,
            name: r.opt_text("name"),
            group: r.opt_text("group"),
            note: r.opt_text("note"),
            presence: read_presence(r)?,
            deleted: match r.opt_text("deleted").as_deref() {
                None | Some("false") => false,
                Some("true") => true,
                Some(_) => return Err(ProtoError::BadValue("deleted")),
            },
        })
    }

    fn to_record(&self) -> Fields {
        let mut f = Fields::new().with("id", &self.id);
        f.set_opt("name", self.name.as_deref());
        f.set_opt("group", self.group.as_deref());
        f.set_opt("note", self.note.as_deref());
        f.set_opt("presence", self.presence.map(|p| p.to_wire()));
        if self.deleted {
            f.set("deleted", "true");
        }
        f
    }
}

/// `CONTACTS-GET-RESPONSE` + list (→C).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ContactsList {
    pub contacts: Vec<Contact>,
}

impl Body for ContactsList {
    const VERB: &'static str = "CONTACTS-GET-RESPONSE";

    fn read(r: &FieldReader<'_>) -> Result<Self, ProtoError> {
        let contacts = r
            .list(Self::VERB)?
            .iter()
            .map(|rec| Contact::read(&FieldReader::record(rec)))
            .collect::<Result<_, _>>()?;
        Ok(ContactsList { contacts })
    }

    fn write(&self, p: &mut Packet) {
        p.list = Some(self.contacts.iter().map(Contact::to_record).collect());
    }
}

/// `CONTACT-UPDATED` + list (→C).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ContactUpdated {
    pub updates: Vec<ContactUpdate>,
}

impl Body for ContactUpdated {
    const VERB: &'static str = "CONTACT-UPDATED";

    fn read(r: &FieldReader<'_>) -> Result<Self, ProtoError> {
        let updates = r
            .list(Self::VERB)?
            .iter()
            .map(|rec| ContactUpdate::read(&FieldReader::record(rec)))
            .collect::<Result<_, _>>()?;
        Ok(ContactUpdated { updates })
    }

    fn write(&self, p: &mut Packet) {
        p.list = Some(self.updates.iter().map(ContactUpdate::to_record).collect());
    }
}

super::empty_body!(
    /// `CONTACTS-GET` (→S).
    ContactsGet = "CONTACTS-GET"
);

body! {
    /// `CONTACTS-ADD id= [name=] [group=]` (→S).
    ContactsAdd = "CONTACTS-ADD" { id: text = "id", name: opt_text = "name", group: opt_text = "group" }
}
body! {
    /// `CONTACTS-CHANGE id= [name=] [group=]` (→S); `group=` empty leaves every group.
    ContactsChange = "CONTACTS-CHANGE" { id: text = "id", name: opt_text = "name", group: opt_text = "group" }
}
body! {
    /// `CONTACTS-DELETE id=` (→S).
    ContactsDelete = "CONTACTS-DELETE" { id: text = "id" }
}
body! {
    /// `CONTACTS-GET-FAILED reason=` (→C): the list could not be read (never an empty list
    /// in its place).
    ContactsGetFailed = "CONTACTS-GET-FAILED" { reason: (reason ContactsGetFailure) = "reason" }
}
id_answers!(
    ContactsAddOk = "CONTACTS-ADD-OK",
    ContactsAddFailed = "CONTACTS-ADD-FAILED"(ContactFailure)
);
id_answers!(
    ContactsChangeOk = "CONTACTS-CHANGE-OK",
    ContactsChangeFailed = "CONTACTS-CHANGE-FAILED"(ContactFailure)
);
id_answers!(
    ContactsDeleteOk = "CONTACTS-DELETE-OK",
    ContactsDeleteFailed = "CONTACTS-DELETE-FAILED"(ContactFailure)
);

/// Whether `group` is a valid nested group path: `a/b`, non-empty segments, ≤ 128 chars.
pub fn is_valid_group(group: &str) -> bool {
    !group.is_empty()
        && group.chars().count() <= 128
        && group.split('/').all(|segment| !segment.trim().is_empty())
}
