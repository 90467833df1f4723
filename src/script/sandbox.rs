//! A Lua 5.4 state that handler scripts cannot escape or corrupt.
//!
//! - Libraries: base, string, table, math, utf8, coroutine, and of `os` only time/clock/date/
//!   difftime. No io, no os.execute, no load/loadfile/dofile (so no bytecode), no rawset.
//! - `require("name")` loads `name.lua` from the handlers folder only, as text.
//! - Library tables and `data` are read-only proxies; each script runs in its own environment,
//!   which is locked once the script has loaded, so no call can leave state for the next one in
//!   a global.
//! - `print` goes to the server log; `grpc.status(code, message)` builds an error that ends the
//!   call with that status.
//! - A memory limit per state.

use std::path::{Path, PathBuf};

use mlua::{Function, Lua, LuaOptions, StdLib, Table, Value as LuaValue};
use serde_json::Value as Json;

use super::status::ScriptStatus;
use crate::data::DataSets;

const PRELUDE: &str = r#"
local setmetatable, error, tostring, next, pairs, type = setmetatable, error, tostring, next, pairs, type

local function readonly(t)
  return setmetatable({}, {
    __index = t,
    __newindex = function(_, k)
      error("attempt to modify read-only table (key '" .. tostring(k) .. "')", 2)
    end,
    __len = function() return #t end,
    __pairs = function() return next, t, nil end,
    __readonly = true,
    __metatable = "read-only",
  })
end

local function deep_readonly(t)
  for k, v in pairs(t) do
    if type(v) == "table" then t[k] = deep_readonly(v) end
  end
  return readonly(t)
end

local function new_env(G)
  return setmetatable({}, { __index = G })
end

local function lock_env(env, G, name)
  return setmetatable(env, {
    __index = G,
    __newindex = function(_, k)
      error("cannot set global '" .. tostring(k) .. "' in " .. name ..
        " while serving a call: globals are shared by every call; use a local", 2)
    end,
    __metatable = "locked",
  })
end

-- ctx for streaming calls: ctx:send tries a plain call first and waits only when the client
-- is slow; everything else is the call's userdata.
local function stream_ctx(u)
  local function send(_, msg)
    if not u:try_send(msg) then u:wait_send() end
  end
  return setmetatable({ send = send }, {
    __index = function(_, k)
      local v = u[k]
      if type(v) == "function" then
        return function(_, ...) return v(u, ...) end
      end
      return v
    end,
    __newindex = function() error("ctx is read-only", 2) end,
    __metatable = "ctx",
  })
end

return readonly, deep_readonly, new_env, lock_env, stream_ctx
"#;

/// Helpers kept per state.
pub struct Sandbox {
    /// Wraps a streaming call's ctx userdata (see the prelude).
    pub stream_ctx: Function,
    pub new_env: Function,
    pub lock_env: Function,
}

