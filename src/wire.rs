//! Reading a request's protobuf bytes directly, as far as a handler needs them.
//!
//! A `reply` that only interpolates a few scalar fields, or an `echo`, has no use for a fully
//! built `DynamicMessage`: [`validate`] checks the bytes are a well-formed message of the input
//! type (so bad requests still get INVALID_ARGUMENT) without allocating, and [`find`] picks one
//! field's value out by field numbers resolved at startup.

use prost::encoding::decode_varint;
use prost_reflect::{Kind, MessageDescriptor, Value};

/// Deepest nesting accepted, as protobuf implementations usually do.
const MAX_DEPTH: u32 = 100;

/// One field's raw value.
#[derive(Debug, Clone, Copy)]
pub enum Raw<'a> {
    Varint(u64),
    Fixed64(u64),
    Fixed32(u32),
    Len(&'a [u8]),
}

/// Reads one field (key and value) off the front of `buf`.
fn next_field<'a>(buf: &mut &'a [u8]) -> Result<(u32, Raw<'a>), String> {
    let key = decode_varint(buf).map_err(|e| e.to_string())?;
    let number = u32::try_from(key >> 3).map_err(|_| "field number out of range".to_owned())?;
    if number == 0 {
        return Err("field number 0".into());
    }
    let raw = match key & 7 {
        0 => Raw::Varint(decode_varint(buf).map_err(|e| e.to_string())?),
        1 => Raw::Fixed64(u64::from_le_bytes(
            take(buf, 8)?.try_into().map_err(|_| "short fixed64")?,
        )),
        5 => Raw::Fixed32(u32::from_le_bytes(
            take(buf, 4)?.try_into().map_err(|_| "short fixed32")?,
        )),
        2 => {
            let len = decode_varint(buf).map_err(|e| e.to_string())?;
            let len = usize::try_from(len).map_err(|_| "length out of range".to_owned())?;
            Raw::Len(take(buf, len)?)
        }
        3 | 4 => {
            return Err(format!(
                "field {number} uses groups, which proto3 does not have"
            ))
        }
        other => return Err(format!("field {number} has invalid wire type {other}")),
    };
    Ok((number, raw))
}

fn take<'a>(buf: &mut &'a [u8], n: usize) -> Result<&'a [u8], String> {
    if buf.len() < n {
        return Err("the message is truncated".into());
    }
    let (head, rest) = buf.split_at(n);
    *buf = rest;
    Ok(head)
}

/// Checks `buf` is a well-formed message of type `desc`: structure, wire types of known
/// fields, UTF-8 of strings, nested messages. Unknown fields are skipped, as decoders do.
pub fn validate(buf: &[u8], desc: &MessageDescriptor) -> Result<(), String> {
    validate_at(buf, desc, 0)
}

fn validate_at(mut buf: &[u8], desc: &MessageDescriptor, depth: u32) -> Result<(), String> {
    if depth > MAX_DEPTH {
        return Err("the message is nested too deeply".into());
    }
    while !buf.is_empty() {
        let (number, raw) = next_field(&mut buf)?;
        let Some(field) = desc.get_field(number) else {
            continue;
        };
        let kind = field.kind();
        match (raw, &kind) {
            (Raw::Len(bytes), Kind::Message(m)) => validate_at(bytes, m, depth + 1)?,
            (Raw::Len(bytes), Kind::String) => {
                std::str::from_utf8(bytes)
                    .map_err(|_| format!("field {} is not valid UTF-8", field.name()))?;
            }
            (Raw::Len(_), Kind::Bytes) => {}
            // Packed repeated scalars.
            (Raw::Len(_), _) if field.is_list() => {}
            (Raw::Varint(_), k) if is_varint(k) => {}
            (Raw::Fixed64(_), Kind::Fixed64 | Kind::Sfixed64 | Kind::Double) => {}
            (Raw::Fixed32(_), Kind::Fixed32 | Kind::Sfixed32 | Kind::Float) => {}
            _ => return Err(format!("field {} has the wrong wire type", field.name())),
        }
    }
    Ok(())
}

