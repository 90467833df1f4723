//! Ends a call early with a status the client sees: DEADLINE_EXCEEDED when the client's
//! `grpc-timeout` passes, UNAVAILABLE when the server's `--shutdown-timeout` passes.
//!
//! Before the response exists, the call is answered Trailers-Only with that status and the
//! handler's future is dropped (which cancels its work). Once the response is streaming, the
//! body ends with a trailers frame carrying the status: tonic's encoder yields whole messages,
//! so the client never sees half a message.
//!
//! tonic's own timeout layer answers CANCELLED "Timeout expired" and parses `grpc-timeout` with
//! arithmetic that can overflow; here the header is read once with saturating arithmetic, a
//! timeout too large to be an `Instant` means no deadline, and a malformed one gets
//! INVALID_ARGUMENT.
//!
//! A call whose deadline has passed when it arrives (`grpc-timeout: 0n`, `0S`…) gets
//! DEADLINE_EXCEEDED without reaching its handler, whatever answers it, health included (a
//! grpc-go handler sees an expired context). The timer alone would not do it: tokio's timers
//! fire at the next millisecond tick, and a handler that answers at once (a `reply`, health)
//! would answer first. So an expired deadline is refused up front, and one that passes before
//! the response exists is checked against the clock, not only the timer.
//!
//! The shutdown signal is per connection ([`Stop`]); a call looks at it only while it is
//! waiting, so a call that is making progress pays nothing for it.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderMap, Request, Response};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::sync::futures::OwnedNotified;
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};
use tonic::Status;
use tower::Service;

use crate::error::CallError;
use crate::handler::parse_grpc_timeout;

/// Tells a connection's calls that the shutdown deadline passed.
#[derive(Clone, Default)]
pub struct Stop(Arc<StopInner>);

#[derive(Default)]
struct StopInner {
    fired: AtomicBool,
    notify: Arc<Notify>,
}

impl Stop {
    pub fn new() -> Self {
        Self::default()
    }

    /// Ends every call of this connection that is still running, now and later.
    pub fn fire(&self) {
        self.0.fired.store(true, Ordering::Release);
        self.0.notify.notify_waiters();
    }

    fn fired(&self) -> bool {
        self.0.fired.load(Ordering::Acquire)
    }

    /// True once fired; otherwise registers `cx` to be woken when it fires.
    fn poll_fired(&self, mut slot: Pin<&mut Option<OwnedNotified>>, cx: &mut Context<'_>) -> bool {
        if self.fired() {
            return true;
        }
        if slot.is_none() {
            slot.set(Some(self.0.notify.clone().notified_owned()));
        }
        let woken = slot.as_pin_mut().is_some_and(|n| n.poll(cx).is_ready());
        // A fire between the first check and the registration is caught here.
        woken || self.fired()
    }
}

/// The layer's service: see the module docs.
#[derive(Clone)]
pub struct Cutoff<S> {
    inner: S,
    stop: Stop,
}

impl<S> Cutoff<S> {
    pub fn new(inner: S, stop: Stop) -> Self {
        Self { inner, stop }
    }

    /// The wrapped service.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }
}

impl<S, ReqBody, B> Service<Request<ReqBody>> for Cutoff<S>
where
    S: Service<Request<ReqBody>, Response = Response<B>> + crate::journal::layer::CarryTap,
    B: Body + Default + Unpin,
{
    type Response = Response<CutoffBody<B>>;
    type Error = S::Error;
    type Future = CutoffFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let mut deadline = None;
        let mut early = None;
        if let Some(raw) = req.headers().get(&crate::metadata::names::GRPC_TIMEOUT) {
            match parse_grpc_timeout(raw.as_bytes()) {
                // Too far ahead to represent: no deadline.
                Some(timeout) => {
                    deadline = Instant::now().checked_add(timeout).map(|at| (at, timeout))
                }
                None => {
                    early = Some(CallError::BadTimeout {
                        value: String::from_utf8_lossy(raw.as_bytes()).into_owned(),
                    })
                }
            }
        }
        if let Some((_, timeout)) = deadline.filter(|(_, timeout)| timeout.is_zero()) {
            early = Some(CallError::DeadlinePassed { timeout });
        }
        let inner = match early {
            Some(_) => {
                self.inner.refused_before_routing(req.uri().path());
                None
            }
            None => Some(self.inner.call(req)),
        };
        CutoffFuture {
            inner,
            sleep: deadline.map(|(at, _)| tokio::time::sleep_until(at)),
            deadline,
            stop: self.stop.clone(),
            stopped: None,
            early,
        }
    }
}

/// A Trailers-Only response carrying `error`.
fn trailers_only<B: Body + Default + Unpin>(error: CallError) -> Response<CutoffBody<B>> {
    error.into_http::<B>().map(CutoffBody::plain)
}

