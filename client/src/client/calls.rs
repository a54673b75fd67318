//! The protocol calls of [`Client`], one method per request: each sends its packet and turns
//! the answer into a typed result or a [`ClientError`].

use msim_shared::proto::{
    AcceptFile, AckMessage, Body, ConnectOk, Contact, ContactsAdd, ContactsAddFailed,
    ContactsAddOk, ContactsChange, ContactsChangeFailed, ContactsChangeOk, ContactsDelete,
    ContactsDeleteFailed, ContactsDeleteOk, ContactsGet, ContactsList, DownloadGrant, Event,
    FileAnswerFailed, FilePending, FileRejected, MarkRead, MarkReadFailed, MessageSendFailed,
    MessageSent, OfferFile, Ping, Pong, Profile, ProfileFailure, ProfileGet, ProfileGetFailed,
    ProfileUpdate, ProfileUpdateFailed, ProfileUpdateOk, Register, RegisterFailed, RegisterOk,
    RejectFile, Request, SendMessage, TypingStart, TypingStop,
};

use super::{unexpected, Client, LoginOptions, OutgoingOffer};
use crate::error::ClientError;

impl Client {
    /// `PING` → `PONG`: a round trip to the server.
    pub async fn ping(&self) -> Result<(), ClientError> {
        self.request(Ping, &[Pong::VERB]).await.map(|_| ())
    }

    /// `REGISTER`: creates an account. Returns the canonical address (`login@domain`).
    pub async fn register(&self, login: &str, password: &str) -> Result<String, ClientError> {
        let answer = self
            .request(
                Register {
                    login: login.to_owned(),
                    password: password.to_owned(),
                },
                &[RegisterOk::VERB, RegisterFailed::VERB],
            )
            .await?;
        match answer {
            Event::RegisterOk(ok) => Ok(ok.login),
            Event::RegisterFailed(f) => Err(ClientError::RegisterFailed(f.reason)),
            other => Err(unexpected(&other)),
        }
    }

    /// Logs in with the salted challenge: `CONNECT` → `CONNECT-ACK salt=` →
    /// `CONNECT-CONTINUE hash=SHA-256(salt ‖ password)` → `CONNECT-OK`.
    pub async fn login(&self, login: &str, password: &str) -> Result<ConnectOk, ClientError> {
        self.login_with(login, password, &LoginOptions::default())
            .await
    }

    /// [`Client::login`] with options, e.g. the device cookie of an earlier login of this
    /// login (`CONNECT device=`), so that strangers' failed guesses do not lock this device
    /// out. Keep the new cookie of the answer ([`ConnectOk::device`]) for the next login.
    pub async fn login_with(
        &self,
        login: &str,
        password: &str,
        options: &LoginOptions,
    ) -> Result<ConnectOk, ClientError> {
        self.log_in(login, password, options).await
    }

    /// `MESSAGE to= text=`: waits until the server stored the message (`MESSAGE-SENT`).
    pub async fn send_message(&self, to: &str, text: &str) -> Result<MessageSent, ClientError> {
        match self
            .request(
                SendMessage {
                    to: to.to_owned(),
                    text: text.to_owned(),
                },
                &[MessageSent::VERB, MessageSendFailed::VERB],
            )
            .await?
        {
            Event::MessageSent(sent) => Ok(sent),
            Event::MessageSendFailed(f) => Err(ClientError::SendFailed {
                id: f.id,
                reason: f.reason,
            }),
            other => Err(unexpected(&other)),
        }
    }

    /// `MESSAGE-READ id=`: marks a message read (the sender gets a receipt).
    pub async fn mark_read(&self, id: &str) -> Result<(), ClientError> {
        match self
            .request_no_ack(MarkRead { id: id.to_owned() }, &[MarkReadFailed::VERB])
            .await?
        {
            None => Ok(()),
            Some(Event::MarkReadFailed(f)) => Err(ClientError::ReadFailed {
                id: f.id,
                reason: f.reason,
            }),
            Some(other) => Err(unexpected(&other)),
        }
    }

