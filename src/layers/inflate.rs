//! Inflates gzip-compressed request messages where they hold up no other call.
//!
//! tonic inflates a compressed message inside its decoder, on whichever thread polls the
//! request stream: a thread that drives the network connections. A few KB of gzip that inflate
//! to `--max-message-size` (4 MiB) cost it 10-30 ms of CPU in a release build, and every call
//! that thread serves, on every connection, waited that long. So, for a call whose
//! `grpc-encoding` is `gzip` (the one encoding the server accepts), [`Inflate`] wraps the
//! request body in an [`Inflating`] body, which inflates each message with the compressed flag
//! itself and hands tonic the message uncompressed (flag 0); tonic then has nothing to inflate.
//!
//! - Where: a message of at most [`INLINE_INPUT`] compressed bytes is inflated in place until
//!   its output passes [`INLINE_OUTPUT`] (the common small message, which a hop to another
//!   thread would cost more than it saves); the rest of it, and every larger message, is
//!   inflated on tokio's blocking pool, taking turns with the big requests that declarative
//!   handlers answer there ([`heavy`]), so one core stays with the network threads. It is
//!   inflated a slice of work at a time ([`heavy::in_slices`], [`heavy::SLICE`]), giving the
//!   turn back in between, and the turns go round the connections: a client sending many
//!   messages that are slow to inflate (gzip of empty deflate blocks, seconds each) keeps a
//!   big request on another connection waiting for a slice of its work, not for all of it.
//! - Memory: inflation stops as soon as the output passes `--max-message-size`; one message of
//!   a call is in flight at a time (the body reads no further until tonic took the inflated
//!   one), so streaming calls keep their back-pressure; and the blocking pool works on one
//!   message at a time, for all calls together. Others wait their turn as compressed bytes,
//!   which hold room in the connection's buffers ([`Buffers`]) until inflated, as they did
//!   while they arrived: tonic inflated a message as soon as it was whole, so 256 calls waiting
//!   here with 4 MiB each would otherwise hold a gigabyte that no limit counts. A message
//!   paused between slices holds room for its output so far too; a connection has at most one
//!   such message (it keeps the head of its connection's line). A message that does not fit
//!   ends its call with RESOURCE_EXHAUSTED naming the limit.
//! - What clients see does not change: the answers are tonic's words for the same failures
//!   (RESOURCE_EXHAUSTED past the limit, INTERNAL for gzip that does not inflate, both mapped
//!   in `error.rs`), inflated with the same decoder and read sizes. Anything tonic refuses
//!   before inflating (a compressed length over the limit, an unknown flag, a request that
//!   ends inside a message) is handed to tonic as it came, to be refused as before. The
//!   `grpc-encoding` header stays: handlers and the journal see the request's headers as
//!   sent, tonic inflates only messages flagged compressed, and the response's compression
//!   depends on `grpc-accept-encoding` alone. (One trace of the move: a failed message now
//!   fails the request stream, as any failure of the body does, so a script that catches the
//!   error and reads on finds the stream ended, where tonic's decoder failed again.)
//! - A call that goes away (the client cancels, the deadline passes) stops its inflation: a
//!   message waiting for its turn is never inflated, and one being inflated stops within 8 KiB
//!   of output or [`FEED`] bytes of input, whichever comes first ([`Feed`]). The wait and the
//!   inflation are a task of their own, not driven by polling the body: a body kept but no
//!   longer polled (a script's request stream after its call ended) never holds up the turns
//!   of the calls behind it.

use std::future::Future;
use std::io::Read;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use flate2::read::MultiGzDecoder;
use http::{HeaderMap, Request};
use http_body::{Frame, SizeHint};
use tonic::body::Body;
use tonic::Status;
use tower::Service;

use crate::error::CallError;
use crate::handler::heavy;
use crate::journal::layer::CarryTap;
use crate::journal::Tap;
use crate::layers::buffers::{Buffers, Held};

