//! Request bytes straight into Lua tables, in one pass over the wire.
//!
//! Scripts see a request as `DynamicMessage` decoding followed by a walk over its fields would
//! show it (see [`super::convert`] for the shape: defaults for unset scalars, `nil` for unset
//! messages and optional fields, names for enums, sequences and tables for lists and maps),
//! but nothing is built in between: the bytes are read once, following the wire reader's rules
//! (which follow the decoder's, see [`crate::wire`]), and each value goes to its place.
//!
//! Creating tables through the Lua C API from Rust costs several times what Lua's own table
//! constructor does, so the request's shape is compiled at load into a [`Layout`]: its scalar
//! fields and singular nested messages become numbered slots, and a small generated Lua
//! function (the builder) turns the slots into tables with constant keys, filling in defaults.
//! Rust only fills the slots: numbers, booleans and strings, plus tables for what has no fixed
//! shape (lists, maps, recursive or very deep messages), which it builds itself ("table mode").
//!
//! Those tables are counted as they are made and charged to the running call, whose time is
//! checked meanwhile ([`super::meter`]): three bytes of an empty list item make a table of
//! defaults, so the bytes alone did not bound the work, and a long request kept its state past
//! the call's time budget. A big request is decoded where it can pause at those charges, so it
//! gives way to the other calls on its state at the end of each time slice
//! ([`super::sliced_decode`]).

use std::cell::OnceCell;
use std::fmt::Write as _;
use std::ops::Range;

use mlua::{AppDataRef, Function, Lua, Table, Value as LuaValue};

use super::convert::Conv;
use super::meter::Meter;
use super::plan::{
    EnumId, FieldPlan, MsgId, Plans, Scalar, Shape, Type, END_GROUP, LEN, START_GROUP,
};
use crate::wire::{self, Invalid};

type Result<T> = std::result::Result<T, DecodeError>;

/// Why a request could not be turned into tables.
#[derive(Debug)]
pub enum DecodeError {
    /// Not a well-formed message of the type.
    Invalid(Invalid),
    /// Creating a Lua value failed (out of memory).
    Lua(mlua::Error),
}

impl From<Invalid> for DecodeError {
    fn from(e: Invalid) -> Self {
        DecodeError::Invalid(e)
    }
}

impl From<mlua::Error> for DecodeError {
    fn from(e: mlua::Error) -> Self {
        DecodeError::Lua(e)
    }
}

fn malformed(message: String) -> DecodeError {
    DecodeError::Invalid(Invalid::Malformed(message))
}

/// The most slots one builder takes (a Lua function has at most 200 locals).
const MAX_SLOTS: usize = 150;
/// Nested messages deeper than this become tables built in Rust.
const MAX_INLINE_DEPTH: usize = 6;

/// Where each field of an inlined message goes.
#[derive(Debug)]
enum Slot {
    /// A scalar, string, bytes or enum (as its number).
    Value(usize),
    /// A list, map or message built as a table in Rust.
    Table(usize),
    /// A singular message whose own fields have slots: `presence` is true when it was sent.
    Inline { presence: usize, inner: Inline },
}

impl Slot {
    /// The slots it takes, nested ones included.
    fn range(&self) -> Range<usize> {
        match self {
            Slot::Value(s) | Slot::Table(s) => *s..*s + 1,
            Slot::Inline { presence, inner } => *presence..inner.end,
        }
    }
}

/// A message whose fields have slots.
#[derive(Debug)]
struct Inline {
    msg: MsgId,
    /// Per field of the message plan.
    fields: Box<[Slot]>,
    /// The end of its fields' slots (nested ones included), for clearing it as a oneof member.
    end: usize,
}

impl Inline {
    /// No field is built as a table: every slot is a scalar (strings and bytes included) or
    /// a presence flag.
    fn flat(&self) -> bool {
        self.fields.iter().all(|slot| match slot {
            Slot::Value(_) => true,
            Slot::Table(_) => false,
            Slot::Inline { inner, .. } => inner.flat(),
        })
    }
}

/// A request type's slots and the source of its builder.
#[derive(Debug)]
pub struct Layout {
    pub msg: MsgId,
    /// `None`: the whole message is one table built in Rust (too many fields for slots).
    root: Option<Inline>,
    pub slots: usize,
    /// Every slot holds a number, a boolean, a presence flag or a string (no table): such a
    /// request can be read into [`Cell`]s, its strings as places in the request bytes, and
    /// pushed onto a Lua stack without a Lua value in between (see [`read_cells`]).
    pub flat: bool,
    /// A chunk that, given the enum name tables of [`Layout::enums`], returns the builder
    /// `function(ok, slots...)`: `ok` false or nil is returned as is (pending, end of stream).
    pub source: String,
    pub enums: Vec<EnumId>,
}

