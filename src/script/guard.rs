//! Wrappers that keep the server's own stops out of a script's reach.
//!
//! - `pcall`, `xpcall` and `coroutine.close` re-raise the running call's abort (budget, deadline,
//!   cancellation) instead of returning it, so `while true do pcall(loop) end` ends. Lua runs the
//!   `__close` handlers of a coroutine stopped by the hook with hooks off; so once a call is
//!   aborted, nothing is closed.
//! - Lua's `coroutine.close` runs a coroutine's `__close` handlers from C, where nothing can
//!   yield, so the hook could not pause a slow one. It never runs one here: every coroutine a
//!   script makes runs its function in a protected call of ours (its bottom) and is unwound
//!   from inside itself. `close` of a suspended coroutine resumes it with a private token on
//!   which its `yield` raises; an uncaught error starts the same unwinding from the bottom's
//!   message handler. While it unwinds, protected calls pass the error on (no message handler
//!   runs) and the `__close` handlers, all guarded (one given after `setmetatable` is guarded by
//!   a walk of the top of the stack first), are only noted. At the bottom they run inside the
//!   coroutine as Lua's close runs them (same order, error arguments and result; no `yield`),
//!   and the hook's own yields pass up as usual. A coroutine that failed parks at its bottom,
//!   looking dead, until `close` runs its handlers. The usual paths pay one comparison each
//!   (counters of coroutines in each of these states; the states are kept weak-keyed).
//! - `xpcall` runs its message handler from Lua after the failed call unwound, not from C at the
//!   error as Lua does, so the hook can pause a slow handler like any script code.
//! - The hook stops an aborted call by yielding the coroutine it is in (see `hook`), so
//!   `resume` checks the abort before and after every resume: the abort is raised in the
//!   resumer, outside any hook, and an aborted call's coroutines are never resumed again.
//! - `coroutine.resume`/`wrap` pass a time-slice yield of the hook (and the waiting of `ctx:sleep`
//!   and friends) up to the call's own coroutine and then resume the inner coroutine, so user
//!   coroutines see exactly Lua 5.4's values, errors and statuses however long they run.
//!   A slice that ends where the hook cannot yield (a message handler, a metamethod called
//!   from C) is paid by the next resume that comes back, in its resumer: else a script whose
//!   coroutines each spend their instructions there (each new one checked afresh) was never
//!   paused.
//! - `coroutine.create`/`wrap` charge each new coroutine the instructions it may run before
//!   the hook first checks it (see `hook`).
//! - Every call runs through the runner: on the call's thread, which the executor drives and
//!   the hook never yields (a thread suspended by a hook must not be resumed by mlua's
//!   executor, which resets the stack of the thread it resumes), it runs the function in a
//!   coroutine of its own, whose slice yields and waits come up as plain yields. Any error
//!   value becomes a message without calling a metamethod (a table's `message` field, never its
//!   address) while the call is still current.

use mlua::{Function, IntoLuaMulti, Lua, Table, Value as LuaValue};

use super::slice;

/// How deeply one call's `pcall`/`xpcall` may nest (Lua's C stack allows about 200 C calls).
const MAX_PROTECTED_DEPTH: u32 = 60;

/// Where the runner is kept in the state's registry.
pub const RUNNER_KEY: &str = "protoserve.runner";
/// Where the body (what a call's own coroutine runs) is kept.
pub const BODY_KEY: &str = "protoserve.body";
/// Where the runner's tables of handler functions and request builders are kept.
pub const HANDLERS_KEY: &str = "protoserve.handlers";
/// Where the runner of scripts' top-level code is kept.
pub const LOAD_KEY: &str = "protoserve.load";
/// Where the `__close` guard is kept, for the sandbox's `setmetatable` and the freezer.
pub const GUARD_CLOSE_KEY: &str = "protoserve.guard_close";

const GUARD: &str = r#"
local raw_pcall, raw_xpcall, check, aborted, take_sliced, clear_sliced, normalize, fail, PENDING,
  enter, leave, start, dgetinfo, dgetlocal, dgetmt, owed_pause, ctx_mt, bind, plain,
  take_request, place, barrier = ...
local error, select, type, next, rawget, rawset, setmetatable, rawequal =
  error, select, type, next, rawget, rawset, setmetatable, rawequal
local co = coroutine
local co_create, co_resume, co_yield, co_status, co_close, co_isyieldable, co_running =
  co.create, co.resume, co.yield, co.status, co.close, co.isyieldable, co.running

