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
//!
//! Turns are fair between connections. Waiting for the turn in one line, first come first
//! served, a client that never cancels could keep it for everyone: one connection sending
//! twenty 4 MiB gzip messages of empty deflate blocks (seconds each in a release build, over
//! a minute in a debug one) made a big request on another connection wait for all twenty. So
//! each connection has a [`Lane`]: its calls wait there, first come first served, and only the
//! call at the head of each lane waits for the server's turn. A connection therefore has at
//! most one call in the server's line, which serves them in the order they came; a
//! connection with a hundred calls waiting gets one turn, then each other connection with
//! one waiting gets one, and so on round. How long one turn lasts is bounded too: a message
//! being inflated gives the turn back after a [`SLICE`] of work when another call waits for
//! it ([`in_slices`]) and queues for it again behind the other connections, keeping the head
//! of its own lane. A decoded request cannot be paused and is one turn, bounded by
//! `--max-message-size`.
//!
//! A paused inflation keeps the head of its lane rather than going to the back of it behind
//! the same connection's other messages: its output so far is held until the message is
//! handed on (and counted in the connection's buffers), so a connection has at most one
//! message part inflated at a time, where taking turns among its own calls would let each of
//! its hundreds of calls hold up to `--max-message-size` of output, and the budget refuse the
//! calls that held it. A connection's later calls wait for its own earlier ones, as they
//! waited for all the server's before.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, SemaphorePermit};

use crate::error::CallError;
use crate::layers::buffers::Buffers;

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
/// that holds a turn waits for nothing, so turns always come. Only the call at the head of a
/// [`Lane`] waits for it, so its waiters are served round the connections.
static HEAVY: Semaphore = Semaphore::const_new(1);

/// How long an inflation works in one turn before it gives the turn back to a call waiting for
/// it ([`in_slices`]): a big request on another connection waits for about this much of a
/// greedy connection's work (and a hop to another thread) rather than for all of it. The
/// inflation stops between reads of its input, a kilobyte at a time
/// ([`crate::layers::inflate`]), so a slice may run over by a kilobyte's work: a few
/// milliseconds at worst in a release build (empty deflate blocks). Time, not bytes: what a
/// byte of gzip costs ranges over three orders of magnitude (plain text inflates at hundreds
/// of MB/s, empty deflate blocks at about a MB/s in a release build), and a debug build is
/// another 10-50 times slower.
pub const SLICE: Duration = Duration::from_millis(2);

/// One connection's line for the server's turn (see the module docs): its calls wait here,
/// first come first served, and the call at its head waits for the turn.
#[derive(Clone, Debug)]
pub struct Lane(Arc<Semaphore>);

impl Lane {
    /// The lane of a new connection.
    pub fn new() -> Self {
        Self(Arc::new(Semaphore::new(1)))
    }

    /// The lane of `buffers`' connection; calls that come on no connection of the server's
    /// own (the admin API's gRPC front) share one.
    pub fn of(buffers: Option<&Buffers>) -> Lane {
        static UNCONNECTED: OnceLock<Lane> = OnceLock::new();
        match buffers {
            Some(b) => b.lane().clone(),
            None => UNCONNECTED.get_or_init(Lane::new).clone(),
        }
    }

    /// The head of the lane, once the calls ahead are done; the next call's when dropped.
    async fn head(&self) -> OwnedSemaphorePermit {
        // Never closed, so the head always comes.
        self.0
            .clone()
            .acquire_owned()
            .await
            .expect("a lane is never closed")
    }
}

impl Default for Lane {
    fn default() -> Self {
        Self::new()
    }
}

/// Calls waiting for the server's turn: while there are none, an inflation goes on with its
/// next slice in the same turn, so a message nobody waits behind costs no more hops to and
/// from the blocking pool than before it was sliced.
static WAITING: AtomicUsize = AtomicUsize::new(0);

/// Counts one call in [`WAITING`] while it lives.
struct Waiter;

impl Waiter {
    fn new() -> Self {
        WAITING.fetch_add(1, Ordering::AcqRel);
        Waiter
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        WAITING.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The server's turn, once this lane's head waited for it.
async fn turn() -> SemaphorePermit<'static> {
    let _waiting = Waiter::new();
    HEAVY.acquire().await.expect("the turn is never closed")
}

/// Runs `work` where it holds up no other call: on tokio's blocking pool, once this call's turn
/// comes (after the calls ahead of it in its connection's `lane`, and one turn of each other
/// connection's ahead of it in the server's line).
///
/// The turn is awaited, not blocked on: calls queued behind a big request hold no thread. A
/// thread each, as blocking in place would take, lets a flood of big requests use up the
/// runtime's blocking pool, which the network threads need as well. The turn goes with the
/// work, so a call that goes away mid-answer still frees it only when the work ends: big
/// requests are never worked on two at a time. A call that goes away while it waits leaves
/// both lines, and its work is never done.
pub async fn off_the_network_threads<T: Send + 'static>(
    lane: &Lane,
    work: impl FnOnce() -> Result<T, CallError> + Send + 'static,
) -> Result<T, CallError> {
    let head = lane.head().await;
    let turn = turn().await;
    blocking(move || {
        let _turns = (turn, head);
        work()
    })
    .await
}

/// Whether a slice of work finished the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sliced {
    Done,
    /// Paused: more slices to come.
    More,
}

/// Runs `slice` on `state` off the network threads until it says it is done (or fails); the
/// state then. Between slices the turn goes round the other connections, while this call
/// keeps the head of its own lane (see the module docs); while no other call waits for the
/// turn, the next slice follows in the same one.
pub async fn in_slices<S: Send + 'static>(
    lane: &Lane,
    mut state: S,
    slice: fn(&mut S) -> Result<Sliced, CallError>,
) -> Result<S, CallError> {
    let _head = lane.head().await;
    loop {
        let turn = turn().await;
        let (back, sliced) = blocking(move || {
            let _turn = turn;
            loop {
                let sliced = slice(&mut state);
                if !matches!(sliced, Ok(Sliced::More)) || WAITING.load(Ordering::Acquire) > 0 {
                    return Ok((state, sliced));
                }
            }
        })
        .await?;
        state = back;
        if sliced? == Sliced::Done {
            return Ok(state);
        }
    }
}

/// `work` on tokio's blocking pool; its panic goes on here.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, CallError> + Send + 'static,
) -> Result<T, CallError> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result,
        Err(e) => match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            // Only a runtime shutting down cancels blocking work.
            Err(_) => Err(CallError::ShuttingDown),
        },
    }
}
