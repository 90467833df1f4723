//! The fuzz target's checks (`fuzz/fuzz_targets/checks.rs`: codec decoder, wire reader
//! against `DynamicMessage`, decoding memory against its estimate, templates from the wire
//! against the decoded message, the script decoder and encoder round trip) on every
//! `cargo test`, over a fixed, seeded set of inputs: messages generated from each request
//! type's descriptor (see `common/wire_gen.rs`), the same mutated, random bytes, and nesting at
//! the decoder's limit. The fuzz crate is outside this workspace; this test is what keeps the
//! code it runs compiling and passing.
//!
//! Including the checks installs their counting allocator in this test binary.

#[path = "../fuzz/fuzz_targets/checks.rs"]
mod checks;
#[path = "common/wire_gen.rs"]
mod wire_gen;

use checks::Verdict;
use proptest::prelude::Rng;
use proptest::test_runner::{RngAlgorithm, TestRng};
use wire_gen::{message, mutate, put_len, Tape};

/// Inputs of each sort: generated, generated then mutated, random bytes.
const PER_SORT: usize = 2000;

/// One input, `which` (the subject) then the request, as the fuzz target receives it.
fn input(which: usize, bytes: &[u8]) -> Vec<u8> {
    let mut data = vec![which as u8];
    data.extend_from_slice(bytes);
    data
}

/// Runs the checks on `data`; a failed check or a panic fails the test, naming the input.
fn run(data: &[u8]) -> Verdict {
    /// Names the input if the checks panic.
    struct Naming<'a>(&'a [u8]);
    impl Drop for Naming<'_> {
        fn drop(&mut self) {
            if std::thread::panicking() {
                eprintln!("the checks panicked on input {:02x?}", self.0);
            }
        }
    }
    let naming = Naming(data);
    let result = checks::check(data);
    drop(naming);
    result.unwrap_or_else(|e| panic!("{e}\ninput: {data:02x?}"))
}

/// The subject called `name`, as the input's first byte.
fn subject(name: &str) -> usize {
    checks::subjects()
        .iter()
        .position(|s| s.desc.full_name() == name)
        .unwrap_or_else(|| panic!("no subject {name}"))
}

#[test]
fn seeded_inputs_pass_the_fuzz_checks() {
    let subjects = checks::subjects();
    let mut rng = TestRng::from_seed(RngAlgorithm::ChaCha, &[7; 32]);
    // Per subject: inputs accepted, inputs refused.
    let mut seen = vec![(0usize, 0usize); subjects.len()];
    let mut count = |which: usize, verdict: Verdict| match verdict {
        Verdict::Accepted => seen[which].0 += 1,
        Verdict::Refused => seen[which].1 += 1,
        Verdict::Empty => panic!("every input names a subject"),
    };
    for i in 0..PER_SORT * 3 {
        let which = i % subjects.len();
        let bytes = if i % 3 == 2 {
            let mut bytes = vec![0; (rng.next_u32() % 64) as usize];
            rng.fill_bytes(&mut bytes);
            bytes
        } else {
            let tape: Vec<u64> = (0..rng.next_u32() % 300).map(|_| rng.next_u64()).collect();
            let mut t = Tape { t: &tape, i: 0 };
            let bytes = message(&subjects[which].desc, &mut t, 0);
            if i % 3 == 1 {
                mutate(bytes, &mut t)
            } else {
                bytes
            }
        };
        count(which, run(&input(which, &bytes)));
    }

    // Nesting right at the decoder's limit and one past it (wire3.Inner's `next` is field 3),
    // with a field or an unknown group at the bottom.
    let inner = subject("wire3.Inner");
    for bottom in [&[0x08, 1][..], &[0xd3, 0x05, 0xd4, 0x05]] {
        for depth in [99usize, 100, 101] {
            let mut body = bottom.to_vec();
            for _ in 0..depth {
                let mut outer = vec![0x1a];
                put_len(&mut outer, &body);
                body = outer;
            }
            count(inner, run(&input(inner, &body)));
        }
    }

    // Cases worth keeping whatever the generator does.
    let (all, legacy) = (subject("wire3.All"), subject("wire2.Legacy"));
    let cases: &[(usize, &[u8], Verdict)] = &[
        // A float holding a signalling NaN: a script's reply sends it back quiet.
        (all, &[0x5d, 0x01, 0x00, 0x80, 0xff], Verdict::Accepted),
        // a = "x", then n = 5: the oneof keeps n.
        (
            all,
            &[0x9a, 0x01, 1, b'x', 0xa0, 0x01, 5],
            Verdict::Accepted,
        ),
        // m = {x: 1}, n = 2, m = {label: "l"}: m was cleared, so m.x reads 0.
        (
            all,
            &[
                0xaa, 0x01, 2, 0x08, 1, 0xa0, 0x01, 2, 0xaa, 0x01, 3, 0x12, 1, b'l',
            ],
            Verdict::Accepted,
        ),
        // A packed list of one-byte varints: the decoded form is many times the bytes.
        (
            all,
            &[0xb2, 0x01, 8, 1, 1, 1, 1, 1, 1, 1, 1],
            Verdict::Accepted,
        ),
        // A string that is not UTF-8.
        (all, &[0x72, 1, 0xff], Verdict::Refused),
        // A proto2 group field and a member read through it; a well-formed extension.
        (
            legacy,
            &[0x1b, 0x22, 1, b'u', 0x28, 4, 0x1c, 0x08, 3],
            Verdict::Accepted,
        ),
        (
            legacy,
            &[0xa0, 0x06, 5, 0xaa, 0x06, 1, b'e'],
            Verdict::Accepted,
        ),
        // An extension with the wrong wire type.
        (legacy, &[0xa5, 0x06, 1, 2, 3, 4], Verdict::Refused),
    ];
    for (which, bytes, expected) in cases {
        assert_eq!(run(&input(*which, bytes)), *expected, "{bytes:02x?}");
    }
    assert_eq!(run(&[]), Verdict::Empty);

    // The checks past the verdict ran for every subject, and often.
    for (s, (accepted, refused)) in subjects.iter().zip(&seen) {
        eprintln!(
            "{}: {accepted} accepted, {refused} refused",
            s.desc.full_name()
        );
        assert!(
            *accepted >= 100 && *refused >= 100,
            "{}: {accepted} accepted, {refused} refused",
            s.desc.full_name()
        );
    }
}
