//! HTTP request handling: routes, token checks, upload and download streaming.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};

use crate::range::{parse_range, RangeReq};
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use msim_shared::token::{valid_transfer_id, Capability, Direction, TokenError};
use msim_storage::{BlobSink, BlobStore, BlobWriter, NewBlob, SharedBudget, StoreError};

use crate::limits::next_frame;
use crate::metrics::{GaugeGuard, Metrics, Refusal};
use crate::waiters::Waiters;
use crate::{MetricsAccess, RelayConfig};

/// Response body type.
pub type Body = UnsyncBoxBody<Bytes, io::Error>;

/// Shared state of a running relay.
pub struct State {
    pub config: RelayConfig,
    pub store: BlobStore,
    pub metrics: Metrics,
    /// Downloads waiting for an upload to start, woken when it does.
    pub waiters: Waiters,
    /// Memory for bytes received but not yet stored, shared by all uploads.
    pub upload_budget: SharedBudget,
}

/// Where an upload's bytes go: small bodies are collected and stored at once, larger ones
/// through a pipelined sink.
enum Storing {
    Direct(BlobWriter, Vec<Bytes>),
    Piped(BlobSink),
}

impl Storing {
    async fn push(&mut self, data: Bytes) -> Result<(), StoreError> {
        match self {
            Storing::Direct(_, bufs) => {
                bufs.push(data);
                Ok(())
            }
            Storing::Piped(sink) => sink.push(data).await,
        }
    }

    async fn close(self) -> Result<BlobWriter, StoreError> {
        match self {
            Storing::Direct(mut writer, bufs) => {
                writer.append(bufs).await?;
                Ok(writer)
            }
            Storing::Piped(sink) => sink.close().await,
        }
    }
}

const TRANSFERS: &str = "/v1/transfers/";
/// Most bytes queued between receiving and storing, per upload (on top of the connection's
/// read buffer).
const UPLOAD_BUFFER: usize = 2 << 20;
/// Most bytes queued between receiving and storing for all uploads together: with many
/// uploads, each gets its share of this. Memory per active transfer is otherwise bounded by
/// the connection's read buffer (`server::READ_BUF_MAX`) and, for downloads, the read-ahead.
pub const UPLOAD_BUFFER_TOTAL: usize = 16 << 20;
/// Bodies up to this size are collected and stored in one step (no pipeline).
const DIRECT_UPLOAD: u64 = 256 << 10;
/// Chunks read ahead of the connection, per download.
const DOWNLOAD_QUEUE: usize = 1;
/// Header carrying the resume offset (tus-style).
pub const UPLOAD_OFFSET: &str = "upload-offset";
/// Header carrying the declared size.
pub const UPLOAD_LENGTH: &str = "upload-length";
/// Header carrying the SHA-256 of the stored file.
pub const MSIM_SHA256: &str = "msim-sha256";
/// Header saying whether the upload is complete.
pub const MSIM_COMPLETE: &str = "msim-upload-complete";

pub(crate) fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

fn empty() -> Body {
    full(Bytes::new())
}

/// An error answer: status, refusal label, message.
struct Refuse(StatusCode, Refusal, String);

impl Refuse {
    fn new(status: StatusCode, r: Refusal, msg: impl Into<String>) -> Self {
        Refuse(status, r, msg.into())
    }
}

type Answer = Result<Response<Body>, Refuse>;

