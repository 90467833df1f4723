//! Setting the clock's one-shot hook in a bounded time, however deep the script's calls are,
//! and telling the hook how deep they are.
//!
//! Why: `lua_sethook` marks every Lua frame of the thread "to trap", walking its whole list of
//! call frames. Lua lets a script's calls nest until its stack holds a million values: a
//! function that recurses without end (`local function r() return 1 + r() end`) is about
//! 300,000 frames deep when it overflows, and the frames lie wherever the allocator put them.
//! The clock's signal came every millisecond of CPU and the walk took longer than that, so the
//! thread did little but walk: one caught overflow took a quarter of a second, and the next one
//! on the same state, its frames scattered further, never reached the hook before the watchdog
//! replaced the state.
//!
//! Only the top of the stack needs the mark. A Lua function about to start, or one that a
//! return goes back to, reads the thread's hook mask itself; a running one reads its own
//! frame's mark at every jump and after every call; a C function returns to the Lua frame
//! below it, which reads its mark then. So [`arm`] stores what `lua_sethook` stores and marks at
//! most [`TOP`] frames from the top. It writes Lua 5.4's `lua_State` and `CallInfo` fields
//! itself, by their offsets in the vendored Lua 5.4; [`fits`] checks those offsets once on a
//! state of its own, through the public API, and when anything differs the handler calls
//! `lua_sethook` as before.
//!
//! The same fields tell the hook how deep a thread's calls nest ([`stack_in_use`],
//! [`frames_over`], [`frames_kept`]), which Lua's API says only by a walk from the top
//! (`lua_getstack`): the hook stops a recursion at [`super::hook::MAX_CALLS`], so that no walk
//! of Lua's own (growing the stack, unwinding an error, collecting) gets long.

#![allow(unsafe_code)]

use std::ffi::c_int;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use mlua::ffi;

/// Frames marked from the top: C frames nest at most a few hundred deep, and a run of them is
/// rare; the first Lua frame is all that must be marked.
const TOP: usize = 32;

/// Byte offsets in Lua 5.4's `lua_State` (x86-64 and aarch64, 64-bit pointers).
mod state {
    pub const NCI: usize = 12;
    pub const TOP: usize = 16;
    pub const CI: usize = 32;
    pub const STACK_LAST: usize = 40;
    pub const STACK: usize = 48;
    pub const BASE_CI: usize = 96;
    pub const HOOK: usize = 160;
    pub const BASEHOOKCOUNT: usize = 184;
    pub const HOOKCOUNT: usize = 188;
    pub const HOOKMASK: usize = 192;
}

/// Byte offsets in Lua 5.4's `CallInfo`.
mod call_info {
    pub const PREVIOUS: usize = 16;
    pub const TRAP: usize = 40;
    pub const CALLSTATUS: usize = 62;
    /// `CIST_C`: the frame is a C function's.
    pub const C: u16 = 1 << 1;
}

/// Whether [`arm`] may be used: the offsets above are those of the Lua this binary runs.
pub fn fits() -> bool {
    static FITS: OnceLock<bool> = OnceLock::new();
    *FITS.get_or_init(|| cfg!(target_pointer_width = "64") && check())
}

/// Sets `hook` on `state` with `mask` and `count`, as `lua_sethook` does, marking only the top
/// frames. Safe to call from a signal handler that interrupted `state`.
///
/// # Safety
/// `state` is a live Lua thread, and [`fits`] said true.
pub unsafe fn arm(state: *mut ffi::lua_State, hook: ffi::lua_Hook, mask: c_int, count: c_int) {
    let base = state.cast::<u8>();
    // SAFETY: the offsets are those of this Lua's `lua_State` (checked by `fits`); the stores
    // are those `lua_sethook` makes, in its order, which Lua reads safely when a signal
    // interrupts it; a frame's mark is an `int` Lua reads as volatile.
    unsafe {
        base.add(state::HOOK)
            .cast::<Option<ffi::lua_Hook>>()
            .write_volatile(Some(hook));
        base.add(state::BASEHOOKCOUNT)
            .cast::<c_int>()
            .write_volatile(count);
        base.add(state::HOOKCOUNT)
            .cast::<c_int>()
            .write_volatile(count);
        base.add(state::HOOKMASK)
            .cast::<c_int>()
            .write_volatile(mask);
        let mut ci = base.add(state::CI).cast::<*mut u8>().read_volatile();
        for _ in 0..TOP {
            if ci.is_null() {
                break;
            }
            if ci.add(call_info::CALLSTATUS).cast::<u16>().read() & call_info::C == 0 {
                ci.add(call_info::TRAP).cast::<c_int>().write_volatile(1);
            }
            ci = ci.add(call_info::PREVIOUS).cast::<*mut u8>().read();
        }
    }
}

/// Values on `state`'s stack (its frames' registers and what they pushed), or `None` where the
/// offsets do not fit. Safe in a hook.
///
/// # Safety
/// `state` is a live Lua thread.
pub unsafe fn stack_in_use(state: *mut ffi::lua_State) -> Option<usize> {
    if !fits() {
        return None;
    }
    let base = state.cast::<u8>();
    // SAFETY: the offsets are those of this Lua's `lua_State` (checked by `fits`).
    let (top, stack) = unsafe {
        (
            base.add(state::TOP).cast::<usize>().read(),
            base.add(state::STACK).cast::<usize>().read(),
        )
    };
    Some(top.saturating_sub(stack) / 16)
}

