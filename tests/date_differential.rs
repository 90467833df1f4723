//! `os.date` with a long format (formatted by the server in pieces the hook can pause between)
//! against Lua 5.4's own `os.date` on the same format and time: the same text, or the same
//! error, for generated formats of every conversion, escaped `%`, `E`/`O` modifiers, `!`
//! (UTC) and invalid conversions at any place.

use mlua::Lua;

#[test]
fn long_formats_give_what_lua_gives() {
    let lua = Lua::new();
    lua.load("C = { date = os.date }").exec().unwrap();
    protoserve::script::stdlib::install(&lua).unwrap();
    let (count, oks, mismatches): (u64, u64, String) = lua
        .load(
            r##"
local function show(ok, v)
  if ok then return "OK:" .. v end
  return "ERR:" .. tostring(v)
end
local function label(s)
  if #s <= 60 then return string.format("%q", s) end
  return string.format("%q..(%d bytes)..%q", s:sub(1, 30), #s, s:sub(-30))
end
math.randomseed(11302026)
local pieces = { "%Y", "%m", "%d", "%H", "%M", "%S", "%a", "%b", "%c", "%x", "%X", "%%", "%Ec",
  "%EY", "%Od", "%OH", "%j", "%p", "E", "O", "%%E", "%%O", "x", "-", " " }
local bad = { "%q", "%E%", "%Oq", "%Eq", "%" }
local mismatches, count, oks = {}, 0, 0
for i = 1, 300 do
  local parts, n = {}, math.random(2000, 5000)
  if math.random(4) == 1 then parts[1] = "!" end
  for j = #parts + 1, n do parts[j] = pieces[math.random(#pieces)] end
  local fmt = table.concat(parts)
  if math.random(3) == 1 then
    local at = math.random(#fmt)
    fmt = fmt:sub(1, at) .. bad[math.random(#bad)] .. fmt:sub(at + 1)
  end
  local t = math.random(0, 2000000000)
  local a, b = show(pcall(C.date, fmt, t)), show(pcall(os.date, fmt, t))
  count = count + 1
  if a:sub(1, 3) == "OK:" then oks = oks + 1 end
  if a ~= b and #mismatches < 10 then
    local k = 1
    while k <= #a and a:byte(k) == b:byte(k) do k = k + 1 end
    mismatches[#mismatches + 1] = label(fmt) .. " at " .. t .. ": differ from byte " .. k
      .. "\n   lua:  " .. label(a:sub(math.max(1, k - 30))) .. "\n   ours: "
      .. label(b:sub(math.max(1, k - 30)))
  end
end
return count, oks, table.concat(mismatches, "\n")
"##,
        )
        .eval()
        .unwrap();
    assert_eq!(count, 300);
    // Both formatted texts and errors were compared.
    assert!((50..250).contains(&oks), "{oks} of {count} formatted");
    assert!(mismatches.is_empty(), "{mismatches}");
}
