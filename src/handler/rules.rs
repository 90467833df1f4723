//! `rules`: an ordered list of `when` → action; the first rule whose `when` holds answers.
//! A rule without `when` always matches, so it serves as the fallback.
//!
//! Matching a big request costs as much as its rules read of it: a thousand `regex` or
//! `contains` tests over a 4 MiB field is a second of CPU. Done on the thread that drives the
//! network, that second held up every call that thread serves. So a big request is decoded and
//! matched off those threads ([`off_the_network_threads`]), one such request at a time, and
//! calls with small requests are answered meanwhile.

use prost_reflect::DynamicMessage;
use tokio::runtime::{Handle, RuntimeFlavor};
use tokio::sync::Semaphore;
use tonic::metadata::MetadataMap;

use super::declarative::Action;
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

/// Runs `work` where it holds up no other call: the runtime hands this thread's other tasks to
/// another thread while it runs ([`tokio::task::block_in_place`]), after waiting for its turn.
/// Outside a multi-threaded runtime (a test's), it just runs.
pub fn off_the_network_threads<T>(work: impl FnOnce() -> T) -> T {
    let Ok(handle) = Handle::try_current() else {
        return work();
    };
    if handle.runtime_flavor() != RuntimeFlavor::MultiThread {
        return work();
    }
    tokio::task::block_in_place(|| {
        let _turn = handle.block_on(HEAVY.acquire());
        work()
    })
}
