//! Lua values as messages and back: the shape scripts see, and what each state keeps for it.
//!
//! Messages are tables keyed by proto field name. Scalars that are unset read as their defaults;
//! unset message fields and unset `optional`/oneof members are `nil`, so presence stays visible.
//! 64-bit integers are Lua integers (uint64 above 2^63 wraps to a negative integer and back
//! unchanged), bytes are Lua strings, enums are names (numbers are accepted back), repeated fields
//! are sequences and maps are tables. Well-known types are messages like any other.
//!
//! Requests become tables straight from their bytes ([`super::decode`]) and replies bytes
//! straight from their tables ([`super::encode`]), both by plans made at load
//! ([`super::plan`]). Going back, every key must be a field and every value the field's type;
//! the error names the field path so a script author can find the mistake. Going back never
//! runs script code: tables are read raw (a frozen table through its hidden contents), so a
//! metamethod cannot change a reply while it is read. The size is checked as the reply is
//! written, before any string is copied, and encoding stops once it passes
//! `--max-message-size`; a table that contains itself stops at a nesting limit.
//!
//! Frozen tables never change and live as long as their state, so their encoded form is kept
//! per state: a feature sent a thousand times is converted once.

use std::cell::RefCell;
use std::sync::Arc;

use bytes::Bytes;
use mlua::{Lua, Table, Value as LuaValue};
use rustc_hash::FxHashMap;

use super::encode::Encoder;
use super::freeze;
use super::plan::{EnumId, MsgId, Plans};
use super::status::Abort;
use crate::codec::Outgoing;
use crate::error::CallError;

/// Why a Lua value is not the message a method must return.
#[derive(Debug)]
pub enum ConvertError {
    /// Not the right shape, with the field path.
    Invalid { path: String, message: String },
    /// The message passed the size limit while it was being built.
    TooLarge(TooLarge),
    /// The call was stopped (its budget, deadline or cancellation) while its reply was read.
    Stopped(Abort),
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
            ConvertError::Stopped(a) => a.fmt(f),
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
            ConvertError::Stopped(Abort::Budget(_) | Abort::Time(_) | Abort::Memory) => {
                CallError::ScriptBudget {
                    method: method.clone(),
                    message: self.to_string(),
                }
            }
            ConvertError::Stopped(Abort::Deadline) => CallError::DeadlineExceeded {
                method: method.clone(),
            },
            ConvertError::Stopped(Abort::Cancelled) => CallError::Cancelled,
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
            ConvertError::Stopped(a) => mlua::Error::external(a),
            other => bad(&other),
        }
    }
}

type Result<T> = std::result::Result<T, ConvertError>;

/// Where a value sits in the response; spelled out only when an error needs it, so converting
/// a good response formats nothing.
#[derive(Clone, Copy)]
pub enum Path<'a> {
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
            // Written without calling any `__tostring`: no script code runs here.
            Path::Key(parent, key) => match key {
                LuaValue::String(s) => write!(
                    f,
                    "{parent}[{}]",
                    crate::error::clipped_bytes(&s.as_bytes(), SHOWN_TEXT)
                ),
                LuaValue::Integer(i) => write!(f, "{parent}[{i}]"),
                LuaValue::Number(n) => write!(f, "{parent}[{n}]"),
                LuaValue::Boolean(b) => write!(f, "{parent}[{b}]"),
                other => write!(
                    f,
                    "{parent}[{}: {:p}]",
                    other.type_name(),
                    other.to_pointer()
                ),
            },
        }
    }
}

pub fn fail<T>(path: &Path<'_>, message: impl Into<String>) -> Result<T> {
    Err(ConvertError::Invalid {
        path: path.to_string(),
        message: message.into(),
    })
}

