//! Lua tables straight to wire bytes, by the message type's plan.
//!
//! A reply is read raw (a frozen table through its hidden contents), so no script code runs
//! while it is encoded, and written field by field in number order, the order a
//! `DynamicMessage` of the same values encodes in, so both give the same bytes. A field without
//! presence is left out at its default, as the decoder would read it back anyway. The size is
//! checked as the bytes are written, before any string is copied: encoding stops as soon as
//! the reply passes `--max-message-size`. A table that contains itself stops at a nesting
//! limit. Error messages name the field path and what was expected, as a script author needs.

use mlua::{Table, Value as LuaValue};
use smallvec::SmallVec;

use super::convert::{
    describe, fail, lua_error, type_of, ConvertError, Path, TooLarge, SHOWN_TEXT,
};
use super::freeze;
use super::plan::{
    FieldPlan, MsgId, Plans, Scalar, Shape, Type, END_GROUP, FIXED32, FIXED64, LEN, START_GROUP,
    VARINT,
};
use super::status::Abort;
use crate::fieldpath::no_such_field;
use crate::suggest::did_you_mean;

type Result<T> = std::result::Result<T, ConvertError>;

/// Messages nested deeper than this are refused (protobuf's own recursion limit).
pub(super) const MAX_DEPTH: usize = 100;

/// Work (tables and entries read) charged to the call at once: one check per this much.
const CHARGE_EVERY: u64 = 4096;

/// Refuses a table given as a list that holds a key other than `1..=len`: Lua's length sees
/// only the sequence, so such an entry would be dropped without a word (`{1, 2, [10] = 3}`, a
/// list with a hole, or a message where a list of them was meant). Keys only are read, so a
/// sequence costs one step an item and no value is converted.
pub fn only_sequence(t: &Table, len: usize, what: &str, path: &Path<'_>) -> Result<()> {
    let mut stray = None;
    let walked = t.for_each(|key: LuaValue, _: bool| {
        let in_sequence = matches!(key, LuaValue::Integer(i) if i >= 1 && (i as u64) <= len as u64);
        if in_sequence {
            return Ok(());
        }
        stray = Some(key);
        Err(mlua::Error::runtime(""))
    });
    let Some(key) = stray else {
        return walked.map_err(|e| lua_error(path, e));
    };
    let key = describe(&key);
    let message = if len == 0 {
        format!(
            "expected a {what}, got a table with key {key} and no items 1, 2, …{}",
            if what == "list" {
                " (a message where a list of them was meant? wrap it in { })"
            } else {
                ""
            }
        )
    } else {
        format!(
            "expected a {what} of items 1 to {len}, but the table also has key {key}, which \
             would be dropped (a {what} ends at its first nil: fill the gap or renumber)"
        )
    };
    fail(path, message)
}

/// Writes one reply.
pub struct Encoder<'p> {
    plans: &'p Plans,
    pub out: Vec<u8>,
    limit: usize,
    /// Tables and entries read since the call was last charged for them.
    work: u64,
    /// Tables and entries read in all, as counted by [`Self::spend`].
    read: u64,
    /// Tables and entries already charged for by an earlier reading of the same reply (the
    /// stack encoder's, when it gave up): the plain encoder reads them again in the same
    /// order, and is charged only for what it reads beyond them.
    prepaid: u64,
    /// This thread's clock signals when the call was last charged (see [`Self::spend`]).
    signals: Option<u32>,
}

/// A scalar read from Lua, ready to write.
#[derive(Clone, Copy)]
pub(super) enum Num {
    Int(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
}

impl<'p> Encoder<'p> {
    pub fn new(plans: &'p Plans, limit: usize) -> Self {
        Self {
            plans,
            out: Vec::new(),
            limit,
            work: 0,
            read: 0,
            prepaid: 0,
            signals: super::preempt::signals(),
        }
    }