fn text(status: StatusCode, msg: impl Into<String>) -> Response<Body> {
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

fn hv(n: u64) -> HeaderValue {
    HeaderValue::from(n)
}

fn header_str(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

/// Entry point for every request.
pub async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let answer = route(&state, req).await;
    let resp = match answer {
        Ok(r) => r,
        Err(Refuse(status, reason, msg)) => {
            state.metrics.refuse(reason);
            tracing::debug!(%method, %path, status = status.as_u16(), %msg, "refused");
            let mut r = text(status, msg);
            if status == StatusCode::UNAUTHORIZED {
                r.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            r
        }
    };
    Ok(resp)
}

async fn route(state: &Arc<State>, req: Request<Incoming>) -> Answer {
    let path = req.uri().path();
    match path {
        "/healthz" => return Ok(text(StatusCode::OK, "ok")),
        "/metrics" if state.config.metrics == MetricsAccess::MainPort => {
            return Ok(crate::metrics::answer(state).await);
        }
        _ => {}
    }
    let Some(id) = path.strip_prefix(TRANSFERS) else {
        return Err(Refuse::new(
            StatusCode::NOT_FOUND,
            Refusal::NotFound,
            "no such resource",
        ));
    };
    // The raw (undecoded) path segment must be a plain id: `..`, `/`, `%2F` never pass.
    if !valid_transfer_id(id) {
        return Err(Refuse::new(
            StatusCode::BAD_REQUEST,
            Refusal::BadRequest,
            "invalid transfer id: expected [A-Za-z0-9-]{1,64}",
        ));
    }
    let id = id.to_owned();
    match *req.method() {
        Method::PUT => {
            let cap = authorize(state, &req, &id, Some(Direction::Upload))?;
            upload(state, req, cap, None).await
        }
        Method::PATCH => {
            let cap = authorize(state, &req, &id, Some(Direction::Upload))?;
            let offset = req
                .headers()
                .get(UPLOAD_OFFSET)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or_else(|| {
                    Refuse::new(
                        StatusCode::BAD_REQUEST,
                        Refusal::BadRequest,
                        "PATCH needs an Upload-Offset header",
                    )
                })?;
            upload(state, req, cap, Some(offset)).await
        }
        Method::GET => {
            let cap = authorize(state, &req, &id, Some(Direction::Download))?;
            download(state, &req, cap).await
        }
        Method::HEAD => {
            let cap = authorize(state, &req, &id, None)?;
            head(state, cap).await
        }
        Method::DELETE => {
            let cap = authorize(state, &req, &id, None)?;
            match state.store.cancel(&cap.transfer_id).await {
                Ok(true) => {
                    Metrics::add(&state.metrics.cancels, 1);
                    tracing::info!(id = %cap.transfer_id, by = %cap.direction, "transfer cancelled");
                    let mut r = Response::new(empty());
                    *r.status_mut() = StatusCode::NO_CONTENT;
                    Ok(r)
                }
                Ok(false) => Err(Refuse::new(
                    StatusCode::NOT_FOUND,
                    Refusal::NotFound,
                    "no such transfer",
                )),
                Err(e) => Err(store_refusal(e)),
            }
        }
        _ => {
            let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
            r.headers_mut().insert(
                header::ALLOW,
                HeaderValue::from_static("GET, HEAD, PUT, PATCH, DELETE"),
            );
            Ok(r)
        }
    }
}

fn token_from(req: &Request<Incoming>) -> Option<&str> {
    if let Some(v) = req.headers().get(header::AUTHORIZATION) {
        let v = v.to_str().ok()?;
        let (scheme, tok) = v.split_once(' ')?;
        return scheme.eq_ignore_ascii_case("bearer").then(|| tok.trim());
    }
    req.uri()
        .query()?
        .split('&')
        .find_map(|kv| kv.strip_prefix("token="))
}

/// Verify the token and that it is for this transfer (and direction, when given).
fn authorize(
    state: &State,
    req: &Request<Incoming>,
    id: &str,
    dir: Option<Direction>,
) -> Result<Capability, Refuse> {
    let token = token_from(req).ok_or_else(|| {
        Refuse::new(
            StatusCode::UNAUTHORIZED,
            Refusal::MissingToken,
            "missing token: send Authorization: Bearer <token> or ?token=<token>",
        )
    })?;
    let now = state.config.clock.now();
    let cap = state
        .config
        .keyring
        .verify(token, now)
        .map_err(|e| match e {
            TokenError::Expired => Refuse::new(
                StatusCode::UNAUTHORIZED,
                Refusal::ExpiredToken,
                "token expired",
            ),
            e => Refuse::new(
                StatusCode::UNAUTHORIZED,
                Refusal::BadToken,
                format!("invalid token: {e}"),
            ),
        })?;
    if cap.transfer_id != id {
        return Err(Refuse::new(
            StatusCode::FORBIDDEN,
            Refusal::Forbidden,
            "token is for another transfer",
        ));
    }
    if let Some(d) = dir {
        if cap.direction != d {
            return Err(Refuse::new(
                StatusCode::FORBIDDEN,
                Refusal::Forbidden,
                format!("a {} token cannot be used to {d}", cap.direction),
            ));
        }
    }
    Ok(cap)
}

fn store_refusal(e: StoreError) -> Refuse {
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
        StoreError::Cancelled => Refuse::new(S::GONE, Refusal::NotFound, e.to_string()),
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
        StoreError::Io(_) | StoreError::Db(_) => {
            tracing::error!(error = %e, "storage failure");
            Refuse::new(
                S::INTERNAL_SERVER_ERROR,
                Refusal::BadRequest,
                "internal storage error",
            )
        }
    }
}

fn content_length(headers: &HeaderMap) -> Result<Option<u64>, Refuse> {
    match headers.get(header::CONTENT_LENGTH) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .map(Some)
            .ok_or_else(|| {
                Refuse::new(
                    StatusCode::BAD_REQUEST,
                    Refusal::BadRequest,
                    "bad Content-Length",
                )
            }),
    }
}

