//! Downloads: `GET`, whole or a byte range, of a complete blob or following an upload in
//! progress; the last download a token allows removes the transfer.

use std::io;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use msim_shared::token::Capability;
use msim_storage::{BlobInfo, BlobReader, Following, StoreError};

use super::remove_when_sent::{RemoveWhenSent, Served, WhenSent};
use super::responses::{
    blob_headers, full, header_str, hv, store_refusal, text, Answer, Body, Refuse,
};
use super::State;
use crate::metrics::{GaugeGuard, Metrics, Refusal};
use crate::range::{parse_range, RangeReq};
use crate::slots::{Conn, ConnOf};

/// Chunks read ahead of the connection, per download.
const DOWNLOAD_QUEUE: usize = 1;

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

/// How a download that finds no blob yet counts itself once the upload is created: its
/// token's download limit and size, and whether a complete blob would be delivered by it.
#[derive(Clone, Copy)]
struct CountAs {
    limit: Option<u32>,
    size: u64,
    deliver: bool,
}

/// A blob a waiting download found: counted already (`true`; the upload's writer keeps its
/// buffers for this download while `Following` is held), or only looked up.
type Found = (BlobInfo, bool, Option<Following>);

/// Wait (bounded) for the upload of `id` to be created on this relay; meanwhile the
/// connection counts as idle for the slots (it sends nothing). Woken by the creation, the
/// download finds and counts the blob in one index statement (`count`); the lookup that says
/// why not follows only when that does not count it.
async fn wait_for_blob(
    state: &Arc<State>,
    id: &str,
    conn: Option<&Arc<Conn>>,
    count: Option<CountAs>,
) -> Result<Found, StoreError> {
    let deadline = tokio::time::Instant::now() + state.config.wait_for_upload;
    let waiting = state.waiters.wait(id);
    // The caller's own statement has just tried to count it.
    let mut woken = false;
    loop {
        let notified = waiting.notify().notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if let Some(c) = count.filter(|_| woken) {
            let following = state.store.follow(id);
            let counted = state
                .store
                .record_ready_download(id, c.limit, c.size, c.deliver)
                .await?;
            if let Some(info) = counted {
                return Ok((info, true, Some(following)));
            }
        }
        match state.store.info(id).await {
            Err(StoreError::NotFound) => {}
            Ok(info) => return Ok((info, false, None)),
            Err(e) => return Err(e),
        }
        let _waiting = conn.map(|c| c.waiting());
        let _gauge = GaugeGuard::new(state.metrics.clone(), |m| &m.downloads_waiting);
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            return Err(StoreError::NotFound);
        }
        woken = true;
    }
}

