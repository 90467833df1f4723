//! The call journal: every call the server answered, with every message in order.
//!
//! Teams that use protoserve as the fake server of their client's tests want to assert on what
//! the client sent, stream frames included, and to see why a call got the answer it got. So
//! each call gets a [`CallRecord`] the moment it arrives (an open stream is visible while it
//! runs), and its frames are appended as they cross the codec ([`codec`]), its status when the
//! response ends ([`layer`]).
//!
//! Recording stays cheap because nothing is converted on the way: a message is kept as the
//! bytes that went over the wire (copied into the call's own arena, so a small message never
//! pins a large receive buffer; a full journal reuses its oldest record and arena, so
//! recording a unary call allocates nothing) and is turned into proto3 JSON only when someone
//! reads the journal ([`render`]).
//!
//! The journal is bounded in calls and in bytes; the oldest calls go first. A single call
//! larger than the byte budget keeps its first frames and counts the ones it dropped. Reading
//! ([`query`], [`verify`]) takes a snapshot of the records and never holds the journal's lock
//! while it decodes.

pub mod codec;
pub mod layer;
pub mod query;
pub mod render;
pub mod verify;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, Uri};

use crate::handler::{MethodInfo, Origin};

/// How much the journal keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JournalOptions {
    /// `--journal off` turns recording off entirely (no cost on the call path).
    pub enabled: bool,
    /// The most calls kept (`--journal-calls`).
    pub max_calls: usize,
    /// The most bytes kept, messages and metadata together (`--journal-bytes`).
    pub max_bytes: usize,
}

impl Default for JournalOptions {
    fn default() -> Self {
        Self {
            enabled: true,
            max_calls: 10_000,
            max_bytes: 64 * 1024 * 1024,
        }
    }
}

/// What a call costs in the byte budget besides its arena (the record itself).
const CALL_COST: usize = 256;
/// Room in a new call's arena beyond its path and headers: enough for a small unary call's
/// messages, response headers and trailers, so most calls never grow it.
const FIRST_ARENA: usize = 4 * block::HEADER + 192;
/// A call's arena.
type Arena = Vec<u8>;
/// The largest arena kept for reuse when its call leaves the journal.
const RECYCLE_ARENA: usize = 8 * 1024;

/// The journal of a server; clones share it.
#[derive(Clone)]
pub struct Journal(Arc<Inner>);

struct Inner {
    budget: Arc<Budget>,
    max_calls: usize,
    /// A wall-clock time and the instant it was read, to date calls from one clock read.
    epoch: (SystemTime, Instant),
    ring: Mutex<Ring>,
}

/// The byte count every record adds to, apart from the ring so records need not own it.
struct Budget {
    bytes: AtomicUsize,
    max_bytes: usize,
}

