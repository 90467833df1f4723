//! User coroutines against Lua 5.4 where Lua cannot yield.
//!
//! Lua's own library calls some script code from C: a `table.sort` comparator (and the `__lt`
//! and `__len` it runs), a `string.gsub` replacement function or table, the `__tostring` that
//! `tostring`, `string.format("%s")` and `print` run, the metamethods that `table.concat`,
//! `insert`, `remove`, `unpack`, `move`, `ipairs`, `math.max` and `os.time` read or compare
//! through, string arithmetic's other operand, an `xpcall` message handler. There a coroutine
//! cannot yield: `coroutine.yield` fails with "attempt to yield across a C-call boundary" and
//! `coroutine.isyieldable` is false. The server runs those loops in Lua, so that its time
//! slices can pause them, and a script's `coroutine.yield` inside them simply yielded (and the
//! coroutine could be resumed in the middle of a sort). Now each case answers as stock Lua 5.4
//! does, word for word; metamethods the VM runs (`__index`, `__eq`, `__lt`, `__le`, `__len`,
//! `__concat`, `__call`, arithmetic, `__close`, `__pairs`) stay yieldable, as in Lua; and a
//! comparator that never returns is still paused for other calls and stopped by the budget.

mod common;

use std::time::{Duration, Instant};

use serde_json::json;
use tonic::Code;

const PROTO: &str = r#"
syntax = "proto3";
package coroutines;

service S {
  rpc Case (Req) returns (Out);
  rpc Spin (Req) returns (Out);
  rpc Quick (Req) returns (Out);
}

message Req { string name = 1; }
message Out { string text = 1; }
"#;

/// The cases, as run by stock `lua5.4` to make [`STOCK`]: each runs in a coroutine of its own,
/// and `try` says what `coroutine.resume` gave and the coroutine's status after.
const CASES: &str = r##"local function show(...)
  local t = table.pack(...)
  for i = 1, t.n do t[i] = tostring(t[i]) end
  return table.concat(t, " | ", 1, t.n)
end
local function try(f)
  local co = coroutine.create(f)
  return show(coroutine.resume(co)) .. " | " .. coroutine.status(co)
