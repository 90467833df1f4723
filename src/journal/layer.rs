//! The tower layer that opens a journal record for every call and closes it with the status
//! the client actually received.
//!
//! It sits outside the cutoff layer, so a call ended by its deadline or by shutdown is recorded
//! with that status, and inside the call limits, so refused calls cost nothing here. The record
//! is handed down to the router ([`CarryTap`]: every request has its own clone of the stack,
//! so this costs no allocation, as a request extension would); the router attaches the method
//! and handler to it and gives it to the codec, which records the messages. With the journal
//! off the layer only passes calls through.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tower::Service;

use super::{End, Journal, Tap};

/// Records the calls of one connection.
#[derive(Clone)]
pub struct Journaled<S> {
    inner: S,
    journal: Option<Journal>,
    peer: Option<SocketAddr>,
}

impl<S> Journaled<S> {
    pub fn new(inner: S, journal: Option<Journal>, peer: Option<SocketAddr>) -> Self {
        Self {
            inner,
            journal,
            peer,
        }
    }
}

/// A service that takes the record of the call it is about to be called with, and hands it
/// on to the router. Every layer between [`Journaled`] and the router implements it.
pub trait CarryTap {
    fn carry_tap(&mut self, tap: Tap);

    /// The call to `path` is refused before it reaches the router (a `grpc-timeout` that
    /// cannot be read): its record still names the method and handler, when the method is
    /// served, as a call refused later does.
    fn refused_before_routing(&mut self, path: &str);
}

impl<S: CarryTap> CarryTap for crate::layers::cutoff::Cutoff<S> {
    fn carry_tap(&mut self, tap: Tap) {
        self.get_mut().carry_tap(tap);
    }

    fn refused_before_routing(&mut self, path: &str) {
        self.get_mut().refused_before_routing(path);
    }
}

impl<S: CarryTap> CarryTap for crate::layers::status::CleanStatus<S> {
    fn carry_tap(&mut self, tap: Tap) {
        self.get_mut().carry_tap(tap);
    }

    fn refused_before_routing(&mut self, path: &str) {
        self.get_mut().refused_before_routing(path);
    }
}

impl<S, ReqBody, B> Service<Request<ReqBody>> for Journaled<S>
where
    S: Service<Request<ReqBody>, Response = Response<B>> + CarryTap,
{
    type Response = Response<JournalBody<B>>;
    type Error = S::Error;
    type Future = JournalFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let tap = self.journal.as_ref().map(|journal| {
            let tap = journal.begin(req.uri(), req.headers(), self.peer);
            self.inner.carry_tap(tap.clone());
            tap
        });
        JournalFuture {
            inner: self.inner.call(req),
            guard: tap.map(|t| Guard {
                tap: Some(t),
                answered: false,
            }),
        }
    }
}

/// Ends the record as abandoned if the call goes away before its status was recorded.
struct Guard {
    tap: Option<Tap>,
    /// Response headers went out (the response's head passed this layer).
    answered: bool,
}

impl Guard {
    /// Records how the call ended; the guard has nothing left to do.
    fn finish(mut self, end: End) {
        if let Some(tap) = self.tap.take() {
            tap.finish(end, self.answered);
            tap.seal();
        }
    }

    /// Records the trailers, which end the call.
    fn trailers(mut self, trailers: &http::HeaderMap) {
        if let Some(tap) = self.tap.take() {
            tap.trailers(trailers);
            tap.seal();
        }
    }

    /// The call ended with the response's headers (Trailers-Only), already recorded.
    fn sealed(mut self) {
        if let Some(tap) = self.tap.take() {
            tap.seal();
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(tap) = self.tap.take() {
            tap.finish(End::Abandoned, self.answered);
            tap.seal();
        }
    }
}

pin_project! {
    pub struct JournalFuture<F> {
        #[pin]
        inner: F,
        guard: Option<Guard>,
    }
}

impl<F, B, E> Future for JournalFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<JournalBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let resp = match this.inner.poll(cx) {
            Poll::Ready(Ok(resp)) => resp,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        };
        let mut guard = this.guard.take();
        if let Some(g) = &mut guard {
            if let Some(tap) = &g.tap {
                if tap.response_head(resp.headers()) {
                    // Trailers-Only: the status is in these headers, and the call is over.
                    if let Some(g) = guard.take() {
                        g.sealed();
                    }
                } else {
                    g.answered = true;
                }
            }
        }
        Poll::Ready(Ok(resp.map(|inner| JournalBody { inner, guard })))
    }
}

pin_project! {
    /// A response body that records the trailers (and so the status) when they go out.
    pub struct JournalBody<B> {
        #[pin]
        inner: B,
        guard: Option<Guard>,
    }
}

impl<B: Default> Default for JournalBody<B> {
    fn default() -> Self {
        Self {
            inner: B::default(),
            guard: None,
        }
    }
}

impl<B: Body> Body for JournalBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.project();
        let frame = std::task::ready!(this.inner.poll_frame(cx));
        if this.guard.is_some() {
            match &frame {
                Some(Ok(f)) => {
                    if let Some(trailers) = f.trailers_ref() {
                        if let Some(guard) = this.guard.take() {
                            guard.trailers(trailers);
                        }
                    }
                }
                Some(Err(_)) => {}
                None => {
                    if let Some(guard) = this.guard.take() {
                        guard.finish(End::NoStatus);
                    }
                }
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
