//! A call that a state lets go of without answering is told why at once, never left waiting.
//!
//! A call's answer goes through a oneshot kept in its [`CallShared`], which the handler future
//! waiting on the network side holds too (to cancel the call if its client goes away). So
//! dropping a call's task on a state thread does not close that channel: when a state was
//! replaced after a memory error, the calls in progress on it were dropped with their executor
//! and their clients waited forever. Every call handed to a state therefore carries an
//! [`Unanswered`] guard from its submission to its end: however it is dropped unanswered (its
//! state replaced, a panic on its thread, its job still queued for a pool that is gone), the
//! guard answers UNAVAILABLE, with the reason the thread gave ([`lose_calls_because`]).
//!
//! [`InProgress`] lists a state's calls in progress: a watchdog giving a stuck state up answers
//! all of them at once (they cannot move while the state is stuck), and a memory error met by
//! one call can be traced to the call that holds the state's memory (see `worker`).

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use super::context::CallShared;
use super::status::Abort;

thread_local! {
    /// Why this thread is letting go of its calls, for the guards dropped meanwhile.
    static LOST_BECAUSE: RefCell<Option<Arc<str>>> = const { RefCell::new(None) };
}

/// What a call hears when nothing better was said: the state stopped without a reason noted.
const STOPPED: &str = "stopped before the call was answered (see the server log)";

/// Notes why the calls this thread drops from now on were not answered (completes "the script
/// state running this call …"); `None` forgets it.
pub fn lose_calls_because(why: Option<&str>) {
    LOST_BECAUSE.with(|l| *l.borrow_mut() = why.map(Arc::from));
}

pub fn reason() -> Arc<str> {
    LOST_BECAUSE
        .try_with(|l| l.borrow().clone())
        .ok()
        .flatten()
        .unwrap_or_else(|| Arc::from(STOPPED))
}

/// A state's calls in progress (keyed by address).
#[derive(Default)]
pub struct InProgress {
    calls: Mutex<HashMap<usize, Arc<CallShared>>>,
}

fn key(call: &CallShared) -> usize {
    call as *const CallShared as usize
}

impl InProgress {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<usize, Arc<CallShared>>> {
        self.calls.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn enter(&self, call: &Arc<CallShared>) {
        self.lock().insert(key(call), call.clone());
    }

    fn leave(&self, call: &CallShared) {
        self.lock().remove(&key(call));
    }

    /// How many calls are in progress.
    pub fn count(&self) -> usize {
        self.lock().len()
    }

    /// Answers every call in progress UNAVAILABLE (`why` completes "the script state running
    /// this call …") and stops each where its state next runs it.
    pub fn give_up_all(&self, why: &str) {
        let calls: Vec<_> = self.lock().values().cloned().collect();
        for call in calls {
            call.give_up(why);
        }
    }

    /// The call other than `except` whose runs grew the state's memory the most, with those
    /// bytes.
    pub fn biggest_holder(&self, except: &CallShared) -> Option<(Arc<CallShared>, i64)> {
        self.lock()
            .values()
            .filter(|c| key(c) != key(except))
            .map(|c| (c.clone(), c.held.load(Ordering::Relaxed)))
            .max_by_key(|(_, held)| *held)
    }

    /// Whether a call in progress was stopped for holding the state's memory (and frees it
    /// once it ends).
    pub fn holder_stopped(&self) -> bool {
        self.lock()
            .values()
            .any(|c| c.aborted() == Some(Abort::Memory))
    }
}

/// Answers its call UNAVAILABLE when dropped before the call was answered.
pub struct Unanswered {
    call: Arc<CallShared>,
    listed: Option<Arc<InProgress>>,
}

impl Unanswered {
    pub fn new(call: Arc<CallShared>) -> Self {
        Self { call, listed: None }
    }

    /// The call is now in progress on the state whose calls are `calls`.
    pub fn list_in(&mut self, calls: &Arc<InProgress>) {
        if let Some(earlier) = self.listed.take() {
            earlier.leave(&self.call);
        }
        calls.enter(&self.call);
        self.listed = Some(calls.clone());
    }
}

impl Drop for Unanswered {
    fn drop(&mut self) {
        if let Some(calls) = self.listed.take() {
            calls.leave(&self.call);
        }
        if self.call.unanswered() {
            self.call.give_up(&reason());
        }
    }
}
