//! The running call's meter, as the instruction hook and library functions see it.
//!
//! Every Lua state lives on its own thread (see [`super::worker`]), so "the call this thread is
//! running" is a thread-local: [`Running`] sets it while a call's coroutine is polled, while its
//! result is converted, and while scripts load (with a load meter). The hook asks [`check`] every
//! few thousand instructions; library functions written in Rust charge their work with
//! [`charge`]. Once a call is aborted the abort is sticky: every later check raises it again, so
//! no `pcall` can swallow it for long.
//!
//! Time slices: when a call has run for a slice, the hook yields its coroutine so other calls on
//! the same state progress. The hook marks the coroutine it yields ([`mark_sliced`], per call
//! and per coroutine, so interleaved calls and nested coroutines never mix marks up), and the
//! `coroutine` wrappers in [`super::guard`] pass it up to the call's own
//! coroutine and resume the inner one transparently.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use super::context::CallShared;
use super::status::Abort;

thread_local! {
    /// The call (or script load) this thread is running, and since when in this slice.
    static CURRENT: RefCell<Option<Current>> = const { RefCell::new(None) };
    /// Where this thread shows the watchdog how long its current poll has run (see `worker`).
    static HEARTBEAT: RefCell<Option<Arc<Heartbeat>>> = const { RefCell::new(None) };
    /// Above this many bytes of Lua memory, this thread's state keeps at most one call paused.
    static PAUSE_BELOW: Cell<usize> = const { Cell::new(usize::MAX) };
    /// Calls of this thread's state paused for a time slice and waiting for their turn.
    static PAUSED: Cell<u32> = const { Cell::new(0) };
    /// Polls of the futures behind scripts' waiting functions on this thread (see [`Waiting`]).
    static WAIT_POLLS: Cell<u64> = const { Cell::new(0) };
}

pin_project_lite::pin_project! {
    /// The future behind one of the scripts' waiting functions (reading the request stream,
    /// `ctx:sleep`, `ctx:send` on a full stream), counting its polls for [`Running`].
    pub struct Waiting<F> {
        #[pin]
        inner: F,
    }
}

impl<F> Waiting<F> {
    pub fn new(inner: F) -> Self {
        Self { inner }
    }
}

impl<F: Future> Future for Waiting<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let _ = WAIT_POLLS.try_with(|n| n.set(n.get().wrapping_add(1)));
        self.project().inner.poll(cx)
    }
}

fn wait_polls() -> u64 {
    WAIT_POLLS.try_with(Cell::get).unwrap_or(0)
}

/// Sets the memory above which this thread's state keeps at most one call paused for a time
/// slice. A paused call keeps what it holds, and every call that arrives meanwhile starts
/// before it goes on: a burst of calls that each build something big and then run past a slice
/// (a 3 MB string, say) all held it at once, up to the state's memory limit. Above the mark, a
/// call runs on while another is paused, until it ends or waits, and frees what it held; quick
/// calls still overtake one long call.
pub fn set_pause_below(bytes: usize) {
    PAUSE_BELOW.with(|p| p.set(bytes));
}

/// Whether a state using `bytes` of memory may pause another call for a time slice.
pub fn may_pause(bytes: usize) -> bool {
    !over_pause_mark(bytes) || PAUSED.with(Cell::get) == 0
}

/// Whether a state using `bytes` of memory is over the mark above which it keeps at most one
/// call paused.
pub fn over_pause_mark(bytes: usize) -> bool {
    bytes >= PAUSE_BELOW.with(Cell::get)
}

struct Current {
    shared: Arc<CallShared>,
    since: Instant,
}

/// The call this thread is running, if any.
pub fn running_call() -> Option<Arc<CallShared>> {
    CURRENT.with(|c| c.try_borrow().ok()?.as_ref().map(|c| c.shared.clone()))
}

/// Runs `f` with the call this thread is running, if any, without taking a reference to it.
pub fn with_running_call<R>(f: impl FnOnce(Option<&CallShared>) -> R) -> R {
    CURRENT.with(|c| match c.try_borrow() {
        Ok(current) => f(current.as_ref().map(|c| &*c.shared)),
        Err(_) => f(None),
    })
}

/// What the instruction hook should do with the running script.
pub enum Check {
    Continue,
    Yield,
    Abort(Abort),
}

/// Asked by the instruction hook every `step` instructions.
pub fn check(step: u64, slice: Duration) -> Check {
    CURRENT.with(|c| {
        let Ok(current) = c.try_borrow() else {
            return Check::Continue;
        };
        match current.as_ref() {
            None => Check::Continue,
            Some(current) => {
                let running_for = current.since.elapsed();
                match current.shared.should_abort(step, running_for) {
                    Some(a) => Check::Abort(a),
                    None if running_for >= slice => Check::Yield,
                    None => Check::Continue,
                }
            }
        }
    })
}

