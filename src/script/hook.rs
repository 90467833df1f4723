//! The hook: it checks the running call's budgets, deadline and cancellation (see
//! [`slice::check`]), yields a call that has used its time slice, and stops a call that must end.
//! By default the clock's signal sets it for one instruction on the thread that runs
//! ([`preempt_hook`], see [`preempt`]), so scripts run with no hook at all in between; with
//! `--script-instructions` it runs every [`STEP`] instructions ([`count_hook`]) and counts them.
//!
//! It is a raw Lua hook, installed with `lua_sethook`, because of how it must stop a script. An
//! mlua hook callback that returns an error has mlua raise it, and mlua first resets the stack
//! top of the thread the hook runs on. Inside a hook that stack is the interrupted Lua
//! function's registers, and Lua 5.4 closes to-be-closed variables as they fall off the stack:
//! their `__close` handlers ran right there, inside the hook, where Lua calls no hook, so an
//! endless one spun its thread for good. This hook raises with `lua_error` and leaves the
//! interrupted frame alone: the error unwinds to the nearest protected call, which turns hooks
//! back on before it closes the variables the unwinding left pending, so every `__close` handler
//! runs under the hook and the call's budget. A coroutine a script makes unwinds to its own
//! protected call (see `guard`), where the handlers `setmetatable` guarded do nothing once the
//! call is stopped; nothing closes it afterwards, and collecting a thread runs no `__close`.
//!
//! That takes `unsafe` (the crate denies it elsewhere): a hook is an `extern "C-unwind"`
//! function Lua calls with its own pointers, and it uses the Lua API directly. The decision is
//! made in safe Rust ([`decide`]), with everything that has a destructor gone before the hook
//! acts on it: `lua_error` jumps out of the hook with `longjmp`, which must not skip a
//! destructor. The hook only asks whether the thread can yield, reads the interrupted
//! function's source and line (for the error of a script load it stops), yields the thread
//! (Lua 5.4 lets a count hook yield with no values, returning normally) or raises.
//!
//! When counting, every thread of a state runs it: it is set on the main thread, and
//! `lua_newthread` gives each new thread the hook of the thread it is made from (coroutines the
//! scripts create, and the threads mlua creates for calls, from the main thread or a running
//! one).
//!
//! Lua counts a hook's instructions per thread, from zero in a new one, so work spread over
//! fresh coroutines that each end before their first check would never be charged. A
//! coroutine a script makes therefore pays its first [`COROUTINE_STEP`] instructions when it
//! is made ([`start_coroutine`]) and is checked every [`COROUTINE_STEP`] instructions after
//! that; each check charges the count of the thread it runs on.

#![allow(unsafe_code)]

use std::cell::{Cell, RefCell};
use std::ffi::{c_int, CStr};
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use mlua::{ffi, Lua};

use super::pausable;
use super::preempt;
use super::slice::{self, Check};
use super::status::Abort;
use super::trap;

/// Instructions between two checks of the budget, deadline and cancellation.
pub const STEP: u32 = 10_000;

/// Instructions between two checks in a coroutine a script makes, and what making one costs.
pub const COROUTINE_STEP: u32 = 1_000;

/// Calls a thread may nest (a Lua function's, or a C function's such as `pcall`); Lua's own
/// limit is a stack of a million values, some 300,000 calls of a small function. One call
/// more and the hook raises "stack overflow" as Lua does at its limit, a plain error that
/// `pcall` catches. Why: growing, moving and unwinding a stack walk every call on it, in steps
/// nothing can pause, and the calls lie wherever the allocator put them: at 300,000 calls each
/// step held the state's thread for tens of milliseconds, and every caught overflow left the
/// next one slower. The values on the stack cost little (they are copied at memory speed), so
/// Lua's limit on them stays.
pub const MAX_CALLS: usize = 20_000;

