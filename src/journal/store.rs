//! Where ended calls keep their bytes: packed one after another in shared segments.
//!
//! A journal of 10 000 calls is larger than a core's cache, so what recording costs is mostly
//! the cache misses of writing each call somewhere cold. Packing ended calls end to end makes
//! those writes one sequential stream the hardware prefetches, and the running call's own
//! buffer, freed as soon as it ends, is the next call's hot buffer. A segment is freed when the
//! last call in it leaves the journal (and no reader holds it).

use bytes::{Bytes, BytesMut};

/// The size of a segment; a call larger than a quarter of it gets its own.
const SEGMENT: usize = 32 * 1024;

#[derive(Default)]
pub struct Store {
    current: BytesMut,
}

impl Store {
    /// Keeps `run` (an ended call's bytes), answering the kept copy. A large run is moved
    /// rather than copied.
    pub fn keep(&mut self, run: &mut Vec<u8>) -> Bytes {
        if run.len() > SEGMENT / 4 {
            return Bytes::from(std::mem::take(run));
        }
        if self.current.capacity() < run.len() {
            self.current = BytesMut::with_capacity(SEGMENT);
        }
        self.current.extend_from_slice(run);
        self.current.split().freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_runs_share_a_segment_and_large_ones_move() {
        let mut store = Store::default();
        let a = store.keep(&mut b"first call".to_vec());
        let b = store.keep(&mut b"second".to_vec());
        assert_eq!(&a[..], b"first call");
        assert_eq!(&b[..], b"second");
        assert_eq!(a.as_ptr().wrapping_add(a.len()), b.as_ptr());
        let mut big = vec![7u8; SEGMENT];
        let at = big.as_ptr();
        let kept = store.keep(&mut big);
        assert_eq!(kept.as_ptr(), at);
        assert!(big.is_empty());
        // A run that does not fit what is left starts a new segment.
        for _ in 0..10 {
            let run = store.keep(&mut vec![1u8; SEGMENT / 4]);
            assert_eq!(run.len(), SEGMENT / 4);
        }
    }
}