/// Creates a sandboxed state with `data` installed.
pub fn new_state(
    handlers_dir: &Path,
    data: &DataSets,
    memory_limit: usize,
) -> mlua::Result<(Lua, Sandbox)> {
    let libs = StdLib::TABLE
        | StdLib::STRING
        | StdLib::UTF8
        | StdLib::MATH
        | StdLib::COROUTINE
        | StdLib::OS;
    let lua = Lua::new_with(libs, LuaOptions::default())?;
    super::stdlib::install(&lua)?;
    let g = lua.globals();

    type Prelude = (Function, Function, Function, Function, Function);
    let (readonly, deep_readonly, new_env, lock_env, stream_ctx): Prelude =
        lua.load(PRELUDE).set_name("=protoserve").call(())?;

    // Only the harmless part of os.
    let os: Table = g.get("os")?;
    let safe_os = lua.create_table()?;
    for name in ["time", "clock", "date", "difftime"] {
        safe_os.raw_set(name, os.get::<LuaValue>(name)?)?;
    }
    for name in [
        "dofile",
        "loadfile",
        "load",
        "rawset",
        "collectgarbage",
        "_G",
    ] {
        g.raw_set(name, LuaValue::Nil)?;
    }
    g.raw_set("os", readonly.call::<Table>(safe_os)?)?;
    for lib in ["string", "table", "math", "utf8", "coroutine"] {
        let t: Table = g.get(lib)?;
        g.raw_set(lib, readonly.call::<Table>(t)?)?;
    }
    lua.load("getmetatable('').__metatable = 'read-only'")
        .exec()?;

    g.raw_set(
        "print",
        lua.create_function(|_, args: mlua::Variadic<LuaValue>| {
            let text: Vec<String> = args
                .iter()
                .map(|v| v.to_string().unwrap_or_default())
                .collect();
            tracing::info!(target: "script", "{}", text.join("\t"));
            Ok(())
        })?,
    )?;

    let grpc = lua.create_table()?;
    grpc.raw_set(
        "status",
        lua.create_function(|_, (code, message): (LuaValue, Option<String>)| {
            let status = ScriptStatus::from_lua(&code, message.unwrap_or_default())
                .map_err(mlua::Error::runtime)?;
            Ok(LuaValue::Error(Box::new(mlua::Error::external(status))))
        })?,
    )?;
    g.raw_set("grpc", readonly.call::<Table>(grpc)?)?;

    let data_table = lua.create_table()?;
    for (name, value) in &data.sets {
        data_table.raw_set(name.as_str(), json_to_lua(&lua, value)?)?;
    }
    g.raw_set("data", deep_readonly.call::<Table>(data_table)?)?;

    let sandbox = Sandbox {
        stream_ctx,
        new_env,
        lock_env,
    };
    install_require(&lua, handlers_dir.to_path_buf(), &sandbox)?;
    lua.set_memory_limit(memory_limit)?;
    Ok((lua, sandbox))
}

/// `require("util")` → `handlers/util.lua`, loaded once per state, as text only.
fn install_require(lua: &Lua, dir: PathBuf, sandbox: &Sandbox) -> mlua::Result<()> {
    let cache = lua.create_table()?;
    let new_env = sandbox.new_env.clone();
    let lock_env = sandbox.lock_env.clone();
    let require = lua.create_function(move |lua, name: String| {
        if let Ok(v @ LuaValue::Table(_)) = cache.raw_get::<LuaValue>(name.as_str()) {
            return Ok(v);
        }
        let valid = !name.is_empty()
            && name.split('.').all(|part| {
                !part.is_empty()
                    && part
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            });
        if !valid {
            return Err(mlua::Error::runtime(format!(
                "require({name:?}): module names are like \"util\" or \"lib.geo\""
            )));
        }
        let path = dir.join(format!("{}.lua", name.replace('.', "/")));
        let source = std::fs::read_to_string(&path).map_err(|e| {
            mlua::Error::runtime(format!(
                "require({name:?}): cannot read {}: {e}",
                path.display()
            ))
        })?;
        let env: Table = new_env.call(lua.globals())?;
        let result: LuaValue = lua
            .load(source)
            .set_name(format!("@{}", path.display()))
            .set_mode(mlua::ChunkMode::Text)
            .set_environment(env.clone())
            .call(())?;
        lock_env.call::<()>((env, lua.globals(), path.display().to_string()))?;
        let module = match result {
            LuaValue::Nil => LuaValue::Boolean(true),
            other => other,
        };
        cache.raw_set(name.as_str(), module.clone())?;
        Ok(module)
    })?;
    lua.globals().raw_set("require", require)
}

/// A JSON value as plain Lua values (null becomes nil).
pub fn json_to_lua(lua: &Lua, value: &Json) -> mlua::Result<LuaValue> {
    Ok(match value {
        Json::Null => LuaValue::Nil,
        Json::Bool(b) => LuaValue::Boolean(*b),
        Json::Number(n) => match n.as_i64() {
            Some(i) => LuaValue::Integer(i),
            None => LuaValue::Number(n.as_f64().unwrap_or(f64::NAN)),
        },
        Json::String(s) => LuaValue::String(lua.create_string(s)?),
        Json::Array(items) => {
            let t = lua.create_table_with_capacity(items.len(), 0)?;
            for (i, item) in items.iter().enumerate() {
                t.raw_set(i + 1, json_to_lua(lua, item)?)?;
            }
            LuaValue::Table(t)
        }
        Json::Object(map) => {
            let t = lua.create_table_with_capacity(0, map.len())?;
            for (k, v) in map {
                t.raw_set(k.as_str(), json_to_lua(lua, v)?)?;
            }
            LuaValue::Table(t)
        }
    })
}