/// Compressed messages of at most this many bytes start inflating in place. Their worst case
/// is gzip of little but block headers, whose inflation makes little output to stop it early:
/// a kilobyte of 142 flushed blocks took 0.2 ms in a release build (3 ms in a debug one),
/// where plain gzip of the same size takes microseconds. Larger messages go to the pool,
/// which may keep them waiting behind big requests: the bound keeps that for messages that
/// are worth it.
pub const INLINE_INPUT: usize = 1024;

/// Output inflated in place before the rest of a message moves to the blocking pool: the size
/// from which declarative handlers answer a request there ([`heavy::HEAVY_REQUEST`]).
pub const INLINE_OUTPUT: usize = heavy::HEAVY_REQUEST;

/// tonic's read size when it inflated (`std::io::copy`'s buffer): the same reads give the
/// same failure when gzip both passes the limit and goes bad.
const READ: usize = 8 * 1024;

/// The gRPC message prefix: compressed flag and length.
const PREFIX: usize = 5;

/// The most a message may inflate to, and the flag that sets it (named in the status of a
/// message that inflates past it).
#[derive(Clone, Copy, Debug)]
pub struct Limit {
    bytes: usize,
    flag: Option<&'static str>,
}

impl Limit {
    /// `bytes`, set by `flag` if any; at most what gRPC's message prefix can say (4 GiB less a
    /// byte).
    pub fn new(bytes: usize, flag: Option<&'static str>) -> Self {
        Self {
            bytes: bytes.min(u32::MAX as usize),
            flag,
        }
    }
}

/// Wraps the request body of gzip-compressed calls in an [`Inflating`] body; see the module
/// docs.
#[derive(Clone)]
pub struct Inflate<S> {
    inner: S,
    limit: Limit,
    buffers: Buffers,
}

impl<S> Inflate<S> {
    /// `max_message_size`: `--max-message-size`, the most a message may inflate to;
    /// `buffers`: the connection's, which compressed messages waiting for the blocking pool
    /// hold room in.
    pub fn new(inner: S, max_message_size: usize, buffers: Buffers) -> Self {
        let limit = Limit::new(max_message_size, Some("--max-message-size"));
        Self {
            inner,
            limit,
            buffers,
        }
    }

    /// The wrapped service.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }
}

impl<S: CarryTap> CarryTap for Inflate<S> {
    fn carry_tap(&mut self, tap: Tap) {
        self.inner.carry_tap(tap);
    }

    fn refused_before_routing(&mut self, path: &str) {
        self.inner.refused_before_routing(path);
    }
}

/// Whether the request's messages may be gzip-compressed: tonic's own test (other values are
/// left to tonic, which answers them as before).
fn gzip(headers: &HeaderMap) -> bool {
    headers
        .get("grpc-encoding")
        .is_some_and(|v| v.as_bytes() == b"gzip")
}

impl<S> Service<Request<Body>> for Inflate<S>
where
    S: Service<Request<Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> S::Future {
        self.inner
            .call(inflating(req, self.limit, Some(self.buffers.clone())))
    }
}

/// `req` with its body in an [`Inflating`] one if it is a gzip call (and as it is otherwise):
/// also for a service outside this stack (the admin API's gRPC front, which has no `buffers`).
pub fn inflating(req: Request<Body>, limit: Limit, buffers: Option<Buffers>) -> Request<Body> {
    if !gzip(req.headers()) {
        return req;
    }
    req.map(|body| Body::new(Inflating::new(body, limit, buffers)))
}

/// Compressed bytes the decoder reads at most at once (it reads on while a read inflates to
/// nothing): between two reads it may stop, for a call that went away or at the end of a
/// slice of work ([`heavy::SLICE`]). 1 KiB of the slowest gzip, empty deflate blocks, takes
/// one to a few milliseconds to inflate in a release build (4 MiB of it took 9.5 s on a busy
/// two-core machine).
const FEED: usize = 1024;

