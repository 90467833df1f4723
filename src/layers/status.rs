//! Rewrites the statuses tonic reports differently from what gRPC specifies, whichever way
//! they leave: tonic answers a request message over `--max-message-size` with OUT_OF_RANGE,
//! where gRPC says RESOURCE_EXHAUSTED (the rewrite, which names the flag to raise, is
//! [`normalize_status_headers`] in `error.rs`, where every status is mapped).
//!
//! Such a status leaves in one of two places: the headers of a Trailers-Only response (a unary
//! request too large, or a stream that fails before its first response) or the trailers that
//! end a streaming response (a client stream whose later message is too large, passed on by
//! the handler). The layer looks at both, and at nothing else: one header lookup per response
//! and per trailers frame, and no allocation (its future and body are plain wrappers).
//!
//! It sits right around the router, inside [`Journaled`](crate::journal::layer::Journaled), so
//! the journal records the status the client gets; like every layer there, it hands the
//! journal record on to the router ([`CarryTap`](crate::journal::layer::CarryTap)).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tower::Service;

use crate::error::normalize_status_headers;

/// The layer's service: see the module docs.
#[derive(Clone)]
pub struct CleanStatus<S> {
    inner: S,
}

impl<S> CleanStatus<S> {
    pub fn new(inner: S) -> Self {
        Self { inner }
    }

    /// The wrapped service.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }
}

impl<S, ReqBody, B> Service<Request<ReqBody>> for CleanStatus<S>
where
    S: Service<Request<ReqBody>, Response = Response<B>>,
{
    type Response = Response<CleanStatusBody<B>>;
    type Error = S::Error;
    type Future = CleanStatusFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        CleanStatusFuture {
            inner: self.inner.call(req),
        }
    }
}

pin_project! {
    /// The inner call's future; a Trailers-Only answer has its status rewritten.
    pub struct CleanStatusFuture<F> {
        #[pin]
        inner: F,
    }
}

impl<F, B, E> Future for CleanStatusFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<CleanStatusBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut resp = std::task::ready!(self.project().inner.poll(cx))?;
        normalize_status_headers(resp.headers_mut());
        Poll::Ready(Ok(resp.map(|inner| CleanStatusBody { inner })))
    }
}

pin_project! {
    /// A response body whose trailers have their status rewritten.
    #[derive(Default)]
    pub struct CleanStatusBody<B> {
        #[pin]
        inner: B,
    }
}

impl<B: Body> Body for CleanStatusBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let mut frame = std::task::ready!(self.project().inner.poll_frame(cx));
        if let Some(Ok(f)) = &mut frame {
            if let Some(trailers) = f.trailers_mut() {
                normalize_status_headers(trailers);
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