#[derive(Default)]
struct Ring {
    /// Oldest first; ids increase from front to back.
    calls: VecDeque<Tap>,
    /// Calls dropped to stay within the bounds, since the start or the last clear.
    evicted: u64,
    next_id: u64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Journal {
    pub fn new(options: JournalOptions) -> Self {
        Self(Arc::new(Inner {
            budget: Arc::new(Budget {
                bytes: AtomicUsize::new(0),
                max_bytes: options.max_bytes.max(1),
            }),
            max_calls: options.max_calls.max(1),
            epoch: (SystemTime::now(), Instant::now()),
            ring: Mutex::new(Ring {
                next_id: 1,
                ..Ring::default()
            }),
        }))
    }

    /// Starts the record of a call that just arrived: its path and request headers.
    ///
    /// A full journal drops its oldest call to make room, and reuses that call's record and
    /// arena when nothing else holds them: in the steady state recording allocates nothing,
    /// and the allocator is spared long-lived blocks freed in arrival order. Ids are given
    /// under the ring's lock, so the ring stays in id order.
    pub fn begin(&self, uri: &Uri, headers: &HeaderMap, peer: Option<SocketAddr>) -> Tap {
        let path = uri.path().as_bytes();
        let packed = packed_len(headers);
        let started = Instant::now();
        // One clock read: wall time follows from the journal's epoch.
        let started_at = self.0.epoch.0 + started.saturating_duration_since(self.0.epoch.1);
        let mut ring = lock(&self.0.ring);
        let id = ring.next_id;
        ring.next_id += 1;
        let oldest = if ring.calls.len() >= self.0.max_calls {
            ring.evicted += 1;
            ring.calls.pop_front()
        } else {
            None
        };
        let tap = match oldest.and_then(|old| self.recycle(old)) {
            Some(mut tap) => {
                if let Some(record) = Arc::get_mut(&mut tap.0) {
                    record.id = id;
                    record.peer = peer;
                    record.started_at = started_at;
                    record.started = started;
                    let log = record.log.get_mut().unwrap_or_else(|e| e.into_inner());
                    fill(&mut log.arena, path, headers, packed);
                    let grown = log.arena.capacity().saturating_sub(log.accounted);
                    if grown > 0 {
                        log.accounted += grown;
                        self.0.budget.bytes.fetch_add(grown, Ordering::Relaxed);
                    }
                }
                tap
            }
            None => {
                let mut arena = Arena::with_capacity(FIRST_ARENA + path.len() + packed);
                fill(&mut arena, path, headers, packed);
                let accounted = arena.capacity();
                self.0
                    .budget
                    .bytes
                    .fetch_add(CALL_COST + accounted, Ordering::Relaxed);
                Tap(Arc::new(CallRecord {
                    id,
                    peer,
                    started_at,
                    started,
                    fixed_cost: CALL_COST,
                    budget: self.0.budget.clone(),
                    journal: Arc::downgrade(&self.0),
                    log: Mutex::new(CallLog {
                        arena,
                        accounted,
                        ..CallLog::default()
                    }),
                }))
            }
        };
        ring.calls.push_back(tap.clone());
        if self.0.budget.bytes.load(Ordering::Relaxed) > self.0.budget.max_bytes {
            self.0.shrink(&mut ring, tap.id);
        }
        tap
    }

    /// The evicted record `old`, emptied for reuse, if nothing else holds it and its arena is
    /// of a reasonable size; otherwise it is forgotten and freed.
    fn recycle(&self, mut old: Tap) -> Option<Tap> {
        let reused = Arc::get_mut(&mut old.0).is_some_and(|record| {
            let log = record.log.get_mut().unwrap_or_else(|e| e.into_inner());
            if log.forgotten {
                return false;
            }
            if log.arena.capacity() > RECYCLE_ARENA {
                // A large call's arena is freed rather than kept for a small one.
                self.0
                    .budget
                    .bytes
                    .fetch_sub(log.accounted, Ordering::Relaxed);
                log.arena = Arena::new();
                log.accounted = 0;
            }
            log.arena.clear();
            log.timed = (false, false);
            log.method = None;
            log.handler = None;
            log.rules.clear();
            log.dropped = 0;
            log.end = None;
            true
        });
        if reused {
            Some(old)
        } else {
            old.forget();
            None
        }
    }

    /// Forgets every call; calls still running are no longer recorded. Answers how many calls
    /// were forgotten.
    pub fn clear(&self) -> usize {
        let mut ring = lock(&self.0.ring);
        let calls = std::mem::take(&mut ring.calls);
        ring.evicted = 0;
        drop(ring);
        let n = calls.len();
        for call in calls {
            call.forget();
        }
        n
    }

    /// The record with this id, if the journal still has it.
    pub fn get(&self, id: u64) -> Option<Tap> {
        let ring = lock(&self.0.ring);
        let i = ring.calls.partition_point(|c| c.id < id);
        ring.calls.get(i).filter(|c| c.id == id).cloned()
    }

    /// Up to `max` records after (or, `newest_first`, before) the id `from`, in that order;
    /// `from` 0 starts at the oldest (or newest) end. The lock is held only while the
    /// pointers are copied.
    pub fn chunk(&self, from: u64, newest_first: bool, max: usize) -> Vec<Tap> {
        let ring = lock(&self.0.ring);
        if newest_first {
            let end = if from == 0 {
                ring.calls.len()
            } else {
                ring.calls.partition_point(|c| c.id < from)
            };
            ring.calls.range(..end).rev().take(max).cloned().collect()
        } else {
            let start = ring.calls.partition_point(|c| c.id <= from);
            ring.calls.range(start..).take(max).cloned().collect()
        }
    }

    /// Counts for the admin API's status.
    pub fn stats(&self) -> JournalStats {
        let ring = lock(&self.0.ring);
        JournalStats {
            calls: ring.calls.len(),
            evicted: ring.evicted,
            bytes: self.0.budget.bytes.load(Ordering::Relaxed),
            max_calls: self.0.max_calls,
            max_bytes: self.0.budget.max_bytes,
        }
    }
}

/// How full the journal is.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct JournalStats {
    pub calls: usize,
    pub evicted: u64,
    pub bytes: usize,
    pub max_calls: usize,
    pub max_bytes: usize,
}