/// A compressed message as the gzip decoder reads it: [`FEED`] bytes at a time, none once
/// the call went away, and none past the end of the slice of work it is in. gzip can take long
/// to inflate to little: empty deflate blocks, ten bits each, inflate to nothing at some 1 ms
/// per KiB in a release build (4 s for a 4 MiB message, 100 s in a debug one), all inside one
/// read of the decoder, which reads on until it has output. Checking only between reads of
/// output, a call that went away kept the turn for all of that, and a slice of work could not
/// end; this way the decoder stops within [`FEED`] bytes of input.
struct Feed {
    compressed: Bytes,
    abandoned: Arc<AtomicBool>,
    /// When the current slice of work ends, if it does.
    slice_ends: Option<Instant>,
    /// Bytes read in the current slice: at least one read goes through in each, so that every
    /// slice makes progress.
    fed: usize,
    /// Set when a read refused to go on because the slice ended ([`Feed::pause`]).
    paused: bool,
}

impl Feed {
    /// The error that pauses the decoder at the end of a slice: `WouldBlock`, after which
    /// flate2's decoder reads on where it stopped (inside the gzip header too), where other
    /// errors end it.
    fn pause(&mut self) -> std::io::Error {
        self.paused = true;
        std::io::ErrorKind::WouldBlock.into()
    }

    /// Starts a slice of work that ends at `ends` (none: never).
    fn start_slice(&mut self, ends: Option<Instant>) {
        self.slice_ends = ends;
        self.fed = 0;
        self.paused = false;
    }

    /// Whether the current slice has ended.
    fn slice_over(&self) -> bool {
        self.slice_ends.is_some_and(|end| Instant::now() >= end)
    }
}

impl Read for Feed {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.abandoned.load(Ordering::Relaxed) {
            return Err(std::io::Error::other("the call went away"));
        }
        if self.fed > 0 && self.slice_over() {
            return Err(self.pause());
        }
        let n = buf.len().min(FEED).min(self.compressed.len());
        buf[..n].copy_from_slice(&self.compressed[..n]);
        self.compressed.advance(n);
        self.fed += n;
        Ok(n)
    }
}

/// One compressed message being inflated: the gzip decoder over its bytes and the output so
/// far, behind room for the uncompressed message's prefix.
struct Inflation {
    /// Every member of the gzip data, one after the other (RFC 1952 lets a gzip file be a
    /// series of members, and Go's and Java's readers take them all); bytes after the last
    /// that are no member fail.
    decoder: MultiGzDecoder<Feed>,
    out: BytesMut,
    limit: Limit,
    /// Set when the call went away (see [`Abandon`]).
    abandoned: Arc<AtomicBool>,
}

/// How far [`Inflation::run`] got.
#[derive(Debug, PartialEq, Eq)]
enum Progress {
    Done,
    /// The output reached the bound it was given, or the slice of work ended; more may
    /// follow.
    Paused,
    /// The call went away.
    Abandoned,
}

impl Inflation {
    fn new(compressed: Bytes, limit: Limit, abandoned: Arc<AtomicBool>) -> Self {
        // tonic's first guess, twice the compressed size, within the limit.
        let guess = compressed.len().saturating_mul(2).min(limit.bytes);
        let mut out = BytesMut::with_capacity(PREFIX + guess);
        out.extend_from_slice(&[0; PREFIX]);
        Self {
            decoder: MultiGzDecoder::new(Feed {
                compressed,
                abandoned: abandoned.clone(),
                slice_ends: None,
                fed: 0,
                paused: false,
            }),
            out,
            limit,
            abandoned,
        }
    }

    /// Bytes inflated so far.
    fn inflated(&self) -> usize {
        self.out.len() - PREFIX
    }

