//! Calls in flight, bounded per connection and for the whole server, refused at once when full.
//!
//! tower's `ConcurrencyLimit` queues calls over the limit: their requests stay in memory and
//! every caller waits, so a flood turns into latency for everyone. Here a call over either limit
//! is answered immediately with RESOURCE_EXHAUSTED (Trailers-Only) and costs nothing more. A call
//! that gets in holds its two slots until its response body ends or is dropped, so a streaming
//! call counts for as long as it streams.
//!
//! A connection's first [`RESERVED_PER_CONNECTION`] calls in flight take no place under the
//! server-wide limit: a client that keeps thousands of calls open over a few connections (health
//! `Watch` streams, idle bidi streams: legitimate calls that may last for hours) filled
//! `--max-calls`, and every other client's calls were refused for as long as they stayed. Now
//! the limit bounds what connections take beyond their reserve, so another connection's first
//! calls always get in; the server holds at most `--max-calls` plus the reserve of each of its
//! at most `--max-connections` connections.
//!
//! Nothing ever waits for a slot, so a slot is an atomic counter, not a semaphore: taking and
//! giving one back takes no lock, even on the counter all connections share.
//!
//! The response body is also where response bytes start to count against the connection's
//! [`Buffers`]: every chunk handed to HTTP/2 holds room until HTTP/2 drops it.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tonic::Status;
use tower::Service;

use super::buffers::{held_chunk, Buffers, SMALL};
use crate::error::CallError;

/// Calls each connection may have in flight whatever the server-wide count.
pub const RESERVED_PER_CONNECTION: usize = 4;

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

    /// A slot, unless all `limit` are taken; with how many were taken before it.
    fn take(self: &Arc<Self>) -> Option<(Slot, usize)> {
        let before = self
            .taken
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.limit).then_some(n + 1)
            })
            .ok()?;
        Some((Slot(self.clone()), before))
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
    buffers: Buffers,
}

impl<S> Limited<S> {
    /// Wraps `inner` for one new connection.
    pub fn new(inner: S, per_connection: usize, server: ServerCalls, buffers: Buffers) -> Self {
        Self {
            inner,
            connection: Slots::new(per_connection),
            server,
            buffers,
        }
    }

    /// The connection's message buffers.
    pub fn buffers(&self) -> &Buffers {
        &self.buffers
    }
}

/// The connection's slot, and the server's unless the call is within the connection's reserve.
type Permits = (Slot, Option<Slot>);

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
            response: Some(CallError::Overloaded { limit, flag }.into_http()),
        };
        let Some((connection, before)) = self.connection.take() else {
            return refused(self.connection.limit, "--max-calls-per-connection");
        };
        let server = if before < RESERVED_PER_CONNECTION {
            None
        } else {
            match self.server.take() {
                Some((slot, _)) => Some(slot),
                None => return refused(self.server.limit, "--max-calls"),
            }
        };
        LimitedFuture::Running {
            fut: self.inner.call(req),
            permits: Some((connection, server)),
            buffers: Some(self.buffers.clone()),
        }
    }
}

pin_project! {
    /// The inner call's future with its permits, or an immediate refusal.
    #[project = LimitedProj]
    pub enum LimitedFuture<F, B> {
        Running { #[pin] fut: F, permits: Option<Permits>, buffers: Option<Buffers> },
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
            LimitedProj::Running {
                fut,
                permits,
                buffers,
            } => {
                let resp = std::task::ready!(fut.poll(cx))?;
                let permits = permits.take();
                let buffers = buffers.take();
                Poll::Ready(Ok(resp.map(|inner| Permitted {
                    inner,
                    permits,
                    buffers,
                    ended: false,
                })))
            }
            LimitedProj::Refused { response } => {
                let resp = response.take().unwrap_or_default();
                Poll::Ready(Ok(resp.map(|inner| Permitted {
                    inner,
                    permits: None,
                    buffers: None,
                    ended: false,
                })))
            }
        }
    }
}

pin_project! {
    /// A response body holding its call's permits until it ends, whose chunks hold room in the
    /// connection's buffers until HTTP/2 drops them. A chunk that does not fit ends the call
    /// with RESOURCE_EXHAUSTED instead (the rest of the body is never polled).
    pub struct Permitted<B> {
        #[pin]
        inner: B,
        permits: Option<Permits>,
        buffers: Option<Buffers>,
        ended: bool,
    }
}

impl<B: Default> Default for Permitted<B> {
    fn default() -> Self {
        Self {
            inner: B::default(),
            permits: None,
            buffers: None,
            ended: false,
        }
    }
}

impl<B: Body<Data = Bytes>> Body for Permitted<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        if *this.ended {
            return Poll::Ready(None);
        }
        let frame = match std::task::ready!(this.inner.poll_frame(cx)) {
            Some(Ok(frame)) => frame,
            other => {
                if other.is_none() {
                    *this.permits = None;
                }
                return Poll::Ready(other);
            }
        };
        let Some(buffers) = this.buffers.as_ref() else {
            return Poll::Ready(Some(Ok(frame)));
        };
        let data = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => return Poll::Ready(Some(Ok(frame))),
        };
        if data.len() < SMALL {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        match held_chunk(data, buffers) {
            Ok(data) => Poll::Ready(Some(Ok(Frame::data(data)))),
            Err(e) => {
                *this.ended = true;
                *this.permits = None;
                let mut trailers = HeaderMap::new();
                // Only fails for a message that cannot be a header value, which this never is.
                let _ = Status::from(e).add_header(&mut trailers);
                Poll::Ready(Some(Ok(Frame::trailers(trailers))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        if self.ended {
            return SizeHint::with_exact(0);
        }
        self.inner.size_hint()
    }
}
