//! A Lua 5.4 state that handler scripts cannot escape or corrupt.
//!
//! - Libraries: base, string, table, math, utf8, coroutine, and of `os` only time/clock/date/
//!   difftime. No io, no os.execute, no load/loadfile/dofile (so no bytecode), no rawset, no
//!   debug, no collectgarbage.
//! - `require("name")` loads `name.lua` from the handlers folder only, as text, and only while
//!   the scripts load; at call time it hands back modules loaded then.
//! - Library tables, the globals and `data` are frozen before any script runs; whatever the
//!   scripts build while loading is frozen when loading ends (see [`super::freeze`]), and a
//!   load-time function that assigns a module-level local is a startup error (see
//!   [`super::bytecode`]). So no call can leave anything behind for the next one.
//! - `setmetatable` refuses `__gc` (no script code runs outside a call), guards `__close` (it
//!   does nothing once the call is aborted, and `coroutine.close` runs it where the hook can
//!   pause it; see [`super::guard`]) and lets frozen tables serve as metatables;
//!   `getmetatable`, `next`, `rawget` and `rawlen` see through the freeze.
//! - `print` goes to the server log; `grpc.status(code, message)` builds an error that ends the
//!   call with that status.
//! - A memory limit per state, in force from the start, so data that does not fit is reported
//!   with its file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use mlua::{FromLua, Function, Lua, LuaOptions, StdLib, Table, Value as LuaValue};

use super::bytecode;
use super::freeze::{self, Found, Freezer, Helpers};
use super::status::ScriptStatus;
use super::stdlib;
use crate::data::DataSets;
use crate::error::{Location, StartupError, StartupErrors};

const PRELUDE: &str = r#"
local KEY, ORIG, dgetmt, dsetmt, setmetatable, getmetatable, next, rawget, rawlen, error, type, tostring,
  rawset, guard_close, raise = ...

-- Raw views of frozen tables used as metatables (Lua reads metamethods raw), and back.
local views, view_of = {}, {}

local function hidden(t)
  local mt = dgetmt(t)
  if mt then return rawget(mt, KEY) end
end

local function frozen_next(t, k)
  return next(hidden(t) or t, k)
end

local function frozen_rawget(t, k)
  local v = rawget(hidden(t) or t, k)
  return v
end

local function frozen_rawlen(t)
  local n = rawlen(hidden(t) or t)
  return n
end

local function frozen_len(t)
  return rawlen(rawget(dgetmt(t), KEY))
end

local function frozen_pairs(t)
  return frozen_next, t, nil
end

-- Raises at the script's line that wrote, also when a library function wrote for it.
local function raiser(prefix, suffix)
  return function(_, k)
    raise(prefix .. tostring(k) .. suffix)
  end
end

local function index_fallback(h, f)
  return function(t, k)
    local v = rawget(h, k)
    if v ~= nil then return v end
    return f(t, k)
  end
end

local NO_GC = "finalizers (__gc) are not allowed in scripts: no script code may run outside a call"

-- `__close` handlers are guarded (see `guard`): once the call is aborted they do nothing, and
-- they run where the hook can pause them also when `coroutine.close` closes their coroutine.

local function safe_setmetatable(t, mt)
  if hidden(t) then
    error("cannot change the metatable of a read-only table", 2)
  end
  if type(mt) == "table" then
    local h = hidden(mt)
    if h then
      local v = views[mt]
      if v == nil then
        if rawget(h, "__gc") ~= nil then error(NO_GC, 2) end
        v = {}
        for k, x in next, h do v[k] = x end
        v.__close = guard_close(v.__close)
        views[mt] = v
        view_of[v] = mt
      end
      mt = v
    elseif rawget(mt, "__gc") ~= nil then
      error(NO_GC, 2)
    else
      local c = rawget(mt, "__close")
      if c ~= nil then
        local g = guard_close(c)
        if g ~= c then rawset(mt, "__close", g) end
      end
    end
  end
  local r = setmetatable(t, mt)
  return r
end

local function safe_getmetatable(v)
  local mt = dgetmt(v)
  if mt == nil then return nil end
  if rawget(mt, KEY) ~= nil then return rawget(mt, ORIG) end
  local p = rawget(mt, "__metatable")
  if p ~= nil then return p end
  return view_of[mt] or mt
end

local function missing_data(dir, names, unloaded)
  return function(_, k)
    if unloaded then
      error("data." .. tostring(k) .. ": " .. unloaded, 2)
    end
    error("data." .. tostring(k) .. ": no such data set: there is no " .. dir .. "/" ..
      tostring(k) .. ".json (data sets: " .. names .. ")", 2)
  end
end

local function new_env(G)
  return setmetatable({}, { __index = hidden(G) or G, __metatable = false })
end

