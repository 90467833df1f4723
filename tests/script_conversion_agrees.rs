//! Scripts see requests and send replies without a `DynamicMessage` in between: request bytes
//! go straight into Lua tables and reply tables straight to bytes. Both must agree with
//! `DynamicMessage` decoding and encoding, which is the reference:
//!
//! - the same bytes are accepted and refused;
//! - an accepted request reads as the same Lua tables as decoding it and walking the message
//!   (the shape documented in `script::convert`: defaults for unset scalars, `nil` for unset
//!   messages and optional fields, enum names, sequences and tables for lists and maps);
//! - those tables encode back to the message the decoder read (less unknown fields and
//!   extensions, which scripts never see), byte for byte where the reference's encoding is
//!   deterministic (no map with more than one entry).
//!
//! Messages come from the generator shared with `wire_agrees_with_decoder.rs` (every scalar
//! kind, enums with unknown values, nested and recursive messages, maps, oneofs, optional
//! fields, proto2 groups and extensions, packed and unpacked repeated fields, repeats of
//! singular fields, unknown fields of every wire type), mutated or random. Each runs through
//! three layouts of the request type: the default one (slots filled from Rust, tables made
//! by the generated builder), one with no nested message inlined, and one that builds
//! everything in Rust, so every path of the decoder is held to the reference. Two types of
//! numbers only (`wire3.Numbers`, `wire2.Grouped`) and one of scalars with strings and bytes
//! (`wire3.Flat`) have flat layouts, read by the path unary requests and request streams of
//! a flat layout take (`read_cells`, whose slots go straight onto the Lua stack): the same
//! verdict, the same error and the same slots, so the same tables from the builder.

#[path = "common/wire_gen.rs"]
mod wire_gen;

use std::sync::Arc;

use mlua::{Function, Lua, Table, Value as LuaValue};
use proptest::prelude::*;
use prost::Message;
use prost_reflect::{DynamicMessage, Kind, MapKey, MessageDescriptor, ReflectMessage, Value};
use protoserve::codec::Outgoing;
use protoserve::script::convert::{outgoing_from_lua, Conv};
use protoserve::script::decode::{read_cells, Cell, Cells, Decoder, Layout};
use protoserve::script::encode::Encoder;
use protoserve::script::freeze;
use protoserve::script::plan::{MsgId, Plans};
use wire_gen::{message, messages, mutate, pool, put_len, Tape};

/// The reference: a decoded message as the documented Lua shape.
fn reference_table(lua: &Lua, msg: &DynamicMessage) -> mlua::Result<Table> {
    let desc = msg.descriptor();
    let table = lua.create_table()?;
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
        table.raw_set(field.name(), reference_value(lua, &value, &kind)?)?;
    }
    Ok(table)
}

fn reference_value(lua: &Lua, value: &Value, kind: &Kind) -> mlua::Result<LuaValue> {
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
        Value::Message(m) => LuaValue::Table(reference_table(lua, m)?),
        Value::List(items) => {
            let t = lua.create_table()?;
            for (i, item) in items.iter().enumerate() {
                t.raw_set(i + 1, reference_value(lua, item, kind)?)?;
            }
            LuaValue::Table(t)
        }
        Value::Map(entries) => {
            let value_kind = match kind {
                Kind::Message(entry) => entry.map_entry_value_field().kind(),
                other => other.clone(),
            };
            let t = lua.create_table()?;
            for (k, v) in entries {
                let key = match k {
                    MapKey::Bool(b) => LuaValue::Boolean(*b),
                    MapKey::I32(n) => LuaValue::Integer(i64::from(*n)),
                    MapKey::I64(n) => LuaValue::Integer(*n),
                    MapKey::U32(n) => LuaValue::Integer(i64::from(*n)),
                    MapKey::U64(n) => LuaValue::Integer(*n as i64),
                    MapKey::String(s) => LuaValue::String(lua.create_string(s)?),
                };
                t.raw_set(key, reference_value(lua, v, &value_kind)?)?;
            }
            LuaValue::Table(t)
        }
    })
}

/// The two Lua values are the same: same types (integer and float apart), floats bit for bit,
/// tables with the same keys and the same values.
fn same_lua(a: &LuaValue, b: &LuaValue, at: &str) -> Result<(), String> {
    match (a, b) {
        (LuaValue::Integer(x), LuaValue::Integer(y)) if x == y => Ok(()),
        (LuaValue::Number(x), LuaValue::Number(y)) if x.to_bits() == y.to_bits() => Ok(()),
        (LuaValue::Boolean(x), LuaValue::Boolean(y)) if x == y => Ok(()),
        (LuaValue::String(x), LuaValue::String(y)) if x.as_bytes() == y.as_bytes() => Ok(()),
        (LuaValue::Table(x), LuaValue::Table(y)) => {
            let mut count = 0;
            for pair in x.pairs::<LuaValue, LuaValue>() {
                let (k, v) = pair.map_err(|e| e.to_string())?;
                count += 1;
                let other: LuaValue = y.raw_get(k.clone()).map_err(|e| e.to_string())?;
                same_lua(&v, &other, &format!("{at}[{k:?}]"))?;
            }
            let other_count = y.pairs::<LuaValue, LuaValue>().count();
            if count != other_count {
                return Err(format!(
                    "{at}: {count} keys, the reference has {other_count}"
                ));
            }
            Ok(())
        }
        _ => Err(format!("{at}: {a:?}, the reference reads {b:?}")),
    }
}