/// PUT (offset `None`: the whole file from 0) or PATCH (continue at `offset`).
async fn upload(
    state: &Arc<State>,
    req: Request<Incoming>,
    cap: Capability,
    offset: Option<u64>,
) -> Answer {
    let size = cap.size;
    if size > state.config.max_file_size {
        return Err(Refuse::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            Refusal::TooLarge,
            format!(
                "file of {size} bytes exceeds this relay's limit of {} bytes",
                state.config.max_file_size
            ),
        ));
    }
    let len = content_length(req.headers())?.ok_or_else(|| {
        Refuse::new(
            StatusCode::LENGTH_REQUIRED,
            Refusal::BadRequest,
            "Content-Length required",
        )
    })?;
    let start = offset.unwrap_or(0);
    if offset.is_none() && len != size {
        let (status, r) = if len > size {
            (StatusCode::PAYLOAD_TOO_LARGE, Refusal::TooLarge)
        } else {
            (StatusCode::BAD_REQUEST, Refusal::WrongSize)
        };
        return Err(Refuse::new(
            status,
            r,
            format!("Content-Length {len} differs from the declared size {size}"),
        ));
    }
    if start.checked_add(len).is_none_or(|end| end > size) {
        return Err(Refuse::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            Refusal::TooLarge,
            format!("offset {start} + length {len} exceeds the declared size {size}"),
        ));
    }
    let id = cap.transfer_id.clone();
    // Create the blob (and its writer) on the first upload request: a PUT tries that first
    // (one index statement when the transfer is new) and falls back to the lookup below.
    let mut fresh = None;
    if offset.is_none() {
        fresh = create_upload(state, &cap).await?;
    }
    if fresh.is_none() {
        match state.store.info(&id).await {
            Ok(info) => {
                if info.size != size || info.sender != cap.sender {
                    return Err(Refuse::new(
                        StatusCode::CONFLICT,
                        Refusal::Conflict,
                        "the stored transfer does not match this token",
                    ));
                }
                if info.complete {
                    return Err(Refuse::new(
                        StatusCode::CONFLICT,
                        Refusal::Conflict,
                        "upload already complete",
                    ));
                }
            }
            Err(StoreError::NotFound) => {
                if start != 0 {
                    let mut r = text(
                        StatusCode::CONFLICT,
                        "upload not started: resume at offset 0",
                    );
                    r.headers_mut().insert(UPLOAD_OFFSET, hv(0));
                    state.metrics.refuse(Refusal::Conflict);
                    return Ok(r);
                }
                fresh = create_upload(state, &cap).await?;
            }
            Err(e) => return Err(store_refusal(e)),
        }
    }
    let busy = |e| match e {
        StoreError::Busy => Refuse::new(
            StatusCode::CONFLICT,
            Refusal::Conflict,
            "another upload to this transfer is in progress",
        ),
        e => store_refusal(e),
    };
    let writer = match fresh {
        Some(w) => w,
        None => state.store.writer(&id).await.map_err(busy)?,
    };
    if writer.offset() != start {
        let mut r = text(
            StatusCode::CONFLICT,
            format!(
                "upload offset mismatch: the relay has {} bytes; {}",
                writer.offset(),
                if offset.is_none() {
                    "resume with PATCH"
                } else {
                    "resume from Upload-Offset"
                }
            ),
        );
        r.headers_mut().insert(UPLOAD_OFFSET, hv(writer.offset()));
        state.metrics.refuse(Refusal::Conflict);
        return Ok(r);
    }
    let _active = GaugeGuard::new(state.clone(), |m| &m.uploads_active);
    tracing::debug!(%id, start, len, "upload");
    let mut body = req.into_body();
    let mut storing = if len <= DIRECT_UPLOAD {
        Storing::Direct(writer, Vec::new())
    } else {
        // Receiving and storing overlap: the sink hashes and writes (off the async threads)
        // while the next frames arrive, within this upload's and all uploads' budgets.
        Storing::Piped(writer.sink(UPLOAD_BUFFER, Some(state.upload_budget.clone())))
    };
    let mut received = 0u64;
    let mut body_error = None;
    let mut push_error = None;
    loop {
        let frame = match next_frame(&mut body, state.config.body_idle_timeout).await {
            None => break,
            Some(Ok(f)) => f,
            Some(Err(e)) => {
                body_error = Some(e);
                break;
            }
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let n = data.len() as u64;
        received += n;
        if let Err(e) = storing.push(data).await {
            // Storing stopped: its own error (from `close`) wins over this one.
            push_error = Some(e);
            break;
        }
        Metrics::add(&state.metrics.bytes_in, n);
    }
    // A small body that completes the file: written, fsync'd and committed in one step.
    let completes =
        push_error.is_none() && body_error.is_none() && received == len && start + len == size;
    let storing = match storing {
        Storing::Direct(writer, bufs) if completes => {
            let sha = writer.finish_with(bufs).await.map_err(store_refusal)?;
            return Ok(completed(state, &id, size, offset.is_none(), &sha));
        }
        other => other,
    };
    // Keep whatever arrived, also when the client went away (resumable).
    let writer = storing.close().await.map_err(store_refusal)?;
    if let Some(e) = push_error {
        return Err(store_refusal(e));
    }
    if let Some(e) = body_error {
        tracing::info!(%id, offset = writer.offset(), error = %e, "upload interrupted; resumable");
        let mut r = text(StatusCode::BAD_REQUEST, format!("upload interrupted: {e}"));
        r.headers_mut().insert(UPLOAD_OFFSET, hv(writer.offset()));
        return Ok(r);
    }
    if received != len {
        let mut r = text(StatusCode::BAD_REQUEST, "body shorter than Content-Length");
        r.headers_mut().insert(UPLOAD_OFFSET, hv(writer.offset()));
        return Ok(r);
    }
    let offset_now = writer.offset();
    if offset_now < size {
        let mut r = Response::new(empty());
        *r.status_mut() = StatusCode::NO_CONTENT;
        r.headers_mut().insert(UPLOAD_OFFSET, hv(offset_now));
        r.headers_mut().insert(UPLOAD_LENGTH, hv(size));
        return Ok(r);
    }
    let sha = writer.finish().await.map_err(store_refusal)?;
    Ok(completed(state, &id, size, offset.is_none(), &sha))
}

