//! Error packets (PROTOCOL.md §2).

body! {
    /// `ERROR-MALFORMED reason= [detail=]`: a line that could not be decoded.
    ErrorMalformed = "ERROR-MALFORMED" { reason: text = "reason", detail: opt_text = "detail" }
}
body! {
    /// `ERROR-LINE-TOO-LONG max=`.
    ErrorLineTooLong = "ERROR-LINE-TOO-LONG" { max: u64 = "max" }
}
body! {
    /// `ERROR-NOT-LOGGED-IN type=VERB`: the request needs a session.
    ErrorNotLoggedIn = "ERROR-NOT-LOGGED-IN" { verb: text = "type" }
}
body! {
    /// `ERROR-BAD-STATE type=VERB`: the request is not valid now.
    ErrorBadState = "ERROR-BAD-STATE" { verb: text = "type" }
}
body! {
    /// `ERROR-NOT-IMPLEMENTED type=VERB`.
    ErrorNotImplemented = "ERROR-NOT-IMPLEMENTED" { verb: text = "type" }
}
body! {
    /// `ERROR-RATE-LIMITED type=VERB retry-after=SECONDS`.
    ErrorRateLimited = "ERROR-RATE-LIMITED" { verb: text = "type", retry_after: u64 = "retry-after" }
}

impl ErrorMalformed {
    /// The error for a line the codec could not decode.
    pub fn from_packet_error(error: &crate::PacketError) -> ErrorMalformed {
        ErrorMalformed {
            reason: error.reason().to_owned(),
            detail: Some(error.to_string()),
        }
    }

    /// The error for a packet whose fields are wrong.
    pub fn from_proto_error(error: &super::ProtoError) -> ErrorMalformed {
        ErrorMalformed {
            reason: error.reason().to_owned(),
            detail: Some(error.field().to_owned()),
        }
    }
}
