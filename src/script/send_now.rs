//! `ctx:send`'s common case as a Lua C function.
//!
//! Why: a message sent through an mlua callback paid for the callback machinery and for a
//! handle to the message (a registry reference made and dropped) before any of the send's own
//! work; in a server stream of small messages that was about a sixth of each message. This
//! function reads the message where it lies on the Lua stack ([`outgoing_at`]) and sends it
//! when nothing about it is unusual: a reply type, a table the stack encoder takes or a frozen
//! table already encoded, a budget with room, an open stream. Anything else it leaves, by
//! returning nothing, to the mlua function `ctx:send` calls next, which does the same work
//! and reports every problem as before. It never raises a Lua error itself, so no Rust frame
//! is unwound by one, and a panic inside it is caught before it reaches Lua.

#![allow(unsafe_code)]

use std::ffi::c_int;
use std::panic::AssertUnwindSafe;

use mlua::{ffi, Function, Lua};

use super::context::{encoded_len, CallShared};
use super::convert::outgoing_at;
use super::outbox::TrySendError;
use super::requests::BYTES_PER_UNIT;
use super::slice;

/// The state's `send_now(msg)`: `true` if sent, `false` if parked for `wait_send` (the
/// client is slow), nothing if the mlua `try_send` must take it.
pub fn function(lua: &Lua) -> mlua::Result<Function> {
    // SAFETY: `send_now` follows Lua's C function protocol and raises no error.
    unsafe { lua.create_c_function(send_now) }
}

unsafe extern "C-unwind" fn send_now(l: *mut ffi::lua_State) -> c_int {
    std::panic::catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: `l` is the running thread of a state mlua made; its `Lua` outlives the call.
        let lua = unsafe { Lua::get_or_init_from_ptr(l) };
        let sent = slice::with_running_call(|call| {
            // SAFETY: argument 1 is the message; a C function has room for 20 values.
            call.and_then(|call| unsafe { call.send_at(lua, l, 1) })
        });
        match sent {
            Some(sent) => {
                // SAFETY: room for the one result, as above.
                unsafe { ffi::lua_pushboolean(l, c_int::from(sent)) };
                1
            }
            None => 0,
        }
    }))
    .unwrap_or(0)
}

impl CallShared {
    /// Sends the message at slot `idx` of `l` if nothing about it is unusual: `Some(true)`
    /// sent, `Some(false)` parked for `wait_send`, `None` left for `try_send`.
    ///
    /// # Safety
    /// `l` must be a running thread of `lua`'s state with room for two more values, and `idx` a
    /// valid absolute slot.
    unsafe fn send_at(&self, lua: &Lua, l: *mut ffi::lua_State, idx: c_int) -> Option<bool> {
        if !self.streams_output {
            return None;
        }
        let output = self.output.as_ref()?;
        // SAFETY: by the caller's promise.
        let message = unsafe { outgoing_at(lua, l, idx, output.plan) }?.ok()?;
        slice::charge(1 + encoded_len(&message) / BYTES_PER_UNIT).ok()?;
        self.mark_headers_sent();
        let sent = {
            let sender = self.sender.lock().unwrap_or_else(|e| e.into_inner());
            sender.as_ref()?.try_send(Ok(message))
        };
        match sent {
            Ok(()) => Some(true),
            Err(TrySendError::Full(item)) => {
                *self.pending.lock().unwrap_or_else(|e| e.into_inner()) = Some(item);
                Some(false)
            }
            Err(TrySendError::Closed) => None,
        }
    }
}
