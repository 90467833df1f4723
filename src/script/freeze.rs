//! Freezing: what a Lua state holds when loading ends becomes read-only, in place.
//!
//! Why: every call on a state shares whatever the scripts built while loading (their globals,
//! module-level locals, library tables, data). If a call could change any of it, the next call
//! would see the change; the server's promise is that nothing crosses from one call to the next.
//!
//! A frozen table keeps its identity (every reference to it sees the freeze). Its contents move
//! to a hidden table; its new metatable reads the hidden one (`__index`), refuses writes
//! (`__newindex`, with a message naming where the table was built), and answers `#`, `pairs`,
//! `next`, `rawget` and `rawlen` from the hidden contents. Metamethods the table had (`__call`,
//! `__tostring`, `__add`, an `__index` fallback…) keep working. The metatable is recognised by a
//! light-userdata key that only Rust can create, so scripts cannot forge a "frozen" table, and
//! conversion to protobuf reads the hidden contents raw, without running script code.
//!
//! Finding what to freeze walks from the roots (script environments, modules, globals, data)
//! through keys, values, metatables and the upvalues of Lua functions. A coroutine found on the
//! way is a startup error: its suspended frame would be state shared by every call.

use std::collections::HashSet;
use std::ffi::c_void;

use mlua::{Function, LightUserData, Lua, Table, Value as LuaValue};

use super::stdlib;

/// The registry key of the function read-only errors are raised with (see [`raise_at_script`]).
const RAISE_KEY: &str = "protoserve.raise_at_script";

/// `raise(message)`, called by a `__newindex`: raises `message` at the line of the script that
/// wrote, the nearest caller from a file. That is not the level above when a library function
/// did the write for the script (`table.insert(ctx, 1)`, `table.sort` on frozen data): it has
/// no line, and Lua's own `error(message, 2)` would name none.
const RAISE: &str = r#"
local dgetinfo, error, ssub = ...
return function(message)
  -- Level 1 is this function, 2 the `__newindex` calling it.
  for level = 3, 34 do
    local info = dgetinfo(level, "Sl")
    if info == nil then break end
    if ssub(info.source, 1, 1) == "@" and info.currentline > 0 then
      error(ssub(info.source, 2) .. ":" .. info.currentline .. ": " .. message, 0)
    end
  end
  error(message, 3)
end
"#;

/// The state's function that raises read-only errors at the script line that wrote (see
/// [`RAISE`]), made on first use, which must come while the debug library is still loaded.
pub fn raise_at_script(lua: &Lua) -> mlua::Result<Function> {
    if let Ok(made) = lua.named_registry_value::<Function>(RAISE_KEY) {
        return Ok(made);
    }
    let g = lua.globals();
    let getinfo: Function = g.raw_get::<Table>("debug")?.raw_get("getinfo")?;
    let error: Function = g.raw_get("error")?;
    let sub: Function = g.raw_get::<Table>("string")?.raw_get("sub")?;
    let made: Function = lua
        .load(RAISE)
        .set_name("=protoserve")
        .call((getinfo, error, sub))?;
    lua.set_named_registry_value(RAISE_KEY, made.clone())?;
    Ok(made)
}

/// Marks a frozen table's metatable; its value is the hidden contents.
static FROZEN_KEY: u8 = 0;
/// In a frozen table's metatable: what `getmetatable` returns for it.
static ORIGINAL_KEY: u8 = 0;

fn light(marker: &'static u8) -> LuaValue {
    LuaValue::LightUserData(LightUserData(
        marker as *const u8 as *const c_void as *mut c_void,
    ))
}

/// The key under which a frozen table's metatable holds its hidden contents.
pub fn frozen_key() -> LuaValue {
    light(&FROZEN_KEY)
}

/// The key under which a frozen table's metatable holds the metatable scripts see.
pub fn original_key() -> LuaValue {
    light(&ORIGINAL_KEY)
}

/// Whether `table` is frozen: code that writes tables (library functions) must refuse these.
pub fn is_frozen(table: &Table) -> bool {
    hidden(table).is_some()
}

/// The hidden contents of a frozen table, or `None` for any other table.
pub fn hidden(table: &Table) -> Option<Table> {
    let mt = table.metatable()?;
    match mt.raw_get::<LuaValue>(frozen_key()) {
        Ok(LuaValue::Table(h)) => Some(h),
        _ => None,
    }
}

/// What to read a table's entries from, raw: the hidden contents of a frozen table, or itself.
pub fn contents(table: &Table) -> Table {
    hidden(table).unwrap_or_else(|| table.clone())
}