impl Inner {
    /// Drops the oldest calls (but not the call `keep`, which is growing right now) until the
    /// journal is within its byte budget.
    fn shrink(&self, ring: &mut Ring, keep: u64) {
        while self.budget.bytes.load(Ordering::Relaxed) > self.budget.max_bytes {
            let victim = match ring.calls.front() {
                Some(first) if first.id != keep => 0,
                Some(_) if ring.calls.len() > 1 => 1,
                _ => break,
            };
            if let Some(old) = ring.calls.remove(victim) {
                ring.evicted += 1;
                old.forget();
            }
        }
    }

    fn discard(&self, id: u64) {
        let mut ring = lock(&self.ring);
        // The record is most likely the newest.
        if let Some(i) = ring.calls.iter().rposition(|c| c.id == id) {
            if let Some(call) = ring.calls.remove(i) {
                call.forget();
            }
        }
    }
}

/// A handle on one call's record, passed along the call (request extensions, codec, handler).
#[derive(Clone)]
pub struct Tap(Arc<CallRecord>);

impl Deref for Tap {
    type Target = CallRecord;

    fn deref(&self) -> &CallRecord {
        &self.0
    }
}

/// Which way a message went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Request,
    Response,
}

/// One message of a call, as it went over the wire.
#[derive(Debug, Clone)]
pub struct Frame {
    pub direction: Direction,
    /// Time since the call started.
    pub at: Duration,
    pub bytes: Bytes,
}

/// How a call ended, as far as the journal saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The response ended with trailers (which carry the status).
    Trailers,
    /// The status came in the only header block (Trailers-Only).
    TrailersOnly,
    /// The response ended without any status.
    NoStatus,
    /// The response was dropped before it ended: the client cancelled or went away.
    Abandoned,
}

/// The handler that answered, as the router knew it when the call started.
#[derive(Debug, Clone)]
pub struct HandlerNote {
    pub kind: &'static str,
    pub origin: Origin,
}

/// Everything recorded about one call.
pub struct CallRecord {
    pub id: u64,
    pub peer: Option<SocketAddr>,
    pub started_at: SystemTime,
    pub started: Instant,
    fixed_cost: usize,
    budget: Arc<Budget>,
    journal: Weak<Inner>,
    log: Mutex<CallLog>,
}

/// The time of a block sent at the end of the call (a unary response): shown as the end.
const AT_END: u64 = u64::MAX;

/// The kinds of block in a record's arena.
mod block {
    pub const PATH: u8 = 0;
    pub const REQUEST_HEADERS: u8 = 1;
    pub const REQUEST: u8 = 2;
    pub const RESPONSE: u8 = 3;
    pub const RESPONSE_HEADERS: u8 = 4;
    pub const TRAILERS: u8 = 5;
    /// kind (1), microseconds since the call started (8), payload length (4).
    pub const HEADER: usize = 13;
}

/// The part of a record that grows while the call runs.
///
/// Everything with a size (the path, header blocks, messages) is appended to one byte arena, as
/// blocks of kind, time, length and payload: a unary call costs one allocation here, and
/// dropping an old call frees one. Readers parse the arena into a [`CallView`].
#[derive(Default)]
pub struct CallLog {
    arena: Arena,
    /// Bytes of arena capacity counted in the budget.
    accounted: usize,
    method: Option<Arc<MethodInfo>>,
    handler: Option<HandlerNote>,
    /// The rule index that answered each request, for `rules` handlers.
    rules: Vec<u32>,
    /// Frames not kept because the call alone exceeded the byte budget.
    dropped: u64,
    /// Whether request (`.0`) and response (`.1`) messages get their own times: only a
    /// streaming side does; a single request is read at the start, a single response goes out
    /// at the end, and the clock is not read for them.
    timed: (bool, bool),
    end: Option<(End, Duration)>,
    /// No longer in the journal: nothing more is recorded.
    forgotten: bool,
}

