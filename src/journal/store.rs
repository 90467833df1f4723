//! Where ended calls keep their bytes: packed one after another in shared segments.
//!
//! A journal of 10 000 calls is larger than a core's cache, so what recording costs is mostly
//! the cache misses of writing each call somewhere cold. Packing ended calls end to end makes
//! those writes one sequential stream the hardware prefetches, and the running call's own
//! buffer, freed as soon as it ends, is the next call's hot buffer.
//!
//! A segment's memory is freed only when every call in it has left the journal, so one call
//! can keep a whole segment alive. The budget therefore counts segments, not calls: a segment
//! is charged in full when it is started and released when its last call leaves, so however
//! the calls that end together are evicted, the journal's memory stays within its budget.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

/// The size of a segment; a call larger than a quarter of it gets its own.
pub const SEGMENT: usize = 16 * 1024;

/// Where an ended call's bytes are, for giving them back: in the segment with this number, or
/// (top bit set) in an allocation of its own of this many bytes (its capacity, not its
/// length). One word, as it sits in every ended call's slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Place(u64);

const OWN: u64 = 1 << 63;

impl Place {
    fn in_segment(n: u64) -> Self {
        Place(n & !OWN)
    }

    fn alone(len: usize) -> Self {
        Place(len as u64 | OWN)
    }

    /// The bytes of an allocation of its own, if the call has one.
    pub fn own(self) -> Option<usize> {
        (self.0 & OWN != 0).then_some((self.0 & !OWN) as usize)
    }

    /// The segment number, if the call is in a segment.
    fn segment(self) -> Option<u64> {
        (self.0 & OWN == 0).then_some(self.0)
    }
}

#[derive(Default)]
pub struct Store {
    current: BytesMut,
    /// Calls still in the journal per segment, oldest segment first, numbered from `first`.
    live: VecDeque<u32>,
    first: u64,
}

impl Store {
    /// Keeps `run` (an ended call's bytes): the kept copy, where it is, and the bytes newly
    /// charged to the budget (a new segment, or the run itself when it is moved). A large run
    /// is moved rather than copied.
    pub fn keep(&mut self, run: &mut Vec<u8>) -> (Bytes, Place, usize) {
        if run.len() > SEGMENT / 4 {
            // The whole allocation moves with it, room to grow included.
            let held = run.capacity();
            return (Bytes::from(std::mem::take(run)), Place::alone(held), held);
        }
        let mut charged = 0;
        // No segment open, or the open one was given back when its last call left.
        let closed = self.live.back().is_none_or(|n| *n == 0);
        if closed || self.current.capacity() < run.len() {
            self.current = BytesMut::with_capacity(SEGMENT);
            self.live.push_back(0);
            charged = SEGMENT;
            self.trim();
        }
        self.current.extend_from_slice(run);
        if let Some(n) = self.live.back_mut() {
            *n += 1;
        }
        let seg = self.first + self.live.len() as u64 - 1;
        (
            self.current.split().freeze(),
            Place::in_segment(seg),
            charged,
        )
    }

    /// A call kept at `place` left the journal: the bytes the budget gets back.
    pub fn release(&mut self, place: Place) -> usize {
        let Some(seg) = place.segment() else {
            return place.own().unwrap_or(0);
        };
        let Some(i) = seg.checked_sub(self.first).map(|i| i as usize) else {
            return 0;
        };
        let last = self.live.len().saturating_sub(1);
        let Some(n) = self.live.get_mut(i) else {
            return 0;
        };
        if *n == 0 {
            return 0;
        }
        *n -= 1;
        if *n > 0 {
            return 0;
        }
        if i == last {
            // The segment being filled goes too: a large call may need its room now. The
            // next call to end opens another.
            self.current = BytesMut::new();
        }
        self.trim();
        SEGMENT
    }

    /// Forgets every call: the bytes the budget gets back.
    pub fn clear(&mut self) -> usize {
        let charged = self.live.iter().filter(|n| **n > 0).count();
        self.first += self.live.len() as u64;
        self.live.clear();
        self.current = BytesMut::new();
        charged * SEGMENT
    }

    /// Drops the bookkeeping of empty segments at the old end.
    fn trim(&mut self) {
        while self.live.len() > 1 && self.live.front() == Some(&0) {
            self.live.pop_front();
            self.first += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_runs_share_a_segment_and_large_ones_move() {
        let mut store = Store::default();
        let (a, pa, charged) = store.keep(&mut b"first call".to_vec());
        assert_eq!(charged, SEGMENT);
        let (b, pb, charged) = store.keep(&mut b"second".to_vec());
        assert_eq!(charged, 0);
        assert_eq!(pa, pb);
        assert_eq!(&a[..], b"first call");
        assert_eq!(&b[..], b"second");
        assert_eq!(a.as_ptr().wrapping_add(a.len()), b.as_ptr());
        let mut big = vec![7u8; SEGMENT];
        let at = big.as_ptr();
        let (kept, place, charged) = store.keep(&mut big);
        assert_eq!(kept.as_ptr(), at);
        assert!(big.is_empty());
        assert_eq!((place, charged), (Place::alone(SEGMENT), SEGMENT));
        assert_eq!(store.release(place), SEGMENT);
    }

    #[test]
    fn a_segment_is_charged_until_its_last_call_leaves() {
        let mut store = Store::default();
        let mut charged = 0;
        let mut places = Vec::new();
        // Three segments' worth of quarter-segment runs.
        for _ in 0..12 {
            let (_, place, c) = store.keep(&mut vec![1u8; SEGMENT / 4]);
            charged += c;
            places.push(place);
        }
        assert_eq!(charged, 3 * SEGMENT);
        let mut back = 0;
        // Leaving out of order: the first segment comes back only with its last call.
        for place in [places[1], places[2], places[3]] {
            back += store.release(place);
        }
        assert_eq!(back, 0);
        back += store.release(places[0]);
        assert_eq!(back, SEGMENT);
        // The segment being filled is given back with its last call too.
        for place in &places[4..] {
            back += store.release(*place);
        }
        assert_eq!(back, 3 * SEGMENT);
        assert_eq!(store.release(places[11]), 0, "nothing is given twice");
        let (_, _, c) = store.keep(&mut vec![1u8; 10]);
        assert_eq!(c, SEGMENT, "the next call to end opens a new segment");
        assert_eq!(store.clear(), SEGMENT);
        assert_eq!(
            store.release(places[5]),
            0,
            "after a clear nothing is given twice"
        );
    }
}
