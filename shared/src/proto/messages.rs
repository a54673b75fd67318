//! Messages and read receipts (PROTOCOL.md §5).

reasons! {
    /// `MESSAGE-SEND-FAILED reason=`.
    SendFailure {
        UnknownRecipient = "unknown-recipient",
        TextTooLong = "text-too-long",
        EmptyText = "empty-text",
        BadAddress = "bad-address",
        FederationDisabled = "federation-disabled",
        StorageError = "storage-error",
        StorageFull = "storage-full",
        RecipientQueueFull = "recipient-queue-full",
        Expired = "expired",
    }
}

reasons! {
    /// `MESSAGE-READ-FAILED reason=`.
    ReadFailure {
        UnknownMessage = "unknown-message",
        StorageError = "storage-error",
    }
}

body! {
    /// `MESSAGE to= text=` (→S).
    SendMessage = "MESSAGE" { to: text = "to", text: text = "text" }
}
body! {
    /// `MESSAGE-SENT id= at=` (→C): stored durably.
    MessageSent = "MESSAGE-SENT" { id: text = "id", at: time = "at" }
}
body! {
    /// `MESSAGE-SEND-FAILED id= reason=` (→C).
    MessageSendFailed = "MESSAGE-SEND-FAILED" {
        id: text = "id",
        reason: (reason SendFailure) = "reason",
    }
}
body! {
    /// `MESSAGE id= from= to= at= text=` (→C): a delivered message.
    Message = "MESSAGE" {
        id: text = "id",
        from: text = "from",
        to: text = "to",
        at: time = "at",
        text: text = "text",
    }
}
body! {
    /// `MESSAGE-READ id=` (→S): the recipient has read a message.
    MarkRead = "MESSAGE-READ" { id: text = "id" }
}
body! {
    /// `MESSAGE-READ id= by= at=` (→C): a read receipt.
    ReadReceipt = "MESSAGE-READ" { id: text = "id", by: text = "by", at: time = "at" }
}
body! {
    /// `MESSAGE-READ-FAILED id= reason=` (→C).
    MarkReadFailed = "MESSAGE-READ-FAILED" {
        id: text = "id",
        reason: (reason ReadFailure) = "reason",
    }
}
body! {
    /// `MESSAGE-ACK id=` (→S): the client has the message; no redelivery at next login.
    AckMessage = "MESSAGE-ACK" { id: text = "id" }
}
