//! The accept loop, HTTP/2 connection settings and graceful shutdown.
//!
//! tonic's `transport::Server` has no handshake timeout and no shutdown deadline, and leaves
//! the number of streams per connection unbounded; a fake server in someone's test suite meets
//! clients that open streams without end, stop halfway through the preface, or never finish a
//! call. So connections are served here with hyper's HTTP/2 builder and an own accept loop:
//!
//! - every connection, stream and call limit and every timeout is a setting
//!   ([`ServerOptions`], flags in `main.rs`);
//! - a connection that has not sent the HTTP/2 preface and a first frame header within
//!   `handshake_timeout` is closed ([`HandshakeGuard`]);
//! - a client that opens with something other than HTTP/2 (a TLS handshake, an HTTP/1
//!   request) is named in the log with what to change, not just disconnected;
//! - peers that stop answering pings are dropped (`keepalive_*`);
//! - once 3/4 of `max_connections` are open, a connection with no call for 10 s is closed with
//!   GOAWAY, so idle connections cannot keep the listener full ([`crate::idle`] says why only
//!   then); once all are open, a new connection is served and the one idle the longest closed
//!   ([`crate::evict`]); only when every one has a call in flight is a new one refused, with a
//!   GOAWAY saying why;
//! - a connection flooding the server with frames that carry no call (PING, SETTINGS…) is
//!   closed, and no connection holds a network thread for long ([`crate::floods`]);
//! - on shutdown the listener closes, health turns NOT_SERVING, connections get GOAWAY and
//!   in-flight calls may finish; calls still running after `shutdown_timeout` end with
//!   UNAVAILABLE (a status, not a reset), and whatever is left after a short grace (a peer that
//!   reads nothing) is dropped, so the process always exits.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Sleep;
use tokio_util::sync::CancellationToken;

use crate::evict::{Full, Roster};
use crate::floods::{Flood, FrameBudget};
use crate::idle::{Activity, Tracked, CLOSE_GRACE, IDLE_LIMIT};
use crate::journal::Journal;
use crate::layers::buffers::{Budget, Buffers};
use crate::layers::cutoff::Stop;
use crate::layers::limit::Slots;
use crate::layers::overdue::StreamExecutor;
use crate::layers::{stack, Hyper, Recording};
use crate::refusal::Refusals;
use crate::router::Router;

/// Limits and timeouts of the transport; the defaults suit a test server on one machine.
#[derive(Debug, Clone, Copy)]
pub struct ServerOptions {
    /// Connections served at once; one more closes the connection idle the longest, or is
    /// refused when every one has a call in flight ([`crate::evict`]).
    pub max_connections: usize,
    /// HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS: streams a client may open on one connection.
    pub max_concurrent_streams: u32,
    /// Calls in flight on one connection; more get RESOURCE_EXHAUSTED at once.
    pub max_calls_per_connection: usize,
    /// Calls in flight on the whole server, past each connection's first 4 (which always get
    /// in); more get RESOURCE_EXHAUSTED at once.
    pub max_calls: usize,
    /// Time a new connection has to send the HTTP/2 preface and its first frame.
    pub handshake_timeout: Duration,
    /// How often a connection is pinged to detect a dead peer; `None` never.
    pub keepalive_interval: Option<Duration>,
    /// How long a ping may go unanswered before the connection is dropped.
    pub keepalive_timeout: Duration,
    /// How long in-flight calls may run after SIGTERM before they end with UNAVAILABLE.
    pub shutdown_timeout: Duration,
    /// HTTP/2 SETTINGS_MAX_HEADER_LIST_SIZE: bytes of request headers (metadata) per call.
    pub max_header_list_size: u32,
    /// Bytes of messages held for one connection: requests still arriving, responses the client
    /// has not read (see [`crate::layers::buffers`]).
    pub max_buffered_per_connection: usize,
    /// The same, for all connections together.
    pub max_buffered: usize,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            max_concurrent_streams: 256,
            max_calls_per_connection: 256,
            max_calls: 4096,
            handshake_timeout: Duration::from_secs(10),
            keepalive_interval: Some(Duration::from_secs(60)),
            keepalive_timeout: Duration::from_secs(20),
            shutdown_timeout: Duration::from_secs(10),
            max_header_list_size: 16 * 1024,
            max_buffered_per_connection: 64 * 1024 * 1024,
            max_buffered: 1024 * 1024 * 1024,
        }
    }
}