end
local function Y() coroutine.yield("y") end
local function obj(event, f) return setmetatable({}, { [event] = f }) end
local function printable() return obj("__tostring", function() Y() return "T" end) end
local CASES = {
  sort = function() table.sort({ 3, 1, 2 }, function(a, b) Y() return a < b end) return "done" end,
  sort_isyieldable = function()
    local r
    table.sort({ 3, 1, 2 }, function(a, b) r = coroutine.isyieldable() return a < b end)
    return r
  end,
  sort_caught = function()
    local r
    table.sort({ 3, 1, 2 }, function(a, b) r = select(2, pcall(coroutine.yield, 1)) return a < b end)
    return r
  end,
  sort_pcall = function() return pcall(table.sort, { 3, 1, 2 }, function(a, b) Y() return a < b end) end,
  sort_lt = function()
    local mt = { __lt = function(a, b) Y() return a.v < b.v end }
    table.sort({ setmetatable({ v = 2 }, mt), setmetatable({ v = 1 }, mt) })
    return "done"
  end,
  sort_len = function() table.sort(obj("__len", function() Y() return 0 end)) return "done" end,
  sort_inner_coroutine = function()
    local got = {}
    table.sort({ 3, 1, 2 }, function(a, b)
      got[#got + 1] = coroutine.wrap(function() coroutine.yield(1) end)()
      return a < b
    end)
    return #got > 0 and got[1]
  end,
  sort_outer_isyieldable = function()
    local r
    table.sort({ 2, 1 }, function(a, b)
      local outer = coroutine.running()
      coroutine.wrap(function() r = tostring(coroutine.isyieldable(outer)) .. "," .. tostring(coroutine.isyieldable()) end)()
      return a < b
    end)
    return r
  end,
  gsub_function = function() return string.gsub("abc", "%w", function(c) Y() return c end) end,
  gsub_table = function() return ("abc"):gsub("%w", obj("__index", function(_, c) Y() return c end)) end,
  tostring = function() return tostring(printable()) end,
  format = function() return string.format("%s", printable()) end,
  print = function() print(printable()) return "done" end,
  string_arith = function() return "1" + obj("__add", function() Y() return 1 end) end,
  concat_index = function()
    return table.concat(setmetatable({}, { __index = function() Y() return "x" end, __len = function() return 2 end }))
  end,
  concat_len = function() return table.concat(obj("__len", function() Y() return 0 end)) end,
  insert = function() table.insert(obj("__newindex", Y), 1, 1) return "done" end,
  remove = function() return table.remove(obj("__len", function() Y() return 0 end)) end,
  unpack = function() return table.unpack(obj("__index", function() Y() return 1 end), 1, 1) end,
  move = function() return table.move(obj("__index", function() Y() return 1 end), 1, 1, 1, {})[1] end,
  ipairs = function()
    for _ in ipairs(obj("__index", function(_, k) if k < 2 then Y() return 1 end end)) do end
    return "done"
  end,
  max = function()
    local mt = { __lt = function() Y() return true end }
    return math.max(setmetatable({}, mt), setmetatable({}, mt)) ~= nil
  end,
  os_time = function() return os.time(obj("__index", function() Y() return 1 end)) end,
  xpcall_handler = function() return xpcall(error, function(e) Y() return e end, "boom") end,
  -- Yieldable in Lua 5.4, and here.
  index = function() return obj("__index", function() Y() return 1 end).x end,
  newindex = function() obj("__newindex", Y).x = 1 return "done" end,
  eq = function() local mt = { __eq = function() Y() return true end } return setmetatable({}, mt) == setmetatable({}, mt) end,
  lt = function() local mt = { __lt = function() Y() return true end } return setmetatable({}, mt) < setmetatable({}, mt) end,
  le = function() local mt = { __le = function() Y() return true end } return setmetatable({}, mt) <= setmetatable({}, mt) end,
  len = function() return #obj("__len", function() Y() return 1 end) end,
  concat = function() return "a" .. obj("__concat", function() Y() return "c" end) end,
  call = function() return obj("__call", function() Y() return 1 end)() end,
  add = function() return obj("__add", function() Y() return 1 end) + 1 end,
  close = function() do local x <close> = obj("__close", Y) end return "done" end,
  pairs = function() for _ in pairs(obj("__pairs", function() Y() return next, {}, nil end)) do end return "done" end,
  pcall_body = function() return pcall(Y) end,
  xpcall_body = function() return xpcall(Y, error) end,
  -- After a yield refused inside a library function, the coroutine yields again as usual.
  after_refusal = function()
    pcall(table.sort, { 2, 1 }, function() Y() end)
    pcall(string.gsub, "a", "a", function() error("x") end)
    Y()
    return "done"
  end,
}
"##;

const SCRIPT_END: &str = r##"
function Case(req) return { text = try(CASES[req.name]) } end

-- A comparator (or replacement function) that never returns, inside a user coroutine.
function Spin(req)
  local co = coroutine.wrap(function()
    if req.name == "sort" then
      table.sort({ 3, 1, 2 }, function() while true do end end)
    else
      string.gsub("abc", "%w", function() while true do end end)
    end
  end)
  co()
  return { text = "returned" }
end

function Quick() return { text = "quick" } end
"##;

/// What stock Lua 5.4 (`lua5.4` 5.4.4) printed for each case: `coroutine.resume`'s results,
/// then the coroutine's status.
const STOCK: &[(&str, &str)] = &[
    ("add", "true | y | suspended"),
    ("after_refusal", "true | y | suspended"),
    ("call", "true | y | suspended"),
    ("close", "true | y | suspended"),
    ("concat", "true | y | suspended"),
    (
        "concat_index",
        "false | attempt to yield across a C-call boundary | dead",
    ),
    (
        "concat_len",
        "false | attempt to yield across a C-call boundary | dead",
    ),
    ("eq", "true | y | suspended"),
    (
        "format",
        "false | attempt to yield across a C-call boundary | dead",
    ),
    (
        "gsub_function",
        "false | attempt to yield across a C-call boundary | dead",
    ),
    (
        "gsub_table",
        "false | attempt to yield across a C-call boundary | dead",
    ),
    ("index", "true | y | suspended"),
    (
        "insert",
        "false | attempt to yield across a C-call boundary | dead",
    ),
    (
        "ipairs",
        "false | attempt to yield across a C-call boundary | dead",
    ),
    ("le", "true | y | suspended"),
    ("len", "true | y | suspended"),
    ("lt", "true | y | suspended"),
    (
        "max",
        "false | attempt to yield across a C-call boundary | dead",
    ),
    (
        "move",
        "false | attempt to yield across a C-call boundary | dead",
    ),
    ("newindex", "true | y | suspended"),
    (
        "os_time",
        "false | attempt to yield across a C-call boundary | dead",
    ),
    ("pairs", "true | y | suspended"),
    ("pcall_body", "true | y | suspended"),
    (
        "print",
        "false | attempt to yield across a C-call boundary | dead",
    ),
    (
        "remove",
        "false | attempt to yield across a C-call boundary | dead",
    ),
    (
        "sort",
        "false | attempt to yield across a C-call boundary | dead",
    ),
    (
        "sort_caught",
        "true | attempt to yield across a C-call boundary | dead",
    ),
    ("sort_inner_coroutine", "true | 1 | dead"),
    ("sort_isyieldable", "true | false | dead"),
    (
        "sort_len",
        "false | attempt to yield across a C-call boundary | dead",
    ),
    (
        "sort_lt",
        "false | attempt to yield across a C-call boundary | dead",
    ),
    ("sort_outer_isyieldable", "true | false,true | dead"),
    (
        "sort_pcall",
        "true | false | attempt to yield across a C-call boundary | dead",
    ),
    (
        "string_arith",
        "false | attempt to yield across a C-call boundary | dead",
    ),
    (
        "tostring",
        "false | attempt to yield across a C-call boundary | dead",
    ),
    (
        "unpack",
        "false | attempt to yield across a C-call boundary | dead",
    ),
    ("xpcall_body", "true | y | suspended"),
    (
        "xpcall_handler",
        "true | false | error in error handling | dead",
    ),
];

async fn serve(extra: &[&str]) -> (common::Server, common::Client, tempfile::TempDir) {
    let handlers = r#"{ "service": "coroutines.S", "methods": {
  "Case": { "script": "co.lua" }, "Spin": { "script": "co.lua" }, "Quick": { "script": "co.lua" } } }"#;
    let script = format!("{CASES}{SCRIPT_END}");
    common::serve_files(
        &[
            ("protos/co.proto", PROTO),
            ("handlers/co.json", handlers),
            ("handlers/co.lua", &script),
        ],
        extra,
    )
    .await
}

