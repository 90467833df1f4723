//! Constant values of a template or a rule, read with the proto3 JSON mapping.

use prost_reflect::{
    Cardinality, DynamicMessage, EnumDescriptor, FieldDescriptor, Kind, MessageDescriptor,
    ReflectMessage, Value,
};
use serde_json::{Map, Value as Json};

use super::value::missing_required;
use super::{EntryError, Result};
use crate::fieldpath::type_name;
use crate::kinds::is_closed;

/// Parses a whole message from proto3 JSON, rejecting unknown fields.
pub fn parse_message(desc: &MessageDescriptor, json: Json, path: &str) -> Result<DynamicMessage> {
    let msg = DynamicMessage::deserialize(desc.clone(), json).map_err(|e| EntryError {
        path: path.to_owned(),
        message: format!(
            "not a valid {} in the proto3 JSON mapping: {e}",
            desc.full_name()
        ),
    })?;
    closed_enums_known(&msg, path)?;
    // The message's own fields may be given elsewhere (a template's placeholders); the
    // messages it holds are whole here.
    for (_, value) in msg.fields() {
        required_given(value, path)?;
    }
    Ok(msg)
}

/// Parses one field's value from proto3 JSON by parsing `{field: json}` as the parent message.
pub fn parse_field_value(
    parent: &MessageDescriptor,
    field: &FieldDescriptor,
    json: Json,
    path: &str,
) -> Result<Value> {
    let mut obj = Map::new();
    obj.insert(field.name().to_owned(), json);
    let msg =
        DynamicMessage::deserialize(parent.clone(), Json::Object(obj)).map_err(|e| EntryError {
            path: path.to_owned(),
            message: format!(
                "not a valid {} for \"{}\": {e}",
                type_name(field),
                field.name()
            ),
        })?;
    closed_enums_known(&msg, path)?;
    let value = msg.get_field(field).into_owned();
    required_given(&value, path)?;
    Ok(value)
}

/// Every message in `value` carries its proto2 `required` fields.
fn required_given(value: &Value, path: &str) -> Result<()> {
    match value {
        Value::Message(m) => {
            let desc = m.descriptor();
            if let Some(field) = desc
                .fields()
                .find(|f| f.cardinality() == Cardinality::Required && !m.has_field(f))
            {
                return Err(EntryError {
                    path: path.to_owned(),
                    message: missing_required(&desc, &field),
                }
                .into());
            }
            m.fields().try_for_each(|(_, v)| required_given(v, path))
        }
        Value::List(items) => items.iter().try_for_each(|v| required_given(v, path)),
        Value::Map(entries) => entries.values().try_for_each(|v| required_given(v, path)),
        _ => Ok(()),
    }
}

/// A closed enum (one declared in a proto2 file, or `CLOSED` in an editions file) has only the values it declares: a parser
/// puts any other number among the unknown fields, so the client would see the field unset,
/// not the number the file wrote (and no client can send it). The JSON mapping takes any
/// number for an enum, so such numbers are refused here, with the values there are.
fn closed_enums_known(msg: &DynamicMessage, path: &str) -> Result<()> {
    let Some((field, number, e)) = stray_in(msg) else {
        return Ok(());
    };
    let values: Vec<String> = e.values().map(|v| v.name().to_owned()).collect();
    Err(EntryError {
        path: path.to_owned(),
        message: format!(
            "{number} is not a value of {} (field \"{}\"), a closed enum: a client's parser \
             drops a number its closed enum does not declare (the field reads as unset, a list \
             loses the item); use one of {}",
            e.full_name(),
            field.name(),
            values.join(", ")
        ),
    }
    .into())
}

/// The first number outside a closed enum in `msg` or a message it holds, with its field.
fn stray_in(msg: &DynamicMessage) -> Option<(FieldDescriptor, i32, EnumDescriptor)> {
    msg.fields().find_map(|(field, value)| {
        let kind = if field.is_map() {
            field
                .kind()
                .as_message()
                .map(|entry| entry.map_entry_value_field().kind())?
        } else {
            field.kind()
        };
        let found = match value {
            Value::List(items) => items.iter().find_map(|v| stray(&kind, v)),
            Value::Map(entries) => entries.values().find_map(|v| stray(&kind, v)),
            v => stray(&kind, v),
        };
        found.map(|(f, n, e)| (f.unwrap_or_else(|| field.clone()), n, e))
    })
}

/// A number outside a closed enum in one value of `kind`; the field is given when the number
/// is inside a message the value holds.
fn stray(kind: &Kind, value: &Value) -> Option<(Option<FieldDescriptor>, i32, EnumDescriptor)> {
    match (kind, value) {
        (Kind::Enum(e), Value::EnumNumber(n)) if is_closed(e) && e.get_value(*n).is_none() => {
            Some((None, *n, e.clone()))
        }
        (Kind::Message(_), Value::Message(m)) => stray_in(m).map(|(f, n, e)| (Some(f), n, e)),
        _ => None,
    }
}