/// Streams a client may reset before the server has accepted them (the "rapid reset" attack),
/// and streams the server may refuse or reset for a client's errors, before the connection is
/// closed with GOAWAY.
const MAX_PENDING_ACCEPT_RESETS: usize = 20;
const MAX_LOCAL_ERROR_RESETS: usize = 1024;
/// Bytes one stream may queue for sending beyond what flow control lets out; with the encoder
/// holding at most one message, this bounds a slow reader's cost per stream.
const MAX_SEND_BUF: usize = 64 * 1024;
/// HTTP/2 itself refuses request headers over this many times `--max-header-list-size` (with
/// HTTP 431, no gRPC status); between the two, the call is refused with RESOURCE_EXHAUSTED
/// naming the flag ([`crate::layers::content_type`]). A refused call's headers are dropped at
/// once, so a call in flight still holds at most the flag's worth.
const HEADER_LIST_LEEWAY: u32 = 4;
/// After the shutdown deadline, time for the UNAVAILABLE trailers to reach clients.
const FINAL_GRACE: Duration = Duration::from_secs(2);

/// Serves connections from `listener` until `shutdown` resolves, then drains (see the module
/// docs); `on_drain` runs when draining starts. Calls are recorded in `journal`, if given.
pub async fn run(
    listener: TcpListener,
    router: Router,
    options: ServerOptions,
    journal: Option<Journal>,
    shutdown: impl Future<Output = ()>,
    on_drain: impl FnOnce(),
) {
    let mut http2 = hyper::server::conn::http2::Builder::new(StreamExecutor);
    http2
        .timer(TokioTimer::new())
        .max_concurrent_streams(options.max_concurrent_streams)
        .max_pending_accept_reset_streams(MAX_PENDING_ACCEPT_RESETS)
        .max_local_error_reset_streams(MAX_LOCAL_ERROR_RESETS)
        .max_header_list_size(
            options
                .max_header_list_size
                .saturating_mul(HEADER_LIST_LEEWAY),
        )
        .max_send_buf_size(MAX_SEND_BUF)
        .keep_alive_interval(options.keepalive_interval)
        .keep_alive_timeout(options.keepalive_timeout);

    let server_calls = Slots::new(options.max_calls);
    let server_buffers = Budget::new(options.max_buffered, "--max-buffered");
    let (draining_tx, draining) = watch::channel(false);
    let deadline_passed = CancellationToken::new();
    let mut connections = JoinSet::new();
    let refusals = Refusals::new(false);
    let roster = Roster::new(
        options.max_connections,
        format!("--max-connections ({})", options.max_connections),
    );
    let crowded_at = (options.max_connections * CROWDED_PERCENT / 100).max(1);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors, for one: wait instead of spinning.
                        tracing::warn!("accepting a connection failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let seat = match roster.admit() {
                    Ok(seat) => seat,
                    Err(Full) => {
                        // Every connection has a call in flight: refused at once, with a
                        // GOAWAY saying why; the log says so too, once a second at most.
                        static REFUSED: AtomicU64 = AtomicU64::new(0);
                        if once_a_second(&REFUSED) {
                            tracing::warn!("refusing connections (from {peer}, for one): --max-connections ({}) are open, each with a call in flight; raise the flag, or have clients close theirs", options.max_connections);
                        } else {
                            tracing::debug!("refusing a connection from {peer}: --max-connections ({}) reached", options.max_connections);
                        }
                        let why = format!("--max-connections ({}) reached, each with a call in flight", options.max_connections);
                        let json = serde_json::json!({"error": "busy", "message": why});
                        refusals.refuse(stream, why, json);
                        continue;
                    }
                };
                if let Err(e) = stream.set_nodelay(true) {
                    tracing::debug!("TCP_NODELAY: {e}");
                }
                let stop = Stop::new();
                let activity = seat.activity.clone();
                let service = Tracked::new(Hyper(stack(
                    &router,
                    options.max_calls_per_connection,
                    server_calls.clone(),
                    stop.clone(),
                    Recording { journal: journal.clone(), peer: Some(peer) },
                    Buffers::new(options.max_buffered_per_connection, server_buffers.clone()),
                    options.max_header_list_size as usize,
                )), activity.clone());
                let guard = HandshakeGuard::new(stream, options.handshake_timeout)
                    .reporting_other_protocols(peer)
                    .budgeting_frames();
                let greeted = guard.greeted.clone();
                let flooded = guard.flooded.clone();
                let conn = http2.serve_connection(TokioIo::new(guard), service);
                let slots = roster.clone();
                let crowded = move || slots.held() >= crowded_at;
                let served = connection(
                    conn,
                    activity,
                    crowded,
                    peer,
                    greeted,
                    flooded,
                    draining.clone(),
                    deadline_passed.clone(),
                    stop,
                );
                connections.spawn(async move {
                    served.await;
                    drop(seat);
                });
                // The new connection reads what its client has sent (a request makes it busy)
                // before the next one is accepted, which may close the one idle the longest.
                tokio::task::yield_now().await;
            }
        }
    }
    drop(listener);
    on_drain();
    let _ = draining_tx.send(true);
    let open = connections.len();
    if open > 0 {
        tracing::info!(
            "finishing {} call(s) on {open} connection(s)",
            server_calls.taken()
        );
    }
    let all_closed = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(options.shutdown_timeout, all_closed)
        .await
        .is_err()
    {
        tracing::warn!(
            "--shutdown-timeout ({:?}) passed: ending the calls of {} connection(s) with UNAVAILABLE",
            options.shutdown_timeout,
            connections.len()
        );
        deadline_passed.cancel();
        let all_closed = async { while connections.join_next().await.is_some() {} };
        if tokio::time::timeout(FINAL_GRACE, all_closed).await.is_err() {
            tracing::warn!(
                "dropping {} connection(s) that did not close",
                connections.len()
            );
            connections.shutdown().await;
        }
    }
}

