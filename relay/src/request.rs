//! The parts of a relay request the API reads before touching storage: the transfer id in the
//! path, the capability token, and the `Upload-Offset` and `Content-Length` headers. Pure
//! functions over `http` types (no I/O), so they are unit-, property- and fuzz-tested on their
//! own.

use http::header::{self, HeaderMap, HeaderValue};
use msim_shared::relay_http::UPLOAD_OFFSET;
use msim_shared::token::valid_transfer_id;

/// Path prefix of the transfer resources: `/v1/transfers/{id}`.
pub const TRANSFERS_PATH: &str = "/v1/transfers/";

/// A path under [`TRANSFERS_PATH`] whose last segment is not a transfer id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidTransferId;

/// The transfer id of a request path: `None` if the path is not a transfer resource, an error
/// if it is but the raw (undecoded) segment is not `[A-Za-z0-9-]{1,64}` (so `..`, `/` and
/// `%2F` never reach storage).
pub fn transfer_id(path: &str) -> Option<Result<&str, InvalidTransferId>> {
    let id = path.strip_prefix(TRANSFERS_PATH)?;
    Some(if valid_transfer_id(id) {
        Ok(id)
    } else {
        Err(InvalidTransferId)
    })
}

/// The capability token: from `Authorization: Bearer <token>` (scheme case-insensitive) if
/// that header is present, else from a `token=` parameter of the query. A present
/// `Authorization` header of another form yields `None` (the query is then not consulted).
pub fn token<'a>(headers: &'a HeaderMap, query: Option<&'a str>) -> Option<&'a str> {
    if let Some(v) = headers.get(header::AUTHORIZATION) {
        let v = v.to_str().ok()?;
        let (scheme, tok) = v.split_once(' ')?;
        return scheme.eq_ignore_ascii_case("bearer").then(|| tok.trim());
    }
    query?.split('&').find_map(|kv| kv.strip_prefix("token="))
}

/// The `Upload-Offset` header of a `PATCH`: a decimal `u64` (surrounding whitespace allowed);
/// `None` if missing or malformed.
pub fn upload_offset(headers: &HeaderMap) -> Option<u64> {
    decimal(headers.get(UPLOAD_OFFSET)?)
}

/// A `Content-Length` header that is not a decimal `u64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadContentLength;

/// The `Content-Length` header: `Ok(None)` if missing, an error if malformed.
pub fn content_length(headers: &HeaderMap) -> Result<Option<u64>, BadContentLength> {
    match headers.get(header::CONTENT_LENGTH) {
        None => Ok(None),
        Some(v) => decimal(v).map(Some).ok_or(BadContentLength),
    }
}

/// A header value (visible ASCII) read as a decimal `u64` after trimming whitespace.
fn decimal(value: &HeaderValue) -> Option<u64> {
    value.to_str().ok()?.trim().parse().ok()
}

#[cfg(test)]
#[path = "request_tests.rs"]
mod tests;
