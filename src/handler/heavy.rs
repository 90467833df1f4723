//! Where declarative handlers work on big requests: off the threads that drive the network.
//!
//! Answering a request costs time in proportion to its size, whatever the handler: checking
//! its bytes, decoding it, matching rules against it, rendering a template from it, encoding
//! an echo. For 4 MiB of empty fields that is seconds of CPU in a debug build and tens of
//! milliseconds in a release one. Done on a thread that drives the network, it held up every
//! call that thread serves, on every connection. So a request of at least [`HEAVY_REQUEST`]
//! bytes is answered on tokio's blocking pool ([`off_the_network_threads`]), one such request
//! at a time, and calls with small requests are answered meanwhile.

use tokio::sync::Semaphore;

use crate::error::CallError;

/// Requests of at least this many bytes are answered off the network threads; below it the
/// hop to another thread costs more than answering the common request. Size is a rough
/// measure of cost: the worst request below it, a template copying some 3 000 tiny list items,
/// took 3-12 ms in a release build on a busy two-core machine.
pub const HEAVY_REQUEST: usize = 16 * 1024;

/// True when a request of `len` bytes is answered off the network threads.
pub fn is_heavy(len: usize) -> bool {
    len >= HEAVY_REQUEST
}

/// Big requests answered at once: one, so that the other core stays with the network threads
/// (on a machine with more, the rest are theirs too).
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