impl Layout {
    pub fn new(plans: &Plans, msg: MsgId) -> Layout {
        Self::with_limits(plans, msg, MAX_SLOTS, MAX_INLINE_DEPTH)
    }

    /// A layout of at most `max_slots` slots, with messages nested deeper than `max_depth`
    /// (or recursive) built as tables in Rust; `max_slots` below the message's field count
    /// builds the whole message in Rust.
    pub fn with_limits(plans: &Plans, msg: MsgId, max_slots: usize, max_depth: usize) -> Layout {
        let mut gen = Gen {
            plans,
            slots: 0,
            enums: Vec::new(),
            path: vec![msg],
            max_depth,
        };
        let fields = plans.message(msg).fields.len();
        let root = (fields <= max_slots).then(|| gen.inline(msg, 0, max_slots));
        let (body, params) = match &root {
            Some(inline) => (gen.expr(inline), gen.slots),
            None => {
                gen.slots = 1;
                ("a1".to_owned(), 1)
            }
        };
        debug_assert!(params <= max_slots.max(1), "{params} slots for {max_slots}");
        let mut source = String::new();
        if !gen.enums.is_empty() {
            let names: Vec<String> = (1..=gen.enums.len()).map(|i| format!("E{i}")).collect();
            let _ = writeln!(source, "local {} = ...", names.join(", "));
        }
        // `ok`, then one parameter per slot (none for a message without fields).
        let params: String = (1..=params).map(|i| format!(", a{i}")).collect();
        let _ = write!(
            source,
            "return function(ok{params})\n  if not ok then return ok end\n  return {body}\nend\n"
        );
        let flat = root.as_ref().is_some_and(Inline::flat);
        Layout {
            msg,
            flat,
            root,
            slots: gen.slots,
            source,
            enums: gen.enums,
        }
    }

    /// This layout's builder in `lua`: its generated chunk, run with no globals and given the
    /// enum name tables it reads.
    pub fn compile(&self, lua: &Lua, plans: &Plans) -> mlua::Result<Function> {
        let mut tables = Vec::with_capacity(self.enums.len());
        for &e in &self.enums {
            let t = lua.create_table()?;
            let plan = plans.enumeration(e);
            for (n, _) in plan.values.iter() {
                if let Some(name) = plan.name(*n) {
                    t.raw_set(*n, name)?;
                }
            }
            tables.push(LuaValue::Table(t));
        }
        let name = format!("={}", plans.message(self.msg).full_name());
        lua.load(&self.source)
            .set_name(name)
            .set_mode(mlua::ChunkMode::Text)
            .set_environment(lua.create_table()?)
            .call(mlua::MultiValue::from_vec(tables))
    }
}

/// Builds a layout: assigns slots and writes the builder's table constructor.
struct Gen<'p> {
    plans: &'p Plans,
    slots: usize,
    enums: Vec<EnumId>,
    /// Message types being inlined, outermost first: a type met again is recursive.
    path: Vec<MsgId>,
    max_depth: usize,
}

impl Gen<'_> {
    fn take(&mut self) -> usize {
        self.slots += 1;
        self.slots - 1
    }

    /// Slots for `msg`'s fields, ending at most at slot `limit`, which leaves room for one slot
    /// per field at least (`self.slots + fields <= limit`). A nested message is inlined only
    /// when its own fields fit with one slot kept for each field after it, and its nested
    /// messages get the same check against what it was left: an inner message's inlined
    /// messages never push the fields after it past the limit (a request type with a few big
    /// messages inside, such as GKE's `Cluster`, once took more than Lua's 200 locals).
    fn inline(&mut self, msg: MsgId, depth: usize, limit: usize) -> Inline {
        let plan = self.plans.message(msg);
        let count = plan.fields.len();
        let fields = plan
            .fields
            .iter()
            .enumerate()
            .map(|(i, f)| match (f.shape, f.ty) {
                (Shape::Single, Type::Message(m)) => {
                    // What this field may use: everything but one slot per later field.
                    let room = limit - (count - i - 1);
                    let inner_fields = self.plans.message(m).fields.len();
                    let fits = self.slots + 1 + inner_fields <= room;
                    if fits && depth < self.max_depth && !self.path.contains(&m) {
                        let presence = self.take();
                        self.path.push(m);
                        let inner = self.inline(m, depth + 1, room);
                        self.path.pop();
                        Slot::Inline { presence, inner }
                    } else {
                        Slot::Table(self.take())
                    }
                }
                (Shape::Single, Type::Scalar(_)) => Slot::Value(self.take()),
                _ => Slot::Table(self.take()),
            })
            .collect();
        debug_assert!(self.slots <= limit, "{} slots past {limit}", self.slots);
        Inline {
            msg,
            fields,
            end: self.slots,
        }
    }

    fn enum_table(&mut self, e: EnumId) -> usize {
        match self.enums.iter().position(|x| *x == e) {
            Some(i) => i + 1,
            None => {
                self.enums.push(e);
                self.enums.len()
            }
        }
    }

    /// The table constructor for `inline`.
    fn expr(&mut self, inline: &Inline) -> String {
        let plan = self.plans.message(inline.msg);
        let mut out = String::from("{");
        for (f, slot) in plan.fields.iter().zip(inline.fields.iter()) {
            let value = match slot {
                Slot::Value(s) => {
                    let a = format!("a{}", s + 1);
                    let read = match f.ty {
                        Type::Scalar(Scalar::Enum(e)) => {
                            let t = self.enum_table(e);
                            format!("{a} and (E{t}[{a}] or {a})")
                        }
                        _ => a.clone(),
                    };
                    if f.presence {
                        read
                    } else {
                        format!("{read} or {}", default_literal(self.plans, f))
                    }
                }
                Slot::Table(s) if f.is_single() => format!("a{}", s + 1),
                Slot::Table(s) => format!("a{} or {{}}", s + 1),
                Slot::Inline { presence, inner } => {
                    format!("a{} and {}", presence + 1, self.expr(inner))
                }
            };
            let _ = write!(out, "[\"{}\"] = {value}, ", f.name);
        }
        out.push('}');
        out
    }
}

