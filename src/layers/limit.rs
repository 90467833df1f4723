//! Calls in flight, bounded per connection and for the whole server, refused at once when full.
//!
//! tower's `ConcurrencyLimit` queues calls over the limit: their requests stay in memory and
//! every caller waits, so a flood turns into latency for everyone. Here a call over either limit
//! is answered immediately with RESOURCE_EXHAUSTED (Trailers-Only) and costs nothing more. A call
//! that gets in holds its two slots until its response body ends or is dropped, so a streaming
//! call counts for as long as it streams.
//!
//! Nothing ever waits for a slot, so a slot is an atomic counter, not a semaphore: taking and
//! giving one back takes no lock, even on the counter all connections share.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tonic::Status;
use tower::Service;

use crate::error::CallError;

/// Calls in flight against a limit.
pub struct Slots {
    taken: AtomicUsize,
    limit: usize,
}

impl Slots {
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            taken: AtomicUsize::new(0),
            limit,
        })
    }

    /// A slot, unless all `limit` are taken.
    fn take(self: &Arc<Self>) -> Option<Slot> {
        self.taken
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.limit).then_some(n + 1)
            })
            .ok()?;
        Some(Slot(self.clone()))
    }

    /// Calls in flight now.
    pub fn taken(&self) -> usize {
        self.taken.load(Ordering::Acquire)
    }
}

/// One call's place; given back when dropped.
pub struct Slot(Arc<Slots>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.taken.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The server-wide limit, shared by every connection.
pub type ServerCalls = Arc<Slots>;

/// One connection's view of the limits: its own slots and the server's.
#[derive(Clone)]
pub struct Limited<S> {
    inner: S,
    connection: Arc<Slots>,
    server: ServerCalls,
}

impl<S> Limited<S> {
    /// Wraps `inner` for one new connection.
    pub fn new(inner: S, per_connection: usize, server: ServerCalls) -> Self {
        Self {
            inner,
            connection: Slots::new(per_connection),
            server,
        }
    }
}

type Permits = (Slot, Slot);

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
        let Some(connection) = self.connection.take() else {
            return refused(self.connection.limit, "--max-calls-per-connection");
        };
        let Some(server) = self.server.take() else {
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