#[tokio::test]
async fn user_coroutines_yield_where_stock_lua_lets_them_and_nowhere_else() {
    let (_server, client, _dir) = serve(&[]).await;
    let mut wrong = Vec::new();
    for (name, stock) in STOCK {
        let out = client
            .unary("coroutines.S/Case", json!({ "name": name }))
            .await
            .unwrap_or_else(|e| panic!("{name}: {e:?}"));
        let got = out["text"].as_str().unwrap_or_default();
        if got != *stock {
            wrong.push(format!("{name}: got {got:?}, stock Lua 5.4 says {stock:?}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} cases differ:\n{}",
        wrong.len(),
        STOCK.len(),
        wrong.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_comparator_that_never_returns_is_still_paused_and_stopped() {
    let (_server, client, _dir) =
        serve(&["--script-states", "1", "--script-time-ms", "1000"]).await;
    for name in ["sort", "gsub"] {
        let probe = common::probe(
            &client,
            "coroutines.S/Quick",
            "quick",
            Duration::from_millis(1500),
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        let started = Instant::now();
        let status = client
            .unary("coroutines.S/Spin", json!({ "name": name }))
            .await
            .expect_err(name);
        let took = started.elapsed();
        assert_eq!(status.code(), Code::ResourceExhausted, "{name}: {status:?}");
        assert!(
            took < Duration::from_secs(5),
            "{name}: stopped after {took:?}"
        );
        let (worst, calls) = probe.await.unwrap();
        assert!(calls > 10, "{name}: only {calls} calls answered meanwhile");
        assert!(
            worst < Duration::from_millis(400),
            "{name}: a call on the same state waited {worst:?} (the spinning one took {took:?})"
        );
    }
}
