//! Idle connections: how long a connection has had no request in flight, and a timer that
//! says when to close it.
//!
//! Both listeners bound their connections, and an HTTP/2 connection costs its client nothing to
//! keep open: it answers pings and sends no request. Without an idle rule, as many such
//! connections as the bound fill every slot, and everyone else is refused for as long as they
//! stay (the admin API needs no token for that). So each connection's service is wrapped in
//! [`Tracked`], which counts requests in flight until their response body ends or is dropped
//! (a streaming call counts for as long as it streams), and the connection task waits on
//! [`Activity::idle`] to close the connection gracefully (GOAWAY; the client reconnects when it
//! next needs to).
//!
//! The limit differs per listener:
//!
//! - admin API: 10 s without a request in flight, always, the same as an HTTP/1.1 keep-alive
//!   connection there; its clients are scripts and tools that connect per task.
//! - public gRPC port: a gRPC client keeps its channel open while idle and expects to reuse it,
//!   so an idle connection is left alone while the listener has room. Only once 3/4 of
//!   `--max-connections` are open is a connection that has had no call for 10 s closed; a
//!   client's channel reconnects by itself on GOAWAY, and the slot goes to whoever needs it.
//!
//! A listener whose slots are all taken makes room at once instead, by closing the connection
//! idle the longest ([`crate::evict`]). Either way a connection being closed keeps what is in
//! flight: GOAWAY lets its calls finish, and it is dropped only once [`CLOSE_GRACE`] has passed
//! with nothing in flight.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::evict::Roster;

/// How long a connection may go without a request in flight before it may be closed.
pub const IDLE_LIMIT: Duration = Duration::from_secs(10);
/// After a connection is sent GOAWAY for being idle (or evicted), time for the client to close it
/// before it is dropped; calls begun since the GOAWAY are cut then.
pub const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// How often a connection being closed checks whether a call that slipped in has ended.
const QUIET_CHECK: Duration = Duration::from_millis(250);

/// One connection's requests in flight and when the last one ended.
pub struct Activity {
    in_flight: AtomicUsize,
    /// Milliseconds after `start` at which the connection last became idle.
    idle_since: AtomicU64,
    start: Instant,
    /// Moves on each time the connection turns busy or idle: the listener's queue of idle
    /// connections tells its stale entries so ([`crate::evict`]).
    turn: AtomicU64,
    /// The listener's slots, told when the connection becomes idle.
    roster: Roster,
    /// Cancelled when the listener takes the connection's slot for a new one.
    evicted: CancellationToken,
    /// Set when it is to be dropped at once rather than closed with GOAWAY.
    hurried: AtomicBool,
    /// Set once the connection is sent GOAWAY: calls begun since do not keep it open.
    closing: AtomicBool,
    /// Calls in flight that began before the GOAWAY: the connection is not dropped under them.
    kept: AtomicUsize,
}

impl Activity {
    /// A connection that has just been accepted into a slot of `roster`; it counts as idle
    /// from now.
    pub(crate) fn listed(roster: Roster) -> Arc<Self> {
        Arc::new(Self {
            in_flight: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            start: Instant::now(),
            turn: AtomicU64::new(0),
            roster,
            evicted: CancellationToken::new(),
            hurried: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            kept: AtomicUsize::new(0),
        })
    }

    pub(crate) fn begin(self: &Arc<Self>) -> Busy {
        if self.in_flight.fetch_add(1, Ordering::AcqRel) == 0 {
            self.turn.fetch_add(1, Ordering::AcqRel);
        }
        let keeps = !self.closing.load(Ordering::Acquire);
        if keeps {
            self.kept.fetch_add(1, Ordering::AcqRel);
        }
        Busy {
            conn: self.clone(),
            keeps,
        }
    }

    pub(crate) fn turn(&self) -> u64 {
        self.turn.load(Ordering::Acquire)
    }

    /// Moves the turn on, for the connection becoming idle; the new turn.
    pub(crate) fn next_turn(&self) -> u64 {
        self.turn.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Whether the connection has had no request in flight since `turn` and is not evicted.
    pub(crate) fn idle_in_turn(&self, turn: u64) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0 && self.turn() == turn && !self.is_evicted()
    }

    /// Tells the connection its slot is taken: close with GOAWAY, or at once if `hurried`.
    pub(crate) fn evict(&self, hurried: bool) {
        self.hurried.store(hurried, Ordering::Release);
        self.evicted.cancel();
    }

    pub(crate) fn is_evicted(&self) -> bool {
        self.evicted.is_cancelled()
    }