local function lock_env(env, G, name)
  dsetmt(env, {
    __index = hidden(G) or G,
    __newindex = raiser("cannot set global '", "' in " .. name ..
      " while serving a call: globals are shared by every call; use a local"),
    __metatable = false,
  })
end

-- `print`: every value turned into a string by `tostring` here, in Lua (a `__tostring` runs
-- where the hook can pause it), then written by `log_line`.
local function print_with(log_line)
  local select, unpack = select, table.unpack
  return function(...)
    local n = select('#', ...)
    local parts = { ... }
    for i = 1, n do
      local v = parts[i]
      if type(v) ~= "string" then parts[i] = tostring(v) end
    end
    log_line(unpack(parts, 1, n))
  end
end

return {
  print_with = print_with,
  setmetatable = safe_setmetatable, getmetatable = safe_getmetatable, next = frozen_next,
  rawget = frozen_rawget, rawlen = frozen_rawlen, len = frozen_len, pairs = frozen_pairs,
  raiser = raiser, index_fallback = index_fallback, view_of = view_of, guard_close = guard_close,
  missing_data = missing_data, new_env = new_env, lock_env = lock_env,
}
"#;

/// A module file `require` looked for, with the text it loaded (`None`: not readable then).
pub type ReadModule = (PathBuf, Option<String>);

/// Helpers kept per state.
pub struct Sandbox {
    pub new_env: Function,
    pub lock_env: Function,
    /// Freezes what the scripts built, at the end of loading.
    pub freezer: Freezer,
    /// Modules `require` loaded: `{ path, env, module }` entries.
    modules: Table,
    /// True until loading ends; `require` loads new modules only while it is.
    loading: Arc<AtomicBool>,
    /// Each module file `require` looked for, with the text it loaded (`None`: it could not
    /// be read, and the script went on without it, as `pcall(require, "extra")` does): what a
    /// reload compares to know whether the scripts would load the same (see
    /// [`super::Engine`]). A module that appears later must build new states too.
    pub read_modules: Arc<std::sync::Mutex<Vec<ReadModule>>>,
}

/// Creates a sandboxed state with `data` installed, libraries and data frozen.
pub fn new_state(
    handlers_dir: &Path,
    data: &DataSets,
    memory_limit: usize,
) -> Result<(Lua, Sandbox), StartupError> {
    let setup = |e: mlua::Error| StartupError::Script {
        location: Location::file(handlers_dir),
        message: format!("setting up Lua: {e}"),
        hint: None,
    };
    let libs = StdLib::TABLE
        | StdLib::STRING
        | StdLib::UTF8
        | StdLib::MATH
        | StdLib::COROUTINE
        | StdLib::OS
        | StdLib::DEBUG;
    // SAFETY: the debug library is loaded only so the freezer can read upvalues and raw
    // metatables; `take_debug` below moves the three functions it needs into Rust handles and
    // prelude upvalues and removes `debug` from the globals before any script runs, so no
    // script can reach it. No C modules can be loaded: the package library is not opened.
    #[allow(unsafe_code)]
    let lua = unsafe { Lua::unsafe_new_with(libs, LuaOptions::default()) };
    lua.set_memory_limit(memory_limit).map_err(setup)?;
    super::stdlib::install(&lua).map_err(setup)?;
    super::guard::install(&lua).map_err(setup)?;
    let (sandbox, wrappers) = prepare(&lua, handlers_dir).map_err(setup)?;
    install_data(&lua, &sandbox, &wrappers.missing_data, data, memory_limit)?;
    freeze_libraries(&lua, &sandbox, &wrappers).map_err(setup)?;
    Ok((lua, sandbox))
}

/// The longest line one `print` writes to the log, in bytes.
const PRINT_LIMIT: usize = 4096;
/// Bytes of `print` output one call may write to the log (the script's load counts as one).
const PRINT_QUOTA: usize = 256 * 1024;

/// What setup needs from the prelude after `prepare`.
struct Wrappers {
    /// The maker of the `__index` that reports a missing data set.
    missing_data: Function,
    /// `debug.getmetatable`, for the string metatable.
    dgetmt: Function,
}