type Connection =
    hyper::server::conn::http2::Connection<TokioIo<HandshakeGuard>, Tracked<Hyper>, StreamExecutor>;

/// Share of `--max-connections` open from which a connection with no call for
/// [`IDLE_LIMIT`] is closed (see [`crate::idle`]).
const CROWDED_PERCENT: usize = 75;
/// Serves one connection: GOAWAY when draining starts (or closed, if the client never finished
/// its handshake), when it has been idle for [`IDLE_LIMIT`] while the listener is crowded, or
/// when its slot is taken for a new connection ([`crate::evict`]); its calls ended when the
/// deadline passes.
#[allow(clippy::too_many_arguments)]
async fn connection(
    conn: Connection,
    activity: Arc<Activity>,
    crowded: impl Fn() -> bool,
    peer: std::net::SocketAddr,
    greeted: Arc<AtomicBool>,
    flooded: Arc<OnceLock<Flood>>,
    mut draining: watch::Receiver<bool>,
    deadline_passed: CancellationToken,
    stop: Stop,
) {
    tokio::pin!(conn);
    let mut graceful = false;
    let mut stopped = false;
    let mut close_by: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    if let Some(flood) = flooded.get() {
                        report_flood(peer, *flood);
                    } else if too_many_unread_frames(&e) {
                        report_unread_frames(peer);
                    } else {
                        tracing::debug!("connection closed: {e}");
                    }
                }
                return;
            }
            _ = draining.wait_for(|d| *d), if !graceful => {
                // A client still in the handshake has no calls to finish.
                if !greeted.load(Ordering::Acquire) {
                    return;
                }
                graceful = true;
                conn.as_mut().graceful_shutdown();
            }
            () = activity.idle(IDLE_LIMIT, &crowded), if !graceful => {
                tracing::debug!("closing a connection from {peer}: no call for {IDLE_LIMIT:?} and the listener is crowded");
                graceful = true;
                close_by = Some(tokio::time::Instant::now() + CLOSE_GRACE);
                activity.goaway_sent();
                conn.as_mut().graceful_shutdown();
            }
            () = activity.evicted(), if !graceful => {
                if activity.hurried() {
                    return;
                }
                graceful = true;
                close_by = Some(tokio::time::Instant::now() + CLOSE_GRACE);
                activity.goaway_sent();
                conn.as_mut().graceful_shutdown();
            }
            () = activity.quiet_past(close_by.unwrap_or_else(tokio::time::Instant::now)), if close_by.is_some() => return,
            () = deadline_passed.cancelled(), if !stopped => {
                stopped = true;
                stop.fire();
            }
        }
    }
}

/// The HTTP/2 client preface (24 bytes) and one frame header (9): what a live client sends
/// first.
const HANDSHAKE_BYTES: usize = 24 + 9;

/// Whether a second has begun since `last` was last set (and sets it): for log lines that a
/// client could otherwise repeat without end.
pub(crate) fn once_a_second(last: &AtomicU64) -> bool {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    last.swap(now, Ordering::Relaxed) != now
}

