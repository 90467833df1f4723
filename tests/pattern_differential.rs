//! The Rust pattern matcher against Lua 5.4's own: the same results and the same error messages
//! for `find`, `match`, `gmatch` and `gsub` on hand-picked cases covering every feature and
//! every error, and on thousands of generated (pattern, subject) pairs.

use mlua::Lua;

/// A plain state whose C `find`/`match`/`gmatch`/`gsub` are kept as `C.*` before the bounded
/// ones replace them: all pattern calls in Rust (`matcher_only`), or routed as in the server.
fn state(matcher_only: bool) -> Lua {
    let lua = Lua::new();
    lua.load(
        "C = { find = string.find, match = string.match, gmatch = string.gmatch, \
         gsub = string.gsub, rep = string.rep, concat = table.concat, format = string.format }",
    )
    .exec()
    .unwrap();
    if matcher_only {
        protoserve::script::stdlib::install_matcher_only(&lua).unwrap();
    } else {
        protoserve::script::stdlib::install(&lua).unwrap();
    }
    lua
}

/// Runs every case through both implementations (in Lua) and returns the disagreements.
const COMPARE: &str = r##"
function show(...)
  local n = select("#", ...)
  local out = { tostring(n) }
  for i = 1, n do
    local v = select(i, ...)
    out[#out + 1] = math.type(v) or type(v)
    out[#out + 1] = type(v) == "table" and "{}" or tostring(v)
  end
  return table.concat(out, "|")
end

-- Called through pcall, Lua's own functions have no name to report ("bad argument #1 to '?'").
local function err(e)
  return "ERR:" .. (tostring(e):gsub("to '[%w?]+'", "to '_'"))
end

function run(f, ...)
  local r = table.pack(pcall(f, ...))
  if not r[1] then return err(r[2]) end
  return show(table.unpack(r, 2, r.n))
end

local function collect(gm, ...)
  local ok, iter = pcall(gm, ...)
  if not ok then return err(iter) end
  local out = {}
  for _ = 1, 60 do
    local r = table.pack(pcall(iter))
    if not r[1] then out[#out + 1] = err(r[2]); break end
    if r[2] == nil then break end
    out[#out + 1] = show(table.unpack(r, 2, r.n))
  end
  return table.concat(out, ";")
end

local mismatches, count = {}, 0
function same(what, a, b)
  count = count + 1
  if a ~= b and #mismatches < 25 then
    mismatches[#mismatches + 1] = what .. "\n   lua:  " .. a .. "\n   rust: " .. b
  end
end

local repl_table = { a = "A", b = false, ["1"] = 7, x = {}, ab = "[ab]" }
local function repl_fn(a, b)
  if a == "b" then return nil end
  if a == "c" then return false end
  if a == "x" then return {} end
  if b then return a .. "+" .. tostring(b) end
  return "<" .. tostring(a) .. ">"
end

-- What a replacement function is called with, match by match.
function logged(gsub, s, p, n)
  local log = {}
  local r = run(gsub, s, p, function(...)
    log[#log + 1] = show(...)
    return nil
  end, n)
  return r .. " #" .. table.concat(log, ";")
end
local repl_index = setmetatable({}, { __index = function(_, k)
  if math.type(k) then return k * 2 end
  if #k > 1 then return k:upper() end
  if k == "b" then return false end
end })
local function repl_number(a)
  if type(a) ~= "string" then return 0.5 end
  if a == "" then return 2^53 end
  return #a
end

function compare(s, p)
  local q = string.format("%q %q", s, p)
  same("find " .. q, run(C.find, s, p), run(string.find, s, p))
  same("match " .. q, run(C.match, s, p), run(string.match, s, p))
  for _, init in ipairs({ -100, -3, -1, 0, 2, 4, 7, 100 }) do
    same("find init " .. init .. " " .. q, run(C.find, s, p, init), run(string.find, s, p, init))
    same("match init " .. init .. " " .. q, run(C.match, s, p, init), run(string.match, s, p, init))
    same("gmatch init " .. init .. " " .. q, collect(C.gmatch, s, p, init), collect(string.gmatch, s, p, init))
  end
  same("find plain " .. q, run(C.find, s, p, 1, true), run(string.find, s, p, 1, true))
  same("find plain 3 " .. q, run(C.find, s, p, 3, 1), run(string.find, s, p, 3, 1))
  same("gmatch " .. q, collect(C.gmatch, s, p), collect(string.gmatch, s, p))
  for _, r in ipairs({ "<%0>", "%1", "%2-%1", "%%", "x%", "%x", "", 5, 1.5 }) do
    same("gsub " .. tostring(r) .. " " .. q, run(C.gsub, s, p, r), run(string.gsub, s, p, r))
  end
  same("gsub table " .. q, run(C.gsub, s, p, repl_table), run(string.gsub, s, p, repl_table))
  same("gsub fn " .. q, run(C.gsub, s, p, repl_fn), run(string.gsub, s, p, repl_fn))
  -- A table or a function: the loop runs in Lua, over the matcher's matches.
  same("gsub fn args " .. q, logged(C.gsub, s, p), logged(string.gsub, s, p))
  same("gsub index " .. q, run(C.gsub, s, p, repl_index), run(string.gsub, s, p, repl_index))
  same("gsub numbers " .. q, run(C.gsub, s, p, repl_number), run(string.gsub, s, p, repl_number))
  for _, n in ipairs({ 0, 1, 2, -1, 2.0, "1" }) do
    same("gsub fn n " .. tostring(n) .. " " .. q, run(C.gsub, s, p, repl_fn, n),
      run(string.gsub, s, p, repl_fn, n))
    same("gsub table n " .. tostring(n) .. " " .. q, run(C.gsub, s, p, repl_table, n),
      run(string.gsub, s, p, repl_table, n))
  end
  for _, n in ipairs({ 0, 1, 2, -1, 2.0, 1.5, "2" }) do
    same("gsub n " .. tostring(n) .. " " .. q, run(C.gsub, s, p, "[%0]", n), run(string.gsub, s, p, "[%0]", n))
  end
end

function compare_args(...)
  local args = table.pack(...)
  for _, name in ipairs({ "find", "match", "gsub" }) do
    same(name .. " args " .. show(...), run(C[name], table.unpack(args, 1, args.n)),
      run(string[name], table.unpack(args, 1, args.n)))
  end
  same("gmatch args " .. show(...), collect(C.gmatch, table.unpack(args, 1, args.n)),
    collect(string.gmatch, table.unpack(args, 1, args.n)))
end

function report()
  return count, table.concat(mismatches, "\n")
end
"##;

/// What `COMPARE`'s `same` counted: the comparisons made and the mismatches found.
fn report(lua: &Lua) -> (u64, String) {
    lua.globals()
        .get::<mlua::Function>("report")
        .unwrap()
        .call(())
        .unwrap()
}

const CASES: &[(&str, &str)] = &[
    // classes and their complements
    ("hello World 123\t\n!?", "%a+"),
    ("hello World 123\t\n!?", "%A+"),
    ("ab\x01\x7fc", "%c"),
    ("ab\x01\x7fc", "%C+"),
    ("x=42, y=7", "%d+"),
    ("x=42, y=7", "%D+"),
    ("a b\tc~", "%g+"),
    ("a b\tc~", "%G"),
    ("aBcD", "%l+"),
    ("aBcD", "%L+"),
    ("a.b,c!d", "%p"),
    ("a.b,c!d", "%P+"),
    ("a \t\n\x0b\x0cb", "%s+"),
    ("a \t\n\x0b\x0cb", "%S+"),
    ("aBcD", "%u+"),
    ("aBcD", "%U"),
    ("a_1 b2", "%w+"),
    ("a_1 b2", "%W"),
    ("0xDEADbeefg", "%x+"),
    ("0xDEADbeefg", "%X+"),
    ("a\0b", "%z"),
    ("a\0b", "%Z+"),
    ("a.b", "%."),
    ("50%", "%%"),
    ("a]b", "%]"),
    ("\u{e9}t\u{e9}", "%a+"),
    // dot, sets, ranges
    ("abc", "."),
    ("abc", ".-"),
    ("abc", "a.c"),
    ("hello", "[aeiou]+"),
    ("hello", "[^aeiou]+"),
    ("a-z", "[a-]"),
    ("a-z", "[-a]"),
    ("a]z", "[]]"),
    ("a]z", "[^]]+"),
    ("x1y2", "[%d]"),
    ("x1 y2", "[%a%s]+"),
    ("ABCxyz", "[A-Cx]+"),
    ("b", "[a-]"),
    ("-", "[a-]"),
    ("^a", "[%^a]+"),
    ("a^", "[a^]+"),
    ("abc", "[z-a]"),
    // quantifiers
    ("aaab", "a*"),
    ("aaab", "a+"),
    ("aaab", "a-b"),
    ("aaab", "a?a?b"),
    ("b", "a+b"),
    ("<a><b>", "<.->"),
    ("<a><b>", "<.*>"),
    ("xxx", "x-$"),
    ("  trim  ", "^%s*(.-)%s*$"),
    // anchors
    ("abc", "^a"),
    ("abc", "^b"),
    ("abc", "c$"),
    ("abc", "b$"),
    ("a$c", "$c"),
    ("a$c", "a$c"),
    ("^^", "^^"),
    ("", "^$"),
    ("", ""),
    ("abc", ""),
    ("abc", "^"),
    // captures
    ("key = value", "(%w+)%s*=%s*(%w+)"),
    ("hello", "()ll()"),
    ("hello", "(h)(e)(l)(l)(o)"),
    ("hello", "((l)(l))"),
    ("abcabc", "(abc)%1"),
    ("abab", "(a)(b)%1%2"),
    ("aa", "(a)%1"),
    ("xyz", "()"),
    ("xyz", "(()x)"),
    ("a", "()%1"),
    // balance and frontier
    ("f(a(b)c) d", "%b()"),
    ("[[x]] [y]", "%b[]"),
    ("\"q\" \"r\"", "%b\"\""),
    ("THE (quick) fox", "%f[%a]%a+"),
    ("THE (quick) fox", "%f[%l]%a+"),
    ("hello world", "%f[%w]%w+%f[%W]"),
    ("abc", "%f[%z]"),
    ("abc", "%f[^%z]"),
    ("abc", "%f[a]"),
    ("a(b", "%b()"),
    // malformed patterns and bad captures
    ("abc", "%"),
    ("abc", "a%"),
    ("abc", "[a"),
    ("abc", "[^"),
    ("abc", "["),
    ("abc", "[%"),
    ("abc", "[a%]"),
    ("abc", "%b"),
    ("abc", "%ba"),
    ("abc", "%f"),
    ("abc", "%fa"),
    ("abc", "%f[a"),
    ("abc", "(a"),
    ("abc", "a)"),
    ("abc", "%1"),
    ("abc", "(a)%2"),
    ("abc", "%0"),
    ("abc", "(a%1)"),
    ("abc", "(()"),
    (
        "aaa",
        "((((((((((((((((((((((((((((((((a))))))))))))))))))))))))))))))))",
    ),
    (
        "aaa",
        "(((((((((((((((((((((((((((((((((a)))))))))))))))))))))))))))))))))",
    ),
    ("abc", "(.)%9"),
];

#[test]
fn matcher_agrees_with_lua_on_every_feature_and_error() {
    every_feature_and_error(true);
}

#[test]
fn routed_pattern_calls_agree_with_lua_on_every_feature_and_error() {
    every_feature_and_error(false);
}

/// The same, with every step the end of a time slice: each call is run again as a job, on a
/// stack of its own, and suspended and resumed at every step of the matcher.
#[test]
fn paused_matcher_agrees_with_lua_on_every_feature_and_error() {
    protoserve::script::pausable::pause_at_every_step(true);
    every_feature_and_error(true);
}

fn every_feature_and_error(matcher_only: bool) {
    let lua = state(matcher_only);
    lua.load(COMPARE).exec().unwrap();
    let compare: mlua::Function = lua.globals().get("compare").unwrap();
    for (s, p) in CASES {
        compare
            .call::<()>((lua.create_string(s).unwrap(), lua.create_string(p).unwrap()))
            .unwrap();
    }
    // Deep patterns: past Lua's 200-deep recursion limit, and just under it.
    lua.load(
        r#"
        compare(string.rep("a", 300), string.rep("a?", 300))
        compare(string.rep("a", 150), string.rep("a?", 150))
        compare(string.rep("a", 250), string.rep("a-", 250) .. "b")
        compare(string.rep("ab", 100), string.rep("(ab)", 20))
        compare(string.rep("x", 40), string.rep("()", 33))
        compare("a\0b\0c", "%z")
        compare("a\0b\0c", "b\0")
        compare("a\0b\0c", "[\0]")
        compare("a.b", "a.b")
        compare_args()
        compare_args("abc")
        compare_args(nil, "a")
        compare_args("abc", nil)
        compare_args({}, "a")
        compare_args("abc", "b", "x")
        compare_args("abc", "b", 1.5)
        compare_args("abc", "b", "2")
        compare_args(123, 2)
        compare_args(12.5, ".")
        compare_args("abc", "b", true)
        -- gsub with a function or a table: errors, odd values, many matches
        local function boom() error("boom") end
        local function truth() return true end
        local upper = function(a) return a:upper() end
        local big = ("ab c"):rep(3000)
        for _, a in ipairs({
          { "abc", "b", boom }, { "abc", "b", truth }, { "abc", "b", {} },
          { "abc", "(b)", { b = true } }, { "abc", "()b", { [2] = "two" } },
          { big, "%w+", upper }, { big, "%w+", upper, 100 }, { big, "", upper, 7 },
          { big, "^ab", upper }, { big, "c$", upper }, { big, "(a)(b)", { a = "A" } },
          { 12345, "%d", { ["3"] = 3.0 } }, { "x", "x", coroutine.running },
          { "abc", "(", upper }, { "abc", "%", upper }, { "abc", "(()", upper },
        }) do
          same("gsub case " .. show(table.unpack(a, 2)), run(C.gsub, table.unpack(a, 1, 4)),
            run(string.gsub, table.unpack(a, 1, 4)))
        end
        same("gsub count", select(2, C.gsub(big, "%s*", upper)), select(2, string.gsub(big, "%s*", upper)))
        "#,
    )
    .exec()
    .unwrap();
    let (count, mismatches) = report(&lua);
    assert!(count > 5000, "{count}");
    assert!(mismatches.is_empty(), "{mismatches}");
}

#[test]
fn matcher_agrees_with_lua_on_generated_patterns() {
    generated_patterns(true);
}

#[test]
fn routed_pattern_calls_agree_with_lua_on_generated_patterns() {
    generated_patterns(false);
}

#[test]
fn paused_matcher_agrees_with_lua_on_generated_patterns() {
    protoserve::script::pausable::pause_at_every_step(true);
    generated_patterns(true);
}

fn generated_patterns(matcher_only: bool) {
    let lua = state(matcher_only);
    lua.load(COMPARE).exec().unwrap();
    lua.load(
        r#"
        local pieces = { "a", "b", "c", "x", " ", ".", "%a", "%d", "%s", "%w", "%p", "%l",
          "%u", "%x", "%c", "%g", "%A", "%S", "%W", "[abc]", "[^ab]", "[a-c]", "[%d%s]", "[]]",
          "[^%a]", "%.", "%%", "%(", "%]", "(", ")", "()", "%1", "%2", "%b()", "%bab",
          "%f[%a]", "%f[%s]", "%f[^a]", "$", "^", "-", "*", "+", "?", "%", "[", "[^" }
        local quants = { "", "", "", "*", "+", "-", "?" }
        local alphabet = { "a", "b", "c", "x", " ", "(", ")", ".", "1", "2", "%", "]", "\0",
          "A", "B", "\t" }
        math.randomseed(54321)
        for _ = 1, 1500 do
          local p = {}
          if math.random(5) == 1 then p[1] = "^" end
          for _ = 1, math.random(0, 5) do
            p[#p + 1] = pieces[math.random(#pieces)] .. quants[math.random(#quants)]
          end
          if math.random(6) == 1 then p[#p + 1] = "$" end
          local s = {}
          for _ = 1, math.random(0, 14) do s[#s + 1] = alphabet[math.random(#alphabet)] end
          compare(table.concat(s), table.concat(p))
        end
        "#,
    )
    .exec()
    .unwrap();
    let (count, mismatches) = report(&lua);
    assert!(count > 50_000, "{count}");
    assert!(mismatches.is_empty(), "{mismatches}");
}

/// The other replaced functions give Lua's own results and errors (small and big inputs).
#[test]
fn wrapped_functions_agree_with_lua() {
    let lua = Lua::new();
    lua.load(
        r#"
        C = {}
        for _, lib in ipairs({ "string", "table", "utf8" }) do
          C[lib] = {}
          for k, v in pairs(_G[lib]) do C[lib][k] = v end
        end
        C._G = { select = select, tonumber = tonumber }
        "#,
    )
    .exec()
    .unwrap();
    protoserve::script::stdlib::install(&lua).unwrap();
    lua.load(COMPARE).exec().unwrap();
    lua.load(
        r##"
        local function dump(t)
          if type(t) ~= "table" then return tostring(t) end
          local out = {}
          for i = -2, 12 do out[#out + 1] = tostring(rawget(t, i)) end
          return table.concat(out, ",") .. "#" .. tostring(rawget(t, "n"))
        end
        local big = ("ab"):rep(600)
        local args = {
          {}, { "abc" }, { "abc", 2 }, { "abc", 2, 3 }, { "abc", -2 }, { "abc", 0, -1 },
          { "abc", 1.5 }, { "abc", "2" }, { "abc", "x" }, { 12, 1 }, { nil, 1 }, { {}, 1 },
          { big }, { big, 3, 1000 }, { big, -700 }, { big, 1, -1 }, { big, 2, 5 },
          { "abc", 3, "-" }, { "", 5 }, { "x", 600 }, { "xy", 400, "," }, { "x", -1 },
          { "x", 2^53 }, { "x", math.maxinteger }, { "", 3, "" },
        }
        for _, name in ipairs({ "rep", "sub", "byte", "upper", "lower", "reverse", "len" }) do
          for _, a in ipairs(args) do
            same(name .. " " .. show(table.unpack(a)), run(C.string[name], table.unpack(a, 1, 3)),
              run(string[name], table.unpack(a, 1, 3)))
          end
        end
        -- Long repetitions (from 16 MiB on, built from blocks): the same strings as Lua's.
        for _, a in ipairs({ { "x", 200000 }, { "ab", 100001 }, { "abc", 70000, "," },
            { "x", 65536 }, { "x", 65537 }, { "xyz", 43690 }, { "x", 300000, "" },
            { ("q"):rep(40000), 3 }, { "ab", 99999, "--" }, { "x", 2, ("s"):rep(70000) },
            { "\0", 131072 }, { "ab", 32767, "c" }, { "x", 1 << 24 }, { "x", (1 << 24) + 1 },
            { "xyz", 5592406 }, { "ab", 5592406, "," }, { "x", 1 << 24, "" },
            { "abc", 4194304, "-" } }) do
          local want = C.string.rep(table.unpack(a, 1, 3))
          local got = string.rep(table.unpack(a, 1, 3))
          same("rep " .. #a[1] .. "x" .. a[2], #want .. tostring(want == got), #want .. "true")
        end
        local fargs = {
          { "%d", 3 }, { "%5.2f|%s|%q", 1.5, "x", "a\nb" }, { "%d", "x" }, { "%d" }, {},
          { "%s %s", big, big }, { big .. "%d", 1 }, { "%y", 1 }, { "%10s", {} },
          { "%s", 1, 2, 3, 4, 5, 6 },
        }
        for _, a in ipairs(fargs) do
          same("format " .. show(table.unpack(a)), run(C.string.format, table.unpack(a)),
            run(string.format, table.unpack(a)))
        end
        local cargs = { {}, { 65, 66 }, { 256 }, { "x" }, { 97, nil } }
        local many = {}
        for i = 1, 700 do many[i] = 97 + i % 20 end
        cargs[#cargs + 1] = many
        for _, a in ipairs(cargs) do
          same("char " .. #a, run(C.string.char, table.unpack(a)), run(string.char, table.unpack(a)))
          same("utf8.char " .. #a, run(C.utf8.char, table.unpack(a)), run(utf8.char, table.unpack(a)))
          same("table.pack " .. #a, dump(C.table.pack(table.unpack(a))), dump(table.pack(table.unpack(a))))
        end
        local pargs = {
          { "i4", 7 }, { "c5", "ab" }, { "c2", "abc" }, { "z", "a" }, { "s1", "ab" }, { "i17", 1 },
          { "c", "x" }, { "!4 i1 i8", 1, 2 }, { "i4" },
        }
        for _, a in ipairs(pargs) do
          same("pack " .. show(table.unpack(a)), run(C.string.pack, table.unpack(a)),
            run(string.pack, table.unpack(a)))
          same("packsize " .. a[1], run(C.string.packsize, a[1]), run(string.packsize, a[1]))
          local ok, packed = pcall(C.string.pack, table.unpack(a))
          if ok then
            same("unpack " .. a[1], run(C.string.unpack, a[1], packed), run(string.unpack, a[1], packed))
            same("unpack pos " .. a[1], run(C.string.unpack, a[1], packed .. big, 2),
              run(string.unpack, a[1], packed .. big, 2))
          end
        end
        local uargs = {
          { "h\u{e9}llo" }, { "h\u{e9}llo", 2 }, { "h\u{e9}llo", 3 }, { "h\u{e9}llo", 1, -1 },
          { "h\u{e9}llo", -2, -1 }, { "\xff" }, { big, 1, -1 }, { big, 5 }, { "abc", 1, 10 },
          { "abc", 0 }, {}, { "abc", "x" },
        }
        for _, name in ipairs({ "codepoint", "len", "offset" }) do
          for _, a in ipairs(uargs) do
            same("utf8." .. name .. " " .. show(table.unpack(a)),
              run(C.utf8[name], table.unpack(a, 1, 3)), run(utf8[name], table.unpack(a, 1, 3)))
          end
        end
        local function fresh(n)
          local t = {}
          for i = 1, n do t[i] = (i * 7) % 11 end
          return t
        end
        local targs = {
          { 5 }, { 5, 1, 99 }, { 5, 7, 99 }, { 5, 0, 99 }, { 5, 6, 99 }, { 5, "x" }, { 5, 1.5, 1 },
          { 700, 1, 99 }, { 0 }, { 5, 1, 2, 3 },
        }
        for _, a in ipairs(targs) do
          local t1, t2 = fresh(a[1]), fresh(a[1])
          same("insert " .. show(table.unpack(a)), run(C.table.insert, t1, table.unpack(a, 2)) .. dump(t1),
            run(table.insert, t2, table.unpack(a, 2)) .. dump(t2))
          local t1, t2 = fresh(a[1]), fresh(a[1])
          same("remove " .. show(table.unpack(a)), run(C.table.remove, t1, table.unpack(a, 2)) .. dump(t1),
            run(table.remove, t2, table.unpack(a, 2)) .. dump(t2))
          local t1, t2 = fresh(a[1]), fresh(a[1])
          same("unpack " .. show(table.unpack(a)), run(C.table.unpack, t1, table.unpack(a, 2)),
            run(table.unpack, t2, table.unpack(a, 2)))
          local t1, t2 = fresh(a[1]), fresh(a[1])
          same("concat " .. show(table.unpack(a)), run(C.table.concat, t1, table.unpack(a, 2)),
            run(table.concat, t2, table.unpack(a, 2)))
          local t1, t2 = fresh(a[1]), fresh(a[1])
          same("move " .. show(table.unpack(a)), run(C.table.move, t1, table.unpack(a, 2)) .. dump(t1),
            run(table.move, t2, table.unpack(a, 2)) .. dump(t2))
          local t1, t2 = fresh(a[1]), fresh(a[1])
          same("sort " .. show(table.unpack(a)), run(C.table.sort, t1) .. dump(t1), run(table.sort, t2) .. dump(t2))
        end
        same("sort desc", (function() local t = fresh(700); C.table.sort(t, function(a, b) return a > b end); return dump(t) end)(),
          (function() local t = fresh(700); table.sort(t, function(a, b) return a > b end); return dump(t) end)())
        same("sort bad", run(C.table.sort, { 3, 1, "x" }), run(table.sort, { 3, 1, "x" }))
        same("sort cmp", run(C.table.sort, { 3, 1 }, 5), run(table.sort, { 3, 1 }, 5))
        same("concat bad", run(C.table.concat, { 1, {}, 3 }), run(table.concat, { 1, {}, 3 }))
        -- Many elements, joined in pieces: numbers, strings, separators, ranges, a bad value.
        local many = {}
        for k = 1, 20000 do many[k] = k % 3 == 0 and k * 0.5 or (k % 3 == 1 and k or "s" .. k) end
        for _, a in ipairs({ {}, { "" }, { ", " }, { "-", 3, 19999 }, { nil, 10, 8202 },
            { "", 1, 8193 }, { "", 1, 8192 }, { 7 }, { ",", 1.0, 12000.0 } }) do
          local want = run(C.table.concat, many, table.unpack(a, 1, 3))
          local got = run(table.concat, many, table.unpack(a, 1, 3))
          same("concat many " .. show(table.unpack(a, 1, 3)), want:sub(1, 80) .. #want, got:sub(1, 80) .. #got)
          same("concat many equal " .. show(table.unpack(a, 1, 3)), "true", tostring(want == got))
        end
        local holes = table.move(many, 1, 20000, 1, {})
        holes[15000] = {}
        same("concat many bad", run(C.table.concat, holes), run(table.concat, holes))
        same("concat sep", run(C.table.concat, { 1, "b", 3 }, ", ", 2), run(table.concat, { 1, "b", 3 }, ", ", 2))
        same("concat float range", run(C.table.concat, { "a", "b" }, "", 1.0, 2.0), run(table.concat, { "a", "b" }, "", 1.0, 2.0))
        same("concat no table", run(C.table.concat, "x"), run(table.concat, "x"))
        same("move to", dump(C.table.move({ 1, 2, 3 }, 1, 3, 2, {})), dump(table.move({ 1, 2, 3 }, 1, 3, 2, {})))
        same("move huge", run(C.table.move, {}, -1, math.maxinteger, 1), run(table.move, {}, -1, math.maxinteger, 1))
        same("move wrap", run(C.table.move, {}, 1, 10, math.maxinteger), run(table.move, {}, 1, 10, math.maxinteger))
        same("unpack huge", run(C.table.unpack, {}, 1, 1e8), run(table.unpack, {}, 1, 1e8))
        same("unpack wide", run(C.table.unpack, {}, math.mininteger, math.maxinteger),
          run(table.unpack, {}, math.mininteger, math.maxinteger))
        for _, a in ipairs({ { 2, "a", "b", "c" }, { "#", 1, 2 }, { -1, "a", "b" }, { 0, "a" }, { "x" }, {} }) do
          same("select " .. show(table.unpack(a)), run(C._G.select, table.unpack(a)), run(select, table.unpack(a)))
        end
        for _, a in ipairs({ { "12" }, { "0x1p4" }, { "z", 36 }, { big }, { "12", 99 }, { {} }, {} }) do
          same("tonumber " .. show(table.unpack(a)), run(C._G.tonumber, table.unpack(a)), run(tonumber, table.unpack(a)))
        end
        "##,
    )
    .exec()
    .unwrap();
    let (count, mismatches) = report(&lua);
    assert!(count > 300, "{count}");
    assert!(mismatches.is_empty(), "{mismatches}");
}

/// `table.sort` is a merge sort written in Lua (so the instruction hook can pause it): against
/// Lua's C sort, the same elements in an order with equal keys at every place, the same errors,
/// each place of the table read once and written once, and no element lost whatever the
/// comparator.
#[test]
fn sort_agrees_with_lua() {
    let lua = Lua::new();
    lua.load("csort = table.sort").exec().unwrap();
    protoserve::script::stdlib::install(&lua).unwrap();
    lua.load(COMPARE).exec().unwrap();
    lua.load(
        r##"
        local csort = csort
        math.randomseed(2024)
        local function numbers(n, range)
          local t = {}
          for i = 1, n do t[i] = math.random(range) end
          return t
        end
        local function records(n, range)
          local t = {}
          for i = 1, n do t[i] = { k = math.random(range), id = i } end
          return t
        end
        local by_k = function(a, b) return a.k < b.k end
        local by_k_desc = function(a, b) return a.k > b.k end
        local lt_mt = { __lt = function(a, b) return a.k < b.k end }
        local function objects(n, range)
          local t = records(n, range)
          for i = 1, n do setmetatable(t[i], lt_mt) end
          return t
        end
        local always = function() return true end
        local never = function() return false end
        local coin = function() return math.random(2) == 1 end
        local le = function(a, b) return a <= b end
        local function key(v) return type(v) == "table" and (v.k .. "/" .. v.id) or tostring(v) end
        -- The elements of t[1..n], as a sorted list of keys: the same for two permutations.
        local function bag(t, n)
          local keys = {}
          for i = 1, n do keys[i] = key(rawget(t, i)) end
          csort(keys)
          return table.concat(keys, ",")
        end
        -- Sorts a copy of `items` with both sorts (through a proxy that logs every access, if
        -- `proxy`). With a consistent `cmp` (nil: `<`) both give the same elements in an order
        -- with equivalent keys at every place, and the same error if any; with any comparator
        -- this sort keeps the elements and touches each place once to read and once to write.
        local function check(tag, items, n, cmp, proxy, consistent)
          local function sorted(sort)
            local store, reads, writes = {}, {}, {}
            for i = 1, n do store[i] = items[i] end
            local t = store
            if proxy then
              t = setmetatable({}, {
                __index = function(_, k) reads[k] = (reads[k] or 0) + 1 return store[k] end,
                __newindex = function(_, k, v) writes[k] = (writes[k] or 0) + 1 store[k] = v end,
                __len = function() return n end,
              })
            end
            return run(sort, t, cmp), store, reads, writes
          end
          local cr, cstore = sorted(csort)
          local r, store, reads, writes = sorted(table.sort)
          same("sort keeps the elements " .. tag, bag(items, n), bag(store, n))
          if proxy and n > 1 then
            local once = true
            for i = 1, n do
              if reads[i] ~= 1 or writes[i] ~= 1 then once = false end
            end
            same("sort touches each place once " .. tag, "true", tostring(once))
          end
          if not consistent then return end
          same("sort result " .. tag, cr, r)
          local less = cmp or function(a, b) return a < b end
          local equivalent = true
          for i = 1, n do
            local x, y = rawget(cstore, i), rawget(store, i)
            if less(x, y) or less(y, x) then equivalent = false end
          end
          same("sort order " .. tag, "true", tostring(equivalent))
        end
        for _, n in ipairs({ 0, 1, 2, 3, 4, 5, 7, 8, 15, 16, 17, 31, 32, 33, 64, 99, 100, 101, 128, 200, 250 }) do
          for _, range in ipairs({ 3, 1000 }) do
            local nums, recs, objs = numbers(n, range), records(n, range), objects(n, range)
            for _, proxy in ipairs({ false, true }) do
              local tag = n .. "/" .. range .. (proxy and " proxy" or "")
              check("numbers " .. tag, nums, n, nil, proxy, true)
              check("numbers desc " .. tag, nums, n, function(a, b) return a > b end, proxy, true)
              check("records " .. tag, recs, n, by_k, proxy, true)
              check("records desc " .. tag, recs, n, by_k_desc, proxy, true)
              check("__lt " .. tag, objs, n, nil, proxy, true)
              for name, bad in pairs({ always = always, never = never, le = le, coin = coin }) do
                check(name .. " " .. tag, nums, n, bad, proxy, false)
              end
            end
          end
        end
        -- Big arrays, plain ones (Lua's own sort) and others (this one).
        for _, n in ipairs({ 1023, 1024, 1025, 5000 }) do
          local nums, strs = numbers(n, 1e6), {}
          for i = 1, n do strs[i] = tostring(nums[i]) end
          local sorted = {}
          for i = 1, n do sorted[i] = i end
          for name, items in pairs({ numbers = nums, strings = strs, sorted = sorted }) do
            check("big " .. name .. " " .. n, items, n, nil, false, true)
            check("big with proxy " .. name .. " " .. n, items, n, nil, true, true)
            check("big desc " .. name .. " " .. n, items, n, function(a, b) return a > b end, false, true)
          end
        end
        -- Errors.
        local function both(what, ...)
          local args = table.pack(...)
          same("sort " .. what, run(csort, table.unpack(args, 1, args.n)), run(table.sort, table.unpack(args, 1, args.n)))
        end
        both("no value")
        both("nil", nil)
        both("string", "abc")
        both("number", 5)
        both("bad comparator", { 3, 1 }, 5)
        both("bad comparator, one element", { 3 }, 5)
        both("false comparator", { 3, 1 }, false)
        both("named comparator", { 3, 1 }, setmetatable({}, { __name = "Thing" }))
        both("mixed", { 3, 1, "x" })
        both("mixed big", setmetatable({ 3, 1, "x", 4, 5, 6, 7, 8, 9, 10, 11, 12 }, {}))
        both("tables", { {}, {} })
        both("nil hole", { 3, nil, 1, n = 3 })
        both("nan", { 3, 0/0, 1, 0/0, 2 })
        both("comparator error", { 3, 1, 2 }, function() error("boom") end)
        both("comparator error table", { 3, 1, 2 }, function() error(setmetatable({}, { __tostring = function() return "E" end })) end)
        both("length not integer", setmetatable({}, { __len = function() return "x" end }))
        both("length float", setmetatable({ 2, 1 }, { __len = function() return 2.0 end }))
        both("length string", setmetatable({ 2, 1 }, { __len = function() return "2" end }))
        both("length fraction", setmetatable({ 2, 1 }, { __len = function() return 1.5 end }))
        both("too big", setmetatable({}, { __len = function() return math.maxinteger end }))
        both("__lt error", { setmetatable({}, { __lt = function() error("lt") end }), 1 })
        "##,
    )
    .exec()
    .unwrap();
    let (count, mismatches) = report(&lua);
    assert!(count > 240, "{count}");
    assert!(mismatches.is_empty(), "{mismatches}");
}

/// `string.upper`, `lower`, `reverse` and `utf8.len` done in Rust (from 64 KiB on in the
/// server; here at every size) against Lua's own: the same results and errors on generated
/// strings of every kind of byte, including malformed and out-of-range UTF-8, and every kind of
/// position argument.
fn bytewise_agrees_with_lua() {
    let lua = Lua::new();
    lua.load(
        "C = { upper = string.upper, lower = string.lower, reverse = string.reverse, \
         len = utf8.len, offset = utf8.offset }",
    )
    .exec()
    .unwrap();
    protoserve::script::stdlib::install_matcher_only(&lua).unwrap();
    lua.load(COMPARE).exec().unwrap();
    lua.load(
        r##"
        math.randomseed(1234)
        local pieces = {
          "a", "Z", "z", "@", "[", "`", "{", "0", " ", "\0", "\127", "\128", "\191", "\192",
          "\255", "\u{e9}", "\u{20ac}", "\u{1f600}", "\u{10ffff}", "\u{d800}", "\u{dfff}",
          "\u{110000}", "\u{7fffffff}", "\u{3ffffff}", "\xc0\x80", "\xe0\x80\x80",
          "\xf0\x80\x80\x80", "\xf8\x88\x80\x80\x80", "\xfe\x80", "\xe2\x82", "\xf4\x90\x80\x80",
          "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz", ("x"):rep(17),
        }
        local subjects = { "", "a", "\xe2\x82\xac", "\xe2\x82", ("\u{e9}"):rep(3000) }
        for _ = 1, 300 do
          local parts = {}
          for i = 1, math.random(0, 40) do parts[i] = pieces[math.random(#pieces)] end
          subjects[#subjects + 1] = table.concat(parts)
        end
        -- ASCII runs around a bad byte, at every offset of an 8-byte word.
        for k = 0, 17 do subjects[#subjects + 1] = ("a"):rep(k) .. "\xff" .. ("b"):rep(20) end
        for k = 0, 17 do subjects[#subjects + 1] = ("a"):rep(k) .. "\u{e9}" .. ("b"):rep(k) end
        local positions = { 0, 1, 2, 3, -1, -2, -3, 7, 100, -100, math.mininteger,
          math.maxinteger, 2.0, 1.5, "2", "x", true }
        for _, s in ipairs(subjects) do
          local q = show(s)
          for _, name in ipairs({ "upper", "lower", "reverse" }) do
            same(name .. " " .. q, run(C[name], s), run(string[name], s))
          end
          same("len " .. q, run(C.len, s), run(utf8.len, s))
          same("len lax " .. q, run(C.len, s, 1, -1, true), run(utf8.len, s, 1, -1, true))
          for _ = 1, 6 do
            local i = positions[math.random(#positions)]
            local j = positions[math.random(#positions)]
            local lax = ({ nil, false, true, 0 })[math.random(4)]
            local a = show(i, j, lax)
            same("len " .. a .. " " .. q, run(C.len, s, i, j, lax), run(utf8.len, s, i, j, lax))
            same("len i " .. a .. " " .. q, run(C.len, s, i), run(utf8.len, s, i))
            local n = ({ 0, 1, 2, 3, -1, -2, 5, -5, 40, -40, 1e9, -1e9 })[math.random(12)]
            same("offset " .. a .. " " .. q, run(C.offset, s, n, i), run(utf8.offset, s, n, i))
            same("offset n " .. tostring(n) .. " " .. q, run(C.offset, s, n),
              run(utf8.offset, s, n))
          end
        end
        -- Arguments Lua checks.
        for _, args in ipairs({ { 12 }, { 1.5 }, { {} }, { nil }, { "abc", nil, nil, "x" } }) do
          local a = show(table.unpack(args, 1, 4))
          same("len " .. a, run(C.len, table.unpack(args, 1, 4)),
            run(utf8.len, table.unpack(args, 1, 4)))
          same("upper " .. a, run(C.upper, table.unpack(args, 1, 1)),
            run(string.upper, table.unpack(args, 1, 1)))
        end
        same("len no value", run(C.len), run(utf8.len))
        same("offset nil", run(C.offset, "abc", nil), run(utf8.offset, "abc", nil))
        same("offset no value", run(C.offset, "abc"), run(utf8.offset, "abc"))
        for _, args in ipairs({ { "abc" }, { "abc", nil }, { "abc", nil, 1 }, { "abc", 1.5 },
            { "abc", "1" }, { "abc", "x" }, { "abc", 1, 1.5 }, { "abc", 1, "x" }, { 12, 1 },
            { "\u{e9}", 1, 2 }, { "\u{e9}", 0, 2 }, { "\u{e9}", -1, 2 }, { "a\u{e9}", 2, 3 } }) do
          local a = show(table.unpack(args, 1, 3))
          same("offset " .. a, run(C.offset, table.unpack(args)), run(utf8.offset, table.unpack(args)))
        end
        same("reverse no value", run(C.reverse), run(string.reverse))
        "##,
    )
    .exec()
    .unwrap();
    let (count, mismatches) = report(&lua);
    assert!(count > 3000, "{count}");
    assert!(mismatches.is_empty(), "{mismatches}");
}

#[test]
fn upper_lower_reverse_and_utf8_len_agree_with_lua() {
    bytewise_agrees_with_lua();
}

/// The same, with every payment the end of a time slice: each call is run again as a job and
/// suspended after every piece.
#[test]
fn paused_upper_lower_reverse_and_utf8_len_agree_with_lua() {
    protoserve::script::pausable::pause_at_every_step(true);
    bytewise_agrees_with_lua();
}

/// Long plain shifts of `table.move`, `insert` and `remove` (from 8 192 elements on, in pieces
/// of 4 096) against Lua's own: the same tables, results and errors, overlapping either way.
#[test]
fn shifts_in_pieces_agree_with_lua() {
    let lua = Lua::new();
    lua.load(
        "C = { move = table.move, insert = table.insert, remove = table.remove, sort = table.sort }",
    )
        .exec()
        .unwrap();
    protoserve::script::stdlib::install(&lua).unwrap();
    lua.load(COMPARE).exec().unwrap();
    lua.load(
        r##"
        local function numbers(n, from)
          local t = {}
          for i = 1, n do t[i] = (from or 0) + i end
          return t
        end
        -- A table's contents as one string: its border, then every key and value, in order.
        local function dump(t)
          local keys = {}
          for k in pairs(t) do keys[#keys + 1] = k end
          C.sort(keys)
          local out = { tostring(#t) }
          for i, k in ipairs(keys) do out[i + 1] = k .. "=" .. tostring(t[k]) end
          return table.concat(out, ",")
        end
        -- Compares two dumps, showing where they first differ.
        local function same_dump(what, a, b)
          if a == b then return same(what, "", "") end
          local at = 1
          while a:byte(at) == b:byte(at) do at = at + 1 end
          local where = "at " .. at .. ": "
          same(what, where .. a:sub(at, at + 80), where .. b:sub(at, at + 80) .. " ")
        end
        local sizes = { 8191, 8192, 8193, 4096 * 5 + 1 }
        for _, n in ipairs(sizes) do
          for _, m in ipairs({
            { 1, n, 2 }, { 1, n, 1 }, { 2, n, 1 }, { 1, n - 100, 101 }, { 101, n, 1 },
            { 1, n, n + 1 }, { 1, n, n }, { 1, n, 5000 }, { 5000, n, 1 }, { 1, n, -n },
            { -10000, -10000 + n, 1 }, { 1, n, math.maxinteger - n + 1 },
            { 1, n, math.maxinteger - n + 2 }, { math.mininteger, math.mininteger + n, 1 },
          }) do
            local f, e, t = m[1], m[2], m[3]
            local tag = table.concat({ n, f, e, t }, " ")
            local a, b = numbers(n), numbers(n)
            same_dump("move " .. tag, run(C.move, a, f, e, t) .. dump(a),
              run(table.move, b, f, e, t) .. dump(b))
            local a2, b2 = numbers(n, 1000000), numbers(n, 1000000)
            local ad, bd = numbers(n), numbers(n)
            same_dump("move to another " .. tag, run(C.move, a2, f, e, t, ad) .. dump(ad),
              run(table.move, b2, f, e, t, bd) .. dump(bd))
            same_dump("move into itself " .. tag, run(C.move, a, f, e, t, a) .. dump(a),
              run(table.move, b, f, e, t, b) .. dump(b))
          end
          for _, pos in ipairs({ 1, 2, 100, n - 8192, n - 8191, n, n + 1, n + 2, 0, -1 }) do
            local a, b = numbers(n), numbers(n)
            same_dump("insert " .. n .. " " .. pos, run(C.insert, a, pos, "v") .. dump(a),
              run(table.insert, b, pos, "v") .. dump(b))
            a, b = numbers(n), numbers(n)
            same_dump("remove " .. n .. " " .. pos, run(C.remove, a, pos) .. dump(a),
              run(table.remove, b, pos) .. dump(b))
          end
        end
        -- Into a table with an `__eq`, where Lua's move compares the two tables: one that cannot
        -- be called fails, a function decides the direction.
        for _, eq in ipairs({ 5, function() return true end, function() return false end }) do
          local n = 9000
          local a, b = numbers(n), numbers(n)
          local ad, bd = setmetatable({}, { __eq = eq }), setmetatable({}, { __eq = eq })
          same_dump("move to a table with __eq " .. type(eq),
            run(C.move, a, 1, n, 2, ad) .. dump(ad), run(table.move, b, 1, n, 2, bd) .. dump(bd))
        end
        -- Positions Lua's functions convert: floats with an integral value and numeric strings
        -- (long shifts at such positions go in pieces too), and ones they refuse.
        local n = 4096 * 5 + 1
        for _, m in ipairs({
          { 1.0, n, 2 }, { "1", n, "2" }, { 2, n + 0.0, 1.0 }, { "0x10", n, 1 }, { 1, " 20000 ", n },
          { "1e0", n - 1, 2 }, { 1, n, 2.5 }, { 1.5, n, 2 }, { 1, n, "x" }, { 1, 2.0 ^ 63, 1 },
          { 1, math.maxinteger + 0.0, 2 }, { -2.0 ^ 63, 1, 1 },
        }) do
          local f, e, t = m[1], m[2], m[3]
          local tag = show(f, e, t)
          local a, b = numbers(n), numbers(n)
          same_dump("move " .. tag, run(C.move, a, f, e, t) .. dump(a),
            run(table.move, b, f, e, t) .. dump(b))
          local ad, bd = numbers(n, 1000000), numbers(n, 1000000)
          same_dump("move to another " .. tag, run(C.move, a, f, e, t, ad) .. dump(ad),
            run(table.move, b, f, e, t, bd) .. dump(bd))
        end
        for _, pos in ipairs({ 1.0, "1", 2.0, "100", n + 0.0, " 1 ", "0x2", 1.5, "x", -0.0, 0.0 }) do
          local tag = show(pos)
          local a, b = numbers(n), numbers(n)
          same_dump("insert " .. tag, run(C.insert, a, pos, "v") .. dump(a),
            run(table.insert, b, pos, "v") .. dump(b))
          a, b = numbers(n), numbers(n)
          same_dump("remove " .. tag, run(C.remove, a, pos) .. dump(a),
            run(table.remove, b, pos) .. dump(b))
        end
        local a, b = numbers(n), numbers(n)
        same_dump("remove nil", run(C.remove, a, nil) .. dump(a), run(table.remove, b, nil) .. dump(b))
        -- Borders of tables with holes, and of tables kept in their hash part.
        local function holed(m) local t = numbers(m) t[m // 2] = nil t[m + 5] = "far" return t end
        local function hashed(m)
          local t = {}
          for i = m, 1, -1 do t[i] = i end
          return t
        end
        for k, make in ipairs({ holed, hashed }) do
          for _, pos in ipairs({ 1, 2.0, "100", n // 2 }) do
            local tag = k .. " " .. show(pos)
            local a, b = make(n), make(n)
            same_dump("insert " .. tag, run(C.insert, a, pos, "v") .. dump(a),
              run(table.insert, b, pos, "v") .. dump(b))
            a, b = make(n), make(n)
            same_dump("remove " .. tag, run(C.remove, a, pos) .. dump(a),
              run(table.remove, b, pos) .. dump(b))
          end
          local a, b = make(n), make(n)
          same_dump("move " .. k, run(C.move, a, 1, n, 3) .. dump(a),
            run(table.move, b, 1, n, 3) .. dump(b))
        end
        -- Sources and destinations that are not tables: a string reads nils through its
        -- `__index`; the rest fail as Lua's move fails.
        for _, src in ipairs({ "abc", 12, false }) do
          for _, dest in ipairs({ "none", "same", "table", "newindex", 5 }) do
            local function args(into)
              if dest == "none" then return src, 1, n, 1 end
              if dest == "same" then return src, 1, n, 1, src end
              if dest == "table" then return src, 1, n, 2, into end
              if dest == "newindex" then
                -- Script code for each write (Lua's move calls it from C; here from Lua).
                local log = {}
                local proxy = setmetatable({}, { __newindex = function(_, k, v)
                  log[#log + 1] = k
                  into[k] = v == nil and "nil" or v
                end })
                return src, 1, 20, 3, proxy
              end
              return src, 1, n, 1, dest
            end
            local tag = show(src, dest)
            local a, b = numbers(n), numbers(n)
            same_dump("move from " .. tag, run(C.move, args(a)) .. dump(a),
              run(table.move, args(b)) .. dump(b))
          end
        end
        -- Lua's move returns its destination itself.
        local a, d = numbers(n), {}
        same("move returns the table", "true true",
          tostring(rawequal(table.move(a, 1, n, 2), a)) .. " "
            .. tostring(rawequal(table.move(a, 1, n, 1, d), d)))
        -- A frozen-style table: reads through an `__index` table, no script code.
        local n = 10000
        local store = numbers(n)
        local proxy = setmetatable({}, { __index = store })
        local a, b = {}, {}
        same_dump("move from an index table", run(C.move, proxy, 1, n, 1, a) .. dump(a),
          run(table.move, proxy, 1, n, 1, b) .. dump(b))
        "##,
    )
    .exec()
    .unwrap();
    let (count, mismatches) = report(&lua);
    assert!(count > 240, "{count}");
    assert!(mismatches.is_empty(), "{mismatches}");
}

/// `string.format("%q")` of strings from 64 KiB on, quoted in Rust: the same text as Lua's own
/// for every kind of byte (control characters before digits, at the ends of pieces too), and the
/// same results and errors when other directives and arguments come with it.
fn quoting_agrees_with_lua() {
    let lua = Lua::new();
    lua.load("C = { format = string.format }").exec().unwrap();
    protoserve::script::stdlib::install(&lua).unwrap();
    lua.load(COMPARE).exec().unwrap();
    lua.load(
        r##"
        math.randomseed(99)
        local function same_text(what, a, b)
          if a == b then return same(what, "", "") end
          local at = 1
          while a:byte(at) == b:byte(at) do at = at + 1 end
          local where = "at " .. at .. ": "
          same(what, where .. a:sub(at, at + 40), where .. b:sub(at, at + 40) .. " ")
        end
        local alphabet = { "\0", "\1", "\9", "\10", "\13", "\31", "\127", "\128", "\255", "0",
          "5", "9", "a", '"', "\\", " ", "\u{e9}" }
        local subjects = {}
        for k = 1, 12 do
          local parts, n = {}, 65536 + math.random(0, 3000)
          for i = 1, n do parts[i] = alphabet[math.random(k < 6 and #alphabet or 6)] end
          subjects[k] = table.concat(parts)
        end
        subjects[#subjects + 1] = ("x"):rep(65535) .. "\0"
        subjects[#subjects + 1] = ("\0"):rep(70000) .. "1"
        subjects[#subjects + 1] = ("a"):rep(1023) .. "\0" .. ("1"):rep(70000)
        subjects[#subjects + 1] = ("abc"):rep(30000)
        for i, s in ipairs(subjects) do
          for _, f in ipairs({ { "%q", s }, { "<%q>", s }, { "%d %q %s", 7, s, "x" },
              { "%q %q", s, s }, { "%q %%q %5.1f", s, 2.5 }, { "%q", s, {} }, { "%s %q", {}, s },
              { "%q %100d", s, 1 }, { "%-q", s }, { "%q %q", s }, { "%q %d", s, "x" } }) do
            local tag = i .. " " .. f[1]
            local n = #f
            same_text("format " .. tag, run(C.format, table.unpack(f, 1, n)),
              run(string.format, table.unpack(f, 1, n)))
          end
        end
        "##,
    )
    .exec()
    .unwrap();
    let (count, mismatches) = report(&lua);
    assert!(count > 150, "{count}");
    assert!(mismatches.is_empty(), "{mismatches}");
}

#[test]
fn quoting_big_strings_agrees_with_lua() {
    quoting_agrees_with_lua();
}

/// The same, with every payment the end of a time slice.
#[test]
fn paused_quoting_of_big_strings_agrees_with_lua() {
    protoserve::script::pausable::pause_at_every_step(true);
    quoting_agrees_with_lua();
}

/// `tonumber` (with and without a base) and string arithmetic on strings read in Rust (every
/// string here, whatever its length) against Lua's own: the same integer or float, bit for bit,
/// the same nil and the same errors, on hand-picked numerals (rounding cases with digits far
/// past the ones a float keeps, exponents past any float, hexadecimal integers that wrap) and
/// on thousands of generated strings.
fn numerals_agree_with_lua() {
    let lua = Lua::new();
    lua.load(
        "C = { tonumber = tonumber, add = getmetatable('').__add, \
         unm = getmetatable('').__unm, idiv = getmetatable('').__idiv }",
    )
    .exec()
    .unwrap();
    protoserve::script::stdlib::install_matcher_only(&lua).unwrap();
    lua.load(COMPARE).exec().unwrap();
    lua.load(
        r##"
        -- Numbers exactly: the subtype, and a float's every bit (and the sign of a zero).
        local function exact(...)
          local out = { tostring(select("#", ...)) }
          for i = 1, select("#", ...) do
            local v = select(i, ...)
            local t = math.type(v)
            out[#out + 1] = t == "float" and ("float " .. string.format("%a", v))
              or t == "integer" and ("integer " .. string.format("%d", v)) or type(v)
          end
          return table.concat(out, "|")
        end
        local function call(f, ...)
          local r = table.pack(pcall(f, ...))
          if not r[1] then return "ERR:" .. tostring(r[2]) end
          return exact(table.unpack(r, 2, r.n))
        end
        local string_mt = getmetatable("")
        local function check(s)
          local q = string.format("%q", #s > 120 and (s:sub(1, 60) .. "..." .. s:sub(-60)) or s)
          q = q .. " (" .. #s .. " bytes)"
          same("tonumber " .. q, call(C.tonumber, s), call(tonumber, s))
          same("tonumber nil base " .. q, call(C.tonumber, s, nil), call(tonumber, s, nil))
          same("add " .. q, call(C.add, s, 1), call(string_mt.__add, s, 1))
          same("add to " .. q, call(C.add, 0.5, s), call(string_mt.__add, 0.5, s))
          same("unm " .. q, call(C.unm, s, s), call(string_mt.__unm, s, s))
          same("idiv " .. q, call(C.idiv, s, "7"), call(string_mt.__idiv, s, "7"))
        end
        local cases = {
          "", " ", "0", "-0", "+0", "00", "1", "-1", "  12  ", "\t\n\v\f\r7\r\f\v\n\t", "1 2",
          "1\0", "\0", "0x", "0X1F", "-0x10", "0x-1", "0xg", "0x.8", "0x8.", "0x.p1", "0x1p",
          "0x1p-1074", "0x1p-1075", "0x1.fffffffffffff8p1023", "0x1.fffffffffffff7ffp1023",
          "0x1p1024", "0x1e", "0x1e5", "1e5", "1E+5", "1e-5", "1e", "1e+", "1e-", "e5", ".e5",
          ".", "5.", ".5", "-.5", "- 5", "--5", "+-5", "1.5.5", "1e5.5", "inf", "-inf", "nan",
          "infinity", "1f", "1p5", "0b101", "1_000", "١", "9223372036854775807",
          "9223372036854775808", "-9223372036854775808", "-9223372036854775809",
          "18446744073709551616", "0x7fffffffffffffff", "0xffffffffffffffff",
          "0x10000000000000000", "1e308", "1.8e308", "1e309", "-1e309", "4.9e-324", "2.5e-324",
          "2.4703282292062327e-324", "2.4703282292062328e-324", "1e-400", "0e999999999999",
          "9007199254740993", "9007199254740993.0", "9007199254740992.5",
          "1" .. ("0"):rep(400), "0." .. ("0"):rep(400) .. "1", ("0"):rep(1000) .. "42",
          ("0"):rep(1000) .. "9223372036854775808", "-" .. ("0"):rep(1000) .. "9223372036854775808",
          "0x" .. ("0"):rep(1000) .. "1p3", "0x" .. ("f"):rep(1000), "-0x" .. ("1"):rep(999),
          "0x1." .. ("0"):rep(1000) .. "1p0", "1e" .. ("9"):rep(40), "1e-" .. ("9"):rep(40),
          ("9"):rep(1000) .. "e-" .. ("9"):rep(30), "0." .. ("0"):rep(2000) .. "1e2001",
          ("1"):rep(3000) .. "e-2999", ("1"):rep(3000) .. ".5", ("7"):rep(5000) .. "x",
        }
        -- Halfway between two floats, then just above and just below it, far past 800 digits.
        for _, half in ipairs({ "9007199254740993", "4503599627370497.5",
            "2.2250738585072011e-308", "1.7976931348623158e308" }) do
          local mantissa, e = half:match("^([^e]*)(.*)$")
          if not mantissa:find(".", 1, true) then mantissa = mantissa .. "." end
          cases[#cases + 1] = mantissa .. ("0"):rep(1000) .. e
          cases[#cases + 1] = mantissa .. ("0"):rep(1000) .. "1" .. e
          cases[#cases + 1] = mantissa .. ("0"):rep(799) .. "1" .. e
          cases[#cases + 1] = mantissa .. ("0"):rep(800) .. "1" .. e
        end
        -- The exact halfway value between the two smallest subnormals (2^-1075), written out
        -- in full (751 significant digits), and just above it.
        local function halfway_subnormal()
          -- 5^1075 in decimal, as digits least significant first.
          local d = { 1 }
          for _ = 1, 1075 do
            local carry = 0
            for i = 1, #d do
              local v = d[i] * 5 + carry
              d[i], carry = v % 10, v // 10
            end
            while carry > 0 do d[#d + 1], carry = carry % 10, carry // 10 end
          end
          local s = {}
          for i = #d, 1, -1 do s[#s + 1] = d[i] end
          return table.concat(s) .. "e-1075"
        end
        local half = halfway_subnormal()
        cases[#cases + 1] = half
        cases[#cases + 1] = (half:gsub("e%-1075", ("0"):rep(300) .. "1e-1376"))
        cases[#cases + 1] = (half:gsub("e%-1075", "00001e-1080"))
        cases[#cases + 1] = (half:gsub("%de%-1075", function(d) return d - 1 .. "9e-1076" end))
        for _, s in ipairs(cases) do check(s) end
        -- Generated: pieces of numerals put together at random.
        math.randomseed(42)
        local pieces = { "0", "1", "5", "9", "00", "123", ("0"):rep(900), ("3"):rep(900),
          ".", ".", "e", "E", "e-", "e+", "p", "P", "p-", "0x", "0X", "x", "a", "F", "f", " ",
          "\t", "-", "+", "\0", "n", "inf", "7e3", "0x1p", ("9"):rep(30) }
        for _ = 1, 4000 do
          local parts = {}
          for i = 1, math.random(1, 7) do parts[i] = pieces[math.random(#pieces)] end
          check(table.concat(parts))
        end
        -- Bases.
        local bases = { 2, 8, 10, 16, 36, 36.0, "16", "0x10", 1, 37, 0, -16, 16.5, "x", {}, true,
          math.maxinteger, math.mininteger }
        local digits = { "", " ", "0", "1", "12", "ff", "FF", " -ZZ ", "+z", "-", "- 1", "1 2",
          "12\0", "1.0", "z", "Zz9", ("1"):rep(100), ("f"):rep(100), ("z"):rep(300),
          " " .. ("7"):rep(70) .. " ", "0x10", "١" }
        for _, s in ipairs(digits) do
          for _, b in ipairs(bases) do
            local q = string.format("%q base %s", s, tostring(b))
            same("tonumber " .. q, call(C.tonumber, s, b), call(tonumber, s, b))
          end
        end
        for _, args in ipairs({ { 10, 16 }, { nil, 10 }, { {}, 10 } }) do
          local q = tostring(args[1]) .. " base " .. tostring(args[2])
          same("tonumber " .. q, call(C.tonumber, args[1], args[2]), call(tonumber, args[1], args[2]))
        end
        same("tonumber no value", call(C.tonumber), call(tonumber))
        "##,
    )
    .exec()
    .unwrap();
    let (count, mismatches) = report(&lua);
    assert!(count > 20_000, "{count}");
    assert!(mismatches.is_empty(), "{mismatches}");
}

#[test]
fn numerals_agree_with_lua_tonumber_and_arithmetic() {
    numerals_agree_with_lua();
}

/// The same, with every payment the end of a time slice: each long string is read as a job,
/// suspended after every piece.
#[test]
fn paused_numerals_agree_with_lua_tonumber_and_arithmetic() {
    protoserve::script::pausable::pause_at_every_step(true);
    numerals_agree_with_lua();
}
