//! The call journal: every call the server answered, with every message in order.
//!
//! Teams that use protoserve as the fake server of their client's tests want to assert on what
//! the client sent, stream frames included, and to see why a call got the answer it got. So
//! each call gets a record the moment it arrives (an open stream is visible while it runs), its
//! frames are appended as they cross the codec ([`codec`]), its status when the response ends
//! ([`layer`]).
//!
//! Recording stays cheap because nothing is converted on the way: a message is kept as the
//! bytes that went over the wire, in the running call's own buffer ([`record`], [`arena`]),
//! and is turned into proto3 JSON only when someone reads the journal ([`render`]). When the
//! call ends its bytes are copied once, end to end with the calls that ended before it, into the
//! journal's store ([`store`]) and the running record is freed: the journal's memory is written
//! as one sequential stream, and the memory a call works in is the memory the call before it
//! just freed. Writing each call into the scattered record of a call from 10 000 calls ago cost
//! a cache miss per line touched.
//!
//! The journal is bounded in calls and in bytes; the oldest calls go first. A single call
//! larger than the byte budget keeps its first frames and counts the ones it dropped. Reading
//! ([`query`], [`verify`]) takes copies of the calls a page at a time and never holds the
//! journal's lock while it decodes.

mod arena;
pub mod codec;
pub mod layer;
pub mod query;
mod record;
pub mod render;
mod store;
pub mod verify;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, Uri};

pub use arena::{CallView, LogRef};
pub use record::{CallRecord, Tap};

use crate::handler::Origin;
use arena::{Arena, Facts};

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

/// What an ended call costs in the byte budget besides its bytes (its place in the ring).
const DONE_COST: usize = std::mem::size_of::<Call>();
/// Room in a new call's buffer beyond its path and headers: enough for a small unary call's
/// messages, response headers and trailers, so most calls never grow it.
const FIRST_ARENA: usize = 4 * arena::block::SHORT + 160;

/// The journal of a server; clones share it.
#[derive(Clone)]
pub struct Journal(Arc<Inner>);

struct Inner {
    max_bytes: usize,
    max_calls: usize,
    /// Microseconds from the Unix epoch to `epoch`, read once: a call's wall-clock start
    /// follows from its `Instant`, with no second clock read.
    epoch_micros: u64,
    epoch: Instant,
    ring: Mutex<Ring>,
}

#[derive(Default)]
struct Ring {
    /// Oldest first; ids increase from front to back. Its capacity grows up to `max_calls`
    /// and no further, so once the journal is full a new call takes the slot of the call it
    /// evicts: the line just read, rather than a cold one.
    calls: VecDeque<Call>,
    /// Bytes counted against `--journal-bytes`. Every change happens under the ring's lock,
    /// so a call costs no shared atomic for it.
    bytes: usize,
    /// Calls dropped to stay within the bounds, since the start or the last clear.
    evicted: u64,
    next_id: u64,
    store: store::Store,
    /// Buffers of calls that ended, emptied, for the next calls to start with: the one freed
    /// last is still in cache, and taking it costs no allocation. At most `SPARE` of them, of
    /// at most `SPARE_BYTES` each, so they hold little memory outside the budget.
    spare: Vec<Arena>,
}