/// The HTTP/2 client preface.
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What a client that opened with `first` (its first bytes, not HTTP/2's preface) spoke, and
/// what to do about it, for the log: a client configured for TLS, or one speaking HTTP/1 (curl
/// without `--http2-prior-knowledge`, a browser, a health probe), otherwise only sees the
/// connection close.
fn not_http2(first: &[u8]) -> String {
    if first.starts_with(&[0x16, 0x03]) {
        return "a TLS handshake, but this port serves gRPC without TLS (HTTP/2 in plain text): \
                connect with a plaintext (insecure) channel"
            .into();
    }
    let line = first
        .split(|&b| b == b'\r' || b == b'\n')
        .next()
        .unwrap_or(first);
    let method_len = line.iter().take_while(|b| b.is_ascii_uppercase()).count();
    if method_len > 0 && line.get(method_len) == Some(&b' ') {
        let shown = String::from_utf8_lossy(&line[..line.len().min(80)]);
        return format!(
            "an HTTP/1 request ({:?}), but gRPC needs HTTP/2: use a gRPC client, or curl \
             --http2-prior-knowledge",
            crate::error::log_escaped(&shown)
        );
    }
    "bytes that are not the HTTP/2 connection preface (gRPC needs HTTP/2, in plain text)".into()
}

/// Whether HTTP/2 itself closed the connection for holding too many small DATA frames that the
/// calls had not read yet (GOAWAY `ENHANCE_YOUR_CALM`): h2 guards its memory so against
/// floods of tiny frames, and hyper offers no setting for the limit. A client streaming small
/// messages one frame each, faster than its handler reads them, meets it too, and sees every
/// call of the connection fail with UNAVAILABLE; the log is the server's only word on why.
fn too_many_unread_frames(e: &hyper::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(h2) = err.downcast_ref::<h2::Error>() {
            return h2.is_go_away()
                && h2.is_library()
                && h2.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM);
        }
        source = err.source();
    }
    false
}

/// Logs, once a second at most, why a connection was closed by HTTP/2 for a flood of frames
/// (h2 says ENHANCE_YOUR_CALM for unread small frames, streams reset before they were
/// answered and CONTINUATION floods alike, and the error does not say which).
fn report_unread_frames(peer: std::net::SocketAddr) {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let why = "HTTP/2 closed it to guard the server's memory against a flood of frames, and its \
               calls fail with UNAVAILABLE. Most often the client sent more small DATA frames \
               than the about 2 000 a connection's calls may leave unread (small messages, one \
               frame each, faster than their handlers read them): send larger or fewer messages \
               per frame, spread streams over more connections, or make the handler read sooner. \
               A flood of streams reset before they were answered, or of header CONTINUATION \
               frames, ends the same way";
    if once_a_second(&LAST) {
        tracing::warn!("connection from {peer} closed (ENHANCE_YOUR_CALM): {why}");
    } else {
        tracing::debug!("connection from {peer} closed (ENHANCE_YOUR_CALM): {why}");
    }
}

/// Logs, once a second at most, that a connection was closed for a flood of idle frames.
fn report_flood(peer: std::net::SocketAddr, flood: Flood) {
    static LAST: AtomicU64 = AtomicU64::new(0);
    if once_a_second(&LAST) {
        tracing::warn!("connection from {peer} closed (GOAWAY ENHANCE_YOUR_CALM): {flood}");
    } else {
        tracing::debug!("connection from {peer} closed (GOAWAY ENHANCE_YOUR_CALM): {flood}");
    }
}

/// Logs, once a second at most (more at debug level: a flood must not flood the log), that a
/// client opened with something other than HTTP/2.
fn report_not_http2(peer: std::net::SocketAddr, first: &[u8]) {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let what = not_http2(first);
    if once_a_second(&LAST) {
        tracing::warn!("connection from {peer} closed: it sent {what}");
    } else {
        tracing::debug!("connection from {peer} closed: it sent {what}");
    }
}

/// A TCP stream that fails its reads with `TimedOut` if the client has not sent
/// [`HANDSHAKE_BYTES`] within the handshake timeout; after that it is the plain stream.
pub struct HandshakeGuard {
    io: TcpStream,
    received: usize,
    /// Bytes that count as a greeting ([`HANDSHAKE_BYTES`] unless set otherwise).
    needed: usize,
    timer: Option<Pin<Box<Sleep>>>,
    /// Set once the client has sent its preface and a frame header.
    pub greeted: Arc<AtomicBool>,
    /// The peer, to name in the log if its first bytes are not HTTP/2's preface (the gRPC
    /// port only); cleared once the preface is checked.
    check_preface: Option<std::net::SocketAddr>,
    /// The budget of idle frames (gRPC port only; see [`crate::floods`]).
    frames: Option<FrameBudget>,
    /// Set when the connection is closed for a flood of idle frames (h2 passes on the read
    /// error's kind and words only).
    pub flooded: Arc<OnceLock<Flood>>,
}