/// `msg` with only its declared fields (no unknown fields, no extensions), as scripts see it.
fn declared_only(msg: &DynamicMessage) -> DynamicMessage {
    let desc = msg.descriptor();
    let mut out = DynamicMessage::new(desc.clone());
    for field in desc.fields() {
        if msg.has_field(&field) {
            out.set_field(&field, declared_value(&msg.get_field(&field)));
        }
    }
    out
}

fn declared_value(v: &Value) -> Value {
    match v {
        Value::Message(m) => Value::Message(declared_only(m)),
        Value::List(items) => Value::List(items.iter().map(declared_value).collect()),
        Value::Map(entries) => Value::Map(
            entries
                .iter()
                .map(|(k, v)| (k.clone(), declared_value(v)))
                .collect(),
        ),
        // Lua numbers are doubles: a float's signalling NaN comes back quiet, as any
        // f32 → f64 → f32 conversion makes it.
        Value::F32(x) if x.is_nan() => Value::F32(f64::from(*x) as f32),
        other => other.clone(),
    }
}

fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::F32(x), Value::F32(y)) => x.to_bits() == y.to_bits(),
        (Value::F64(x), Value::F64(y)) => x.to_bits() == y.to_bits(),
        (Value::Message(x), Value::Message(y)) => same_message(x, y),
        (Value::List(x), Value::List(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same_value(a, b))
        }
        (Value::Map(x), Value::Map(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_value(v, w)))
        }
        _ => a == b,
    }
}

fn same_message(a: &DynamicMessage, b: &DynamicMessage) -> bool {
    a.descriptor().fields().all(|f| {
        let set = a.has_field(&f);
        set == b.has_field(&f) && (!set || same_value(&a.get_field(&f), &b.get_field(&f)))
    })
}

/// Whether encoding `msg` is deterministic: no map with more than one entry.
fn deterministic(msg: &DynamicMessage) -> bool {
    fn value(v: &Value) -> bool {
        match v {
            Value::Message(m) => deterministic(m),
            Value::List(items) => items.iter().all(value),
            Value::Map(entries) => entries.len() <= 1 && entries.values().all(value),
            _ => true,
        }
    }
    msg.fields().all(|(_, v)| value(v))
}

