//! Dotted paths into a request message (`location.latitude`), resolved to descriptors once.
//!
//! Handler files name request fields by text; at startup each name becomes a list of
//! [`FieldDescriptor`]s, so a request is read by walking descriptors, never by looking names up.

use std::borrow::Cow;

use prost_reflect::{DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, Value};

use crate::suggest::did_you_mean;

/// A resolved path; empty means the whole message.
#[derive(Debug, Clone)]
pub struct FieldPath {
    fields: Vec<FieldDescriptor>,
    text: String,
}

impl FieldPath {
    /// Resolves `text` (`.` for the whole message) against `desc`.
    pub fn resolve(desc: &MessageDescriptor, text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text == "." {
            return Ok(Self {
                fields: Vec::new(),
                text: ".".into(),
            });
        }
        let mut fields = Vec::new();
        let mut current = desc.clone();
        let mut segments = text.split('.').peekable();
        while let Some(seg) = segments.next() {
            let field = find_field(&current, seg).ok_or_else(|| missing_field(&current, seg))?;
            if segments.peek().is_some() {
                match field.kind() {
                    Kind::Message(m) if !field.is_list() && !field.is_map() => current = m,
                    _ => {
                        return Err(format!(
                        "\"{}\" is not a singular message field, so \"{text}\" cannot go inside it",
                        field.name()
                    ))
                    }
                }
            }
            fields.push(field);
        }
        Ok(Self {
            fields,
            text: text.to_owned(),
        })
    }

    /// The field numbers along the path, for reading wire bytes.
    pub fn numbers(&self) -> impl Iterator<Item = u32> + '_ {
        self.fields.iter().map(FieldDescriptor::number)
    }

    /// True when the path ends in a singular scalar, string or bytes field reached through
    /// singular message fields, so it can be read straight from wire bytes.
    pub fn reads_wire(&self) -> bool {
        self.fields
            .last()
            .is_some_and(|f| !f.is_list() && !f.is_map() && !matches!(f.kind(), Kind::Message(_)))
    }

    /// The path as the user wrote it.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The last field, or `None` for the whole message.
    pub fn last(&self) -> Option<&FieldDescriptor> {
        self.fields.last()
    }

    /// True unless the value at this path is unset: a message on the way is not set, or the
    /// last field tracks presence (a message, a proto2 or `optional` field, a oneof member)
    /// and is not set. Reading such a value gives its default, which a copy must not turn
    /// into a set field (an empty `Any` or `Value` is not even valid JSON).
    pub fn is_set(&self, msg: &DynamicMessage) -> bool {
        let Some((last, parents)) = self.fields.split_last() else {
            return true;
        };
        let mut current = msg;
        for f in parents {
            if !current.has_field(f) {
                return false;
            }
            match current.get_field(f) {
                Cow::Borrowed(Value::Message(m)) => current = m,
                _ => return false,
            }
        }
        !last.supports_presence() || current.has_field(last)
    }

    /// Reads the value at this path; unset intermediate messages read as defaults.
    pub fn read<'a>(&self, msg: &'a DynamicMessage) -> Cow<'a, Value> {
        let Some((last, parents)) = self.fields.split_last() else {
            return Cow::Owned(Value::Message(msg.clone()));
        };
        let mut current = msg;
        for f in parents {
            if !current.has_field(f) {
                return Cow::Owned(Value::default_value_for_field(last));
            }
            match current.get_field(f) {
                Cow::Borrowed(Value::Message(m)) => current = m,
                _ => return Cow::Owned(Value::default_value_for_field(last)),
            }
        }
        current.get_field(last)
    }
}

/// A field by proto name or by JSON name.
pub fn find_field(desc: &MessageDescriptor, name: &str) -> Option<FieldDescriptor> {
    desc.get_field_by_name(name)
        .or_else(|| desc.get_field_by_json_name(name))
}

/// `pkg.Msg has no field "nmae" (did you mean "name"?)`: the one wording of this mistake,
/// wherever a field is named (templates, rules, paths, script replies).
pub fn missing_field(desc: &MessageDescriptor, name: &str) -> String {
    no_such_field(
        desc.full_name(),
        name,
        desc.fields().map(|f| f.name().to_owned()),
    )
}

/// [`missing_field`] for callers that hold the message's name and field names, not its
/// descriptor (the script reply encoder's plans).
pub fn no_such_field<S: AsRef<str>>(
    message: &str,
    name: &str,
    fields: impl IntoIterator<Item = S>,
) -> String {
    let fields: Vec<S> = fields.into_iter().collect();
    format!(
        "{message} has no field \"{name}\"{}",
        did_you_mean(name, fields.iter().map(AsRef::as_ref))
    )
}

/// A human name for a field's type: `string`, `repeated int32`, `map<string, Foo>`, `routeguide.Point`.
pub fn type_name(field: &FieldDescriptor) -> String {
    if field.is_map() {
        if let Kind::Message(entry) = field.kind() {
            let k = entry.map_entry_key_field();
            let v = entry.map_entry_value_field();
            return format!("map<{}, {}>", kind_name(&k.kind()), kind_name(&v.kind()));
        }
    }
    let base = kind_name(&field.kind());
    if field.is_list() {
        format!("repeated {base}")
    } else {
        base
    }
}

pub fn kind_name(kind: &Kind) -> String {
    match kind {
        Kind::Message(m) => m.full_name().to_owned(),
        Kind::Enum(e) => e.full_name().to_owned(),
        other => format!("{other:?}").to_ascii_lowercase(),
    }
}