    /// Inflates until the message ends or its output reaches `until` bytes, `slice` passes
    /// (if given), or the call went away. Fails as tonic's decoder did: past the limit as soon
    /// as a read passes it, and on the first read that fails.
    fn run(&mut self, until: usize, slice: Option<Duration>) -> Result<Progress, CallError> {
        self.decoder
            .get_mut()
            .start_slice(slice.map(|d| Instant::now() + d));
        let mut chunk = [0u8; READ];
        loop {
            if self.abandoned.load(Ordering::Relaxed) {
                return Ok(Progress::Abandoned);
            }
            let n = match self.decoder.read(&mut chunk) {
                Ok(0) => return Ok(Progress::Done),
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) if self.abandoned.load(Ordering::Relaxed) => return Ok(Progress::Abandoned),
                Err(_) if self.decoder.get_ref().paused => return Ok(Progress::Paused),
                Err(e) => {
                    return Err(CallError::Inflate {
                        reason: e.to_string(),
                    })
                }
            };
            if n > self.limit.bytes - self.inflated() {
                return Err(CallError::InflatedTooLarge {
                    limit: self.limit.bytes,
                    flag: self.limit.flag,
                });
            }
            self.out.extend_from_slice(&chunk[..n]);
            if self.inflated() >= until || self.decoder.get_ref().slice_over() {
                return Ok(Progress::Paused);
            }
        }
    }

    /// The inflated message, framed uncompressed.
    fn framed(mut self) -> Bytes {
        // Within the limit, which [`Limit::new`] keeps within what the prefix can say.
        let len = u32::try_from(self.inflated()).unwrap_or(u32::MAX);
        self.out[0] = 0;
        self.out[1..PREFIX].copy_from_slice(&len.to_be_bytes());
        self.out.freeze()
    }
}

/// A message inflated on the blocking pool, a slice of work at a time ([`heavy::in_slices`]),
/// with the room it holds in the connection's buffers: its compressed bytes, and between
/// slices the output so far too, which waits for the next turn as the compressed bytes did for
/// the first.
struct Waiting {
    inflation: Inflation,
    held: Option<Held>,
    /// The compressed message's size.
    compressed: usize,
    /// Bytes `held` holds.
    counted: usize,
}

impl Waiting {
    /// One slice of the inflation; when it pauses, the output so far is held in the buffers
    /// (a message that does not fit fails as a waiting one does).
    fn slice(&mut self) -> Result<heavy::Sliced, CallError> {
        match self.inflation.run(usize::MAX, Some(heavy::SLICE))? {
            Progress::Paused => {
                let holding = self.compressed + self.inflation.inflated();
                if let Some(held) = &mut self.held {
                    held.grow(holding.saturating_sub(self.counted))?;
                }
                self.counted = self.counted.max(holding);
                Ok(heavy::Sliced::More)
            }
            Progress::Done | Progress::Abandoned => Ok(heavy::Sliced::Done),
        }
    }
}

/// Sets its flag and stops the job's task when dropped: the call's body went away, so the
/// message is no longer waited for (nor inflated), and one being inflated may stop.
struct Abandon {
    flag: Arc<AtomicBool>,
    task: tokio::task::AbortHandle,
}

impl Drop for Abandon {
    fn drop(&mut self) {
        self.flag.store(true, Ordering::Relaxed);
        self.task.abort();
    }
}

/// A message's inflation off the network threads, as a task of its own: it waits for its turn
/// and inflates whether or not the body is polled meanwhile. Whoever holds a body may stop
/// polling it without dropping it (a script's request stream lives until its state collects
/// it, after its call ended); had the body's poll driven the wait, the turn would have come to
/// a waiter nobody polls, and every big request on the server would have waited for it.
type Job = tokio::task::JoinHandle<Result<Bytes, CallError>>;

/// Where the body is in the request's gRPC framing.
enum State {
    /// At the start of a message's prefix.
    Between,
    /// Inside the prefix of an uncompressed message (passed on as it comes): bytes seen.
    PlainPrefix { prefix: [u8; PREFIX], seen: usize },
    /// Inside an uncompressed message's payload: bytes still to come, passed on as they come.
    Plain { left: usize },
    /// Inside the prefix of a compressed message, held back: bytes seen.
    CompressedPrefix { prefix: [u8; PREFIX], seen: usize },
    /// Inside a compressed message's payload, held back until it is whole.
    Compressed {
        prefix: [u8; PREFIX],
        payload: BytesMut,
        left: usize,
    },
    /// A compressed message being inflated on the blocking pool (or waiting for its turn).
    Inflating { job: Job, _abandon: Abandon },
    /// Passing the rest on as it comes: tonic refuses what it has seen.
    Through,
    /// Inflation failed and the failure was handed on; the body ends.
    Failed,
}

