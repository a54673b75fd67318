//! File transfers through a relay (PROTOCOL.md §10).

reasons! {
    /// `SEND-FILE-PROXY-REJECTED reason=`.
    FileRejection {
        Rejected = "rejected",
        Expired = "expired",
        UnknownRecipient = "unknown-recipient",
        FileTooLarge = "file-too-large",
        BadFilename = "bad-filename",
        BadAddress = "bad-address",
        BadHash = "bad-hash",
        FederationDisabled = "federation-disabled",
        NoRelay = "no-relay",
        TooManyOffers = "too-many-offers",
        OfferQuotaExceeded = "offer-quota-exceeded",
        StorageError = "storage-error",
    }
}

reasons! {
    /// `SEND-FILE-PROXY-ANSWER-FAILED reason=`.
    AnswerFailure {
        UnknownTransfer = "unknown-transfer",
        NotRecipient = "not-recipient",
        AlreadyAnswered = "already-answered",
        Expired = "expired",
        NoRelay = "no-relay",
        StorageError = "storage-error",
    }
}

body! {
    /// `SEND-FILE-PROXY to= filename= size= [sha256=] [mime=]` (→S): offer a file.
    OfferFile = "SEND-FILE-PROXY" {
        to: text = "to",
        filename: text = "filename",
        size: u64 = "size",
        sha256: opt_text = "sha256",
        mime: opt_text = "mime",
    }
}
body! {
    /// `SEND-FILE-PROXY-PENDING transfer-id= to= expires=` (→C sender): the offer is out.
    FilePending = "SEND-FILE-PROXY-PENDING" {
        transfer_id: text = "transfer-id",
        to: text = "to",
        expires: time = "expires",
    }
}
body! {
    /// `SEND-FILE-PROXY-REQUEST` (→C recipient): someone offers a file.
    FileOffered = "SEND-FILE-PROXY-REQUEST" {
        transfer_id: text = "transfer-id",
        from: text = "from",
        filename: text = "filename",
        size: u64 = "size",
        expires: time = "expires",
        sha256: opt_text = "sha256",
        mime: opt_text = "mime",
    }
}
body! {
    /// `SEND-FILE-PROXY-ACCEPT transfer-id=` (→S recipient).
    AcceptFile = "SEND-FILE-PROXY-ACCEPT" { transfer_id: text = "transfer-id" }
}
body! {
    /// `SEND-FILE-PROXY-REJECT transfer-id=` (→S recipient).
    RejectFile = "SEND-FILE-PROXY-REJECT" { transfer_id: text = "transfer-id" }
}
body! {
    /// `SEND-FILE-PROXY-ANSWER-FAILED transfer-id= reason=` (→C).
    FileAnswerFailed = "SEND-FILE-PROXY-ANSWER-FAILED" {
        transfer_id: text = "transfer-id",
        reason: (reason AnswerFailure) = "reason",
    }
}
body! {
    /// `SEND-FILE-PROXY-OK` (→C sender): where and how to upload.
    UploadGrant = "SEND-FILE-PROXY-OK" {
        transfer_id: text = "transfer-id",
        connect: text = "connect",
        port: u16 = "port",
        url: text = "url",
        token: text = "token",
        expires: time = "expires",
    }
}
body! {
    /// `SEND-FILE-PROXY-READY` (→C recipient): where and how to download.
    DownloadGrant = "SEND-FILE-PROXY-READY" {
        transfer_id: text = "transfer-id",
        from: text = "from",
        filename: text = "filename",
        size: u64 = "size",
        connect: text = "connect",
        port: u16 = "port",
        url: text = "url",
        token: text = "token",
        expires: time = "expires",
        sha256: opt_text = "sha256",
        mime: opt_text = "mime",
    }
}
reasons! {
    /// `SEND-FILE-PROXY-HASH-FAILED reason=`.
    HashFailure {
        UnknownTransfer = "unknown-transfer",
        NotSender = "not-sender",
        NotAccepted = "not-accepted",
        AlreadyHashed = "already-hashed",
        RemoteRecipient = "remote-recipient",
        StorageError = "storage-error",
    }
}

body! {
    /// `SEND-FILE-PROXY-HASH transfer-id= sha256=`: the sender declares the SHA-256 of a file
    /// it offered without one, once it has uploaded it (→S); the server passes it on to every
    /// session of the recipient (→C).
    FileHash = "SEND-FILE-PROXY-HASH" {
        transfer_id: text = "transfer-id",
        sha256: text = "sha256",
    }
}
body! {
    /// `SEND-FILE-PROXY-HASH-OK transfer-id=` (→C sender): the hash is stored and passed on.
    FileHashOk = "SEND-FILE-PROXY-HASH-OK" { transfer_id: text = "transfer-id" }
}
body! {
    /// `SEND-FILE-PROXY-HASH-FAILED transfer-id= reason=` (→C sender).
    FileHashFailed = "SEND-FILE-PROXY-HASH-FAILED" {
        transfer_id: text = "transfer-id",
        reason: (reason HashFailure) = "reason",
    }
}
reasons! {
    /// `SEND-FILE-PROXY-DONE-FAILED reason=`.
    DoneFailure {
        StorageError = "storage-error",
    }
}

body! {
    /// `SEND-FILE-PROXY-DONE transfer-id=` (→S, sender or recipient): the user has handled the
    /// transfer (uploaded, downloaded or dismissed it), so its stored results (§10.6) need not be
    /// sent at the user's next logins.
    FileDone = "SEND-FILE-PROXY-DONE" { transfer_id: text = "transfer-id" }
}
body! {
    /// `SEND-FILE-PROXY-DONE-OK transfer-id=` (→C): the user's stored results of the transfer
    /// are gone (also when there were none).
    FileDoneOk = "SEND-FILE-PROXY-DONE-OK" { transfer_id: text = "transfer-id" }
}
body! {
    /// `SEND-FILE-PROXY-DONE-FAILED transfer-id= reason=` (→C).
    FileDoneFailed = "SEND-FILE-PROXY-DONE-FAILED" {
        transfer_id: text = "transfer-id",
        reason: (reason DoneFailure) = "reason",
    }
}
body! {
    /// `SEND-FILE-PROXY-REJECTED transfer-id= reason=` (→C sender).
    FileRejected = "SEND-FILE-PROXY-REJECTED" {
        transfer_id: text = "transfer-id",
        reason: (reason FileRejection) = "reason",
    }
}

/// Makes a filename safe to show and to save: the last path component, without control
/// characters, at most 255 bytes. `None` when nothing usable is left.
pub fn sanitize_filename(name: &str) -> Option<String> {
    let base = name.rsplit(['/', '\\']).next().unwrap_or(name);
    let mut clean: String = base
        .chars()
        .filter(|c| !c.is_control())
        .collect::<String>()
        .trim()
        .to_owned();
    while clean.len() > 255 {
        clean.pop();
    }
    // No hidden files (`.bashrc`, `..x`): leading dots go.
    let clean = clean.trim_start_matches('.').trim_start();
    if clean.is_empty() {
        None
    } else {
        Some(clean.to_owned())
    }
}