/// How many call frames `state` has made and keeps for reuse (its calls' deepest nesting
/// lately; Lua frees half of the unused ones at each collection), modulo 65,536, or `None`
/// where the offsets do not fit. Safe in a hook.
///
/// # Safety
/// `state` is a live Lua thread.
pub unsafe fn frames_kept(state: *mut ffi::lua_State) -> Option<usize> {
    if !fits() {
        return None;
    }
    // SAFETY: the offset is that of this Lua's `lua_State` (checked by `fits`).
    Some(usize::from(unsafe {
        state.cast::<u8>().add(state::NCI).cast::<u16>().read()
    }))
}

/// Whether `state` has more than `limit` call frames (Lua functions' and C functions'), or
/// `None` where the offsets do not fit. Looks at `limit + 1` frames at most. Safe in a hook.
///
/// # Safety
/// `state` is a live Lua thread.
pub unsafe fn frames_over(state: *mut ffi::lua_State, limit: usize) -> Option<bool> {
    if !fits() {
        return None;
    }
    // SAFETY: the offsets are those of this Lua's `lua_State` and `CallInfo` (checked by
    // `fits`); the frames' links end in null.
    unsafe {
        let mut ci = state.cast::<u8>().add(state::CI).cast::<*mut u8>().read();
        for _ in 0..=limit {
            if ci.is_null() {
                return Some(false);
            }
            ci = ci.add(call_info::PREVIOUS).cast::<*mut u8>().read();
        }
        Some(!ci.is_null())
    }
}

/// What `probe` saw of the frames, from a C function a Lua function calls.
static PROBED: AtomicBool = AtomicBool::new(false);

/// A C function called from Lua: its frame (C) is on top, a Lua frame below it.
unsafe extern "C-unwind" fn probe(state: *mut ffi::lua_State) -> c_int {
    let base = state.cast::<u8>();
    // SAFETY: reads of the frames of the live `state`, at the offsets being checked; the
    // pointers read are checked for null before they are followed.
    let seen = unsafe {
        let ci = base.add(state::CI).cast::<*mut u8>().read();
        let below = ci.add(call_info::PREVIOUS).cast::<*mut u8>().read();
        !below.is_null()
            && ci.add(call_info::CALLSTATUS).cast::<u16>().read() & call_info::C != 0
            && below.add(call_info::CALLSTATUS).cast::<u16>().read() & call_info::C == 0
            && below.add(call_info::TRAP).cast::<c_int>().read() == 0
            // The chunk's frame and this one, besides the base frame Lua does not count.
            && base.add(state::NCI).cast::<u16>().read() == 2
    };
    PROBED.store(seen, Ordering::Relaxed);
    0
}

unsafe extern "C-unwind" fn nothing(_: *mut ffi::lua_State, _: *mut ffi::lua_Debug) {}

/// Checks the offsets on a fresh state of its own, against what the public API does.
fn check() -> bool {
    // SAFETY: a state made and closed here; every read is at an offset inside `lua_State`
    // (a few hundred bytes) or inside a `CallInfo` whose address Lua stored.
    unsafe {
        let l = ffi::luaL_newstate();
        if l.is_null() {
            return false;
        }
        let base = l.cast::<u8>();
        let ci = base.add(state::CI).cast::<*mut u8>().read();
        let stack = base.add(state::STACK).cast::<usize>().read();
        let stack_last = base.add(state::STACK_LAST).cast::<usize>().read();
        let mut fits = ci == base.add(state::BASE_CI)
            && ci.add(call_info::PREVIOUS).cast::<*mut u8>().read().is_null()
            && ci.add(call_info::CALLSTATUS).cast::<u16>().read() & call_info::C != 0
            // A new thread's stack: 2 * LUA_MINSTACK values of 16 bytes.
            && stack_last.wrapping_sub(stack) == 2 * 20 * 16;
        let top = base.add(state::TOP).cast::<usize>().read();
        ffi::lua_pushnil(l);
        ffi::lua_pushnil(l);
        fits = fits
            && base
                .add(state::TOP)
                .cast::<usize>()
                .read()
                .wrapping_sub(top)
                == 2 * 16;
        ffi::lua_settop(l, 0);
        ffi::lua_sethook(l, Some(nothing), ffi::LUA_MASKCOUNT, 7);
        fits = fits
            && base
                .add(state::HOOK)
                .cast::<Option<ffi::lua_Hook>>()
                .read()
                .is_some_and(|h| std::ptr::fn_addr_eq(h, nothing as ffi::lua_Hook))
            && base.add(state::BASEHOOKCOUNT).cast::<c_int>().read() == 7
            && base.add(state::HOOKCOUNT).cast::<c_int>().read() == 7
            && base.add(state::HOOKMASK).cast::<c_int>().read() == ffi::LUA_MASKCOUNT;
        ffi::lua_sethook(l, None, 0, 0);
        fits = fits && base.add(state::HOOKMASK).cast::<c_int>().read() == 0;
        PROBED.store(false, Ordering::Relaxed);
        ffi::lua_pushcfunction(l, probe);
        ffi::lua_setglobal(l, c"probe".as_ptr());
        fits = fits
            && ffi::luaL_loadstring(l, c"probe() local x = 1 return x".as_ptr()) == ffi::LUA_OK
            && ffi::lua_pcall(l, 0, 0, 0) == ffi::LUA_OK
            && PROBED.load(Ordering::Relaxed);
        ffi::lua_close(l);
        fits
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn offsets_fit_the_vendored_lua() {
        assert!(super::fits());
    }
}