/// The Lua literal of a field's default (for fields without presence: zeros, empty strings
/// and the first enum value).
fn default_literal(plans: &Plans, f: &FieldPlan) -> String {
    match f.ty {
        Type::Scalar(Scalar::Bool) => "false".into(),
        Type::Scalar(Scalar::String | Scalar::Bytes) => match f.desc.default_value() {
            prost_reflect::Value::String(s) => lua_string(s.as_bytes()),
            prost_reflect::Value::Bytes(b) => lua_string(&b),
            _ => "\"\"".into(),
        },
        Type::Scalar(Scalar::Double | Scalar::Float) => match f.desc.default_value() {
            prost_reflect::Value::F64(x) => lua_float(x),
            prost_reflect::Value::F32(x) => lua_float(f64::from(x)),
            _ => "0.0".into(),
        },
        Type::Scalar(Scalar::Enum(e)) => {
            let n = f.desc.default_value().as_enum_number().unwrap_or(0);
            match plans.enumeration(e).name(n) {
                Some(name) => lua_string(name.as_bytes()),
                None => n.to_string(),
            }
        }
        Type::Scalar(_) => match f.desc.default_value() {
            prost_reflect::Value::I32(n) => n.to_string(),
            prost_reflect::Value::I64(n) => n.to_string(),
            prost_reflect::Value::U32(n) => n.to_string(),
            prost_reflect::Value::U64(n) => (n as i64).to_string(),
            _ => "0".into(),
        },
        Type::Message(_) => "nil".into(),
    }
}

fn lua_float(x: f64) -> String {
    if x.is_nan() {
        "(0.0/0.0)".into()
    } else if x.is_infinite() {
        if x > 0.0 { "(1.0/0.0)" } else { "(-1.0/0.0)" }.into()
    } else {
        // `{:?}` always writes a decimal point or an exponent: a float literal in Lua too.
        format!("{x:?}")
    }
}

fn lua_string(bytes: &[u8]) -> String {
    let mut s = String::from("\"");
    for b in bytes {
        let _ = write!(s, "\\{b:03}");
    }
    s.push('"');
    s
}

/// An open list, map or message table being filled, by slot (inline) or field index (table).
struct Open {
    key: usize,
    table: Table,
    /// Items so far, for a list.
    len: usize,
}

/// Reads request bytes into slots and tables.
pub struct Decoder<'a> {
    lua: &'a Lua,
    plans: &'a Plans,
    /// The state's field and enum name strings, looked up on first use: a request whose fields
    /// all have slots of numbers never needs them, and the look-up was a tenth of what taking
    /// such a message from a stream cost.
    conv: OnceCell<Option<AppDataRef<'a, Conv>>>,
    /// The tables made and entries set, charged to the running call as they are (see
    /// [`super::meter`]): a request of many small items makes far more than its bytes say.
    meter: Meter,
}

impl<'a> Decoder<'a> {
    /// A decoder for requests of `plans` in `lua`, whose app data holds their [`Conv`].
    pub fn new(lua: &'a Lua, plans: &'a Plans) -> Self {
        Self {
            lua,
            plans,
            conv: OnceCell::new(),
            meter: Meter::new(),
        }
    }

    /// Counts `units` tables made or entries set; stops with the call's abort when it is over
    /// its budget or its time.
    fn spend(&self, units: u64) -> Result<()> {
        Ok(self.meter.spend(units)?)
    }

    fn conv(&self) -> Result<&Conv> {
        self.conv
            .get_or_init(|| self.lua.app_data_ref::<Conv>())
            .as_deref()
            .ok_or_else(|| DecodeError::Lua(mlua::Error::runtime("scripts are not ready")))
    }