fn prepare(lua: &Lua, handlers_dir: &Path) -> mlua::Result<(Sandbox, Wrappers)> {
    let g = lua.globals();
    let debug: Table = g.raw_get("debug")?;
    let getupvalue: Function = debug.raw_get("getupvalue")?;
    let dgetmt: Function = debug.raw_get("getmetatable")?;
    let dsetmt: Function = debug.raw_get("setmetatable")?;
    let raise = super::freeze::raise_at_script(lua)?;
    g.raw_set("debug", LuaValue::Nil)?;

    let originals = (
        freeze::frozen_key(),
        freeze::original_key(),
        dgetmt.clone(),
        dsetmt,
        g.raw_get::<Function>("setmetatable")?,
        g.raw_get::<Function>("getmetatable")?,
        g.raw_get::<Function>("next")?,
        g.raw_get::<Function>("rawget")?,
        g.raw_get::<Function>("rawlen")?,
        g.raw_get::<Function>("error")?,
        g.raw_get::<Function>("type")?,
        g.raw_get::<Function>("tostring")?,
        g.raw_get::<Function>("rawset")?,
        lua.named_registry_value::<Function>(super::guard::GUARD_CLOSE_KEY)?,
        raise,
    );
    let p: Table = lua.load(PRELUDE).set_name("=protoserve").call(originals)?;
    let f = |name: &str| p.raw_get::<Function>(name);
    let wrappers: Vec<(&str, Function)> = vec![
        ("setmetatable", f("setmetatable")?),
        ("getmetatable", f("getmetatable")?),
        ("next", f("next")?),
        ("rawget", f("rawget")?),
        ("rawlen", f("rawlen")?),
    ];
    let helpers = Helpers {
        len: f("len")?,
        pairs: f("pairs")?,
        newindex: f("raiser")?,
        index_fallback: f("index_fallback")?,
        view_of: p.raw_get("view_of")?,
        guard_close: f("guard_close")?,
    };
    super::stdlib::configure(lua, &helpers.len, &dgetmt)?;
    let (new_env, lock_env) = (f("new_env")?, f("lock_env")?);
    let mut internal: Vec<Function> = wrappers.iter().map(|(_, f)| f.clone()).collect();
    internal.extend([
        helpers.len.clone(),
        helpers.pairs.clone(),
        helpers.guard_close.clone(),
        new_env.clone(),
        lock_env.clone(),
    ]);
    let freezer = Freezer::new(lua, helpers, getupvalue, &internal)?;
    let sandbox = Sandbox {
        new_env,
        lock_env,
        freezer,
        modules: lua.create_table()?,
        loading: Arc::new(AtomicBool::new(true)),
        read_modules: Arc::default(),
    };
    for (name, w) in &wrappers {
        g.raw_set(*name, w.clone())?;
    }

    // Only the harmless part of os.
    let os: Table = g.get("os")?;
    let safe_os = lua.create_table()?;
    for name in ["time", "clock", "date", "difftime"] {
        safe_os.raw_set(name, os.get::<LuaValue>(name)?)?;
    }
    g.raw_set("os", safe_os)?;
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

    let log_line = lua.create_function(|_, args: mlua::Variadic<LuaValue>| {
        // A log line is capped (a script printing 100 MB must not flood the log), and the
        // bytes looked at are charged to the call like any other library work.
        let mut line = String::new();
        for (i, v) in args.iter().enumerate() {
            if i > 0 {
                line.push('\t');
            }
            let room = PRINT_LIMIT.saturating_sub(line.len());
            match v {
                LuaValue::String(s) => {
                    let bytes = s.as_bytes();
                    super::slice::charge(bytes.len().min(room) as u64 / 8 + 1)?;
                    line.push_str(&String::from_utf8_lossy(&bytes[..bytes.len().min(room)]));
                }
                other => line.push_str(&other.to_string().unwrap_or_default()),
            }
            if line.len() >= PRINT_LIMIT {
                let mut cut = PRINT_LIMIT;
                while !line.is_char_boundary(cut) {
                    cut -= 1;
                }
                line.truncate(cut);
                line.push_str(" …(truncated)");
                break;
            }
        }
        // Each line is capped, and so is what one call prints in all: a loop of prints ran
        // at tens of megabytes of log a second, for as long as the budget allowed.
        let before = super::slice::with_running_call(|c| {
            c.map_or(0, |c| {
                c.printed.fetch_add(line.len() + 1, Ordering::Relaxed)
            })
        });
        if before < PRINT_QUOTA {
            tracing::info!(target: "script", "{}", crate::error::log_escaped(&line));
            if before + line.len() + 1 >= PRINT_QUOTA {
                tracing::info!(
                    target: "script",
                    "(this call has printed {PRINT_QUOTA} bytes, as much as a call may: what it \
                     prints from now on is not logged)"
                );
            }
        }
        Ok(())
    })?;
    let print: Function = p.raw_get::<Function>("print_with")?.call(log_line)?;
    g.raw_set("print", print)?;

    let grpc = lua.create_table()?;
    grpc.raw_set(
        "status",
        lua.create_function(|lua, (code, message): (LuaValue, LuaValue)| {
            // Converted here rather than by mlua, which names the function '?' in its error.
            let message = Option::<mlua::String>::from_lua(message, lua).map_err(|cause| {
                mlua::Error::BadArgument {
                    to: Some("grpc.status".into()),
                    pos: 2,
                    name: None,
                    cause: std::sync::Arc::new(cause),
                }
            })?;
            // The status holds its message outside Lua's memory, where `--script-memory`
            // does not count it, and a script may keep any number of statuses: only what a
            // status can carry is copied.
            let message = match &message {
                None => String::new(),
                Some(m) => {
                    let bytes = m.as_bytes();
                    let text =
                        std::str::from_utf8(&bytes).map_err(|e| mlua::Error::BadArgument {
                            to: Some("grpc.status".into()),
                            pos: 2,
                            name: None,
                            cause: std::sync::Arc::new(mlua::Error::FromLuaConversionError {
                                from: "string",
                                to: "String".into(),
                                message: Some(e.to_string()),
                            }),
                        })?;
                    crate::error::bounded_str(text)
                }
            };
            let status = ScriptStatus::from_lua(&code, message).map_err(mlua::Error::runtime)?;
            Ok(LuaValue::Error(Box::new(mlua::Error::external(status))))
        })?,
    )?;
    g.raw_set("grpc", grpc)?;
    install_require(lua, handlers_dir.to_path_buf(), &sandbox)?;
    let rest = Wrappers {
        missing_data: f("missing_data")?,
        dgetmt,
    };
    Ok((sandbox, rest))
}

