//! Pattern operations that give way when their call's time slice ends.
//!
//! Why: `string.find`, `match`, `gmatch` and `gsub` match in Rust ([`super::pattern`]), inside
//! one call of a Rust function from Lua. The hook only runs between Lua instructions, so a
//! backtracking match (`("x"):rep(1e5):find("x*y")`) kept its state's thread for its call's
//! whole time budget: every other call on that state waited, and with a budget longer than
//! `--script-watchdog-ms` the state was replaced as stuck. Its steps were paid for, but it
//! could not be paused.
//!
//! How: an operation first runs straight away ([`start`], paying with [`Direct`]); almost all end
//! within their call's time slice. One that is still running when the slice ends is dropped
//! and run again from the start on a stack of its own (a `corosensei` coroutine), where
//! [`Suspend`] can stop it at any step. The Rust function then returns a pending [`Job`] to the
//! Lua side (`stdlib.lua`), which resumes it in a loop; between two resumes Lua runs an
//! instruction, where the hook pauses the call for the others on its state, as it pauses any
//! script (the job asks for that check at once, see [`super::hook::check_soon`]). Starting
//! again is invisible: an operation reads its strings and builds its result privately, and
//! Lua values are made only once it has ended. The cost is the work done before the slice
//! ended, paid twice, once per operation that runs that long.
//!
//! A job never holds the Lua state strongly while it waits (it would keep a state that is
//! being replaced alive). It holds its strings by mlua handles, which keep them in Lua's
//! memory, where strings never move, and reads them through pointers taken at the start. A
//! job dropped while suspended (its call stopped, or its state closed) has its stack unwound
//! by `corosensei` before its strings are let go; nothing is read on the way.

#![allow(unsafe_code)]

use std::cell::Cell;

use corosensei::stack::DefaultStack;
use corosensei::{Coroutine, CoroutineResult, Yielder};
use mlua::UserData;

use super::hook::{self, TIME_SLICE};
use super::pattern::{MatchError, Pace, CHUNK};
use super::slice::{self, Check};
use super::spare_stack;

/// A pausable operation's stack. The matcher recurses at most 200 deep, with small frames;
/// the rest is room for a signal handler. Pages are only used as they are touched.
const STACK_SIZE: usize = 1 << 20;

thread_local! {
    /// Tests: every payment is the end of a time slice (see [`pause_at_every_step`]).
    static EVERY_STEP: Cell<bool> = const { Cell::new(false) };
    /// Bytes this thread's operations hold outside Lua's memory (see [`Held`]).
    static HELD: Cell<usize> = const { Cell::new(0) };
}

/// Bytes the operations running or suspended on this thread hold outside Lua's memory (the
/// text `gsub` builds). Lua's count does not see them, so the memory checks add them: without
/// that, calls paused in turn inside long `gsub`s could each build a result as big as the
/// memory the state had left.
pub fn held() -> usize {
    HELD.try_with(Cell::get).unwrap_or(0)
}

/// One operation's share of [`held`], given back when it ends or is dropped.
#[derive(Default)]
pub struct Held(usize);

impl Held {
    /// Sets this operation's share to `bytes`.
    pub fn set(&mut self, bytes: usize) {
        let _ = HELD.try_with(|h| h.set(h.get().saturating_sub(self.0).saturating_add(bytes)));
        self.0 = bytes;
    }

    /// This operation's share.
    pub fn bytes(&self) -> usize {
        self.0
    }

    /// What the other operations on this thread hold.
    pub fn others(&self) -> usize {
        held().saturating_sub(self.0)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.set(0);
    }
}

/// Tests: on this thread, every operation pays at every step, and every payment acts as the
/// end of a time slice, so every operation that takes a step is run again where it can pause,
/// and suspended at each of its steps.
pub fn pause_at_every_step(on: bool) {
    EVERY_STEP.with(|e| e.set(on));
}

/// Steps an operation counts before it pays for them.
pub fn chunk() -> u64 {
    if EVERY_STEP.with(Cell::get) {
        1
    } else {
        CHUNK
    }
}

/// Pays to the running call (when there is one): the first attempt at an operation, on the
/// thread's own stack. At the end of the call's time slice it sends the operation to start
/// again where it can pause.
pub struct Direct;

impl Pace for Direct {
    fn pay(&self, units: u64) -> Result<(), MatchError> {
        match slice::check(units, TIME_SLICE) {
            Check::Abort(a) => Err(MatchError::Stopped(mlua::Error::external(a))),
            Check::Yield => Err(MatchError::Overran),
            Check::Continue if EVERY_STEP.with(Cell::get) => Err(MatchError::Overran),
            Check::Continue => Ok(()),
        }
    }
}

/// Pays to the running call from a job's own stack: at the end of the call's time slice it
/// suspends the job, whose Lua caller lets the hook pause the call before resuming it.
struct Suspend<'y>(&'y Yielder<(), ()>);

impl Pace for Suspend<'_> {
    fn pay(&self, units: u64) -> Result<(), MatchError> {
        match slice::check(units, TIME_SLICE) {
            Check::Abort(a) => Err(MatchError::Stopped(mlua::Error::external(a))),
            Check::Yield => {
                hook::check_soon();
                self.0.suspend(());
                Ok(())
            }
            Check::Continue if EVERY_STEP.with(Cell::get) => {
                self.0.suspend(());
                Ok(())
            }
            Check::Continue => Ok(()),
        }
    }
}

