//! `rules`: an ordered list of `when` → action; the first rule whose `when` holds answers.
//! A rule without `when` always matches, so it serves as the fallback.
//!
//! Matching a big request costs as much as its rules read of it: a thousand `regex` or
//! `contains` tests over a 4 MiB field is a second of CPU. Done on the thread that drives the
//! network, that second held up every call that thread serves. So a big request is decoded and
//! matched off those threads ([`off_the_network_threads`]), one such request at a time, and
//! calls with small requests are answered meanwhile.

use prost_reflect::DynamicMessage;
use tokio::sync::Semaphore;
use tonic::metadata::MetadataMap;

use super::declarative::Action;
use crate::error::CallError;
use crate::matcher::Condition;

#[derive(Debug)]
pub struct Rule {
    pub when: Option<Condition>,
    pub action: Action,
}

/// The index of the first matching rule.
pub fn pick(rules: &[Rule], req: &DynamicMessage, metadata: &MetadataMap) -> Option<usize> {
    rules
        .iter()
        .position(|r| r.when.as_ref().is_none_or(|c| c.matches(req, metadata)))
}

/// Requests of at least this many bytes are matched off the network threads.
pub const HEAVY_REQUEST: usize = 64 * 1024;

/// Big requests matched at once: one, so that the other core stays with the network threads
/// (on a machine with more, the rest are theirs too).
static HEAVY: Semaphore = Semaphore::const_new(1);

/// Runs `work` where it holds up no other call: on tokio's blocking pool, once this call's turn
/// comes.
///
/// The turn is awaited, not blocked on: calls queued behind a big match hold no thread. A
/// thread each, as blocking in place would take, lets a flood of big requests use up the
/// runtime's blocking pool, which the network threads need as well. The turn goes with the
/// work, so a call that goes away mid-match still frees it only when the match ends: big
/// matches never overlap.
pub async fn off_the_network_threads<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, CallError> + Send + 'static,
) -> Result<T, CallError> {
    // The semaphore is never closed, so the turn always comes.
    let turn = HEAVY.acquire().await.ok();
    let matched = tokio::task::spawn_blocking(move || {
        let _turn = turn;
        work()
    });
    match matched.await {
        Ok(result) => result,
        Err(e) => match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            // Only a runtime shutting down cancels blocking work.
            Err(_) => Err(CallError::ShuttingDown),
        },
    }
}
