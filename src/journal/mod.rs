//! The call journal: every call the server answered, with every message in order.
//!
//! Teams that use protoserve as the fake server of their client's tests want to assert on what
//! the client sent, stream frames included, and to see why a call got the answer it got. So
//! each call gets a [`CallRecord`] the moment it arrives (an open stream is visible while it
//! runs), and its frames are appended as they cross the codec ([`codec`]), its status when the
//! response ends ([`layer`]).
//!
//! Recording stays cheap because nothing is converted on the way: a message is kept as the
//! bytes that went over the wire (copied, so a small message never pins a large receive
//! buffer) and is turned into proto3 JSON only when someone reads the journal ([`render`]).
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
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
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

/// What one frame costs in the byte budget besides its bytes (its slot, its timestamp).
const FRAME_COST: usize = 48;
/// What a call costs in the byte budget besides its frames and metadata.
const CALL_COST: usize = 512;

/// The journal of a server; clones share it.
#[derive(Clone)]
pub struct Journal(Arc<Inner>);

struct Inner {
    budget: Arc<Budget>,
    max_calls: usize,
    next_id: AtomicU64,
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
            next_id: AtomicU64::new(1),
            ring: Mutex::new(Ring::default()),
        }))
    }

    /// Starts the record of a call that just arrived.
    pub fn begin(&self, uri: &Uri, headers: &HeaderMap, peer: Option<SocketAddr>) -> Tap {
        let metadata_cost: usize = headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 16)
            .sum();
        let record = Arc::new(CallRecord {
            id: self.0.next_id.fetch_add(1, Ordering::Relaxed),
            uri: uri.clone(),
            peer,
            started_at: SystemTime::now(),
            started: Instant::now(),
            metadata: headers.clone(),
            fixed_cost: CALL_COST + metadata_cost,
            budget: self.0.budget.clone(),
            journal: Arc::downgrade(&self.0),
            log: Mutex::new(CallLog::default()),
        });
        let tap = Tap(record);
        let total = self
            .0
            .budget
            .bytes
            .fetch_add(tap.fixed_cost, Ordering::Relaxed)
            + tap.fixed_cost;
        let mut ring = lock(&self.0.ring);
        ring.calls.push_back(tap.clone());
        while ring.calls.len() > self.0.max_calls {
            if let Some(old) = ring.calls.pop_front() {
                ring.evicted += 1;
                old.forget();
            }
        }
        if total > self.0.budget.max_bytes {
            self.0.shrink(&mut ring, tap.id);
        }
        tap
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
#[derive(Debug, Clone)]
pub enum End {
    /// The response ended with trailers (which carry the status).
    Trailers(HeaderMap),
    /// The status came in the only header block (Trailers-Only).
    TrailersOnly(HeaderMap),
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
    pub uri: Uri,
    pub peer: Option<SocketAddr>,
    pub started_at: SystemTime,
    pub started: Instant,
    /// The request headers as they arrived.
    pub metadata: HeaderMap,
    fixed_cost: usize,
    budget: Arc<Budget>,
    journal: Weak<Inner>,
    log: Mutex<CallLog>,
}

/// The part of a record that grows while the call runs.
#[derive(Default, Clone)]
pub struct CallLog {
    pub method: Option<Arc<MethodInfo>>,
    pub handler: Option<HandlerNote>,
    /// The rule index that answered each request, for `rules` handlers.
    pub rules: Vec<u32>,
    pub frames: Vec<Frame>,
    /// Frames not kept because the call alone exceeded the byte budget.
    pub dropped: u64,
    pub response_headers: Option<HeaderMap>,
    pub end: Option<(End, Duration)>,
    /// Bytes of frames held, as counted in the budget.
    bytes: usize,
    /// No longer in the journal: nothing more is recorded.
    forgotten: bool,
}

impl CallLog {
    pub fn is_forgotten(&self) -> bool {
        self.forgotten
    }
}

impl CallRecord {
    fn log(&self) -> MutexGuard<'_, CallLog> {
        lock(&self.log)
    }

    /// A copy of what was recorded so far (frames share their bytes), for reading without
    /// holding the record.
    pub fn snapshot(&self) -> CallLog {
        self.log().clone()
    }

    /// A copy of what was recorded, if the record is still in the journal and `keep` accepts
    /// it (the test runs under the record's lock, and copies nothing).
    pub fn snapshot_if(&self, keep: impl FnOnce(&CallRecord, &CallLog) -> bool) -> Option<CallLog> {
        let log = self.log();
        (!log.forgotten && keep(self, &log)).then(|| log.clone())
    }

    /// The method being called: `package.Service/Method` once the router found it, else the
    /// request path without its leading `/`.
    pub fn method_str<'a>(&'a self, log: &'a CallLog) -> &'a str {
        match &log.method {
            Some(info) => &info.name,
            None => self.uri.path().trim_start_matches('/'),
        }
    }

    /// Notes the method and its handler (the router, once it found the method).
    pub fn attach(&self, info: &Arc<MethodInfo>, kind: Option<&'static str>, origin: &Origin) {
        let mut log = self.log();
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

    /// Records a request message; its bytes are copied, so the receive buffer they came in is
    /// not held.
    pub fn request(&self, bytes: &[u8]) {
        self.push(Direction::Request, Bytes::copy_from_slice(bytes));
    }

    /// Records a response message whose bytes nothing else holds on to.
    pub fn response(&self, bytes: Bytes) {
        self.push(Direction::Response, bytes);
    }

    /// Records a response message whose bytes may be a slice of something larger (an echoed
    /// request): they are copied.
    pub fn response_shared(&self, bytes: &[u8]) {
        self.push(Direction::Response, Bytes::copy_from_slice(bytes));
    }

    fn push(&self, direction: Direction, bytes: Bytes) {
        let cost = bytes.len() + FRAME_COST;
        let at = self.started.elapsed();
        let over = {
            let mut log = self.log();
            if log.forgotten {
                return;
            }
            if self.fixed_cost + log.bytes + cost > self.budget.max_bytes {
                log.dropped += 1;
                return;
            }
            log.bytes += cost;
            log.frames.push(Frame {
                direction,
                at,
                bytes,
            });
            self.budget.bytes.fetch_add(cost, Ordering::Relaxed) + cost > self.budget.max_bytes
        };
        if over {
            if let Some(journal) = self.journal.upgrade() {
                let mut ring = lock(&journal.ring);
                journal.shrink(&mut ring, self.id);
            }
        }
    }

    /// Records the response headers; a header block that carries the status ends the call.
    pub fn response_head(&self, headers: &HeaderMap) -> bool {
        let trailers_only = headers.contains_key("grpc-status");
        let mut log = self.log();
        if trailers_only {
            if log.end.is_none() {
                log.end = Some((End::TrailersOnly(headers.clone()), self.started.elapsed()));
            }
        } else {
            log.response_headers = Some(headers.clone());
        }
        trailers_only
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
        let freed = log.bytes + self.fixed_cost;
        log.bytes = 0;
        log.frames = Vec::new();
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
        let log = third.snapshot();
        assert!(!log.frames.is_empty() && log.frames.len() < 10);
        assert_eq!(log.frames.len() as u64 + log.dropped, 10);
        // Forgetting gives every byte back.
        j.clear();
        assert_eq!(j.stats().bytes, 0);
        third.request(&[0u8; 10]);
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