pub(super) async fn download(
    state: &Arc<State>,
    req: &Request<Incoming>,
    cap: Capability,
) -> Answer {
    let id = cap.transfer_id.clone();
    // Held until the response has been sent (or dropped).
    let downloading = state
        .downloaders
        .admit(&id, state.config.max_downloads_per_transfer)
        .ok_or_else(|| {
            Refuse::new(
                StatusCode::TOO_MANY_REQUESTS,
                Refusal::TooManyDownloads,
                "too many downloads of this transfer at once; retry later",
            )
        })?;
    let conn = req.extensions().get::<ConnOf>().map(|c| c.0.clone());
    // A stored blob must have the token's size, so the range can be worked out up front.
    let range = parse_range(req.headers().get(header::RANGE), cap.size);
    let chunk = state.config.chunk_size.max(16 << 10);
    // A response of the whole file delivers it; a small one is answered in one piece, so
    // the statement that counts it marks it delivered too. A range only extends what was
    // handed over from byte 0 on (a resumed download completes a delivery; the last byte
    // alone delivers nothing), recorded once it is sent.
    let whole_in_one_piece = match range {
        RangeReq::Full => cap.size <= chunk as u64,
        RangeReq::Part(a, b) => a == 0 && b + 1 == cap.size && b < chunk as u64,
        RangeReq::Unsatisfiable => false,
    };
    // The common case, a complete blob or an upload in progress here: looked up and counted
    // in one index statement.
    let count = (range != RangeReq::Unsatisfiable).then_some(CountAs {
        limit: cap.max_downloads,
        size: cap.size,
        deliver: whole_in_one_piece,
    });
    let mut following = Some(state.store.follow(&id));
    let counted = match count {
        None => None,
        Some(c) => state
            .store
            .record_ready_download(&id, c.limit, c.size, c.deliver)
            .await
            .map_err(store_refusal)?,
    };
    let (info, is_counted) = match counted {
        Some(info) => (info, true),
        None => {
            let (info, is_counted, f) = wait_for_blob(state, &id, conn.as_ref(), count)
                .await
                .map_err(store_refusal)?;
            if info.size != cap.size {
                return Err(Refuse::new(
                    StatusCode::CONFLICT,
                    Refusal::Conflict,
                    "the stored transfer does not match this token",
                ));
            }
            following = f;
            (info, is_counted)
        }
    };
    // Only a complete blob is marked delivered by the statement that counts it.
    let delivered_when_counted = is_counted && info.complete && whole_in_one_piece;
    // Downloads counted so far, this one included.
    let mut count = if is_counted { info.downloads } else { 0 };
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
    // What handing over the last byte does: removal covers delivery (the row goes).
    let then = if last {
        Some(WhenSent::Remove)
    } else if !delivered_when_counted {
        Some(WhenSent::Serve(Served { start, end, size }))
    } else {
        None
    };
    if size == 0 {
        if let Some(then) = then {
            let _ = then.spawn(state.clone(), id.clone()).await;
        }
    }
    if info.complete && end - start <= chunk as u64 {
        // Small and stored: read at once, answered in one piece.
        let data = state
            .store
            .read_complete(&id, start, end)
            .await
            .map_err(store_refusal)?;
        if let Some(then) = then.filter(|_| size > 0) {
            // In memory: removed (or delivered) before the one piece is sent.
            let _ = then.spawn(state.clone(), id.clone()).await;
        }
        if delivered_when_counted {
            Metrics::add(&state.metrics.delivered, 1);
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
    // The reader follows the upload itself now.
    drop(following);
    tracing::debug!(%id, start, end, complete = info.complete, "download");

    let guard = GaugeGuard::new(state.metrics.clone(), |m| &m.downloads_active);
    let st = state.clone();
    let body = if info.complete {
        // A producer task reads ahead (file reads overlap with sending); it stops when the
        // response body is dropped.
        let (tx, mut rx) =
            tokio::sync::mpsc::channel::<Result<Frame<Bytes>, io::Error>>(DOWNLOAD_QUEUE);
        let mut reader = reader;
        tokio::spawn(async move {
            let _guard = guard;
            let _downloading = downloading;
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
        let idle = state.config.body_idle_timeout;
        let held = (guard, downloading, conn);
        let stream = futures::stream::unfold(
            (reader, held, st, false),
            move |(mut reader, held, st, done)| async move {
                if done {
                    return None;
                }
                let next = next_following(&mut reader, held.2.as_ref(), idle, chunk).await;
                let (frame, last) = to_frame(&st, next);
                frame.map(|f| (f, (reader, held, st, last)))
            },
        );
        StreamBody::new(stream).boxed_unsync()
    };
    let body = match then.filter(|_| size > 0) {
        Some(then) => {
            RemoveWhenSent::new(body, end - start, state.clone(), id.clone(), then).boxed_unsync()
        }
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

/// The next chunk of a download following an upload. While it waits for upload data its
/// connection may be evicted like an idle one, and after `idle` without data it is cut (a
/// short body: the client resumes with `Range`), so waiting downloads cannot hold the slots.
async fn next_following(
    reader: &mut BlobReader,
    conn: Option<&Arc<Conn>>,
    idle: Duration,
    chunk: usize,
) -> Result<Option<Bytes>, StoreError> {
    {
        let mut wait = std::pin::pin!(reader.wait_for_data());
        if let Poll::Ready(r) = futures::poll!(wait.as_mut()) {
            r?;
        } else {
            let _waiting = conn.map(|c| c.waiting());
            match tokio::time::timeout(idle, wait).await {
                Ok(r) => r?,
                Err(_) => {
                    return Err(StoreError::Io(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no upload data for {}", humantime::format_duration(idle)),
                    )))
                }
            }
        }
    }
    reader.next_chunk(chunk).await
}

/// Status and headers of a download answer for bytes `start..end` of the blob `info`.
fn download_headers(
    mut r: Response<Body>,
    id: &str,
    info: &BlobInfo,
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
    blob_headers(h, info);
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(
        header::CONTENT_DISPOSITION,
        header_str(&format!("attachment; filename=\"{id}\"")),
    );
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
    use http::HeaderValue;

    use crate::range::{parse_range, RangeReq};

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