    /// `bytes` (a message of the layout's type) as the builder's arguments after `ok`,
    /// appended to `out`.
    pub fn slots(&self, bytes: &[u8], layout: &Layout, out: &mut Vec<LuaValue>) -> Result<()> {
        let start = out.len();
        out.resize(start + layout.slots, LuaValue::Nil);
        let slots = &mut out[start..];
        let mut buf = bytes;
        match &layout.root {
            Some(inline) => {
                let mut into = LuaSlots {
                    dec: self,
                    slots,
                    open: Vec::new(),
                };
                fill(
                    self.plans,
                    &mut buf,
                    inline,
                    &mut into,
                    wire::RECURSION_LIMIT,
                    None,
                )?;
            }
            None => {
                let t = self.table(&mut buf, layout.msg, None, wire::RECURSION_LIMIT, None)?;
                slots[0] = LuaValue::Table(t);
            }
        }
        Ok(self.meter.settle()?)
    }

    /// A list, map or message field whose value is a table (kept in `open` under `key`).
    #[allow(clippy::too_many_arguments)]
    fn table_field(
        &self,
        buf: &mut &[u8],
        f: &FieldPlan,
        number: u32,
        wire_type: u8,
        ctx: u32,
        key: usize,
        existing: Option<usize>,
        open: &mut Vec<Open>,
        place: impl FnOnce(&Table),
    ) -> Result<()> {
        let at = match existing {
            Some(i) => i,
            None => {
                let table = match f.shape {
                    // A singular message: decoded fresh, then kept open for merges.
                    Shape::Single => {
                        let Type::Message(m) = f.ty else {
                            unreachable!("table slots hold messages, lists and maps")
                        };
                        let (mut body, group, ctx) = message_body(buf, f, number, wire_type, ctx)?;
                        let t = match group {
                            Some(_) => self.table(buf, m, None, ctx, group)?,
                            None => self.table(&mut body, m, None, ctx, None)?,
                        };
                        place(&t);
                        open.push(Open {
                            key,
                            table: t,
                            len: 0,
                        });
                        return Ok(());
                    }
                    _ => {
                        self.spend(1)?;
                        self.lua.create_table()?
                    }
                };
                place(&table);
                open.push(Open { key, table, len: 0 });
                open.len() - 1
            }
        };
        let o = &mut open[at];
        match f.shape {
            Shape::Single => {
                let Type::Message(m) = f.ty else {
                    unreachable!("table slots hold messages, lists and maps")
                };
                let (mut body, group, ctx) = message_body(buf, f, number, wire_type, ctx)?;
                match group {
                    Some(_) => self.table(buf, m, Some(&o.table), ctx, group)?,
                    None => self.table(&mut body, m, Some(&o.table), ctx, None)?,
                };
            }
            Shape::List { .. } => self.list_items(buf, f, wire_type, ctx, o)?,
            Shape::Map { key, value, .. } => {
                let entry = wire::len_prefixed(buf)?;
                self.map_entry(entry, f, key, value, ctx, &o.table)?;
            }
        }
        Ok(())
    }

    /// One occurrence of a list field: a packed run or one element.
    fn list_items(
        &self,
        buf: &mut &[u8],
        f: &FieldPlan,
        wire_type: u8,
        ctx: u32,
        o: &mut Open,
    ) -> Result<()> {
        match f.ty {
            Type::Scalar(s) if wire_type == LEN && s.packable() => {
                let mut packed = wire::len_prefixed(buf)?;
                while !packed.is_empty() {
                    self.spend(1)?;
                    let v = self.single_scalar(&mut packed, f, s, s.wire_type(), true)?;
                    o.len += 1;
                    o.table.raw_set(o.len, v)?;
                }
            }
            Type::Scalar(s) => {
                self.spend(1)?;
                let v = self.single_scalar(buf, f, s, wire_type, true)?;
                o.len += 1;
                o.table.raw_set(o.len, v)?;
            }
            Type::Message(m) => {
                self.spend(1)?;
                let (mut body, group, ctx) = message_body(buf, f, f.number, wire_type, ctx)?;
                let t = match group {
                    Some(_) => self.table(buf, m, None, ctx, group)?,
                    None => self.table(&mut body, m, None, ctx, None)?,
                };
                o.len += 1;
                o.table.raw_set(o.len, t)?;
            }
        }
        Ok(())
    }