    /// `MESSAGE-ACK id=`: the message is not redelivered at the next login.
    pub async fn ack(&self, id: &str) -> Result<(), ClientError> {
        self.notify(AckMessage { id: id.to_owned() }).await
    }

    /// `TYPING-STARTED to=` (`true`) or `TYPING-END to=` (`false`).
    pub async fn typing(&self, to: &str, started: bool) -> Result<(), ClientError> {
        let to = to.to_owned();
        if started {
            self.notify(TypingStart { to }).await
        } else {
            self.notify(TypingStop { to }).await
        }
    }

    /// `CONTACTS-GET`: the contact list.
    pub async fn contacts(&self) -> Result<Vec<Contact>, ClientError> {
        match self.request(ContactsGet, &[ContactsList::VERB]).await? {
            Event::ContactsList(list) => Ok(list.contacts),
            other => Err(unexpected(&other)),
        }
    }

    /// `CONTACTS-ADD id= [name=] [group=]`.
    pub async fn add_contact(
        &self,
        id: &str,
        name: Option<&str>,
        group: Option<&str>,
    ) -> Result<(), ClientError> {
        let add = ContactsAdd {
            id: id.to_owned(),
            name: name.map(str::to_owned),
            group: group.map(str::to_owned),
        };
        self.contact_change(add, &[ContactsAddOk::VERB, ContactsAddFailed::VERB])
            .await
    }

    /// `CONTACTS-CHANGE id= [name=] [group=]`; `group: Some("")` removes the group.
    pub async fn change_contact(
        &self,
        id: &str,
        name: Option<&str>,
        group: Option<&str>,
    ) -> Result<(), ClientError> {
        let change = ContactsChange {
            id: id.to_owned(),
            name: name.map(str::to_owned),
            group: group.map(str::to_owned),
        };
        self.contact_change(
            change,
            &[ContactsChangeOk::VERB, ContactsChangeFailed::VERB],
        )
        .await
    }

    /// `CONTACTS-DELETE id=`.
    pub async fn delete_contact(&self, id: &str) -> Result<(), ClientError> {
        let delete = ContactsDelete { id: id.to_owned() };
        self.contact_change(
            delete,
            &[ContactsDeleteOk::VERB, ContactsDeleteFailed::VERB],
        )
        .await
    }