/// The blocks of an arena: (kind, time or `None` for the end of the call, payload).
fn blocks(
    arena: &[u8],
) -> impl Iterator<Item = (u8, Option<Duration>, std::ops::Range<usize>)> + '_ {
    let mut at = 0;
    std::iter::from_fn(move || {
        let head = arena.get(at..at + block::HEADER)?;
        let kind = head[0];
        let micros = u64::from_le_bytes(head[1..9].try_into().ok()?);
        let len = u32::from_le_bytes(head[9..13].try_into().ok()?) as usize;
        let start = at + block::HEADER;
        at = start + len;
        let time = (micros != AT_END).then(|| Duration::from_micros(micros));
        Some((kind, time, start..start + len))
    })
}

/// Starts an arena with the path and request headers blocks.
fn fill(arena: &mut Arena, path: &[u8], headers: &HeaderMap, packed: usize) {
    arena.reserve(2 * block::HEADER + path.len() + packed);
    arena.extend_from_slice(&block_header(block::PATH, 0, path.len()));
    arena.extend_from_slice(path);
    arena.extend_from_slice(&block_header(block::REQUEST_HEADERS, 0, packed));
    pack_headers(arena, headers);
}

/// A block's kind, time and length, as stored before its payload.
fn block_header(kind: u8, at: u64, len: usize) -> [u8; block::HEADER] {
    let mut head = [0u8; block::HEADER];
    head[0] = kind;
    head[1..9].copy_from_slice(&at.to_le_bytes());
    head[9..13].copy_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_le_bytes());
    head
}

/// Header block payload: for each entry, name length (2), value length (4), name, value.
/// Headers every gRPC call has with the same value, not worth keeping.
fn routine(name: &http::HeaderName) -> bool {
    name == http::header::TE || name == http::header::CONTENT_TYPE
}

fn packed_len(headers: &HeaderMap) -> usize {
    headers
        .iter()
        .filter(|(k, _)| !routine(k))
        .map(|(k, v)| 6 + k.as_str().len() + v.len())
        .sum()
}

fn pack_headers(arena: &mut Arena, headers: &HeaderMap) {
    for (k, v) in headers.iter().filter(|(k, _)| !routine(k)) {
        // Header names are far shorter than 64 KiB (hyper refuses longer ones).
        let name = k.as_str().as_bytes();
        let value = v.as_bytes();
        let mut head = [0u8; 6];
        head[..2].copy_from_slice(&(name.len() as u16).to_le_bytes());
        head[2..].copy_from_slice(&(value.len() as u32).to_le_bytes());
        arena.extend_from_slice(&head);
        arena.extend_from_slice(name);
        arena.extend_from_slice(value);
    }
}

fn unpack_headers(payload: &[u8]) -> HeaderMap {
    let mut out = HeaderMap::new();
    let mut at = 0;
    while let Some(head) = payload.get(at..at + 6) {
        let name_len = u16::from_le_bytes([head[0], head[1]]) as usize;
        let value_len = u32::from_le_bytes([head[2], head[3], head[4], head[5]]) as usize;
        let name = payload.get(at + 6..at + 6 + name_len);
        let value = payload.get(at + 6 + name_len..at + 6 + name_len + value_len);
        at += 6 + name_len + value_len;
        let (Some(name), Some(value)) = (name, value) else {
            break;
        };
        if let (Ok(k), Ok(v)) = (
            http::HeaderName::from_bytes(name),
            http::HeaderValue::from_bytes(value),
        ) {
            out.append(k, v);
        }
    }
    out
}