/// The answer to the request that completed an upload (`201` for a `PUT`, `200` for a
/// `PATCH`).
fn completed(state: &State, id: &str, size: u64, put: bool, sha: &str) -> Response<Body> {
    Metrics::add(&state.metrics.uploads_completed, 1);
    tracing::info!(%id, size, sha256 = %sha, "upload complete");
    let mut r = Response::new(full(format!(
        "{{\"transfer_id\":\"{id}\",\"size\":{size},\"sha256\":\"{sha}\"}}\n"
    )));
    *r.status_mut() = if put {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(MSIM_SHA256, header_str(sha));
    h.insert(UPLOAD_OFFSET, hv(size));
    h.insert(UPLOAD_LENGTH, hv(size));
    r
}

async fn head(state: &Arc<State>, cap: Capability) -> Answer {
    let info = state
        .store
        .info(&cap.transfer_id)
        .await
        .map_err(store_refusal)?;
    let mut r = Response::new(empty());
    let h = r.headers_mut();
    h.insert(UPLOAD_OFFSET, hv(info.committed));
    h.insert(UPLOAD_LENGTH, hv(info.size));
    h.insert(header::CONTENT_LENGTH, hv(info.size));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        MSIM_COMPLETE,
        HeaderValue::from_static(if info.complete { "true" } else { "false" }),
    );
    if let Some(sha) = &info.sha256 {
        h.insert(MSIM_SHA256, header_str(sha));
    }
    Ok(r)
}