/// Values on a thread's stack (or call frames it keeps for reuse, which it made when its calls
/// last nested that deep) from which the clock's hook stays on it, checking every [`STEP`]
/// instructions, so that a recursion is stopped close to [`MAX_CALLS`] (between two signals a
/// recursion grows by tens of thousands of calls), and so is the next one of a loop of them.
/// Every call holds at least one value.
const DEEP: usize = MAX_CALLS / 2;

/// How long a script may run before the hook yields it so other calls can go on.
pub const TIME_SLICE: Duration = Duration::from_millis(2);

/// The `method` of a script load's meter, so the hook knows it is stopping a load.
pub const LOADING: &str = "(loading scripts)";

thread_local! {
    /// Where the hook stopped a script load (source, line), for the startup error.
    static LOAD_STOPPED_AT: RefCell<Option<(String, usize)>> = const { RefCell::new(None) };
    /// The thread [`check_soon`] last swapped the count hook of, and that hook's count.
    static SOON_COUNT: Cell<(usize, c_int)> = const { Cell::new((0, 0)) };
}

/// Where the hook stopped the last script load on this thread, taken.
pub fn take_load_stop() -> Option<(String, usize)> {
    LOAD_STOPPED_AT.with(|l| l.borrow_mut().take())
}

/// Sets up how `lua` is paused. Counting (`count`, or where the clock cannot pause scripts):
/// the count hook on the main thread, which threads made later inherit. Otherwise no hook: the
/// clock's signal sets [`preempt_hook`] on whichever thread runs (see [`preempt`]). Says
/// whether instructions are counted.
pub fn install(lua: &Lua, count: bool) -> mlua::Result<bool> {
    // Checked here, once, rather than in the first hook that asks.
    trap::fits();
    if !count && preempt::available() {
        return Ok(false);
    }
    let step = c_int::try_from(STEP).unwrap_or(c_int::MAX);
    // SAFETY: `exec_raw` runs the closure in protected mode on the state's main thread (no call
    // runs yet); `lua_sethook` only stores the hook, its mask and count in that thread.
    unsafe {
        lua.exec_raw::<()>((), |state| {
            ffi::lua_sethook(state, Some(count_hook), ffi::LUA_MASKCOUNT, step)
        })?;
    }
    Ok(true)
}

/// Sets up coroutine `thread`, just made by a script: checked every [`COROUTINE_STEP`]
/// instructions, and charged that many now (the instructions it may run before its first
/// check). Errors with the call's abort when that passes its budget.
pub fn start_coroutine(lua: &Lua, thread: mlua::Thread) -> mlua::Result<()> {
    let step = c_int::try_from(COROUTINE_STEP).unwrap_or(c_int::MAX);
    let mut counted = false;
    // SAFETY: `exec_raw` pushes `thread` on the running thread's stack and runs the closure in
    // protected mode; `lua_tothread` reads the pushed value (a thread, by its type), which has
    // not started (the script made it a moment ago, on this OS thread), and `lua_gethook` and
    // `lua_sethook` only read and store the hook, its mask and count in it. A thread made where
    // instructions are counted inherited the count hook; elsewhere the clock pauses it and
    // there is nothing to set up.
    unsafe {
        lua.exec_raw::<()>(thread, |state| {
            let thread = ffi::lua_tothread(state, -1);
            if !thread.is_null()
                && ffi::lua_gethook(thread).is_some_and(|h| {
                    std::ptr::fn_addr_eq(h, count_hook as unsafe extern "C-unwind" fn(_, _))
                })
            {
                ffi::lua_sethook(thread, Some(count_hook), ffi::LUA_MASKCOUNT, step);
                counted = true;
            }
        })?;
    }
    if counted {
        slice::charge(u64::from(COROUTINE_STEP))
    } else {
        Ok(())
    }
}