/// A gzip call's request body, its compressed messages inflated (see the module docs).
pub struct Inflating {
    inner: Body,
    limit: Limit,
    /// The connection's buffers: a whole compressed message held until the blocking pool
    /// inflates it holds room in them, as it did while it arrived.
    buffers: Option<Buffers>,
    /// Bytes of the inner body not yet looked at.
    unread: Bytes,
    state: State,
    /// The trailers (`Some(Some)`) or end (`Some(None)`) of the inner body, held while the
    /// incomplete message before it is handed on.
    end: Option<Option<Frame<Bytes>>>,
}

impl Inflating {
    pub fn new(inner: Body, limit: Limit, buffers: Option<Buffers>) -> Self {
        Self {
            inner,
            limit,
            buffers,
            unread: Bytes::new(),
            state: State::Between,
            end: None,
        }
    }

    /// Advances over the leading bytes of `unread` that pass on as they are (uncompressed
    /// messages, or everything once tonic will refuse the request); how many.
    fn plain_run(&mut self) -> usize {
        let data = &self.unread[..];
        let mut at = 0;
        while at < data.len() {
            match &mut self.state {
                State::Between => match data[at] {
                    0 => {
                        self.state = State::PlainPrefix {
                            prefix: [0; PREFIX],
                            seen: 1,
                        };
                        at += 1;
                    }
                    1 => break,
                    // An unknown flag, which tonic refuses.
                    _ => self.state = State::Through,
                },
                State::PlainPrefix { prefix, seen } => {
                    let n = (PREFIX - *seen).min(data.len() - at);
                    prefix[*seen..*seen + n].copy_from_slice(&data[at..at + n]);
                    *seen += n;
                    at += n;
                    if *seen == PREFIX {
                        let left = message_len(prefix);
                        self.state = if left == 0 {
                            State::Between
                        } else {
                            State::Plain { left }
                        };
                    }
                }
                State::Plain { left } => {
                    let n = (*left).min(data.len() - at);
                    *left -= n;
                    at += n;
                    if *left == 0 {
                        self.state = State::Between;
                    }
                }
                State::Through => at = data.len(),
                _ => break,
            }
        }
        at
    }

    /// Takes in the bytes of a compressed message at the start of `unread`; its payload, once
    /// whole.
    fn take_compressed(&mut self) -> Option<Bytes> {
        loop {
            if self.unread.is_empty() {
                return None;
            }
            match &mut self.state {
                State::Between => {
                    self.state = State::CompressedPrefix {
                        prefix: [0; PREFIX],
                        seen: 0,
                    }
                }
                State::CompressedPrefix { prefix, seen } => {
                    let n = (PREFIX - *seen).min(self.unread.len());
                    prefix[*seen..*seen + n].copy_from_slice(&self.unread[..n]);
                    self.unread.advance(n);
                    *seen += n;
                    if *seen < PREFIX {
                        return None;
                    }
                    let left = message_len(prefix);
                    if left > self.limit.bytes {
                        // tonic refuses the length before it inflates anything.
                        let prefix = Bytes::copy_from_slice(prefix);
                        self.state = State::Through;
                        self.unread = [prefix, std::mem::take(&mut self.unread)].concat().into();
                        return None;
                    }
                    if self.unread.len() >= left {
                        // The whole payload at hand: no copy.
                        self.state = State::Between;
                        return Some(self.unread.split_to(left));
                    }
                    self.state = State::Compressed {
                        prefix: *prefix,
                        payload: BytesMut::with_capacity(left),
                        left,
                    };
                }
                State::Compressed { payload, left, .. } => {
                    let n = (*left).min(self.unread.len());
                    payload.extend_from_slice(&self.unread[..n]);
                    self.unread.advance(n);
                    *left -= n;
                    if *left > 0 {
                        return None;
                    }
                    let payload = std::mem::take(payload).freeze();
                    self.state = State::Between;
                    return Some(payload);
                }
                _ => return None,
            }
        }
    }

