//! The Rust pattern matcher against Lua 5.4's own: the same results and the same error messages
//! for `find`, `match`, `gmatch` and `gsub` on hand-picked cases covering every feature and
//! every error, and on thousands of generated (pattern, subject) pairs.

use mlua::Lua;

/// A plain state whose C `find`/`match`/`gmatch`/`gsub` are kept as `C.*` before the bounded
/// ones replace them.
fn state() -> Lua {
    let lua = Lua::new();
    lua.load(
        "C = { find = string.find, match = string.match, gmatch = string.gmatch, \
         gsub = string.gsub, rep = string.rep, concat = table.concat, format = string.format }",
    )
    .exec()
    .unwrap();
    protoserve::script::stdlib::install(&lua).unwrap();
    lua
}

/// Runs every case through both implementations (in Lua) and returns the disagreements.
const COMPARE: &str = r##"
local function show(...)
  local n = select("#", ...)
  local out = { tostring(n) }
  for i = 1, n do
    local v = select(i, ...)
    out[#out + 1] = math.type(v) or type(v)
    out[#out + 1] = tostring(v)
  end
  return table.concat(out, "|")
end

-- Called through pcall, Lua's own functions have no name to report ("bad argument #1 to '?'").
local function err(e)
  return "ERR:" .. (tostring(e):gsub("to '[%w?]+'", "to '_'"))
end

local function run(f, ...)
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
local function same(what, a, b)
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
    let lua = state();
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
        "#,
    )
    .exec()
    .unwrap();
    let (count, mismatches): (u64, String) = lua
        .globals()
        .get::<mlua::Function>("report")
        .unwrap()
        .call(())
        .unwrap();
    assert!(count > 5000, "{count}");
    assert!(mismatches.is_empty(), "{mismatches}");
}

#[test]
fn matcher_agrees_with_lua_on_generated_patterns() {
    let lua = state();
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
    let (count, mismatches): (u64, String) = lua
        .globals()
        .get::<mlua::Function>("report")
        .unwrap()
        .call(())
        .unwrap();
    assert!(count > 50_000, "{count}");
    assert!(mismatches.is_empty(), "{mismatches}");
}
