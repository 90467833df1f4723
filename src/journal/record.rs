//! The record of a running call, which the layer, the router and the codec append to.
//!
//! A record lives only as long as its call: when the call ends its bytes are sealed into the
//! journal's store and the record is freed by whoever drops the last handle, so the next call's
//! record is the same hot memory. A record that leaves the journal before its call ends (evicted
//! or cleared) stops recording and gives its bytes back to the budget.

use std::ops::Deref;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Instant;

use bytes::Bytes;
use http::HeaderMap;

use super::arena::{self, block, Arena, At, CallView, Facts, LogRef};
use super::{lock, Answerer, End, Inner};

/// What a running call costs in the byte budget besides its bytes (the record itself).
pub const CALL_COST: usize = 256;
/// The size of a rule block (a short header and the rule's index).
const RULE_BLOCK: usize = block::SHORT + 4;

/// A handle on one running call's record, passed along the call (the layer, the router, the
/// codec).
#[derive(Clone)]
pub struct Tap(pub(super) Arc<CallRecord>);

impl Deref for Tap {
    type Target = CallRecord;

    fn deref(&self) -> &CallRecord {
        &self.0
    }
}

/// Everything recorded about one running call.
pub struct CallRecord {
    pub id: u64,
    pub started: Instant,
    /// The journal's byte budget: one call never holds more.
    pub(super) max_bytes: usize,
    pub(super) journal: Weak<Inner>,
    pub(super) log: Mutex<CallLog>,
}

/// The part of a record that grows while the call runs.
#[derive(Default)]
pub struct CallLog {
    pub(super) arena: Arena,
    /// Bytes of arena capacity counted in the budget.
    pub(super) accounted: usize,
    pub(super) facts: Facts,
    /// Whether request (`.0`) and response (`.1`) messages get their own times: only a
    /// streaming side does; a single request is read at the start, a single response goes out
    /// at the end, and the clock is not read for them.
    pub(super) timed: (bool, bool),
    /// Nothing more is recorded: the call ended (its bytes and facts moved into the journal's
    /// store) or left the journal.
    pub(super) closed: bool,
    /// No longer in the journal (evicted or cleared): readers no longer see it.
    pub(super) gone: bool,
}

impl CallLog {
    pub(super) fn view(&self) -> LogRef<'_> {
        LogRef {
            arena: &self.arena,
            facts: &self.facts,
        }
    }

    /// A parsed copy, if the record is still in the journal and `keep` accepts it.
    pub(super) fn snapshot_if(&self, keep: impl FnOnce(&LogRef<'_>) -> bool) -> Option<CallView> {
        if self.gone {
            return None;
        }
        let log = self.view();
        if !keep(&log) {
            return None;
        }
        Some(CallView::of(&log, Bytes::copy_from_slice(&self.arena)))
    }
}