    /// A map entry, read as the decoder does: key (1) and value (2) in any order, the last key
    /// wins, occurrences of a message value merge, other fields are skipped; the entry does not
    /// count as a level of nesting. A missing key or value is its default.
    fn map_entry(
        &self,
        mut buf: &[u8],
        f: &FieldPlan,
        key_type: Scalar,
        value_type: Type,
        ctx: u32,
        map: &Table,
    ) -> Result<()> {
        self.spend(1)?;
        let mut key = LuaValue::Nil;
        let mut value = LuaValue::Nil;
        while !buf.is_empty() {
            let (number, wire_type) = wire::key(&mut buf)?;
            match number {
                1 => key = self.single_scalar(&mut buf, f, key_type, wire_type, true)?,
                2 => match value_type {
                    Type::Scalar(s) => {
                        value = self.single_scalar(&mut buf, f, s, wire_type, true)?;
                    }
                    Type::Message(m) => {
                        if wire_type != LEN {
                            return Err(wire::wrong_wire_type(f.desc.full_name(), wire_type).into());
                        }
                        if ctx == 0 {
                            return Err(wire::too_deep().into());
                        }
                        let mut body = wire::len_prefixed(&mut buf)?;
                        let into = match &value {
                            LuaValue::Table(t) => Some(t),
                            _ => None,
                        };
                        let t = self.table(&mut body, m, into, ctx - 1, None)?;
                        value = LuaValue::Table(t);
                    }
                },
                _ => wire::skip_in_map_entry(&mut buf, number, wire_type, ctx, f.desc.full_name())?,
            }
        }
        if key.is_nil() {
            key = self.scalar_default(key_type)?;
        }
        if value.is_nil() {
            value = match value_type {
                Type::Scalar(s) => self.scalar_default(s)?,
                Type::Message(m) => {
                    let mut empty: &[u8] = &[];
                    LuaValue::Table(self.table(&mut empty, m, None, ctx, None)?)
                }
            };
        }
        map.raw_set(key, value)?;
        Ok(())
    }

    /// A message as a table built here: a fresh one, or `into` (a merge). A fresh table gets
    /// the defaults of the fields that were not sent.
    fn table(
        &self,
        buf: &mut &[u8],
        msg: MsgId,
        into: Option<&Table>,
        ctx: u32,
        group: Option<u32>,
    ) -> Result<Table> {
        let plan = self.plans.message(msg);
        let keys = self.conv()?.keys(self.lua, self.plans, msg)?;
        let table = match into {
            Some(t) => t.clone(),
            None => {
                self.spend(1)?;
                self.lua.create_table_with_capacity(0, plan.fields.len())?
            }
        };
        let mut seen = Seen::new(plan.fields.len());
        let mut open: Vec<Open> = Vec::new();
        while let Some((number, wire_type)) = next_key(buf, group)? {
            let Some(index) = plan.by_number(number) else {
                other(self.plans, buf, msg, number, wire_type, ctx)?;
                continue;
            };
            let f = &plan.fields[index];
            if let Some(o) = f.oneof {
                for &rival in plan.oneofs[usize::from(o)].iter() {
                    let rival = usize::from(rival);
                    if rival != index {
                        table.raw_set(&keys[rival], LuaValue::Nil)?;
                        open.retain(|o| o.key != rival);
                    }
                }
            }
            seen.set(index);
            self.spend(1)?;
            match (f.shape, f.ty) {
                (Shape::Single, Type::Scalar(s)) => {
                    let v = self.single_scalar(buf, f, s, wire_type, true)?;
                    table.raw_set(&keys[index], v)?;
                }
                _ => {
                    let mut existing = open.iter().position(|o| o.key == index);
                    if existing.is_none() && into.is_some() {
                        // Merging: what an earlier occurrence of the message left.
                        if let LuaValue::Table(t) = table.raw_get::<LuaValue>(&keys[index])? {
                            let len = if f.is_single() { 0 } else { t.raw_len() };
                            open.push(Open {
                                key: index,
                                table: t,
                                len,
                            });
                            existing = Some(open.len() - 1);
                        }
                    }
                    self.table_field(
                        buf,
                        f,
                        number,
                        wire_type,
                        ctx,
                        index,
                        existing,
                        &mut open,
                        |t| {
                            let _ = table.raw_set(&keys[index], t);
                        },
                    )?;
                }
            }
        }
        if into.is_none() {
            for (i, f) in plan.fields.iter().enumerate() {
                if seen.get(i) || (f.is_single() && f.presence) {
                    continue;
                }
                let v = match (f.shape, f.ty) {
                    (Shape::Single, Type::Scalar(s)) => {
                        self.spend(1)?;
                        self.field_default(f, s)?
                    }
                    _ => {
                        self.spend(2)?;
                        LuaValue::Table(self.lua.create_table()?)
                    }
                };
                table.raw_set(&keys[i], v)?;
            }
        }
        Ok(table)
    }