impl HandshakeGuard {
    pub fn new(io: TcpStream, timeout: Duration) -> Self {
        Self {
            io,
            received: 0,
            needed: HANDSHAKE_BYTES,
            timer: Some(Box::pin(tokio::time::sleep(timeout))),
            greeted: Arc::new(AtomicBool::new(false)),
            check_preface: None,
            frames: None,
            flooded: Arc::new(OnceLock::new()),
        }
    }

    /// Holds the client to a budget of frames that carry no call, and makes the connection's
    /// task yield now and then while it reads (see [`crate::floods`]).
    pub fn budgeting_frames(mut self) -> Self {
        self.frames = Some(FrameBudget::new());
        self
    }

    /// Logs what `peer` spoke if its first bytes are not HTTP/2's preface (see
    /// [`not_http2`]).
    pub fn reporting_other_protocols(mut self, peer: std::net::SocketAddr) -> Self {
        self.check_preface = Some(peer);
        self
    }

    /// Counts the client as greeted after `n` bytes (a protocol whose first message is
    /// shorter than HTTP/2's preface, such as an HTTP/1 request line).
    pub fn first_bytes(mut self, n: usize) -> Self {
        self.needed = n;
        self
    }
}

impl AsyncRead for HandshakeGuard {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let Some(frames) = &mut this.frames else {
            return this.poll_read_guarded(cx, buf);
        };
        if frames.should_yield() {
            // As `yield_now` does: woken after the thread's other tasks and the network had
            // their turn.
            let _ = std::pin::pin!(tokio::task::yield_now()).poll(cx);
            return Poll::Pending;
        }
        let before = buf.filled().len();
        let result = this.poll_read_guarded(cx, buf);
        let Some(frames) = &mut this.frames else {
            return result;
        };
        match result {
            Poll::Pending => frames.waiting(),
            Poll::Ready(Ok(())) => {
                if let Err(flood) = frames.received(&buf.filled()[before..]) {
                    let _ = this.flooded.set(flood);
                    if let Some(goaway) = frames.goaway() {
                        // Best effort: the connection closes either way.
                        let _ = this.io.try_write(&goaway);
                    }
                    return Poll::Ready(Err(io::Error::other(flood)));
                }
            }
            Poll::Ready(Err(_)) => {}
        }
        result
    }
}

impl HandshakeGuard {
    /// Reads, failing with `TimedOut` while the handshake is overdue.
    fn poll_read_guarded(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self;
        let Some(timer) = &mut this.timer else {
            return Pin::new(&mut this.io).poll_read(cx, buf);
        };
        if timer.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no HTTP/2 preface within the handshake timeout",
            )));
        }
        let before = buf.filled().len();
        let result = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = result {
            if let Some(peer) = this.check_preface {
                let new = &buf.filled()[before..];
                let at = this.received;
                let n = new.len().min(PREFACE.len().saturating_sub(at));
                if new[..n] != PREFACE[at..at + n] {
                    // hyper reads the preface's length first: what follows is peeked, to show
                    // a whole HTTP/1 request line.
                    let mut head = [0u8; 128];
                    let mut len = 0;
                    if at == 0 {
                        len = new.len().min(head.len());
                        head[..len].copy_from_slice(&new[..len]);
                        let mut rest = ReadBuf::new(&mut head[len..]);
                        if let Poll::Ready(Ok(_)) = this.io.poll_peek(cx, &mut rest) {
                            len += rest.filled().len();
                        }
                    }
                    report_not_http2(peer, &head[..len]);
                    this.check_preface = None;
                } else if at + n >= PREFACE.len() {
                    this.check_preface = None;
                }
            }
            this.received += buf.filled().len() - before;
            if this.received >= this.needed {
                this.timer = None;
                this.greeted.store(true, Ordering::Release);
            }
        }
        result
    }
}

impl AsyncWrite for HandshakeGuard {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.io).poll_write(cx, buf);
        if let (Poll::Ready(Ok(n)), Some(frames)) = (&result, &mut this.frames) {
            frames.sent(&buf[..*n]);
        }
        result
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        if let (Poll::Ready(Ok(n)), Some(frames)) = (&result, &mut this.frames) {
            let mut left = *n;
            for b in bufs {
                let take = left.min(b.len());
                frames.sent(&b[..take]);
                left -= take;
                if left == 0 {
                    break;
                }
            }
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