impl CallRecord {
    pub(super) fn log(&self) -> MutexGuard<'_, CallLog> {
        lock(&self.log)
    }

    /// Notes the method and its handler (the router, once it found the method).
    pub fn attach(&self, answerer: &Arc<Answerer>) {
        let shape = answerer.method.shape;
        let mut log = self.log();
        log.timed = (shape.streams_input(), shape.streams_output());
        log.facts.answerer = Some(answerer.clone());
    }

    /// Notes the index of the rule that answered a request.
    pub fn note_rule(&self, rule: usize) {
        let rule = u32::try_from(rule).unwrap_or(u32::MAX).to_le_bytes();
        self.push(block::RULE, rule.len(), None, |arena| {
            arena.extend_from_slice(&rule)
        });
    }

    /// Records a request message.
    pub fn request(&self, bytes: &[u8]) {
        self.push(block::REQUEST, bytes.len(), None, |arena| {
            arena.extend_from_slice(bytes)
        });
    }

    /// Records a response built as a message, encoding it into the record.
    pub fn response_message(&self, msg: &prost_reflect::DynamicMessage) {
        use prost::Message as _;
        self.push(block::RESPONSE, msg.encoded_len(), None, |arena| {
            msg.encode_raw(arena)
        });
    }

    /// Records a response message.
    pub fn response(&self, bytes: &[u8]) {
        self.push(block::RESPONSE, bytes.len(), None, |arena| {
            arena.extend_from_slice(bytes)
        });
    }

    /// Appends a block of `len` bytes that `write` fills, unless the call alone would pass the
    /// byte budget (then a message is counted as dropped), and gives back room in the journal
    /// if it is over budget. A header block ending the call (trailers) ends it with `end`.
    ///
    /// A block that fits the buffer takes only the record's lock. One that needs the buffer
    /// to grow takes the journal's lock first (the budget is counted under it), then the
    /// record's, in the order every other path takes them.
    fn push(&self, kind: u8, len: usize, end: Option<End>, write: impl FnOnce(&mut Arena)) {
        let at = {
            let mut log = self.log();
            if log.closed {
                return;
            }
            let at = at(&log, kind, self);
            if log.arena.capacity() - log.arena.len() >= arena::header_len(at) + len {
                self.append(&mut log, kind, at, len, end, write);
                return;
            }
            at
        };
        let Some(journal) = self.journal.upgrade() else {
            return;
        };
        let mut ring = lock(&journal.ring);
        let grown = {
            let mut log = self.log();
            if log.closed {
                return;
            }
            let before = log.arena.capacity();
            self.append(&mut log, kind, at, len, end, write);
            let grown = log.arena.capacity().saturating_sub(before);
            log.accounted += grown;
            grown
        };
        ring.bytes += grown;
        if ring.bytes > journal.max_bytes {
            journal.shrink(&mut ring, self.id);
        }
    }

    /// Appends a block to `log`, growing its buffer as needed but never past what one call may
    /// hold (then a message is counted as dropped instead).
    fn append(
        &self,
        log: &mut CallLog,
        kind: u8,
        at: At,
        len: usize,
        end: Option<End>,
        write: impl FnOnce(&mut Arena),
    ) {
        if let Some(end) = end {
            if log.facts.end.is_none() {
                log.facts.end = Some((end, self.elapsed()));
            }
            // Trailers follow the response headers.
            log.facts.answered |= end == End::Trailers;
        }
        let room = self.max_bytes.saturating_sub(CALL_COST);
        let used = log.arena.len();
        let need = arena::header_len(at) + len;
        // A request keeps room for the rule block that may answer it, so a kept request
        // never loses its rule.
        let after = if kind == block::REQUEST {
            RULE_BLOCK
        } else {
            0
        };
        if used + need + after > room {
            if kind == block::REQUEST || kind == block::RESPONSE {
                log.facts.dropped = log.facts.dropped.saturating_add(1);
            }
            return;
        }
        if log.arena.capacity() - used < need {
            // Grow as a Vec would, but never past what the call may hold.
            let want = (log.arena.capacity() * 2).max(used + need).min(room);
            log.arena.reserve_exact(want - used);
        }
        arena::put_block_header(&mut log.arena, kind, at, len);
        write(&mut log.arena);
    }

    fn push_headers(&self, kind: u8, headers: &HeaderMap, end: Option<End>) {
        self.push(kind, arena::packed_len(headers), end, |arena| {
            arena::pack_headers(arena, headers)
        });
    }

    /// Records the response headers; a header block that carries the status (Trailers-Only)
    /// ends the call, and the answer is true. That other headers went out is recorded when the
    /// call ends (see `finish`), so a call that answered costs no lock here.
    pub fn response_head(&self, headers: &HeaderMap) -> bool {
        // One pass over the few headers, comparing names rather than hashing one to look it up.
        let mut kept = false;
        for name in headers.keys() {
            if name.as_str() == "grpc-status" {
                self.push_headers(block::TRAILERS, headers, Some(End::TrailersOnly));
                return true;
            }
            // Most responses carry only the protocol's headers: nothing to keep.
            kept |= !arena::protocol_response_header(name);
        }
        if kept {
            self.push_headers(block::RESPONSE_HEADERS, headers, None);
        }
        false
    }

    /// Records the trailers, which end the call (after the response headers).
    pub fn trailers(&self, trailers: &HeaderMap) {
        self.push_headers(block::TRAILERS, trailers, Some(End::Trailers));
    }

    /// Records how the call ended, unless it already has, and whether response headers went
    /// out before it did.
    pub fn finish(&self, end: End, answered: bool) {
        let mut log = self.log();
        if log.facts.end.is_none() {
            log.facts.end = Some((end, self.elapsed()));
        }
        log.facts.answered |= answered;
    }

    /// Microseconds since the call started.
    fn elapsed(&self) -> u64 {
        arena::micros(self.started.elapsed())
    }

    /// Moves the ended call's bytes into the journal's store; nothing more is recorded.
    pub fn seal(&self) {
        if let Some(journal) = self.journal.upgrade() {
            journal.seal(self);
        }
    }

    /// Removes the record from the journal (calls the journal does not keep, such as
    /// reflection and health).
    pub fn discard(&self) {
        if let Some(journal) = self.journal.upgrade() {
            journal.discard(self.id);
        }
    }

    /// Marks the record as out of the journal: the bytes the budget gets back (the caller
    /// holds the journal's lock).
    pub(super) fn forget(&self) -> usize {
        let mut log = self.log();
        if log.gone {
            return 0;
        }
        log.gone = true;
        // A sealed record's cost moved to its ended call.
        let freed = log.accounted + if log.closed { 0 } else { CALL_COST };
        log.closed = true;
        log.accounted = 0;
        log.arena = Arena::new();
        freed
    }
}

/// When a block of `kind` happened: only a streaming side's messages read the clock.
fn at(log: &CallLog, kind: u8, record: &CallRecord) -> At {
    match kind {
        block::REQUEST if log.timed.0 => At::Micros(record.elapsed()),
        block::RESPONSE if log.timed.1 => At::Micros(record.elapsed()),
        block::RESPONSE => At::End,
        _ => At::Start,
    }
}
