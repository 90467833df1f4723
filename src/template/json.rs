//! Constant values of a template or a rule, read with the proto3 JSON mapping.

use prost_reflect::{DynamicMessage, FieldDescriptor, MessageDescriptor, Value};
use serde_json::{Map, Value as Json};

use super::{EntryError, Result};
use crate::fieldpath::type_name;

/// Parses a whole message from proto3 JSON, rejecting unknown fields.
pub fn parse_message(desc: &MessageDescriptor, json: Json, path: &str) -> Result<DynamicMessage> {
    DynamicMessage::deserialize(desc.clone(), json).map_err(|e| {
        EntryError {
            path: path.to_owned(),
            message: format!(
                "not a valid {} in the proto3 JSON mapping: {e}",
                desc.full_name()
            ),
        }
        .into()
    })
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
    Ok(msg.get_field(field).into_owned())
}
