//! Pausing scripts by the clock instead of by counting their instructions.
//!
//! Lua 5.4 can only interrupt running Lua code through a hook, and a count hook, however rarely
//! it fires, makes the VM stop at every instruction to count it: scripts ran about 1.7 times
//! slower for it. So by default no hook is set. Each thread that runs Lua has a timer on its own
//! CPU clock that sends it a signal every [`INTERVAL`] of CPU it uses; the signal handler sets a
//! one-shot hook on the Lua thread running at that moment, and that hook does what the count
//! hook did (checks the budget, deadline and cancellation, yields a call whose time slice is
//! over, see [`super::hook`]) and removes itself. An idle thread uses no CPU and gets no signal.
//!
//! `lua_sethook` is the one Lua function meant to be called from a signal handler (the `lua`
//! program stops a script on Ctrl-C that way): it only stores the hook and marks the thread's
//! frames to trap. The handler must know which Lua thread is running: every resume of a
//! coroutine goes through [`resume`] (the `coroutine.resume` the guard wraps), and the executor's
//! resume of a call's own thread through [`Within`], both of which note the thread for the
//! duration in a thread-local the handler reads. Code that runs in none of these (conversion
//! builders called from Rust) is short and bounded by the message size.
//!
//! Linux only (`timer_create` with `SIGEV_THREAD_ID`); elsewhere [`supported`] is false and the
//! hook counts instructions as before.

#![allow(unsafe_code)]

use std::cell::Cell;
use std::ffi::c_int;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use mlua::ffi;

/// CPU time a thread runs between two signals. The kernel checks CPU timers at its clock tick,
/// so on a 250 Hz kernel the signals come every 4 ms whatever this asks.
pub const INTERVAL: Duration = Duration::from_millis(1);

thread_local! {
    /// The Lua thread this OS thread is running, for the signal handler (null: none noted).
    static RUNNING: Cell<*mut ffi::lua_State> = const { Cell::new(std::ptr::null_mut()) };
    /// Whether a [`Clock`] of this thread is live.
    static ARMED: Cell<bool> = const { Cell::new(false) };
    /// Signals this thread's clock has sent, counted by the handler (see [`signals`]).
    static SIGNALS: AtomicU32 = const { AtomicU32::new(0) };
}

/// How many signals this thread's clock has sent so far, or `None` when no clock signals it.
/// Work done in Rust or C, where no hook can stop it, asks the clock whether the call is over
/// its time when this changed: it does every millisecond of CPU the thread uses, so that work
/// needs no clock reading of its own to find out when to look, and is never long unchecked
/// (the work it counts, such as the tables an encoder reads, may each take long: a table's
/// empty array slots are stepped over by every walk of it).
pub fn signals() -> Option<u32> {
    ARMED
        .with(Cell::get)
        .then(|| SIGNALS.with(|s| s.load(Ordering::Relaxed)))
}

/// Whether this platform pauses scripts by the clock (else they count instructions).
pub const fn supported() -> bool {
    cfg!(target_os = "linux")
}

/// Notes `state` as the running Lua thread until the returned guard drops.
pub fn within(state: *mut ffi::lua_State) -> Within {
    Within(RUNNING.with(|r| r.replace(state)))
}

/// The Lua thread noted as running on this OS thread (null: none).
pub fn running() -> *mut ffi::lua_State {
    RUNNING.with(Cell::get)
}

/// Puts back the Lua thread that ran before, also on unwinding.
pub struct Within(*mut ffi::lua_State);

impl Drop for Within {
    fn drop(&mut self) {
        RUNNING.with(|r| r.set(self.0));
    }
}

/// Whether the clock can pause scripts here (else the hook counts instructions): Linux, and a
/// first timer could be made.
pub fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        DIRECT.store(super::trap::fits(), Ordering::Relaxed);
        supported() && imp::Timer::start().is_some()
    })
}

/// Makes this thread's CPU clock signal it until the returned value drops (or, when it already
/// does, leaves that as it is). State threads keep one for their life; a thread that loads
/// scripts keeps one while they load.
pub fn clock() -> Clock {
    if !available() || ARMED.with(Cell::get) {
        return Clock(None);
    }
    let timer = imp::Timer::start();
    ARMED.with(|a| a.set(timer.is_some()));
    Clock(timer)
}

/// This thread's clock signals, while held.
pub struct Clock(Option<imp::Timer>);

impl Drop for Clock {
    fn drop(&mut self) {
        if self.0.take().is_some() {
            ARMED.with(|a| a.set(false));
        }
    }
}

/// Whether the signal handler sets the hook through [`super::trap::arm`] (in a bounded time)
/// rather than `lua_sethook`; set before the first clock starts.
static DIRECT: AtomicBool = AtomicBool::new(false);

