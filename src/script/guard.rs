//! Wrappers that keep the server's own stops out of a script's reach.
//!
//! - `pcall`, `xpcall` and `coroutine.close` re-raise the running call's abort (budget, deadline,
//!   cancellation) instead of returning it, so `while true do pcall(loop) end` ends. Lua runs the
//!   `__close` handlers of a coroutine stopped by the hook with hooks off; so once a call is
//!   aborted, nothing is closed.
//! - `xpcall` runs its message handler from Lua after the failed call unwound, not from C at the
//!   error as Lua does, so the hook can pause a slow handler like any script code.
//! - The hook stops an aborted call by yielding the coroutine it is in (see `hook`), so
//!   `resume` checks the abort before and after every resume: the abort is raised in the
//!   resumer, outside any hook, and an aborted call's coroutines are never resumed again.
//! - `coroutine.resume`/`wrap` pass a time-slice yield of the hook (and the waiting of `ctx:sleep`
//!   and friends) up to the call's own coroutine and then resume the inner coroutine, so user
//!   coroutines see exactly Lua 5.4's values, errors and statuses however long they run.
//! - `coroutine.create`/`wrap` charge each new coroutine the instructions it may run before
//!   the hook first checks it (see `hook`).
//! - Every call runs through the runner: on the call's thread, which the executor drives and
//!   the hook never yields (a thread suspended by a hook must not be resumed by mlua's
//!   executor, which resets the stack of the thread it resumes), it runs the function in a
//!   coroutine of its own, whose slice yields and waits come up as plain yields. Any error
//!   value becomes a message without calling a metamethod (a table's `message` field, never its
//!   address) while the call is still current.

use mlua::{Function, Lua, Table, Value as LuaValue};

use super::slice;

/// How deeply one call's `pcall`/`xpcall` may nest (Lua's C stack allows about 200 C calls).
const MAX_PROTECTED_DEPTH: u32 = 60;

/// Where the runner is kept in the state's registry.
pub const RUNNER_KEY: &str = "protoserve.runner";
/// Where the body (what a call's own coroutine runs) is kept.
pub const BODY_KEY: &str = "protoserve.body";
/// Where the runner of scripts' top-level code is kept.
pub const LOAD_KEY: &str = "protoserve.load";

const GUARD: &str = r#"
local raw_pcall, raw_xpcall, check, aborted, take_sliced, clear_sliced, normalize, fail, PENDING,
  enter, leave, start = ...
local error, select, type = error, select, type
local co = coroutine
local co_create, co_resume, co_yield, co_status, co_close, co_isyieldable =
  co.create, co.resume, co.yield, co.status, co.close, co.isyieldable

-- Passed up from a coroutine the hook paused, to the call's own coroutine.
local SLICE = {}

local function after_protected(ok, ...)
  if not ok then check() end
  return ok, ...
end

-- Protected calls nest only so deep: near Lua's C-stack limit even the instruction hook cannot
-- run, so a tree of pcalls that keeps hitting that limit would never meet its budget.
local function left(...)
  leave()
  return after_protected(...)
end

local TOO_DEEP = "pcall/xpcall nested too deeply (C stack overflow)"

local function pcall(f, ...)
  if not enter() then return false, TOO_DEEP end
  return left(raw_pcall(f, ...))
end

