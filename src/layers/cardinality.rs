//! Request cardinality of the built-in services' methods that take one message.
//!
//! `grpc.health.v1.Health/Check` and `/Watch` take exactly one request message, and a second
//! one is a request cardinality violation (UNIMPLEMENTED), as for every method the handlers
//! serve (see `codec::RequestCodec::one_message`). The built-in services are tonic's generated
//! servers, whose unary entry points read the first message and pass over the rest: two
//! messages to `Check` were answered SERVING. Their request body is read through
//! [`OneMessage`], which fails it with that status as soon as a second message begins.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tonic::Status;

use super::buffers::Framing;
use crate::error::CallError;

pin_project_lite::pin_project! {
    /// A request body that fails with UNIMPLEMENTED once a second message begins.
    pub struct OneMessage<B> {
        #[pin]
        inner: B,
        framing: Framing,
        method: Arc<str>,
        failed: bool,
    }
}

impl<B> OneMessage<B> {
    /// The body of a call of `method` (its full name, for the status message).
    pub fn new(inner: B, method: Arc<str>) -> Self {
        Self {
            inner,
            framing: Framing::default(),
            method,
            failed: false,
        }
    }
}

impl<B> Body for OneMessage<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<tonic::codegen::StdError>,
{
    type Data = Bytes;
    type Error = tonic::codegen::StdError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.project();
        if *this.failed {
            return Poll::Ready(None);
        }
        let frame = match std::task::ready!(this.inner.poll_frame(cx)) {
            Some(Ok(frame)) => frame,
            Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
            None => return Poll::Ready(None),
        };
        if let Some(data) = frame.data_ref() {
            this.framing.advance(data);
            if this.framing.begun > 1 {
                *this.failed = true;
                let status = Status::from(CallError::RequestCount {
                    method: this.method.clone(),
                    sent: "more than one",
                });
                return Poll::Ready(Some(Err(status.into())));
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.failed || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
