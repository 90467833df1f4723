//! Which call a ctx belongs to, checked without a handle per check.
//!
//! A call's ctx is a plain table (see `context`). As the call starts, `bind(ctx)` notes the
//! table's address in the call; every ctx method and field first asks `owned(ctx)`, which
//! compares the table it was called on with the running call's. Both are Lua C functions
//! reading the address off the stack: through mlua, a table argument costs a handle (an
//! allocation and a slot of the reference stack) on every method call, `ctx:send` included.
//! An address compared here is only ever that of a live table: a ctx whose table was
//! collected cannot be asked about, and a new table at the same address is a new call's.

#![allow(unsafe_code)]

use std::ffi::c_int;
use std::sync::atomic::Ordering;

use mlua::{ffi, Function, Lua};

use super::slice;

/// `bind(ctx)`: names `ctx` the running call's own; true if that call was stopped meanwhile
/// (or no call is running), for the runner to raise its abort.
///
/// # Safety
/// Called by Lua as a C function.
unsafe extern "C-unwind" fn bind(state: *mut ffi::lua_State) -> c_int {
    // SAFETY: Lua called this with its own state; index 1 is the first argument (none: NULL).
    let at = unsafe { ffi::lua_topointer(state, 1) } as usize;
    let stopped = slice::with_running_call(|call| match call {
        Some(call) => {
            call.ctx.store(at, Ordering::Release);
            call.aborted().is_some()
        }
        None => true,
    });
    // SAFETY: as above; a C function has room for one result (LUA_MINSTACK).
    unsafe { ffi::lua_pushboolean(state, c_int::from(stopped)) };
    1
}

/// `owned(ctx)`: whether `ctx` is the running call's own ctx.
///
/// # Safety
/// Called by Lua as a C function.
unsafe extern "C-unwind" fn owned(state: *mut ffi::lua_State) -> c_int {
    // SAFETY: Lua called this with its own state; index 1 is the first argument (none, or a
    // value that is no object: NULL).
    let at = unsafe { ffi::lua_topointer(state, 1) } as usize;
    let mine = at != 0
        && slice::with_running_call(|call| {
            call.is_some_and(|call| {
                call.ctx.load(Ordering::Acquire) == at && !call.ended.load(Ordering::Acquire)
            })
        });
    // SAFETY: as above.
    unsafe { ffi::lua_pushboolean(state, c_int::from(mine)) };
    1
}

/// `(owned, bind)` for `lua`.
pub fn functions(lua: &Lua) -> mlua::Result<(Function, Function)> {
    // SAFETY: both follow Lua's calling convention for C functions, read only their first
    // argument and push one boolean; neither raises.
    unsafe { Ok((lua.create_c_function(owned)?, lua.create_c_function(bind)?)) }
}