/// Charges `units` instructions' worth of work done outside the Lua VM (a pattern step, bytes
/// copied) to the call running on this thread, or to the load budget while scripts load.
/// Errors with the call's abort (which no `pcall` can catch) when it is over budget, past its
/// deadline or cancelled; Ok when within bounds or when no call is running.
pub fn charge(units: u64) -> mlua::Result<()> {
    match check(units, Duration::MAX) {
        Check::Abort(a) => Err(mlua::Error::external(a)),
        _ => Ok(()),
    }
}

/// [`charge`] for work done between a script's instructions, such as decoding the message a
/// request stream's iterator hands it: the budget, a sticky abort and cancellation are checked
/// as there, but not the clock (two clock reads were a sixth of what decoding a small message
/// cost); the hook checks the call's time and deadline as the script goes on running.
pub fn charge_untimed(units: u64) -> mlua::Result<()> {
    let abort = CURRENT.with(|c| {
        let current = c.try_borrow().ok()?;
        current.as_ref()?.shared.should_abort_untimed(units)
    });
    match abort {
        Some(a) => Err(mlua::Error::external(a)),
        None => Ok(()),
    }
}

/// The sticky abort of the running call, if it was aborted.
pub fn current_abort() -> Option<Abort> {
    CURRENT.with(|c| c.try_borrow().ok()?.as_ref()?.shared.aborted())
}

/// Enters (`true`) or leaves a protected call of the running call; entering fails past
/// `limit` nested ones (no call running: always allowed).
pub fn protected(enter: bool, limit: u32) -> bool {
    CURRENT.with(|c| {
        let Ok(current) = c.try_borrow() else {
            return true;
        };
        let Some(current) = current.as_ref() else {
            return true;
        };
        let depth = &current.shared.protected_depth;
        if enter {
            if depth.load(Ordering::Relaxed) >= limit {
                return false;
            }
            depth.fetch_add(1, Ordering::Relaxed);
        } else {
            let _ = depth.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |d| d.checked_sub(1));
        }
        true
    })
}

/// The hook would yield coroutine `thread` (a pointer) of the running call for a time slice:
/// marks it and says yes, or says no (the call's own thread, or no call).
pub fn mark_sliced(thread: usize) -> bool {
    running_call().is_some_and(|call| call.mark_sliced(thread))
}

/// The running call is aborted and the hook is in coroutine `thread`: whether to stop it by
/// yielding (see [`CallShared::yield_for_abort`]) instead of raising the abort.
pub fn yield_for_abort(thread: usize) -> bool {
    running_call().is_some_and(|call| call.yield_for_abort(thread))
}

/// The hook would yield for a time slice but is where Lua cannot yield (a message handler, a
/// metamethod called from C): the running call owes a pause, which the `coroutine` wrappers in
/// [`super::guard`] make when a resume comes back. Without it a script whose coroutines spend
/// their instructions where Lua cannot yield, each new one checked afresh, was never paused.
pub fn owe_pause() {
    if let Some(call) = running_call() {
        call.owe_pause();
    }
}

/// The running call's abort if it was aborted, else whether it owes a pause (forgetting it).
pub fn abort_or_owed_pause() -> Result<bool, Abort> {
    CURRENT.with(|c| {
        let Ok(current) = c.try_borrow() else {
            return Ok(false);
        };
        match current.as_ref() {
            None => Ok(false),
            Some(current) => match current.shared.aborted() {
                Some(a) => Err(a),
                None => Ok(current.shared.take_owed_pause()),
            },
        }
    })
}

/// Whether coroutine `thread`'s last yield was the hook's (forgetting it).
pub fn take_sliced(thread: usize) -> bool {
    running_call().is_some_and(|call| call.take_sliced(thread))
}

/// When a state thread started its current poll of a call, for the watchdog on another thread.
#[derive(Default)]
pub struct Heartbeat {
    /// Microseconds since [`epoch`] plus one; 0 while idle.
    busy_since: AtomicU64,
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

impl Heartbeat {
    fn enter(&self) {
        let micros = u64::try_from(epoch().elapsed().as_micros()).unwrap_or(u64::MAX - 1);
        self.busy_since
            .store(micros.saturating_add(1), Ordering::Relaxed);
    }

    fn leave(&self) {
        self.busy_since.store(0, Ordering::Relaxed);
    }

