-- The Lua side of src/script/stdlib.rs: small inputs go straight to Lua's own function (the
-- instruction hook bounds them); big ones charge their work first. Each original is called
-- through a local of its own name and with the caller's arguments as given, so Lua's
-- "bad argument #2 to 'rep' (number expected, got no value)" messages stay the same.
local FAIL, core = ...
local type, error, mtype, maxinteger = type, error, math.type, math.maxinteger
local select = select
local spend, span_cost, bytes_cost = core.spend, core.span_cost, core.bytes_cost

-- Bytes (or values) a call may touch before its work is charged on its own.
local SMALL = 512

local function pass(...) return ... end

-- Script code that a C library function calls (a metamethod, a callback) runs where Lua cannot
-- yield, so the instruction hook cannot pause it for other calls on the state. Each library
-- function that may call script code therefore looks at its arguments first: plain values and
-- tables whose reads run no script code go to Lua's own C function at once; anything else takes
-- a path written here, in Lua, that calls the script code from Lua, where the hook pauses it.
local c_getmetatable, rawget = getmetatable, rawget
-- A table's raw metatable (past `__metatable`); see the end of this file.
local metatable = core.metatable

-- Where Lua's own function would call script code from C, that code cannot yield: while the
-- paths here run it, its coroutine is barred, so that `coroutine.yield` fails and
-- `coroutine.isyieldable` is false there as in Lua (see barrier.rs). An error leaves the mark
-- to the protected call that catches it.
local bar, unbar = core.barrier.bar, core.barrier.unbar

-- `__len` functions that are known to run no script code (those of frozen tables).
local trusted_len = setmetatable({}, { __mode = "k" })

-- Whether reading keys of `t` (and `#t` when `len`) runs no script code: `t` has no metatable,
-- or only tables stand behind its `__index` (as for the hidden contents of a frozen table).
local function reads_plain(t, len)
  if c_getmetatable(t) == nil then return true end
  local mt = metatable(t)
  if len then
    local l = rawget(mt, "__len")
    if l ~= nil and not trusted_len[l] then return false end
  end
  for _ = 1, 8 do
    local index = rawget(mt, "__index")
    if index == nil then return true end
    if type(index) ~= "table" then return false end
    if c_getmetatable(index) == nil then return true end
    mt = metatable(index)
  end
  return false
end

-- Whether writing keys of `t` runs no script code (the same for `__newindex`).
local function writes_plain(t)
  if c_getmetatable(t) == nil then return true end
  local mt = metatable(t)
  for _ = 1, 8 do
    local newindex = rawget(mt, "__newindex")
    if newindex == nil then return true end
    if type(newindex) ~= "table" then return false end
    if c_getmetatable(newindex) == nil then return true end
    mt = metatable(newindex)
  end
  return false
end

-- A table's own metamethod `event` if it can be called: script code a C function would call.
-- That is a function, or a table with a `__call` (Lua calls those too); calling anything else
-- fails at once, and is left to Lua's own function and its error.
local function script_meta(v, event)
  if type(v) ~= "table" or c_getmetatable(v) == nil then return nil end
  local f = rawget(metatable(v), event)
  local tf = type(f)
  if tf == "function" then return f end
  if tf == "table" and c_getmetatable(f) ~= nil and rawget(metatable(f), "__call") ~= nil then
    return f
  end
  return nil
end

-- A pattern function that ran past its call's time slice returns PENDING and a job that goes
-- on with it: resumed from here, so that between two resumes the hook can pause the call, as
-- it pauses any Lua code (see pausable.rs). Tail calls: no stack grows, error levels hold.
local PENDING, resume_job = core.PENDING, core.resume
local function settled(first, ...)
  if first == PENDING then return settled(resume_job((...))) end
  return first, ...
end

-- Raises a pattern function's error as Lua's own would: a string, at the caller's line.
local function checked(first, ...)
  if first == PENDING then return checked(resume_job((...))) end
  if first == FAIL then error((...), 2) end
  return first, ...
end

-- Raises an error caught from Lua's own function again, at the caller's line.
local function rethrow(ok, ...)
  if ok then return ... end
  error((...), 2)
end

-- `tostring` as Lua's (luaL_tolstring): a table's `__tostring` function is called from here.
local c_tostring = tostring
local function to_string(...)
  local v = ...
  local f = type(v) == "table" and script_meta(v, "__tostring")
  if not f then
    if v == nil and select("#", ...) == 0 then
      error("bad argument #1 to 'tostring' (value expected)", 2)
    end
    local s = c_tostring(v)
    return s
  end
  local c = bar()
  local s = f(v)
  unbar(c)
  local ts = type(s)
  if ts ~= "string" then
    if ts ~= "number" then error("'__tostring' must return a string", 2) end
    s = c_tostring(s)
  end
  return s
end
_G.tostring = to_string

do -- math.random and math.randomseed: a generator per call (see random.rs)
  local random, randomseed = core.random, core.randomseed
  math.random = function(...)
    local r, e = random(select("#", ...), ...)
    if r == nil then error(e, 2) end
    return r
  end
  math.randomseed = function(...) return checked(randomseed(select("#", ...), ...)) end
end