/// A header's values in a packed block, without unpacking it.
fn packed_values<'a>(payload: &'a [u8], name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
    let mut at = 0;
    std::iter::from_fn(move || loop {
        let head = payload.get(at..at + 6)?;
        let name_len = u16::from_le_bytes([head[0], head[1]]) as usize;
        let value_len = u32::from_le_bytes([head[2], head[3], head[4], head[5]]) as usize;
        let key = payload.get(at + 6..at + 6 + name_len)?;
        let value = payload.get(at + 6 + name_len..at + 6 + name_len + value_len)?;
        at += 6 + name_len + value_len;
        if key == name.as_bytes() {
            return Some(value);
        }
    })
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl CallLog {
    fn block(&self, kind: u8) -> Option<&[u8]> {
        blocks(&self.arena)
            .find(|(k, _, _)| *k == kind)
            .map(|(_, _, r)| &self.arena[r])
    }

    /// The method: `package.Service/Method` once the router found it, else the request path
    /// without its leading `/`.
    pub fn method_name(&self) -> &str {
        match &self.method {
            Some(info) => &info.name,
            None => std::str::from_utf8(self.block(block::PATH).unwrap_or_default())
                .unwrap_or_default()
                .trim_start_matches('/'),
        }
    }

    /// The final status (code, message), or `None` while the call runs.
    pub fn status(&self) -> Option<(i32, String)> {
        let (end, _) = self.end?;
        let trailers = || unpack_headers(self.block(block::TRAILERS).unwrap_or_default());
        Some(match end {
            End::Trailers | End::TrailersOnly => match tonic::Status::from_header_map(&trailers())
            {
                Some(s) => (s.code() as i32, s.message().to_owned()),
                None => no_status(),
            },
            End::NoStatus => no_status(),
            End::Abandoned => (
                tonic::Code::Cancelled as i32,
                "the call ended before its status was sent: the client cancelled it or the connection closed".into(),
            ),
        })
    }

    pub fn is_done(&self) -> bool {
        self.end.is_some()
    }

    /// True when the request carried metadata `name` with exactly `value`.
    pub fn has_metadata(&self, name: &str, value: &[u8]) -> bool {
        self.block(block::REQUEST_HEADERS)
            .is_some_and(|h| packed_values(h, name).any(|v| v == value))
    }
}

fn no_status() -> (i32, String) {
    (
        tonic::Code::Unknown as i32,
        "the response ended without a grpc-status".into(),
    )
}

/// A copy of a record, parsed, for reading.
pub struct CallView {
    pub method: Option<Arc<MethodInfo>>,
    pub method_name: String,
    pub handler: Option<HandlerNote>,
    pub rules: Vec<u32>,
    pub dropped: u64,
    pub end: Option<(End, Duration)>,
    pub status: Option<(i32, String)>,
    /// The request headers as they arrived.
    pub metadata: HeaderMap,
    pub frames: Vec<Frame>,
    pub response_headers: Option<HeaderMap>,
    pub trailers: Option<HeaderMap>,
}

impl CallView {
    fn of(log: &CallLog) -> Self {
        let arena = Bytes::copy_from_slice(&log.arena);
        let mut view = CallView {
            method: log.method.clone(),
            method_name: log.method_name().to_owned(),
            handler: log.handler.clone(),
            rules: log.rules.clone(),
            dropped: log.dropped,
            end: log.end,
            status: log.status(),
            metadata: HeaderMap::new(),
            frames: Vec::new(),
            response_headers: None,
            trailers: None,
        };
        for (kind, at, range) in blocks(&arena) {
            let payload = &arena[range.clone()];
            match kind {
                block::REQUEST_HEADERS => view.metadata = unpack_headers(payload),
                block::RESPONSE_HEADERS => view.response_headers = Some(unpack_headers(payload)),
                block::TRAILERS => view.trailers = Some(unpack_headers(payload)),
                block::REQUEST | block::RESPONSE => view.frames.push(Frame {
                    direction: if kind == block::REQUEST {
                        Direction::Request
                    } else {
                        Direction::Response
                    },
                    at: at.unwrap_or_else(|| log.end.map_or(Duration::ZERO, |(_, d)| d)),
                    bytes: arena.slice(range),
                }),
                _ => {}
            }
        }
        view
    }
}