/// `data.<name>` for every data set, as frozen tables; a name with no data set is an error at
/// the line that reads it.
fn install_data(
    lua: &Lua,
    sandbox: &Sandbox,
    missing_data: &Function,
    data: &DataSets,
    memory_limit: usize,
) -> Result<(), StartupError> {
    let fr = &sandbox.freezer;
    let setup = |e: mlua::Error| StartupError::Data {
        location: Location::file(&data.dir),
        message: format!("setting up data sets: {e}"),
        hint: None,
    };
    let root_hidden = lua
        .create_table_with_capacity(0, data.sets.len())
        .map_err(setup)?;
    for (name, value) in &data.sets {
        let file = data.dir.join(format!("{name}.json"));
        let too_big = || StartupError::Data {
            location: Location::file(&file),
            message: format!(
                "this data set does not fit in a script state's memory limit of {} MiB \
                 (--script-memory; every state holds its own copy of all data sets)",
                memory_limit / (1024 * 1024)
            ),
            hint: Some(format!(
                "raise --script-memory, or make {} smaller",
                file.display()
            )),
        };
        let fail = |e: mlua::Error| match e {
            mlua::Error::MemoryError(_) => too_big(),
            other => setup(other),
        };
        let newindex = fr
            .read_only(
                &format!(
                    "attempt to modify read-only table (data set {}, key '",
                    file.display()
                ),
                "'): data is read-only; copy what you need into a local table",
            )
            .map_err(fail)?;
        let converted = json_to_frozen(lua, fr, value, &newindex).map_err(fail)?;
        root_hidden
            .raw_set(name.as_str(), converted)
            .map_err(fail)?;
    }
    let names: Vec<&str> = data.sets.keys().map(String::as_str).collect();
    let names = if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(", ")
    };
    let install = || -> mlua::Result<()> {
        let missing: Function = missing_data.call((
            data.dir.display().to_string(),
            names.as_str(),
            data.unloaded.then_some(crate::data::NOT_LOADED),
        ))?;
        let link = lua.create_table()?;
        link.raw_set("__index", missing)?;
        root_hidden.set_metatable(Some(link))?;
        let newindex = fr.read_only(
            "attempt to modify read-only table (data, key '",
            "'): data sets are the files in the data folder",
        )?;
        let root = lua.create_table()?;
        fr.seal(lua, &root, root_hidden.clone(), &newindex)?;
        lua.globals().raw_set("data", root)
    };
    install().map_err(setup)
}

/// Freezes the library tables, then the globals; the string metatable stays a live metatable
/// (Lua reads it raw) that scripts only ever see as a frozen copy.
fn freeze_libraries(lua: &Lua, sandbox: &Sandbox, wrappers: &Wrappers) -> mlua::Result<()> {
    let fr = &sandbox.freezer;
    let g = lua.globals();
    let mut found = Found::default();
    for lib in ["string", "table", "math", "utf8", "coroutine", "os", "grpc"] {
        let t: LuaValue = g.raw_get(lib)?;
        let newindex = fr.read_only(
            &format!("attempt to modify read-only table (the {lib} library, key '"),
            "')",
        )?;
        fr.freeze_from(lua, t, &newindex, &newindex, lib, &mut found)?;
    }
    let newindex = fr.read_only(
        "attempt to modify read-only table (the global environment, key '",
        "')",
    )?;
    fr.freeze_from(
        lua,
        LuaValue::Table(g.clone()),
        &newindex,
        &newindex,
        "globals",
        &mut found,
    )?;
    if let Some(hidden_globals) = freeze::hidden(&g) {
        // Every script environment's metatable reads it directly.
        fr.exclude(&hidden_globals);
    }
    let string_lib: Table = g.get("string")?;
    let string_mt: Table = wrappers.dgetmt.call("")?;
    let seen = lua.create_table()?;
    string_mt.for_each(|k: LuaValue, v: LuaValue| seen.raw_set(k, v))?;
    let newindex = fr.read_only(
        "attempt to modify read-only table (the string metatable, key '",
        "')",
    )?;
    fr.freeze_from(
        lua,
        LuaValue::Table(seen.clone()),
        &newindex,
        &newindex,
        "string metatable",
        &mut found,
    )?;
    if let Ok(LuaValue::Table(index)) = string_mt.raw_get::<LuaValue>("__index") {
        if index == string_lib {
            if let Some(h) = freeze::hidden(&string_lib) {
                string_mt.raw_set("__index", h)?;
            }
        }
    }
    string_mt.raw_set("__metatable", seen)?;
    Ok(())
}