    /// The bytes of an incomplete compressed message held back, for tonic to see as they came
    /// when the request ends; afterwards everything passes through.
    fn held_back(&mut self) -> Option<Bytes> {
        let held = match &mut self.state {
            State::CompressedPrefix { prefix, seen } if *seen > 0 => {
                Bytes::copy_from_slice(&prefix[..*seen])
            }
            State::Compressed {
                prefix, payload, ..
            } => {
                let mut held = BytesMut::with_capacity(PREFIX + payload.len());
                held.extend_from_slice(prefix);
                held.extend_from_slice(payload);
                held.freeze()
            }
            _ => return None,
        };
        self.state = State::Through;
        Some(held)
    }

    /// Inflates `payload`: in place when it is small and stays small, otherwise on the blocking
    /// pool (then `None`: the state is [`State::Inflating`]).
    fn inflate(&mut self, payload: Bytes) -> Option<Result<Bytes, CallError>> {
        let small = payload.len() <= INLINE_INPUT;
        let compressed = payload.len();
        let abandoned = Arc::new(AtomicBool::new(false));
        let mut inflation = Inflation::new(payload, self.limit, abandoned.clone());
        if small {
            match inflation.run(INLINE_OUTPUT, None) {
                Ok(Progress::Done) => return Some(Ok(inflation.framed())),
                Ok(_) => {}
                Err(e) => return Some(Err(e)),
            }
        }
        // Until it is inflated, the message holds the room it held while it arrived: calls
        // waiting for their turn hold their compressed messages, which the connection's and the
        // server's budgets bound like any message the server holds.
        let held = match self
            .buffers
            .as_ref()
            .map(|b| b.take(compressed))
            .transpose()
        {
            Ok(held) => held,
            Err(e) => return Some(Err(e)),
        };
        let lane = heavy::Lane::of(self.buffers.as_ref());
        let waiting = Waiting {
            inflation,
            held,
            compressed,
            counted: compressed,
        };
        let job = tokio::spawn(async move {
            let done = heavy::in_slices(&lane, waiting, Waiting::slice).await?;
            // Abandoned, the result is never looked at.
            Ok(done.inflation.framed())
        });
        self.state = State::Inflating {
            _abandon: Abandon {
                flag: abandoned,
                task: job.abort_handle(),
            },
            job,
        };
        None
    }

    /// A message inflated (or not): handed on, and the body goes on between messages (or ends).
    fn inflated(
        &mut self,
        result: Result<Bytes, CallError>,
    ) -> Option<Result<Frame<Bytes>, Status>> {
        match result {
            Ok(framed) => {
                self.state = State::Between;
                Some(Ok(Frame::data(framed)))
            }
            Err(e) => {
                self.state = State::Failed;
                Some(Err(e.into()))
            }
        }
    }
}

/// Units of tokio's cooperative budget (128 for each time a task is polled) that taking in
/// compressed bytes costs: a call whose messages arrive faster than they are inflated in place
/// yields its thread after 2 of them, where it went on for as long as its client sent them.
/// 1 KiB of empty fixed-Huffman deflate blocks (ten bits each, inflating to nothing) takes some
/// 0.5 ms to inflate in a release build, 8 ms in a debug one: two client streams of a few
/// thousand such messages kept quick calls on other connections waiting over a second in a
/// release build (a second with a hundred each in a debug one; 60 ms now).
const BUDGET_UNITS: usize = 64;

/// Takes [`BUDGET_UNITS`] of the task's cooperative budget; pending (the task yields, and is
/// woken at once) when it is spent.
fn take_turn_share(cx: &mut Context<'_>) -> Poll<()> {
    for _ in 0..BUDGET_UNITS {
        std::task::ready!(tokio::task::coop::poll_proceed(cx)).made_progress();
    }
    Poll::Ready(())
}

/// The payload length in a message prefix.
fn message_len(prefix: &[u8; PREFIX]) -> usize {
    u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize
}

