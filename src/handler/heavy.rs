//! Where declarative handlers work on big requests: off the threads that drive the network.
//!
//! Answering a request costs time in proportion to its size, whatever the handler: checking
//! its bytes, decoding it, matching rules against it, rendering a template from it, encoding
//! an echo. For 4 MiB of empty fields that is seconds of CPU in a debug build and tens of
//! milliseconds in a release one. Done on a thread that drives the network, it held up every
//! call that thread serves, on every connection. So a request that may cost more than a few
//! hundred microseconds to answer is answered on tokio's blocking pool
//! ([`off_the_network_threads`]), one such request at a time, and calls with small requests
//! are answered meanwhile.
//!
//! The cost is judged from the request and what the handler does with it ([`Work`]):
//! decoding a message builds a value per field, so a decoded request is heavy from
//! [`HEAVY_REQUEST`] bytes. An `echo` or a reply read straight from the wire only checks the
//! bytes and reads a few fields, and its cost is in the fields, not the bytes: a 64 KiB blob is
//! one field, checked in microseconds, while 64 KiB of two-byte empty fields is 32 000 of them
//! and takes a millisecond. So such a request is checked in place for at most
//! [`IN_PLACE_STEPS`] fields ([`steps_in_place`]) and answered there if that sufficed; if not,
//! or from [`HEAVY_SCAN`] bytes, it goes off the network threads like a decoded one. The hop
//! to another thread and the wait for a turn cost more than checking a 64 KiB echo does.
//! Compressed request messages that may inflate big take the same turns
//! ([`crate::layers::inflate`]).

use tokio::sync::Semaphore;

use crate::error::CallError;

/// Requests of at least this many bytes are answered off the network threads when they are
/// decoded; below it the hop to another thread costs more than answering the common request.
/// Size is a rough measure of cost: the worst request below it, a template copying some
/// 3 000 tiny list items, took 3-12 ms in a release build on a busy two-core machine.
pub const HEAVY_REQUEST: usize = 16 * 1024;

/// Requests that are only read, never decoded, are answered off the network threads from this
/// many bytes, however few their fields: copying and checking text this long (UTF-8) takes
/// tens of microseconds.
pub const HEAVY_SCAN: usize = 256 * 1024;

/// Fields a request that is only read may take to check in place, nested fields included. A
/// field costs at worst a few hundred instructions (an empty nested message: looking its field
/// up, walking in and out), so this is some 150 microseconds in a release build.
pub const IN_PLACE_STEPS: usize = 4096;

/// What answering a request does with its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    /// The request is decoded into a message (rules, most templates, errors, streams).
    Decode,
    /// The request's bytes are read `passes` times over and never decoded: a check, then one
    /// pass per field a wire-read reply takes from it (an `echo` or a constant reply reads
    /// them once).
    Scan { passes: usize },
}

/// True when a request of `len` bytes, answered by `work`, is answered off the network
/// threads whatever it holds. A `Scan` request below it is checked in place first
/// ([`steps_in_place`]).
pub fn is_heavy(len: usize, work: Work) -> bool {
    match work {
        Work::Decode => len >= HEAVY_REQUEST,
        Work::Scan { .. } => len >= HEAVY_SCAN,
    }
}

/// Fields a request answered by reading it `passes` times may take to check in place: each
/// further pass reads every field again (a quick skip, no lookup), so fewer are allowed.
pub fn steps_in_place(passes: usize) -> usize {
    IN_PLACE_STEPS / passes.max(1)
}

/// Big requests answered (or compressed ones inflated) at once: one, so that the other core
/// stays with the network threads (on a machine with more, the rest are theirs too). The work
/// that holds a turn waits for nothing, so turns always come.
static HEAVY: Semaphore = Semaphore::const_new(1);

/// Runs `work` where it holds up no other call: on tokio's blocking pool, once this call's turn
/// comes.
///
/// The turn is awaited, not blocked on: calls queued behind a big request hold no thread. A
/// thread each, as blocking in place would take, lets a flood of big requests use up the
/// runtime's blocking pool, which the network threads need as well. The turn goes with the
/// work, so a call that goes away mid-answer still frees it only when the work ends: big
/// requests are never worked on two at a time.
pub async fn off_the_network_threads<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, CallError> + Send + 'static,
) -> Result<T, CallError> {
    // The semaphore is never closed, so the turn always comes.
    let turn = HEAVY.acquire().await.ok();
    let done = tokio::task::spawn_blocking(move || {
        let _turn = turn;
        work()
    });
    match done.await {
        Ok(result) => result,
        Err(e) => match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            // Only a runtime shutting down cancels blocking work.
            Err(_) => Err(CallError::ShuttingDown),
        },
    }
}
