//! Plain-text search for a long needle, in steps that can be paid for and paused.
//!
//! `memmem` is linear only over a haystack a few times the needle's length: searching windows
//! of a fixed size repeats the needle's work in each, so a long needle was searched in one
//! window as long as four needles, in one go the hook could not pause (a 30 MB needle in a
//! 60 MB string held its state for a second and a half). A rolling hash (Rabin–Karp) reads
//! each byte of the needle and of the haystack once, keeps no table, and can stop anywhere:
//! it pays for every piece it reads. The hash is taken modulo the Mersenne prime 2^61 − 1 with
//! a base drawn for each search, so a script cannot build strings whose hashes collide (as it
//! can for any base modulo 2^64), and a match is confirmed byte by byte, paid for first.

use std::hash::BuildHasher;

use super::pattern::{Pace, Result};

/// Needles longer than this are searched by [`find`].
pub const LONG_NEEDLE: usize = 1 << 16;

/// Bytes read between two payments.
const PIECE: usize = 1 << 16;

const MODULUS: u64 = (1 << 61) - 1;

fn reduce(v: u64) -> u64 {
    let v = (v & MODULUS) + (v >> 61);
    if v >= MODULUS {
        v - MODULUS
    } else {
        v
    }
}

fn mul(a: u64, b: u64) -> u64 {
    let r = u128::from(a) * u128::from(b);
    reduce(((r as u64) & MODULUS) + (r >> 61) as u64)
}

fn add(a: u64, b: u64) -> u64 {
    reduce(a + b)
}

fn sub(a: u64, b: u64) -> u64 {
    if a >= b {
        a - b
    } else {
        a + MODULUS - b
    }
}

fn pow(mut b: u64, mut e: usize) -> u64 {
    let mut r = 1;
    while e > 0 {
        if e & 1 == 1 {
            r = mul(r, b);
        }
        b = mul(b, b);
        e >>= 1;
    }
    r
}

/// The hash of `bytes` after `h`, paying for each piece.
fn hash(mut h: u64, bytes: &[u8], base: u64, pace: &dyn Pace) -> Result<u64> {
    for piece in bytes.chunks(PIECE) {
        pace.pay(piece.len() as u64 / 8)?;
        for &c in piece {
            h = add(mul(h, base), u64::from(c));
        }
    }
    Ok(h)
}

/// Where `needle` (not empty, no longer than `hay`) first occurs in `hay`, paying one unit
/// per 8 bytes read (the needle, and the haystack up to the end of the match), as the
/// windowed search does.
pub fn find(hay: &[u8], needle: &[u8], pace: &dyn Pace) -> Result<Option<usize>> {
    let m = needle.len();
    debug_assert!(m > 0 && m <= hay.len());
    // Any base from 256 up: `RandomState` is seeded randomly for each process and thread.
    let base = std::collections::hash_map::RandomState::new().hash_one(m) % (MODULUS - 256) + 256;
    let want = hash(0, needle, base, pace)?;
    let mut h = hash(0, &hay[..m], base, pace)?;
    // What the byte leaving the window weighed in its hash.
    let top = pow(base, m - 1);
    let mut at = 0;
    loop {
        if h == want {
            pace.pay(m as u64 / 8)?;
            if &hay[at..at + m] == needle {
                pace.pay((at % PIECE) as u64 / 8)?;
                return Ok(Some(at));
            }
        }
        if at + m >= hay.len() {
            pace.pay((at % PIECE) as u64 / 8)?;
            return Ok(None);
        }
        let out = mul(u64::from(hay[at]), top);
        h = add(mul(sub(h, out), base), u64::from(hay[at + m]));
        at += 1;
        if at % PIECE == 0 {
            pace.pay(PIECE as u64 / 8)?;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::super::pattern::MatchError;
    use super::*;

    /// Counts what is paid; stops past `limit`.
    struct Meter {
        paid: Cell<u64>,
        limit: u64,
    }

    impl Pace for Meter {
        fn pay(&self, units: u64) -> Result<()> {
            self.paid.set(self.paid.get() + units);
            if self.paid.get() > self.limit {
                return Err(MatchError::Stopped(mlua::Error::runtime("budget")));
            }
            Ok(())
        }
    }

    fn meter() -> Meter {
        Meter {
            paid: Cell::new(0),
            limit: u64::MAX,
        }
    }

    #[test]
    fn finds_what_memmem_finds() {
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for round in 0..400 {
            // Few letters, so that needles occur, nearly occur and repeat.
            let letters = 1 + (next() % 3) as u8;
            let n = 1 + (next() % 300) as usize;
            let hay: Vec<u8> = (0..n)
                .map(|_| b'a' + (next() % u64::from(letters)) as u8)
                .collect();
            let m = 1 + (next() as usize % n);
            let needle: Vec<u8> = if next() % 2 == 0 {
                let at = next() as usize % (n - m + 1);
                hay[at..at + m].to_vec()
            } else {
                (0..m)
                    .map(|_| b'a' + (next() % u64::from(letters)) as u8)
                    .collect()
            };
            assert_eq!(
                find(&hay, &needle, &meter()).unwrap(),
                memchr::memmem::find(&hay, &needle),
                "round {round}: {needle:?} in {hay:?}"
            );
        }
    }

    #[test]
    fn a_long_needle_is_found_or_not_across_pieces() {
        let mut hay = vec![b'a'; 3 * PIECE + 17];
        let needle = [vec![b'a'; PIECE + 5], vec![b'b']].concat();
        assert_eq!(find(&hay, &needle, &meter()).unwrap(), None);
        let at = 2 * PIECE + 3;
        hay[at + PIECE + 5] = b'b';
        assert_eq!(find(&hay, &needle, &meter()).unwrap(), Some(at));
    }

    #[test]
    fn reading_is_paid_for_and_can_be_stopped() {
        let hay = vec![b'a'; 8 * PIECE];
        let needle = [vec![b'a'; 2 * PIECE], vec![b'b']].concat();
        let m = meter();
        assert_eq!(find(&hay, &needle, &m).unwrap(), None);
        // The needle, the first window and every byte rolled through, a unit per 8 bytes.
        let read = (needle.len() + hay.len()) as u64;
        assert!(
            m.paid.get() >= read / 8 - 4,
            "paid {} for {read} bytes",
            m.paid.get()
        );
        let stopping = Meter {
            paid: Cell::new(0),
            limit: read / 16,
        };
        assert!(matches!(
            find(&hay, &needle, &stopping),
            Err(MatchError::Stopped(_))
        ));
    }
}
