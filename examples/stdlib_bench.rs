//! Time per call of the bounded string/table functions against Lua's own C versions, on the
//! short inputs ordinary scripts use: `cargo run --release --example stdlib_bench`.

use mlua::Lua;

const BENCH: &str = r#"
local C, N = ...
local subject = "key=value; other=thing 42"
local long = ("a"):rep(300)
local parts = { "a", "bb", "ccc", "dddd", "e", "f", "g", "h", "i", "j" }
local ops = {
  { "find plain", function(f) return f.find(subject, "other") end, "string" },
  { "find %d+", function(f) return f.find(subject, "%d+") end, "string" },
  { "match captures", function(f) return f.match(subject, "(%w+)=(%w+)") end, "string" },
  { "gsub %s", function(f) return f.gsub(subject, "%s", "_") end, "string" },
  { "gmatch words", function(f) local n = 0 for w in f.gmatch(subject, "%a+") do n = n + 1 end return n end, "string" },
  { "format", function(f) return f.format("%d:%s:%.2f", 42, "name", 1.5) end, "string" },
  { "rep", function(f) return f.rep("ab", 8) end, "string" },
  { "sub", function(f) return f.sub(subject, 3, 9) end, "string" },
  { "byte", function(f) return f.byte(subject, 5) end, "string" },
  { "upper", function(f) return f.upper(subject) end, "string" },
  { "concat 10", function(f) return f.concat(parts, ",") end, "table" },
  { "insert+remove", function(f) f.insert(parts, "k") return f.remove(parts) end, "table" },
  { "unpack 10", function(f) return f.unpack(parts) end, "table" },
  { "backtrack", function(f) return f.find(long, "a-a-b") end, "string", 20 },
}
local out = {}
for _, op in ipairs(ops) do
  local name, body, lib, n = op[1], op[2], op[3], op[4] or N
  local times = {}
  for _, which in ipairs({ "c", "bounded" }) do
    local f = which == "c" and C[lib] or _G[lib]
    for _ = 1, n // 10 do body(f) end
    local best = math.huge
    for _ = 1, 5 do
      local t0 = os.clock()
      for _ = 1, n do body(f) end
      best = math.min(best, os.clock() - t0)
    end
    times[which] = best / n * 1e9
  end
  out[#out + 1] = string.format("%-16s C %9.0f ns   bounded %9.0f ns   x%.2f", name,
    times.c, times.bounded, times.bounded / times.c)
end
return table.concat(out, "\n")
"#;

fn main() -> mlua::Result<()> {
    let lua = Lua::new();
    let c = lua.create_table()?;
    for lib in ["string", "table"] {
        let copy = lua.create_table()?;
        for pair in lua
            .globals()
            .get::<mlua::Table>(lib)?
            .pairs::<mlua::Value, mlua::Value>()
        {
            let (k, v) = pair?;
            copy.raw_set(k, v)?;
        }
        c.raw_set(lib, copy)?;
    }
    protoserve::script::stdlib::install(&lua)?;
    let report: String = lua.load(BENCH).call((c, 200_000))?;
    println!("{report}");
    Ok(())
}