do -- patterns: matched in Rust, which charges every step, unless the work is provably small
  local find, match, gsub = core.find, core.match, core.gsub
  local c_find, c_match, c_gmatch, c_gsub = string.find, string.match, string.gmatch, string.gsub
  local pcall, FREE, CHARGED = pcall, core.free_work, core.charged_work

  -- How many items of `p` may make Lua's matcher loop over the subject (quantifiers, %b,
  -- back-references), counted generously; nil for a long pattern. Cached, in a bounded table.
  local loops, cached = {}, 0
  local function loop_count(p)
    local q = loops[p]
    if q == nil then
      if #p > 64 then return nil end
      local rest, refs = c_gsub(p, "%%[b1-9]", "")
      local _, marks = c_gsub((c_gsub(rest, "%%.", "")), "[%*%+%-%?]", "")
      q = refs + marks
      if cached >= 256 then loops, cached = {}, 0 end
      loops[p], cached = q, cached + 1
    end
    return q
  end

  -- A bound on the steps Lua's own matcher can take on `s` and `p` (each start, times every
  -- way to expand each loop, times the pattern), plus the bytes a replacement of `rlen` bytes
  -- can write (each of n matches, each `%0` up to n bytes); nil when it could be large.
  local function c_work(s, p, rlen)
    if type(s) ~= "string" or type(p) ~= "string" or #s >= CHARGED or rlen >= CHARGED then
      return nil
    end
    local q = loop_count(p)
    if q == nil or q > 3 then return nil end
    local n = #s + 1
    local w = n * (#p + 1) + n * n * rlen
    for _ = 1, q do
      w = w * n
      if w > CHARGED then return nil end
    end
    if w > CHARGED then return nil end
    return w
  end

  -- The count lets a missing argument be reported as "no value", as Lua does.
  string.find = function(...)
    local s, p, init = ...
    if init == nil or mtype(init) == "integer" then
      local w = c_work(s, p, 0)
      if w then
        if w > FREE then spend(w >> 2) end
        return rethrow(pcall(c_find, ...))
      end
    end
    return checked(find(select("#", ...), ...))
  end
  string.match = function(...)
    local s, p, init = ...
    if init == nil or mtype(init) == "integer" then
      local w = c_work(s, p, 0)
      if w then
        if w > FREE then spend(w >> 2) end
        return rethrow(pcall(c_match, ...))
      end
    end
    return checked(match(select("#", ...), ...))
  end

  -- gsub with a table or a function: the loop runs here, in Lua, so the instruction hook can
  -- pause a long replacement function (or `__index`) for other calls, as it pauses any Lua
  -- code; Lua's own gsub would call it from C, where nothing can pause it. The Rust matcher
  -- finds each match (see `gsub_next` in stdlib.rs) and the result is built as Lua's is.
  local prepare, next_match = core.gsub_prepare, core.gsub_next
  local gmatch_prepare, gmatch_next = core.gmatch_prepare, core.gmatch_next
  local load_time_iterators, loading = core.load_time_iterators, core.loading
  local sub, concat = string.sub, table.concat

  local function call(f, at, e, ...)
    if at == nil or at == FAIL then return at, e end
    return at, e, (f(...))
  end
  local function look_up(t, at, e, key)
    if at == nil or at == FAIL then return at, e end
    return at, e, t[key]
  end

  string.gsub = function(...)
    local s, p, r, n = ...
    local tr = type(r)
    if tr == "string" and type(s) == "string" and (n == nil or mtype(n) == "integer") then
      local w = c_work(s, p, #r)
      if w then
        if w > FREE then spend(w >> 2) end
        return rethrow(pcall(c_gsub, ...))
      end
    end
    if tr ~= "function" and tr ~= "table" then return checked(gsub(select("#", ...), ...)) end
    local src, pat, max_n, anchor = prepare(select("#", ...), ...)
    if src == FAIL then error(pat, 2) end
    local fn = tr == "function"
    local parts, count, size = {}, 0, 0
    local done, at, last = 0, 0, -1
    local c = bar()
    while done < max_n do
      local s1, e, v
      if fn then
        s1, e, v = call(r, settled(next_match(src, pat, at, last, true)))
      else
        s1, e, v = look_up(r, settled(next_match(src, pat, at, last, false)))
      end
      if s1 == nil then break end
      if s1 == FAIL then error(e, 2) end
      done = done + 1
      if s1 > at then
        count = count + 1
        parts[count] = sub(src, at + 1, s1)
        size = size + (s1 - at)
      end
      if not v then
        v = sub(src, s1 + 1, e) -- false or nil keeps the match
      else
        local tv = type(v)
        if tv == "number" then
          v = v .. ""
        elseif tv ~= "string" then
          error("invalid replacement value (a " .. tv .. ")", 2)
        end
      end
      count = count + 1
      parts[count] = v
      size = size + #v
      at, last = e, e
      if anchor then break end
    end
    unbar(c)
    if done == 0 then return src, 0 end
    if at < #src then
      count = count + 1
      parts[count] = sub(src, at + 1)
      size = size + (#src - at)
    end
    if size > SMALL then bytes_cost(size, "string.gsub") end
    return concat(parts, "", 1, count), done
  end
  string.gmatch = function(...)
    local s, p, init = ...
    if init == nil or mtype(init) == "integer" then
      local w = c_work(s, p, 0)
      -- Each step of Lua's iterator is bounded by the same small amount.
      if w and w <= FREE then
        local iterator = c_gmatch(...)
        -- Lua's own iterator keeps its position too: one made while loading is noted as well.
        if loading() then load_time_iterators[iterator] = true end
        return iterator
      end
    end
    local src, pat, at, len, loading = gmatch_prepare(select("#", ...), ...)
    if src == FAIL then error(pat, 2) end
    local last = -1
    -- The iterator's step: the next match's captures, after moving past it.
    local function step(s1, e, ...)
      if s1 == nil then
        at = len + 1
        return
      end
      if s1 == FAIL then error(e, 2) end
      at, last = e, e
      return ...
    end
    local function iterator() return step(settled(gmatch_next(src, pat, at, last))) end
    -- Made while loading: noted, so that one a script keeps is a startup error (its position
    -- would be shared by every call).
    if loading then load_time_iterators[iterator] = true end
    return iterator
  end
end

do
  local rep, rep_cost = string.rep, core.rep_cost
  -- Lua's rep copies its string once per repetition, so a short string repeated into a big
  -- result is slow to build (a byte at a time for ("x"):rep(1e8), 0.4 s in one C call that
  -- nothing can pause). From BIG bytes on, the result is built from blocks of about BLOCK
  -- bytes instead (`unit` `n` times, then `last`): a few copies at memory speed, each its own
  -- call, giving the same string. (A remainder costs one more copy of the result, which is
  -- why small results keep Lua's own loop.)
  local BLOCK, BIG = 1 << 16, 1 << 24
  local function blocked(unit, n, last)
    local k = BLOCK // #unit
    local body = rep(rep(unit, k), n // k)
    local tail = n % k > 0 and rep(unit, n % k) or ""
    if last then return body .. tail .. last end
    if tail ~= "" then return body .. tail end
    return body
  end
  string.rep = function(...)
    local s, n, sep = ...
    if sep == nil and type(s) == "string" and mtype(n) == "integer" and n <= SMALL
        and #s * n <= SMALL then
      local r = rep(...) return r
    end
    if rep_cost(s, n, sep) then
      -- (rep_cost refused what memory cannot hold, so the sizes here are far from overflow)
      if type(s) == "string" and mtype(n) == "integer" and n > 1 and #s > 0 then
        if (sep == nil or sep == "") and #s < BLOCK // 2 and n >= BIG // #s
            and n < (1 << 40) // #s then
          return blocked(s, n)
        end
        if type(sep) == "string" and #s + #sep < BLOCK // 2 and n >= BIG // (#s + #sep)
            and n < (1 << 40) // (#s + #sep) then
          return blocked(s .. sep, n - 1, s)
        end
      end
      local r = rep(...) return r
    end
    return "" -- an empty result, which Lua's rep would still loop n times to build
  end
end

do
  -- From BYTEWISE bytes on, the work is done in Rust in pieces the hook can pause between
  -- (see bytewise.rs); Lua's own functions would walk the whole string in one C call.
  local upper, lower, reverse = string.upper, string.lower, string.reverse
  local bytewise, BYTEWISE = core.bytewise, core.bytewise_from
  string.upper = function(...)
    local s = ...
    if type(s) == "string" then
      if #s >= BYTEWISE then return checked(bytewise(s, 0)) end
      if #s > SMALL then spend(#s // 8) end
    end
    local r = upper(...) return r
  end
  string.lower = function(...)
    local s = ...
    if type(s) == "string" then
      if #s >= BYTEWISE then return checked(bytewise(s, 1)) end
      if #s > SMALL then spend(#s // 8) end
    end
    local r = lower(...) return r
  end
  string.reverse = function(...)
    local s = ...
    if type(s) == "string" then
      if #s >= BYTEWISE then return checked(bytewise(s, 2)) end
      if #s > SMALL then spend(#s // 8) end
    end
    local r = reverse(...) return r
  end
end

do
  local sub, byte, char = string.sub, string.byte, string.char
  string.sub = function(...)
    local s, i, j = ...
    if type(s) == "string" and #s > SMALL then span_cost("sub", #s, i, j) end
    local r = sub(...) return r
  end
  string.byte = function(...)
    local s, i, j = ...
    if j ~= nil and type(s) == "string" and #s > SMALL then span_cost("byte", #s, i, j) end
    return pass(byte(...))
  end
  string.char = function(...)
    local n = select("#", ...)
    if n > SMALL then spend(n) end
    local r = char(...) return r
  end
end

do
  local format, format_cost, find, pack, unpack = string.format, core.format_cost, string.find, table.pack, table.unpack

  -- The format and arguments to give Lua's format: each table that `%s` converts replaced by
  -- `tostring`'s result, so that its `__tostring` runs here rather than in Lua's format; and
  -- each string of BYTEWISE bytes or more that a `%q` quotes replaced by its quoted text, made
  -- in Rust in pieces the hook can pause between (see bytewise.rs), with that `%q` made a `%s`,
  -- which adds the text as it is (Lua's own quoting adds a byte at a time: 1.8 s for 50 MB in
  -- one C call). The directives are found as Lua's format reads them; a malformed one is left
  -- for Lua's format to report.
  local bytewise, BYTEWISE = core.bytewise, core.bytewise_from
  local sub, concat = string.sub, table.concat
  local function prepared(fmt, ...)
    local args = pack(...)
    local found = false
    for i = 1, args.n do
      local v = args[i]
      if script_meta(v, "__tostring") or (type(v) == "string" and #v >= BYTEWISE) then
        found = true
        break
      end
    end
    if not found then return fmt, ... end
    local parts, np, at, arg, last = {}, 0, 1, 0, 1
    while true do
      local s, e, spec, conv = find(fmt, "%%([-+ #0]*%d*%.?%d*)(.)", at)
      if s == nil then break end
      at = e + 1
      if spec ~= "" or conv ~= "%" then
        arg = arg + 1
        local v = args[arg]
        if conv == "s" and script_meta(v, "__tostring") then
          args[arg] = to_string(v)
        elseif conv == "q" and spec == "" and type(v) == "string" and #v >= BYTEWISE then
          args[arg] = checked(bytewise(v, 3))
          np = np + 1
          parts[np] = sub(fmt, last, s - 1) .. "%s"
          last = e + 1
        end
      end
    end
    if np > 0 then
      parts[np + 1] = sub(fmt, last)
      fmt = concat(parts)
    end
    return fmt, unpack(args, 1, args.n)
  end

  string.format = function(...)
    local fmt, a, b, c = ...
    local n = select("#", ...)
    local ta, tb, tc = type(a), type(b), type(c)
    if n > 4 or type(fmt) ~= "string" or #fmt > SMALL
        or (ta == "string" and #a > SMALL) or (tb == "string" and #b > SMALL)
        or (tc == "string" and #c > SMALL) then
      format_cost(...)
      if type(fmt) == "string" and find(fmt, "%q", 1, true) then
        local r = format(prepared(...)) return r
      end
    end
    if (ta == "table" or tb == "table" or tc == "table" or n > 4) and type(fmt) == "string" then
      local r = format(prepared(...)) return r
    end
    local r = format(...) return r
  end
end

do
  local pack, unpack, packsize, find = string.pack, string.unpack, string.packsize, string.find
  local pack_cost = core.pack_cost
  -- Lua reads a format in one go, one option at a time and with no way to pause it: a
  -- format of 100 million options held a state for seconds. Real formats are a few options.
  local MAX_FORMAT = 65536
  local function short_format(fmt, name)
    if type(fmt) == "string" and #fmt > MAX_FORMAT then
      error(("bad argument #1 to '%s' (a format of %d bytes; at most %d here)"):format(name, #fmt, MAX_FORMAT), 3)
    end
  end
  string.pack = function(...)
    short_format(..., "pack")
    pack_cost(...)
    local r = pack(...) return r
  end
  string.unpack = function(...)
    local fmt, s = ...
    short_format(fmt, "unpack")
    if type(fmt) == "string" and type(s) == "string" and #fmt + #s > SMALL then
      local units = #fmt * 2
      if find(fmt, "[csz]") then units = units + #s // 8 end
      spend(units)
    end
    return pass(unpack(...))
  end
  string.packsize = function(...)
    local fmt = ...
    short_format(fmt, "packsize")
    if type(fmt) == "string" and #fmt > SMALL then spend(#fmt) end
    local r = packsize(...) return r
  end
end

-- table.sort, written in Lua so that the instruction hook can pause a long sort (and its
-- comparator, and the `__lt`, `__index` and `__newindex` metamethods it runs) for other calls,
-- as it pauses any Lua code; a sort in C calls them where nothing can pause it. The algorithm
-- is a merge sort: runs of RUN elements sorted by insertion, then merged pairwise between two
-- scratch arrays, so it takes about n·log2(n) comparisons, never recurses, and reads each
-- element of the table once and writes each once. It is stable, which Lua does not promise but no
-- script can mind, and an inconsistent comparator only yields some order of the same elements.
-- Only a short array of plain numbers or short strings, with no metatable and no comparator,
-- goes to Lua's own sort: no script code can run there and it ends within a small fraction of
-- a time slice.
local function sort_in_lua(sort, sort_cost)
  local getmetatable, pcall, load, tointeger = getmetatable, pcall, load, math.tointeger
  local match, memory_error = string.match, core.memory_error
  local rawget, rawlen = rawget, rawlen

  -- Elements Lua's own sort may take (plain values only), and the longest string among them.
  local C_SORT, C_SORT_STRING = 1024, 256

  -- Loaded as a chunk named "?", so that a comparison error raised in it carries no position
  -- of the server's (see `failed`); once as written, with the script's comparator, and once
  -- with `<` written in place of each `less(x, y)`, which spares the default order a function
  -- call per comparison.
  local MERGE_SORT = [[
local RUN = 16

-- t[1..n] sorted with less(a, b).
return function(t, n, less)
  local a, b = {}, {}
  -- Runs of RUN elements, each sorted by insertion as it is read.
  for lo = 1, n, RUN do
    local hi = lo + RUN - 1
    if hi > n then hi = n end
    for i = lo, hi do
      local v = t[i]
      local j = i - 1
      while j >= lo and less(v, a[j]) do
        a[j + 1] = a[j]
        j = j - 1
      end
      a[j + 1] = v
    end
  end
  -- Runs of `width` merged pairwise from `a` into `b`, then the roles swap.
  local width = RUN
  while width < n do
    for lo = 1, n, 2 * width do
      local mid, hi = lo + width, lo + 2 * width
      if mid > n + 1 then mid = n + 1 end
      if hi > n + 1 then hi = n + 1 end
      local i, j, k = lo, mid, lo
      while i < mid and j < hi do
        local x, y = a[i], a[j]
        if less(y, x) then
          b[k] = y
          j = j + 1
        else
          b[k] = x
          i = i + 1
        end
        k = k + 1
      end
      for r = i, mid - 1 do b[k] = a[r] k = k + 1 end
      for r = j, hi - 1 do b[k] = a[r] k = k + 1 end
    end
    a, b = b, a
    width = 2 * width
  end
  for i = 1, n do t[i] = a[i] end
end
]]
  local with_less = assert(load(MERGE_SORT, "=?"))()
  local ascending = assert(load((string.gsub(MERGE_SORT, "less%(([%w%[%]]+), ([%w%[%]]+)%)", "(%1 < %2)")), "=?"))()
  -- Whether t[1..n] are all numbers (no NaN) or all short strings.
  local function plain(t, n)
    local v = t[1]
    if mtype(v) then
      for i = 1, n do
        v = t[i]
        if not mtype(v) or v ~= v then return false end
      end
      return true
    end
    for i = 1, n do
      v = t[i]
      if type(v) ~= "string" or #v > C_SORT_STRING then return false end
    end
    return true
  end

  local function failed(e)
    if type(e) == "string" then
      if e == "not enough memory" then memory_error() end
      -- Lua's own sort compares in C, so its "attempt to compare" errors carry no position.
      local bare = match(e, "^%?:%-?%d+: (.*)$")
      if bare then e = bare end
    end
    error(e, 0)
  end

  local function type_name(v)
    local mt = getmetatable(v)
    local name = type(mt) == "table" and rawget(mt, "__name")
    if type(name) == "string" then return name end
    return type(v)
  end

  return function(...)
    local t, cmp = ...
    if type(t) ~= "table" then
      local got = select("#", ...) == 0 and "no value" or type_name(t)
      error("bad argument #1 to 'sort' (table expected, got " .. got .. ")", 2)
    end
    local n
    if getmetatable(t) == nil then
      n = #t
    else
      local c = bar()
      n = #t
      unbar(c)
    end
    if mtype(n) ~= "integer" then
      n = tointeger(n)
      if n == nil then error("object length is not an integer", 2) end
    end
    if n <= 1 then return end
    if n >= 0x7fffffff then error("bad argument #1 to 'sort' (array too big)", 2) end
    if cmp ~= nil and type(cmp) ~= "function" then
      error("bad argument #2 to 'sort' (function expected, got " .. type_name(cmp) .. ")", 2)
    end
    if n > 64 then sort_cost(n) end
    -- `#t` may have run an `__len` that removed the metatable: Lua's sort takes the raw
    -- length, so that is the length checked.
    if cmp == nil and n <= C_SORT and getmetatable(t) == nil and rawlen(t) == n
        and plain(t, n) then
      sort(t)
      return
    end
    local c = bar()
    local ok, e = pcall(cmp and with_less or ascending, t, n, cmp)
    unbar(c)
    if not ok then failed(e) end
  end
end

do
  local concat, insert, remove, move = table.concat, table.insert, table.remove, table.move
  local unpack, sort, pack, sort_cost = table.unpack, table.sort, table.pack, core.sort_cost

  -- A table with a metatable may answer `#t` differently each time its `__len` is asked, and
  -- Lua's insert and remove ask again, then shift in C over what they hear, where no hook runs:
  -- `math.maxinteger` spun a thread for good. For such a table `#t` is asked once, here, and
  -- the shift runs in Lua, as Lua's own would run it.
  local getmetatable, tointeger, tonumber, ult = getmetatable, math.tointeger, tonumber, math.ult

  -- `#t` as Lua's library takes it (luaL_len).
  local function length(t)
    local n = #t
    if mtype(n) ~= "integer" then
      n = tointeger(n)
      if n == nil then error("object length is not an integer", 3) end
    end
    return n
  end

  -- Argument `arg` of `fname` as an integer (luaL_checkinteger); `nargs`, if given, is how many
  -- arguments there were (one past them has "no value").
  local function integer(v, arg, fname, nargs)
    local i = tointeger(v)
    if i == nil then
      local what = tonumber(v) ~= nil and "number has no integer representation"
        or "number expected, got " .. ((nargs and arg > nargs) and "no value" or type(v))
      error("bad argument #" .. arg .. " to '" .. fname .. "' (" .. what .. ")", 3)
    end
    return i
  end

  -- `luaL_optlstring`: the separator of `table.concat`.
  local function separator(sep)
    if sep == nil then return "" end
    local ts = type(sep)
    if ts == "string" then return sep end
    if ts == "number" then return c_tostring(sep) end
    error("bad argument #2 to 'concat' (string expected, got " .. ts .. ")", 3)
  end

  -- `table.concat` over a table whose reads run script code: `#t` asked once, each element read
  -- here, the string built by Lua's concat from a plain table. (Tail-called by the wrapper, so
  -- errors at level 2 are at the script's line.)
  local function concat_in_lua(t, sep, i, j)
    local c = bar()
    local n = length(t)
    sep = separator(sep)
    if i == nil then i = 1 else i = integer(i, 3, "concat") end
    if j == nil then j = n else j = integer(j, 4, "concat") end
    local parts, count, total = {}, 0, 0
    for k = i, j do
      local v = t[k]
      local tv = type(v)
      if tv == "number" then
        v = c_tostring(v)
      elseif tv ~= "string" then
        error("invalid value (" .. tv .. ") at index " .. k .. " in table for 'concat'", 2)
      end
      count = count + 1
      parts[count] = v
      total = total + #v + #sep
      if total > SMALL then
        bytes_cost(total, "table.concat")
        total = 0
      end
    end
    unbar(c)
    local r = concat(parts, sep, 1, count)
    return r
  end

  -- A long range is walked first: the hook bounds the walk, and the result's size is known
  -- (and charged, and checked against the memory left) before Lua's concat builds it. A short
  -- one (at most 16 elements) is built at once and its bytes charged after.
  local PIECE = 4096

  -- `table.move` of a long range without script code (Lua's own loop, in one C call, moved
  -- ten million elements in half a second): moved PIECE elements per call of Lua's own move,
  -- in the order its loop takes (backwards when the ranges overlap that way), so that the hook
  -- can pause the call between two pieces. The caller has checked the arguments as Lua would,
  -- and that comparing the tables runs no `__eq` (see `compares_raw`).
  local function move_in_pieces(a1, f, e, t, dest)
    local tt = a1
    if dest ~= nil then tt = dest end
    if t > e or t <= f or not rawequal(a1, tt) then
      for k = f, e, PIECE do
        move(a1, k, e - k < PIECE and e or k + PIECE - 1, t + (k - f), dest)
      end
    else
      for k = e, f, -PIECE do
        local first = k - f < PIECE and f or k - PIECE + 1
        move(a1, first, k, t + (first - f), dest)
      end
    end
    return tt
  end

  table.concat = function(...)
    local t, sep, i, j = ...
    if type(t) == "table" then
      if c_getmetatable(t) ~= nil and not reads_plain(t, true) then
        return concat_in_lua(t, sep, i, j)
      end
      if i == nil then i = 1 end
      if j == nil then j = #t end
      if type(i) == "number" and type(j) == "number" and j - i < 16 then
        local r = concat(...)
        if #r > SMALL then spend(#r // 8) end
        return r
      end
      if type(i) == "number" and type(j) == "number" then
        local lsep = type(sep) == "string" and #sep or 0
        local total, numbers, valid = 0, 0, true
        for k = i, j do
          local v = t[k]
          local tv = type(v)
          if tv == "string" then
            total = total + #v + lsep
          elseif tv == "number" then
            total = total + 24 + lsep
            numbers = numbers + 1
          else
            valid = false
            break -- Lua's concat raises its "invalid value" error
          end
        end
        if total > SMALL then bytes_cost(total, "table.concat") end
        -- Lua's concat makes a string of each number it meets, about half a microsecond each,
        -- all in one call. A range with many numbers is joined in pieces of PIECE elements,
        -- each its own C call, and the pieces joined once more: the hook can pause the call
        -- between two pieces. That costs one more copy of the result, so strings alone (copied
        -- at memory speed) keep Lua's single copy.
        if valid and numbers >= 2 * PIECE and mtype(i) == "integer" and mtype(j) == "integer"
            and (sep == nil or type(sep) == "string") then
          local parts, n = {}, 0
          for k = i, j, PIECE do
            n = n + 1
            parts[n] = concat(t, sep, k, j - k < PIECE and j or k + PIECE - 1)
          end
          return concat(parts, sep, 1, n)
        end
      end
    end
    local r = concat(...) return r
  end

  table.insert = function(...)
    local t, pos, v = ...
    local nargs = select("#", ...)
    if nargs == 2 and type(t) == "table" and getmetatable(t) ~= nil
        and not (reads_plain(t, true) and writes_plain(t)) then
      -- `table.insert(t, v)`: one `#t` and one write, either of which may be script code.
      local c = bar()
      t[length(t) + 1] = pos
      unbar(c)
      return
    end
    if nargs == 3 and type(t) == "table" then
      if getmetatable(t) ~= nil then
        local c = bar()
        local e = length(t) + 1
        pos = integer(pos, 2, "insert")
        if not ult(pos - 1, e) then
          error("bad argument #2 to 'insert' (position out of bounds)", 2)
        end
        local i = e
        while i > pos do
          t[i] = t[i - 1]
          i = i - 1
        end
        t[pos] = v
        unbar(c)
        return
      end
      -- The position as Lua's insert takes it: also a float with an integral value, or a
      -- string that converts to one.
      local p = tointeger(pos)
      if p ~= nil and p >= 1 then
        local n = #t
        if n - p > SMALL then
          spend(n - p)
          if n - p >= 2 * PIECE then
            move_in_pieces(t, p, n, p + 1)
            t[p] = v
            return
          end
        end
      end
    end
    insert(...)
  end

  table.remove = function(...)
    local t, pos = ...
    if type(t) == "table" then
      if getmetatable(t) ~= nil then
        local c = bar()
        local size = length(t)
        if pos == nil then pos = size else pos = integer(pos, 2, "remove") end
        if pos ~= size and not (ult(pos - 1, size) or pos - 1 == size) then
          error("bad argument #2 to 'remove' (position out of bounds)", 2)
        end
        local r = t[pos]
        while pos < size do
          t[pos] = t[pos + 1]
          pos = pos + 1
        end
        t[pos] = nil
        unbar(c)
        return r
      end
      local n = #t
      -- The position as Lua's remove takes it (see insert); none, or nil, is the last.
      local p = n
      if pos ~= nil then p = tointeger(pos) end
      if p ~= nil and p >= 1 and n - p > SMALL then
        spend(n - p)
        if n - p >= 2 * PIECE then
          local r = t[p]
          move_in_pieces(t, p + 1, n, p)
          t[n] = nil
          return r
        end
      end
    end
    local r = remove(...) return r
  end

  -- `table.move` where reading the source or writing the destination runs script code, or
  -- comparing them runs an `__eq`: the loop runs here, as Lua's runs it. (Tail-called.)
  local function move_in_lua(nargs, a1, f, e, t, dest)
    local c = bar()
    f = integer(f, 2, "move", nargs)
    e = integer(e, 3, "move", nargs)
    t = integer(t, 4, "move", nargs)
    local tt = a1
    if dest ~= nil then
      if type(dest) ~= "table" then
        error("bad argument #5 to 'move' (table expected, got " .. type(dest) .. ")", 2)
      end
      tt = dest
    end
    if e >= f then
      if not (f > 0 or e < maxinteger + f) then
        error("bad argument #3 to 'move' (too many elements to move)", 2)
      end
      local n = e - f + 1
      if not (t <= maxinteger - n + 1) then
        error("bad argument #4 to 'move' (destination wrap around)", 2)
      end
      if t > e or t <= f or (dest ~= nil and not (a1 == tt)) then
        for i = 0, n - 1 do tt[t + i] = a1[f + i] end
      else
        for i = n - 1, 0, -1 do tt[t + i] = a1[f + i] end
      end
    end
    unbar(c)
    return tt
  end

  -- Whether Lua's move would compare `a1` and `dest` (a table, or nil) by their addresses: no
  -- `__eq` of any kind (one that cannot be called fails when Lua calls it). A source that is
  -- not a table is never equal to a table.
  local function compares_raw(a1, dest)
    if dest == nil or rawequal(a1, dest) or type(a1) ~= "table" then return true end
    return (c_getmetatable(a1) == nil or rawget(metatable(a1), "__eq") == nil)
      and (c_getmetatable(dest) == nil or rawget(metatable(dest), "__eq") == nil)
  end

  -- Whether table.move from `a1` to `dest` runs no script code.
  local function move_plain(a1, dest)
    if dest == nil or rawequal(dest, a1) then return reads_plain(a1) and writes_plain(a1) end
    if type(dest) ~= "table" then return true end
    -- A string reads through the string library's table (nils).
    return (type(a1) == "string" or reads_plain(a1)) and writes_plain(dest)
      and not script_meta(a1, "__eq") and not script_meta(dest, "__eq")
  end

  table.move = function(...)
    local a1, f, e, t, dest = ...
    -- (A string is a source Lua's move reads from too, through its `__index`.)
    local ta = type(a1)
    if (ta == "table" and (c_getmetatable(a1) ~= nil or dest ~= nil)
          or ta == "string" and type(dest) == "table")
        and not move_plain(a1, dest) then
      return move_in_lua(select("#", ...), a1, f, e, t, dest)
    end
    -- Positions as Lua's move takes them: also floats with an integral value, or strings that
    -- convert to one. The source may be anything Lua's move reads from (a string reads nils
    -- through its `__index`): the first piece fails as Lua's move would if it cannot.
    local fi, ei, ti = tointeger(f), tointeger(e), tointeger(t)
    if fi ~= nil and ei ~= nil and ei >= fi
        and (fi > 0 or ei < maxinteger + fi) and ei - fi >= SMALL then
      spend(ei - fi + 1)
      if ei - fi >= 2 * PIECE and ti ~= nil and ti <= maxinteger - (ei - fi)
          and (dest == nil or type(dest) == "table") and compares_raw(a1, dest) then
        return move_in_pieces(a1, fi, ei, ti, dest)
      end
    end
    local r = move(...) return r
  end

  -- The most values `table.unpack` returns. Lua's own limit is what fits on the stack (a
  -- million slots, for everything the script has on it), but the values are on it twice on
  -- their way out of the wrapper below, so half a million already ended in a bare "stack
  -- overflow"; this bound leaves room for both copies and the script's own frames.
  local MAX_UNPACK = core.max_unpack
  -- Lua's own bound (LUAI_MAXSTACK).
  local LUA_STACK = 1000000

  -- Fails, at the script's call, for a range `i..j` (integers) of more than MAX_UNPACK values.
  local function check_unpack_count(i, j)
    local n = j - i
    if n >= MAX_UNPACK or n < 0 then
      -- Past the stack's million slots Lua's own unpack fails too, in these words; below,
      -- only this bound refuses, so it says what it allows.
      if n < 0 or n >= LUA_STACK then error("too many results to unpack", 3) end
      error("too many results to unpack (" .. (n + 1) .. " values; at most " .. MAX_UNPACK .. ")", 3)
    end
  end

  -- `table.unpack` over a table whose reads run script code: `#t` asked once (if `j` is not
  -- given), each element read here, the values returned by Lua's unpack from a plain table.
  local function unpack_in_lua(t, i, j)
    if i == nil then i = 1 else i = integer(i, 2, "unpack") end
    if j == nil then
      local c = bar()
      j = length(t)
      unbar(c)
    else
      j = integer(j, 3, "unpack")
    end
    if i > j then return end
    check_unpack_count(i, j)
    local values = {}
    local c = bar()
    for k = i, j do values[k - i + 1] = t[k] end
    unbar(c)
    return unpack(values, 1, j - i + 1)
  end

  table.unpack = function(...)
    local t, i, j = ...
    if c_getmetatable(t) ~= nil and type(t) == "table" and not reads_plain(t, j == nil) then
      return unpack_in_lua(t, i, j)
    end
    if i == nil then i = 1 end
    if j == nil and type(t) == "table" then j = #t end
    if type(i) == "number" and type(j) == "number" then
      local ii, jj = tointeger(i), tointeger(j)
      if ii ~= nil and jj ~= nil and jj >= ii then check_unpack_count(ii, jj) end
    end
    if mtype(i) == "integer" and mtype(j) == "integer" and j - i > SMALL then spend(j - i) end
    return pass(unpack(...))
  end

  table.sort = sort_in_lua(sort, sort_cost)

  table.pack = function(...)
    local n = select("#", ...)
    if n > SMALL then spend(n) end
    local r = pack(...) return r
  end
end

do
  local char, codepoint, len, offset = utf8.char, utf8.codepoint, utf8.len, utf8.offset
  utf8.char = function(...)
    local n = select("#", ...)
    if n > SMALL then spend(n) end
    local r = char(...) return r
  end
  utf8.codepoint = function(...)
    local s, i, j = ...
    if j ~= nil and type(s) == "string" and #s > SMALL then
      span_cost("codepoint", #s, i, j)
    end
    return pass(codepoint(...))
  end
  local utf8_len, BYTEWISE = core.utf8_len, core.bytewise_from
  utf8.len = function(...)
    local s, i, j = ...
    if type(s) == "string" then
      if #s >= BYTEWISE then return checked(utf8_len(select("#", ...), ...)) end
      if #s > SMALL then span_cost("len", #s, i, j) end
    end
    return pass(len(...))
  end
  local utf8_offset = core.utf8_offset
  utf8.offset = function(...)
    local s = ...
    if type(s) == "string" then
      if #s >= BYTEWISE then return checked(utf8_offset(select("#", ...), ...)) end
      if #s > SMALL then spend(#s // 8) end
    end
    return pass(offset(...))
  end
end

do -- os.date runs strftime for each conversion of its format
  -- Lua's own walks the whole format in one go (over a second for four million `%c`, while
  -- other calls on the state wait), so a big format is formatted in pieces of about PIECE
  -- bytes, each its own call of Lua's os.date at the same time, joined at the end: the call
  -- can be paused between two. A piece ends just before a `%` that follows a character other
  -- than `%`, `E` or `O`, which always ends what it is part of, so every conversion stays
  -- whole and every piece after the first starts with `%` (never `!` or `*t`).
  local date, time, byte, sub, concat = os.date, os.time, string.byte, string.sub, table.concat
  local pcall, memory_error = pcall, core.memory_error
  local PIECE = 4096
  local PERCENT, E, O = byte("%EO", 1, 3)
  os.date = function(...)
    local fmt = ...
    if type(fmt) ~= "string" or #fmt <= SMALL then local r = date(...) return r end
    spend(#fmt * 4)
    if #fmt <= 2 * PIECE then local r = date(...) return r end
    local t = select(2, ...)
    if t == nil then t = time() end
    local utc = byte(fmt, 1) == byte("!") and "!" or ""
    local parts, n, at, last = {}, 0, 1, #fmt
    while last - at >= 2 * PIECE do
      local cut = at + PIECE
      while cut <= last do
        if byte(fmt, cut) == PERCENT then
          local before = byte(fmt, cut - 1)
          if before ~= PERCENT and before ~= E and before ~= O then break end
        end
        cut = cut + 1
      end
      if cut > last then break end
      local prefix = n > 0 and utc or ""
      local ok, r = pcall(date, prefix .. sub(fmt, at, cut - 1), t)
      if not ok then
        if r == "not enough memory" then memory_error() end
        -- Lua's error names the rest of the format from the bad conversion on: raised by
        -- Lua's own on that rest, which stops at that conversion, in this piece.
        date(prefix .. sub(fmt, at), t)
        error(r, 0)
      end
      n = n + 1
      parts[n] = r
      at = cut
    end
    parts[n + 1] = date((n > 0 and utc or "") .. sub(fmt, at), t)
    return concat(parts)
  end

  -- os.time reads the fields of its table, and writes them back normalized: for a table whose
  -- reads or writes run script code, both happen here, around Lua's os.time on a plain copy.
  local time, pcall, tointeger = os.time, pcall, math.tointeger
  -- The fields os.time reads, in its order: name, default (none if negative), offset.
  local READ = {
    { "year", -1, 1900 }, { "month", -1, 1 }, { "day", -1, 0 }, { "hour", 12, 0 },
    { "min", 0, 0 }, { "sec", 0, 0 },
  }
  local WRITE = { "year", "month", "day", "hour", "min", "sec", "yday", "wday", "isdst" }
  os.time = function(...)
    local t = ...
    if type(t) == "table" and not (reads_plain(t) and writes_plain(t)) then
      -- Each field read and checked as Lua's getfield does, so an error stops the reading.
      local copy = {}
      local c = bar()
      for i = 1, #READ do
        local k, default, delta = READ[i][1], READ[i][2], READ[i][3]
        local v = t[k]
        local n = tointeger(v)
        if n == nil then
          if v ~= nil then error("field '" .. k .. "' is not an integer", 2) end
          if default < 0 then error("field '" .. k .. "' missing in date table", 2) end
        elseif not (n >= 0 and n - delta <= 0x7fffffff or n < 0 and -0x80000000 + delta <= n) then
          error("field '" .. k .. "' is out-of-bound", 2)
        end
        copy[k] = v
      end
      copy.isdst = t.isdst
      unbar(c)
      local ok, r = pcall(time, copy)
      if not ok then error(r, 2) end
      c = bar()
      for i = 1, #WRITE do
        local k = WRITE[i]
        local v = copy[k]
        if v ~= nil then t[k] = v end
      end
      unbar(c)
      return r
    end
    local r = time(...) return r
  end
end

do -- math.min and math.max compare with `<`, which runs a table's `__lt`
  local min, max = math.min, math.max

  -- Whether comparing these values with `<` may run script code.
  local function compares_plain(n, ...)
    for i = 1, n do
      if type((select(i, ...))) == "table" then return false end
    end
    return true
  end

  -- Lua's loop, run here: each comparison that may run an `__lt` is made here, the others by
  -- Lua's own function on the pair (which raises Lua's errors).
  local function pick(pair, less_first, ...)
    local best = ...
    local c = bar()
    for i = 2, select("#", ...) do
      local v = select(i, ...)
      if script_meta(v, "__lt") or script_meta(best, "__lt") then
        local swap
        if less_first then swap = v < best else swap = best < v end
        if swap then best = v end
      else
        best = pair(best, v)
      end
    end
    unbar(c)
    return best
  end

  -- Any call but the common one of two numbers (tail-called: level 2 is the script's).
  local function any(pair, fname, less_first, ...)
    local n = select("#", ...)
    if n == 0 then error("bad argument #1 to '" .. fname .. "' (value expected)", 2) end
    if compares_plain(n, ...) then return pair(...) end
    return pick(pair, less_first, ...)
  end

  -- Two or three numbers (or two and a nil, at which Lua's own stops with its error before it
  -- reaches any later argument) go straight to Lua's function `pair`.
  local function bounded(pair, fname, less_first)
    return function(...)
      local a, b, c = ...
      if type(a) == "number" and type(b) == "number"
          and (c == nil or type(c) == "number" and select("#", ...) == 3) then
        local r = pair(...) return r
      end
      return any(pair, fname, less_first, ...)
    end
  end
  math.min = bounded(min, "min", true)
  math.max = bounded(max, "max", false)
end

-- A string read as a number from NUMERAL bytes on: Rust reads it in pieces the hook can pause
-- between, and makes of it a short numeral Lua reads as it reads the long one ("" for none; see
-- numeral.rs). Lua's own reading would go through the whole string in one C call.
local numeral, NUMERAL = core.numeral, core.bytewise_from
local function short_numeral(v)
  if type(v) == "string" and #v >= NUMERAL then return checked(numeral(v)) end
  return v
end

do -- Lua's string arithmetic ("10" + x) calls the other operand's metamethod from C
  local string_mt, pcall = c_getmetatable(""), pcall
  for _, event in ipairs({ "__add", "__sub", "__mul", "__mod", "__pow", "__div", "__idiv", "__unm" }) do
    local op = rawget(string_mt, event)
    if op ~= nil then
      string_mt[event] = function(a, b)
        local f = script_meta(b, event)
        if f ~= nil then
          local c = bar()
          local r = f(a, b)
          unbar(c)
          return r
        end
        -- Long numerals are read short; what Lua's operator does with them (the number, or
        -- its error, which names the operands' types only) stays the same.
        local sa = short_numeral(a)
        local sb = rawequal(a, b) and sa or short_numeral(b)
        return rethrow(pcall(op, sa, sb))
      end
    end
  end
end

do -- base functions
  local tonumber = tonumber

  -- ipairs over a table whose reads run script code: its iterator reads here.
  local c_ipairs, tointeger = ipairs, math.tointeger
  local function ipairs_next(t, i)
    local n = tointeger(i)
    if n == nil then
      error("bad argument #2 to 'for iterator' (number expected, got " .. type(i) .. ")", 2)
    end
    i = n + 1
    local c = bar()
    local v = t[i]
    unbar(c)
    if v == nil then return nil end
    return i, v
  end
  _G.ipairs = function(...)
    local t = ...
    if c_getmetatable(t) ~= nil and type(t) == "table" and not reads_plain(t) then
      return ipairs_next, t, 0
    end
    if t == nil and select("#", ...) == 0 then
      error("bad argument #1 to 'ipairs' (value expected)", 2)
    end
    local f, s, i = c_ipairs(t)
    return f, s, i
  end

  _G.select = function(...)
    local n = ...
    if n ~= "#" then
      local count = select("#", ...)
      if count > SMALL then spend(count) end
    end
    return pass(select(...))
  end
  local numeral_base = core.numeral_base
  _G.tonumber = function(...)
    local s, base = ...
    if type(s) == "string" then
      if #s >= NUMERAL then
        if base == nil then
          local n = tonumber(checked(numeral(s))) return n
        end
        -- With a base Lua checks, Rust reads the digits; with any other, Lua's own raises its
        -- argument error before it reads the string.
        local b = tointeger(short_numeral(base))
        if b ~= nil and b >= 2 and b <= 36 then return checked(numeral_base(s, b)) end
      elseif #s > SMALL then
        spend(#s // 8)
      end
    end
    return pass(tonumber(...))
  end
end

-- For the sandbox: marks `len` (the `__len` of frozen tables) as running no script code, and
-- gives the raw metatable getter of the debug library (a C function, faster than the Rust one).
return function(len, raw_getmetatable)
  trusted_len[len] = true
  metatable = raw_getmetatable
end