/// Create the blob of `cap` with its writer; `None` when it exists already (created by an
/// earlier or concurrent request). Downloads waiting for it are woken once the writer is
/// attached.
async fn create_upload(state: &Arc<State>, cap: &Capability) -> Result<Option<BlobWriter>, Refuse> {
    let expires = state.store.now().saturating_add(state.config.ttl.as_secs());
    let created = state
        .store
        .create_writer(NewBlob {
            id: cap.transfer_id.clone(),
            size: cap.size,
            expires,
            sender: cap.sender.clone(),
            sha256: cap.sha256.clone(),
        })
        .await;
    match created {
        Ok(w) => {
            state.waiters.created(&cap.transfer_id);
            Ok(Some(w))
        }
        Err(StoreError::AlreadyExists) => Ok(None),
        Err(e) => Err(store_refusal(e)),
    }
}

/// A download's next body frame from a reader's answer, counted in the metrics; `None` at
/// the end. The flag is set after an error frame (nothing follows it).
fn to_frame(
    st: &State,
    next: Result<Option<Bytes>, StoreError>,
) -> (Option<Result<Frame<Bytes>, io::Error>>, bool) {
    match next {
        Ok(Some(b)) => {
            Metrics::add(&st.metrics.bytes_out, b.len() as u64);
            (Some(Ok(Frame::data(b))), false)
        }
        Ok(None) => {
            Metrics::add(&st.metrics.downloads_completed, 1);
            (None, true)
        }
        Err(e) => {
            tracing::info!(error = %e, "download aborted");
            (Some(Err(io::Error::other(e.to_string()))), true)
        }
    }
}

/// Wait (bounded) for the upload of `id` to be created on this relay.
async fn wait_for_blob(state: &Arc<State>, id: &str) -> Result<msim_storage::BlobInfo, StoreError> {
    let deadline = tokio::time::Instant::now() + state.config.wait_for_upload;
    let waiting = state.waiters.wait(id);
    loop {
        let notified = waiting.notify().notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        match state.store.info(id).await {
            Err(StoreError::NotFound) => {}
            other => return other,
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            return Err(StoreError::NotFound);
        }
    }
}