-- The tokens below are only ever compared with `rawequal`: a script's value (a reply, what it
-- yields or resumes with) may have an `__eq`, which `==` would run here, where the executor
-- cannot pause it, and hand a private token.
-- Passed up from a coroutine the hook paused, to the call's own coroutine.
local SLICE = {}
-- Private tokens of closing: CLOSE resumes a coroutine to unwind it, RUN resumes a parked one to
-- run its handlers, a parked coroutine yields PARKED, and a closed one returns CLOSED.
local CLOSE, RUN, PARKED, CLOSED = {}, {}, {}, {}
-- What a coroutine passes up when it was paused or waits: `MARKS[v]` is a raw look-up, as
-- `rawequal` is, without two calls.
local MARKS = { [SLICE] = true, [PENDING] = true }
local YIELD_IN_CLOSE = "attempt to yield across a C-call boundary"
-- Coroutines running script code that Lua's own library would run from C (see barrier.rs):
-- `barred[c]` is raw, `bars.n` a count that keeps the usual paths to one comparison.
local barred, bars, bar, unbar, reset_bar, prune_bars =
  barrier.barred, barrier.bars, barrier.bar, barrier.unbar, barrier.reset, barrier.prune

-- Per coroutine, weak-keyed: those being unwound by us, with their `__close` handlers deferred
-- in the order Lua would call them ("deferring"); those dead by an error whose handlers wait
-- for `close` ("parked"); those running the handlers of their close ("closing"). The counters
-- keep the usual paths to one comparison; a call stopped halfway leaves entries behind, which
-- only make those paths look (see `recount`).
local weak = { __mode = "k" }
local deferring, parked, closing =
  setmetatable({}, weak), setmetatable({}, weak), setmetatable({}, weak)
local ndeferring, nparked, nclosing = 0, 0, 0

local function recount()
  local n = 0
  for _ in next, deferring do n = n + 1 end
  ndeferring = n
  n = 0
  for _ in next, parked do n = n + 1 end
  nparked = n
  n = 0
  for _ in next, closing do n = n + 1 end
  nclosing = n
end

-- `__close` handlers, guarded (setmetatable wraps them): once the call is aborted they do
-- nothing (where Lua cannot yield, the hook stops an aborted call by raising the abort, and the
-- protected call the error reaches runs the pending handlers it passed, under the hook); while
-- their coroutine is being unwound by us they are only noted, to run at its bottom.
local guarded = setmetatable({}, weak)
local function guard_close(f)
  if f == nil or guarded[f] then return f end
  local g = function(...)
    if aborted() then return end
    if ndeferring ~= 0 then
      local d = deferring[co_running()]
      if d then
        local n = #d
        d[n + 1], d[n + 2] = f, (...)
        return
      end
    end
    return f(...)
  end
  guarded[g] = true
  return g
end

-- A handler given to a metatable after `setmetatable` is not guarded: before we unwind a
-- coroutine, every value on its stack whose metatable has one gets it guarded. Lua finds a
-- stack level by counting from the top and a local by counting its function's locals, so
-- looking at the i-th local of a level costs about level + i, and a walk of the whole stack
-- would take time square in its depth, where the hook cannot pause it (in the message
-- handler). So the walk looks at the top WALK_LEVELS levels and spends at most WALK_COST
-- (a few milliseconds). A to-be-closed variable is a named local, and a
-- function's named locals come before its temporaries (a caller's temporaries hold the varargs
-- it passed, any number of them), so the walk stops at a level's first temporary. A late
-- handler past that runs as the coroutine unwinds (inside it, so the hook pauses it), before
-- the deferred ones.
local WALK_LEVELS, WALK_COST = 200, 1000000
local TEMPORARY, C_TEMPORARY = "(temporary)", "(C temporary)"

local function guard_stack(c, from)
  local left = WALK_COST
  for level = from, from + WALK_LEVELS do
    -- (Asked for nothing, getinfo only says whether the level exists; a C function's first
    -- local is a temporary, which ends its level at once.)
    if dgetinfo(c, level, "") == nil then return end
    do
      local i = 1
      while true do
        left = left - level - i
        if left < 0 then return end
        local name, v = dgetlocal(c, level, i)
        if name == nil or name == TEMPORARY or name == C_TEMPORARY then break end
        if type(v) == "table" then
          local mt = dgetmt(v)
          if mt ~= nil then
            local h = rawget(mt, "__close")
            if h ~= nil and not guarded[h] then rawset(mt, "__close", guard_close(h)) end
          end
        end
        i = i + 1
      end
    end
  end
