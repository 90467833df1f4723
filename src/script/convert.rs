//! `DynamicMessage` ⇄ Lua values, directly (no JSON text in between).
//!
//! Messages are tables keyed by proto field name. Scalars that are unset read as their defaults;
//! unset message fields and unset `optional`/oneof members are `nil`, so presence stays visible.
//! 64-bit integers are Lua integers (uint64 above 2^63 wraps to a negative integer and back
//! unchanged), bytes are Lua strings, enums are names (numbers are accepted back), repeated fields
//! are sequences and maps are tables. Well-known types are messages like any other.
//!
//! Going back, every key must be a field and every value the field's type; the error names the
//! field path so a script author can find the mistake. Going back never runs script code:
//! tables are read raw (a frozen table through its hidden contents), so a metamethod cannot
//! change a reply while it is read. The size is counted as the message is built, before any
//! string is copied, and conversion stops once it passes `--max-message-size`; a table that
//! contains itself stops at a nesting limit.
//!
//! Frozen tables never change and live as long as their state, so their encoded form is kept
//! per state: a feature sent a thousand times is converted once.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use mlua::{Lua, Table, Value as LuaValue};
use prost::Message;
use prost_reflect::{
    DynamicMessage, FieldDescriptor, Kind, MapKey, MessageDescriptor, ReflectMessage, Value,
};

use super::freeze;
use crate::codec::Outgoing;
use crate::error::CallError;
use crate::fieldpath::{find_field, kind_name, missing_field};
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

/// Why a Lua value is not the message a method must return.
#[derive(Debug)]
pub enum ConvertError {
    /// Not the right shape, with the field path.
    Invalid { path: String, message: String },
    /// The message passed the size limit while it was being built.
    TooLarge(TooLarge),
}

/// A reply that passed `--max-message-size` while it was converted.
#[derive(Debug, Clone, Copy)]
pub struct TooLarge {
    pub limit: usize,
}

impl std::fmt::Display for TooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the response passed the limit of {} bytes while it was built",
            self.limit
        )
    }
}

impl std::error::Error for TooLarge {}

impl std::fmt::Display for ConvertError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConvertError::Invalid { path, message } if path.is_empty() => write!(f, "{message}"),
            ConvertError::Invalid { path, message } => write!(f, "field {path}: {message}"),
            ConvertError::TooLarge(t) => t.fmt(f),
        }
    }
}

impl std::error::Error for ConvertError {}

impl ConvertError {
    /// The call's error: too large is RESOURCE_EXHAUSTED, anything else a bad response
    /// described by `what(self)` (which names the script, function and message type).
    pub fn into_call_error(
        self,
        method: &Arc<str>,
        what: impl FnOnce(&ConvertError) -> String,
    ) -> CallError {
        match self {
            ConvertError::TooLarge(t) => CallError::ReplyTooLarge {
                method: method.clone(),
                limit: t.limit,
            },
            other => CallError::BadResponse {
                method: method.clone(),
                message: what(&other),
            },
        }
    }