const SPARE: usize = 64;
const SPARE_BYTES: usize = 2048;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A call as the journal holds it, running or ended. Readers get copies (cheap: a running
/// call is a handle on its record, an ended one shares its bytes).
#[derive(Clone)]
pub struct Call {
    pub id: u64,
    /// Microseconds since the Unix epoch (a `SystemTime` is twice the size).
    started: u64,
    state: State,
}

#[derive(Clone)]
enum State {
    Running(Tap),
    Ended {
        facts: Facts,
        bytes: Bytes,
        place: store::Place,
    },
}

impl Call {
    /// When the call started, by the wall clock.
    pub fn started_at(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_micros(self.started)
    }

    /// What was recorded so far, or `None` if the call left the journal.
    pub fn snapshot(&self) -> Option<CallView> {
        self.snapshot_if(|_| true)
    }

    /// What was recorded so far, if the call is still in the journal and `keep` accepts it
    /// (the test looks at the record in place, and copies nothing).
    pub fn snapshot_if(&self, keep: impl FnOnce(&LogRef<'_>) -> bool) -> Option<CallView> {
        match &self.state {
            State::Running(tap) => {
                let log = tap.log();
                if log.closed && !log.gone {
                    // It ended since this copy was taken: read it where it went.
                    drop(log);
                    let ended = tap.journal.upgrade().map(Journal)?.get(self.id)?;
                    return match ended.state {
                        State::Ended { .. } => ended.snapshot_if(keep),
                        State::Running(_) => None,
                    };
                }
                log.snapshot_if(keep)
            }
            State::Ended { facts, bytes, .. } => {
                let log = LogRef {
                    arena: bytes,
                    facts,
                };
                keep(&log).then(|| CallView::of(&log, bytes.clone()))
            }
        }
    }

    /// Takes the call out of the journal: the bytes the budget gets back.
    fn leave(self, store: &mut store::Store) -> usize {
        match self.state {
            State::Running(tap) => tap.forget(),
            State::Ended { place, .. } => DONE_COST + store.release(place),
        }
    }
}

impl Journal {
    pub fn new(options: JournalOptions) -> Self {
        let since_unix = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        Self(Arc::new(Inner {
            max_bytes: options.max_bytes.max(1),
            max_calls: options.max_calls.max(1),
            epoch_micros: arena::micros(since_unix),
            epoch: Instant::now(),
            ring: Mutex::new(Ring {
                next_id: 1,
                ..Ring::default()
            }),
        }))
    }

    /// Starts the record of a call that just arrived: its path and request headers. Ids are
    /// given under the ring's lock, so the ring stays in id order.
    pub fn begin(&self, uri: &Uri, headers: &HeaderMap, peer: Option<SocketAddr>) -> Tap {
        let path = uri.path().as_bytes();
        let started = Instant::now();
        let mut ring = lock(&self.0.ring);
        let ring = &mut *ring;
        // Room for the usual headers (a user agent, a deadline, a few entries of metadata);
        // more grows the buffer.
        let mut bytes = ring.spare.pop().unwrap_or_default();
        bytes.reserve(FIRST_ARENA + path.len() + 48 * headers.len());
        arena::fill(&mut bytes, path, headers, peer);
        let accounted = bytes.capacity();
        let mut record = CallRecord {
            id: 0,
            started,
            max_bytes: self.0.max_bytes,
            journal: Arc::downgrade(&self.0),
            log: Mutex::new(record::CallLog {
                arena: bytes,
                accounted,
                ..record::CallLog::default()
            }),
        };
        let started_us = self.0.epoch_micros.saturating_add(arena::micros(
            started.saturating_duration_since(self.0.epoch),
        ));
        let id = ring.next_id;
        ring.next_id += 1;
        record.id = id;
        let tap = Tap(Arc::new(record));
        ring.bytes += record::CALL_COST + accounted;
        if ring.calls.len() >= self.0.max_calls {
            if let Some(oldest) = ring.calls.pop_front() {
                ring.evicted += 1;
                ring.bytes -= oldest.leave(&mut ring.store);
            }
        } else if ring.calls.len() == ring.calls.capacity() {
            let len = ring.calls.len();
            let want = (len * 2).max(64).min(self.0.max_calls);
            ring.calls.reserve_exact(want - len);
        }
        ring.calls.push_back(Call {
            id,
            started: started_us,
            state: State::Running(tap.clone()),
        });
        if ring.bytes > self.0.max_bytes {
            self.0.shrink(ring, id);
        }
        tap
    }

    /// Forgets every call; calls still running are no longer recorded. Answers how many calls
    /// were forgotten.
    pub fn clear(&self) -> usize {
        let mut ring = lock(&self.0.ring);
        let calls = std::mem::take(&mut ring.calls);
        ring.evicted = 0;
        let n = calls.len();
        let mut freed = ring.store.clear();
        for call in calls {
            freed += match call.state {
                State::Running(tap) => tap.forget(),
                State::Ended { place, .. } => DONE_COST + place.own().unwrap_or(0),
            };
        }
        ring.bytes -= freed;
        n
    }

    /// The call with this id, if the journal still has it.
    pub fn get(&self, id: u64) -> Option<Call> {
        let ring = lock(&self.0.ring);
        let i = ring.calls.partition_point(|c| c.id < id);
        ring.calls.get(i).filter(|c| c.id == id).cloned()
    }

    /// Up to `max` calls after (or, `newest_first`, before) the id `from`, in that order;
    /// `from` 0 starts at the oldest (or newest) end. The lock is held only while they are
    /// copied.
    pub fn chunk(&self, from: u64, newest_first: bool, max: usize) -> Vec<Call> {
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
            bytes: ring.bytes,
            max_calls: self.0.max_calls,
            max_bytes: self.0.max_bytes,
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

impl Ring {
    /// Where the call `id` is, looking first among the newest (where a call that just ended
    /// almost always is).
    fn position(&self, id: u64) -> Option<usize> {
        // Ids are consecutive unless calls were discarded or dropped out of order, so the
        // distance from the oldest id is almost always the place.
        let first = self.calls.front()?.id;
        let guess = usize::try_from(id.checked_sub(first)?).ok()?;
        if self.calls.get(guess).is_some_and(|c| c.id == id) {
            return Some(guess);
        }
        let i = self.calls.partition_point(|c| c.id < id);
        (self.calls.get(i)?.id == id).then_some(i)
    }
}

impl Inner {
    /// Drops the oldest calls (but not the call `keep`, which is growing right now) until the
    /// journal is within its byte budget.
    fn shrink(&self, ring: &mut Ring, keep: u64) {
        while ring.bytes > self.max_bytes {
            let victim = match ring.calls.front() {
                Some(first) if first.id != keep => 0,
                Some(_) if ring.calls.len() > 1 => 1,
                _ => break,
            };
            if let Some(old) = ring.calls.remove(victim) {
                ring.evicted += 1;
                ring.bytes -= old.leave(&mut ring.store);
            }
        }
    }

    fn discard(&self, id: u64) {
        let mut ring = lock(&self.ring);
        let ring = &mut *ring;
        if let Some(call) = ring.position(id).and_then(|i| ring.calls.remove(i)) {
            ring.bytes -= call.leave(&mut ring.store);
        }
    }

    /// Moves the ended call `record` into the store, unless it already left the journal.
    fn seal(&self, record: &CallRecord) {
        let mut ring = lock(&self.ring);
        let Some(i) = ring.position(record.id) else {
            return;
        };
        let mut log = record.log();
        if log.closed {
            return;
        }
        log.closed = true;
        // Readers holding the running record find the call here (see `Call::snapshot_if`).
        let (bytes, place, charged) = ring.store.keep(&mut log.arena);
        // The bytes are in the store now; the buffer need not wait for the record's last
        // handle (a handler may outlive its call), uncounted: it starts the next call.
        let mut spare = std::mem::take(&mut log.arena);
        if (1..=SPARE_BYTES).contains(&spare.capacity()) && ring.spare.len() < SPARE {
            spare.clear();
            ring.spare.push(spare);
        }
        let facts = std::mem::take(&mut log.facts);
        let was = log.accounted + record::CALL_COST;
        log.accounted = 0;
        drop(log);
        ring.calls[i].state = State::Ended {
            facts,
            bytes,
            place,
        };
        ring.bytes = ring.bytes + DONE_COST + charged - was;
        // A new segment may take the journal over its budget, with no call beginning after
        // this one to make room.
        if ring.bytes > self.max_bytes {
            self.shrink(&mut ring, record.id);
        }
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

/// Which method and handler answered a call: built once per method when its handler is set,
/// so recording it costs a call one reference count.
#[derive(Debug)]
pub struct Answerer {
    pub method: Arc<crate::handler::MethodInfo>,
    pub handler: Option<HandlerNote>,
}

/// The handler that answered, as the router knew it when the call started.
#[derive(Debug, Clone)]
pub struct HandlerNote {
    pub kind: &'static str,
    pub origin: Origin,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn begin(j: &Journal) -> Tap {
        j.begin(&Uri::from_static("/p.S/M"), &HeaderMap::new(), None)
    }

    /// A new call takes the ring slot of the call it evicts, reading it cold: a slot of two
    /// cache lines (176 bytes before) cost a miss more per call.
    #[test]
    fn a_ring_slot_fits_in_two_cache_lines() {
        assert!(
            std::mem::size_of::<Call>() <= 96,
            "{}",
            std::mem::size_of::<Call>()
        );
    }

    #[test]
    fn once_full_the_ring_reuses_the_slot_of_the_call_it_evicts() {
        let j = Journal::new(JournalOptions {
            enabled: true,
            max_calls: 100,
            max_bytes: 1 << 20,
        });
        for _ in 0..1000 {
            begin(&j);
        }
        assert_eq!(lock(&j.0.ring).calls.capacity(), 100);
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
        let held = j.get(third.id).unwrap();
        let view = held.snapshot().unwrap();
        assert!(!view.frames.is_empty() && view.frames.len() < 10);
        assert_eq!(view.frames.len() as u64 + view.dropped, 10);
        // Forgetting gives every byte back.
        j.clear();
        assert_eq!(j.stats().bytes, 0);
        assert!(held.snapshot().is_none());
        third.request(&[0u8; 10]);
        assert_eq!(j.stats().bytes, 0);
    }

    #[test]
    fn an_ended_call_moves_into_the_store_whole_and_records_nothing_more() {
        let j = Journal::new(JournalOptions {
            enabled: true,
            max_calls: 2,
            max_bytes: 1 << 20,
        });
        let first = begin(&j);
        let running = j.get(first.id).unwrap();
        first.request(b"first");
        first.response(b"answer");
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        first.trailers(&trailers);
        first.seal();
        // Nothing after the end is kept.
        first.request(b"late");
        for call in [j.get(first.id).unwrap(), running] {
            let view = call.snapshot().unwrap();
            assert_eq!(view.frames.len(), 2);
            assert_eq!(&view.frames[0].bytes[..], b"first");
            assert_eq!(&view.frames[1].bytes[..], b"answer");
            assert_eq!(view.status.as_ref().map(|s| s.0), Some(0));
            assert_eq!(view.method_name, "p.S/M");
        }
        // The ended call counts its place in the ring and the segment it opened, not its
        // running record.
        assert_eq!(j.stats().bytes, DONE_COST + store::SEGMENT);
        // A large call is moved rather than copied, and reads the same.
        let big = begin(&j);
        big.request(&vec![9u8; 64 * 1024]);
        big.finish(End::Abandoned, false);
        big.seal();
        let view = j.get(big.id).unwrap().snapshot().unwrap();
        assert_eq!(view.frames[0].bytes.len(), 64 * 1024);
        assert_eq!(
            view.status.map(|s| s.0),
            Some(tonic::Code::Cancelled as i32)
        );
        // Both leave; every byte comes back.
        begin(&j);
        begin(&j);
        assert_eq!(j.stats().evicted, 2);
        assert!(j.get(big.id).is_none());
        j.clear();
        assert_eq!(j.stats().bytes, 0);
        drop(first);
        drop(big);
        assert_eq!(j.stats().bytes, 0);
    }

    /// A small call ended: a request of `len` bytes, then the end.
    fn small_call(j: &Journal, len: usize) -> Tap {
        let t = begin(j);
        t.request(&vec![1u8; len]);
        t.finish(End::NoStatus, true);
        t.seal();
        t
    }

    #[test]
    fn sealing_a_call_keeps_the_journal_within_its_budget() {
        let budget = 64 * 1024;
        let j = Journal::new(JournalOptions {
            enabled: true,
            max_calls: 1000,
            max_bytes: budget,
        });
        // Five of these fill a segment; the fourth segment is opened by a seal, with no call
        // beginning after it to make room.
        for i in 0..40 {
            small_call(&j, 3000);
            assert!(
                j.stats().bytes <= budget,
                "after call {i} ended the journal stays over budget: {:?}",
                j.stats()
            );
        }
    }

    #[test]
    fn a_large_ended_call_is_charged_for_the_memory_it_keeps() {
        let j = Journal::new(JournalOptions {
            enabled: true,
            max_calls: 10,
            max_bytes: 1 << 20,
        });
        let t = begin(&j);
        for _ in 0..5 {
            t.request(&[1u8; 3000]);
        }
        let (len, held) = {
            let log = t.log();
            (log.arena.len(), log.arena.capacity())
        };
        assert!(len > store::SEGMENT / 4 && held > len, "{len} {held}");
        t.finish(End::NoStatus, true);
        t.seal();
        // The run is moved with its whole allocation, which stays in memory.
        assert!(
            j.stats().bytes >= DONE_COST + held,
            "{} bytes charged for an ended call holding {held} bytes",
            j.stats().bytes
        );
        j.clear();
        assert_eq!(j.stats().bytes, 0);
    }

    #[test]
    fn a_sealed_record_gives_its_buffer_back() {
        let j = Journal::new(JournalOptions::default());
        // The handle the router or a handler still holds after the call ended.
        let t = small_call(&j, 1000);
        assert!(j.stats().bytes > 0);
        assert_eq!(
            t.log().arena.capacity(),
            0,
            "the ended call's bytes were copied to the store, but its running buffer stays \
             allocated (and uncounted) while any handle lives"
        );
    }

    #[test]
    fn a_kept_request_keeps_the_rule_that_answered_it() {
        let budget = 64 * 1024;
        let room = budget - record::CALL_COST;
        // Requests that end the call's room at every byte around a rule block's size.
        for short in 0..24 {
            let j = Journal::new(JournalOptions {
                enabled: true,
                max_calls: 10,
                max_bytes: budget,
            });
            let t = begin(&j);
            let used = t.log().arena.len();
            t.request(&vec![0u8; room - used - arena::block::SHORT - short]);
            t.note_rule(7);
            let view = t.log().snapshot_if(|_| true).unwrap();
            assert!(
                view.frames.is_empty() || view.rules == [7],
                "{short} bytes short of the room: the request was kept, the rule that \
                 answered it lost, uncounted"
            );
        }
    }

    #[test]
    fn concurrent_calls_clears_discards_and_readers_give_every_byte_back() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let budget = 256 * 1024;
        let j = Journal::new(JournalOptions {
            enabled: true,
            max_calls: 50,
            max_bytes: budget,
        });
        let done = AtomicBool::new(false);
        std::thread::scope(|s| {
            let workers: Vec<_> = (0..4)
                .map(|w| {
                    let j = j.clone();
                    s.spawn(move || {
                        let mut open: Vec<Tap> = Vec::new();
                        for i in 0..1500usize {
                            let t = begin(&j);
                            t.request(&vec![1u8; [10, 3000, 5000, 70_000][(i + w) % 4]]);
                            if i % 11 == 0 {
                                t.discard();
                            }
                            open.push(t);
                            // Calls end out of order, several running at once.
                            if open.len() > 3 || i % 5 == 0 {
                                let t = open.remove(i.wrapping_mul(31) % open.len());
                                t.response(&[2u8; 100]);
                                t.finish(End::NoStatus, true);
                                t.seal();
                            }
                        }
                        for t in open {
                            t.finish(End::Abandoned, false);
                            t.seal();
                        }
                    })
                })
                .collect();
            s.spawn(|| {
                while !done.load(Ordering::Relaxed) {
                    j.clear();
                    std::thread::yield_now();
                }
            });
            s.spawn(|| {
                while !done.load(Ordering::Relaxed) {
                    for call in j.chunk(0, false, 1000) {
                        let _ = call.snapshot();
                    }
                    let bytes = j.stats().bytes;
                    assert!(bytes < 1 << 40, "the byte count wrapped: {bytes}");
                }
            });
            for w in workers {
                w.join().unwrap();
            }
            done.store(true, Ordering::Relaxed);
        });
        assert!(j.stats().bytes <= budget, "{:?}", j.stats());
        j.clear();
        assert_eq!(j.stats().bytes, 0);
    }

    #[test]
    fn an_emptied_segment_gives_room_to_a_large_call() {
        let budget = 64 * 1024;
        let j = Journal::new(JournalOptions {
            enabled: true,
            max_calls: 1000,
            max_bytes: budget,
        });
        // A small call opens a segment.
        small_call(&j, 10);
        // A call as large as the budget allows evicts it, and must find the room it left.
        let big = begin(&j);
        big.request(&vec![1u8; 60_000]);
        assert!(j.stats().bytes <= budget, "running: {:?}", j.stats());
        big.finish(End::NoStatus, true);
        big.seal();
        assert!(j.stats().bytes <= budget, "ended: {:?}", j.stats());
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