end

-- `c` is unwound from here on: by `close` (then the unwinding raises nil, which is what a handler
-- that is not deferred gets as Lua's close would give it) or by an uncaught error. Its stack is
-- walked from level `from` (past our own functions when `c` is the running coroutine).
local function defer(c, closing_it, from)
  guard_stack(c, from)
  deferring[c] = { by_close = closing_it }
  ndeferring = ndeferring + 1
end

local function undefer(c)
  deferring[c] = nil
  ndeferring = ndeferring - 1
end

-- A coroutine being unwound lets no protected call stop the unwinding.
local function unwinding(e)
  if ndeferring ~= 0 and deferring[co_running()] then error(e, 0) end
end

local function after_protected(ok, ...)
  if not ok then
    check()
    local e = ...
    unwinding(e)
    if type(e) == "userdata" then return false, plain(e) end
  end
  return ok, ...
end

-- Protected calls nest only so deep: near Lua's C-stack limit even the instruction hook cannot
-- run, so a tree of pcalls that keeps hitting that limit would never meet its budget. An error
-- caught here unwound any library function that barred the coroutine since the call began
-- (`d`: its depth then; see barrier.rs), which left its mark: it goes back.
local function left(d, ok, ...)
  leave()
  if not ok and bars.n ~= 0 then reset_bar(co_running(), d) end
  return after_protected(ok, ...)
end

local TOO_DEEP = "pcall/xpcall nested too deeply (C stack overflow)"

-- (`place` puts an error from inside the library's wrappers at the script's line, as Lua's own
-- functions do; it runs at the error, from C, but looks at a few frames only.)
local function pcall(f, ...)
  if not enter() then return false, TOO_DEEP end
  return left(bars.n ~= 0 and barred[co_running()], raw_xpcall(f, place, ...))
end

-- Lua calls a message handler from C, at the error, where the hook cannot pause it: a slow
-- handler held its state. So the handler runs here instead, from Lua, once the failed call has
-- unwound (a script has no `debug` to look at the stack with, so only the order shows: the
-- failed function's pending `__close` handlers run first, and see the original error). A
-- handler that fails is given its own error, as Lua does, until Lua's "error in error
-- handling". An aborted call never reaches a handler: `left` raises the abort.
local HANDLER_TRIES = 200

-- (Lua calls the handler from C, so it cannot yield: its coroutine is barred meanwhile.)
local function handled(msgh, ok, ...)
  if ok then return ok, ... end
  local e = ...
  local c = bar()
  for _ = 1, HANDLER_TRIES do
    local fine, r = pcall(msgh, e)
    if fine then
      unbar(c)
      return false, r
    end
    e = r
  end
  unbar(c)
  return false, "error in error handling"
end

local function xpcall(f, ...)
  local msgh = ...
  if type(msgh) ~= "function" then
    local got = select('#', ...) == 0 and "no value" or type(msgh)
    error("bad argument #2 to 'xpcall' (function expected, got " .. got .. ")", 2)
  end
  if not enter() then return false, msgh(TOO_DEEP) end
  return handled(msgh, left(bars.n ~= 0 and barred[co_running()],
    raw_xpcall(f, place, select(2, ...))))
end

local after_resume
local function pause_and_continue(c, marker)
  if co_isyieldable() then
    co_yield(marker)
  elseif marker == PENDING then
    error("cannot wait (ctx:sleep, ctx:send, reading the stream) inside a coroutine " ..
      "resumed where Lua cannot yield", 0)
  end
  check()
  return after_resume(c, co_resume(c))
end

-- The hook stops an aborted call by yielding the coroutine it runs in where it can, so that
-- coroutine's pending __close handlers never run: every resume checks the abort when the
-- coroutine comes back, and an aborted call resumes nothing. A coroutine that parks after an
-- error answers as Lua's dead one does.
after_resume = function(c, ok, ...)
  -- (The hook may have met the end of a slice where Lua cannot yield, as in a message handler:
  -- the pause is made here, where the resumer can, before the results are looked at.)
  if owed_pause() then
    check()
    if co_isyieldable() then co_yield(SLICE) end
  end
  if not ok then
    local e = ...
    if type(e) == "userdata" then return false, plain(e) end
    return ok, ...
  end
  local n = select('#', ...)
  if n == 0 then
    if take_sliced(c) and co_status(c) == "suspended" then
      return pause_and_continue(c, SLICE)
    end
  elseif n == 1 then
    local v = ...
    if MARKS[v] then
      return pause_and_continue(c, v)
    end
  elseif n == 2 and rawequal((...), PARKED) then
    return false, select(2, ...)
  end
  return ok, ...
end

-- Lua's "bad argument" error for `coroutine.<fname>` given no `expected` (the arguments),
-- raised for the caller of the wrapper that calls this, named as that caller called it.
local function bad_argument(fname, expected, ...)
  local info = dgetinfo(2, "n")
  local name = info and info.name or ("coroutine." .. fname)
  local got = select('#', ...) == 0 and "no value" or type((...))
  error("bad argument #1 to '" .. name .. "' (" .. expected .. " expected, got " .. got .. ")", 3)
end

local DEAD = "cannot resume dead coroutine"

local function resume(...)
  check()
  local c = ...
  if type(c) ~= "thread" then bad_argument("resume", "thread", ...) end
  if nparked ~= 0 and parked[c] then return false, DEAD end
  return after_resume(c, co_resume(...))
end

local function after_yield(...)
  if ndeferring ~= 0 and rawequal((...), CLOSE) then error(nil, 0) end
  return ...
end

-- (mlua's waiting functions yield PENDING through this too: that yield is no script's.) Where
-- Lua cannot yield (a `__close` run by `close`, script code a library function runs for Lua's
-- own that would run it from C) it fails as Lua's yield does there.
local function yield(...)
  if (nclosing ~= 0 and closing[co_running()] or bars.n ~= 0 and barred[co_running()])
      and (...) ~= PENDING then
    error(YIELD_IN_CLOSE, 0)
  end
  if select('#', ...) == 0 then clear_sliced() end
  return after_yield(co_yield(...))
end

local function status(...)
  local c = ...
  if type(c) ~= "thread" then bad_argument("status", "thread", ...) end
  if nparked ~= 0 and parked[c] then return "dead" end
  return co_status(c)
end

local function isyieldable(...)
  if select('#', ...) ~= 0 and type((...)) ~= "thread" then
    bad_argument("isyieldable", "thread", ...)
  end
  if nclosing ~= 0 or bars.n ~= 0 then
    local c = ...
    if select('#', ...) == 0 then c = co_running() end
    if closing[c] or barred[c] then return false end
  end
  return co_isyieldable(...)
end

-- The handlers a coroutine's unwinding deferred, run inside it as Lua's close runs them: the
-- first see `err`, one that fails hands its error to the next; the result is close's.
local function run_deferred(c, d, fine, err)
  closing[c] = true
  nclosing = nclosing + 1
  for i = 1, #d, 2 do
    local ok, e = raw_pcall(d[i], d[i + 1], err)
    if not ok then
      check()
      fine, err = false, e
    end
  end
  closing[c] = nil
  nclosing = nclosing - 1
  if fine then return true end
  return false, err
end

-- The bottom of every coroutine a script makes, once its function has returned or failed.
local function ended(ok, ...)
  if ok then return ... end
  local e = ...
  local c = co_running()
  if bars.n ~= 0 then reset_bar(c, nil) end
  local d = deferring[c]
  -- Not unwound by us: an abort (nothing is closed), or an error that never reached the
  -- message handler (a memory error, whose unwinding ran the handlers).
  if d == nil or aborted() then error(e, 0) end
  undefer(c)
  -- (A handler the walk did not reach may have raised while `close` unwound.)
  if d.by_close then return CLOSED, run_deferred(c, d, e == nil, e) end
  -- Dead by an error with nothing pending: dead as in Lua (its close gives the error).
  if d[1] == nil then error(e, 0) end
  -- Dead by an error: the handlers wait for `close`, which resumes the coroutine with RUN.
  parked[c] = true
  nparked = nparked + 1
  co_yield(PARKED, e)
  parked[c] = nil
  nparked = nparked - 1
  return CLOSED, run_deferred(c, d, false, e)
end

-- At an uncaught error, before anything unwinds: from here on the coroutine's handlers are
-- deferred. An abort is left alone.
local function on_error(e)
  if not aborted() then
    local c = co_running()
    -- (Levels 0 to 3: getinfo, guard_stack, defer and this handler.)
    if ndeferring == 0 or deferring[c] == nil then defer(c, false, 4) end
  end
  return e
end

local function closed(c, ok, mark, ...)
  if ok and rawequal(mark, CLOSED) then return ... end
  if not ok then return false, mark end
  return after_protected(co_close(c))
end

-- Lua's close runs a coroutine's `__close` handlers from C, where nothing can yield: a slow
-- one held its state. So nothing here lets Lua's close run one: a suspended coroutine is
-- resumed with CLOSE, on which its `yield` raises, and unwinds to its bottom with its handlers
-- deferred, then runs them there, where the hook pauses them like any script code. A coroutine
-- that failed is parked at its bottom with its handlers pending, and runs them when closed.
-- Running and normal coroutines get Lua's own errors. An aborted call closes nothing.
local function close(...)
  check()
  local c = ...
  if type(c) ~= "thread" then bad_argument("close", "thread", ...) end
  if nparked ~= 0 and parked[c] then return closed(c, after_resume(c, co_resume(c, RUN))) end
  local st = co_status(c)
  if st == "suspended" then
    defer(c, true, 0)
    return closed(c, resume(c, CLOSE))
  elseif st ~= "dead" then
    -- As Lua's close says it, where its caller called it.
    error("cannot close a " .. st .. " coroutine", 2)
  end
  return after_protected(co_close(c))
end

local function after_wrap(c, ok, ...)
  if ok then return ... end
  local err = ...
  check()
  if nparked ~= 0 and parked[c] then
    local fine, e = close(c)
    if not fine then err = e end
  elseif co_status(c) == "dead" then
    local fine, e = co_close(c)
    if not fine then err = e end
  end
  check()
  if type(err) == "string" then error(err, 2) end
  error(err, 0)
end

-- Every coroutine a script makes runs its function in a protected call of ours (its bottom),
-- and pays for the instructions it runs before its first check.
local function make(f)
  local c = co_create(function(...)
    if rawequal((...), CLOSE) then
      undefer(co_running())
      return CLOSED, true
    end
    return ended(raw_xpcall(f, on_error, ...))
  end)
  start(c)
  return c
end

local function create(...)
  local f = ...
  if type(f) ~= "function" then bad_argument("create", "function", ...) end
  return make(f)
end

local function wrap(...)
  local f = ...
  if type(f) ~= "function" then bad_argument("wrap", "function", ...) end
  local c = make(f)
  return function(...)
    return after_wrap(c, resume(c, ...))
  end
end

co.create, co.resume, co.wrap, co.yield, co.close, co.status, co.isyieldable =
  create, resume, wrap, yield, close, status, isyieldable

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

-- What calls run, filled in once the scripts are loaded: the handler functions, the request
-- builders (by layout) and the request stream iterator factory (see `requests`).
local handlers = { functions = {}, builders = {} }

-- Every call: on the call's thread (driven by the executor, which the hook never yields), run
-- `body` in coroutine `c`; slice yields and waits inside it come up here as plain yields.
-- Handler `fi` gets its request, made here by the builder of layout `bi` from what the call
-- was started with (a streaming call's `try_next`, handle and numbers function; `nil` for a
-- request that `take_request` pushes as the slots; else `false` and the slots), and
-- its ctx, made here too and named the call's own by `bind`, which also says whether the call
-- was stopped meanwhile (its abort is raised then, as `resume` checks it).
local function run(c, fi, bi, stream, ...)
  if ndeferring ~= 0 or nparked ~= 0 or nclosing ~= 0 then recount() end
  if bars.n ~= 0 then prune_bars(c) end
  local ctx = setmetatable({}, ctx_mt)
  local req
  if stream then
    req = handlers.iterate(handlers.builders[bi], stream, ...)
  elseif stream == nil then
    req = handlers.builders[bi](take_request())
  else
    req = handlers.builders[bi](...)
  end
  if bind(ctx) then check() end
  return drive(c, after_resume(c, co_resume(c, handlers.functions[fi], req, ctx)))
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

return pcall, xpcall, run, body, load, guard_close, handlers
"#;

/// Installs the wrappers in `lua`'s globals and `coroutine` table (before they are frozen) and
/// keeps the call runner in the registry. The debug library must still be loaded: the wrappers
/// keep three of its functions (to guard `__close` handlers on a coroutine's stack).
pub fn install(lua: &Lua) -> mlua::Result<()> {
    let g = lua.globals();
    let debug: Table = g.raw_get("debug")?;
    super::preempt::track_resumes(lua, &g.raw_get("coroutine")?)?;
    let check = lua.create_function(|_, ()| match slice::current_abort() {
        Some(a) => Err(mlua::Error::external(a)),
        None => Ok(()),
    })?;
    let owed_pause = super::preempt::owed_pause_function(lua)?;
    let aborted = lua.create_function(|_, ()| Ok(slice::current_abort().is_some()))?;
    let take_sliced =
        lua.create_function(|_, c: mlua::Thread| Ok(slice::take_sliced(c.to_pointer() as usize)))?;
    // A user's own yield: any mark the hook left on this coroutine without yielding it (at a
    // spot where it could not yield) is stale.
    let clear_sliced = lua.create_function(|lua, ()| {
        slice::take_sliced(lua.current_thread().to_pointer() as usize);
        Ok(())
    })?;
    let normalize_fn = lua.create_function(|lua, e: LuaValue| Ok(normalize_at(lua, e)))?;
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
    type Made = (
        Function,
        Function,
        Function,
        Function,
        Function,
        Function,
        Table,
    );
    let mut args = (
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
        debug.raw_get::<Function>("getinfo")?,
        debug.raw_get::<Function>("getlocal")?,
        debug.raw_get::<Function>("getmetatable")?,
        owed_pause,
    )
        .into_lua_multi(lua)?;
    let (ctx_mt, bind) = super::context::ctx_parts(lua)?;
    args.push_back(LuaValue::Table(ctx_mt));
    args.push_back(LuaValue::Function(bind));
    args.push_back(LuaValue::Function(
        lua.create_function(|lua, e: LuaValue| plain(lua, e))?,
    ));
    // SAFETY: `take_request` pushes only what it made room for (see there).
    #[allow(unsafe_code)]
    let take_request = unsafe { lua.create_c_function(super::requests::take_request)? };
    args.push_back(LuaValue::Function(take_request));
    // A caught error as Lua would have raised it (see `placed`), at the error.
    args.push_back(LuaValue::Function(lua.create_function(
        |lua, e: LuaValue| match &e {
            LuaValue::String(s) => match placed(lua, &crate::error::bounded_lossy(&s.as_bytes())) {
                Some(message) => lua.create_string(message).map(LuaValue::String),
                None => Ok(e),
            },
            _ => Ok(e),
        },
    )?));
    args.push_back(LuaValue::Table(super::barrier::install(lua)?));
    let (pcall, xpcall, run, body, load, guard_close, handlers): Made =
        lua.load(GUARD).set_name("=protoserve guard").call(args)?;
    g.raw_set("pcall", pcall)?;
    g.raw_set("xpcall", xpcall)?;
    lua.set_named_registry_value(RUNNER_KEY, run)?;
    lua.set_named_registry_value(BODY_KEY, body)?;
    lua.set_named_registry_value(LOAD_KEY, load)?;
    lua.set_named_registry_value(GUARD_CLOSE_KEY, guard_close)?;
    lua.set_named_registry_value(HANDLERS_KEY, handlers)?;
    Ok(())
}

/// A caught error as a script sees it. Lua's library functions raise strings; the server's
/// functions raise mlua errors, whose `tostring` gave mlua's wording and a traceback of the
/// server's own frames, and which `..` could not join. So such an error becomes the string a
/// Lua function would raise. The server's own values stay errors, without the traceback, so
/// that raising one again keeps its meaning: a `grpc.status`, a stop, a message `ctx:send`
/// refused, a reply too large, a failed request stream, running out of memory.
fn plain(lua: &Lua, e: LuaValue) -> mlua::Result<LuaValue> {
    let LuaValue::Error(err) = e else {
        return Ok(e);
    };
    let root = root_error(&err);
    if is_kept(root) {
        return Ok(LuaValue::Error(Box::new(root.clone())));
    }
    lua.create_string(lua_message(root)).map(LuaValue::String)
}

/// Whether the server's stops and statuses are in this error, which must keep their meaning.
fn is_kept(root: &mlua::Error) -> bool {
    match root {
        mlua::Error::MemoryError(_) => true,
        mlua::Error::ExternalError(x) => {
            x.is::<super::status::ScriptStatus>()
                || x.is::<super::status::Abort>()
                || x.is::<super::status::BadMessage>()
                || x.is::<super::status::IncomingError>()
                || x.is::<super::convert::TooLarge>()
        }
        _ => false,
    }
}

/// Frames looked at, from the error up, for the script's own.
const WHERE_SEARCH: usize = 32;

/// The same for an error Lua raised inside the server's own Lua code: past the C stack's 200
/// nested calls, each of which may be a wrapper's frame.
const OVERFLOW_SEARCH: usize = 1024;

/// The place Lua gives an error it raises inside the server's own Lua code, which is loaded
/// without line information (a stack overflow in a wrapper).
const IN_OWN_CODE: &str = "?:-1: ";

/// The call's error, at the error (its message handler): as `normalize`, and an error of a
/// server function gets the script's `file:line:` where it was called, as Lua's own errors
/// have theirs.
fn normalize_at(lua: &Lua, e: LuaValue) -> LuaValue {
    let LuaValue::Error(err) = &e else {
        if let LuaValue::String(s) = &e {
            if let Some(message) = placed(lua, &crate::error::bounded_lossy(&s.as_bytes())) {
                return LuaValue::Error(Box::new(mlua::Error::RuntimeError(message)));
            }
        }
        return normalize(e);
    };
    let root = root_error(err);
    if is_kept(root) {
        return e;
    }
    let message = lua_message(root);
    let at = (0..WHERE_SEARCH)
        .map_while(|level| {
            lua.inspect_stack(level, |d| {
                let path = d.source().source?.strip_prefix('@')?.to_owned();
                Some(format!("{path}:{}: ", d.current_line()?))
            })
        })
        .flatten()
        .next();
    let message = match at {
        Some(at) if !message.starts_with(&at) => format!("{at}{message}"),
        _ => message,
    };
    LuaValue::Error(Box::new(mlua::Error::RuntimeError(message)))
}

/// Names of the server's own Lua chunks (library wrappers, the guard, the prelude), as they
/// appear in an error's position.
const OWN_CHUNKS: [&str; 5] = [
    "protoserve",
    "protoserve guard",
    "protoserve ctx",
    "protoserve requests",
    "stdlib",
];

/// The script's frame that an error came up through, at the error (its message handler).
struct Caller {
    /// `path:line: ` of the script's frame.
    at: String,
    /// The name the script called the function by that the error came from (`rep` for
    /// `s:rep(n)`).
    callee: Option<String>,
}

/// The script's frame that called, directly, the library function that raised the error being
/// handled, when that function is one the server wraps in its own Lua code. Level 0 is the
/// message handler and level 1 what raised the error; above it, the server's own Lua frames
/// (the wrapper) lead to the script's frame. `None` when no wrapper is in between (Lua placed
/// the error itself) or when a C function is (`pcall(string.find, s, "[")`: stock Lua names no
/// line there either, the function being called from C).
///
/// With `in_own`, Lua raised the error inside the server's Lua code itself (a stack overflow in
/// a wrapper), which is then level 1; such an error comes up through as many of the wrappers'
/// frames as the recursion made (a metamethod that tail-calls `math.max` leaves no frame of its
/// own), so the search goes on to [`OVERFLOW_SEARCH`].
fn script_caller(lua: &Lua, in_own: bool) -> Option<Caller> {
    let (mut callee, mut through_own) = (None, false);
    let (first, last) = if in_own {
        (1, OVERFLOW_SEARCH)
    } else {
        (2, WHERE_SEARCH)
    };
    for level in first..last {
        let (path, line, name, c) = lua.inspect_stack(level, |d| {
            let source = d.source();
            let path = source
                .source
                .as_deref()
                .and_then(|s| s.strip_prefix('@'))
                .map(str::to_owned);
            (
                path,
                d.current_line(),
                d.names().name.map(|n| n.into_owned()),
                source.what == "C",
            )
        })?;
        if let Some(path) = path {
            return through_own.then(|| Caller {
                at: format!("{path}:{}: ", line.unwrap_or(0)),
                callee,
            });
        }
        if c {
            return None;
        }
        through_own = true;
        callee = name;
    }
    None
}

/// The message of a string error raised inside the server's own Lua code (the wrappers that
/// budget library functions), placed as Lua places errors of library functions a script calls:
/// at the script's line, and naming the function as the script called it. Those wrappers call
/// Lua's own function on the script's behalf, so its message named no place, the wrapper's
/// place (`protoserve:82:`), or the function as `'?'`. `None` when the error did not come up
/// through the server's code (a script's own `error("…", 0)` stays as raised).
fn placed(lua: &Lua, message: &str) -> Option<String> {
    if UNPLACED.contains(&message) {
        return None;
    }
    let in_own = message.starts_with(IN_OWN_CODE);
    let caller = script_caller(lua, in_own)?;
    let mut rest = message.strip_prefix(IN_OWN_CODE).unwrap_or(message);
    if let Some((chunk, after)) = message.split_once(':') {
        if OWN_CHUNKS.contains(&chunk) {
            if let Some((line, after)) = after.split_once(": ") {
                if !line.is_empty() && line.bytes().all(|b| b.is_ascii_digit()) {
                    rest = after;
                }
            }
        }
    }
    let rest = match &caller.callee {
        Some(name) => rest.replacen(" to '?'", &format!(" to '{name}'"), 1),
        None => rest.to_owned(),
    };
    if rest.starts_with(&caller.at) || has_script_place(&rest) {
        return (rest != message).then_some(rest);
    }
    Some(format!("{}{rest}", caller.at))
}

/// Errors that the guard's own Lua raises for a C function of Lua's, which raises them with no
/// place (`coroutine.yield` where it cannot yield: Lua names a place only for errors raised
/// in Lua code), so they stay as Lua words them.
const UNPLACED: [&str; 1] = ["attempt to yield across a C-call boundary"];

/// Whether a message starts with a script's `path.lua:line: `.
fn has_script_place(message: &str) -> bool {
    let Some((path, after)) = message.split_once(".lua:") else {
        return false;
    };
    !path.contains(' ')
        && after
            .split_once(": ")
            .is_some_and(|(line, _)| !line.is_empty() && line.bytes().all(|b| b.is_ascii_digit()))
}

/// The error inside mlua's wrappers (a callback's traceback, a context).
fn root_error(e: &mlua::Error) -> &mlua::Error {
    match e {
        mlua::Error::CallbackError { cause, .. } | mlua::Error::WithContext { cause, .. } => {
            root_error(cause)
        }
        other => other,
    }
}

/// An mlua error in Lua's own words: `bad argument #2 to 'f' (number expected, got string)`
/// rather than mlua's, and a runtime error's message without its traceback.
pub fn lua_message(e: &mlua::Error) -> String {
    match root_error(e) {
        mlua::Error::RuntimeError(m) => {
            m.split("\nstack traceback:").next().unwrap_or(m).to_owned()
        }
        mlua::Error::BadArgument {
            to,
            pos,
            name,
            cause,
        } => {
            let cause = lua_message(cause);
            let to = to.as_deref().unwrap_or("?");
            let what = match name {
                Some(name) => format!("'{name}'"),
                None => format!("#{pos}"),
            };
            format!("bad argument {what} to '{to}' ({cause})")
        }
        mlua::Error::FromLuaConversionError { from, to, message } => {
            let expected = lua_type_name(to);
            match message {
                // (mlua's own words for a plain type mismatch say it again.)
                Some(why) if why.starts_with("expected ") => {
                    format!("{expected} expected, got {from}")
                }
                // A value of the right type that is not right (a string that is not UTF-8).
                Some(why) if expected == *from => why.clone(),
                Some(why) => format!("{expected} expected, got {from}: {why}"),
                None => format!("{expected} expected, got {from}"),
            }
        }
        other => other.to_string(),
    }
}

/// A Rust type mlua names in a conversion error, as Lua names values.
fn lua_type_name(rust: &str) -> &str {
    match rust {
        "f32" | "f64" | "Number" => "number",
        "i8" | "i16" | "i32" | "i64" | "isize" | "u8" | "u16" | "u32" | "u64" | "usize"
        | "Integer" => "integer",
        "String" | "BorrowedStr" | "BorrowedBytes" | "Vec<u8>" => "string",
        "bool" => "boolean",
        "Table" => "table",
        "Function" => "function",
        "Thread" => "thread",
        other => other,
    }
}

/// An error value as an error with a readable message, read without metamethods. A message is
/// cut to what a status carries: the whole of a huge one would be copied out of Lua's memory
/// (past `--script-memory`) and written to the log.
fn normalize(e: LuaValue) -> LuaValue {
    let message = match e {
        LuaValue::Error(_) => return e,
        LuaValue::String(s) => crate::error::bounded_lossy(&s.as_bytes()),
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
        Ok(LuaValue::String(s)) => crate::error::bounded_lossy(&s.as_bytes()),
        _ => "script raised a table (no message)".to_owned(),
    }
}