fn is_varint(kind: &Kind) -> bool {
    matches!(
        kind,
        Kind::Int32
            | Kind::Int64
            | Kind::Uint32
            | Kind::Uint64
            | Kind::Sint32
            | Kind::Sint64
            | Kind::Bool
            | Kind::Enum(_)
    )
}

/// The value of the field at `path` (field numbers, outermost first), last occurrence wins,
/// as when a decoder merges repeated occurrences. `buf` must have passed [`validate`].
pub fn find<'a>(buf: &'a [u8], path: &[u32]) -> Option<Raw<'a>> {
    let (first, rest) = path.split_first()?;
    let mut found = None;
    let mut b = buf;
    while !b.is_empty() {
        let (number, raw) = next_field(&mut b).ok()?;
        if number != *first {
            continue;
        }
        if rest.is_empty() {
            found = Some(raw);
        } else if let Raw::Len(inner) = raw {
            if let Some(v) = find(inner, rest) {
                found = Some(v);
            }
        }
    }
    found
}

/// A raw scalar as a typed value of `kind` (not for strings, bytes or messages).
pub fn scalar(raw: Raw<'_>, kind: &Kind) -> Option<Value> {
    Some(match (raw, kind) {
        (Raw::Varint(v), Kind::Int32) => Value::I32(v as i32),
        (Raw::Varint(v), Kind::Int64) => Value::I64(v as i64),
        (Raw::Varint(v), Kind::Uint32) => Value::U32(v as u32),
        (Raw::Varint(v), Kind::Uint64) => Value::U64(v),
        (Raw::Varint(v), Kind::Sint32) => {
            let v = v as u32;
            Value::I32(((v >> 1) as i32) ^ -((v & 1) as i32))
        }
        (Raw::Varint(v), Kind::Sint64) => Value::I64(((v >> 1) as i64) ^ -((v & 1) as i64)),
        (Raw::Varint(v), Kind::Bool) => Value::Bool(v != 0),
        (Raw::Varint(v), Kind::Enum(_)) => Value::EnumNumber(v as i32),
        (Raw::Fixed64(v), Kind::Fixed64) => Value::U64(v),
        (Raw::Fixed64(v), Kind::Sfixed64) => Value::I64(v as i64),
        (Raw::Fixed64(v), Kind::Double) => Value::F64(f64::from_bits(v)),
        (Raw::Fixed32(v), Kind::Fixed32) => Value::U32(v),
        (Raw::Fixed32(v), Kind::Sfixed32) => Value::I32(v as i32),
        (Raw::Fixed32(v), Kind::Float) => Value::F32(f32::from_bits(v)),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_last_occurrence_through_nested_messages() {
        // field 1 = "a", field 2 = {field 1 = 5}, field 1 = "b", field 2 = {field 1 = 7}
        let buf = [
            0x0a, 1, b'a', 0x12, 2, 0x08, 5, 0x0a, 1, b'b', 0x12, 2, 0x08, 7,
        ];
        assert!(matches!(find(&buf, &[1]), Some(Raw::Len(b"b"))));
        assert!(matches!(find(&buf, &[2, 1]), Some(Raw::Varint(7))));
        assert!(find(&buf, &[3]).is_none());
    }

    #[test]
    fn zigzag_and_fixed_scalars() {
        assert_eq!(scalar(Raw::Varint(3), &Kind::Sint32), Some(Value::I32(-2)));
        assert_eq!(scalar(Raw::Varint(4), &Kind::Sint64), Some(Value::I64(2)));
        assert_eq!(
            scalar(Raw::Varint(u64::MAX), &Kind::Int32),
            Some(Value::I32(-1))
        );
        assert_eq!(
            scalar(Raw::Fixed32(1.5f32.to_bits()), &Kind::Float),
            Some(Value::F32(1.5))
        );
    }
}