/// `require("util")` → `handlers/util.lua`, loaded once per state, as text, while loading only.
/// The longest module name `require` errors show (bytes); longer names are invalid anyway.
const MAX_MODULE_NAME: usize = 256;

fn install_require(lua: &Lua, dir: PathBuf, sandbox: &Sandbox) -> mlua::Result<()> {
    let cache = lua.create_table()?;
    let new_env = sandbox.new_env.clone();
    let lock_env = sandbox.lock_env.clone();
    let modules = sandbox.modules.clone();
    let loading = sandbox.loading.clone();
    let read_modules = sandbox.read_modules.clone();
    let require = lua.create_function(move |lua, name: mlua::String| {
        match cache.raw_get::<LuaValue>(&name)? {
            LuaValue::Nil => {}
            loaded => return Ok(loaded),
        }
        // The errors below name the module, and live outside Lua's memory: no module name
        // is long, so a long one is named by its start only.
        let name = {
            let bytes = name.as_bytes();
            let shown = String::from_utf8_lossy(&bytes[..bytes.len().min(MAX_MODULE_NAME)]);
            if bytes.len() > MAX_MODULE_NAME {
                format!("{shown}…")
            } else {
                shown.into_owned()
            }
        };
        if !loading.load(Ordering::Acquire) {
            return Err(mlua::Error::runtime(format!(
                "require({name:?}) at call time: modules load with the scripts; require it at \
                 the top of the script"
            )));
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
        let source = crate::input::read_to_string(&path);
        read_modules
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((path.clone(), source.as_ref().ok().cloned()));
        let source = source.map_err(|e| {
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
        let shown = path.display().to_string();
        lock_env.call::<()>((env.clone(), lua.globals(), shown.as_str()))?;
        let module = match result {
            LuaValue::Nil => LuaValue::Boolean(true),
            other => other,
        };
        cache.raw_set(name.as_str(), module.clone())?;
        let entry = lua.create_table()?;
        entry.raw_set("path", shown)?;
        entry.raw_set("env", env)?;
        entry.raw_set("module", module.clone())?;
        modules.raw_push(entry)?;
        Ok(module)
    })?;
    lua.globals().raw_set("require", require)
}

/// Ends loading in one state: freezes every script environment and module with what they
/// reach, and (when `check_code` is set, once for the pool) rejects load-time functions that
/// assign module-level locals. After this, `require` only returns modules loaded already.
/// Makes a frozen script environment read its names in one step.
///
/// A name a script reads is looked up in its own globals, then in the shared ones through a
/// chain of `__index` tables; `math` in `math.sin` took three lookups. Once everything is
/// frozen neither side can change, so the environment's reads go to one table holding both
/// (its own names first). Only reads change: `rawget`, `next` and `pairs` still see the
/// script's own globals alone, through the hidden contents. A chain that runs through a
/// function is left as it is.
fn flatten_reads(lua: &Lua, env: &Table) -> mlua::Result<()> {
    let (Some(own), Some(mt)) = (freeze::hidden(env), env.metatable()) else {
        return Ok(());
    };
    let mut chain = vec![own.clone()];
    let mut next = own.metatable();
    while let Some(link) = next {
        match link.raw_get::<LuaValue>("__index")? {
            LuaValue::Table(t) => {
                next = t.metatable();
                chain.push(t);
            }
            LuaValue::Nil => break,
            _ => return Ok(()),
        }
        if chain.len() > 8 {
            return Ok(());
        }
    }
    if chain.len() < 2 {
        return Ok(());
    }
    let merged = lua.create_table()?;
    for t in chain.iter().rev() {
        t.for_each(|k: LuaValue, v: LuaValue| merged.raw_set(k, v))?;
    }
    mt.raw_set("__index", merged)
}

pub fn finish_loading(
    lua: &Lua,
    sandbox: &Sandbox,
    envs: &HashMap<PathBuf, Table>,
    check_code: bool,
    memory_limit: usize,
) -> Result<(), StartupErrors> {
    let fr = &sandbox.freezer;
    let mut found = Found::default();
    let mut roots: Vec<(String, Table, LuaValue)> = envs
        .iter()
        .map(|(path, env)| (path.display().to_string(), env.clone(), LuaValue::Nil))
        .collect();
    roots.sort_by(|a, b| a.0.cmp(&b.0));
    let modules: Vec<Table> = sandbox
        .modules
        .sequence_values::<Table>()
        .collect::<mlua::Result<_>>()
        .map_err(|e| freeze_error("handlers", &e, memory_limit))?;
    for m in modules {
        let read = || -> mlua::Result<(String, Table, LuaValue)> {
            Ok((m.raw_get("path")?, m.raw_get("env")?, m.raw_get("module")?))
        };
        roots.push(read().map_err(|e| freeze_error("handlers", &e, memory_limit))?);
    }
    for (path, env, module) in &roots {
        let mut freeze = || -> mlua::Result<()> {
            let env_newindex = fr.read_only(
                "cannot set global '",
                &format!(
                    "' in {path} while serving a call: globals are shared by every call; use a local"
                ),
            )?;
            let newindex = fr.read_only(
                &format!("attempt to modify read-only table built while loading {path} (key '"),
                "'): keep per-call state in locals",
            )?;
            fr.freeze_from(
                lua,
                LuaValue::Table(env.clone()),
                &env_newindex,
                &newindex,
                path,
                &mut found,
            )?;
            // The walk reports a coroutine or an iterator where it finds it held; one that is
            // the file's value itself (what `require` gives every call) is reported here.
            let through = || (path.clone(), "the value the file returns".to_owned());
            match module {
                LuaValue::Thread(_) => found.coroutines.push(through()),
                LuaValue::Function(f) if stdlib::is_load_time_iterator(lua, f)? => {
                    found.iterators.push(through())
                }
                _ => {}
            }
            fr.freeze_from(lua, module.clone(), &newindex, &newindex, path, &mut found)?;
            flatten_reads(lua, env)
        };
        freeze().map_err(|e| freeze_error(path, &e, memory_limit))?;
    }
    let mut errors = StartupErrors::default();
    for (origin, name) in &found.coroutines {
        errors.push(StartupError::Script {
            location: Location::file(origin),
            message: format!(
                "a coroutine created while loading is still reachable after loading (through \
                 {name}); its suspended state would be shared by every call"
            ),
            hint: Some("create coroutines inside the handler function, per call".into()),
        });
    }
    for (origin, name) in &found.iterators {
        errors.push(StartupError::Script {
            location: Location::file(origin),
            message: format!(
                "a string.gmatch iterator made while loading is still reachable after loading \
                 (through {name}); its position would carry over from one call to the next"
            ),
            hint: Some("call string.gmatch inside the handler function, per call".into()),
        });
    }
    if check_code {
        check_upvalue_writes(&found, &mut errors);
    }
    sandbox.loading.store(false, Ordering::Release);
    errors.into_result(())
}

fn freeze_error(origin: &str, e: &mlua::Error, memory_limit: usize) -> StartupError {
    match e {
        mlua::Error::MemoryError(_) => StartupError::Script {
            location: Location::file(origin),
            message: format!(
                "making what this script built while loading read-only needs more than the \
                 script memory limit of {} MiB",
                memory_limit / (1024 * 1024)
            ),
            hint: Some("raise --script-memory".into()),
        },
        other => StartupError::Script {
            location: Location::file(origin),
            message: format!("making what this script built while loading read-only: {other}"),
            hint: None,
        },
    }
}

/// Every `SETUPVAL` on a cell that exists before a call starts is a startup error.
fn check_upvalue_writes(found: &Found, errors: &mut StartupErrors) {
    let mut reported = std::collections::BTreeSet::new();
    for f in &found.functions {
        let proto = match bytecode::parse(&f.dump(false)) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!("cannot check a script function's upvalue writes: {e}");
                continue;
            }
        };
        for w in proto.shared_writes() {
            reported.insert((w.source, w.line, w.name));
        }
    }
    for (source, line, name) in reported {
        let message = if name == "_ENV" {
            "'_ENV' is reassigned while serving a call; the environment is shared by every \
             call: read globals through _ENV, keep per-call tables in locals"
                .to_owned()
        } else {
            format!(
                "'{name}' is a module-level local assigned while serving a call; module state is \
                 read-only (it would be shared by every call): make it a local inside the function"
            )
        };
        errors.push(StartupError::Script {
            location: Location::at(source, line as usize, 0),
            message,
            hint: None,
        });
    }
}

/// JSON text as frozen Lua tables (null becomes nil), built as it is parsed: no parsed copy of
/// the whole document exists besides the tables. A Lua error (out of memory, say) is returned
/// as itself; JSON errors cannot happen for text [`DataSets::load`] accepted.
pub fn json_to_frozen(
    lua: &Lua,
    fr: &Freezer,
    text: &str,
    newindex: &Function,
) -> mlua::Result<LuaValue> {
    use serde::de::DeserializeSeed;
    let failed = std::cell::RefCell::new(None);
    let seed = FrozenJson {
        lua,
        fr,
        newindex,
        failed: &failed,
    };
    let mut de = serde_json::Deserializer::from_str(text);
    let result = seed.deserialize(&mut de).and_then(|v| de.end().map(|()| v));
    match (result, failed.into_inner()) {
        (_, Some(e)) => Err(e),
        (Ok(v), None) => Ok(v),
        (Err(e), None) => {
            let (line, col) = crate::input::json_error_at(text.as_bytes(), &e);
            let message = crate::input::json_error_message(&e);
            let at = match col {
                0 => format!("line {line}"),
                _ => format!("line {line} column {col}"),
            };
            Err(mlua::Error::runtime(format!(
                "not valid JSON: {message} at {at}"
            )))
        }
    }
}

/// Builds one JSON value as Lua values; the Lua error that stopped it is kept in `failed`.
#[derive(Clone, Copy)]
struct FrozenJson<'a> {
    lua: &'a Lua,
    fr: &'a Freezer,
    newindex: &'a Function,
    failed: &'a std::cell::RefCell<Option<mlua::Error>>,
}

