//! Registration and login (PROTOCOL.md §4).

reasons! {
    /// `REGISTER-FAILED reason=`.
    RegisterFailure {
        Closed = "registration-closed",
        LoginTaken = "login-taken",
        LoginInvalid = "login-invalid",
        LoginTooShort = "login-too-short",
        LoginTooLong = "login-too-long",
        PasswordTooShort = "password-too-short",
        PasswordTooLong = "password-too-long",
        RateLimited = "rate-limited",
        StorageError = "storage-error",
    }
}

reasons! {
    /// `CONNECT-FAILED reason=`.
    ConnectFailure {
        /// Unknown login or wrong hash: the two are indistinguishable on purpose.
        Invalid = "invalid",
        /// Too many failures; `retry-after=` says when to try again.
        Throttled = "throttled",
        BadState = "bad-state",
    }
}

body! {
    /// `REGISTER login= password=` (→S).
    Register = "REGISTER" { login: text = "login", password: text = "password" }
}
body! {
    /// `REGISTER-OK login=` (→C): the canonical address.
    RegisterOk = "REGISTER-OK" { login: text = "login" }
}
body! {
    /// `REGISTER-FAILED reason=` (→C).
    RegisterFailed = "REGISTER-FAILED" { reason: (reason RegisterFailure) = "reason" }
}
body! {
    /// `CONNECT login= [device=]` (→S). `device=` is a cookie from an earlier `CONNECT-OK` of
    /// this login (PROTOCOL.md §4.3).
    Connect = "CONNECT" { login: text = "login", device: opt_text = "device" }
}
body! {
    /// `CONNECT-ACK salt=` (→C), sent for every login.
    ConnectAck = "CONNECT-ACK" { salt: text = "salt" }
}
body! {
    /// `CONNECT-CONTINUE hash=` (→S): lowercase hex SHA-256(salt ‖ password).
    ConnectContinue = "CONNECT-CONTINUE" { hash: text = "hash" }
}
body! {
    /// `CONNECT-OK` (→C) with the server's capabilities.
    ConnectOk = "CONNECT-OK" {
        login: text = "login",
        domain: text = "domain",
        federation: flag = "federation",
        max_line: u64 = "max-line",
        max_text: u64 = "max-text",
        max_file_size: u64 = "max-file-size",
        server: text = "server",
        /// Device cookie to present at the next `CONNECT` of this login (§4.3).
        device: opt_text = "device",
    }
}
body! {
    /// `CONNECT-FAILED reason= [retry-after=]` (→C).
    ConnectFailed = "CONNECT-FAILED" {
        reason: (reason ConnectFailure) = "reason",
        retry_after: opt_u64 = "retry-after",
    }
}

/// The `hash=` a client sends for `salt` and `password`.
pub fn challenge_hash(salt: &str, password: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    hasher.update(salt.as_bytes());
    hasher.update(password.as_bytes());
    let digest = hasher.finalize();
    let mut out = String::with_capacity(64);
    for b in digest.iter() {
        out.push_str(&format!("{b:02x}"));
    }
    out
}