/// Called by the signal handler, on the thread the signal interrupted.
fn on_signal() {
    SIGNALS.with(|s| s.fetch_add(1, Ordering::Relaxed));
    let state = RUNNING.with(Cell::get);
    if !state.is_null() {
        let hook: ffi::lua_Hook = super::hook::preempt_hook;
        if DIRECT.load(Ordering::Relaxed) {
            // SAFETY: as below; `DIRECT` says `trap::fits`.
            unsafe { super::trap::arm(state, hook, ffi::LUA_MASKCOUNT, 1) };
            return;
        }
        // SAFETY: `state` is the Lua thread this OS thread is running (noted by `within` and
        // `resume` for exactly as long), so it is alive; `lua_sethook` is safe to call from a
        // signal handler that interrupted it: it stores the hook and its count and marks the
        // thread's frames to trap (all of them: see `trap` for why that is avoided).
        unsafe {
            ffi::lua_sethook(
                state,
                Some(super::hook::preempt_hook),
                ffi::LUA_MASKCOUNT,
                1,
            )
        };
    }
}

/// Lua's own `coroutine.resume`, kept for [`resume`].
static ORIGINAL_RESUME: OnceLock<ffi::lua_CFunction> = OnceLock::new();

/// Keeps Lua's own `coroutine.resume` (the same C function in every state) for [`resume`].
pub fn keep_original_resume(f: ffi::lua_CFunction) {
    let _ = ORIGINAL_RESUME.set(f);
}

/// `coroutine.resume`, noting the coroutine as running exactly while Lua's `lua_resume` runs
/// it.
///
/// Lua's own function cannot simply be wrapped: it can raise after it has started (a memory
/// error making its "too many arguments" or "too many results" message, or a "cannot resume"
/// one), and a raise leaves by `longjmp`, past the code that would take the note back. The
/// note then named a coroutine that was not running (the resumer's loops were never paused
/// again) and that could be freed while the signal handler still set hooks on it. So Lua's
/// function runs only where it resumes nothing (not a coroutine, not suspended, or too many
/// arguments for its stack: it fails as usual), and a suspended coroutine is resumed here as
/// Lua resumes it, with the note taken back before anything that can raise. `lua_resume`
/// itself can still raise before it protects anything in one case: past Lua's C-stack limit,
/// with memory too full to make its "C stack overflow" message. The note then stays at most
/// until the executor's poll or the script load around it ends, whose [`Within`] takes it back.
///
/// # Safety
/// Called by Lua as a C function.
pub unsafe extern "C-unwind" fn resume(state: *mut ffi::lua_State) -> c_int {
    let Some(original) = ORIGINAL_RESUME.get().copied() else {
        // SAFETY: Lua called this with its own state; the message is static.
        unsafe { ffi::luaL_error(state, c"coroutine.resume is not set up".as_ptr()) };
        return 0;
    };
    // SAFETY: Lua called this with its own state; index 1 is the first argument.
    let co = unsafe { ffi::lua_tothread(state, 1) };
    // SAFETY: as above; `co` is a live coroutine (it is on the stack).
    let narg = unsafe { ffi::lua_gettop(state) } - 1;
    if co.is_null() || !unsafe { suspended(co) } || unsafe { ffi::lua_checkstack(co, narg) } == 0 {
        // Lua's function raises its argument error or returns false and its message, and runs
        // no Lua code: nothing is noted.
        // SAFETY: as above.
        return unsafe { original(state) };
    }
    let mut nres: c_int = 0;
    let previous = RUNNING.with(|r| r.replace(co));
    // SAFETY: as above; the arguments are on `state`'s stack above the coroutine, and `co` has
    // room for them (checked). `lua_resume` of a suspended coroutine catches every error of
    // the coroutine and returns it as a status.
    let status = unsafe {
        ffi::lua_xmove(state, co, narg);
        ffi::lua_resume(co, state, narg, &mut nres)
    };
    RUNNING.with(|r| r.set(previous));
    // SAFETY: as above (what follows is Lua's `auxresume` and `luaB_coresume`).
    unsafe {
        if status == ffi::LUA_OK || status == ffi::LUA_YIELD {
            if ffi::lua_checkstack(state, nres + 1) == 0 {
                ffi::lua_pop(co, nres);
                ffi::lua_pushboolean(state, 0);
                ffi::lua_pushstring(state, c"too many results to resume".as_ptr());
                return 2;
            }
            ffi::lua_pushboolean(state, 1);
            ffi::lua_xmove(co, state, nres);
            nres + 1
        } else {
            ffi::lua_pushboolean(state, 0);
            ffi::lua_xmove(co, state, 1);
            2
        }
    }
}

/// `owed_pause()`, asked after every resume a script's coroutine makes: true when the running
/// call was aborted (the caller then raises the abort) or owes a pause (forgotten here, the
/// caller makes it). A C function, as it runs for every resume: an mlua callback cost several
/// times the comparison it makes.
///
/// # Safety
/// Called by Lua as a C function.
unsafe extern "C-unwind" fn owed_pause(state: *mut ffi::lua_State) -> c_int {
    let due = !matches!(super::slice::abort_or_owed_pause(), Ok(false));
    // SAFETY: Lua called this with its own state; a C function has room for one result.
    unsafe { ffi::lua_pushboolean(state, c_int::from(due)) };
    1
}

