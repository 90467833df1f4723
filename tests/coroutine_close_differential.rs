//! The sandbox's coroutine functions against Lua 5.4's own, around `__close`: the sandbox never
//! lets Lua's `coroutine.close` run a script's handler (Lua runs it from C, where the instruction
//! hook cannot pause it) but unwinds the coroutine from inside itself. Each snippet runs once in
//! a plain Lua state and once in a sandboxed one, and logs everything it can observe: values,
//! errors, statuses, what handlers see (`isyieldable`, `running`, their error argument), and the
//! order they run in. The logs must be the same.

use std::path::Path;

use mlua::{Lua, Table};

/// Run before every snippet, in the state under test: `log(...)` notes values (a table by its
/// `name`, a thread as "thread"), `obj(name, f)` makes a closable value whose `__close` logs
/// what it sees and then calls `f`, `late(name)` one whose `__close` is given to its metatable
/// after `setmetatable`.
const PRELUDE: &str = r#"
local L = {}
local function S(v)
  if type(v) == "table" then return rawget(v, "name") or "{}" end
  if type(v) == "thread" then return "thread" end
  return tostring(v)
end
local function log(...)
  local t = table.pack(...)
  for i = 1, t.n do t[i] = S(t[i]) end
  L[#L + 1] = table.concat(t, ",", 1, t.n)
end
local CO
local function obj(name, f)
  return setmetatable({ name = name }, { __close = function(o, e, ...)
    local r, main = coroutine.running()
    log("close", name, e, select('#', ...), coroutine.isyieldable(), r == CO, main)
    if f then return f(o, e) end
  end })
end
local function late(name, f)
  local mt = {}
  local o = setmetatable({ name = name }, mt)
  mt.__close = function(_, e)
    log("late", name, e, coroutine.isyieldable())
    if f then return f() end
  end
  return o
end
"#;

/// The snippets. `CO` is the coroutine a snippet closes (handlers log whether they run in it).
const CASES: &[&str] = &[
    // A suspended coroutine: handlers in order, with no error; then it is dead.
    r#"
    CO = coroutine.create(function(a, b)
      local x <close> = obj("x")
      local y <close> = obj("y")
      log("got", a, b, coroutine.yield(1, 2))
      log("not reached")
    end)
    log(coroutine.resume(CO, "a", "b"))
    log(coroutine.status(CO))
    log(coroutine.close(CO))
    log(coroutine.status(CO), coroutine.close(CO))
    log(coroutine.resume(CO))
    "#,
    // Never started, finished, closed twice.
    r#"
    CO = coroutine.create(function(...) log("ran", select('#', ...)) end)
    log(coroutine.close(CO), coroutine.status(CO))
    log(coroutine.resume(CO))
    local d = coroutine.create(function(...) log("ran", select('#', ...), ...) return "r" end)
    log(coroutine.resume(d))
    log(coroutine.status(d), coroutine.close(d), coroutine.close(d))
    local e = coroutine.create(function(...) log("ran", select('#', ...), ...) end)
    log(coroutine.resume(e, nil, nil))
    "#,
    // Dead by an error: handlers wait for close, see the error; closing again gives true.
    r#"
    CO = coroutine.create(function()
      local x <close> = obj("x")
      local y <close> = obj("y")
      error("boom")
    end)
    log(coroutine.resume(CO))
    log(coroutine.status(CO), coroutine.isyieldable(CO))
    log(coroutine.resume(CO))
    log(coroutine.close(CO))
    log(coroutine.close(CO), coroutine.status(CO))
    "#,
    // Dead by an error with no handler; by error(nil); by a table.
    r#"
    local a = coroutine.create(function() error("plain", 0) end)
    log(coroutine.resume(a))
    log(coroutine.close(a))
    local b = coroutine.create(function() local x <close> = obj("x") error() end)
    log(coroutine.resume(b))
    log(coroutine.close(b))
    local c = coroutine.create(function() local x <close> = obj("x") error({ name = "T" }) end)
    log(coroutine.resume(c))
    log(coroutine.close(c))
    "#,
    // Handlers that raise: the next ones get that error, and close returns the last one.
    r#"
    CO = coroutine.create(function()
      local a <close> = obj("a")
      local b <close> = obj("b", function() error("from b") end)
      local c <close> = obj("c", function() error({ name = "from c" }) end)
      local d <close> = obj("d")
      coroutine.yield()
    end)
    coroutine.resume(CO)
    log(coroutine.close(CO))
    log(coroutine.status(CO), coroutine.close(CO))
    "#,
    // The same after an error.
    r#"
    CO = coroutine.create(function()
      local a <close> = obj("a")
      local b <close> = obj("b", function(_, e) error("b saw " .. tostring(e), 0) end)
      error("first", 0)
    end)
    log(coroutine.resume(CO))
    log(coroutine.close(CO))
    "#,
    // A handler with a `<close>` of its own and a pcall inside; a nested coroutine in it.
    r#"
    CO = coroutine.create(function()
      local a <close> = obj("a", function()
        local inner <close> = obj("inner")
        log("pcall", pcall(error, "caught", 0))
        local d = coroutine.wrap(function() log("in d", coroutine.isyieldable()) coroutine.yield("dy") return "dr" end)
        log(d(), d())
        log(coroutine.status(CO))
      end)
      coroutine.yield()
    end)
    coroutine.resume(CO)
    log(coroutine.close(CO))
    "#,
    // Yielding inside a handler: not across Lua's close.
    r#"
    CO = coroutine.create(function()
      local a <close> = obj("a")
      local b <close> = obj("b", function() log("pcall yield", pcall(coroutine.yield, 1)) end)
      local c <close> = obj("c", function() coroutine.yield(2) end)
      coroutine.yield()
    end)
    coroutine.resume(CO)
    log(coroutine.close(CO))
    "#,
    // Inside a handler Lua's close runs, the coroutine closed shows as running there and as
    // normal from a coroutine the handler resumes; closing either fails.
    r#"
    CO = coroutine.create(function()
      local a <close> = obj("a", function()
        log("self", coroutine.status(CO), pcall(coroutine.close, CO))
        local d = coroutine.create(function()
          log("from d", coroutine.status(CO), coroutine.isyieldable(CO), pcall(coroutine.close, CO))
        end)
        log(coroutine.resume(d))
      end)
      coroutine.yield()
    end)
    coroutine.resume(CO)
    log(coroutine.close(CO))
    "#,
    // Closing running and normal coroutines.
    r#"
    CO = coroutine.create(function()
      log(pcall(coroutine.close, coroutine.running()))
      local outer = CO
      local d = coroutine.create(function() log(pcall(coroutine.close, outer)) end)
      log(coroutine.resume(d))
      log(pcall(coroutine.close, 5))
    end)
    log(coroutine.resume(CO))
    local main = coroutine.running()
    log(pcall(coroutine.close, main))
    "#,
    // wrap: an error closes the coroutine (its handlers see the error), the error is raised
    // with where the wrap was called; calling again finds it dead.
    r#"
    local f = coroutine.wrap(function()
      local a <close> = obj("a")
      local b <close> = obj("b")
      coroutine.yield("y")
      error("boom")
    end)
    log(f())
    log(pcall(f))
    log(pcall(f))
    local g = coroutine.wrap(function()
      local a <close> = obj("a", function() error("from a") end)
      error("first")
    end)
    log(pcall(g))
    local h = coroutine.wrap(function() local a <close> = obj("a") error({ name = "T" }) end)
    log(pcall(h))
    "#,
    // A coroutine closed from another coroutine's handler, both with handlers of their own.
    r#"
    local d = coroutine.create(function()
      local x <close> = obj("d.x")
      local y <close> = obj("d.y", function() error("d.y failed", 0) end)
      coroutine.yield()
    end)
    coroutine.resume(d)
    local e = coroutine.create(function() local z <close> = obj("e.z") error("e died", 0) end)
    log(coroutine.resume(e))
    CO = coroutine.create(function()
      local a <close> = obj("a", function()
        log("closing d", coroutine.close(d))
        log("closing e", coroutine.close(e))
      end)
      coroutine.yield()
    end)
    coroutine.resume(CO)
    log(coroutine.close(CO))
    log(coroutine.status(d), coroutine.status(e))
    "#,
    // A generic for's closing value inside a coroutine, closed while the loop yields.
    r#"
    CO = coroutine.create(function()
      local function iter(_, i) if i < 3 then return i + 1 end end
      for i in iter, nil, 0, obj("for") do coroutine.yield(i) end
    end)
    log(coroutine.resume(CO))
    log(coroutine.resume(CO))
    log(coroutine.close(CO))
    local d = coroutine.create(function()
      local function iter(_, i) if i < 3 then return i + 1 end end
      for i in iter, nil, 0, obj("for2") do coroutine.yield(i) end
      return "done"
    end)
    log(coroutine.resume(d)) log(coroutine.resume(d)) log(coroutine.resume(d)) log(coroutine.resume(d))
    "#,
    // `__close` given after setmetatable: on close and after an error.
    r#"
    CO = coroutine.create(function()
      local a <close> = late("a")
      local b <close> = obj("b")
      local c <close> = late("c", function() error("late c", 0) end)
      coroutine.yield()
    end)
    coroutine.resume(CO)
    log(coroutine.close(CO))
    local d = coroutine.create(function()
      local a <close> = late("da")
      error("d failed", 0)
    end)
    log(coroutine.resume(d))
    log("before close")
    log(coroutine.close(d))
    "#,
    // Handlers inside pcalls within the coroutine: a caught error runs them at once (and there
    // they may yield); a close unwinds through pcall and xpcall without calling the message
    // handler.
    r#"
    CO = coroutine.create(function()
      log(pcall(function()
        local a <close> = obj("a", function() log("yield in close", coroutine.yield("from a")) end)
        error("caught", 0)
      end))
      local b <close> = obj("b")
      log(xpcall(function()
        local c <close> = obj("c")
        log(pcall(function()
          local d <close> = obj("d")
          coroutine.yield("inside")
        end))
      end, function(e) log("handler", e) return e end))
      log("not reached")
    end)
    log(coroutine.resume(CO))
    log(coroutine.resume(CO, "resumed"))
    log(coroutine.status(CO))
    log(coroutine.close(CO))
    "#,
    // An error caught and raised again, uncaught: handlers wait for close.
    r#"
    CO = coroutine.create(function()
      local a <close> = obj("a")
      local ok, e = pcall(function()
        local b <close> = obj("b")
        error("inner", 0)
      end)
      log("caught", ok, e)
      local c <close> = obj("c")
      error(e .. " again", 0)
    end)
    log(coroutine.resume(CO))
    log("closing")
    log(coroutine.close(CO))
    "#,
    // Handlers at a normal block end and at return may yield inside a coroutine.
    r#"
    CO = coroutine.create(function()
      do
        local a <close> = obj("a", function() log("yielded", coroutine.yield("in a")) end)
      end
      local b <close> = obj("b", function() coroutine.yield("in b") end)
      return "ret"
    end)
    log(coroutine.resume(CO))
    log(coroutine.resume(CO, "r1"))
    log(coroutine.resume(CO))
    log(coroutine.status(CO), coroutine.close(CO))
    "#,
    // Recursion with a handler per level, closed from the deepest yield.
    r#"
    local function deep(n)
      local x <close> = obj("level" .. n)
      if n == 0 then coroutine.yield("bottom") else deep(n - 1) end
    end
    CO = coroutine.create(function() deep(6) end)
    log(coroutine.resume(CO))
    log(coroutine.close(CO))
    "#,
    // A dead-by-error coroutine closed by a wrap's caller and resumed through wrap.
    r#"
    local co
    local f = coroutine.wrap(function()
      co = coroutine.running()
      local a <close> = obj("a")
      coroutine.yield(1)
      error("boom", 0)
    end)
    log(f())
    log(coroutine.status(co))
    log(pcall(f))
    log(coroutine.status(co), coroutine.close(co))
    "#,
    // Values through yield and resume, generators, yield of nothing.
    r#"
    local gen = coroutine.wrap(function(a)
      for i = 1, 3 do a = coroutine.yield(i, a) end
      coroutine.yield()
      return "end", nil
    end)
    log(gen("a")) log(gen("b")) log(gen("c")) log(select('#', gen("d"))) log(gen())
    log(pcall(gen))
    local c = coroutine.create(function() return coroutine.yield() end)
    log(coroutine.resume(c)) log(coroutine.resume(c, 1, nil, 3)) log(coroutine.resume(c))
    log(coroutine.isyieldable(), coroutine.status(c))
    "#,
    // A handler that closes the coroutine whose handlers are waiting (dead by an error).
    r#"
    local d = coroutine.create(function() local x <close> = obj("d.x") error("d err", 0) end)
    log(coroutine.resume(d))
    local e = coroutine.wrap(function()
      local y <close> = obj("e.y", function() log("close d", coroutine.close(d)) end)
      coroutine.yield("e1")
    end)
    log(e())
    log(e())
    log(coroutine.close(d), coroutine.status(d))
    "#,
    // An error raised by a handler at a normal block end inside a coroutine.
    r#"
    CO = coroutine.create(function()
      local a <close> = obj("a")
      do
        local b <close> = obj("b", function() error("b failed", 0) end)
      end
      log("not reached")
    end)
    log(coroutine.resume(CO))
    log(coroutine.close(CO))
    "#,
    // Errors raised where the caller called: positions and names as Lua's.
    r#"
    CO = coroutine.create(function()
      log(pcall(function() coroutine.close(coroutine.running()) end))
      log(pcall(function() local s = coroutine.status(5) return s end))
      log(pcall(coroutine.status))
      log(pcall(function() local close = coroutine.close close({}) end))
    end)
    log(coroutine.resume(CO))
    "#,
    // A close unwinds through a pcall around the yield itself, and through a message handler
    // that would swallow it.
    r#"
    CO = coroutine.create(function()
      local a <close> = obj("a")
      log("pcall", pcall(coroutine.yield, "y1"))
      log(xpcall(coroutine.yield, function(e) log("handler") return "handled" end, "y2"))
      while true do
        local ok = pcall(function() local b <close> = obj("b") coroutine.yield("y3") end)
        log("looping", ok)
      end
    end)
    log(coroutine.resume(CO))
    log(coroutine.resume(CO))
    log(coroutine.resume(CO))
    log(coroutine.close(CO))
    "#,
    // A coroutine that closes one it created while it is suspended inside a handler's loop.
    r#"
    CO = coroutine.wrap(function()
      local inner = coroutine.create(function()
        local x <close> = obj("inner.x", function() log("inner yieldable", coroutine.isyieldable()) end)
        coroutine.yield("i")
      end)
      log(coroutine.resume(inner))
      local y <close> = obj("outer.y", function() log("close inner", coroutine.close(inner)) end)
      coroutine.yield("o")
      error("outer failed", 0)
    end)
    log(CO())
    log(pcall(CO))
    "#,
    // A `__close` given after setmetatable, below a caller whose temporaries hold thousands of
    // varargs: the walk that guards such handlers used to count those temporaries against its
    // budget and stop short, so the handler ran as the coroutine unwound (first, and for a
    // coroutine dead by an error before `close`) instead of in Lua's order.
    r#"
    CO = coroutine.create(function()
      local a <close> = late("a")
      local b <close> = obj("b")
      local function v(...) coroutine.yield() end
      local function w() local t = {} for i = 1, 6000 do t[i] = i end v(table.unpack(t)) end
      w()
    end)
    log(coroutine.resume(CO))
    log(coroutine.close(CO))
    local d = coroutine.create(function()
      local a <close> = late("da")
      local b <close> = obj("db")
      local function v(...) error("E", 0) end
      local function w() local t = {} for i = 1, 6000 do t[i] = i end v(table.unpack(t)) end
      w()
    end)
    log(coroutine.resume(d))
    log("closing")
    log(coroutine.close(d))
    "#,
    // Bad arguments to every coroutine function: Lua's message, naming the function as its
    // caller did (these named the sandbox's own locals, with its own positions).
    r#"
    log(pcall(coroutine.create, 5))
    log(pcall(coroutine.wrap, {}))
    log(pcall(coroutine.create))
    log(pcall(coroutine.resume, 5))
    log(pcall(coroutine.resume))
    log(pcall(coroutine.resume, nil))
    log(pcall(function() local c = coroutine.create(setmetatable({}, { __call = print })) return c end))
    log(pcall(function() local w = coroutine.wrap(nil) return w end))
    log(pcall(function() coroutine.resume("x") end))
    log(pcall(coroutine.isyieldable, 5))
    log(pcall(coroutine.isyieldable, nil))
    log(pcall(coroutine.isyieldable))
    local c = coroutine.create(function(...) return select('#', ...), ... end)
    log(coroutine.resume(c, nil, 2, nil))
    "#,
];

fn reference() -> Lua {
    Lua::new()
}

fn sandboxed() -> (Lua, Table) {
    let data = protoserve::data::DataSets::default();
    let (lua, sandbox) =
        protoserve::script::sandbox::new_state(Path::new("handlers"), &data, 64 << 20).unwrap();
    let env: Table = sandbox.new_env.call(lua.globals()).unwrap();
    (lua, env)
}

fn run(lua: &Lua, env: Option<&Table>, case: &str) -> String {
    let code = format!("{PRELUDE}\n{case}\nreturn table.concat(L, '\\n')");
    let mut chunk = lua.load(code).set_name("=case");
    if let Some(env) = env {
        chunk = chunk.set_environment(env.clone());
    }
    match chunk.eval::<String>() {
        Ok(s) => s,
        Err(e) => format!("FAILED: {e}"),
    }
}

/// Runs `case` in a plain Lua state and in a sandboxed one; the logs must be the same.
fn assert_same(case: &str) {
    let expected = run(&reference(), None, case);
    assert!(!expected.starts_with("FAILED"), "{expected}");
    let (lua, env) = sandboxed();
    let got = run(&lua, Some(&env), case);
    assert_eq!(expected, got, "{case}");
}

/// A `__close` given after setmetatable below levels full of named locals (a function may have
/// 200): the walk that guards such handlers gave up after 5 000 locals, so a handler a few
/// dozen calls deep ran as the coroutine unwound, out of Lua's order, instead of in it.
#[test]
fn late_close_below_levels_of_many_locals_runs_in_order() {
    let locals: String = (1..=190).map(|i| format!("local v{i} = {i} ")).collect();
    let case = format!(
        r#"
    local function fat(n)
      {locals}
      if n == 0 then coroutine.yield() else fat(n - 1) end
      return v1 + v190
    end
    CO = coroutine.create(function()
      local a <close> = late("a")
      local b <close> = obj("b")
      fat(30)
    end)
    log(coroutine.resume(CO))
    log(coroutine.close(CO))
    local function fat2(n)
      {locals}
      if n == 0 then error("deep", 0) else fat2(n - 1) end
      return v1 + v190
    end
    local d = coroutine.create(function()
      local a <close> = late("da")
      local b <close> = obj("db")
      fat2(26)
    end)
    log(coroutine.resume(d))
    log("closing")
    log(coroutine.close(d))
    "#
    );
    assert_same(&case);
}

#[test]
fn coroutine_close_behaves_as_lua_does() {
    let mut failures = Vec::new();
    for (i, case) in CASES.iter().enumerate() {
        // A fresh state per case, so no case leans on what another left.
        let lua = reference();
        let expected = run(&lua, None, case);
        let (lua, env) = sandboxed();
        let got = run(&lua, Some(&env), case);
        assert!(!expected.starts_with("FAILED"), "case {i}: {expected}");
        if expected != got {
            failures.push(format!(
                "case {i}:{case}\n--- Lua:\n{expected}\n--- sandbox:\n{got}\n"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The same snippets in one sandboxed state one after another: what a case leaves behind (a
/// coroutine parked with handlers pending, one never closed) changes nothing for the next.
#[test]
fn cases_in_one_state_answer_as_in_fresh_ones() {
    let (lua, env) = sandboxed();
    for (i, case) in CASES.iter().enumerate() {
        let expected = run(&reference(), None, case);
        let got = run(&lua, Some(&env), case);
        assert_eq!(expected, got, "case {i}");
    }
}