    /// How long the poll in progress has run; None while idle.
    pub fn busy_for(&self) -> Option<Duration> {
        let since = self.busy_since.load(Ordering::Relaxed).checked_sub(1)?;
        let now = u64::try_from(epoch().elapsed().as_micros()).unwrap_or(u64::MAX);
        Some(Duration::from_micros(now.saturating_sub(since)))
    }
}

/// Makes this thread report its polls to `heartbeat`.
pub fn set_heartbeat(heartbeat: Arc<Heartbeat>) {
    epoch();
    HEARTBEAT.with(|h| *h.borrow_mut() = Some(heartbeat));
}

fn heartbeat(f: impl FnOnce(&Heartbeat)) {
    HEARTBEAT.with(|h| {
        if let Some(h) = h.borrow().as_ref() {
            f(h)
        }
    });
}

/// Runs `f` with `shared` as the current call (restoring whatever was current before); the
/// time it takes counts against the call's time budget.
pub fn with_call<R>(shared: &Arc<CallShared>, f: impl FnOnce() -> R) -> R {
    let since = Instant::now();
    let entry = Current {
        shared: shared.clone(),
        since,
    };
    let previous = CURRENT.with(|c| c.replace(Some(entry)));
    let _restore = Restore(Some(previous));
    let _ran = Ran(shared, since);
    f()
}

/// Adds the time since it was made to the call's time, also when `f` unwinds.
struct Ran<'a>(&'a CallShared, Instant);

impl Drop for Ran<'_> {
    fn drop(&mut self) {
        self.0.add_ran(self.1.elapsed());
    }
}

/// Puts back the previous current call, also when `f` unwinds.
struct Restore(Option<Option<Current>>);

impl Drop for Restore {
    fn drop(&mut self) {
        if let Some(previous) = self.0.take() {
            CURRENT.with(|c| *c.borrow_mut() = previous);
        }
    }
}

/// A call paused outside its coroutine (a request being converted, see
/// [`super::sliced_decode`]): it counts as paused, as one the hook paused, until dropped.
pub struct PausedHere(());

/// Counts the running call as paused until the guard is dropped (see [`PausedHere`]).
pub fn paused_here() -> PausedHere {
    let _ = PAUSED.try_with(|p| p.set(p.get().saturating_add(1)));
    PausedHere(())
}

impl Drop for PausedHere {
    fn drop(&mut self) {
        let _ = PAUSED.try_with(|p| p.set(p.get().saturating_sub(1)));
    }
}

/// The call runs again (or is gone): it no longer counts as paused.
fn unpause(shared: &CallShared) {
    if shared.paused.swap(false, Ordering::Relaxed) {
        let _ = PAUSED.try_with(|p| p.set(p.get().saturating_sub(1)));
    }
}

impl<F> Drop for Running<F> {
    fn drop(&mut self) {
        unpause(&self.shared);
    }
}

/// A poll this long was a busy time slice (see [`Running`]).
const ADMIT_AFTER: Duration = Duration::from_millis(1);

/// A call's coroutine, polled with its call current and a fresh time slice.
pub struct Running<F> {
    shared: Arc<CallShared>,
    inner: F,
}

impl<F> Running<F> {
    pub fn new(shared: Arc<CallShared>, inner: F) -> Self {
        Self { shared, inner }
    }
}