/// [`owed_pause`] as a function of `lua`.
pub fn owed_pause_function(lua: &mlua::Lua) -> mlua::Result<mlua::Function> {
    // SAFETY: `owed_pause` follows Lua's calling convention for C functions and raises nothing.
    unsafe { lua.create_c_function(owed_pause) }
}

/// Whether `coroutine.resume` would run `co` (Lua's `coroutine.status` says "suspended").
///
/// # Safety
/// `co` is a live Lua thread.
unsafe fn suspended(co: *mut ffi::lua_State) -> bool {
    // SAFETY: `co` is live; `lua_getstack` only fills the record given.
    unsafe {
        match ffi::lua_status(co) {
            ffi::LUA_YIELD => true,
            ffi::LUA_OK => {
                let mut ar: ffi::lua_Debug = std::mem::zeroed();
                // Frames: running or normal; none and nothing on its stack: dead.
                ffi::lua_getstack(co, 0, &mut ar) == 0 && ffi::lua_gettop(co) > 0
            }
            _ => false,
        }
    }
}

/// Replaces `coroutine.resume` (which the guard's wrappers call) by one that notes the
/// coroutine it runs, for the clock's signal .
pub fn track_resumes(lua: &mlua::Lua, coroutine: &mlua::Table) -> mlua::Result<()> {
    let original: mlua::Function = coroutine.raw_get("resume")?;
    let mut found = None;
    // SAFETY: `exec_raw` pushes the function on the stack and runs the closure in protected
    // mode; `lua_tocfunction` only reads it (Lua's `coroutine.resume` is a C function).
    unsafe {
        lua.exec_raw::<()>(original, |state| {
            found = mlua::ffi::lua_tocfunction(state, -1);
        })?;
    }
    let Some(original) = found else {
        return Err(mlua::Error::runtime("coroutine.resume is not Lua's own"));
    };
    keep_original_resume(original);
    // SAFETY: `preempt::resume` is a C function following Lua's calling convention.
    let tracked = unsafe { lua.create_c_function(resume)? };
    coroutine.raw_set("resume", tracked)
}

#[cfg(target_os = "linux")]
mod imp {
    use std::ffi::c_int;
    use std::sync::OnceLock;

    use super::INTERVAL;

    /// The real-time signal used, chosen once.
    fn signal() -> c_int {
        static SIGNAL: OnceLock<c_int> = OnceLock::new();
        *SIGNAL.get_or_init(|| libc::SIGRTMIN() + 3)
    }

    extern "C" fn handler(_: c_int) {
        super::on_signal();
    }

    fn install_handler() -> bool {
        static INSTALLED: OnceLock<bool> = OnceLock::new();
        *INSTALLED.get_or_init(|| {
            // SAFETY: a zeroed `sigaction` is valid; the handler only reads a thread-local and
            // calls `lua_sethook`, both safe in a signal handler. SA_RESTART so that interrupted
            // system calls go on.
            unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = handler as extern "C" fn(c_int) as usize;
                action.sa_flags = libc::SA_RESTART;
                libc::sigemptyset(&mut action.sa_mask);
                libc::sigaction(signal(), &action, std::ptr::null_mut()) == 0
            }
        })
    }

    /// A timer on its thread's CPU clock, signalling that thread every [`INTERVAL`].
    pub struct Timer(libc::timer_t);

    impl Timer {
        pub fn start() -> Option<Timer> {
            if !install_handler() {
                return None;
            }
            // SAFETY: plain libc calls with valid pointers; the timer is this thread's own and
            // signals only it.
            unsafe {
                let mut event: libc::sigevent = std::mem::zeroed();
                event.sigev_notify = libc::SIGEV_THREAD_ID;
                event.sigev_signo = signal();
                event.sigev_notify_thread_id = libc::gettid();
                let mut timer: libc::timer_t = std::ptr::null_mut();
                if libc::timer_create(libc::CLOCK_THREAD_CPUTIME_ID, &mut event, &mut timer) != 0 {
                    return None;
                }
                let every = libc::timespec {
                    tv_sec: 0,
                    tv_nsec: INTERVAL.as_nanos() as libc::c_long,
                };
                let spec = libc::itimerspec {
                    it_interval: every,
                    it_value: every,
                };
                if libc::timer_settime(timer, 0, &spec, std::ptr::null_mut()) != 0 {
                    libc::timer_delete(timer);
                    return None;
                }
                Some(Timer(timer))
            }
        }
    }

    impl Drop for Timer {
        fn drop(&mut self) {
            // SAFETY: the timer this value made and nothing else deletes.
            unsafe { libc::timer_delete(self.0) };
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    pub struct Timer;

    impl Timer {
        pub fn start() -> Option<Timer> {
            None
        }
    }
}