    /// One value of a scalar field sent with `wire_type`; enums as names when `names`.
    fn single_scalar(
        &self,
        buf: &mut &[u8],
        f: &FieldPlan,
        s: Scalar,
        wire_type: u8,
        names: bool,
    ) -> Result<LuaValue> {
        if wire_type != s.wire_type() {
            return Err(wire::wrong_wire_type(f.desc.full_name(), wire_type).into());
        }
        Ok(match s {
            Scalar::String => LuaValue::String(self.lua.create_string(read_str(buf, f)?)?),
            Scalar::Bytes => LuaValue::String(self.lua.create_string(wire::len_prefixed(buf)?)?),
            Scalar::Enum(e) if names => self.enum_value(e, wire::varint(buf)? as i32)?,
            _ => read_number(buf, s)?.number_value(),
        })
    }

    fn enum_value(&self, e: EnumId, n: i32) -> Result<LuaValue> {
        let plan = self.plans.enumeration(e);
        Ok(match plan.index(n) {
            Some(i) => {
                LuaValue::String(self.conv()?.enum_names(self.lua, self.plans, e)?[i].clone())
            }
            None => LuaValue::Integer(i64::from(n)),
        })
    }

    fn scalar_default(&self, s: Scalar) -> Result<LuaValue> {
        Ok(match s {
            Scalar::Bool => LuaValue::Boolean(false),
            Scalar::String | Scalar::Bytes => LuaValue::String(self.lua.create_string("")?),
            Scalar::Double | Scalar::Float => LuaValue::Number(0.0),
            Scalar::Enum(e) => {
                let default = self.plans.enumeration(e).default;
                self.enum_value(e, default)?
            }
            _ => LuaValue::Integer(0),
        })
    }

    fn field_default(&self, f: &FieldPlan, s: Scalar) -> Result<LuaValue> {
        Ok(match (s, f.desc.default_value()) {
            (Scalar::Enum(e), v) => self.enum_value(e, v.as_enum_number().unwrap_or(0))?,
            (_, prost_reflect::Value::Bool(b)) => LuaValue::Boolean(b),
            (_, prost_reflect::Value::I32(n)) => LuaValue::Integer(i64::from(n)),
            (_, prost_reflect::Value::I64(n)) => LuaValue::Integer(n),
            (_, prost_reflect::Value::U32(n)) => LuaValue::Integer(i64::from(n)),
            (_, prost_reflect::Value::U64(n)) => LuaValue::Integer(n as i64),
            (_, prost_reflect::Value::F32(x)) => LuaValue::Number(f64::from(x)),
            (_, prost_reflect::Value::F64(x)) => LuaValue::Number(x),
            (_, prost_reflect::Value::String(s)) => LuaValue::String(self.lua.create_string(s)?),
            (_, prost_reflect::Value::Bytes(b)) => LuaValue::String(self.lua.create_string(b)?),
            _ => self.scalar_default(s)?,
        })
    }
}

/// The bytes of a `string` field's value, refused when they are not UTF-8; the wire type was
/// checked.
fn read_str<'b>(buf: &mut &'b [u8], f: &FieldPlan) -> Result<&'b [u8]> {
    let b = wire::len_prefixed(buf)?;
    if std::str::from_utf8(b).is_err() {
        return Err(malformed(format!(
            "field {} is not valid UTF-8",
            f.desc.full_name()
        )));
    }
    Ok(b)
}

/// A varint as the Lua integer of its kind (uint64 above 2^63 wraps, as everywhere).
fn varint_value(s: Scalar, v: u64) -> i64 {
    match s {
        Scalar::Int32 => i64::from(v as i32),
        Scalar::Uint32 => i64::from(v as u32),
        Scalar::Sint32 => {
            let v = v as u32;
            i64::from(((v >> 1) as i32) ^ -((v & 1) as i32))
        }
        Scalar::Sint64 => ((v >> 1) as i64) ^ -((v & 1) as i64),
        _ => v as i64,
    }
}

/// Reads the next field key; `Ok(None)` at the end of the message (or of its group).
fn next_key(buf: &mut &[u8], group: Option<u32>) -> Result<Option<(u32, u8)>> {
    if group.is_none() && buf.is_empty() {
        return Ok(None);
    }
    let (number, wire_type) = wire::key(buf)?;
    if wire_type == END_GROUP {
        if let Some(g) = group {
            if g != number {
                return Err(malformed(format!(
                    "group {g} ended by the end of group {number}"
                )));
            }
            return Ok(None);
        }
    }
    Ok(Some((number, wire_type)))
}

/// A field the message does not declare: an extension is checked, anything else skipped.
fn other(
    plans: &Plans,
    buf: &mut &[u8],
    msg: MsgId,
    number: u32,
    wire_type: u8,
    ctx: u32,
) -> Result<()> {
    let plan = plans.message(msg);
    match plan.extension(number) {
        Some(ext) => wire::check_extension(buf, ext, number, wire_type, ctx)?,
        None => wire::skip_unknown(buf, &plan.desc, number, wire_type, ctx)?,
    }
    Ok(())
}

