//! Where a script's coroutine may not yield, as Lua 5.4 says it may not.
//!
//! Lua's own library functions call script code from C (a `table.sort` comparator, a
//! `string.gsub` replacement function, a `__tostring` that `tostring` runs, an `__index` that
//! `table.concat` reads through, an `xpcall` message handler…), and there a coroutine cannot
//! yield: `coroutine.yield` fails with "attempt to yield across a C-call boundary" and
//! `coroutine.isyieldable` is false. The server runs those loops in Lua instead (see
//! `stdlib.lua`), so that the instruction hook can pause them between time slices; but then a
//! script's own `coroutine.yield` inside them simply yielded, which no Lua 5.4 program can do.
//!
//! So while such a function runs script code, its coroutine is *barred*: a depth per coroutine
//! (they nest), kept in a weak-keyed table, with a count of barred coroutines that keeps the
//! usual paths to one comparison. The guard's `coroutine.yield` and `coroutine.isyieldable`
//! answer as Lua's own would for a barred coroutine; the hook's time-slice yields and the
//! server's waits (`ctx:sleep`, `ctx:send`) are not a script's yields and pass as before. A
//! coroutine resumed from inside (a new one, or any other) is not barred, as in Lua.
//!
//! An error leaving such a function leaves its mark behind: the protected call that catches it
//! puts back the depth it started with ([`install`]'s `reset`), a coroutine that dies drops its
//! own, and each call starts its own coroutine unbarred (`prune` also forgets dead ones).

use mlua::{Lua, Table};

/// Where the barrier's table (`barred`, `bars`, `bar`, `unbar`, `reset`, `prune`) is kept.
pub const BARRIER_KEY: &str = "protoserve.barrier";

const BARRIER: &str = r#"
local co_running, co_status, setmetatable, next = ...
-- Coroutine -> depth of library functions running script code in it.
local barred = setmetatable({}, { __mode = "k" })
-- `n`: coroutines in `barred` (dead ones included until `prune`).
local bars = { n = 0 }

-- Bars the running coroutine; returns it, for `unbar`.
local function bar()
  local c = co_running()
  local d = barred[c]
  if d == nil then
    bars.n = bars.n + 1
    barred[c] = 1
  else
    barred[c] = d + 1
  end
  return c
end

local function unbar(c)
  local d = barred[c]
  if d == 1 then
    barred[c] = nil
    bars.n = bars.n - 1
  elseif d ~= nil then
    barred[c] = d - 1
  end
end

-- Puts `c` back to depth `d` (nil or false: not barred), after an error unwound past bars.
local function reset(c, d)
  local now = barred[c]
  if d == false then d = nil end
  if now == d then return end
  if now == nil then
    bars.n = bars.n + 1
  elseif d == nil then
    bars.n = bars.n - 1
  end
  barred[c] = d
end

-- Forgets dead coroutines and `c` (a call's coroutine, about to run a call), and recounts.
local function prune(c)
  barred[c] = nil
  local n = 0
  for k in next, barred do
    if co_status(k) == "dead" then barred[k] = nil else n = n + 1 end
  end
  bars.n = n
end

return { barred = barred, bars = bars, bar = bar, unbar = unbar, reset = reset, prune = prune }
"#;

/// Makes the barrier and keeps it in the registry, for the library replacements and the guard
/// (before either is installed: they take Lua's own `coroutine.running` and `status`).
pub fn install(lua: &Lua) -> mlua::Result<Table> {
    if let Ok(Some(made)) = lua.named_registry_value::<Option<Table>>(BARRIER_KEY) {
        return Ok(made);
    }
    let g = lua.globals();
    let coroutine: Table = g.raw_get("coroutine")?;
    let barrier: Table = lua.load(BARRIER).set_name("=protoserve barrier").call((
        coroutine.raw_get::<mlua::Function>("running")?,
        coroutine.raw_get::<mlua::Function>("status")?,
        g.raw_get::<mlua::Function>("setmetatable")?,
        g.raw_get::<mlua::Function>("next")?,
    ))?;
    lua.set_named_registry_value(BARRIER_KEY, barrier.clone())?;
    Ok(barrier)
}