async fn download(state: &Arc<State>, req: &Request<Incoming>, cap: Capability) -> Answer {
    let id = cap.transfer_id.clone();
    // A stored blob must have the token's size, so the range can be worked out up front.
    let range = parse_range(req.headers().get(header::RANGE), cap.size);
    // The common case, a complete blob: looked up and counted in one index statement.
    let counted = match range {
        RangeReq::Unsatisfiable => None,
        _ => state
            .store
            .record_complete_download(&id, cap.max_downloads, cap.size)
            .await
            .map_err(store_refusal)?,
    };
    let is_counted = counted.is_some();
    // Downloads counted so far, this one included.
    let mut count = counted.as_ref().map_or(0, |i| i.downloads);
    let info = match counted {
        Some(info) => info,
        None => {
            let info = wait_for_blob(state, &id).await.map_err(store_refusal)?;
            if info.size != cap.size {
                return Err(Refuse::new(
                    StatusCode::CONFLICT,
                    Refusal::Conflict,
                    "the stored transfer does not match this token",
                ));
            }
            info
        }
    };
    let size = info.size;
    let (start, end_incl, partial) = match range {
        RangeReq::Full => (0, size.saturating_sub(1), false),
        RangeReq::Part(a, b) => (a, b, true),
        RangeReq::Unsatisfiable => {
            state.metrics.refuse(Refusal::RangeNotSatisfiable);
            let mut r = text(StatusCode::RANGE_NOT_SATISFIABLE, "range not satisfiable");
            r.headers_mut().insert(
                header::CONTENT_RANGE,
                header_str(&format!("bytes */{size}")),
            );
            return Ok(r);
        }
    };
    let end = if size == 0 { 0 } else { end_incl + 1 };
    if !is_counted {
        count = state
            .store
            .record_download(&id, cap.max_downloads)
            .await
            .map_err(store_refusal)?;
    }
    // The last download this token allows, of the whole file: once all of it is sent, the
    // blob is removed (a partial or failed last download leaves it until its TTL).
    let last = cap.max_downloads.is_some_and(|max| count >= max) && start == 0 && end == size;
    let remove = last.then(|| (state.clone(), id.clone()));
    if size == 0 {
        if let Some((st, id)) = remove.clone() {
            let _ = tokio::spawn(remove_downloaded(st, id)).await;
        }
    }
    let chunk = state.config.chunk_size.max(16 << 10);
    if info.complete && end - start <= chunk as u64 {
        // Small and stored: read at once, answered in one piece.
        let data = state
            .store
            .read_complete(&id, start, end)
            .await
            .map_err(store_refusal)?;
        if let Some((st, id)) = remove.filter(|_| size > 0) {
            // In memory: removed before the one piece is sent.
            let _ = tokio::spawn(remove_downloaded(st, id)).await;
        }
        Metrics::add(&state.metrics.bytes_out, data.len() as u64);
        Metrics::add(&state.metrics.downloads_completed, 1);
        tracing::debug!(%id, start, end, complete = true, "download");
        let r = Response::new(full(data));
        return Ok(download_headers(r, &id, &info, start, end, partial));
    }
    let reader = state
        .store
        .reader_for(&info, start, end)
        .await
        .map_err(store_refusal)?;
    tracing::debug!(%id, start, end, complete = info.complete, "download");

    let guard = GaugeGuard::new(state.clone(), |m| &m.downloads_active);
    let st = state.clone();
    let body = if info.complete {
        // A producer task reads ahead (file reads overlap with sending); it stops when the
        // response body is dropped.
        let (tx, mut rx) =
            tokio::sync::mpsc::channel::<Result<Frame<Bytes>, io::Error>>(DOWNLOAD_QUEUE);
        let mut reader = reader;
        tokio::spawn(async move {
            let _guard = guard;
            loop {
                let next = tokio::select! {
                    r = reader.next_chunk(chunk) => r,
                    () = tx.closed() => return,
                };
                let (frame, last) = to_frame(&st, next);
                let Some(frame) = frame else { return };
                if tx.send(frame).await.is_err() || last {
                    return;
                }
            }
        });
        StreamBody::new(futures::stream::poll_fn(move |cx| rx.poll_recv(cx))).boxed_unsync()
    } else {
        // Following the upload: chunks are mostly the writer's own buffers, handed over as
        // they are stored; no task in between. Dropping the body drops the reader.
        let stream = futures::stream::unfold(
            (reader, guard, st, false),
            move |(mut reader, guard, st, done)| async move {
                if done {
                    return None;
                }
                let next = reader.next_chunk(chunk).await;
                let (frame, last) = to_frame(&st, next);
                frame.map(|f| (f, (reader, guard, st, last)))
            },
        );
        StreamBody::new(stream).boxed_unsync()
    };
    let body = match remove.filter(|_| size > 0) {
        Some(remove) => RemoveWhenSent {
            inner: body,
            left: end - start,
            remove: Some(remove),
            removing: None,
        }
        .boxed_unsync(),
        None => body,
    };
    Ok(download_headers(
        Response::new(body),
        &id,
        &info,
        start,
        end,
        partial,
    ))
}

/// Remove a blob after the last download its token allowed; failures are logged (the data
/// then stays until its TTL).
async fn remove_downloaded(state: Arc<State>, id: String) {
    match state.store.remove_downloaded(&id).await {
        Ok(true) => {
            Metrics::add(&state.metrics.removed_downloaded, 1);
            tracing::info!(%id, "download limit reached: transfer removed");
        }
        Ok(false) => tracing::info!(%id, "download limit reached; transfer not complete, kept"),
        Err(e) => tracing::warn!(%id, error = %e, "removing a downloaded transfer failed"),
    }
}