    /// Charges the call for `units` tables and entries read, now and then: the bytes written
    /// bound a reply's size, not the reading, and a table shared by many fields is read once
    /// per field (a chain of tables that each hold the next twice is read 2^n times in little
    /// memory). So reading a reply counts against the call's budget, and a call stopped meanwhile
    /// stops here. A unit is not a bound on time, though: walking a table steps over the empty
    /// slots of its array part, millions in a table a script emptied, however few entries it
    /// holds. So the call is also charged, which checks its time, whenever the thread's clock
    /// signalled since the last charge (every millisecond of CPU), and at every table where no
    /// clock signals the thread.
    pub(super) fn spend(&mut self, units: u64) -> Result<()> {
        self.read += units;
        let covered = units.min(self.prepaid);
        self.prepaid -= covered;
        self.work += units - covered;
        if self.work < CHARGE_EVERY && !self.clock_moved() {
            return Ok(());
        }
        let work = std::mem::take(&mut self.work);
        super::slice::charge(work).map_err(|e| match super::status::find::<Abort>(&e) {
            Some(a) => ConvertError::Stopped(a),
            None => lua_error(&Path::Root, e),
        })
    }

    /// Whether the call's time must be checked now: the thread's clock signalled since the
    /// last check, or no clock signals this thread.
    fn clock_moved(&mut self) -> bool {
        let now = super::preempt::signals();
        if now.is_some() && now == self.signals {
            return false;
        }
        self.signals = now;
        true
    }

    /// `value` as a message of type `msg`, the whole reply: its bytes.
    pub fn reply(mut self, value: &LuaValue, msg: MsgId) -> Result<Vec<u8>> {
        self.message_value(value, msg)?;
        self.finish()
    }

    /// Starts over on the same reply: the bytes written are dropped, and the reading done so
    /// far, already counted, is not counted again when the same tables are read again.
    pub(super) fn restart(&mut self) {
        self.out.clear();
        self.prepaid = std::mem::take(&mut self.read);
    }

    /// The reading already paid for (see [`Self::restart`]).
    pub(super) fn prepaid(&self) -> u64 {
        self.prepaid
    }

    /// Counts `units` of reading as paid for by an earlier encoder that read the same reply
    /// and gave up.
    pub(super) fn prepay(&mut self, units: u64) {
        self.prepaid += units;
    }

    /// The message plans this encoder writes by.
    pub(super) fn plans(&self) -> &'p Plans {
        self.plans
    }

    /// The bytes written. Small writes are checked once here; strings and lists were checked
    /// before they were copied.
    pub fn finish(self) -> Result<Vec<u8>> {
        self.check(0)?;
        Ok(self.out)
    }

    /// What is wrong with `value`, not a table, where a message of type `msg` goes: with the
    /// table a well-known type takes, since a script may expect the JSON form (a Timestamp as
    /// an RFC 3339 string, a wrapper as its bare value), which declarative replies accept.
    fn not_a_table(&self, msg: MsgId, value: &LuaValue) -> String {
        let name = self.plans.message(msg).full_name();
        let shape = match name {
            "google.protobuf.Timestamp" | "google.protobuf.Duration" => {
                " (a table {seconds = …, nanos = …})"
            }
            "google.protobuf.DoubleValue"
            | "google.protobuf.FloatValue"
            | "google.protobuf.Int64Value"
            | "google.protobuf.UInt64Value"
            | "google.protobuf.Int32Value"
            | "google.protobuf.UInt32Value"
            | "google.protobuf.BoolValue"
            | "google.protobuf.StringValue"
            | "google.protobuf.BytesValue" => " (a table {value = …})",
            "google.protobuf.FieldMask" => " (a table {paths = {…}})",
            "google.protobuf.Struct" => " (a table {fields = {name = {string_value = …}, …}})",
            "google.protobuf.Value" => " (a table with one kind, such as {string_value = …})",
            "google.protobuf.ListValue" => " (a table {values = {{number_value = …}, …}})",
            "google.protobuf.Any" => " (a table {type_url = …, value = encoded bytes})",
            _ => "",
        };
        format!("expected a table for {name}{shape}, got {}", type_of(value))
    }