impl<F: Future + Unpin> Future for Running<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        unpause(&this.shared);
        heartbeat(Heartbeat::enter);
        let started = Instant::now();
        let waits_before = wait_polls();
        let memory_before = super::worker::used_memory();
        if let Some(before) = memory_before {
            let before = u64::try_from(before).unwrap_or(u64::MAX);
            this.shared.memory_at_run.store(before, Ordering::Relaxed);
            let held = this.shared.held.load(Ordering::Relaxed);
            this.shared.held_at_run.store(held, Ordering::Relaxed);
        }
        let result = with_call(&this.shared, || {
            // The call's own thread runs now: the clock's signal pauses it (see `preempt`).
            let _within = super::preempt::within(this.shared.main_thread() as *mut _);
            Pin::new(&mut this.inner).poll(cx)
        });
        heartbeat(Heartbeat::leave);
        if let (Some(before), Some(after)) = (memory_before, super::worker::used_memory()) {
            let grown =
                i64::try_from(after).unwrap_or(i64::MAX) - i64::try_from(before).unwrap_or(0);
            this.shared.held.fetch_add(grown, Ordering::Relaxed);
        }
        if result.is_pending() && wait_polls() == waits_before {
            // The call is waiting, yet none of its futures was polled in this poll: its wait
            // was polled in an earlier poll, and a pause came between that poll and the
            // coroutine's yield (the hook's time slice inside mlua's poll loop, or a pause owed
            // to the resumer). The wake-up that future registered may have come and gone with
            // the pause (it woke this task for the poll that just ran, which only resumed to
            // the yield), so nothing would poll the future again: the stream's next message
            // sat in HTTP/2 and the call hung. One more poll resumes the coroutine from its
            // yield, which polls the future afresh. (After a plain pause this is the wake-up
            // mlua already asked for.)
            cx.waker().wake_by_ref();
        }
        let ran = started.elapsed();
        if result.is_pending() && this.shared.paused.load(Ordering::Relaxed) {
            let _ = PAUSED.try_with(|p| p.set(p.get().saturating_add(1)));
        } else {
            this.shared.paused.store(false, Ordering::Relaxed);
        }
        if result.is_pending() && ran >= ADMIT_AFTER {
            // A busy call used its slice: let calls that arrived meanwhile start now.
            super::worker::admit_arrivals();
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;
    use std::sync::atomic::AtomicBool;
    use std::sync::Mutex;
    use std::task::{Wake, Waker};

    use mlua::Lua;

    use super::*;

    /// A task's waker: notes that the task was woken.
    struct Woken(AtomicBool);

    impl Wake for Woken {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    /// A waiting function's future can return Pending and the clock's signal pause the call
    /// before mlua's poll loop yields it as pending: the loop's few instructions run first, and
    /// the hook yields there for the time slice. mlua wakes the task at once for that plain
    /// yield; a message arriving in between woke it too, so both wake-ups were spent on the
    /// poll that only resumed the loop up to its pending yield, and nothing polled the future
    /// again. The RouteChat bench stalled that way once in a few hundred runs, with every
    /// thread idle and the ping in HTTP/2's buffer. Here the future sets the hook itself, at
    /// the moment the signal would.
    #[test]
    fn a_wake_up_during_a_pause_between_a_wait_and_its_yield_is_not_lost() {
        let lua = Lua::new();
        crate::script::hook::install(&lua, true).unwrap();
        let waker: Arc<Mutex<Option<Waker>>> = Arc::default();
        let ready = Arc::new(AtomicBool::new(false));
        let coroutine = Arc::new(AtomicU64::new(0));
        let (slot, arrived, co) = (waker.clone(), ready.clone(), coroutine.clone());
        let wait = lua
            .create_async_function(move |_, ()| {
                let (slot, arrived, co) = (slot.clone(), arrived.clone(), co.clone());
                let mut first = true;
                Waiting::new(poll_fn(move |cx| {
                    if arrived.load(Ordering::SeqCst) {
                        return Poll::Ready(Ok(()));
                    }
                    *slot.lock().unwrap() = Some(cx.waker().clone());
                    if std::mem::take(&mut first) {
                        // The slice runs out while the future polls, and the signal comes.
                        std::thread::sleep(TIME_SLICE_PAST);
                        let thread = co.load(Ordering::SeqCst) as *mut mlua::ffi::lua_State;
                        let _running = crate::script::preempt::within(thread);
                        crate::script::hook::check_soon();
                    }
                    Poll::Pending
                }))
            })
            .unwrap();
        let body = lua
            .load("local wait = ... return function() wait() return 'answered' end")
            .call::<mlua::Function>(wait)
            .unwrap();
        let thread = lua.create_thread(body).unwrap();
        // The coroutine's state, as the hook and `preempt` name threads.
        coroutine.store(thread.to_pointer() as usize as u64, Ordering::SeqCst);
        let shared = CallShared::for_test(u64::MAX, Duration::from_secs(3600));
        let mut running = Running::new(shared, thread.into_async::<String>(()).unwrap());
        let woken = Arc::new(Woken(AtomicBool::new(false)));
        let task = Waker::from(woken.clone());
        let mut cx = Context::from_waker(&task);

        // The first poll: the future is pending, then the call is paused for its slice.
        assert!(Pin::new(&mut running).poll(&mut cx).is_pending());
        assert!(
            woken.0.load(Ordering::SeqCst),
            "a paused call is woken to go on"
        );
        // The message arrives while the task waits to be polled again.
        ready.store(true, Ordering::SeqCst);
        waker
            .lock()
            .unwrap()
            .take()
            .expect("the future's waker")
            .wake();

        // The task runs each time it is woken, as an executor would.
        let mut polls = 0;
        while woken.0.swap(false, Ordering::SeqCst) {
            polls += 1;
            assert!(polls < 10, "the call is polled over and over");
            if let Poll::Ready(answer) = Pin::new(&mut running).poll(&mut cx) {
                assert_eq!(answer.unwrap(), "answered");
                return;
            }
        }
        panic!("the call waits for a wake-up that already came: after {polls} polls it is pending and nothing will wake it");
    }

    /// Past [`TIME_SLICE`](crate::script::hook::TIME_SLICE), so that the hook yields.
    const TIME_SLICE_PAST: Duration = Duration::from_millis(5);
}
