//! Calls in flight, bounded per connection and for the whole server, refused at once when full.
//!
//! tower's `ConcurrencyLimit` queues calls over the limit: their requests stay in memory and
//! every caller waits, so a flood turns into latency for everyone. Here a call over either limit
//! is answered immediately with RESOURCE_EXHAUSTED (Trailers-Only) and costs nothing more. A call
//! that gets in holds its two permits until its response body ends or is dropped, so a streaming
//! call counts for as long as it streams.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::Status;
use tower::Service;

use crate::error::CallError;

/// The server-wide limit, shared by every connection.
#[derive(Clone)]
pub struct ServerCalls {
    semaphore: Arc<Semaphore>,
    limit: usize,
}

impl ServerCalls {
    pub fn new(limit: usize) -> Self {
        Self {
            semaphore: Arc::new(Semaphore::new(limit)),
            limit,
        }
    }
}

/// One connection's view of the limits: its own semaphore and the server's.
#[derive(Clone)]
pub struct Limited<S> {
    inner: S,
    connection: Arc<Semaphore>,
    per_connection: usize,
    server: ServerCalls,
}

impl<S> Limited<S> {
    /// Wraps `inner` for one new connection.
    pub fn new(inner: S, per_connection: usize, server: ServerCalls) -> Self {
        Self {
            inner,
            connection: Arc::new(Semaphore::new(per_connection)),
            per_connection,
            server,
        }
    }
}

type Permits = (OwnedSemaphorePermit, OwnedSemaphorePermit);

impl<S, ReqBody, B> Service<Request<ReqBody>> for Limited<S>
where
    S: Service<Request<ReqBody>, Response = Response<B>>,
    B: Default,
{
    type Response = Response<Permitted<B>>;
    type Error = S::Error;
    type Future = LimitedFuture<S::Future, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let refused = |limit, flag| LimitedFuture::Refused {
            response: Some(Status::from(CallError::Overloaded { limit, flag }).into_http()),
        };
        let Ok(connection) = self.connection.clone().try_acquire_owned() else {
            return refused(self.per_connection, "--max-calls-per-connection");
        };
        let Ok(server) = self.server.semaphore.clone().try_acquire_owned() else {
            return refused(self.server.limit, "--max-calls");
        };
        LimitedFuture::Running {
            fut: self.inner.call(req),
            permits: Some((connection, server)),
        }
    }
}

pin_project! {
    /// The inner call's future with its permits, or an immediate refusal.
    #[project = LimitedProj]
    pub enum LimitedFuture<F, B> {
        Running { #[pin] fut: F, permits: Option<Permits> },
        Refused { response: Option<Response<B>> },
    }
}

impl<F, B, E> Future for LimitedFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Default,
{
    type Output = Result<Response<Permitted<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            LimitedProj::Running { fut, permits } => {
                let resp = std::task::ready!(fut.poll(cx))?;
                let permits = permits.take();
                Poll::Ready(Ok(resp.map(|inner| Permitted { inner, permits })))
            }
            LimitedProj::Refused { response } => {
                let resp = response.take().unwrap_or_default();
                Poll::Ready(Ok(resp.map(|inner| Permitted {
                    inner,
                    permits: None,
                })))
            }
        }
    }
}

pin_project! {
    /// A response body holding its call's permits until it ends.
    pub struct Permitted<B> {
        #[pin]
        inner: B,
        permits: Option<Permits>,
    }
}

impl<B: Body> Body for Permitted<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.project();
        let frame = std::task::ready!(this.inner.poll_frame(cx));
        if frame.is_none() {
            *this.permits = None;
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
