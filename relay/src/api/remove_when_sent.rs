//! Remove-when-sent: the last download a token allows removes its transfer once the whole
//! file is in hand; any other download that hands over the file's last byte marks the transfer
//! delivered (off its sender's quota).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use hyper::body::Frame;

use super::responses::Body;
use super::State;
use crate::metrics::Metrics;

/// Remove a blob after the last download its token allowed; failures are logged (the data
/// then stays until its TTL).
pub(super) async fn remove_downloaded(state: Arc<State>, id: String) {
    match state.store.remove_downloaded(&id).await {
        Ok(true) => {
            Metrics::add(&state.metrics.removed_downloaded, 1);
            tracing::info!(%id, "download limit reached: transfer removed");
        }
        Ok(false) => tracing::info!(%id, "download limit reached; transfer not complete, kept"),
        Err(e) => tracing::warn!(%id, error = %e, "removing a downloaded transfer failed"),
    }
}

/// Record the bytes `start..end` a download handed over; once every byte from the first one
/// on has been handed over, the blob is delivered and stops counting against its sender's
/// quota. Failures are logged (the sender's quota then counts it until its TTL).
pub(super) async fn record_served(state: Arc<State>, id: String, served: Served) {
    match state
        .store
        .record_served(&id, served.start, served.end, served.size)
        .await
    {
        Ok(true) => {
            Metrics::add(&state.metrics.delivered, 1);
            tracing::debug!(%id, "delivered: released from the sender's quota");
        }
        Ok(false) => {}
        Err(e) => tracing::warn!(%id, error = %e, "recording a download failed"),
    }
}

/// Bytes `start..end` of a blob of `size` bytes, handed over by one download response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Served {
    pub start: u64,
    pub end: u64,
    pub size: u64,
}

/// What a download does once the last bytes of its response are in hand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum WhenSent {
    /// The last download the token allowed: remove the transfer.
    Remove,
    /// Record what the response handed over: it may complete the transfer's delivery.
    Serve(Served),
}

impl WhenSent {
    /// Do it, on a task of its own (see [`Removal`]); awaiting the handle waits for it.
    pub fn spawn(self, state: Arc<State>, id: String) -> Removal {
        match self {
            WhenSent::Remove => tokio::spawn(remove_downloaded(state, id)),
            WhenSent::Serve(served) => tokio::spawn(record_served(state, id, served)),
        }
    }
}

/// A removal in progress: a task of its own, so that a client going away (which drops the
/// response body) cannot stop it between the index update and the file removal.
pub(super) type Removal = tokio::task::JoinHandle<()>;

/// A download body that removes its blob (the last download a token allowed) or marks it
/// delivered once the last bytes of the response are in hand (read from storage, about to be
/// sent). The last frame is handed over only after that, so a client that received everything
/// finds the transfer gone, or off its sender's quota. An error before that does neither.
pub(super) struct RemoveWhenSent {
    inner: Body,
    /// Bytes of the response not yet taken from `inner`.
    left: u64,
    remove: Option<(Arc<State>, String, WhenSent)>,
    /// The removal in progress and the frame that waits for it.
    removing: Option<(Removal, Frame<Bytes>)>,
}

impl RemoveWhenSent {
    /// `inner`, a response of `len` bytes, that does `then` to the transfer `id` before
    /// handing over its last bytes.
    pub fn new(inner: Body, len: u64, state: Arc<State>, id: String, then: WhenSent) -> Self {
        RemoveWhenSent {
            inner,
            left: len,
            remove: Some((state, id, then)),
            removing: None,
        }
    }
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
                            if let Some((st, id, then)) = this.remove.take() {
                                this.removing = Some((then.spawn(st, id), frame));
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
