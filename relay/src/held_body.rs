//! A response body that holds a guard (a connection's busy mark, a sender's request count)
//! until the body has been sent or dropped: a response counts until its last byte leaves.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Frame, SizeHint};

use crate::api::Body;

/// `body`, keeping `guard` alive until the body has been sent (or dropped).
pub fn held_until_sent<G: Send + Unpin + 'static>(body: Body, guard: G) -> Body {
    HeldBody {
        inner: body,
        _guard: guard,
    }
    .boxed_unsync()
}

/// Everything passes through, the size hint too (so `Content-Length` is kept).
struct HeldBody<G> {
    inner: Body,
    _guard: G,
}

impl<G: Unpin> hyper::body::Body for HeldBody<G> {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