    /// `value` as a message of type `msg`.
    pub fn message_value(&mut self, value: &LuaValue, msg: MsgId) -> Result<()> {
        let LuaValue::Table(t) = value else {
            return fail(&Path::Root, self.not_a_table(msg, value));
        };
        self.message(&freeze::contents(t), msg, &Path::Root, 0)
    }

    /// A table's contents (already unwrapped if frozen) as message `msg`.
    pub fn message(
        &mut self,
        table: &Table,
        msg: MsgId,
        path: &Path<'_>,
        depth: usize,
    ) -> Result<()> {
        if depth > MAX_DEPTH {
            return fail(
                path,
                format!(
                    "messages nested more than {MAX_DEPTH} deep (does a table contain itself?)"
                ),
            );
        }
        let plan = self.plans.message(msg);
        // (field index, spelled as its JSON name, value); most messages set few fields, which
        // then need no allocation.
        let mut set: SmallVec<[(u16, bool, LuaValue); 8]> = SmallVec::new();
        let mut failure = None;
        let walked = table.for_each(|key: LuaValue, value: LuaValue| {
            match collect(self.plans, msg, key, value, path, &mut set) {
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
        self.spend(1 + set.len() as u64)?;
        set.sort_unstable_by_key(|(i, _, _)| *i);
        for (index, json, value) in &set {
            let f = &plan.fields[usize::from(*index)];
            let name = if *json { f.desc.json_name() } else { &*f.name };
            self.field(f, value, &Path::Field(path, name), depth)?;
        }
        Ok(())
    }

    pub(super) fn check(&self, more: usize) -> Result<()> {
        if self.out.len().saturating_add(more) > self.limit {
            return Err(ConvertError::TooLarge(TooLarge { limit: self.limit }));
        }
        Ok(())
    }

    #[inline]
    pub(super) fn put_varint(&mut self, v: u64) {
        prost::encoding::encode_varint(v, &mut self.out);
    }

    #[inline]
    pub(super) fn put_tag(&mut self, number: u32, wire_type: u8) {
        self.put_varint((u64::from(number) << 3) | u64::from(wire_type));
    }

    /// Starts a length-prefixed body: one byte for its length, grown if it needs more.
    pub(super) fn begin_len(&mut self) -> usize {
        self.out.push(0);
        self.out.len()
    }

    pub(super) fn end_len(&mut self, start: usize) -> Result<()> {
        let len = self.out.len() - start;
        let n = prost::encoding::encoded_len_varint(len as u64);
        if n > 1 {
            self.check(n - 1)?;
            self.out.splice(start..start, std::iter::repeat_n(0, n - 1));
        }
        let mut at = &mut self.out[start - 1..start - 1 + n];
        prost::encoding::encode_varint(len as u64, &mut at);
        Ok(())
    }

    fn field(
        &mut self,
        f: &FieldPlan,
        value: &LuaValue,
        path: &Path<'_>,
        depth: usize,
    ) -> Result<()> {
        match f.shape {
            Shape::Single => match f.ty {
                Type::Message(m) => self.nested(f.number, f.group, value, m, path, depth),
                Type::Scalar(s) => self.single(f.number, value, s, f.presence, path),
            },
            Shape::List { packed } => {
                let LuaValue::Table(t) = value else {
                    return fail(
                        path,
                        format!("expected a table (list), got {}", type_of(value)),
                    );
                };
                let t = freeze::contents(t);
                let len = t.raw_len();
                // At least a byte an item, before any item is read.
                self.check(len)?;
                only_sequence(&t, len, "list", path)?;
                match f.ty {
                    Type::Scalar(s) if packed && s.packable() && len > 0 => {
                        self.put_tag(f.number, LEN);
                        let start = self.begin_len();
                        for i in 1..=len {
                            let item: LuaValue = t.raw_get(i).map_err(|e| lua_error(path, e))?;
                            let item_path = Path::Index(path, i);
                            let n = self.number(&item, s, &item_path)?;
                            self.put_number(n, s);
                        }
                        self.end_len(start)
                    }
                    Type::Scalar(s) => {
                        for i in 1..=len {
                            let item: LuaValue = t.raw_get(i).map_err(|e| lua_error(path, e))?;
                            self.single(f.number, &item, s, true, &Path::Index(path, i))?;
                        }
                        Ok(())
                    }
                    Type::Message(m) => {
                        for i in 1..=len {
                            let item: LuaValue = t.raw_get(i).map_err(|e| lua_error(path, e))?;
                            self.nested(f.number, f.group, &item, m, &Path::Index(path, i), depth)?;
                        }
                        Ok(())
                    }
                }
            }
            Shape::Map {
                key,
                value: value_type,
                key_presence,
                value_presence,
            } => {
                let LuaValue::Table(t) = value else {
                    return fail(
                        path,
                        format!("expected a table (map), got {}", type_of(value)),
                    );
                };
                let mut failure = None;
                let walked = freeze::contents(t).for_each(|k: LuaValue, v: LuaValue| {
                    let kpath = Path::Key(path, &k);
                    let mut entry = || -> Result<()> {
                        self.check(2)?;
                        self.put_tag(f.number, LEN);
                        let start = self.begin_len();
                        self.single(1, &k, key, key_presence, &kpath)?;
                        match value_type {
                            Type::Scalar(s) => self.single(2, &v, s, value_presence, &kpath)?,
                            Type::Message(m) => self.nested(2, false, &v, m, &kpath, depth)?,
                        }
                        self.end_len(start)
                    };
                    entry().map_err(|e| {
                        failure = Some(e);
                        mlua::Error::runtime("")
                    })
                });
                if let Some(e) = failure {
                    return Err(e);
                }
                walked.map_err(|e| lua_error(path, e))
            }
        }
    }

    /// A message value of field `number` (a group when `group`).
    fn nested(
        &mut self,
        number: u32,
        group: bool,
        value: &LuaValue,
        msg: MsgId,
        path: &Path<'_>,
        depth: usize,
    ) -> Result<()> {
        let LuaValue::Table(t) = value else {
            return fail(path, self.not_a_table(msg, value));
        };
        let contents = freeze::contents(t);
        self.check(2)?;
        if group {
            self.put_tag(number, START_GROUP);
            self.message(&contents, msg, path, depth + 1)?;
            self.put_tag(number, END_GROUP);
            return Ok(());
        }
        self.put_tag(number, LEN);
        let start = self.begin_len();
        self.message(&contents, msg, path, depth + 1)?;
        self.end_len(start)
    }

    /// One scalar as field `number`; left out at its default unless `always`.
    fn single(
        &mut self,
        number: u32,
        value: &LuaValue,
        s: Scalar,
        always: bool,
        path: &Path<'_>,
    ) -> Result<()> {
        if let Scalar::String | Scalar::Bytes = s {
            let LuaValue::String(text) = value else {
                return self.wrong(value, s, path);
            };
            let bytes = text.as_bytes();
            if s == Scalar::String && std::str::from_utf8(&bytes).is_err() {
                return fail(path, "not valid UTF-8; use a bytes field for binary data");
            }
            if bytes.is_empty() && !always {
                return Ok(());
            }
            // Its tag, length prefix and bytes, counted before they are copied.
            let len = bytes.len();
            self.check(
                prost::encoding::key_len(number)
                    + prost::encoding::encoded_len_varint(len as u64)
                    + len,
            )?;
            self.put_tag(number, LEN);
            self.put_varint(bytes.len() as u64);
            self.out.extend_from_slice(&bytes);
            return Ok(());
        }
        let n = self.number(value, s, path)?;
        if !always && self.is_default(n, s) {
            return Ok(());
        }
        self.put_tag(number, s.wire_type());
        self.put_number(n, s);
        Ok(())
    }

    pub(super) fn is_default(&self, n: Num, s: Scalar) -> bool {
        match (n, s) {
            (Num::Int(v), Scalar::Enum(e)) => v == i64::from(self.plans.enumeration(e).default),
            (Num::Int(v), _) => v == 0,
            (Num::F32(v), _) => v == 0.0,
            (Num::F64(v), _) => v == 0.0,
            (Num::Bool(b), _) => !b,
        }
    }

    pub(super) fn put_number(&mut self, n: Num, s: Scalar) {
        match (n, s.wire_type()) {
            (Num::F64(v), _) => self.out.extend_from_slice(&v.to_le_bytes()),
            (Num::F32(v), _) => self.out.extend_from_slice(&v.to_le_bytes()),
            (Num::Bool(b), _) => self.out.push(u8::from(b)),
            (Num::Int(v), FIXED64) => self.out.extend_from_slice(&v.to_le_bytes()),
            (Num::Int(v), FIXED32) => self.out.extend_from_slice(&(v as u32).to_le_bytes()),
            (Num::Int(v), _) => {
                let wire = match s {
                    Scalar::Sint32 => {
                        let v = v as i32;
                        u64::from(((v << 1) ^ (v >> 31)) as u32)
                    }
                    Scalar::Sint64 => ((v << 1) ^ (v >> 63)) as u64,
                    Scalar::Uint32 => u64::from(v as u32),
                    // int32 and enums: negative numbers sign-extend to ten bytes.
                    _ => v as u64,
                };
                debug_assert_eq!(s.wire_type(), VARINT);
                self.put_varint(wire);
            }
        }
    }

    fn wrong<T>(&self, value: &LuaValue, s: Scalar, path: &Path<'_>) -> Result<T> {
        fail(
            path,
            format!("expected {}, got {}", self.scalar_name(s), describe(value)),
        )
    }

    fn scalar_name(&self, s: Scalar) -> String {
        match s {
            Scalar::Double => "double",
            Scalar::Float => "float",
            Scalar::Int32 => "int32",
            Scalar::Int64 => "int64",
            Scalar::Uint32 => "uint32",
            Scalar::Uint64 => "uint64",
            Scalar::Sint32 => "sint32",
            Scalar::Sint64 => "sint64",
            Scalar::Fixed32 => "fixed32",
            Scalar::Fixed64 => "fixed64",
            Scalar::Sfixed32 => "sfixed32",
            Scalar::Sfixed64 => "sfixed64",
            Scalar::Bool => "bool",
            Scalar::String => "string",
            Scalar::Bytes => "bytes",
            Scalar::Enum(e) => return self.plans.enumeration(e).desc.full_name().to_owned(),
        }
        .to_owned()
    }

    /// A number, boolean or enum of kind `s` from a Lua value.
    fn number(&self, value: &LuaValue, s: Scalar, path: &Path<'_>) -> Result<Num> {
        let int = || -> Option<i64> {
            match value {
                LuaValue::Integer(n) => Some(*n),
                LuaValue::Number(f) if f.fract() == 0.0 && *f >= -9.2e18 && *f <= 9.2e18 => {
                    Some(*f as i64)
                }
                _ => None,
            }
        };
        let range = |n: i64| fail(path, format!("{n} does not fit {}", self.scalar_name(s)));
        Ok(match s {
            Scalar::Bool => match value {
                LuaValue::Boolean(b) => Num::Bool(*b),
                _ => return self.wrong(value, s, path),
            },
            Scalar::Double => match value {
                LuaValue::Number(f) => Num::F64(*f),
                LuaValue::Integer(n) => Num::F64(*n as f64),
                _ => return self.wrong(value, s, path),
            },
            Scalar::Float => match value {
                LuaValue::Number(f) => Num::F32(*f as f32),
                LuaValue::Integer(n) => Num::F32(*n as f32),
                _ => return self.wrong(value, s, path),
            },
            Scalar::Int32 | Scalar::Sint32 | Scalar::Sfixed32 => {
                let Some(n) = int() else {
                    return self.wrong(value, s, path);
                };
                match i32::try_from(n) {
                    Ok(v) => Num::Int(i64::from(v)),
                    Err(_) => return range(n),
                }
            }
            Scalar::Uint32 | Scalar::Fixed32 => {
                let Some(n) = int() else {
                    return self.wrong(value, s, path);
                };
                match u32::try_from(n) {
                    Ok(v) => Num::Int(i64::from(v)),
                    Err(_) => return range(n),
                }
            }
            Scalar::Int64
            | Scalar::Sint64
            | Scalar::Sfixed64
            | Scalar::Uint64
            | Scalar::Fixed64 => match int() {
                Some(n) => Num::Int(n),
                None => return self.wrong(value, s, path),
            },
            Scalar::Enum(e) => match value {
                LuaValue::String(text) => {
                    let plan = self.plans.enumeration(e);
                    match plan.number(&text.as_bytes()) {
                        Some(n) => Num::Int(i64::from(n)),
                        None => {
                            let name = crate::error::clipped_bytes(&text.as_bytes(), SHOWN_TEXT);
                            return fail(
                                path,
                                format!(
                                    "{} has no value \"{name}\"{}",
                                    plan.desc.full_name(),
                                    did_you_mean(&name, plan.values.iter().map(|(_, n)| &**n))
                                ),
                            );
                        }
                    }
                }
                _ => match int().map(i32::try_from) {
                    Some(Ok(n)) => Num::Int(i64::from(n)),
                    _ => return self.wrong(value, s, path),
                },
            },
            Scalar::String | Scalar::Bytes => return self.wrong(value, s, path),
        })
    }
}

/// Places one key and value of a message table, checking the key names a field and that no
/// field or oneof is given twice.
fn collect(
    plans: &Plans,
    msg: MsgId,
    key: LuaValue,
    value: LuaValue,
    path: &Path<'_>,
    set: &mut SmallVec<[(u16, bool, LuaValue); 8]>,
) -> Result<()> {
    let plan = plans.message(msg);
    let LuaValue::String(key) = key else {
        return fail(
            path,
            format!(
                "{} has a {} key; message keys are field names",
                plan.full_name(),
                type_of(&key)
            ),
        );
    };
    let bytes = key.as_bytes();
    let Some(index) = plan.by_name(&bytes) else {
        let Ok(name) = std::str::from_utf8(&bytes) else {
            return fail(
                path,
                format!("{} has a key that is not UTF-8", plan.full_name()),
            );
        };
        let name = crate::error::clipped(name, SHOWN_TEXT);
        return fail(
            &Path::Field(path, &name),
            no_such_field(
                plan.full_name(),
                &name,
                plan.fields.iter().map(|f| &*f.name),
            ),
        );
    };
    if matches!(value, LuaValue::Nil) {
        return Ok(());
    }
    let f = &plan.fields[usize::from(index)];
    let json = *bytes != *f.name.as_bytes();
    for (other, _, _) in set.iter() {
        let o = &plan.fields[usize::from(*other)];
        if *other == index {
            return fail(
                &Path::Field(path, &f.name),
                format!(
                    "given twice, as \"{}\" and \"{}\"; give it once",
                    f.name,
                    f.desc.json_name()
                ),
            );
        }
        if f.oneof.is_some() && o.oneof == f.oneof {
            let oneof = f.desc.containing_oneof().map(|o| o.name().to_owned());
            return fail(
                path,
                format!(
                    "{} and {} are both set, but they are members of oneof {}: set one of them",
                    o.name,
                    f.name,
                    oneof.unwrap_or_default()
                ),
            );
        }
    }
    set.push((index, json, value));
    Ok(())
}