/// An operation on up to three strings (a pattern operation's subject, pattern and
/// replacement), pure until it ends: it only reads their bytes and builds its own result.
pub trait Work: Send + 'static {
    /// What it finds, before any Lua value is made of it.
    type Found: Send + 'static;

    /// The strings it reads.
    fn strings(&self) -> [Option<&mlua::String>; 3];

    /// Does the work on the strings' bytes (empty for each string it does not have), paying
    /// `pace`.
    fn run(&self, bytes: [&[u8]; 3], pace: &dyn Pace) -> Result<Self::Found, MatchError>;
}

/// What [`start`] comes back with.
pub enum Progress<W: Work> {
    /// The operation ended: it and its result.
    Done(W, Result<W::Found, MatchError>),
    /// It runs on as a job, not started yet.
    Pending(Job<W>),
}

/// What [`Job::resume`] comes back with.
pub enum Resumed<W: Work> {
    /// The operation ended: it and its result.
    Done(W, Result<W::Found, MatchError>),
    /// It stopped at the end of its call's time slice.
    Suspended,
    /// It had ended before.
    Gone,
}

/// Runs `work` straight away; if its call's time slice ends meanwhile, sets it up as a job
/// that starts again where it can pause (not started yet).
pub fn start<W: Work>(work: W) -> Progress<W> {
    let result = {
        let [a, b, c] = work.strings().map(|s| s.map(mlua::String::as_bytes));
        let [a, b, c] = [&a, &b, &c].map(|s| s.as_deref().unwrap_or_default());
        work.run([a, b, c], &Direct)
    };
    match result {
        Err(MatchError::Overran) => Progress::Pending(Job::new(work)),
        result => Progress::Done(work, result),
    }
}

type Body<W> = Coroutine<(), (), (W, Result<<W as Work>::Found, MatchError>), DefaultStack>;

/// An operation running on a stack of its own, between two resumes.
pub struct Job<W: Work> {
    /// `None` once it has ended (or could not get a stack, see [`Job::new`]).
    body: Option<Body<W>>,
    /// The operation, while no stack could be had for it.
    unstarted: Option<W>,
}

// SAFETY: a job lives in one Lua state (as userdata), and is resumed and dropped only by that
// state's functions, on the one thread that runs the state at a time. While it is suspended,
// its stack holds the operation, plain data (positions, the matcher, the bytes built) and
// references into it; no thread-local is borrowed across a suspension (`slice::check`
// releases its borrow before `Suspend` suspends).
unsafe impl<W: Work> Send for Job<W> {}

impl<W: Work> UserData for Job<W> {}

impl<W: Work> Job<W> {
    fn new(work: W) -> Self {
        let stack = match spare_stack::take(STACK_SIZE) {
            Ok(stack) => stack,
            Err(e) => {
                tracing::warn!("no stack for a pausable pattern operation: {e}");
                return Self {
                    body: None,
                    unstarted: Some(work),
                };
            }
        };
        let body = Coroutine::with_stack(stack, move |yielder: &Yielder<(), ()>, ()| {
            let result = {
                // SAFETY: see `bytes`; `work` (which holds the handles) outlives the borrow.
                let bytes = work
                    .strings()
                    .map(|s| s.map_or(&[][..], |s| unsafe { bytes(s) }));
                work.run(bytes, &Suspend(yielder))
            };
            (work, result)
        });
        Self {
            body: Some(body),
            unstarted: None,
        }
    }

    /// Runs the operation on until it ends or its call's time slice does.
    pub fn resume(&mut self) -> Resumed<W> {
        if let Some(work) = self.unstarted.take() {
            // No stack: the operation runs to its end here, paying without pausing.
            let result = {
                let [a, b, c] = work.strings().map(|s| s.map(mlua::String::as_bytes));
                let [a, b, c] = [&a, &b, &c].map(|s| s.as_deref().unwrap_or_default());
                work.run([a, b, c], &super::pattern::Charge(slice::charge))
            };
            return Resumed::Done(work, result);
        }
        let Some(body) = self.body.as_mut() else {
            return Resumed::Gone;
        };
        match body.resume(()) {
            CoroutineResult::Yield(()) => Resumed::Suspended,
            CoroutineResult::Return((work, result)) => {
                if let Some(body) = self.body.take() {
                    spare_stack::keep(body.into_stack());
                }
                Resumed::Done(work, result)
            }
        }
    }
}

impl<W: Work> Drop for Job<W> {
    fn drop(&mut self) {
        if let Some(mut body) = self.body.take() {
            // Unwinds a suspended operation's frames (dropping what they hold, reading none of
            // the strings' bytes), then keeps the stack for the next job.
            body.force_unwind();
            spare_stack::keep(body.into_stack());
        }
    }
}

/// The bytes of `s`, for as long as `s` is borrowed, without holding its Lua state (mlua's
/// borrowed bytes hold it strongly).
///
/// # Safety
/// `s` keeps the string referenced from mlua's reference stack for as long as it lives, and
/// Lua never moves or changes a string's bytes; a closing state runs the finalizers that drop
/// jobs (and so `s`) before it frees any object.
unsafe fn bytes(s: &mlua::String) -> &[u8] {
    let borrowed = s.as_bytes();
    let (ptr, len) = (borrowed.as_ptr(), borrowed.len());
    drop(borrowed);
    // SAFETY: as the function says.
    unsafe { std::slice::from_raw_parts(ptr, len) }
}