pub fn lua_error(path: &Path<'_>, e: mlua::Error) -> ConvertError {
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

/// Per Lua state (app data): the plans, the reply size limit, the encoded forms of frozen
/// tables, and the Lua strings of field and enum names, made on first use.
pub struct Conv {
    plans: Arc<Plans>,
    max_message_size: usize,
    /// (frozen table, message type) → encoded bytes. Frozen tables are never collected (the
    /// freezer keeps them), so an address here is always the same table of this state. Looked
    /// up for every message a script sends, so hashed with Fx: SipHash was about 5 % of the
    /// server's instructions per message in ListFeatures. The keys are addresses, not script
    /// input.
    encoded: RefCell<FxHashMap<(usize, MsgId), Bytes>>,
    /// Bytes held in `encoded`.
    encoded_bytes: std::cell::Cell<usize>,
    /// Per message type, its field names in plan order.
    keys: RefCell<Vec<Option<Arc<[mlua::String]>>>>,
    /// Per enum type, its value names in plan order.
    enum_names: RefCell<Vec<Option<Arc<[mlua::String]>>>>,
}

impl Conv {
    pub fn new(plans: Arc<Plans>, max_message_size: usize) -> Self {
        Self {
            plans,
            max_message_size,
            encoded: RefCell::new(FxHashMap::default()),
            encoded_bytes: std::cell::Cell::new(0),
            keys: RefCell::new(Vec::new()),
            enum_names: RefCell::new(Vec::new()),
        }
    }

    pub fn plans(&self) -> &Arc<Plans> {
        &self.plans
    }

    /// The field names of message type `msg` as this state's strings.
    pub fn keys(&self, lua: &Lua, plans: &Plans, msg: MsgId) -> mlua::Result<Arc<[mlua::String]>> {
        cached(&self.keys, msg as usize, || {
            plans
                .message(msg)
                .fields
                .iter()
                .map(|f| lua.create_string(&*f.name))
                .collect()
        })
    }

    /// The value names of enum type `e` as this state's strings.
    pub fn enum_names(
        &self,
        lua: &Lua,
        plans: &Plans,
        e: EnumId,
    ) -> mlua::Result<Arc<[mlua::String]>> {
        cached(&self.enum_names, e as usize, || {
            plans
                .enumeration(e)
                .values
                .iter()
                .map(|(_, name)| lua.create_string(&**name))
                .collect()
        })
    }
}

fn cached(
    cache: &RefCell<Vec<Option<Arc<[mlua::String]>>>>,
    i: usize,
    make: impl FnOnce() -> mlua::Result<Arc<[mlua::String]>>,
) -> mlua::Result<Arc<[mlua::String]>> {
    if let Some(Some(found)) = cache.borrow().get(i) {
        return Ok(found.clone());
    }
    let made = make()?;
    let mut cache = cache.borrow_mut();
    if cache.len() <= i {
        cache.resize(i + 1, None);
    }
    cache[i] = Some(made.clone());
    Ok(made)
}

/// The reply [`outgoing_at`] gave up on, (table address, message type), and the reading it
/// was charged for: `ctx:send` hands the same table to [`outgoing_from_lua`] next, which goes
/// straight to the plain encoder and is not charged for that reading again. Kept by the
/// running call ([`CallShared::missed`](super::context::CallShared::missed)), and taken by its
/// next conversion, whichever table it is.
pub type Missed = (usize, MsgId, u64);

/// Takes the running call's [`Missed`] note.
fn take_missed() -> Option<Missed> {
    super::slice::with_running_call(|call| {
        call.and_then(|c| c.missed.lock().unwrap_or_else(|e| e.into_inner()).take())
    })
}

/// Leaves a [`Missed`] note for the running call's next conversion.
fn note_missed(missed: Missed) {
    super::slice::with_running_call(|call| {
        if let Some(c) = call {
            *c.missed.lock().unwrap_or_else(|e| e.into_inner()) = Some(missed);
        }
    });
}

/// Most data tables fit; past this the cache stops growing.
const ENCODED_DATA_LIMIT: usize = 65_536;
/// The largest encoded table kept, and the most bytes kept in all, per state. The cache lives
/// outside Lua's memory: without a bound in bytes, frozen tables that share a big part (each
/// a few bytes of Lua memory, each encoding to megabytes) filled it with gigabytes, past
/// `--script-memory`. Small tables, what the cache is for, all fit.
const ENCODED_ENTRY_LIMIT: usize = 64 * 1024;
const ENCODED_BYTES_LIMIT: usize = 64 * 1024 * 1024;

/// A Lua value as a response of type `msg`, encoded: frozen tables come from the state's
/// cache, others are encoded.
pub fn outgoing_from_lua(lua: &Lua, value: &LuaValue, msg: MsgId) -> Result<Outgoing> {
    let Some(conv) = lua.app_data_ref::<Conv>() else {
        return fail(&Path::Root, "scripts are not ready");
    };
    let mut encoder = Encoder::new(&conv.plans, conv.max_message_size);
    let missed = take_missed();
    let mut given_up = false;
    if let LuaValue::Table(t) = value {
        // Only frozen tables are ever cached, and none of them is ever collected, so an
        // address found here is that same frozen table: the hit needs no look at Lua.
        let key = (t.to_pointer() as usize, msg);
        if let Some(bytes) = conv.encoded.borrow().get(&key) {
            return Ok(Outgoing::Encoded(bytes.clone()));
        }
        if let Some(contents) = freeze::hidden(t) {
            encoder.message(&contents, msg, &Path::Root, 0)?;
            let bytes = Bytes::from(encoder.finish()?);
            let mut cache = conv.encoded.borrow_mut();
            let held = conv.encoded_bytes.get();
            if cache.len() < ENCODED_DATA_LIMIT
                && bytes.len() <= ENCODED_ENTRY_LIMIT
                && held + bytes.len() <= ENCODED_BYTES_LIMIT
            {
                conv.encoded_bytes.set(held + bytes.len());
                cache.insert(key, bytes.clone());
            }
            return Ok(Outgoing::Encoded(bytes));
        }
        // The stack encoder gave up on this very table already: it would again.
        if let Some((_, _, units)) = missed.filter(|&(p, m, _)| (p, m) == key) {
            encoder.prepay(units);
            given_up = true;
        }
    }
    if !given_up && encoder.reply_from_stack(lua, value, msg)? {
        return Ok(Outgoing::Encoded(Bytes::from(encoder.out)));
    }
    Ok(Outgoing::Encoded(Bytes::from(encoder.reply(value, msg)?)))
}

/// [`outgoing_from_lua`] for the value at slot `idx` of `l`'s stack, without a handle to it,
/// for the common case only: `None` where `outgoing_from_lua` must run instead (not a table,
/// a frozen table not encoded yet, which it encodes and keeps, or anything the stack encoder
/// leaves to the plain one, which it reports).
///
/// # Safety
/// `l` must be a running thread of `lua`'s state with room for two more values, and `idx` a
/// valid absolute slot.
#[allow(unsafe_code)]
pub unsafe fn outgoing_at(
    lua: &Lua,
    l: *mut mlua::ffi::lua_State,
    idx: std::ffi::c_int,
    msg: MsgId,
) -> Option<Result<Outgoing>> {
    use mlua::ffi;
    let conv = lua.app_data_ref::<Conv>()?;
    // SAFETY (whole block): by the caller's promise.
    unsafe {
        if ffi::lua_type(l, idx) != ffi::LUA_TTABLE {
            return None;
        }
        // As in `outgoing_from_lua`: only frozen tables are kept, and never collected.
        let key = (ffi::lua_topointer(l, idx) as usize, msg);
        if let Some(bytes) = conv.encoded.borrow().get(&key) {
            return Some(Ok(Outgoing::Encoded(bytes.clone())));
        }
        if super::encode_stack::is_frozen_at(l, idx) {
            return None;
        }
        let mut encoder = Encoder::new(&conv.plans, conv.max_message_size);
        match encoder.reply_at(l, idx, msg) {
            Ok(true) => Some(Ok(Outgoing::Encoded(Bytes::from(encoder.out)))),
            Ok(false) => {
                note_missed((key.0, msg, encoder.prepaid()));
                None
            }
            Err(e) => Some(Err(e)),
        }
    }
}

pub fn type_of(value: &LuaValue) -> &'static str {
    value.type_name()
}

