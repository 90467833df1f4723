//! `DynamicMessage` ⇄ Lua values, directly (no JSON text in between).
//!
//! Messages are tables keyed by proto field name. Scalars that are unset read as their defaults;
//! unset message fields and unset `optional`/oneof members are `nil`, so presence stays visible.
//! 64-bit integers are Lua integers (uint64 above 2^63 wraps to a negative integer and back
//! unchanged), bytes are Lua strings, enums are names (numbers are accepted back), repeated fields
//! are sequences and maps are tables. Well-known types are messages like any other.
//!
//! Going back, every key must be a field and every value the field's type; the error names the
//! field path so a script author can find the mistake.

use std::collections::HashMap;

use bytes::Bytes;
use mlua::{Lua, Table, Value as LuaValue};
use prost::Message;
use prost_reflect::{
    DynamicMessage, FieldDescriptor, Kind, MapKey, MessageDescriptor, ReflectMessage, Value,
};

use crate::codec::Outgoing;
use crate::fieldpath::{field_names, find_field, kind_name};
use crate::suggest::did_you_mean;

/// A message as a Lua table.
pub fn message_to_lua(lua: &Lua, msg: &DynamicMessage) -> mlua::Result<Table> {
    let desc = msg.descriptor();
    let table = lua.create_table_with_capacity(0, desc.fields().len())?;
    for field in desc.fields() {
        let kind = field.kind();
        let singular = !field.is_list() && !field.is_map();
        if singular
            && !msg.has_field(&field)
            && (matches!(kind, Kind::Message(_)) || field.supports_presence())
        {
            continue;
        }
        let value = msg.get_field(&field);
        table.raw_set(field.name(), value_to_lua(lua, &value, &kind)?)?;
    }
    Ok(table)
}

fn value_to_lua(lua: &Lua, value: &Value, kind: &Kind) -> mlua::Result<LuaValue> {
    Ok(match value {
        Value::Bool(b) => LuaValue::Boolean(*b),
        Value::I32(n) => LuaValue::Integer(i64::from(*n)),
        Value::I64(n) => LuaValue::Integer(*n),
        Value::U32(n) => LuaValue::Integer(i64::from(*n)),
        Value::U64(n) => LuaValue::Integer(*n as i64),
        Value::F32(n) => LuaValue::Number(f64::from(*n)),
        Value::F64(n) => LuaValue::Number(*n),
        Value::String(s) => LuaValue::String(lua.create_string(s)?),
        Value::Bytes(b) => LuaValue::String(lua.create_string(b)?),
        Value::EnumNumber(n) => match kind.as_enum().and_then(|e| e.get_value(*n)) {
            Some(v) => LuaValue::String(lua.create_string(v.name())?),
            None => LuaValue::Integer(i64::from(*n)),
        },
        Value::Message(m) => LuaValue::Table(message_to_lua(lua, m)?),
        Value::List(items) => {
            let t = lua.create_table_with_capacity(items.len(), 0)?;
            for (i, item) in items.iter().enumerate() {
                t.raw_set(i + 1, value_to_lua(lua, item, kind)?)?;
            }
            LuaValue::Table(t)
        }
        Value::Map(entries) => {
            let value_kind = match kind {
                Kind::Message(entry) => entry.map_entry_value_field().kind(),
                other => other.clone(),
            };
            let t = lua.create_table_with_capacity(0, entries.len())?;
            for (k, v) in entries {
                let key = match k {
                    MapKey::Bool(b) => LuaValue::Boolean(*b),
                    MapKey::I32(n) => LuaValue::Integer(i64::from(*n)),
                    MapKey::I64(n) => LuaValue::Integer(*n),
                    MapKey::U32(n) => LuaValue::Integer(i64::from(*n)),
                    MapKey::U64(n) => LuaValue::Integer(*n as i64),
                    MapKey::String(s) => LuaValue::String(lua.create_string(s)?),
                };
                t.raw_set(key, value_to_lua(lua, v, &value_kind)?)?;
            }
            LuaValue::Table(t)
        }
    })
}

/// Why a Lua value is not the message a method must return, with the field path.
#[derive(Debug)]
pub struct ConvertError {
    pub path: String,
    pub message: String,
}

impl std::fmt::Display for ConvertError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "field {}: {}", self.path, self.message)
        }
    }
}

type Result<T> = std::result::Result<T, ConvertError>;

/// Where a value sits in the response; spelled out only when an error needs it, so converting
/// a good response formats nothing.
#[derive(Clone, Copy)]
enum Path<'a> {
    Root,
    Field(&'a Path<'a>, &'a str),
    Index(&'a Path<'a>, usize),
    Key(&'a Path<'a>, &'a LuaValue),
}

impl std::fmt::Display for Path<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Path::Root => Ok(()),
            Path::Field(Path::Root, name) => f.write_str(name),
            Path::Field(parent, name) => write!(f, "{parent}.{name}"),
            Path::Index(parent, i) => write!(f, "{parent}[{i}]"),
            Path::Key(parent, key) => {
                write!(f, "{parent}[{}]", key.to_string().unwrap_or_default())
            }
        }
    }
}

