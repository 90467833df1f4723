//! Long strings read as numbers (`tonumber`, `tonumber(s, base)` and string arithmetic, which
//! the server reads in pieces from 64 KiB on) against Lua 5.4's own reading of the same
//! strings: the same values, of the same subtype, and the same errors, on generated numerals
//! made long by spaces, leading zeros, long digit runs and long exponents.

use mlua::Lua;

/// A plain state whose C `tonumber` and string arithmetic are kept as `C.*` before the server's
/// standard library wraps them.
fn state() -> Lua {
    let lua = Lua::new();
    lua.load(
        "local mt = getmetatable('') \
         C = { tonumber = tonumber, add = mt.__add, unm = mt.__unm, idiv = mt.__idiv, \
               mul = mt.__mul, mod = mt.__mod }",
    )
    .exec()
    .unwrap();
    protoserve::script::stdlib::install(&lua).unwrap();
    lua
}

const COMPARE: &str = r##"
local function show(ok, v)
  if not ok then
    -- Positions are not compared: Lua's functions are called directly here, where their
    -- errors name none, and ours through an operator, where Lua's too name the script's line.
    local e = tostring(v):gsub("^[%w_/.]+:%d+:%d*:? ?", "")
    return "ERR:" .. e:gsub("to '[%w?]+'", "to '_'")
  end
  if type(v) == "number" then
    return (math.type(v) or "?") .. ":" .. string.format("%a", v) .. ":" .. tostring(v)
  end
  return type(v) .. ":" .. tostring(v)
end

local mismatches, count = {}, 0
local function same(what, a, b)
  count = count + 1
  if a ~= b and #mismatches < 20 then
    mismatches[#mismatches + 1] = what .. "\n   lua:  " .. a .. "\n   ours: " .. b
  end
end

local function label(s)
  if #s <= 80 then return string.format("%q", s) end
  return string.format("%q..(%d bytes)..%q", s:sub(1, 40), #s, s:sub(-40))
end

function check(s, base)
  if base == nil then
    same("tonumber(" .. label(s) .. ")", show(pcall(C.tonumber, s)), show(pcall(tonumber, s)))
    same(label(s) .. " + 0", show(pcall(C.add, s, 0)), show(pcall(function() return s + 0 end)))
    same("-" .. label(s), show(pcall(C.unm, s, s)), show(pcall(function() return -s end)))
    same(label(s) .. " // 1", show(pcall(C.idiv, s, 1)), show(pcall(function() return s // 1 end)))
    same("3 * " .. label(s), show(pcall(C.mul, 3, s)), show(pcall(function() return 3 * s end)))
    same(label(s) .. " % " .. label(s), show(pcall(C.mod, s, s)),
      show(pcall(function() return s % s end)))
  else
    same("tonumber(" .. label(s) .. ", " .. tostring(base) .. ")",
      show(pcall(C.tonumber, s, base)), show(pcall(tonumber, s, base)))
  end
end

function report()
  return count, table.concat(mismatches, "\n")
end
"##;

fn report(lua: &Lua) -> (u64, String) {
    lua.load("return report()").eval::<(u64, String)>().unwrap()
}

/// Numerals built from pieces, each made long in several ways.
const GENERATE: &str = r##"
local LONG = 70000
math.randomseed(20261130)
local pick = function(t) return t[math.random(#t)] end
local function digits(hex, n)
  local set = hex and "0123456789abcdefABCDEF" or "0123456789"
  local out = {}
  for i = 1, n do
    local r = math.random(#set)
    if math.random(3) == 1 then r = 1 end
    out[i] = set:sub(r, r)
  end
  return table.concat(out)
end
local spaces = { "", " ", "\t", "\n\v\f\r ", }
local signs = { "", "-", "+", "--", "+-" }
local junk = { "", "", "", "", "x", "e", "p", "n", "\0", ".", "..", "g", "z", "_" }
for _ = 1, 600 do
  local hex = math.random(3) == 1
  local int = digits(hex, math.random(0, 25))
  local point = math.random(3) == 1 and "." or ""
  local frac = point ~= "" and digits(hex, math.random(0, 6)) or ""
  local exp = ""
  if math.random(3) == 1 then
    exp = (hex and pick({ "p", "P", "e" }) or pick({ "e", "E", "p" }))
      .. pick({ "", "-", "+", "++" }) .. digits(false, math.random(0, 4))
  end
  local lead, trail = pick(spaces), pick(spaces)
  local sign = pick(signs)
  local prefix = hex and pick({ "0x", "0X", "0x", "x", "0" }) or ""
  local j = pick(junk)
  local where = math.random(8)
  local s
  if where == 1 then -- long leading spaces
    s = string.rep(" ", LONG) .. lead .. sign .. prefix .. int .. point .. frac .. exp .. j .. trail
  elseif where == 2 then -- long trailing spaces
    s = lead .. sign .. prefix .. int .. point .. frac .. exp .. j .. trail .. string.rep(" ", LONG)
  elseif where == 3 then -- long leading zeros
    s = lead .. sign .. prefix .. string.rep("0", LONG) .. int .. point .. frac .. exp .. j .. trail
  elseif where == 4 then -- long fraction of zeros, then digits
    s = lead .. sign .. prefix .. int .. "." .. string.rep("0", LONG) .. frac .. exp .. j .. trail
  elseif where == 5 then -- long significant digits
    s = lead .. sign .. prefix .. int .. digits(hex, LONG) .. point .. frac .. exp .. j .. trail
  elseif where == 6 then -- long exponent
    s = lead .. sign .. prefix .. int .. point .. frac .. (hex and "p" or "e") .. pick({ "", "-" })
      .. string.rep(pick({ "0", "9", "1" }), LONG) .. j .. trail
  elseif where == 7 then -- long zeros after significant digits
    s = lead .. sign .. prefix .. int .. point .. frac .. string.rep("0", LONG) .. digits(hex, 3) .. exp .. j .. trail
  else -- digits then a long run of zeros before the point
    s = lead .. sign .. prefix .. "1" .. string.rep("0", LONG) .. point .. frac .. exp .. j .. trail
  end
  check(s)
  if not hex and exp == "" and point == "" then
    check(s, math.random(2, 36))
  end
end
-- Bases: arguments Lua checks, and strings in every base.
local s = string.rep(" ", LONG) .. "7f"
for _, b in ipairs({ 16, "16", " 16 ", "0x10", 16.0, "16.0", 16.5, "x", 1, 37, 0, -1, true, {} }) do
  check(s, b)
end
for b = 2, 36 do
  check(string.rep("1", LONG), b)
  check(string.rep("z", LONG), b)
  check("-" .. string.rep("0", LONG) .. "Zz ", b)
  check(" +" .. string.rep("9", LONG) .. "\0", b)
end
"##;

#[test]
fn long_numerals_read_as_lua_reads_them() {
    let lua = state();
    lua.load(COMPARE).exec().unwrap();
    lua.load(GENERATE).exec().unwrap();
    let (count, mismatches) = report(&lua);
    assert!(count > 3_000, "only {count} comparisons");
    assert!(mismatches.is_empty(), "{mismatches}");
}