impl http_body::Body for Inflating {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        loop {
            match &mut this.state {
                State::Inflating { job, .. } => {
                    let result = match std::task::ready!(Pin::new(job).poll(cx)) {
                        Ok(result) => result,
                        Err(e) => match e.try_into_panic() {
                            Ok(panic) => std::panic::resume_unwind(panic),
                            // Aborted only once the body is gone; else the runtime shuts down.
                            Err(_) => Err(CallError::ShuttingDown),
                        },
                    };
                    return Poll::Ready(this.inflated(result));
                }
                State::Failed => return Poll::Ready(None),
                _ => {}
            }
            if !this.unread.is_empty() {
                let plain = this.plain_run();
                if plain > 0 {
                    return Poll::Ready(Some(Ok(Frame::data(this.unread.split_to(plain)))));
                }
                std::task::ready!(take_turn_share(cx));
                if let Some(payload) = this.take_compressed() {
                    if let Some(result) = this.inflate(payload) {
                        return Poll::Ready(this.inflated(result));
                    }
                }
                continue;
            }
            if let Some(end) = this.end.take() {
                return Poll::Ready(end.map(Ok));
            }
            let frame = match std::task::ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => frame,
                // The request failed (or the client went away): tonic sees that as before.
                Some(Err(status)) => return Poll::Ready(Some(Err(status))),
                None => {
                    if let Some(held) = this.held_back() {
                        this.end = Some(None);
                        return Poll::Ready(Some(Ok(Frame::data(held))));
                    }
                    return Poll::Ready(None);
                }
            };
            match frame.into_data() {
                Ok(data) => this.unread = data,
                Err(trailers) => {
                    if let Some(held) = this.held_back() {
                        this.end = Some(Some(trailers));
                        return Poll::Ready(Some(Ok(Frame::data(held))));
                    }
                    return Poll::Ready(Some(Ok(trailers)));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self.state {
            State::Failed => true,
            State::Between | State::Plain { .. } | State::PlainPrefix { .. } | State::Through => {
                self.unread.is_empty() && self.end.is_none() && self.inner.is_end_stream()
            }
            _ => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use http_body_util::BodyExt;

    use super::*;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn frame(flag: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![flag];
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    /// The body `chunks` make, through [`Inflating`]: its bytes, or its failure.
    async fn through(chunks: Vec<Vec<u8>>, limit: usize) -> Result<Vec<u8>, Status> {
        let stream = futures_util::stream::iter(
            chunks
                .into_iter()
                .map(|c| Ok::<_, Status>(Frame::data(Bytes::from(c)))),
        );
        let body = Inflating::new(
            Body::new(http_body_util::StreamBody::new(stream)),
            Limit::new(limit, Some("--max-message-size")),
            None,
        );
        let mut body = std::pin::pin!(body);
        let mut out = Vec::new();
        while let Some(frame) = body.frame().await {
            out.extend_from_slice(frame?.data_ref().unwrap());
        }
        Ok(out)
    }

    #[tokio::test]
    async fn compressed_messages_come_out_framed_uncompressed_in_place_or_from_the_pool() {
        let small = b"hello".to_vec();
        let big: Vec<u8> = b"abc".repeat(50_000);
        let mut noisy = Vec::new();
        let mut x = 7u32;
        for _ in 0..5_000 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            noisy.push((x >> 24) as u8);
        }
        assert!(gzip(&noisy).len() > INLINE_INPUT);
        let sent = [
            frame(1, &gzip(&small)),
            frame(0, &small),
            frame(1, &gzip(&big)),
            frame(0, b""),
            frame(1, &gzip(&noisy)),
            frame(1, &gzip(b"")),
        ]
        .concat();
        let expected = [
            frame(0, &small),
            frame(0, &small),
            frame(0, &big),
            frame(0, b""),
            frame(0, &noisy),
            frame(0, b""),
        ]
        .concat();
        for size in [1, 2, 5, 6, 4096, sent.len()] {
            let chunks = sent.chunks(size).map(<[u8]>::to_vec).collect();
            assert_eq!(through(chunks, 1 << 20).await.unwrap(), expected, "{size}");
        }
    }

    #[tokio::test]
    async fn what_tonic_refuses_passes_as_it_came() {
        // A compressed length over the limit, an unknown flag, a message cut short.
        let long = frame(1, &[0; 100]);
        assert_eq!(through(vec![long.clone()], 50).await.unwrap(), long);
        let odd = [frame(2, b"xyz"), frame(1, &gzip(b"a"))].concat();
        assert_eq!(through(vec![odd.clone()], 50).await.unwrap(), odd);
        let cut = frame(1, &gzip(b"abc"))[..12].to_vec();
        assert_eq!(through(vec![cut.clone()], 50).await.unwrap(), cut);
    }

    #[tokio::test]
    async fn inflating_past_the_limit_or_bad_gzip_fails_with_tonics_words() {
        let over = frame(1, &gzip(&[b'a'; 101]));
        let e = through(vec![over], 100).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        assert!(
            e.message().starts_with(
                "Error decompressing: size limit, of 100 bytes, exceeded while decompressing"
            ),
            "{e:?}"
        );
        let exactly = frame(1, &gzip(&[b'a'; 100]));
        assert_eq!(
            through(vec![exactly], 100).await.unwrap(),
            frame(0, &[b'a'; 100])
        );
        // What tonic's decoder said: `std::io::copy` out of the same gzip decoder.
        for bad in [
            &b"not gzip"[..],
            b"not gzip either, and longer",
            &gzip(b"abc")[..15],
        ] {
            let said =
                std::io::copy(&mut flate2::read::GzDecoder::new(bad), &mut Vec::new()).unwrap_err();
            let e = through(vec![frame(1, bad)], 100).await.unwrap_err();
            assert_eq!(e.code(), tonic::Code::Internal);
            assert_eq!(
                e.message(),
                format!("Error decompressing: {said}, while sending request")
            );
        }
    }

    /// Inflates `gz` in slices that end at once: each goes one read of input further.
    fn sliced(gz: &[u8], limit: usize) -> (Result<Vec<u8>, CallError>, usize) {
        let abandoned = Arc::new(AtomicBool::new(false));
        let mut inflation = Inflation::new(
            Bytes::copy_from_slice(gz),
            Limit::new(limit, None),
            abandoned,
        );
        let mut slices = 0;
        loop {
            slices += 1;
            match inflation.run(usize::MAX, Some(Duration::ZERO)) {
                Ok(Progress::Paused) => continue,
                Ok(Progress::Done) => return (Ok(inflation.framed()[PREFIX..].to_vec()), slices),
                Ok(Progress::Abandoned) => unreachable!(),
                Err(e) => return (Err(e), slices),
            }
        }
    }

    #[test]
    fn a_sliced_inflation_goes_on_where_it_paused() {
        let mut text = Vec::new();
        for i in 0..20_000u32 {
            text.extend_from_slice(format!("{i} ").as_bytes());
        }
        let gz = gzip(&text);
        let (out, slices) = sliced(&gz, 1 << 20);
        assert_eq!(out.unwrap(), text);
        assert!(slices > gz.len() / FEED, "{slices} slices");
        // So is gzip of two members, paused in the second's header too.
        let (out, _) = sliced(&[&gz[..], &gz[..]].concat(), 1 << 20);
        assert_eq!(out.unwrap(), [&text[..], &text[..]].concat());
        // Bad gzip fails with the same words, however it was sliced.
        let mut bad = gz.clone();
        let at = bad.len() / 2;
        bad[at] ^= 0xff;
        let said = std::io::copy(&mut flate2::read::GzDecoder::new(&bad[..]), &mut Vec::new())
            .unwrap_err();
        match sliced(&bad, 1 << 20).0 {
            Err(CallError::Inflate { reason }) => assert_eq!(reason, said.to_string()),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn an_abandoned_inflation_stops() {
        let gz = Bytes::from(gzip(&[0; 1 << 20]));
        let abandoned = Arc::new(AtomicBool::new(false));
        let waiting = tokio::spawn(std::future::pending::<()>());
        drop(Abandon {
            flag: abandoned.clone(),
            task: waiting.abort_handle(),
        });
        assert!(
            waiting.await.unwrap_err().is_cancelled(),
            "the task stops too"
        );
        let mut inflation = Inflation::new(gz, Limit::new(1 << 21, None), abandoned);
        assert_eq!(
            inflation.run(usize::MAX, None).unwrap(),
            Progress::Abandoned
        );
        assert_eq!(inflation.inflated(), 0);
    }
}
