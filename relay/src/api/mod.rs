//! HTTP request handling: routing, then one module per concern: token checks ([`auth`]),
//! answers and error mapping ([`responses`]), [`upload`], [`download`] and the removal of a
//! transfer after its last allowed download ([`remove_when_sent`]).

use std::convert::Infallible;
use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use msim_shared::relay_http::{UPLOAD_LENGTH, UPLOAD_OFFSET};
use msim_shared::token::{Capability, Direction};
use msim_storage::{BlobStore, SharedBudget};

use crate::downloaders::Downloaders;
use crate::held_body::held_until_sent;
use crate::metrics::{Metrics, Refusal};
use crate::per_sender::{SenderRequest, SenderRequests};
use crate::request;
use crate::slots::PeerOf;
use crate::waiters::Waiters;
use crate::{MetricsAccess, RelayConfig};

mod auth;
mod download;
mod remove_when_sent;
mod responses;
mod upload;

use responses::{blob_headers, empty, hv, store_refusal, text, Answer, Refuse};
pub(crate) use responses::{full, metrics, Body};

/// Most bytes queued between receiving and storing for all uploads together: with many
/// uploads, each gets its share of this. Memory per active transfer is otherwise bounded by
/// the connection's read buffer (`server::READ_BUF_MAX`) and, for downloads, the read-ahead.
pub const UPLOAD_BUFFER_TOTAL: usize = 16 << 20;

/// Shared state of a running relay.
pub struct State {
    pub config: RelayConfig,
    pub store: BlobStore,
    pub metrics: Arc<Metrics>,
    /// Downloads waiting for an upload to start, woken when it does.
    pub waiters: Waiters,
    /// Downloads in progress per transfer (bounded).
    pub downloaders: Downloaders,
    /// Memory for bytes received but not yet stored, shared by all uploads.
    pub upload_budget: SharedBudget,
    /// Uploads and downloads in progress per token sender (bounded).
    pub sender_requests: SenderRequests,
}

/// Counts a transfer request against its token's sender, or refuses it (`429`) when the
/// sender has `max_requests_per_sender` of that direction in progress.
fn admit_sender(
    state: &State,
    req: &Request<Incoming>,
    cap: &Capability,
) -> Result<SenderRequest, Refuse> {
    let from = req.extensions().get::<PeerOf>().map(|p| p.0);
    state
        .sender_requests
        .admit(cap, from, state.config.max_requests_per_sender)
        .ok_or_else(|| {
            Refuse::new(
                StatusCode::TOO_MANY_REQUESTS,
                Refusal::TooManySenderRequests,
                "too many transfers of this sender at once; retry later",
            )
        })
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
            return Ok(responses::metrics(state).await);
        }
        _ => {}
    }
    let id = match request::transfer_id(path) {
        Some(Ok(id)) => id.to_owned(),
        Some(Err(_)) => {
            return Err(Refuse::new(
                StatusCode::BAD_REQUEST,
                Refusal::BadRequest,
                "invalid transfer id: expected [A-Za-z0-9-]{1,64}",
            ))
        }
        None => {
            return Err(Refuse::new(
                StatusCode::NOT_FOUND,
                Refusal::NotFound,
                "no such resource",
            ))
        }
    };
    match *req.method() {
        Method::PUT => {
            let cap = auth::authorize(state, &req, &id, Some(Direction::Upload))?;
            let _counted = admit_sender(state, &req, &cap)?;
            upload::upload(state, req, cap, None).await
        }
        Method::PATCH => {
            let cap = auth::authorize(state, &req, &id, Some(Direction::Upload))?;
            let offset = request::upload_offset(req.headers()).ok_or_else(|| {
                Refuse::new(
                    StatusCode::BAD_REQUEST,
                    Refusal::BadRequest,
                    "PATCH needs an Upload-Offset header",
                )
            })?;
            let _counted = admit_sender(state, &req, &cap)?;
            upload::upload(state, req, cap, Some(offset)).await
        }
        Method::GET => {
            let cap = auth::authorize(state, &req, &id, Some(Direction::Download))?;
            let counted = admit_sender(state, &req, &cap)?;
            let response = download::download(state, &req, cap).await?;
            Ok(response.map(|body| held_until_sent(body, counted)))
        }
        Method::HEAD => {
            let cap = auth::authorize(state, &req, &id, None)?;
            head(state, cap).await
        }
        Method::DELETE => {
            let cap = auth::authorize(state, &req, &id, None)?;
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
    blob_headers(h, &info);
    Ok(r)
}