impl FrozenJson<'_> {
    fn lua<T, E: serde::de::Error>(&self, r: mlua::Result<T>) -> Result<T, E> {
        r.map_err(|e| {
            let shown = E::custom(&e);
            self.failed.borrow_mut().get_or_insert(e);
            shown
        })
    }

    /// Freezes `hidden` behind a new table.
    fn seal<E: serde::de::Error>(&self, hidden: Table) -> Result<LuaValue, E> {
        self.lua((|| {
            let t = self.lua.create_table()?;
            self.fr.seal(self.lua, &t, hidden, self.newindex)?;
            Ok(LuaValue::Table(t))
        })())
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for FrozenJson<'_> {
    type Value = LuaValue;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<LuaValue, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for FrozenJson<'_> {
    type Value = LuaValue;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<LuaValue, E> {
        Ok(LuaValue::Nil)
    }

    fn visit_bool<E: serde::de::Error>(self, b: bool) -> Result<LuaValue, E> {
        Ok(LuaValue::Boolean(b))
    }

    fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<LuaValue, E> {
        Ok(LuaValue::Integer(n))
    }

    /// Above `i64::MAX`, a float (as `serde_json::Number::as_f64` reads it).
    fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<LuaValue, E> {
        Ok(match i64::try_from(n) {
            Ok(i) => LuaValue::Integer(i),
            Err(_) => LuaValue::Number(n as f64),
        })
    }

    fn visit_f64<E: serde::de::Error>(self, n: f64) -> Result<LuaValue, E> {
        Ok(LuaValue::Number(n))
    }

    fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<LuaValue, E> {
        self.lua(self.lua.create_string(s).map(LuaValue::String))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<LuaValue, A::Error> {
        let hidden = self.lua(
            self.lua
                .create_table_with_capacity(seq.size_hint().unwrap_or(0), 0),
        )?;
        let (mut i, mut holes) = (0, false);
        while let Some(item) = seq.next_element_seed(self)? {
            i += 1;
            holes |= item.is_nil();
            self.lua(hidden.raw_set(i, item))?;
        }
        if holes {
            // Grown one item at a time, an array with a `null` keeps the items after it in the
            // table's hash part, where `#` does not see them: `[1, null, 3]` had length 1.
            // Sized for every item at once, as the array is in the file, `#` counts them all.
            let sized = self.lua(self.lua.create_table_with_capacity(i, 0))?;
            for at in 1..=i {
                let item: LuaValue = self.lua(hidden.raw_get(at))?;
                self.lua(sized.raw_set(at, item))?;
            }
            return self.seal(sized);
        }
        self.seal(hidden)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<LuaValue, A::Error> {
        let hidden = self.lua(self.lua.create_table())?;
        // Data sets with a key given twice are refused when they are loaded (see
        // `crate::jsonkeys`); were one met here, its last value would be kept.
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            let value = map.next_value_seed(self)?;
            self.lua(hidden.raw_set(&*key, value))?;
        }
        self.seal(hidden)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A state with `source` loaded as the script `x.lua` and loading finished: the state and
    /// the script's environment.
    fn loaded(source: &str) -> (Lua, Table) {
        let data = DataSets::default();
        let (lua, sandbox) = new_state(Path::new("handlers"), &data, 64 << 20).unwrap();
        let env: Table = sandbox.new_env.call(lua.globals()).unwrap();
        lua.load(source)
            .set_environment(env.clone())
            .exec()
            .unwrap();
        let mut envs = HashMap::new();
        envs.insert(PathBuf::from("x.lua"), env.clone());
        sandbox
            .lock_env
            .call::<()>((env.clone(), lua.globals(), "x.lua"))
            .unwrap();
        finish_loading(&lua, &sandbox, &envs, true, 64 << 20).unwrap();
        (lua, env)
    }

    #[test]
    fn loading_freezes_script_tables_but_not_what_live_metatables_read() {
        let (lua, env) = loaded("local t = { 1 } function F() return t end");
        let hidden_globals = freeze::hidden(&lua.globals()).unwrap();
        assert!(!freeze::is_frozen(&hidden_globals));
        assert!(freeze::is_frozen(&env));
        let t: Table = lua.load("return F()").set_environment(env).eval().unwrap();
        assert!(freeze::is_frozen(&t));
        assert_eq!(freeze::contents(&t).raw_get::<i64>(1).unwrap(), 1);
    }

    /// Reading a frozen table runs no script code (its `__index` is its hidden contents), so
    /// `ipairs` keeps Lua's own C iterator for it; a frozen table whose own `__index` is a
    /// function gets the iterator written in Lua, which the hook can pause.
    #[test]
    fn frozen_tables_keep_the_c_library_functions() {
        let (lua, env) = loaded(
            "local plain = { 'a', 'b' }\n\
             local slow = setmetatable({ 'a' }, { __index = function(_, k) return k == 2 and 'b' or nil end })\n\
             function F() return plain, slow end",
        );
        let (plain, slow): (Table, Table) = lua
            .load("return F()")
            .set_environment(env.clone())
            .eval()
            .unwrap();
        assert!(freeze::is_frozen(&plain) && freeze::is_frozen(&slow));
        let ipairs: Function = lua.globals().get("ipairs").unwrap();
        let (iter, _, _): (Function, LuaValue, LuaValue) = ipairs.call(plain).unwrap();
        assert_eq!(iter.info().what, "C");
        let (iter, _, _): (Function, LuaValue, LuaValue) = ipairs.call(slow).unwrap();
        assert_eq!(iter.info().what, "Lua");
        let joined: String = lua
            .load("local p, s = F() return table.concat(p, ',') .. table.concat(s, ',', 1, 2)")
            .set_environment(env)
            .eval()
            .unwrap();
        assert_eq!(joined, "a,ba,b");
    }

    #[test]
    fn a_frozen_environment_reads_in_one_step_but_lists_only_its_own_names() {
        let data = DataSets::default();
        let (lua, sandbox) = new_state(Path::new("handlers"), &data, 64 << 20).unwrap();
        let env: Table = sandbox.new_env.call(lua.globals()).unwrap();
        lua.load(
            "Own = 1 function F() return Own, math.floor(2.5), string.rep('a', 2), Missing end",
        )
        .set_environment(env.clone())
        .exec()
        .unwrap();
        let mut envs = HashMap::new();
        envs.insert(PathBuf::from("x.lua"), env.clone());
        sandbox
            .lock_env
            .call::<()>((env.clone(), lua.globals(), "x.lua"))
            .unwrap();
        finish_loading(&lua, &sandbox, &envs, true, 64 << 20).unwrap();
        // One table behind the environment holds its own names and the shared ones.
        let mt = env.metatable().unwrap();
        let LuaValue::Table(reads) = mt.raw_get::<LuaValue>("__index").unwrap() else {
            panic!("__index is not a table");
        };
        assert!(reads.metatable().is_none());
        assert!(reads.raw_get::<LuaValue>("math").unwrap().is_table());
        assert_eq!(reads.raw_get::<i64>("Own").unwrap(), 1);
        let (own, floor, rep, missing): (i64, i64, String, LuaValue) = lua
            .load("return F()")
            .set_environment(env.clone())
            .eval()
            .unwrap();
        assert_eq!(
            (own, floor, rep.as_str(), missing),
            (1, 2, "aa", LuaValue::Nil)
        );
        // Raw reads and iteration see the script's own globals only, as before.
        let listed: Vec<String> = lua
            .load("local n = {} for k in pairs(_ENV) do n[#n + 1] = k end table.sort(n) return n")
            .set_environment(env.clone())
            .eval()
            .unwrap();
        assert_eq!(listed, ["F", "Own"]);
        let raw: LuaValue = lua
            .load("return rawget(_ENV, 'math')")
            .set_environment(env.clone())
            .eval()
            .unwrap();
        assert!(raw.is_nil());
        // Writes are still refused.
        let e = lua
            .load("Other = 2")
            .set_environment(env)
            .exec()
            .unwrap_err();
        assert!(e.to_string().contains("cannot set global 'Other'"), "{e}");
    }
}