/// A Lua state with the conversion plans of the fixture's messages, and each message's
/// layouts with their builders.
struct State {
    lua: Lua,
    plans: Arc<Plans>,
    ids: Vec<MsgId>,
    /// Per message: (what the layout is, the layout, its builder).
    layouts: Vec<Vec<(&'static str, Layout, Function)>>,
}

/// The shared generator's messages, the two of numbers only and the flat one.
fn fixture_messages() -> Vec<MessageDescriptor> {
    let pool = pool();
    let mut descs = messages(&pool);
    for name in ["wire3.Numbers", "wire2.Grouped", "wire3.Flat"] {
        descs.push(pool.get_message_by_name(name).expect(name));
    }
    descs
}

/// How many fixture messages the properties draw from.
const MESSAGES: usize = 6;

fn state(descs: &[MessageDescriptor]) -> State {
    let lua = Lua::new();
    let mut plans = Plans::default();
    let ids: Vec<MsgId> = descs.iter().map(|d| plans.add(d)).collect();
    let layouts: Vec<Vec<(&'static str, Layout)>> = ids
        .iter()
        .map(|&id| {
            vec![
                ("default layout", Layout::new(&plans, id)),
                (
                    "nothing nested inlined",
                    Layout::with_limits(&plans, id, 150, 0),
                ),
                ("all built in Rust", Layout::with_limits(&plans, id, 0, 0)),
            ]
        })
        .collect();
    for (desc, l) in descs.iter().zip(&layouts) {
        let flat = ["Numbers", "Grouped", "Flat"].contains(&desc.name());
        assert_eq!(l[0].1.flat, flat, "{} read as cells", desc.full_name());
    }
    let plans = Arc::new(plans);
    lua.set_app_data(Conv::new(plans.clone(), 64 << 20));
    let layouts = layouts
        .into_iter()
        .map(|v| {
            v.into_iter()
                .map(|(what, l)| {
                    let builder = l.compile(&lua, &plans).expect("builder compiles");
                    (what, l, builder)
                })
                .collect()
        })
        .collect();
    State {
        lua,
        plans,
        ids,
        layouts,
    }
}

/// Request bytes as the script would see them, through `layout`.
fn as_script_sees(
    s: &State,
    layout: &Layout,
    builder: &Function,
    bytes: &[u8],
) -> Result<LuaValue, String> {
    let decoder = Decoder::new(&s.lua, &s.plans);
    let mut args = vec![LuaValue::Boolean(true)];
    decoder
        .slots(bytes, layout, &mut args)
        .map_err(|e| format!("{e:?}"))?;
    builder
        .call::<LuaValue>(mlua::MultiValue::from_vec(args))
        .map_err(|e| format!("builder failed: {e}"))
}

/// A flat layout read by the cells path gives the verdict, the error and the slots the Lua
/// value path gives, and so the builder makes the same tables from them.
fn cells_agree(s: &State, layout: &Layout, builder: &Function, bytes: &[u8]) -> Result<(), String> {
    let mut cells: Cells = smallvec::smallvec![Cell::Int(-1); 3];
    let fast = read_cells(&s.plans, bytes, layout, &mut cells);
    let mut slow = vec![LuaValue::Boolean(true)];
    let verdict = Decoder::new(&s.lua, &s.plans).slots(bytes, layout, &mut slow);
    match (fast, verdict) {
        (Err(a), Err(b)) => {
            let (a, b) = (format!("{a:?}"), format!("{b:?}"));
            if a != b {
                return Err(format!(
                    "the cells path refuses with {a}, the Lua value path with {b} for {bytes:02x?}"
                ));
            }
            Ok(())
        }
        (Ok(()), Ok(())) => {
            if cells.len() != layout.slots {
                return Err(format!("{} cells for {} slots", cells.len(), layout.slots));
            }
            let mut args = vec![LuaValue::Boolean(true)];
            for (i, (c, v)) in cells.iter().zip(&slow[1..]).enumerate() {
                let same = match (*c, v) {
                    (Cell::Nil, LuaValue::Nil) => true,
                    (Cell::Bool(a), LuaValue::Boolean(b)) => a == *b,
                    (Cell::Int(a), LuaValue::Integer(b)) => a == *b,
                    (Cell::Float(a), LuaValue::Number(b)) => a.to_bits() == b.to_bits(),
                    (Cell::Str { start, end }, LuaValue::String(b)) => {
                        bytes[start..end] == *b.as_bytes()
                    }
                    _ => false,
                };
                if !same {
                    return Err(format!(
                        "slot {i}: the cells path reads {c:?}, the Lua value path {v:?} for {bytes:02x?}"
                    ));
                }
                args.push(match *c {
                    Cell::Nil => LuaValue::Nil,
                    Cell::Bool(b) => LuaValue::Boolean(b),
                    Cell::Int(i) => LuaValue::Integer(i),
                    Cell::Float(x) => LuaValue::Number(x),
                    Cell::Str { start, end } => LuaValue::String(
                        s.lua
                            .create_string(&bytes[start..end])
                            .map_err(|e| e.to_string())?,
                    ),
                });
            }
            let build = |args: Vec<LuaValue>| {
                builder
                    .call::<LuaValue>(mlua::MultiValue::from_vec(args))
                    .map_err(|e| format!("builder failed: {e}"))
            };
            let (fast, slow) = (build(args)?, build(slow)?);
            same_lua(&fast, &slow, "the cells path's tables")
                .map_err(|e| format!("{e} for {bytes:02x?}"))
        }
        (fast, slow) => Err(format!(
            "the cells path says {fast:?}, the Lua value path {:?} for {bytes:02x?}",
            slow.map(|_| ())
        )),
    }
}

/// The property, for message `which` of the fixture.
fn agree(s: &State, desc: &MessageDescriptor, which: usize, bytes: &[u8]) -> Result<(), String> {
    let reference = DynamicMessage::decode(desc.clone(), bytes);
    for (what, layout, builder) in &s.layouts[which] {
        if layout.flat {
            cells_agree(s, layout, builder, bytes).map_err(|e| format!("({what}) {e}"))?;
        }
        let mine = as_script_sees(s, layout, builder, bytes);
        let (mine, reference) = match (mine, &reference) {
            (Ok(m), Ok(r)) => (m, r),
            (Err(_), Err(_)) => continue,
            (mine, reference) => {
                return Err(format!(
                    "{} ({what}): the script's decoder says {:?}, DynamicMessage says {:?} for {bytes:02x?}",
                    desc.full_name(),
                    mine.map(|_| ()),
                    reference.as_ref().map(|_| ())
                ))
            }
        };
        let expected = reference_table(&s.lua, reference).map_err(|e| e.to_string())?;
        same_lua(&mine, &LuaValue::Table(expected), desc.full_name())
            .map_err(|e| format!("({what}) {e} for {bytes:02x?}"))?;

        // And back to bytes.
        let encoded = match outgoing_from_lua(&s.lua, &mine, s.ids[which]) {
            Ok(Outgoing::Encoded(b)) => b,
            Ok(Outgoing::Message(_)) => return Err("not encoded".into()),
            Err(e) => return Err(format!("({what}) encoding failed: {e} for {bytes:02x?}")),
        };
        let expected = declared_only(reference);
        let back = DynamicMessage::decode(desc.clone(), encoded.clone())
            .map_err(|e| format!("({what}) encoded bytes do not decode: {e}"))?;
        if !same_message(&back, &expected) {
            // Bytes, not `{:?}` of the messages: a deep message's debug text overflows the stack.
            return Err(format!(
                "({what}) encoded back as {:02x?}, expected {:02x?}, from {bytes:02x?}",
                encoded.as_ref(),
                expected.encode_to_vec()
            ));
        }
        if deterministic(&expected) && encoded.as_ref() != expected.encode_to_vec().as_slice() {
            return Err(format!(
                "({what}) encoded as {:02x?}, DynamicMessage encodes {:02x?}, from {bytes:02x?}",
                encoded.as_ref(),
                expected.encode_to_vec()
            ));
        }
    }
    Ok(())
}

thread_local! {
    static STATE: (Vec<MessageDescriptor>, State) = {
        let descs = fixture_messages();
        let s = state(&descs);
        (descs, s)
    };
}

fn check(which: usize, bytes: &[u8]) -> Result<(), String> {
    STATE.with(|(descs, s)| agree(s, &descs[which], which, bytes))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn generated_messages_convert_like_dynamic_message(which in 0usize..MESSAGES, tape in prop::collection::vec(any::<u64>(), 0..300)) {
        let descs = STATE.with(|(d, _)| d.clone());
        let mut t = Tape { t: &tape, i: 0 };
        let bytes = message(&descs[which], &mut t, 0);
        check(which, &bytes).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn mutated_messages_get_the_same_verdict_and_tables(which in 0usize..MESSAGES, tape in prop::collection::vec(any::<u64>(), 0..300)) {
        let descs = STATE.with(|(d, _)| d.clone());
        let mut t = Tape { t: &tape, i: 0 };
        let bytes = message(&descs[which], &mut t, 0);
        let bytes = mutate(bytes, &mut t);
        check(which, &bytes).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn random_bytes_get_the_same_verdict(which in 0usize..MESSAGES, bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        check(which, &bytes).map_err(TestCaseError::fail)?;
    }
}

/// Cases worth keeping whatever the generator does.
#[test]
fn known_edge_cases_convert_like_dynamic_message() {
    let all = 0;
    let legacy = 2;
    let flat = 5;
    let cases: &[(usize, &[u8])] = &[
        // Nothing at all: every default.
        (all, &[]),
        (legacy, &[]),
        // A float holding a signalling NaN: it comes back a quiet NaN with the same payload.
        (all, &[0x5d, 0x01, 0x00, 0x80, 0xff]),
        // a = "x", then n = 5: the oneof keeps n.
        (all, &[0x9a, 0x01, 1, b'x', 0xa0, 0x01, 5]),
        // m = {x: 1}, n = 2, m = {label: "l"}: m was cleared, so m.x reads 0.
        (
            all,
            &[
                0xaa, 0x01, 2, 0x08, 1, 0xa0, 0x01, 2, 0xaa, 0x01, 3, 0x12, 1, b'l',
            ],
        ),
        // m = {x: 1}, m = {label: "l"}: occurrences of a message merge.
        (all, &[0xaa, 0x01, 2, 0x08, 1, 0xaa, 0x01, 3, 0x12, 1, b'l']),
        // inner = {z: 3}, inner = {raw: ""}: the inner oneof keeps raw.
        (all, &[0x8a, 0x01, 2, 0x20, 3, 0x8a, 0x01, 2, 0x2a, 0]),
        // inners = [{x: 1}], then inner = {next = {x = 2}}.
        (
            all,
            &[0xd2, 0x01, 2, 0x08, 1, 0x8a, 0x01, 4, 0x1a, 2, 0x08, 2],
        ),
        // by_id = {7: {x: 1}}, one entry sent as two value occurrences that merge, then the
        // same key again replacing it.
        (
            all,
            &[
                0xe2, 0x01, 8, 0x08, 7, 0x12, 2, 0x08, 1, 0x12, 0, 0xe2, 0x01, 6, 0x08, 7, 0x12, 2,
                0x12, 0,
            ],
        ),
        // A map entry without key or value: both defaults.
        (all, &[0xda, 0x01, 0]),
        // A map field sent with wire type 0: the decoder reads an entry anyway.
        (all, &[0xd8, 0x01, 2, 0x10, 7]),
        // Packed and unpacked occurrences of one repeated field.
        (all, &[0xb2, 0x01, 2, 1, 2, 0xb0, 0x01, 3]),
        // Enum values known and unknown, singular and repeated.
        (all, &[0x80, 0x01, 2, 0xea, 0x01, 3, 1, 9, 0]),
        // Negative int32 (ten-byte varint) and sint32.
        (
            all,
            &[
                0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 0x28, 3,
            ],
        ),
        // optional opt = 0 is present; i32 = 0 sent explicitly is a default.
        (all, &[0x90, 0x01, 0, 0x08, 0]),
        // An unknown group (field 90) with a nested unknown group inside.
        (
            all,
            &[
                0xd3, 0x05, 0xdb, 0x05, 0x08, 1, 0xdc, 0x05, 0xd4, 0x05, 0x08, 9,
            ],
        ),
        // An unknown group ended by another field's end key.
        (all, &[0xd3, 0x05, 0xdc, 0x05]),
        // A key over 32 bits.
        (all, &[0x80, 0x80, 0x80, 0x80, 0x10, 0]),
        // A string that is not UTF-8.
        (all, &[0x72, 1, 0xff]),
        // A proto2 group field, a repeated group and a member read through it.
        (legacy, &[0x1b, 0x22, 1, b'u', 0x28, 4, 0x1c, 0x08, 3]),
        (legacy, &[0x33, 0x38, 1, 0x34, 0x33, 0x34]),
        // Extensions: well-formed ones are read (and not shown), bad ones refused.
        (legacy, &[0xa0, 0x06, 5, 0xaa, 0x06, 1, b'e', 0xb0, 0x06, 3]),
        (legacy, &[0xa5, 0x06, 1, 2, 3, 4]),
        (legacy, &[0xaa, 0x06, 1, 0xff]),
        // A closed enum with a value it does not declare.
        (legacy, &[0x50, 9]),
        // A recursive child.
        (legacy, &[0x5a, 4, 0x5a, 2, 0x08, 1]),
        // Strings that are not UTF-8, at the top, in a nested message and in a oneof; bytes
        // that are not are fine.
        (flat, &[0x0a, 1, 0xff]),
        (flat, &[0x42, 3, 0x0a, 1, 0xff]),
        (flat, &[0x4a, 2, 0xc3, 0x28]),
        (flat, &[0x12, 1, 0xff, 0x5a, 1, 0xfe]),
        // s = "hi", then data: the oneof keeps data; a repeated string: the last one.
        (flat, &[0x4a, 2, b'h', b'i', 0x5a, 1, 0xff]),
        (flat, &[0x0a, 2, 0xc3, 0xa9, 0x0a, 1, b'x', 0x3a, 0]),
        // other = {text: "t"}, then s: other is cleared.
        (flat, &[0x52, 3, 0x0a, 1, b't', 0x4a, 0]),
    ];
    for (which, bytes) in cases {
        check(*which, bytes).unwrap();
    }
}

/// Nesting right at the decoder's limit and one past it.
#[test]
fn nesting_limit_is_the_decoders() {
    let inner = 1;
    for depth in [99usize, 100, 101] {
        let mut body = vec![0x08, 1];
        for _ in 0..depth {
            let mut outer = vec![0x1a];
            put_len(&mut outer, &body);
            body = outer;
        }
        check(inner, &body).unwrap();
        let mut body = vec![0xd3, 0x05, 0xd4, 0x05];
        for _ in 0..depth {
            let mut outer = vec![0x1a];
            put_len(&mut outer, &body);
            body = outer;
        }
        check(inner, &body).unwrap();
    }
}

/// Scripts may spell fields by their JSON names and give integers as floats; the encoding is
/// the same as the field names' and integers'.
#[test]
fn json_names_and_integral_floats_encode_alike() {
    STATE.with(|(descs, s)| {
        let lua = &s.lua;
        let all = s.ids[0];
        let a: LuaValue = lua
            .load("return { packed_i32 = {1, 2}, sf64 = 3, fl = 1.5, color = 'GREEN', inner = { x = 4 } }")
            .eval()
            .unwrap();
        let b: LuaValue = lua
            .load("return { packedI32 = {1.0, 2}, sf64 = 3.0, fl = 1.5, color = 2, inner = { x = 4.0 } }")
            .eval()
            .unwrap();
        let (Ok(Outgoing::Encoded(x)), Ok(Outgoing::Encoded(y))) = (
            outgoing_from_lua(lua, &a, all),
            outgoing_from_lua(lua, &b, all),
        ) else {
            panic!("not encoded");
        };
        assert_eq!(x, y);
        let back = DynamicMessage::decode(descs[0].clone(), x).unwrap();
        assert_eq!(back.get_field_by_name("sf64").unwrap().as_i64(), Some(3));
        assert_eq!(back.get_field_by_name("color").unwrap().as_enum_number(), Some(2));
    });
}

/// A value a script might put where a field of `kind` goes: mostly right, sometimes of another
/// type (a number as a string among them), out of range, a float for an integer, an enum's
/// name or a name it lacks.
fn script_value(lua: &Lua, kind: &Kind, t: &mut Tape, depth: usize) -> LuaValue {
    if t.chance(4) {
        return match t.below(7) {
            0 => LuaValue::String(lua.create_string("x").unwrap()),
            1 => LuaValue::Table(lua.create_table().unwrap()),
            2 => LuaValue::Boolean(true),
            // Numbers as strings, which no numeric field takes.
            3 => LuaValue::String(lua.create_string("12").unwrap()),
            4 => LuaValue::String(lua.create_string("1.5").unwrap()),
            // Integral floats at the edges of the integer kinds.
            5 => LuaValue::Number(
                [
                    2f64.powi(31),
                    -2f64.powi(31),
                    2f64.powi(32),
                    2f64.powi(63),
                    -0.0,
                ][t.below(5) as usize],
            ),
            _ => LuaValue::Integer(7),
        };
    }
    let int = |t: &mut Tape| -> LuaValue {
        match t.below(8) {
            0 => LuaValue::Integer(0),
            1 => LuaValue::Integer(-1),
            2 => LuaValue::Integer(i64::from(i32::MAX) + 1),
            3 => LuaValue::Integer(i64::from(u32::MAX)),
            4 => LuaValue::Integer(t.next() as i64),
            5 => LuaValue::Number((t.below(1000) as f64) - 500.0),
            6 => LuaValue::Number(1.5),
            _ => LuaValue::Integer(t.below(300) as i64),
        }
    };
    match kind {
        Kind::Message(m) if depth < 3 => LuaValue::Table(script_table(lua, m, t, depth + 1)),
        Kind::Message(_) => LuaValue::Table(lua.create_table().unwrap()),
        Kind::Enum(e) => match t.below(4) {
            0 => {
                let values: Vec<_> = e.values().collect();
                let v = &values[t.below(values.len() as u64) as usize];
                LuaValue::String(lua.create_string(v.name()).unwrap())
            }
            1 => LuaValue::String(lua.create_string("NO_SUCH_VALUE").unwrap()),
            _ => int(t),
        },
        Kind::String | Kind::Bytes => {
            let mut bytes: Vec<u8> = (0..t.below(12)).map(|_| b'a' + t.below(26) as u8).collect();
            if t.chance(10) {
                bytes.push(0xff);
            }
            LuaValue::String(lua.create_string(&bytes).unwrap())
        }
        Kind::Bool => LuaValue::Boolean(t.chance(50)),
        Kind::Double | Kind::Float => match t.below(3) {
            0 => LuaValue::Number(f64::from_bits(t.next())),
            1 => LuaValue::Number((t.below(2000) as f64) / 8.0 - 100.0),
            _ => LuaValue::Integer(t.next() as i64 >> t.below(64)),
        },
        _ => int(t),
    }
}

/// `table` as scripts may hold it: frozen now and then (its contents moved behind a metatable
/// the way `script::freeze` leaves data and what scripts build while loading), or with a
/// metatable of its own that encoding must not consult.
fn dressed(lua: &Lua, table: Table, t: &mut Tape) -> Table {
    match t.below(8) {
        0 => {
            let frozen = lua.create_table().unwrap();
            let mt = lua.create_table().unwrap();
            mt.raw_set(freeze::frozen_key(), table).unwrap();
            frozen.set_metatable(Some(mt)).unwrap();
            frozen
        }
        1 => {
            let mt = lua.create_table().unwrap();
            let other = lua.create_table().unwrap();
            other.raw_set("i32", 5).unwrap();
            mt.raw_set("__index", other).unwrap();
            table.set_metatable(Some(mt)).unwrap();
            table
        }
        _ => table,
    }
}

/// A table a script might return as a `desc`: fields by name or JSON name, lists with and
/// without holes or stray keys, maps with keys of every type, and now and then a key that
/// names no field.
fn script_table(lua: &Lua, desc: &MessageDescriptor, t: &mut Tape, depth: usize) -> Table {
    let table = script_fields(lua, desc, t, depth);
    // Not the reply itself: a frozen reply is encoded once and kept by its address, which
    // only holds for tables the freezer keeps alive.
    if depth == 0 {
        return table;
    }
    dressed(lua, table, t)
}

fn script_fields(lua: &Lua, desc: &MessageDescriptor, t: &mut Tape, depth: usize) -> Table {
    let table = lua.create_table().unwrap();
    for field in desc.fields() {
        if !t.chance(40) {
            continue;
        }
        let key = if t.chance(15) {
            field.json_name().to_owned()
        } else {
            field.name().to_owned()
        };
        let value = if field.is_map() {
            let entry = field.kind().as_message().unwrap().clone();
            let (kf, vf) = (entry.map_entry_key_field(), entry.map_entry_value_field());
            let map = lua.create_table().unwrap();
            for _ in 0..t.below(4) {
                let k = script_value(lua, &kf.kind(), t, depth);
                if matches!(&k, LuaValue::Number(f) if f.is_nan()) {
                    continue;
                }
                map.raw_set(k, script_value(lua, &vf.kind(), t, depth))
                    .unwrap();
            }
            LuaValue::Table(dressed(lua, map, t))
        } else if field.is_list() {
            let list = lua.create_table().unwrap();
            let n = t.below(5);
            for i in 1..=n {
                // Now and then the first item again: one table in several places.
                let item = if i > 1 && t.chance(15) {
                    list.raw_get(1).unwrap()
                } else {
                    script_value(lua, &field.kind(), t, depth)
                };
                list.raw_set(i, item).unwrap();
            }
            match t.below(12) {
                0 => list.raw_set(n + 2, 1).unwrap(),
                1 => list.raw_set("x", 1).unwrap(),
                _ => {}
            }
            LuaValue::Table(dressed(lua, list, t))
        } else {
            script_value(lua, &field.kind(), t, depth)
        };
        table.raw_set(key, value).unwrap();
    }
    match t.below(30) {
        0 => table.raw_set("no_such_field", 1).unwrap(),
        1 => table.raw_set(1, 1).unwrap(),
        _ => {}
    }
    table
}

thread_local! {
    /// The fixtures again, with replies limited to 200 bytes, so the limit is met often.
    static SMALL: State = {
        let s = state(&fixture_messages());
        s.lua.set_app_data(Conv::new(s.plans.clone(), SMALL_LIMIT));
        s
    };
}

const SMALL_LIMIT: usize = 200;

/// A reply encodes to the same bytes, or fails with the same message, whichever path takes it
/// (`outgoing_from_lua` reads common replies straight off the Lua stack and hands anything
/// else to the encoder that reads through handles, which `Encoder::reply` runs alone).
fn encoders_agree(s: &State, limit: usize, which: usize, value: &LuaValue) -> Result<(), String> {
    let plain = Encoder::new(&s.plans, limit).reply(value, s.ids[which]);
    let taken = outgoing_from_lua(&s.lua, value, s.ids[which]);
    match (plain, taken) {
        (Ok(a), Ok(Outgoing::Encoded(b))) if a == b.as_ref() => Ok(()),
        (Err(a), Err(b)) if a.to_string() == b.to_string() => Ok(()),
        (a, b) => Err(format!(
            "the plain encoder gave {:?}, outgoing_from_lua {:?}",
            a.map_err(|e| e.to_string()),
            b.map_err(|e| e.to_string())
        )),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn script_replies_encode_alike_on_both_paths(which in 0usize..MESSAGES, small in any::<bool>(), tape in prop::collection::vec(any::<u64>(), 0..200)) {
        let mut t = Tape { t: &tape, i: 0 };
        let desc = STATE.with(|(d, _)| d[which].clone());
        let mut run = |s: &State, limit: usize| {
            let value = LuaValue::Table(script_table(&s.lua, &desc, &mut t, 0));
            encoders_agree(s, limit, which, &value)
        };
        let outcome = if small {
            SMALL.with(|s| run(s, SMALL_LIMIT))
        } else {
            STATE.with(|(_, s)| run(s, 64 << 20))
        };
        outcome.map_err(TestCaseError::fail)?;
    }
}

/// Replies a script may write that the random tables rarely or never hold: numbers given as
/// strings, floats at the edges of each integer kind, tables shared by several fields,
/// nesting at and past the limit, lists and maps at the size limit's boundary, metatables
/// on nested tables. Each encodes alike on both paths, at both size limits.
#[test]
fn unusual_replies_encode_alike_on_both_paths() {
    let (all, inner, legacy) = (0, 1, 2);
    let mut cases: Vec<(usize, String)> = [
        (all, "{ i32 = '12' }"),
        (all, "{ s = 12 }"),
        (all, "{ db = '1.5' }"),
        (all, "{ i32 = 2^31 }"),
        (all, "{ i32 = -2^31 }"),
        (all, "{ i32 = -0.0, db = -0.0, fl = -0.0 }"),
        (all, "{ fl = 1e40, db = 1e308 }"),
        (all, "{ fl = 16777217, db = math.maxinteger }"),
        (all, "{ fl = 0/0 }"),
        (all, "{ db = 1/0, fl = -1/0 }"),
        (all, "{ i64 = 2^63 }"),
        (all, "{ i64 = 9.2e18, u64 = -9.2e18 }"),
        (all, "{ i64 = math.mininteger, s64 = math.mininteger, sf64 = math.maxinteger }"),
        (all, "{ u64 = -1, f64 = -1 }"),
        (all, "{ u32 = 4294967296 }"),
        (all, "{ u32 = 4294967295.0, f32 = 0.0 }"),
        (all, "{ s32 = -2147483648, sf32 = -1 }"),
        (all, "{ b = 0 }"),
        (all, "{ b = false, s = '', by = '' }"),
        (all, "{ color = 'DARK' }"),
        (all, "{ color = -1.0 }"),
        (all, "{ color = 2^31 }"),
        (all, "{ color = 'COLOR_UNSPECIFIED', opt = 0 }"),
        (all, "{ colors = { 'RED', 1, -1, 'DARK', 0 } }"),
        (all, "{ colors = { 'RED', 'NOPE' } }"),
        (all, "{ packed_i32 = {} , unpacked_i32 = {}, names = {} }"),
        (all, "{ packed_db = { 1, 2.5, 1e308, -0.0 } }"),
        (all, "{ packed_i32 = { 1, 2.0, 3.5 } }"),
        (all, "{ names = { 'a', nil, 'c' } }"),
        (all, "{ names = { 'a', n = 1 } }"),
        (all, "{ names = { 'a', [2.0] = 'b' } }"),
        (all, "{ inners = { {}, 5 } }"),
        (all, "{ inners = { x = 1 } }"),
        (all, "{ a = 'x', n = 1 }"),
        (all, "{ a = '' }"),
        (all, "{ n = 0 }"),
        (all, "{ m = {} }"),
        (all, "{ m = { z = 0 } }"),
        (all, "{ inner = { z = 1, raw = 'r' } }"),
        (all, "{ counts = { [1.0] = 2 } }"),
        (all, "{ counts = { a = 1.0, [''] = 0 } }"),
        (all, "{ counts = { a = '1' } }"),
        (all, "{ by_id = { [2^53] = {}, [-1] = { x = 1 } } }"),
        (all, "{ by_id = { [1.5] = {} } }"),
        (all, "{ by_id = { x = {} } }"),
        (all, "{ by_id = { [1] = 5 } }"),
        (all, "{ by_id = { [true] = {} } }"),
        (all, "local x = { x = 1, label = 'l' } return { inners = { x, x, x }, inner = x, m = x }"),
        (all, "local x = { 1, 2, 3 } return { packed_i32 = x, unpacked_i32 = x, zz = x }"),
        (all, "return { inner = setmetatable({ x = 1 }, { __index = { label = 'no' } }) }"),
        (all, "return { names = setmetatable({}, { __len = function() return 3 end, __index = function() return 'x' end }) }"),
        (all, "return { counts = setmetatable({}, { __pairs = function() return next, { a = 1 } end }) }"),
        (all, "return { [setmetatable({}, { __tostring = function() return 'i32' end })] = 1 }"),
        (all, "return { s = setmetatable({}, { __tostring = function() return 'x' end }) }"),
        (all, "return { i32 = coroutine.create(function() end) }"),
        (all, "return { inner = { x = 1, next = { x = 2, next = { label = '\\255' } } } }"),
        (inner, "local t = {} t.next = t return t"),
        (legacy, "{ result = { url = 'u', rank = 0 }, item = { { n = 1 }, {}, { n = 0 } } }"),
        (legacy, "{ Result = { url = 'u' } }"),
        (legacy, "{ item = { n = 1 } }"),
        (legacy, "{ id = 7, name = 'anon', color = 'BLUE' }"),
        (legacy, "{ id = 0, name = '', color = 'RED', nums = { 1 }, packed_nums = { -1 } }"),
        (legacy, "{ color = 0 }"),
        (legacy, "{ child = { child = { child = { id = 1 } } } }"),
    ]
    .iter()
    .map(|(w, code)| {
        let code = if code.starts_with('{') {
            format!("return {code}")
        } else {
            (*code).to_owned()
        };
        (*w, code)
    })
    .collect();
    // Nesting just under, at and past the limit.
    for depth in [98, 99, 100, 101, 102] {
        cases.push((
            inner,
            format!("local t = {{ x = 1 }} for i = 1, {depth} do t = {{ next = t, x = i }} end return t"),
        ));
        cases.push((
            all,
            format!("local t = {{}} for i = 1, {depth} do t = {{ next = t }} end return {{ by_id = {{ [1] = t }} }}"),
        ));
    }
    // Sizes around the small limit: a string, a packed list, a map.
    for n in 180..=205 {
        cases.push((all, format!("return {{ s = string.rep('x', {n}) }}")));
        cases.push((
            all,
            format!("local l = {{}} for i = 1, {n} do l[i] = 1 end return {{ packed_i32 = l }}"),
        ));
        cases.push((
            all,
            format!("local l = {{}} for i = 1, {n} do l[i] = 1 end return {{ unpacked_i32 = l }}"),
        ));
        cases.push((all, format!("local l = {{}} for i = 1, {n} // 8 do l[i] = 0.5 end return {{ packed_db = l, i32 = {n} }}")));
        cases.push((
            all,
            format!(
                "local m = {{}} for i = 1, {n} // 6 do m['k' .. i] = i end return {{ counts = m }}"
            ),
        ));
    }
    let mut failures = Vec::new();
    for (which, code) in &cases {
        let mut one = |s: &State, limit: usize| {
            let value: LuaValue = s.lua.load(code.as_str()).eval().unwrap();
            if let Err(e) = encoders_agree(s, limit, *which, &value) {
                failures.push(format!("{code} (limit {limit}): {e}"));
            }
        };
        STATE.with(|(_, s)| one(s, 64 << 20));
        SMALL.with(|s| one(s, SMALL_LIMIT));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