/// The Lua-side helpers the freezer installs in frozen metatables (see the sandbox prelude).
pub struct Helpers {
    /// `__len` of frozen tables.
    pub len: Function,
    /// `__pairs` of frozen tables.
    pub pairs: Function,
    /// `(prefix, suffix)` → a `__newindex` that raises `prefix .. key .. suffix`.
    pub newindex: Function,
    /// `(hidden, f)` → an `__index` reading `hidden`, then falling back to the function `f`.
    pub index_fallback: Function,
    /// Raw views of frozen metatables (made by `setmetatable`) → the frozen table.
    pub view_of: Table,
    /// `f` → a `__close` handler that does nothing once the running call is aborted.
    pub guard_close: Function,
}

/// Freezes tables of one Lua state.
pub struct Freezer {
    helpers: Helpers,
    /// `debug.getupvalue`, kept from the debug library before it was removed.
    getupvalue: Function,
    /// Every frozen table, so none is ever collected: their addresses stay theirs for the
    /// state's lifetime (the encoded-reply cache relies on it).
    all: Table,
    /// Our own functions (sandbox wrappers): their upvalues are the sandbox's, not a script's.
    internal: HashSet<usize>,
    /// Hidden contents that live metatables point at (the globals' behind every script
    /// environment): already read-only to scripts, and never to be frozen in place.
    excluded: std::cell::RefCell<HashSet<usize>>,
}

/// What a walk found besides tables: Lua functions (for the bytecode check) and problems.
#[derive(Default)]
pub struct Found {
    pub functions: Vec<Function>,
    seen_functions: HashSet<usize>,
    /// Coroutines reachable after loading: (where they were found, through which name).
    pub coroutines: Vec<(String, String)>,
    /// `string.gmatch` iterators made while loading and reachable after: (where they were
    /// found, through which name).
    pub iterators: Vec<(String, String)>,
}

/// One table to freeze and the `__newindex` it gets.
struct Pending {
    table: Table,
    newindex: Function,
}

impl Freezer {
    pub fn new(
        lua: &Lua,
        helpers: Helpers,
        getupvalue: Function,
        internal: &[Function],
    ) -> mlua::Result<Self> {
        Ok(Self {
            helpers,
            getupvalue,
            all: lua.create_table()?,
            internal: internal.iter().map(|f| f.to_pointer() as usize).collect(),
            excluded: Default::default(),
        })
    }

    /// Never walks into or freezes `table` (hidden contents a live metatable points at).
    pub fn exclude(&self, table: &Table) {
        self.excluded
            .borrow_mut()
            .insert(table.to_pointer() as usize);
    }

    /// A `__newindex` raising `prefix .. key .. suffix`.
    pub fn read_only(&self, prefix: &str, suffix: &str) -> mlua::Result<Function> {
        self.helpers.newindex.call((prefix, suffix))
    }

    /// Makes `visible` a frozen table whose contents are `hidden` (which nothing else may hold).
    pub fn seal(
        &self,
        lua: &Lua,
        visible: &Table,
        hidden: Table,
        newindex: &Function,
    ) -> mlua::Result<()> {
        let mt = lua.create_table_with_capacity(0, 6)?;
        mt.raw_set("__index", hidden.clone())?;
        mt.raw_set("__newindex", newindex.clone())?;
        mt.raw_set("__len", self.helpers.len.clone())?;
        mt.raw_set("__pairs", self.helpers.pairs.clone())?;
        mt.raw_set("__metatable", false)?;
        mt.raw_set(frozen_key(), hidden)?;
        visible.set_metatable(Some(mt))?;
        self.all.raw_push(visible.clone())
    }

