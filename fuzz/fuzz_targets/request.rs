//! Arbitrary request bytes through everything that reads them: the codec's decoder, the wire
//! reader, templates and the script decoder and encoder. The checks live in `checks.rs`, which
//! `tests/fuzz_checks.rs` also runs on every `cargo test`, so they keep compiling.

#![no_main]

mod checks;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(failure) = checks::check(data) {
        panic!("{failure}");
    }
});