    /// As a Lua error raised inside a call (by `ctx:send`): too large stays recognisable (see
    /// [`TooLarge`]), anything else becomes `bad(self)`.
    pub fn into_lua_error(self, bad: impl FnOnce(&ConvertError) -> mlua::Error) -> mlua::Error {
        match self {
            ConvertError::TooLarge(t) => mlua::Error::external(t),
            other => bad(&other),
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
    Err(ConvertError::Invalid {
        path: path.to_string(),
        message: message.into(),
    })
}

fn lua_error(path: &Path<'_>, e: mlua::Error) -> ConvertError {
    ConvertError::Invalid {
        path: path.to_string(),
        message: e.to_string(),
    }
}

/// What to read a returned table's entries from: the hidden contents of a frozen table, or the
/// table itself. Reading it raw never runs script code.
pub fn unwrap_readonly(table: Table) -> Table {
    freeze::contents(&table)
}

/// Per Lua state (app data): the reply size limit and the encoded forms of frozen tables.
pub struct ReplyLimits {
    max_message_size: usize,
    /// (frozen table, message type) → encoded bytes. Frozen tables are never collected (the
    /// freezer keeps them), so an address here is always the same table of this state.
    encoded: RefCell<HashMap<(usize, usize), Bytes>>,
}

impl ReplyLimits {
    pub fn new(max_message_size: usize) -> Self {
        Self {
            max_message_size,
            encoded: RefCell::new(HashMap::new()),
        }
    }
}

/// Most data tables fit; past this the cache stops growing.
const ENCODED_DATA_LIMIT: usize = 65_536;

/// Messages nested deeper than this are refused (protobuf's own recursion limit).
const MAX_DEPTH: usize = 100;

/// The reply's size so far, counted as it is built; a lower bound of the encoded size, so a
/// reply is refused only when its encoding would pass the limit too.
struct Budget {
    left: usize,
    limit: usize,
}

impl Budget {
    #[inline]
    fn take(&mut self, n: usize) -> Result<()> {
        match self.left.checked_sub(n) {
            Some(left) => {
                self.left = left;
                Ok(())
            }
            None => Err(ConvertError::TooLarge(TooLarge { limit: self.limit })),
        }
    }
}

/// A Lua value as a response of type `desc`, encoded: frozen tables come from the state's
/// cache, others are converted.
pub fn outgoing_from_lua(
    lua: &Lua,
    value: &LuaValue,
    desc: &MessageDescriptor,
) -> Result<Outgoing> {
    let limits = lua.app_data_ref::<ReplyLimits>();
    let limit = limits.as_ref().map_or(usize::MAX, |l| l.max_message_size);
    let mut budget = Budget { left: limit, limit };
    if let (LuaValue::Table(t), Some(limits)) = (value, limits.as_ref()) {
        // Only frozen tables are ever cached, and none of them is ever collected, so an
        // address found here is that same frozen table: the hit needs no look at Lua.
        let key = (t.to_pointer() as usize, desc.full_name().as_ptr() as usize);
        if let Some(bytes) = limits.encoded.borrow().get(&key) {
            return Ok(Outgoing::Encoded(bytes.clone()));
        }
        if let Some(contents) = freeze::hidden(t) {
            let msg = message_from_contents(&contents, desc, &Path::Root, &mut budget, 0)?;
            let bytes = Bytes::from(msg.encode_to_vec());
            let mut cache = limits.encoded.borrow_mut();
            if cache.len() < ENCODED_DATA_LIMIT {
                cache.insert(key, bytes.clone());
            }
            return Ok(Outgoing::Encoded(bytes));
        }
    }
    drop(limits);
    // Encoded here, once: the size check and the encoder then only look at bytes.
    Ok(Outgoing::Encoded(Bytes::from(
        lua_to_message(value, desc, &Path::Root, &mut budget, 0)?.encode_to_vec(),
    )))
}

/// A Lua table as a message of type `desc`.
fn lua_to_message(
    value: &LuaValue,
    desc: &MessageDescriptor,
    path: &Path<'_>,
    budget: &mut Budget,
    depth: usize,
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
    message_from_contents(&freeze::contents(table), desc, path, budget, depth)
}

fn message_from_contents(
    table: &Table,
    desc: &MessageDescriptor,
    path: &Path<'_>,
    budget: &mut Budget,
    depth: usize,
) -> Result<DynamicMessage> {
    if depth > MAX_DEPTH {
        return fail(
            path,
            format!("messages nested more than {MAX_DEPTH} deep (does a table contain itself?)"),
        );
    }
    let mut msg = DynamicMessage::new(desc.clone());
    let mut failure = None;
    let walked = table.for_each(|key: LuaValue, value: LuaValue| {
        match set_from_pair(&mut msg, desc, key, value, path, budget, depth) {
            Ok(()) => Ok(()),
            Err(e) => {
                failure = Some(e);
                Err(mlua::Error::runtime(""))
            }
        }
    });
    if let Some(e) = failure {
        return Err(e);
    }
    walked.map_err(|e| lua_error(path, e))?;
    Ok(msg)
}

fn set_from_pair(
    msg: &mut DynamicMessage,
    desc: &MessageDescriptor,
    key: LuaValue,
    value: LuaValue,
    path: &Path<'_>,
    budget: &mut Budget,
    depth: usize,
) -> Result<()> {
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
        return fail(&field_path, missing_field(desc, key));
    };
    if matches!(value, LuaValue::Nil) {
        return Ok(());
    }
    // The field's tag.
    budget.take(1)?;
    let converted = field_from_lua(&value, &field, &field_path, budget, depth)?;
    msg.set_field(&field, converted);
    Ok(())
}

fn field_from_lua(
    value: &LuaValue,
    field: &FieldDescriptor,
    path: &Path<'_>,
    budget: &mut Budget,
    depth: usize,
) -> Result<Value> {
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
        let mut failure = None;
        let walked = freeze::contents(t).for_each(|k: LuaValue, v: LuaValue| {
            let mut entry = || -> Result<()> {
                // Each entry is a tagged, length-delimited message.
                budget.take(2)?;
                let kpath = Path::Key(path, &k);
                let key = match scalar_from_lua(&k, &key_kind, &kpath, budget)? {
                    Value::Bool(b) => MapKey::Bool(b),
                    Value::I32(n) => MapKey::I32(n),
                    Value::I64(n) => MapKey::I64(n),
                    Value::U32(n) => MapKey::U32(n),
                    Value::U64(n) => MapKey::U64(n),
                    Value::String(s) => MapKey::String(s),
                    _ => return fail(&kpath, "not a valid map key"),
                };
                out.insert(
                    key,
                    single_from_lua(&v, &value_kind, &kpath, budget, depth)?,
                );
                Ok(())
            };
            entry().map_err(|e| {
                failure = Some(e);
                mlua::Error::runtime("")
            })
        });
        if let Some(e) = failure {
            return Err(e);
        }
        walked.map_err(|e| lua_error(path, e))?;
        return Ok(Value::Map(out));
    }
    if field.is_list() {
        let LuaValue::Table(t) = value else {
            return fail(
                path,
                format!("expected a table (list), got {}", type_of(value)),
            );
        };
        let t = freeze::contents(t);
        let len = t.raw_len();
        // At least a byte an item, before anything is allocated for them.
        budget.take(len)?;
        let mut out = Vec::with_capacity(len);
        let kind = field.kind();
        for i in 1..=len {
            let item: LuaValue = t.raw_get(i).map_err(|e| lua_error(path, e))?;
            out.push(single_from_lua(
                &item,
                &kind,
                &Path::Index(path, i),
                budget,
                depth,
            )?);
        }
        return Ok(Value::List(out));
    }
    single_from_lua(value, &field.kind(), path, budget, depth)
}