impl CallRecord {
    fn log(&self) -> MutexGuard<'_, CallLog> {
        lock(&self.log)
    }

    /// What was recorded so far, or `None` if the record left the journal.
    pub fn snapshot(&self) -> Option<CallView> {
        self.snapshot_if(|_| true)
    }

    /// What was recorded so far, if the record is still in the journal and `keep` accepts it
    /// (the test runs under the record's lock, and copies nothing).
    pub fn snapshot_if(&self, keep: impl FnOnce(&CallLog) -> bool) -> Option<CallView> {
        let log = self.log();
        (!log.forgotten && keep(&log)).then(|| CallView::of(&log))
    }

    /// Notes the method and its handler (the router, once it found the method).
    pub fn attach(&self, info: &Arc<MethodInfo>, kind: Option<&'static str>, origin: &Origin) {
        let mut log = self.log();
        log.timed = (info.shape.streams_input(), info.shape.streams_output());
        log.method = Some(info.clone());
        log.handler = kind.map(|kind| HandlerNote {
            kind,
            origin: origin.clone(),
        });
    }

    /// Notes the index of the rule that answered a request.
    pub fn note_rule(&self, rule: usize) {
        self.log()
            .rules
            .push(u32::try_from(rule).unwrap_or(u32::MAX));
    }

    /// Records a request message.
    pub fn request(&self, bytes: &[u8]) {
        self.push(block::REQUEST, bytes.len(), |arena| {
            arena.extend_from_slice(bytes)
        });
    }

    /// Records a response built as a message, encoding it into the record.
    pub fn response_message(&self, msg: &prost_reflect::DynamicMessage) {
        use prost::Message as _;
        self.push(block::RESPONSE, msg.encoded_len(), |arena| {
            msg.encode_raw(arena)
        });
    }

    /// Records a response message.
    pub fn response(&self, bytes: &[u8]) {
        self.push(block::RESPONSE, bytes.len(), |arena| {
            arena.extend_from_slice(bytes)
        });
    }

    /// Appends a block of `len` bytes that `write` fills, unless the call alone would pass the
    /// byte budget (then a message is counted as dropped), and gives back room in the journal
    /// if it is over budget. A header block ending the call (trailers) ends it with `end`.
    fn push(&self, kind: u8, len: usize, write: impl FnOnce(&mut Arena)) {
        self.push_ending(kind, len, None, write);
    }

    fn push_ending(&self, kind: u8, len: usize, end: Option<End>, write: impl FnOnce(&mut Arena)) {
        let over = {
            let mut log = self.log();
            if log.forgotten {
                return;
            }
            let at = match kind {
                block::REQUEST if log.timed.0 => micros(self.started.elapsed()),
                block::RESPONSE if log.timed.1 => micros(self.started.elapsed()),
                block::RESPONSE => AT_END,
                _ => 0,
            };
            if let Some(end) = end {
                if log.end.is_none() {
                    log.end = Some((end, self.started.elapsed()));
                }
            }
            let room = self.budget.max_bytes.saturating_sub(self.fixed_cost);
            let used = log.arena.len();
            let need = block::HEADER + len;
            if used + need > room {
                if kind == block::REQUEST || kind == block::RESPONSE {
                    log.dropped += 1;
                }
                return;
            }
            if log.arena.capacity() - used < need {
                // Grow as a Vec would, but never past what the call may hold.
                let want = (log.arena.capacity() * 2).max(used + need).min(room);
                log.arena.reserve_exact(want - used);
            }
            log.arena.extend_from_slice(&block_header(kind, at, len));
            write(&mut log.arena);
            let grown = log.arena.capacity().saturating_sub(log.accounted);
            log.accounted += grown;
            grown > 0
                && self.budget.bytes.fetch_add(grown, Ordering::Relaxed) + grown
                    > self.budget.max_bytes
        };
        if over {
            if let Some(journal) = self.journal.upgrade() {
                let mut ring = lock(&journal.ring);
                journal.shrink(&mut ring, self.id);
            }
        }
    }

    fn push_headers(&self, kind: u8, headers: &HeaderMap, end: Option<End>) {
        self.push_ending(kind, packed_len(headers), end, |arena| {
            pack_headers(arena, headers)
        });
    }

    /// Records the response headers; a header block that carries the status (Trailers-Only)
    /// ends the call, and the answer is true.
    pub fn response_head(&self, headers: &HeaderMap) -> bool {
        static GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");
        if headers.contains_key(&GRPC_STATUS) {
            self.push_headers(block::TRAILERS, headers, Some(End::TrailersOnly));
            true
        } else {
            // Most responses carry only the protocol's headers: nothing to keep.
            if headers.keys().any(|k| !routine(k)) {
                self.push_headers(block::RESPONSE_HEADERS, headers, None);
            }
            false
        }
    }

    /// Records the trailers, which end the call.
    pub fn trailers(&self, trailers: &HeaderMap) {
        self.push_headers(block::TRAILERS, trailers, Some(End::Trailers));
    }

    /// Records how the call ended, unless it already has.
    pub fn finish(&self, end: End) {
        let mut log = self.log();
        if log.end.is_none() {
            log.end = Some((end, self.started.elapsed()));
        }
    }

    /// Removes the record from the journal (calls the journal does not keep, such as
    /// reflection and health).
    pub fn discard(&self) {
        if let Some(journal) = self.journal.upgrade() {
            journal.discard(self.id);
        }
    }

    /// Marks the record as out of the journal and gives its bytes back to the budget.
    fn forget(&self) {
        let mut log = self.log();
        if log.forgotten {
            return;
        }
        log.forgotten = true;
        let freed = log.accounted + self.fixed_cost;
        log.accounted = 0;
        log.arena = Arena::new();
        self.budget.bytes.fetch_sub(freed, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn begin(j: &Journal) -> Tap {
        j.begin(&Uri::from_static("/p.S/M"), &HeaderMap::new(), None)
    }

    #[test]
    fn keeps_at_most_max_calls_oldest_first_out() {
        let j = Journal::new(JournalOptions {
            enabled: true,
            max_calls: 3,
            max_bytes: 1 << 20,
        });
        let ids: Vec<u64> = (0..5).map(|_| begin(&j).id).collect();
        let kept: Vec<u64> = j.chunk(0, false, 10).iter().map(|c| c.id).collect();
        assert_eq!(kept, ids[2..]);
        assert_eq!(j.stats().evicted, 2);
        assert!(j.get(ids[0]).is_none());
        assert_eq!(j.get(ids[4]).map(|c| c.id), Some(ids[4]));
    }

    #[test]
    fn byte_budget_evicts_old_calls_and_caps_a_single_call() {
        let budget = 64 * 1024;
        let j = Journal::new(JournalOptions {
            enabled: true,
            max_calls: 1000,
            max_bytes: budget,
        });
        let first = begin(&j);
        first.request(&[0u8; 20_000]);
        let second = begin(&j);
        second.request(&[0u8; 20_000]);
        let third = begin(&j);
        for _ in 0..10 {
            third.request(&[1u8; 10_000]);
        }
        assert!(j.stats().bytes <= budget, "{:?}", j.stats());
        // The two older calls made room; the big one kept its first frames only.
        assert!(j.get(first.id).is_none());
        assert!(j.get(second.id).is_none());
        let view = third.snapshot().unwrap();
        assert!(!view.frames.is_empty() && view.frames.len() < 10);
        assert_eq!(view.frames.len() as u64 + view.dropped, 10);
        // Forgetting gives every byte back.
        j.clear();
        assert_eq!(j.stats().bytes, 0);
        assert!(third.snapshot().is_none());
        third.request(&[0u8; 10]);
        assert_eq!(j.stats().bytes, 0);
    }

    #[test]
    fn a_full_journal_reuses_the_oldest_record_unless_someone_holds_it() {
        let j = Journal::new(JournalOptions {
            enabled: true,
            max_calls: 2,
            max_bytes: 1 << 20,
        });
        let first = begin(&j);
        first.request(b"first");
        first.finish(End::NoStatus);
        let first_id = first.id;
        drop(first);
        let held = begin(&j);
        let third = begin(&j);
        // The first record was reused for the third call, emptied.
        let view = third.snapshot().unwrap();
        assert!(view.frames.is_empty() && view.end.is_none());
        assert!(j.get(first_id).is_none());
        // A record still held by someone (a reader, a running call) is not reused.
        let fourth = begin(&j);
        assert!(held.snapshot().is_none(), "held is out of the journal");
        assert!(fourth.snapshot().is_some());
        let bytes = j.stats().bytes;
        j.clear();
        assert!(bytes > 0);
        assert_eq!(j.stats().bytes, 0);
    }

    #[test]
    fn chunks_page_both_ways() {
        let j = Journal::new(JournalOptions::default());
        let ids: Vec<u64> = (0..10).map(|_| begin(&j).id).collect();
        let page: Vec<u64> = j.chunk(ids[3], false, 3).iter().map(|c| c.id).collect();
        assert_eq!(page, ids[4..7]);
        let page: Vec<u64> = j.chunk(ids[3], true, 3).iter().map(|c| c.id).collect();
        assert_eq!(page, vec![ids[2], ids[1], ids[0]]);
        let page: Vec<u64> = j.chunk(0, true, 2).iter().map(|c| c.id).collect();
        assert_eq!(page, vec![ids[9], ids[8]]);
    }
}