fn fail<T>(path: &Path<'_>, message: impl Into<String>) -> Result<T> {
    Err(ConvertError {
        path: path.to_string(),
        message: message.into(),
    })
}

fn lua_error(path: &Path<'_>, e: mlua::Error) -> ConvertError {
    ConvertError {
        path: path.to_string(),
        message: e.to_string(),
    }
}

/// The table behind a read-only data proxy (see `sandbox`), or the table itself.
pub fn unwrap_readonly(table: Table) -> Table {
    if let Some(mt) = table.metatable() {
        if mt.raw_get::<bool>("__readonly").unwrap_or(false) {
            if let Ok(inner) = mt.raw_get::<Table>("__index") {
                return inner;
            }
        }
    }
    table
}

thread_local! {
    /// Encoded forms of read-only data tables, per Lua thread: data never changes, so a feature
    /// sent a thousand times is converted once.
    static ENCODED_DATA: std::cell::RefCell<HashMap<(usize, usize), Bytes>> = std::cell::RefCell::new(HashMap::new());
}

/// Most data tables fit; past this the cache stops growing.
const ENCODED_DATA_LIMIT: usize = 65_536;

/// A Lua value as a response: read-only data tables come from the cache, others are converted.
pub fn outgoing_from_lua(value: &LuaValue, desc: &MessageDescriptor) -> Result<Outgoing> {
    if let LuaValue::Table(t) = value {
        // Data tables live as long as the state, so their address is a stable key; looking it
        // up first avoids asking Lua about the metatable on every send.
        let key = (t.to_pointer() as usize, desc.full_name().as_ptr() as usize);
        if let Some(bytes) = ENCODED_DATA.with(|c| c.borrow().get(&key).cloned()) {
            return Ok(Outgoing::Encoded(bytes));
        }
        if is_readonly(t) {
            let bytes = Bytes::from(lua_to_message(value, desc, &Path::Root)?.encode_to_vec());
            ENCODED_DATA.with(|c| {
                let mut cache = c.borrow_mut();
                if cache.len() < ENCODED_DATA_LIMIT {
                    cache.insert(key, bytes.clone());
                }
            });
            return Ok(Outgoing::Encoded(bytes));
        }
    }
    // Encoded here, once: the size check and the encoder then only look at bytes.
    Ok(Outgoing::Encoded(Bytes::from(
        lua_to_message(value, desc, &Path::Root)?.encode_to_vec(),
    )))
}

fn is_readonly(table: &Table) -> bool {
    table
        .metatable()
        .is_some_and(|mt| mt.raw_get::<bool>("__readonly").unwrap_or(false))
}

/// A Lua table as a message of type `desc`.
fn lua_to_message(
    value: &LuaValue,
    desc: &MessageDescriptor,
    path: &Path<'_>,
) -> Result<DynamicMessage> {
    let LuaValue::Table(table) = value else {
        return fail(
            path,
            format!(
                "expected a table for {}, got {}",
                desc.full_name(),
                type_of(value)
            ),
        );
    };
    let table = unwrap_readonly(table.clone());
    let mut msg = DynamicMessage::new(desc.clone());
    for pair in table.pairs::<LuaValue, LuaValue>() {
        let (key, value) = pair.map_err(|e| lua_error(path, e))?;
        let LuaValue::String(key) = key else {
            return fail(
                path,
                format!(
                    "{} has a {} key; message keys are field names",
                    desc.full_name(),
                    type_of(&key)
                ),
            );
        };
        let Ok(key) = key.to_str() else {
            return fail(
                path,
                format!("{} has a key that is not UTF-8", desc.full_name()),
            );
        };
        let key: &str = &key;
        let field_path = Path::Field(path, key);
        let Some(field) = find_field(desc, key) else {
            let names = field_names(desc);
            return fail(
                &field_path,
                format!(
                    "{} has no field \"{key}\"{}",
                    desc.full_name(),
                    did_you_mean(key, names.iter().map(String::as_str))
                ),
            );
        };
        if matches!(value, LuaValue::Nil) {
            continue;
        }
        let converted = field_from_lua(&value, &field, &field_path)?;
        msg.set_field(&field, converted);
    }
    Ok(msg)
}