    /// Resolves when the listener has taken the connection's slot for a new one.
    pub async fn evicted(&self) {
        self.evicted.cancelled().await
    }

    /// Whether the evicted connection is to be dropped without waiting for its client: it was
    /// told so, and nothing is in flight (a request that slipped in is let finish). Asked from
    /// the connection's own task, where its requests begin, so none starts in between.
    pub fn hurried(&self) -> bool {
        self.hurried.load(Ordering::Acquire) && self.in_flight.load(Ordering::Acquire) == 0
    }

    /// How long the connection has had nothing in flight, if it has not.
    pub(crate) fn idle_for(&self) -> Option<Duration> {
        self.idle_since().map(|since| since.elapsed())
    }

    /// Records that the connection has been sent GOAWAY: calls that begin from now on do not
    /// keep it open past [`Activity::quiet_past`]. Called from the connection's own task, where
    /// its requests begin, right as it sends the GOAWAY.
    pub fn goaway_sent(&self) {
        self.closing.store(true, Ordering::Release);
    }

    /// Resolves once `deadline` has passed with no call in flight that began before
    /// [`Activity::goaway_sent`]: when a connection being closed may be dropped without cutting
    /// short a call it took before its GOAWAY. Calls begun since are cut.
    pub async fn quiet_past(&self, deadline: Instant) {
        tokio::time::sleep_until(deadline).await;
        while self.kept.load(Ordering::Acquire) > 0 {
            tokio::time::sleep(QUIET_CHECK).await;
        }
    }

    /// When the connection became idle, or `None` while a request is in flight.
    fn idle_since(&self) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let ms = self.idle_since.load(Ordering::Acquire);
        Some(self.start + Duration::from_millis(ms))
    }

    /// Resolves once the connection has had no request in flight for `limit` and `pressed()`
    /// says closing it is wanted (checked then, and every `limit` after).
    pub async fn idle(&self, limit: Duration, pressed: impl Fn() -> bool) {
        loop {
            let now = Instant::now();
            let wake = match self.idle_since() {
                Some(since) if now.duration_since(since) >= limit && pressed() => return,
                Some(since) if now.duration_since(since) < limit => since + limit,
                _ => now + limit,
            };
            tokio::time::sleep_until(wake).await;
        }
    }
}

/// One request in flight; the connection is idle again when the last is dropped.
pub(crate) struct Busy {
    conn: Arc<Activity>,
    /// Begun before the connection's GOAWAY: counted in [`Activity::kept`].
    keeps: bool,
}

impl Drop for Busy {
    fn drop(&mut self) {
        let a = &self.conn;
        if self.keeps {
            a.kept.fetch_sub(1, Ordering::AcqRel);
        }
        let ms = a.start.elapsed().as_millis().try_into().unwrap_or(u64::MAX);
        a.idle_since.store(ms, Ordering::Release);
        if a.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            a.roster.became_idle(a);
        }
    }
}

/// A connection's hyper service, counting its requests in [`Activity`].
#[derive(Clone)]
pub struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S> Tracked<S> {
    pub fn new(inner: S, activity: Arc<Activity>) -> Self {
        Self { inner, activity }
    }
}

impl<S, ReqBody, B> hyper::service::Service<Request<ReqBody>> for Tracked<S>
where
    S: hyper::service::Service<Request<ReqBody>, Response = Response<B>>,
{
    type Response = Response<TrackedBody<B>>;
    type Error = S::Error;
    type Future = TrackedFuture<S::Future>;

    fn call(&self, req: Request<ReqBody>) -> Self::Future {
        TrackedFuture {
            busy: Some(self.activity.begin()),
            fut: self.inner.call(req),
        }
    }
}

pin_project! {
    /// The inner service's future; its response body takes over the request's count.
    pub struct TrackedFuture<F> {
        #[pin]
        fut: F,
        busy: Option<Busy>,
    }
}

impl<F, B, E> Future for TrackedFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<TrackedBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.fut.poll(cx));
        let busy = this.busy.take();
        Poll::Ready(result.map(|resp| resp.map(|inner| TrackedBody { inner, _busy: busy })))
    }
}

pin_project! {
    /// A response body that keeps its request counted until it ends or is dropped.
    pub struct TrackedBody<B> {
        #[pin]
        inner: B,
        _busy: Option<Busy>,
    }
}

impl<B: Body> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = std::task::ready!(this.inner.poll_frame(cx));
        if frame.is_none() {
            *this._busy = None;
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