/// Where the fields of an inlined message go as they are read: Lua values, or cells.
trait Slots {
    /// Scalar field `f`, sent with `wire_type`, into slot `s`.
    fn scalar(
        &mut self,
        s: usize,
        f: &FieldPlan,
        scalar: Scalar,
        buf: &mut &[u8],
        wire_type: u8,
    ) -> Result<()>;
    /// The singular message whose presence slot is `s` was sent.
    fn present(&mut self, s: usize);
    /// A oneof member that another member replaced: its slots are unset again.
    fn clear(&mut self, slots: Range<usize>);
    /// One occurrence of a list, map or message field built as a table, kept in slot `s`.
    fn table(
        &mut self,
        s: usize,
        f: &FieldPlan,
        number: u32,
        wire_type: u8,
        buf: &mut &[u8],
        ctx: u32,
    ) -> Result<()>;
}

/// Reads the fields of `inline` from `buf` into `slots`, up to the end of `buf` or of group
/// `group`.
fn fill<S: Slots>(
    plans: &Plans,
    buf: &mut &[u8],
    inline: &Inline,
    slots: &mut S,
    ctx: u32,
    group: Option<u32>,
) -> Result<()> {
    let plan = plans.message(inline.msg);
    while let Some((number, wire_type)) = next_key(buf, group)? {
        let Some(index) = plan.by_number(number) else {
            other(plans, buf, inline.msg, number, wire_type, ctx)?;
            continue;
        };
        let f = &plan.fields[index];
        if let Some(o) = f.oneof {
            for &rival in plan.oneofs[usize::from(o)].iter() {
                if usize::from(rival) != index {
                    slots.clear(inline.fields[usize::from(rival)].range());
                }
            }
        }
        match &inline.fields[index] {
            Slot::Value(s) => {
                let Type::Scalar(scalar) = f.ty else {
                    unreachable!("value slots hold scalars")
                };
                slots.scalar(*s, f, scalar, buf, wire_type)?;
            }
            Slot::Inline { presence, inner } => {
                slots.present(*presence);
                let (mut body, group, ctx) = message_body(buf, f, number, wire_type, ctx)?;
                match group {
                    Some(_) => fill(plans, buf, inner, slots, ctx, group)?,
                    None => fill(plans, &mut body, inner, slots, ctx, None)?,
                }
            }
            Slot::Table(s) => slots.table(*s, f, number, wire_type, buf, ctx)?,
        }
    }
    Ok(())
}

/// Slots as Lua values, with the tables of list, map and message fields kept open for later
/// occurrences of the same field.
struct LuaSlots<'d, 'a, 's> {
    dec: &'d Decoder<'a>,
    slots: &'s mut [LuaValue],
    open: Vec<Open>,
}

impl Slots for LuaSlots<'_, '_, '_> {
    fn scalar(
        &mut self,
        s: usize,
        f: &FieldPlan,
        scalar: Scalar,
        buf: &mut &[u8],
        wire_type: u8,
    ) -> Result<()> {
        self.slots[s] = self.dec.single_scalar(buf, f, scalar, wire_type, false)?;
        Ok(())
    }

    fn present(&mut self, s: usize) {
        self.slots[s] = LuaValue::Boolean(true);
    }

    fn clear(&mut self, slots: Range<usize>) {
        self.slots[slots.clone()].fill(LuaValue::Nil);
        self.open.retain(|o| !slots.contains(&o.key));
    }

    fn table(
        &mut self,
        s: usize,
        f: &FieldPlan,
        number: u32,
        wire_type: u8,
        buf: &mut &[u8],
        ctx: u32,
    ) -> Result<()> {
        let existing = self.open.iter().position(|o| o.key == s);
        let slots = &mut *self.slots;
        self.dec.table_field(
            buf,
            f,
            number,
            wire_type,
            ctx,
            s,
            existing,
            &mut self.open,
            |t| slots[s] = LuaValue::Table(t.clone()),
        )
    }
}

/// A slot's value in a flat layout (see [`Layout::flat`]): a number, or a string as the
/// place of its bytes in the request.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Cell {
    Nil,
    Bool(bool),
    Int(i64),
    Float(f64),
    /// `bytes[start..end]` of the request the cells were read from.
    Str {
        start: usize,
        end: usize,
    },
}

impl Cell {
    /// A cell [`read_number`] gave, as its Lua value.
    fn number_value(self) -> LuaValue {
        match self {
            Cell::Bool(b) => LuaValue::Boolean(b),
            Cell::Int(i) => LuaValue::Integer(i),
            Cell::Float(x) => LuaValue::Number(x),
            Cell::Nil | Cell::Str { .. } => LuaValue::Nil,
        }
    }
}

/// A request's cells: inline for the requests most methods take, so reading one allocates
/// nothing (a layout of more slots spills to the heap).
pub type Cells = smallvec::SmallVec<[Cell; 8]>;

/// Cells of a request whose bytes start at `base`.
struct CellSlots<'s> {
    base: usize,
    cells: &'s mut [Cell],
}

