//! Names of the relay's HTTP headers (PROTOCOL.md, "Relay HTTP API"), shared by the relay and
//! its clients. Lowercase, as `http::HeaderName` wants them.

/// The resume offset: bytes the relay has stored (tus-style); sent by a `PATCH`.
pub const UPLOAD_OFFSET: &str = "upload-offset";
/// The declared size of the file.
pub const UPLOAD_LENGTH: &str = "upload-length";
/// The SHA-256 (lowercase hex) of the stored file; on an upload request, [`MSIM_SHA256_SKIP`]
/// asks the relay not to compute it.
pub const MSIM_SHA256: &str = "msim-sha256";
/// The value of an upload request's `Msim-Sha256` asking the relay not to hash a transfer whose
/// token declares no SHA-256 (PROTOCOL.md §11.3).
pub const MSIM_SHA256_SKIP: &str = "skip";
/// `true` once the upload is complete, else `false`.
pub const MSIM_COMPLETE: &str = "msim-upload-complete";
