//! Uploads: `PUT` (the whole file) and `PATCH` (resume at `Upload-Offset`), streamed into
//! storage.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use msim_shared::relay_http::{MSIM_SHA256, MSIM_SHA256_SKIP, UPLOAD_LENGTH, UPLOAD_OFFSET};
use msim_shared::token::Capability;
use msim_storage::{BlobSink, BlobWriter, Hashing, NewBlob, StoreError};

use super::responses::{empty, full, header_str, hv, store_refusal, text, Answer, Body, Refuse};
use super::State;
use crate::limits::next_frame;
use crate::metrics::{GaugeGuard, Metrics, Refusal};
use crate::request;

/// Most bytes queued between receiving and storing, per upload (on top of the connection's
/// read buffer).
const UPLOAD_BUFFER: usize = 2 << 20;
/// Bodies up to this size are collected and stored in one step (no pipeline).
const DIRECT_UPLOAD: u64 = 256 << 10;

/// Where an upload's bytes go: small bodies are collected and stored at once, larger ones
/// through a pipelined sink.
enum Storing {
    /// (Boxed: the writer is large next to a sink handle.)
    Direct(Box<BlobWriter>, Vec<Bytes>),
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
                Ok(*writer)
            }
            Storing::Piped(sink) => sink.close().await,
        }
    }
}

/// How an upload request asks to be hashed: `Msim-Sha256: skip` (PROTOCOL.md §11.3) spares
/// the relay the SHA-256 of a transfer whose token declares none; any other request is hashed.
fn requested_hashing(headers: &http::HeaderMap) -> Hashing {
    let skip = headers.get(MSIM_SHA256).is_some_and(|v| {
        v.as_bytes()
            .eq_ignore_ascii_case(MSIM_SHA256_SKIP.as_bytes())
    });
    if skip {
        Hashing::OnlyToCheck
    } else {
        Hashing::Always
    }
}

/// PUT (offset `None`: the whole file from 0) or PATCH (continue at `offset`).
pub(super) async fn upload(
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
    let len = request::content_length(req.headers())
        .map_err(|_| {
            Refuse::new(
                StatusCode::BAD_REQUEST,
                Refusal::BadRequest,
                "bad Content-Length",
            )
        })?
        .ok_or_else(|| {
            Refuse::new(
                StatusCode::LENGTH_REQUIRED,
                Refusal::BadRequest,
                "Content-Length required",
            )
        })?;
    let hashing = requested_hashing(req.headers());
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
        fresh = create_upload(state, &cap, hashing).await?;
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
                fresh = create_upload(state, &cap, hashing).await?;
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
        None => state
            .store
            .writer_hashing(&id, hashing)
            .await
            .map_err(busy)?,
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
    let _active = GaugeGuard::new(state.metrics.clone(), |m| &m.uploads_active);
    tracing::debug!(%id, start, len, "upload");
    let mut body = req.into_body();
    let mut storing = if len <= DIRECT_UPLOAD {
        Storing::Direct(Box::new(writer), Vec::new())
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
            return Ok(completed(
                state,
                &id,
                size,
                offset.is_none(),
                sha.as_deref(),
            ));
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
    Ok(completed(
        state,
        &id,
        size,
        offset.is_none(),
        sha.as_deref(),
    ))
}

/// The answer to the request that completed an upload (`201` for a `PUT`, `200` for a
/// `PATCH`); `sha` is `None` for an upload not hashed (`Msim-Sha256: skip`).
fn completed(state: &State, id: &str, size: u64, put: bool, sha: Option<&str>) -> Response<Body> {
    Metrics::add(&state.metrics.uploads_completed, 1);
    tracing::info!(%id, size, sha256 = sha.unwrap_or("-"), "upload complete");
    let sha_json = sha.map_or_else(|| "null".to_owned(), |s| format!("\"{s}\""));
    let mut r = Response::new(full(format!(
        "{{\"transfer_id\":\"{id}\",\"size\":{size},\"sha256\":{sha_json}}}\n"
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
    if let Some(sha) = sha {
        h.insert(MSIM_SHA256, header_str(sha));
    }
    h.insert(UPLOAD_OFFSET, hv(size));
    h.insert(UPLOAD_LENGTH, hv(size));
    r
}

/// Create the blob of `cap` with its writer; `None` when it exists already (created by an
/// earlier or concurrent request). Downloads waiting for it are woken once the writer is
/// attached.
async fn create_upload(
    state: &Arc<State>,
    cap: &Capability,
    hashing: Hashing,
) -> Result<Option<BlobWriter>, Refuse> {
    let expires = state.store.now().saturating_add(state.config.ttl.as_secs());
    let created = state
        .store
        .create_writer_hashing(
            NewBlob {
                id: cap.transfer_id.clone(),
                size: cap.size,
                expires,
                sender: cap.sender.clone(),
                sha256: cap.sha256.clone(),
            },
            hashing,
        )
        .await;
    match created {
        Ok(w) => {
            if state.waiters.created(&cap.transfer_id) {
                // A woken download sits in this worker's own slot, which other workers do not
                // take from, until this task yields: give it its turn now, so it subscribes and
                // counts itself while this upload receives and stores its body (else it starts
                // only once the body is written and hashed, and reads it back).
                tokio::task::yield_now().await;
            }
            Ok(Some(w))
        }
        Err(StoreError::AlreadyExists) => Ok(None),
        Err(e) => Err(store_refusal(e)),
    }
}