-- Lua calls a message handler from C, at the error, where the hook cannot pause it: a slow
-- handler held its state. So the handler runs here instead, from Lua, once the failed call has
-- unwound (a script has no `debug` to look at the stack with, so only the order shows: the
-- failed function's pending `__close` handlers run first, and see the original error). A
-- handler that fails is given its own error, as Lua does, until Lua's "error in error
-- handling". An aborted call never reaches a handler: `left` raises the abort.
local HANDLER_TRIES = 200

local function handled(msgh, ok, ...)
  if ok then return ok, ... end
  local e = ...
  for _ = 1, HANDLER_TRIES do
    local fine, r = pcall(msgh, e)
    if fine then return false, r end
    e = r
  end
  return false, "error in error handling"
end

local function xpcall(f, ...)
  local msgh = ...
  if type(msgh) ~= "function" then
    local got = select('#', ...) == 0 and "no value" or type(msgh)
    error("bad argument #2 to 'xpcall' (function expected, got " .. got .. ")", 2)
  end
  if not enter() then return false, msgh(TOO_DEEP) end
  return handled(msgh, left(raw_pcall(f, select(2, ...))))
end

-- A coroutine the hook stopped keeps hooks off, so its __close handlers would run unbounded:
-- once the call is aborted, nothing is closed.
local function close(c)
  check()
  return after_protected(co_close(c))
end

local after_resume
local function pause_and_continue(c, marker)
  if co_isyieldable() then
    co_yield(marker)
  elseif marker == PENDING then
    error("cannot wait (ctx:sleep, ctx:send, reading the stream) inside a coroutine " ..
      "resumed where Lua cannot yield (a __close that coroutine.close runs)", 0)
  end
  check()
  return after_resume(c, co_resume(c))
end

-- The hook stops an aborted call by yielding the coroutine it runs in where it can, so that
-- coroutine's pending __close handlers never run: every resume checks the abort when the
-- coroutine comes back, and an aborted call resumes nothing.
after_resume = function(c, ok, ...)
  check()
  if not ok then
    return ok, ...
  end
  local n = select('#', ...)
  if n == 0 then
    if take_sliced(c) and co_status(c) == "suspended" then
      return pause_and_continue(c, SLICE)
    end
  elseif n == 1 then
    local v = ...
    if v == SLICE or v == PENDING then
      return pause_and_continue(c, v)
    end
  end
  return ok, ...
end

local function resume(c, ...)
  check()
  return after_resume(c, co_resume(c, ...))
end

local function yield(...)
  if select('#', ...) == 0 then clear_sliced() end
  return co_yield(...)
end

local function after_wrap(c, ok, ...)
  if ok then return ... end
  local err = ...
  check()
  if co_status(c) == "dead" then
    local closed, e = co_close(c)
    if not closed then err = e end
  end
  check()
  if type(err) == "string" then error(err, 2) end
  error(err, 0)
end

-- Every coroutine a script makes pays for the instructions it runs before its first check.
local function create(f)
  local c = co_create(f)
  start(c)
  return c
end

local function wrap(f)
  local c = create(f)
  return function(...)
    return after_wrap(c, resume(c, ...))
  end
end

co.create, co.resume, co.wrap, co.yield, co.close = create, resume, wrap, yield, close

local function finish(ok, ...)
  if ok then return ... end
  return fail((...))
end

-- The call's function runs in its own coroutine `c` (see `run`), with its error made safe to
-- read.
local function body(f, req, ctx)
  return finish(raw_xpcall(f, normalize, req, ctx))
end

local function drive(c, ok, ...)
  if ok and co_status(c) == "suspended" then
    -- The function yielded at its top level: a pause, as if the call were a coroutine.
    co_yield()
    return drive(c, resume(c))
  end
  if not ok then return fail((...)) end
  return ...
end

-- Every call: on the call's thread (driven by the executor, which the hook never yields), run
-- `body` in coroutine `c`; slice yields and waits inside it come up here as plain yields. The
-- request is made here, by `build` from what the call was started with (see `requests`).
local function run(c, f, ctx, build, ...)
  return drive(c, resume(c, f, build(...), ctx))
end

-- A script's top-level code, at startup: in a coroutine, so the hook can stop it by yielding;
-- time slices are resumed at once.
local function load(f)
  local c = co_create(f)
  while true do
    local ok, e = co_resume(c)
    check()
    if not ok then error(e, 0) end
    if co_status(c) == "dead" then return end
  end
end

return pcall, xpcall, run, body, load
"#;

/// Installs the wrappers in `lua`'s globals and `coroutine` table (before they are frozen) and
/// keeps the call runner in the registry.
pub fn install(lua: &Lua) -> mlua::Result<()> {
    let g = lua.globals();
    let check = lua.create_function(|_, ()| match slice::current_abort() {
        Some(a) => Err(mlua::Error::external(a)),
        None => Ok(()),
    })?;
    let aborted = lua.create_function(|_, ()| Ok(slice::current_abort().is_some()))?;
    let take_sliced =
        lua.create_function(|_, c: mlua::Thread| Ok(slice::take_sliced(c.to_pointer() as usize)))?;
    // A user's own yield: any mark the hook left on this coroutine without yielding it (at a
    // spot where it could not yield) is stale.
    let clear_sliced = lua.create_function(|lua, ()| {
        slice::take_sliced(lua.current_thread().to_pointer() as usize);
        Ok(())
    })?;
    let normalize_fn = lua.create_function(|_, e: LuaValue| Ok(normalize(e)))?;
    let fail = lua.create_function(|_, e: LuaValue| -> mlua::Result<()> {
        if let Some(a) = slice::current_abort() {
            return Err(mlua::Error::external(a));
        }
        Err(match e {
            LuaValue::Error(e) => *e,
            // Only what never reached the message handler arrives as a plain string: a
            // memory error, or an error inside the handler.
            LuaValue::String(s) if s.as_bytes().as_ref() == b"not enough memory" => {
                mlua::Error::MemoryError("not enough memory".into())
            }
            other => match normalize(other) {
                LuaValue::Error(e) => *e,
                _ => mlua::Error::runtime("script failed"),
            },
        })
    })?;
    let pending = LuaValue::LightUserData(Lua::poll_pending());
    let (pcall, xpcall, run, body, load): (Function, Function, Function, Function, Function) =
        lua.load(GUARD).set_name("=protoserve guard").call((
            g.get::<Function>("pcall")?,
            g.get::<Function>("xpcall")?,
            check,
            aborted,
            take_sliced,
            clear_sliced,
            normalize_fn,
            fail,
            pending,
            lua.create_function(|_, ()| Ok(slice::protected(true, MAX_PROTECTED_DEPTH)))?,
            lua.create_function(|_, ()| {
                slice::protected(false, 0);
                Ok(())
            })?,
            lua.create_function(super::hook::start_coroutine)?,
        ))?;
    g.raw_set("pcall", pcall)?;
    g.raw_set("xpcall", xpcall)?;
    lua.set_named_registry_value(RUNNER_KEY, run)?;
    lua.set_named_registry_value(BODY_KEY, body)?;
    lua.set_named_registry_value(LOAD_KEY, load)?;
    Ok(())
}

/// An error value as an error with a readable message, read without metamethods.
fn normalize(e: LuaValue) -> LuaValue {
    let message = match e {
        LuaValue::Error(_) => return e,
        LuaValue::String(s) => s.to_string_lossy(),
        LuaValue::Table(t) => table_message(&super::convert::unwrap_readonly(t)),
        LuaValue::Nil => "script raised nil (error() without a message)".to_owned(),
        LuaValue::Integer(n) => n.to_string(),
        LuaValue::Number(n) => n.to_string(),
        LuaValue::Boolean(b) => format!("script raised {b} (no message)"),
        other => format!("script raised a {} (no message)", other.type_name()),
    };
    LuaValue::Error(Box::new(mlua::Error::RuntimeError(message)))
}

fn table_message(t: &Table) -> String {
    match t.raw_get::<LuaValue>("message") {
        Ok(LuaValue::String(s)) => s.to_string_lossy(),
        _ => "script raised a table (no message)".to_owned(),
    }
}