pin_project! {
    /// The inner call's future, raced against the deadline and the shutdown signal.
    pub struct CutoffFuture<F> {
        #[pin]
        inner: Option<F>,
        #[pin]
        sleep: Option<Sleep>,
        deadline: Option<(Instant, Duration)>,
        stop: Stop,
        #[pin]
        stopped: Option<OwnedNotified>,
        early: Option<CallError>,
    }
}

impl<F, B, E> Future for CutoffFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body + Default + Unpin,
{
    type Output = Result<Response<CutoffBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Some(error) = this.early.take() {
            return Poll::Ready(Ok(trailers_only(error)));
        }
        if let (Some(sleep), Some((at, timeout))) =
            (this.sleep.as_mut().as_pin_mut(), *this.deadline)
        {
            // The timer fires at tokio's next tick; the clock says sooner whether it has passed.
            if sleep.poll(cx).is_ready() || Instant::now() >= at {
                this.inner.set(None);
                return Poll::Ready(Ok(trailers_only(CallError::DeadlinePassed { timeout })));
            }
        }
        let Some(inner) = this.inner.as_mut().as_pin_mut() else {
            return Poll::Pending;
        };
        match inner.poll(cx) {
            Poll::Ready(Ok(resp)) => {
                let deadline = *this.deadline;
                if let Some((at, _)) = deadline {
                    // The body ends the call at its deadline when hyper polls it; this is for a
                    // client whose window keeps hyper from polling it.
                    super::overdue::note_deadline(at);
                }
                let stop = this.stop.clone();
                Poll::Ready(Ok(
                    resp.map(|body| CutoffBody::guarded(body, deadline, stop))
                ))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                if this.stop.poll_fired(this.stopped, cx) {
                    this.inner.set(None);
                    return Poll::Ready(Ok(trailers_only(CallError::ShuttingDown)));
                }
                Poll::Pending
            }
        }
    }
}

pin_project! {
    /// A response body that ends with the deadline's or the shutdown's status when either fires
    /// first.
    pub struct CutoffBody<B> {
        inner: Option<B>,
        #[pin]
        sleep: Option<Sleep>,
        timeout: Duration,
        stop: Option<Stop>,
        #[pin]
        stopped: Option<OwnedNotified>,
    }
}

impl<B: Default> Default for CutoffBody<B> {
    fn default() -> Self {
        Self::plain(B::default())
    }
}

impl<B> CutoffBody<B> {
    /// `inner` as it is, never cut off.
    fn plain(inner: B) -> Self {
        Self {
            inner: Some(inner),
            sleep: None,
            timeout: Duration::ZERO,
            stop: None,
            stopped: None,
        }
    }

    fn guarded(inner: B, deadline: Option<(Instant, Duration)>, stop: Stop) -> Self {
        Self {
            inner: Some(inner),
            sleep: deadline.map(|(at, _)| tokio::time::sleep_until(at)),
            timeout: deadline.map_or(Duration::ZERO, |(_, t)| t),
            stop: Some(stop),
            stopped: None,
        }
    }
}

impl<B> Body for CutoffBody<B>
where
    B: Body + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let mut this = self.project();
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let mut cut = None;
        if let Some(sleep) = this.sleep.as_mut().as_pin_mut() {
            if sleep.poll(cx).is_ready() {
                cut = Some(CallError::DeadlinePassed {
                    timeout: *this.timeout,
                });
            }
        }
        if cut.is_none() {
            match Pin::new(inner).poll_frame(cx) {
                Poll::Ready(frame) => {
                    if !matches!(&frame, Some(Ok(f)) if f.is_data()) {
                        // Ended (or failed): nothing left to cut off.
                        this.sleep.set(None);
                        this.stopped.set(None);
                        *this.stop = None;
                    }
                    return Poll::Ready(frame);
                }
                Poll::Pending => {
                    let fired = this
                        .stop
                        .as_ref()
                        .is_some_and(|s| s.poll_fired(this.stopped.as_mut(), cx));
                    if !fired {
                        return Poll::Pending;
                    }
                    cut = Some(CallError::ShuttingDown);
                }
            }
        }
        let status = Status::from(cut.unwrap_or(CallError::ShuttingDown));
        let mut trailers = HeaderMap::new();
        // Only fails for a message that cannot be a header value, which these never are.
        let _ = status.add_header(&mut trailers);
        *this.inner = None;
        this.sleep.set(None);
        this.stopped.set(None);
        *this.stop = None;
        Poll::Ready(Some(Ok(Frame::trailers(trailers))))
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Some(inner) => inner.is_end_stream(),
            None => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Some(inner) => inner.size_hint(),
            None => SizeHint::with_exact(0),
        }
    }
}
