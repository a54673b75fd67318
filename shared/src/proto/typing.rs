//! Typing notifications and presence (PROTOCOL.md §6, §7).

body! {
    /// `TYPING-STARTED to=` (→S).
    TypingStart = "TYPING-STARTED" { to: text = "to" }
}
body! {
    /// `TYPING-END to=` (→S).
    TypingStop = "TYPING-END" { to: text = "to" }
}
body! {
    /// `TYPING-STARTED from=` (→C).
    TypingStarted = "TYPING-STARTED" { from: text = "from" }
}
body! {
    /// `TYPING-END from=` (→C).
    TypingEnded = "TYPING-END" { from: text = "from" }
}
body! {
    /// `UPDATE-LAST-SEEN id= at=` (→C): a contact went offline.
    UpdateLastSeen = "UPDATE-LAST-SEEN" { id: text = "id", at: time = "at" }
}