fn field_from_lua(value: &LuaValue, field: &FieldDescriptor, path: &Path<'_>) -> Result<Value> {
    if field.is_map() {
        let LuaValue::Table(t) = value else {
            return fail(
                path,
                format!("expected a table (map), got {}", type_of(value)),
            );
        };
        let Kind::Message(entry) = field.kind() else {
            return fail(path, "map without entry type");
        };
        let key_kind = entry.map_entry_key_field().kind();
        let value_kind = entry.map_entry_value_field().kind();
        let mut out = HashMap::new();
        for pair in unwrap_readonly(t.clone()).pairs::<LuaValue, LuaValue>() {
            let (k, v) = pair.map_err(|e| lua_error(path, e))?;
            let kpath = Path::Key(path, &k);
            let key = match scalar_from_lua(&k, &key_kind, &kpath)? {
                Value::Bool(b) => MapKey::Bool(b),
                Value::I32(n) => MapKey::I32(n),
                Value::I64(n) => MapKey::I64(n),
                Value::U32(n) => MapKey::U32(n),
                Value::U64(n) => MapKey::U64(n),
                Value::String(s) => MapKey::String(s),
                _ => return fail(&kpath, "not a valid map key"),
            };
            out.insert(key, single_from_lua(&v, &value_kind, &kpath)?);
        }
        return Ok(Value::Map(out));
    }
    if field.is_list() {
        let LuaValue::Table(t) = value else {
            return fail(
                path,
                format!("expected a table (list), got {}", type_of(value)),
            );
        };
        let t = unwrap_readonly(t.clone());
        let len = t.raw_len();
        let mut out = Vec::with_capacity(len);
        let kind = field.kind();
        for i in 1..=len {
            let item: LuaValue = t.raw_get(i).map_err(|e| lua_error(path, e))?;
            out.push(single_from_lua(&item, &kind, &Path::Index(path, i))?);
        }
        return Ok(Value::List(out));
    }
    single_from_lua(value, &field.kind(), path)
}

fn single_from_lua(value: &LuaValue, kind: &Kind, path: &Path<'_>) -> Result<Value> {
    match kind {
        Kind::Message(m) => Ok(Value::Message(lua_to_message(value, m, path)?)),
        _ => scalar_from_lua(value, kind, path),
    }
}

fn scalar_from_lua(value: &LuaValue, kind: &Kind, path: &Path<'_>) -> Result<Value> {
    let wrong = || {
        fail(
            path,
            format!("expected {}, got {}", kind_name(kind), describe(value)),
        )
    };
    let int = || -> Option<i64> {
        match value {
            LuaValue::Integer(n) => Some(*n),
            LuaValue::Number(f) if f.fract() == 0.0 && *f >= -9.2e18 && *f <= 9.2e18 => {
                Some(*f as i64)
            }
            _ => None,
        }
    };
    let range = |n: i64| fail(path, format!("{n} does not fit {}", kind_name(kind)));
    Ok(match kind {
        Kind::String => match value {
            LuaValue::String(s) => match s.to_str() {
                Ok(s) => Value::String(s.to_owned()),
                Err(_) => return fail(path, "not valid UTF-8; use a bytes field for binary data"),
            },
            _ => return wrong(),
        },
        Kind::Bytes => match value {
            LuaValue::String(s) => Value::Bytes(Bytes::copy_from_slice(&s.as_bytes())),
            _ => return wrong(),
        },
        Kind::Bool => match value {
            LuaValue::Boolean(b) => Value::Bool(*b),
            _ => return wrong(),
        },
        Kind::Double => match value {
            LuaValue::Number(f) => Value::F64(*f),
            LuaValue::Integer(n) => Value::F64(*n as f64),
            _ => return wrong(),
        },
        Kind::Float => match value {
            LuaValue::Number(f) => Value::F32(*f as f32),
            LuaValue::Integer(n) => Value::F32(*n as f32),
            _ => return wrong(),
        },
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
            let Some(n) = int() else { return wrong() };
            match i32::try_from(n) {
                Ok(v) => Value::I32(v),
                Err(_) => return range(n),
            }
        }
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => match int() {
            Some(n) => Value::I64(n),
            None => return wrong(),
        },
        Kind::Uint32 | Kind::Fixed32 => {
            let Some(n) = int() else { return wrong() };
            match u32::try_from(n) {
                Ok(v) => Value::U32(v),
                Err(_) => return range(n),
            }
        }
        Kind::Uint64 | Kind::Fixed64 => match int() {
            Some(n) => Value::U64(n as u64),
            None => return wrong(),
        },
        Kind::Enum(e) => match value {
            LuaValue::String(s) => {
                let name = s.to_string_lossy();
                match e.get_value_by_name(&name) {
                    Some(v) => Value::EnumNumber(v.number()),
                    None => {
                        let names: Vec<String> = e.values().map(|v| v.name().to_owned()).collect();
                        return fail(
                            path,
                            format!(
                                "{} has no value \"{name}\"{}",
                                e.full_name(),
                                did_you_mean(&name, names.iter().map(String::as_str))
                            ),
                        );
                    }
                }
            }
            _ => match int().map(i32::try_from) {
                Some(Ok(n)) => Value::EnumNumber(n),
                _ => return wrong(),
            },
        },
        Kind::Message(_) => return wrong(),
    })
}

fn type_of(value: &LuaValue) -> &'static str {
    value.type_name()
}

fn describe(value: &LuaValue) -> String {
    match value {
        LuaValue::String(s) => format!("string {:?}", s.to_string_lossy()),
        LuaValue::Integer(n) => format!("integer {n}"),
        LuaValue::Number(n) => format!("number {n}"),
        LuaValue::Boolean(b) => format!("boolean {b}"),
        other => other.type_name().to_owned(),
    }
}