/// A removal in progress: a task of its own, so that a client going away (which drops the
/// response body) cannot stop it between the index update and the file removal.
type Removal = tokio::task::JoinHandle<()>;

/// A download body that removes its blob once the last bytes of the response are in hand
/// (read from storage, about to be sent): the last download a token allowed. The last frame
/// is handed over only after the removal, so a client that received everything finds the
/// transfer gone. An error before that leaves the blob.
struct RemoveWhenSent {
    inner: Body,
    /// Bytes of the response not yet taken from `inner`.
    left: u64,
    remove: Option<(Arc<State>, String)>,
    /// The removal in progress and the frame that waits for it.
    removing: Option<(Removal, Frame<Bytes>)>,
}

impl hyper::body::Body for RemoveWhenSent {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        loop {
            if let Some((fut, _)) = this.removing.as_mut() {
                // A failed removal is logged by the task; the frame goes out either way.
                let _ = ready!(Pin::new(fut).poll(cx));
                if let Some((_, frame)) = this.removing.take() {
                    return Poll::Ready(Some(Ok(frame)));
                }
            }
            let next = ready!(Pin::new(&mut this.inner).poll_frame(cx));
            match next {
                Some(Ok(frame)) => {
                    if let Some(d) = frame.data_ref() {
                        this.left = this.left.saturating_sub(d.len() as u64);
                        if this.left == 0 {
                            if let Some((st, id)) = this.remove.take() {
                                this.removing =
                                    Some((tokio::spawn(remove_downloaded(st, id)), frame));
                                continue;
                            }
                        }
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
                Some(Err(e)) => {
                    this.remove = None;
                    return Poll::Ready(Some(Err(e)));
                }
                None => return Poll::Ready(None),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.removing.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// Status and headers of a download answer for bytes `start..end` of the blob `info`.
fn download_headers(
    mut r: Response<Body>,
    id: &str,
    info: &msim_storage::BlobInfo,
    start: u64,
    end: u64,
    partial: bool,
) -> Response<Body> {
    let size = info.size;
    *r.status_mut() = if partial {
        StatusCode::PARTIAL_CONTENT
    } else {
        StatusCode::OK
    };
    let h = r.headers_mut();
    h.insert(header::CONTENT_LENGTH, hv(end - start));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(
        header::CONTENT_DISPOSITION,
        header_str(&format!("attachment; filename=\"{id}\"")),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        MSIM_COMPLETE,
        HeaderValue::from_static(if info.complete { "true" } else { "false" }),
    );
    if let Some(sha) = &info.sha256 {
        h.insert(MSIM_SHA256, header_str(sha));
    }
    if partial {
        let end_incl = end.saturating_sub(1);
        h.insert(
            header::CONTENT_RANGE,
            header_str(&format!("bytes {start}-{end_incl}/{size}")),
        );
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str, size: u64) -> Option<(u64, u64)> {
        match parse_range(Some(&HeaderValue::from_str(s).expect("hv")), size) {
            RangeReq::Part(a, b) => Some((a, b)),
            RangeReq::Full => None,
            RangeReq::Unsatisfiable => Some((u64::MAX, u64::MAX)),
        }
    }

    #[test]
    fn ranges() {
        assert_eq!(p("bytes=0-9", 100), Some((0, 9)));
        assert_eq!(p("bytes=90-", 100), Some((90, 99)));
        assert_eq!(p("bytes=90-1000", 100), Some((90, 99)));
        assert_eq!(p("bytes=-10", 100), Some((90, 99)));
        assert_eq!(p("bytes=-1000", 100), Some((0, 99)));
        assert_eq!(p("bytes=100-", 100), Some((u64::MAX, u64::MAX)));
        assert_eq!(p("bytes=5-1", 100), None);
        assert_eq!(p("bytes=0-1,5-6", 100), None);
        assert_eq!(p("items=0-1", 100), None);
    }
}