fn single_from_lua(
    value: &LuaValue,
    kind: &Kind,
    path: &Path<'_>,
    budget: &mut Budget,
    depth: usize,
) -> Result<Value> {
    match kind {
        Kind::Message(m) => {
            // Its length prefix.
            budget.take(1)?;
            Ok(Value::Message(lua_to_message(
                value,
                m,
                path,
                budget,
                depth + 1,
            )?))
        }
        _ => scalar_from_lua(value, kind, path, budget),
    }
}

fn scalar_from_lua(
    value: &LuaValue,
    kind: &Kind,
    path: &Path<'_>,
    budget: &mut Budget,
) -> Result<Value> {
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
            LuaValue::String(s) => {
                let bytes = s.as_bytes();
                // Its length prefix and bytes, counted before they are copied.
                budget.take(bytes.len().saturating_add(1))?;
                match std::str::from_utf8(&bytes) {
                    Ok(s) => Value::String(s.to_owned()),
                    Err(_) => {
                        return fail(path, "not valid UTF-8; use a bytes field for binary data")
                    }
                }
            }
            _ => return wrong(),
        },
        Kind::Bytes => match value {
            LuaValue::String(s) => {
                let bytes = s.as_bytes();
                budget.take(bytes.len().saturating_add(1))?;
                Value::Bytes(Bytes::copy_from_slice(&bytes))
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn lua_with_limit(limit: usize) -> Lua {
        let lua = Lua::new();
        lua.set_app_data(ReplyLimits::new(limit));
        lua
    }

    fn value_desc() -> MessageDescriptor {
        prost_reflect::DescriptorPool::global()
            .get_message_by_name("google.protobuf.Value")
            .expect("well-known types")
    }

    #[test]
    fn a_reply_that_contains_itself_stops_at_the_nesting_limit() {
        let lua = lua_with_limit(1 << 20);
        let v: LuaValue = lua
            .load("local v = {} v.struct_value = { fields = { k = v } } return v")
            .eval()
            .unwrap();
        let e = outgoing_from_lua(&lua, &v, &value_desc()).unwrap_err();
        assert!(e.to_string().contains("nested more than 100 deep"), "{e}");
    }

    #[test]
    fn size_is_counted_before_strings_are_copied() {
        let lua = lua_with_limit(1000);
        let desc = value_desc();
        let small: LuaValue = lua
            .load("return { string_value = string.rep('x', 990) }")
            .eval()
            .unwrap();
        assert!(outgoing_from_lua(&lua, &small, &desc).is_ok());
        let big: LuaValue = lua
            .load(
                "local s = string.rep('x', 600) \
                 return { list_value = { values = { { string_value = s }, { string_value = s } } } }",
            )
            .eval()
            .unwrap();
        match outgoing_from_lua(&lua, &big, &desc) {
            Err(ConvertError::TooLarge(t)) => assert_eq!(t.limit, 1000),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn metamethods_do_not_run_while_a_reply_is_read() {
        let lua = lua_with_limit(1 << 20);
        let v: LuaValue = lua
            .load(
                "ran = false \
                 return setmetatable({ string_value = 'raw' }, { \
                   __index = function() ran = true return 'meta' end, \
                   __pairs = function() ran = true return next, {}, nil end })",
            )
            .eval()
            .unwrap();
        let Outgoing::Encoded(bytes) = outgoing_from_lua(&lua, &v, &value_desc()).unwrap() else {
            panic!("not encoded");
        };
        let back = DynamicMessage::decode(value_desc(), bytes).unwrap();
        assert_eq!(
            back.get_field_by_name("string_value").unwrap().as_str(),
            Some("raw")
        );
        assert!(!lua.globals().get::<bool>("ran").unwrap());
    }
}
