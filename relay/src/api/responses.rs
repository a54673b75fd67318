//! Building answers: bodies, plain-text and error answers, header values, and the mapping of
//! storage errors to statuses and refusal labels.

use std::io;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use msim_shared::relay_http::{MSIM_COMPLETE, MSIM_SHA256};
use msim_storage::{BlobInfo, StoreError};

use super::State;
use crate::metrics::Refusal;

/// Response body type.
pub type Body = UnsyncBoxBody<Bytes, io::Error>;

pub(crate) fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub(super) fn empty() -> Body {
    full(Bytes::new())
}

/// An error answer: status, refusal label, message.
pub(super) struct Refuse(pub StatusCode, pub Refusal, pub String);

impl Refuse {
    pub fn new(status: StatusCode, r: Refusal, msg: impl Into<String>) -> Self {
        Refuse(status, r, msg.into())
    }
}

pub(super) type Answer = Result<Response<Body>, Refuse>;

pub(super) fn text(status: StatusCode, msg: impl Into<String>) -> Response<Body> {
    let mut msg = msg.into();
    msg.push('\n');
    let mut r = Response::new(full(msg));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

pub(super) fn hv(n: u64) -> HeaderValue {
    HeaderValue::from(n)
}

pub(super) fn header_str(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

/// The headers a `HEAD` and a `GET` both describe a blob with: ranges accepted, not cached,
/// complete or not, and its SHA-256 when known.
pub(super) fn blob_headers(h: &mut HeaderMap, info: &BlobInfo) {
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        MSIM_COMPLETE,
        HeaderValue::from_static(if info.complete { "true" } else { "false" }),
    );
    if let Some(sha) = &info.sha256 {
        h.insert(MSIM_SHA256, header_str(sha));
    }
}

/// The answer to a storage error.
pub(super) fn store_refusal(e: StoreError) -> Refuse {
    use StatusCode as S;
    match e {
        StoreError::InvalidId => Refuse::new(S::BAD_REQUEST, Refusal::BadRequest, e.to_string()),
        StoreError::NotFound => Refuse::new(
            S::NOT_FOUND,
            Refusal::NotFound,
            "no such transfer (not uploaded yet)",
        ),
        // Removed (a tombstone says why), or removed while this request used it.
        StoreError::Gone(_) | StoreError::Expired => {
            Refuse::new(S::GONE, Refusal::Gone, e.to_string())
        }
        StoreError::Cancelled => Refuse::new(S::GONE, Refusal::Cancelled, e.to_string()),
        StoreError::AlreadyExists | StoreError::AlreadyComplete | StoreError::Busy => {
            Refuse::new(S::CONFLICT, Refusal::Conflict, e.to_string())
        }
        StoreError::CapacityExceeded => {
            Refuse::new(S::INSUFFICIENT_STORAGE, Refusal::Capacity, e.to_string())
        }
        StoreError::LowDisk => {
            Refuse::new(S::INSUFFICIENT_STORAGE, Refusal::LowDisk, e.to_string())
        }
        StoreError::QuotaExceeded => {
            Refuse::new(S::TOO_MANY_REQUESTS, Refusal::Quota, e.to_string())
        }
        StoreError::TooLarge => Refuse::new(S::PAYLOAD_TOO_LARGE, Refusal::TooLarge, e.to_string()),
        StoreError::Incomplete { .. } => {
            Refuse::new(S::BAD_REQUEST, Refusal::WrongSize, e.to_string())
        }
        StoreError::ShaMismatch { .. } => Refuse::new(
            S::UNPROCESSABLE_ENTITY,
            Refusal::ShaMismatch,
            format!("{e}; the upload was discarded"),
        ),
        StoreError::DownloadLimit => Refuse::new(S::GONE, Refusal::DownloadLimit, e.to_string()),
        StoreError::Io(_) | StoreError::Db(_) | StoreError::InUse(_) => {
            tracing::error!(error = %e, "storage failure");
            Refuse::new(
                S::INTERNAL_SERVER_ERROR,
                Refusal::StorageError,
                "internal storage error",
            )
        }
    }
}

/// The answer to `GET /metrics`: the counters and the store's totals.
pub(crate) async fn metrics(state: &State) -> Response<Body> {
    let stats = state.store.stats().await.ok();
    let mut r = Response::new(full(state.metrics.render(stats)));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    r
}