/// The most of a script's string an error about a reply shows (bytes): a value or key may be
/// megabytes long, and the error a copy outside Lua's memory that a script may keep.
pub const SHOWN_TEXT: usize = 128;

pub fn describe(value: &LuaValue) -> String {
    match value {
        LuaValue::String(s) => format!(
            "string {:?}",
            crate::error::clipped_bytes(&s.as_bytes(), SHOWN_TEXT)
        ),
        LuaValue::Integer(n) => format!("integer {n}"),
        LuaValue::Number(n) => format!("number {n}"),
        LuaValue::Boolean(b) => format!("boolean {b}"),
        other => other.type_name().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::script::context::CallShared;
    use prost_reflect::DynamicMessage;

    fn value_desc() -> prost_reflect::MessageDescriptor {
        prost_reflect::DescriptorPool::global()
            .get_message_by_name("google.protobuf.Value")
            .expect("well-known types")
    }

    fn lua_with_limit(limit: usize) -> (Lua, MsgId) {
        let lua = Lua::new();
        let mut plans = Plans::default();
        let id = plans.add(&value_desc());
        lua.set_app_data(Conv::new(Arc::new(plans), limit));
        (lua, id)
    }

    #[test]
    fn a_reply_that_contains_itself_stops_at_the_nesting_limit() {
        let (lua, id) = lua_with_limit(1 << 20);
        let v: LuaValue = lua
            .load("local v = {} v.struct_value = { fields = { k = v } } return v")
            .eval()
            .unwrap();
        let e = outgoing_from_lua(&lua, &v, id).unwrap_err();
        assert!(e.to_string().contains("nested more than 100 deep"), "{e}");
    }

    #[test]
    fn size_is_counted_before_strings_are_copied() {
        let (lua, id) = lua_with_limit(1000);
        let small: LuaValue = lua
            .load("return { string_value = string.rep('x', 990) }")
            .eval()
            .unwrap();
        let Outgoing::Encoded(bytes) = outgoing_from_lua(&lua, &small, id).unwrap() else {
            panic!("not encoded");
        };
        assert_eq!(bytes.len(), 993);
        let big: LuaValue = lua
            .load(
                "local s = string.rep('x', 600) \
                 return { list_value = { values = { { string_value = s }, { string_value = s } } } }",
            )
            .eval()
            .unwrap();
        match outgoing_from_lua(&lua, &big, id) {
            Err(ConvertError::TooLarge(t)) => assert_eq!(t.limit, 1000),
            other => panic!("{other:?}"),
        }
        // Exactly at the limit passes; one byte more does not.
        let small_in = |lua: &Lua| -> LuaValue {
            lua.load("return { string_value = string.rep('x', 990) }")
                .eval()
                .unwrap()
        };
        let (lua, id) = lua_with_limit(993);
        assert!(outgoing_from_lua(&lua, &small_in(&lua), id).is_ok());
        let (lua, id) = lua_with_limit(992);
        assert!(matches!(
            outgoing_from_lua(&lua, &small_in(&lua), id),
            Err(ConvertError::TooLarge(_))
        ));
    }

    #[test]
    fn metamethods_do_not_run_while_a_reply_is_read() {
        let (lua, id) = lua_with_limit(1 << 20);
        let v: LuaValue = lua
            .load(
                "ran = false \
                 return setmetatable({ string_value = 'raw' }, { \
                   __index = function() ran = true return 'meta' end, \
                   __pairs = function() ran = true return next, {}, nil end })",
            )
            .eval()
            .unwrap();
        let Outgoing::Encoded(bytes) = outgoing_from_lua(&lua, &v, id).unwrap() else {
            panic!("not encoded");
        };
        let back = DynamicMessage::decode(value_desc(), bytes).unwrap();
        assert_eq!(
            back.get_field_by_name("string_value").unwrap().as_str(),
            Some("raw")
        );
        assert!(!lua.globals().get::<bool>("ran").unwrap());
    }

    /// What `ctx:send`'s C function does with `value`: [`outgoing_at`] on it, on the stack.
    #[allow(unsafe_code)]
    fn send_now_reads(lua: &Lua, value: &LuaValue, id: MsgId) -> bool {
        lua.exec_raw_lua(|raw| {
            let l = raw.state();
            // SAFETY: `l` is the state's running thread; room is made for the value and what
            // `outgoing_at` pushes, and the stack is put back as found.
            unsafe {
                let top = mlua::ffi::lua_gettop(l);
                assert_ne!(mlua::ffi::lua_checkstack(l, 4), 0);
                raw.push_value(value).unwrap();
                let taken = outgoing_at(lua, l, top + 1, id).is_some();
                mlua::ffi::lua_settop(l, top);
                taken
            }
        })
    }

    /// The stack encoder of `ctx:send`'s C function gives up on a reply and notes the reading
    /// it was charged for, which the plain encoder is not charged for again. The note was the
    /// state's: a call stopped between the two (at the clock's signal) left it for the next
    /// call on the state, whose first reply at the same address (a table of the stopped call,
    /// collected, made room for it) was read for nothing. The note is the call's now, and
    /// the next call pays for all it reads.
    #[test]
    fn a_reading_paid_for_by_one_call_is_not_free_for_the_next() {
        let (lua, id) = lua_with_limit(1 << 20);
        // 2 000 lists read, then a bad value: the stack encoder gives up at the end.
        let v: LuaValue = lua
            .load(
                "local l = {} for i = 1, 2000 do l[i] = { list_value = {} } end l[2001] = 5 \
                 return { list_value = { values = l } }",
            )
            .eval()
            .unwrap();
        let unlimited = || CallShared::for_test(u64::MAX, std::time::Duration::MAX);
        let stopped = unlimited();
        let taken = super::super::slice::with_call(&stopped, || send_now_reads(&lua, &v, id));
        assert!(!taken, "the stack encoder gives up on it");
        let paid = stopped.used.load(std::sync::atomic::Ordering::Relaxed);
        assert!(paid >= 4000, "the first call paid {paid}");
        // The next call reads a reply at the same address (here: the same table).
        let next = unlimited();
        let e = super::super::slice::with_call(&next, || outgoing_from_lua(&lua, &v, id));
        assert!(e.unwrap_err().to_string().contains("values[2001]"));
        let charged = next.used.load(std::sync::atomic::Ordering::Relaxed);
        assert!(
            charged >= paid,
            "the next call read as much, and was charged {charged}"
        );
    }

    #[test]
    fn bad_values_name_the_field_and_what_was_expected() {
        let (lua, id) = lua_with_limit(1 << 20);
        let cases = [
            ("{ number_value = 'x' }", "field number_value: expected double, got string \"x\""),
            ("{ nmber_value = 1 }", "field nmber_value: google.protobuf.Value has no field \"nmber_value\""),
            ("{ struct_value = { fields = { a = { bool_value = 1 } } } }",
             "field struct_value.fields[a].bool_value: expected bool, got integer 1"),
            ("{ list_value = { values = { {}, 7 } } }",
             "field list_value.values[2]: expected a table for google.protobuf.Value (a table with one kind, such as {string_value = …}), got integer"),
            ("{ null_value = 'NULL' }",
             "field null_value: google.protobuf.NullValue has no value \"NULL\""),
            ("{ [1] = 2 }", "google.protobuf.Value has a integer key; message keys are field names"),
            ("{ bool_value = true, number_value = 1 }", "are both set, but they are members of oneof kind"),
            ("{ boolValue = true, bool_value = true }", "given twice"),
            ("7", "expected a table for google.protobuf.Value (a table with one kind, such as {string_value = …}), got integer"),
        ];
        for (code, expected) in cases {
            let v: LuaValue = lua.load(format!("return {code}")).eval().unwrap();
            let e = outgoing_from_lua(&lua, &v, id).unwrap_err().to_string();
            assert!(e.contains(expected), "{code}: {e}");
        }
    }
}