    /// One contact-list change and its `-OK` / `-FAILED` answer.
    async fn contact_change(
        &self,
        request: impl Into<Request>,
        answers: &'static [&'static str],
    ) -> Result<(), ClientError> {
        let failed = |id, reason| Err(ClientError::ContactFailed { id, reason });
        match self.request(request, answers).await? {
            Event::ContactsAddOk(_) | Event::ContactsChangeOk(_) | Event::ContactsDeleteOk(_) => {
                Ok(())
            }
            Event::ContactsAddFailed(f) => failed(f.id, f.reason),
            Event::ContactsChangeFailed(f) => failed(f.id, f.reason),
            Event::ContactsDeleteFailed(f) => failed(f.id, f.reason),
            other => Err(unexpected(&other)),
        }
    }

    /// `PROFILE-UPDATE [name=] [note=]`.
    pub async fn update_profile(
        &self,
        name: Option<&str>,
        note: Option<&str>,
    ) -> Result<(), ClientError> {
        let answer = self
            .request(
                ProfileUpdate {
                    name: name.map(str::to_owned),
                    note: note.map(str::to_owned),
                },
                &[ProfileUpdateOk::VERB, ProfileUpdateFailed::VERB],
            )
            .await?;
        match answer {
            Event::ProfileUpdateOk(_) => Ok(()),
            Event::ProfileUpdateFailed(f) => Err(ClientError::ProfileFailed(f.reason)),
            other => Err(unexpected(&other)),
        }
    }

    /// `PROFILE-GET [id=]`: your own profile (`None`) or a local user's.
    pub async fn profile(&self, id: Option<&str>) -> Result<Profile, ClientError> {
        let answer = self
            .request(
                ProfileGet {
                    id: id.map(str::to_owned),
                },
                &[Profile::VERB, ProfileGetFailed::VERB],
            )
            .await?;
        match answer {
            Event::Profile(p) => Ok(p),
            Event::ProfileGetFailed(f) => Err(ClientError::ProfileFailed(ProfileFailure::parse(
                f.reason.as_str(),
            ))),
            other => Err(unexpected(&other)),
        }
    }

    /// `SEND-FILE-PROXY`: offers a file. Returns once the server registered the offer
    /// (`SEND-FILE-PROXY-PENDING`, with the transfer id); then wait for the recipient with
    /// [`OutgoingOffer::answer`].
    pub async fn offer_file(&self, offer: OfferFile) -> Result<OutgoingOffer, ClientError> {
        let answer = self
            .request(offer, &[FilePending::VERB, FileRejected::VERB])
            .await?;
        match answer {
            Event::FilePending(pending) => Ok(OutgoingOffer {
                pending,
                client: self.clone(),
            }),
            Event::FileRejected(r) => Err(ClientError::FileRejected {
                transfer_id: r.transfer_id,
                reason: r.reason,
            }),
            other => Err(unexpected(&other)),
        }
    }

    /// `SEND-FILE-PROXY-ACCEPT`: accepts an offer and waits for the download grant
    /// (`SEND-FILE-PROXY-READY`).
    pub async fn accept_file(&self, transfer_id: &str) -> Result<DownloadGrant, ClientError> {
        if !self.router().arm_transfer(transfer_id) {
            return Err(ClientError::Protocol("too many watched transfers".into()));
        }
        let result = self.accept_armed(transfer_id).await;
        self.router().disarm_transfer(transfer_id);
        result
    }

    async fn accept_armed(&self, transfer_id: &str) -> Result<DownloadGrant, ClientError> {
        let accept = AcceptFile {
            transfer_id: transfer_id.to_owned(),
        };
        // The grant may come with our ref or as a push to all our sessions; take whichever
        // comes first. A failure comes with the ref.
        let slot = self
            .router()
            .wait_transfer(transfer_id)
            .ok_or_else(|| ClientError::Protocol("transfer not watched".into()))?;
        let direct = self.request(accept, &[DownloadGrant::VERB, FileAnswerFailed::VERB]);
        let timeout = self.inner.options.request_timeout;
        let answer = tokio::select! {
            direct = direct => direct?,
            pushed = tokio::time::timeout(timeout, slot) => {
                pushed.map_err(|_| ClientError::Timeout)?.map_err(|_| ClientError::Closed)?
            }
        };
        match answer {
            Event::DownloadGrant(grant) => Ok(grant),
            Event::FileAnswerFailed(f) => Err(ClientError::AnswerFailed {
                transfer_id: f.transfer_id,
                reason: f.reason,
            }),
            Event::FileRejected(r) => Err(ClientError::FileRejected {
                transfer_id: r.transfer_id,
                reason: r.reason,
            }),
            other => Err(unexpected(&other)),
        }
    }

    /// `SEND-FILE-PROXY-REJECT`: declines an offer.
    pub async fn reject_file(&self, transfer_id: &str) -> Result<(), ClientError> {
        let reject = RejectFile {
            transfer_id: transfer_id.to_owned(),
        };
        match self
            .request_no_ack(reject, &[FileAnswerFailed::VERB])
            .await?
        {
            None => Ok(()),
            Some(Event::FileAnswerFailed(f)) => Err(ClientError::AnswerFailed {
                transfer_id: f.transfer_id,
                reason: f.reason,
            }),
            Some(other) => Err(unexpected(&other)),
        }
    }
}