    /// Freezes everything reachable from `root` that is not frozen yet. The root table itself
    /// (if it is one) gets `root_newindex`, everything below it `newindex`; `origin` names where
    /// the walk started, for error messages.
    pub fn freeze_from(
        &self,
        lua: &Lua,
        root: LuaValue,
        root_newindex: &Function,
        newindex: &Function,
        origin: &str,
        found: &mut Found,
    ) -> mlua::Result<()> {
        let mut pending = Vec::new();
        let mut seen: HashSet<usize> = HashSet::new();
        let mut stack = vec![root.clone()];
        while let Some(value) = stack.pop() {
            match value {
                LuaValue::Table(t) => {
                    let ptr = t.to_pointer() as usize;
                    if !seen.insert(ptr)
                        || self.excluded.borrow().contains(&ptr)
                        || hidden(&t).is_some()
                        || !matches!(self.helpers.view_of.raw_get::<LuaValue>(&t)?, LuaValue::Nil)
                    {
                        continue;
                    }
                    t.for_each(|k: LuaValue, v: LuaValue| {
                        let name = || format!("'{}'", k.to_string().unwrap_or_else(|_| "?".into()));
                        if let LuaValue::Thread(_) = v {
                            found.coroutines.push((origin.to_owned(), name()));
                        }
                        if let LuaValue::Function(f) = &v {
                            if stdlib::is_load_time_iterator(lua, f)? {
                                found.iterators.push((origin.to_owned(), name()));
                            }
                        }
                        if let LuaValue::Function(f) = &k {
                            if stdlib::is_load_time_iterator(lua, f)? {
                                found
                                    .iterators
                                    .push((origin.to_owned(), "a table key".into()));
                            }
                        }
                        stack.push(k);
                        stack.push(v);
                        Ok(())
                    })?;
                    if let Some(mt) = t.metatable() {
                        stack.push(LuaValue::Table(mt));
                    }
                    let is_root = matches!(&root, LuaValue::Table(r) if r == &t);
                    pending.push(Pending {
                        table: t,
                        newindex: if is_root { root_newindex } else { newindex }.clone(),
                    });
                }
                LuaValue::Function(f) => {
                    let ptr = f.to_pointer() as usize;
                    if self.internal.contains(&ptr) || !found.seen_functions.insert(ptr) {
                        continue;
                    }
                    let info = f.info();
                    // The server's own Lua (chunks named "=…": the prelude, the guard, the
                    // stdlib glue) keeps private working state in upvalues; scripts are
                    // always loaded as "@path", so they cannot pass for it.
                    if info.source.as_deref().is_some_and(|s| s.starts_with('=')) {
                        continue;
                    }
                    let is_lua = info.what != "C";
                    for i in 1..=info.num_upvalues {
                        let (name, v): (Option<String>, LuaValue) =
                            self.getupvalue.call((f.clone(), i))?;
                        if let LuaValue::Thread(_) = v {
                            let name = match name.filter(|n| !n.is_empty()) {
                                Some(n) => format!("'{n}'"),
                                None => "a function made by coroutine.wrap".to_owned(),
                            };
                            found.coroutines.push((origin.to_owned(), name));
                        } else if is_lua {
                            if let LuaValue::Function(g) = &v {
                                if stdlib::is_load_time_iterator(lua, g)? {
                                    let name = name.filter(|n| !n.is_empty());
                                    found.iterators.push((
                                        origin.to_owned(),
                                        format!("'{}'", name.as_deref().unwrap_or("?")),
                                    ));
                                }
                            }
                            stack.push(v);
                        }
                    }
                    if is_lua {
                        found.functions.push(f);
                    }
                }
                LuaValue::Thread(_) => {
                    // Reported where it was found (as a value or an upvalue).
                }
                _ => {}
            }
        }
        for p in pending {
            self.freeze_table(lua, &p.table, &p.newindex)?;
        }
        Ok(())
    }

    /// Moves `t`'s contents to a hidden table and seals it, keeping its metamethods.
    fn freeze_table(&self, lua: &Lua, t: &Table, newindex: &Function) -> mlua::Result<()> {
        let hidden_table = lua.create_table_with_capacity(t.raw_len(), 0)?;
        t.for_each(|k: LuaValue, v: LuaValue| hidden_table.raw_set(k, v))?;
        t.clear()?;
        let original = t.metatable();
        self.seal(lua, t, hidden_table.clone(), newindex)?;
        let Some(m) = original else {
            return Ok(());
        };
        // Keep the behaviour the table's metatable gave it, from that metatable's contents
        // (it may be frozen already).
        let fm = t
            .metatable()
            .ok_or_else(|| mlua::Error::runtime("lost metatable"))?;
        let mc = contents(&m);
        mc.for_each(|k: LuaValue, v: LuaValue| {
            let LuaValue::String(name) = &k else {
                return Ok(());
            };
            let name = name.as_bytes();
            match &name[..] {
                b"__index" => match &v {
                    LuaValue::Table(fallback) => {
                        let link = lua.create_table_with_capacity(0, 1)?;
                        link.raw_set("__index", fallback.clone())?;
                        hidden_table.set_metatable(Some(link))?;
                    }
                    LuaValue::Function(f) => {
                        let index: Function = self
                            .helpers
                            .index_fallback
                            .call((hidden_table.clone(), f.clone()))?;
                        fm.raw_set("__index", index)?;
                    }
                    _ => {}
                },
                // Writes stay refused; no finalizers; the hidden table stays strong.
                b"__newindex" | b"__gc" | b"__mode" | b"__metatable" => {}
                b"__close" => {
                    let guarded: LuaValue = self.helpers.guard_close.call(v.clone())?;
                    fm.raw_set(k.clone(), guarded)?
                }
                n if n.starts_with(b"__") => fm.raw_set(k.clone(), v.clone())?,
                _ => {}
            }
            Ok(())
        })?;
        let seen_as = match mc.raw_get::<LuaValue>("__metatable")? {
            LuaValue::Nil => match self.helpers.view_of.raw_get::<LuaValue>(&m)? {
                LuaValue::Nil => LuaValue::Table(m),
                frozen => frozen,
            },
            protected => protected,
        };
        fm.raw_set(original_key(), seen_as)
    }
}