impl Slots for CellSlots<'_> {
    fn scalar(
        &mut self,
        s: usize,
        f: &FieldPlan,
        scalar: Scalar,
        buf: &mut &[u8],
        wire_type: u8,
    ) -> Result<()> {
        if wire_type != scalar.wire_type() {
            return Err(wire::wrong_wire_type(f.desc.full_name(), wire_type).into());
        }
        self.cells[s] = match scalar {
            Scalar::String | Scalar::Bytes => {
                let b = match scalar {
                    Scalar::String => read_str(buf, f)?,
                    _ => wire::len_prefixed(buf)?,
                };
                let start = b.as_ptr() as usize - self.base;
                Cell::Str {
                    start,
                    end: start + b.len(),
                }
            }
            _ => read_number(buf, scalar)?,
        };
        Ok(())
    }

    fn present(&mut self, s: usize) {
        self.cells[s] = Cell::Bool(true);
    }

    fn clear(&mut self, slots: Range<usize>) {
        self.cells[slots].fill(Cell::Nil);
    }

    fn table(
        &mut self,
        _: usize,
        _: &FieldPlan,
        _: u32,
        _: u8,
        _: &mut &[u8],
        _: u32,
    ) -> Result<()> {
        unreachable!("a flat layout has no table slots")
    }
}

/// A request of a flat layout (see [`Layout::flat`]) read into `cells`, which
/// it replaces: the builder's arguments [`Decoder::slots`] would give, the same verdict and
/// the same errors, with no Lua value made, so they can go straight onto a Lua stack.
pub fn read_cells(plans: &Plans, bytes: &[u8], layout: &Layout, cells: &mut Cells) -> Result<()> {
    let (Some(inline), true) = (&layout.root, layout.flat) else {
        unreachable!("read_cells is only for flat layouts")
    };
    cells.clear();
    cells.resize(layout.slots, Cell::Nil);
    let mut buf = bytes;
    fill(
        plans,
        &mut buf,
        inline,
        &mut CellSlots {
            base: bytes.as_ptr() as usize,
            cells,
        },
        wire::RECURSION_LIMIT,
        None,
    )
}

/// One scalar that is not a string, read as its Lua number (enums by number); the wire type
/// was checked.
fn read_number(buf: &mut &[u8], s: Scalar) -> Result<Cell> {
    Ok(match s {
        Scalar::Bool => Cell::Bool(wire::varint(buf)? != 0),
        Scalar::Double => Cell::Float(f64::from_bits(wire::fixed64(buf)?)),
        Scalar::Fixed64 | Scalar::Sfixed64 => Cell::Int(wire::fixed64(buf)? as i64),
        Scalar::Float => Cell::Float(f64::from(f32::from_bits(wire::fixed32(buf)?))),
        Scalar::Fixed32 => Cell::Int(i64::from(wire::fixed32(buf)?)),
        Scalar::Sfixed32 => Cell::Int(i64::from(wire::fixed32(buf)? as i32)),
        Scalar::Enum(_) => Cell::Int(i64::from(wire::varint(buf)? as i32)),
        Scalar::String | Scalar::Bytes => unreachable!("strings are read as strings"),
        _ => Cell::Int(varint_value(s, wire::varint(buf)?)),
    })
}

/// The body of one occurrence of message field `f`: the bytes of a length-prefixed message,
/// or (for a group) nothing, `Some(number)` and the group read from `buf` by the caller. Also
/// the nesting left below it.
fn message_body<'b>(
    buf: &mut &'b [u8],
    f: &FieldPlan,
    number: u32,
    wire_type: u8,
    ctx: u32,
) -> Result<(&'b [u8], Option<u32>, u32)> {
    if f.group {
        if wire_type != START_GROUP {
            return Err(wire::wrong_wire_type(f.desc.full_name(), wire_type).into());
        }
        if ctx == 0 {
            return Err(wire::too_deep().into());
        }
        return Ok((&[], Some(number), ctx - 1));
    }
    if wire_type != LEN {
        return Err(wire::wrong_wire_type(f.desc.full_name(), wire_type).into());
    }
    if ctx == 0 {
        return Err(wire::too_deep().into());
    }
    Ok((wire::len_prefixed(buf)?, None, ctx - 1))
}

/// Which fields of a message were sent.
struct Seen {
    small: u128,
    large: Vec<bool>,
}

impl Seen {
    fn new(n: usize) -> Self {
        Self {
            small: 0,
            large: if n > 128 { vec![false; n] } else { Vec::new() },
        }
    }

    fn set(&mut self, i: usize) {
        if self.large.is_empty() {
            self.small |= 1 << i;
        } else {
            self.large[i] = true;
        }
    }

    fn get(&self, i: usize) -> bool {
        if self.large.is_empty() {
            self.small & (1 << i) != 0
        } else {
            self.large[i]
        }
    }
}