/// What the hook does with the thread it interrupted.
#[derive(Clone, Copy)]
enum Action {
    Continue,
    /// Yield the thread (it can yield).
    Yield,
    /// Raise the call's abort, with this message.
    Raise(&'static CStr),
}

/// The hook Lua calls every [`STEP`] instructions, on the thread running them, where
/// instructions are counted.
unsafe extern "C-unwind" fn count_hook(state: *mut ffi::lua_State, ar: *mut ffi::lua_Debug) {
    // SAFETY: Lua passes the running thread; it reads the hook's count (the instructions
    // since its last check).
    let step = unsafe { ffi::lua_gethookcount(state) };
    let step = u64::try_from(step).unwrap_or(0).max(1);
    // SAFETY: Lua passes the running thread and the hook's activation record.
    unsafe { act(state, ar, step) }
}

/// The one-shot hook the clock's signal sets on the running thread (see [`preempt`]): it
/// removes itself and checks. When it raises the call's abort it stays, checking every
/// [`STEP`] instructions, so that the abort is raised again soon wherever it is caught.
///
/// # Safety
/// Called by Lua as a hook.
pub unsafe extern "C-unwind" fn preempt_hook(state: *mut ffi::lua_State, ar: *mut ffi::lua_Debug) {
    // SAFETY: Lua passes the running thread; `lua_sethook` only stores the hook fields (a hook
    // may change its own thread's hook), and `trap::arm` stores the same ones where it may.
    unsafe {
        ffi::lua_sethook(state, None, 0, 0);
        if trap::stack_in_use(state).is_some_and(|n| n > DEEP)
            || trap::frames_kept(state).is_some_and(|n| n > DEEP)
        {
            let step = c_int::try_from(STEP).unwrap_or(c_int::MAX);
            trap::arm(state, preempt_hook, ffi::LUA_MASKCOUNT, step);
        }
    }
    // SAFETY: Lua passes the running thread and the hook's activation record.
    unsafe { act(state, ar, 0) }
}

/// Has the hook check the running Lua thread at its next instruction, as the clock's signal
/// does: a pattern job suspended at the end of its time slice returns to Lua, where the call is
/// then paused at once (see [`super::pausable`]). Where instructions are counted, the count
/// hook is swapped for [`count_soon_hook`], which puts it back (without it, the call was paused
/// only up to [`STEP`] instructions later: thousands of resumes of the job, each matching on,
/// a tenth of a second or more). Any other hook is left alone: the clock's, or an abort's.
pub fn check_soon() {
    let state = preempt::running();
    if state.is_null() {
        return;
    }
    // SAFETY: `state` is the Lua thread this OS thread is running (noted exactly while it
    // runs), so it is alive; the caller is a library function it called. `lua_gethook` and
    // `lua_gethookcount` read its hook, and `lua_sethook` stores a hook and count in it and
    // marks its frames to trap, which a C function may do on its own thread (as
    // `debug.sethook` does).
    unsafe {
        match ffi::lua_gethook(state) {
            None => ffi::lua_sethook(state, Some(preempt_hook), ffi::LUA_MASKCOUNT, 1),
            // Only where the hook can yield: elsewhere it lets the job go on, and each of the
            // job's suspensions would be charged a count.
            Some(hook)
                if std::ptr::fn_addr_eq(hook, count_hook as ffi::lua_Hook)
                    && ffi::lua_isyieldable(state) != 0 =>
            {
                let count = ffi::lua_gethookcount(state);
                SOON_COUNT.with(|c| c.set((state as usize, count)));
                ffi::lua_sethook(state, Some(count_soon_hook), ffi::LUA_MASKCOUNT, 1);
            }
            Some(_) => {}
        }
    }
}

/// The count hook's stand-in that [`check_soon`] sets: at the next instruction it sets the
/// count hook back, with its count, and checks, charging that count as the count hook would.
/// Fewer instructions than that ran since the count hook last checked (Lua keeps how many it
/// has left where no function reads it), so a call is charged at most one count more per time
/// slice its pattern jobs overrun: never less than it ran.
///
/// # Safety
/// Called by Lua as a hook.
unsafe extern "C-unwind" fn count_soon_hook(state: *mut ffi::lua_State, ar: *mut ffi::lua_Debug) {
    let (noted, count) = SOON_COUNT.with(Cell::get);
    let count = if noted == state as usize {
        count
    } else {
        c_int::try_from(STEP).unwrap_or(c_int::MAX)
    };
    // SAFETY: Lua passes the running thread; `lua_sethook` only stores the hook fields (a hook
    // may change its own thread's hook).
    unsafe { ffi::lua_sethook(state, Some(count_hook), ffi::LUA_MASKCOUNT, count) };
    let step = u64::try_from(count).unwrap_or(0).max(1);
    // SAFETY: Lua passes the running thread and the hook's activation record.
    unsafe { act(state, ar, step) }
}

/// Does what [`decide`] says with the interrupted thread.
///
/// # Safety
/// `state` and `ar` are what Lua passed to the running hook.
unsafe fn act(state: *mut ffi::lua_State, ar: *mut ffi::lua_Debug, step: u64) {
    // Nothing with a destructor lives in this frame: `lua_error` leaves it by `longjmp`.
    // SAFETY: Lua passes the running thread and the hook's activation record.
    if unsafe { trap::stack_in_use(state) }.is_some_and(|n| n > MAX_CALLS)
        && unsafe { trap::frames_over(state, MAX_CALLS) } == Some(true)
    {
        // SAFETY: as below; `luaL_where` and `lua_concat` push two strings and make one (Lua
        // keeps LUA_MINSTACK free slots for a hook); a memory error raised there unwinds as the
        // overflow would.
        unsafe {
            ffi::luaL_where(state, 0);
            if ffi::lua_rawlen(state, -1) == 0 {
                // The hook runs in Lua code only: one without line information is the server's
                // own (a library wrapper). Placed as Lua places its own overflow there, so the
                // error is moved to the script's line (see `guard`).
                ffi::lua_pop(state, 1);
                ffi::lua_pushstring(state, c"?:-1: ".as_ptr());
            }
            ffi::lua_pushstring(state, c"stack overflow".as_ptr());
            ffi::lua_concat(state, 2);
            ffi::lua_error(state)
        }
    }
    // SAFETY: Lua passes the running thread and the hook's activation record.
    let action = unsafe { decide(state, ar, step) };
    match action {
        Action::Continue => {}
        Action::Yield => {
            // SAFETY: `decide` saw the thread can yield; from a count hook Lua 5.4 yields with
            // no values by returning here and unwinding once the hook has returned.
            unsafe { ffi::lua_yield(state, 0) };
        }
        Action::Raise(message) => {
            // SAFETY: Lua keeps LUA_MINSTACK free slots for a hook, above the interrupted
            // function's registers; the message is static, and `lua_error` jumps to the nearest
            // protected call over frames (this one, Lua's) that hold nothing to drop. Where the
            // clock pauses scripts, the hook stays to raise the abort again.
            unsafe {
                if ffi::lua_gethook(state).is_none() {
                    let step = c_int::try_from(STEP).unwrap_or(c_int::MAX);
                    ffi::lua_sethook(state, Some(preempt_hook), ffi::LUA_MASKCOUNT, step);
                }
                ffi::lua_pushstring(state, message.as_ptr());
                ffi::lua_error(state)
            }
        }
    }
}

/// Asks the running call what to do with the thread `state` Lua interrupted. Never unwinds: a
/// panic counts as "go on" (a sticky abort is found again at the next check).
///
/// # Safety
/// `state` and `ar` are what Lua passed to the running hook.
unsafe fn decide(state: *mut ffi::lua_State, ar: *mut ffi::lua_Debug, step: u64) -> Action {
    // The thread's identity, as `mlua::Thread::to_pointer` gives it for the wrappers.
    let thread = state as usize;
    // SAFETY: `state` is the live thread Lua runs the hook on; this only reads its flags.
    let yieldable = unsafe { ffi::lua_isyieldable(state) != 0 };
    std::panic::catch_unwind(AssertUnwindSafe(|| {
        match slice::check(step, TIME_SLICE) {
            Check::Continue => Action::Continue,
            // Never the call's own thread (see `mark_sliced`), and only a thread that can yield:
            // a slice can wait until the script is back where it can.
            // SAFETY: (memory) as above; `lua_gc` with a count option only reads the state's
            // count of bytes in use.
            Check::Yield
                if yieldable
                    && slice::may_pause(unsafe { memory(state) } + pausable::held())
                    && slice::mark_sliced(thread) =>
            {
                // SAFETY: as for `decide`.
                unsafe { note_load_position(state, ar) };
                Action::Yield
            }
            Check::Yield => {
                if !yieldable {
                    slice::owe_pause();
                }
                Action::Continue
            }
            Check::Abort(a) => {
                // SAFETY: as for `decide`.
                unsafe { note_load_position(state, ar) };
                // Yielded, the coroutine is stopped by whoever resumed it (see `guard`), outside
                // any hook; raised, the abort unwinds to a protected call that turns hooks on.
                if yieldable && slice::yield_for_abort(thread) {
                    Action::Yield
                } else {
                    Action::Raise(message(a))
                }
            }
        }
    }))
    .unwrap_or(Action::Continue)
}

/// Bytes of memory the state of thread `state` uses.
///
/// # Safety
/// `state` is a live thread, on the OS thread running its state.
unsafe fn memory(state: *mut ffi::lua_State) -> usize {
    // SAFETY: as the function says; the count options read a counter and change nothing.
    let (kib, bytes) = unsafe {
        (
            ffi::lua_gc(state, ffi::LUA_GCCOUNT, 0),
            ffi::lua_gc(state, ffi::LUA_GCCOUNTB, 0),
        )
    };
    usize::try_from(kib).unwrap_or(0) * 1024 + usize::try_from(bytes).unwrap_or(0)
}

/// While scripts load, notes where the hook interrupted the script being loaded, for the
/// startup error if the load is stopped. Noted at every pause too, not only at the stop: the
/// stop may be found where no script frame is on the stack (the guard's loop that resumes the
/// load between two pauses, on another thread), and the last place the script itself was is
/// then the one to name.
///
/// # Safety
/// `state` and `ar` are what Lua passed to the running hook.
unsafe fn note_load_position(state: *mut ffi::lua_State, ar: *mut ffi::lua_Debug) {
    if slice::running_call().is_none_or(|c| &*c.method != LOADING) {
        return;
    }
    // SAFETY: as the function says.
    if let Some(at) = unsafe { script_position(state, ar) } {
        LOAD_STOPPED_AT.with(|l| *l.borrow_mut() = Some(at));
    }
}

/// Frames looked at for a script's own one (the library functions written in Lua call at
/// most a few deep between a script and the hook).
const SCRIPT_FRAME_SEARCH: c_int = 32;

/// The source (without its `@`) and line where a script file's own code is, in the function
/// the hook interrupted or the nearest function below it that comes from a file (the server's
/// own Lua, the guard's or the libraries', comes from no file), if any.
///
/// # Safety
/// `state` and `ar` are what Lua passed to the running hook.
unsafe fn script_position(
    state: *mut ffi::lua_State,
    ar: *mut ffi::lua_Debug,
) -> Option<(String, usize)> {
    // SAFETY: `ar` is the activation record Lua passed to this hook, valid while it runs;
    // "Sl" fills in the interrupted function's source and current line and raises no error.
    // Each lower frame goes into a record of its own, filled by `lua_getstack` and
    // `lua_getinfo` alone, which read the thread's stack and change nothing.
    unsafe {
        if let Some(at) = file_position(state, ar) {
            return Some(at);
        }
        for level in 1..SCRIPT_FRAME_SEARCH {
            let mut frame: ffi::lua_Debug = std::mem::zeroed();
            if ffi::lua_getstack(state, level, &mut frame) == 0 {
                return None;
            }
            if let Some(at) = file_position(state, &mut frame) {
                return Some(at);
            }
        }
    }
    None
}

/// The file and current line of the function `ar` describes, if it comes from a file.
///
/// # Safety
/// `ar` is the hook's record or one `lua_getstack` filled for `state`.
unsafe fn file_position(
    state: *mut ffi::lua_State,
    ar: *mut ffi::lua_Debug,
) -> Option<(String, usize)> {
    // SAFETY: as the function says; "Sl" raises no error.
    let (source, line) = unsafe {
        if ffi::lua_getinfo(state, c"Sl".as_ptr(), ar) == 0 || (*ar).source.is_null() {
            return None;
        }
        (
            std::slice::from_raw_parts((*ar).source.cast::<u8>(), (*ar).srclen),
            (*ar).currentline,
        )
    };
    let file = source.strip_prefix(b"@")?;
    Some((
        String::from_utf8_lossy(file).into_owned(),
        usize::try_from(line).unwrap_or(0),
    ))
}

/// What a script sees of the abort (the client is answered from the call's record of it).
fn message(a: Abort) -> &'static CStr {
    match a {
        Abort::Budget(_) => c"the script ran past its budget of Lua instructions",
        Abort::Time(_) => c"the script ran past its time budget",
        Abort::Deadline => c"the call's deadline passed",
        Abort::Cancelled => c"the call was cancelled",
        Abort::Memory => c"not enough memory: this call holds the most of its state's memory",
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Instant;

    use mlua::{Function, Lua, ThreadStatus};

    use super::*;
    use crate::script::context::CallShared;

    fn meter(budget: u64) -> Arc<CallShared> {
        timed_meter(budget, Duration::from_secs(3600))
    }

    fn timed_meter(budget: u64, time_budget: Duration) -> Arc<CallShared> {
        CallShared::for_test(budget, time_budget)
    }

    fn hooked() -> Lua {
        let lua = Lua::new();
        install(&lua, true).unwrap();
        lua
    }

    /// Every kind of thread a state runs carries the hook: the main thread, threads made from
    /// Rust (fresh and reset for reuse), and coroutines made by scripts in either.
    #[test]
    fn every_thread_carries_the_hook() {
        // SAFETY: the debug library, only to read the hooks back.
        let lua = unsafe { Lua::unsafe_new_with(mlua::StdLib::ALL, mlua::LuaOptions::new()) };
        install(&lua, true).unwrap();
        let hook_of: Function = lua
            .load(
                r#"
                local co = ...
                local function show(h, mask, count) return tostring(h) .. "/" .. mask .. "/" .. tostring(count) end
                local inner = coroutine.create(function() end)
                return show(debug.gethook(co)), show(debug.gethook(inner))
                "#,
            )
            .into_function()
            .unwrap();
        let expected = format!("external hook//{STEP}");
        let main: (String, String) = hook_of.call(lua.current_thread()).unwrap();
        assert_eq!(main, (expected.clone(), expected.clone()));
        let thread = lua.create_thread(hook_of.clone()).unwrap();
        let made: (String, String) = hook_of.call(thread.clone()).unwrap();
        assert_eq!(made, (expected.clone(), expected.clone()));
        // Inside the thread made from Rust: itself and a coroutine it makes.
        let inside: (String, String) = thread.resume(thread.clone()).unwrap();
        assert_eq!(inside, (expected.clone(), expected.clone()));
        thread.reset(hook_of.clone()).unwrap();
        let reset: (String, String) = thread.resume(thread.clone()).unwrap();
        assert_eq!(reset, (expected.clone(), expected));
    }

    /// The main thread, where nothing can yield: the abort is raised as an error.
    #[test]
    fn stops_an_endless_loop_on_the_main_thread() {
        let lua = hooked();
        let spin: Function = lua.load("while true do end").into_function().unwrap();
        let call = meter(1_000_000);
        let err = slice::with_call(&call, || spin.call::<()>(())).unwrap_err();
        assert!(err.to_string().contains("budget"), "{err}");
        assert_eq!(call.aborted(), Some(Abort::Budget(1_000_000)));
    }

    /// Resumes `thread` until it is no longer yielded for a time slice (at most `n` times).
    fn resume_past_slices(
        call: &Arc<CallShared>,
        thread: &mlua::Thread,
        n: usize,
    ) -> mlua::Result<mlua::MultiValue> {
        let mut out = slice::with_call(call, || thread.resume(()));
        for _ in 0..n {
            let sliced =
                slice::with_call(call, || slice::take_sliced(thread.to_pointer() as usize));
            if !sliced || out.is_err() {
                break;
            }
            out = slice::with_call(call, || thread.resume(()));
        }
        out
    }

    /// A thread made from Rust, resumed from Rust: yielded for the abort, then raised.
    #[test]
    fn stops_an_endless_loop_in_a_thread_made_from_rust() {
        let lua = hooked();
        let spin: Function = lua.load("while true do end").into_function().unwrap();
        let thread = lua.create_thread(spin).unwrap();
        let call = meter(1_000_000);
        resume_past_slices(&call, &thread, 10_000).unwrap();
        assert_eq!(thread.status(), ThreadStatus::Resumable);
        assert_eq!(call.aborted(), Some(Abort::Budget(1_000_000)));
        let err = slice::with_call(&call, || thread.resume::<()>(())).unwrap_err();
        assert!(err.to_string().contains("budget"), "{err}");
    }

    /// Coroutines a script makes, in a thread made from Rust: yielded for the abort where they
    /// can yield (and raised when resumed again), raised where they cannot (a sort comparator).
    #[test]
    fn stops_endless_loops_in_coroutines_scripts_make() {
        let lua = hooked();
        let f: Function = lua
            .load(
                r#"
                local raised = coroutine.create(function()
                  table.sort({ 3, 2, 1 }, function() while true do end end)
                end)
                local ok1, e1 = coroutine.resume(raised)
                local yielded = coroutine.create(function() while true do end end)
                local ok2, e2
                repeat ok2, e2 = coroutine.resume(yielded) until not ok2
                return ok1, e1, ok2, e2
                "#,
            )
            .into_function()
            .unwrap();
        let thread = lua.create_thread(f).unwrap();
        let call = meter(1_000_000);
        let out = resume_past_slices(&call, &thread, 10_000).unwrap();
        let (ok1, e1, ok2, e2): (bool, String, bool, String) = lua.unpack_multi(out).unwrap();
        assert!(!ok1);
        assert!(e1.contains("budget"), "{e1}");
        assert!(!ok2);
        assert!(e2.contains("budget"), "{e2}");
    }

    /// A busy coroutine is yielded at its time slice, and is none the worse for it.
    #[test]
    fn yields_a_coroutine_at_its_time_slice() {
        let lua = hooked();
        let f: Function = lua
            .load("local x = 0 for i = 1, 1e9 do x = x + i end return x")
            .into_function()
            .unwrap();
        let thread = lua.create_thread(f).unwrap();
        let call = meter(u64::MAX);
        let started = Instant::now();
        slice::with_call(&call, || thread.resume::<()>(())).unwrap();
        assert_eq!(thread.status(), ThreadStatus::Resumable);
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(slice::with_call(&call, || slice::take_sliced(
            thread.to_pointer() as usize
        )));
        assert!(call.aborted().is_none());
    }

    /// CPU time this thread has used.
    #[cfg(target_os = "linux")]
    fn thread_cpu() -> Duration {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `clock_gettime` writes the thread's CPU clock into `ts`.
        assert_eq!(
            unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) },
            0
        );
        Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
    }

    /// Where instructions are counted, a pattern match still running at the end of its time
    /// slice has the call paused at the next instruction, as the clock does. The count hook
    /// was left alone, and checked only 10 000 instructions later: the Lua loop that resumes
    /// the match ran that many first, each resume matching on, a tenth of a second or more.
    #[test]
    #[cfg(target_os = "linux")]
    fn counting_pauses_a_long_match_at_its_time_slice() {
        let lua = hooked();
        crate::script::stdlib::install(&lua).unwrap();
        let f: Function = lua
            .load(r#"return (("x"):rep(40000)):find("x*y")"#)
            .into_function()
            .unwrap();
        let thread = lua.create_thread(f).unwrap();
        let call = meter(u64::MAX);
        let _within = preempt::within(thread.state());
        let cpu = thread_cpu();
        slice::with_call(&call, || thread.resume::<()>(())).unwrap();
        let took = thread_cpu() - cpu;
        assert_eq!(thread.status(), ThreadStatus::Resumable);
        // Two time slices of matching (the first attempt, then the job again up to where it
        // was) and a step: a few milliseconds of CPU.
        assert!(
            took < Duration::from_millis(40),
            "paused after {took:?} of CPU"
        );
        assert!(call.aborted().is_none());
    }

    /// No call running: the hook lets everything run.
    #[test]
    fn lets_code_run_outside_any_call() {
        let lua = hooked();
        let n: i64 = lua
            .load("local x = 0 for i = 1, 100000 do x = x + 1 end return x")
            .eval()
            .unwrap();
        assert_eq!(n, 100_000);
    }

    /// Where the clock pauses scripts, no hook is set at all until a signal comes.
    #[test]
    #[cfg(target_os = "linux")]
    fn the_clock_leaves_threads_without_a_hook() {
        assert!(preempt::available(), "Linux pauses scripts by the clock");
        let lua = Lua::new();
        assert!(!install(&lua, false).unwrap());
        // SAFETY: reads the main thread's hook.
        let hook =
            unsafe { lua.exec_raw::<()>((), |state| assert!(ffi::lua_gethook(state).is_none())) };
        hook.unwrap();
    }

    /// The clock's signal stops an endless loop in a thread made from Rust, noted as running,
    /// at its time budget: yielded for the abort, then raised when resumed.
    #[test]
    #[cfg(target_os = "linux")]
    fn the_clock_stops_an_endless_loop_at_its_time_budget() {
        assert!(preempt::available(), "Linux pauses scripts by the clock");
        let lua = Lua::new();
        install(&lua, false).unwrap();
        let _clock = preempt::clock();
        let spin: Function = lua.load("while true do end").into_function().unwrap();
        let thread = lua.create_thread(spin).unwrap();
        let call = timed_meter(u64::MAX, Duration::from_millis(50));
        let started = Instant::now();
        let _within = preempt::within(thread.state());
        resume_past_slices(&call, &thread, 100_000).unwrap();
        assert_eq!(call.aborted(), Some(Abort::Time(Duration::from_millis(50))));
        assert!(started.elapsed() < Duration::from_secs(30));
        let err = slice::with_call(&call, || thread.resume::<()>(())).unwrap_err();
        assert!(err.to_string().contains("time budget"), "{err}");
    }

    /// The clock's signal yields a busy coroutine at its time slice, and the thread is none the
    /// worse for it: the loop finishes with the right sum when resumed.
    #[test]
    #[cfg(target_os = "linux")]
    fn the_clock_yields_a_coroutine_at_its_time_slice() {
        assert!(preempt::available(), "Linux pauses scripts by the clock");
        let lua = Lua::new();
        install(&lua, false).unwrap();
        let _clock = preempt::clock();
        let f: Function = lua
            .load("local x = 0 for i = 1, 3e8 do x = x + 1 end return x")
            .into_function()
            .unwrap();
        let thread = lua.create_thread(f).unwrap();
        let call = meter(u64::MAX);
        let _within = preempt::within(thread.state());
        slice::with_call(&call, || thread.resume::<()>(())).unwrap();
        assert_eq!(thread.status(), ThreadStatus::Resumable);
        assert!(slice::with_call(&call, || slice::take_sliced(
            thread.to_pointer() as usize
        )));
        let mut out: Option<i64> = None;
        for _ in 0..100_000 {
            out = slice::with_call(&call, || thread.resume::<Option<i64>>(())).unwrap();
            if thread.status() != ThreadStatus::Resumable {
                break;
            }
        }
        assert_eq!(out, Some(300_000_000));
        assert!(call.aborted().is_none());
    }
}
