//! Protobuf scalar kinds grouped the way values are: `int32`, `sint32` and `sfixed32` differ
//! on the wire but are all `Value::I32` once decoded. Templates, rules and map keys ask the
//! same questions of a kind (same value type? a number? which variant?), answered here once.

use prost_reflect::{EnumDescriptor, Kind, MapKey, Syntax, Value};

/// The [`Value`] variant a scalar kind decodes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueClass {
    I32,
    I64,
    U32,
    U64,
    F32,
    F64,
    Bool,
    String,
    Bytes,
}

impl ValueClass {
    /// `None` for messages and enums, which are compared by their full names instead.
    pub fn of(kind: &Kind) -> Option<Self> {
        Some(match kind {
            Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => Self::I32,
            Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => Self::I64,
            Kind::Uint32 | Kind::Fixed32 => Self::U32,
            Kind::Uint64 | Kind::Fixed64 => Self::U64,
            Kind::Float => Self::F32,
            Kind::Double => Self::F64,
            Kind::Bool => Self::Bool,
            Kind::String => Self::String,
            Kind::Bytes => Self::Bytes,
            Kind::Message(_) | Kind::Enum(_) => return None,
        })
    }

    pub fn is_number(self) -> bool {
        matches!(
            self,
            Self::I32 | Self::I64 | Self::U32 | Self::U64 | Self::F32 | Self::F64
        )
    }
}

/// True for the integer and floating-point kinds.
pub fn is_number(kind: &Kind) -> bool {
    ValueClass::of(kind).is_some_and(ValueClass::is_number)
}

/// Whether values of `a` can be stored in a field of kind `b` as they are.
pub fn same_kind(a: &Kind, b: &Kind) -> bool {
    match (a, b) {
        (Kind::Message(x), Kind::Message(y)) => x.full_name() == y.full_name(),
        (Kind::Enum(x), Kind::Enum(y)) => x.full_name() == y.full_name(),
        (x, y) => ValueClass::of(x).is_some() && ValueClass::of(x) == ValueClass::of(y),
    }
}

/// A map key of `kind` from its JSON text (JSON object keys are always strings).
pub fn map_key(kind: &Kind, text: &str) -> Option<MapKey> {
    Some(match ValueClass::of(kind)? {
        ValueClass::String => MapKey::String(text.to_owned()),
        ValueClass::Bool => MapKey::Bool(text.parse().ok()?),
        ValueClass::I32 => MapKey::I32(text.parse().ok()?),
        ValueClass::I64 => MapKey::I64(text.parse().ok()?),
        ValueClass::U32 => MapKey::U32(text.parse().ok()?),
        ValueClass::U64 => MapKey::U64(text.parse().ok()?),
        _ => return None,
    })
}

/// A number converted to a field of kind `to`, when it fits exactly (floats may round).
pub fn convert_number(v: &Value, to: &Kind) -> Option<Value> {
    let as_i128 = match v {
        Value::I32(n) => Some(i128::from(*n)),
        Value::I64(n) => Some(i128::from(*n)),
        Value::U32(n) => Some(i128::from(*n)),
        Value::U64(n) => Some(i128::from(*n)),
        _ => None,
    };
    let as_f64 = match v {
        Value::F32(n) => f64::from(*n),
        Value::F64(n) => *n,
        _ => as_i128? as f64,
    };
    let int =
        as_i128.or_else(|| (as_f64.fract() == 0.0 && as_f64.is_finite()).then_some(as_f64 as i128));
    Some(match ValueClass::of(to)? {
        ValueClass::I32 => Value::I32(i32::try_from(int?).ok()?),
        ValueClass::I64 => Value::I64(i64::try_from(int?).ok()?),
        ValueClass::U32 => Value::U32(u32::try_from(int?).ok()?),
        ValueClass::U64 => Value::U64(u64::try_from(int?).ok()?),
        ValueClass::F32 => Value::F32(as_f64 as f32),
        ValueClass::F64 => Value::F64(as_f64),
        ValueClass::Bool | ValueClass::String | ValueClass::Bytes => return None,
    })
}

/// True for a closed enum, which has only the values it declares (a parser keeps any other
/// number among the unknown fields, so the field reads as unset): every enum of a proto2 file,
/// and one of an editions file whose resolved `features.enum_type` is `CLOSED` (such a file is
/// served as proto3, with that feature written on the enum itself; see `schema::editions`).
pub fn is_closed(e: &EnumDescriptor) -> bool {
    if e.parent_file().syntax() == Syntax::Proto2 {
        return true;
    }
    let options = e.options();
    let Some(features) = options.get_field_by_name("features") else {
        return false;
    };
    let Some(features) = features.as_message() else {
        return false;
    };
    const CLOSED: i32 = 2;
    features
        .get_field_by_name("enum_type")
        .is_some_and(|v| v.as_enum_number() == Some(CLOSED))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_convert_only_when_they_fit() {
        assert_eq!(
            convert_number(&Value::I64(5), &Kind::Int32),
            Some(Value::I32(5))
        );
        assert_eq!(convert_number(&Value::I64(1 << 40), &Kind::Int32), None);
        assert_eq!(convert_number(&Value::I32(-1), &Kind::Uint64), None);
        assert_eq!(
            convert_number(&Value::F64(2.0), &Kind::Sint64),
            Some(Value::I64(2))
        );
        assert_eq!(convert_number(&Value::F64(2.5), &Kind::Int64), None);
        assert_eq!(
            convert_number(&Value::U32(7), &Kind::Double),
            Some(Value::F64(7.0))
        );
        assert_eq!(convert_number(&Value::I32(1), &Kind::String), None);
    }

    #[test]
    fn kinds_group_by_value() {
        assert!(same_kind(&Kind::Int32, &Kind::Sfixed32));
        assert!(!same_kind(&Kind::Int32, &Kind::Int64));
        assert!(is_number(&Kind::Float) && !is_number(&Kind::Bool));
        assert_eq!(map_key(&Kind::Sint64, "-3"), Some(MapKey::I64(-3)));
        assert_eq!(map_key(&Kind::Double, "1"), None);
    }
}
