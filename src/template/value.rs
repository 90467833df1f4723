//! Typed values in a template: constants, copies of request fields (converted to the target
//! field's kind), text, nested messages, lists and maps, compiled once and rendered per call.

use bytes::Bytes;
use prost_reflect::{
    Cardinality, DynamicMessage, FieldDescriptor, Kind, MapKey, MessageDescriptor, Value,
};
use serde_json::{Map, Value as Json};

use super::{
    err, parse_field_value, parse_message, write_text, Budget, EntryError, EntryErrors,
    RenderError, Result, TextTemplate,
};
use crate::fieldpath::{find_field, kind_name, missing_field, type_name, FieldPath};
use crate::kinds::{convert_number, is_number, map_key, same_kind, ValueClass};

/// How a copied value is turned into the target field's type.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Conversion {
    Same,
    Text,
    Bytes,
    Number,
}

/// One field's value in a template, compiled.
#[derive(Debug, Clone)]
pub enum ValueTemplate {
    Const(Value),
    Copy {
        from: FieldPath,
        conv: Conversion,
        to: Kind,
        /// Where the value lands in the handler file (`reply.count`), for the error of a
        /// number that does not fit.
        into: String,
    },
    Text {
        text: TextTemplate,
        bytes: bool,
    },
    Message(MessageTemplate),
    List(Vec<ValueTemplate>),
    Map(Vec<(MapKey, ValueTemplate)>),
}

/// A message with some fields constant and some computed per call.
#[derive(Debug, Clone)]
pub struct MessageTemplate {
    /// The constant fields.
    pub base: DynamicMessage,
    /// The fields computed per call.
    pub dynamic: Vec<(FieldDescriptor, ValueTemplate)>,
}

impl MessageTemplate {
    /// Compiles the fields of `obj` as a message of type `output`, reading placeholders from
    /// `input`.
    pub fn compile(
        obj: &Map<String, Json>,
        input: &MessageDescriptor,
        output: &MessageDescriptor,
        path: &str,
    ) -> Result<Self> {
        let mut problems = EntryErrors::default();
        let mut constant = Map::new();
        let mut dynamic = Vec::new();
        // The key that set each field, and each oneof: a second one would silently win.
        let mut given: Vec<(u32, &str)> = Vec::new();
        let mut oneofs: Vec<(String, &str)> = Vec::new();
        for (key, value) in obj {
            let field_path = format!("{path}.{key}");
            let Some(field) = find_field(output, key) else {
                problems.push(field_path, missing_field(output, key));
                continue;
            };
            if let Some((_, first)) = given.iter().find(|(n, _)| *n == field.number()) {
                problems.push(
                    field_path,
                    format!("\"{key}\" and \"{first}\" are the same field; give it once"),
                );
                continue;
            }
            given.push((field.number(), key));
            if let Some(oneof) = field.containing_oneof().filter(|o| !o.is_synthetic()) {
                if let Some((_, first)) = oneofs.iter().find(|(o, _)| o == oneof.name()) {
                    problems.push(
                        field_path,
                        format!(
                            "\"{key}\" and \"{first}\" are both in oneof \"{}\", which holds one of them; give one",
                            oneof.name()
                        ),
                    );
                    continue;
                }
                oneofs.push((oneof.name().to_owned(), key));
            }
            if has_placeholder(value) {
                let compiled = compile_field(&field, value, input, output, &field_path);
                if let Some(t) = problems.keep(compiled) {
                    dynamic.push((field.clone(), t));
                }
            } else {
                constant.insert(key.clone(), value.clone());
            }
        }
        for field in output.fields() {
            if field.cardinality() == Cardinality::Required
                && !given.iter().any(|(n, _)| *n == field.number())
            {
                problems.push(path.to_owned(), missing_required(output, &field));
            }
        }
        let base = match parse_message(output, Json::Object(constant.clone()), path) {
            Ok(base) => Some(base),
            Err(whole) => {
                // Name each constant field that is wrong, when they are wrong on their own.
                let before = problems.0.len();
                for (key, value) in &constant {
                    if let Some(field) = find_field(output, key) {
                        let one = parse_field_value(
                            output,
                            &field,
                            value.clone(),
                            &format!("{path}.{key}"),
                        );
                        problems.keep(one);
                    }
                }
                if problems.0.len() == before {
                    problems.keep::<(), _>(Err(whole));
                }
                None
            }
        };
        problems.or_else(|| {
            Some(Self {
                base: base?,
                dynamic,
            })
        })
    }

    fn render(
        &self,
        req: &DynamicMessage,
        budget: &mut Budget,
    ) -> std::result::Result<DynamicMessage, RenderError> {
        let mut msg = self.base.clone();
        for (field, t) in &self.dynamic {
            if leaves_unset(field) && t.copies_unset(req) {
                continue;
            }
            msg.set_field(field, t.render(req, budget)?);
        }
        Ok(msg)
    }
}

fn compile_field(
    field: &FieldDescriptor,
    value: &Json,
    input: &MessageDescriptor,
    parent: &MessageDescriptor,
    path: &str,
) -> Result<ValueTemplate> {
    if let Some(text) = value.as_str() {
        if let Some(from) = whole_placeholder(text) {
            let target = if field.is_map() {
                Target::WholeMap
            } else if field.is_list() {
                Target::WholeList
            } else {
                Target::Single
            };
            return compile_copy(field, from, input, path, target);
        }
    }
    if field.is_map() {
        let Json::Object(entries) = value else {
            return err(
                path,
                format!(
                    "\"{}\" is a {}; give a JSON object",
                    field.name(),
                    type_name(field)
                ),
            );
        };
        let Kind::Message(entry) = field.kind() else {
            return err(path, "a map field without an entry type");
        };
        let key_field = entry.map_entry_key_field();
        let value_field = entry.map_entry_value_field();
        let mut problems = EntryErrors::default();
        let mut out = Vec::with_capacity(entries.len());
        for (k, v) in entries {
            let vpath = format!("{path}.{k}");
            let key = map_key(&key_field.kind(), k);
            if key.is_none() {
                problems.push(
                    vpath.clone(),
                    format!(
                        "{k:?} is not a valid {} map key",
                        kind_name(&key_field.kind())
                    ),
                );
            }
            let vt = if has_placeholder(v) {
                compile_single(&value_field, v, input, Target::Single, &vpath)
            } else {
                parse_field_value(&entry, &value_field, v.clone(), &vpath).map(ValueTemplate::Const)
            };
            if let (Some(key), Some(vt)) = (key, problems.keep(vt)) {
                out.push((key, vt));
            }
        }
        return problems.or(ValueTemplate::Map(out));
    }
    if field.is_list() {
        let Json::Array(items) = value else {
            return err(
                path,
                format!(
                    "\"{}\" is a {}; give a JSON array",
                    field.name(),
                    type_name(field)
                ),
            );
        };
        let mut problems = EntryErrors::default();
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let ipath = format!("{path}[{i}]");
            let t = if has_placeholder(item) {
                compile_single(field, item, input, Target::ListItem, &ipath)
            } else {
                parse_field_value(parent, field, Json::Array(vec![item.clone()]), &ipath).and_then(
                    |list| match list {
                        Value::List(mut l) if l.len() == 1 => Ok(ValueTemplate::Const(l.remove(0))),
                        _ => err(&ipath, "could not read this list item"),
                    },
                )
            };
            if let Some(t) = problems.keep(t) {
                out.push(t);
            }
        }
        return problems.or(ValueTemplate::List(out));
    }
    compile_single(field, value, input, Target::Single, path)
}

/// Where a copied value lands.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Target {
    /// A singular field or a map value.
    Single,
    /// One item of a repeated field: a copied repeated value of the same type is spliced in.
    ListItem,
    /// A whole repeated field.
    WholeList,
    /// A whole map field.
    WholeMap,
}

/// One value of `field`'s kind (a list item, a map value or a singular field).
fn compile_single(
    field: &FieldDescriptor,
    value: &Json,
    input: &MessageDescriptor,
    target: Target,
    path: &str,
) -> Result<ValueTemplate> {
    let kind = field.kind();
    match value {
        Json::String(text) => {
            if let Some(from) = whole_placeholder(text) {
                return compile_copy(field, from, input, path, target);
            }
            let bytes = match kind {
                Kind::String => false,
                Kind::Bytes => true,
                _ => {
                    return err(
                        path,
                        format!(
                            "{{{{…}}}} inside text only works in string or bytes fields; \"{}\" is {}. Use a value that is exactly \"{{{{field}}}}\" to copy a field",
                            field.name(),
                            kind_name(&kind)
                        ),
                    )
                }
            };
            Ok(ValueTemplate::Text {
                text: TextTemplate::compile(text, input, path)?,
                bytes,
            })
        }
        Json::Object(obj) => match kind {
            Kind::Message(m) => Ok(ValueTemplate::Message(MessageTemplate::compile(
                obj, input, &m, path,
            )?)),
            _ => err(
                path,
                format!(
                    "\"{}\" is {}, not a message",
                    field.name(),
                    kind_name(&kind)
                ),
            ),
        },
        _ => err(
            path,
            "placeholders may only appear in strings, objects and arrays",
        ),
    }
}

/// `"{{path}}"`: a typed copy of a request value into `field`.
fn compile_copy(
    field: &FieldDescriptor,
    from: &str,
    input: &MessageDescriptor,
    path: &str,
    target: Target,
) -> Result<ValueTemplate> {
    let source = FieldPath::resolve(input, from).map_err(|m| EntryError {
        path: path.to_owned(),
        message: m,
    })?;
    let to = field.kind();
    let (src_kind, src_list, src_map) = match source.last() {
        None => (Kind::Message(input.clone()), false, false),
        Some(f) => (f.kind(), f.is_list(), f.is_map()),
    };
    let mismatch = || {
        err(
            path,
            format!(
                "cannot copy {{{{{from}}}}} ({}) into \"{}\" ({})",
                source
                    .last()
                    .map_or_else(|| input.full_name().to_owned(), type_name),
                field.name(),
                type_name(field)
            ),
        )
    };
    let whole_list = target == Target::WholeList;
    let whole_map = target == Target::WholeMap;
    let spliced = target == Target::ListItem && src_list;
    if whole_list || whole_map || src_list || src_map {
        // Repeated and map values copy only as a whole, into a field of the same type.
        let shapes_agree = (whole_list == src_list || spliced) && whole_map == src_map;
        if shapes_agree && same_kind(&src_kind, &to) {
            return Ok(ValueTemplate::Copy {
                from: source,
                conv: Conversion::Same,
                to,
                into: path.to_owned(),
            });
        }
        return mismatch();
    }
    let conv = if same_kind(&src_kind, &to) {
        Conversion::Same
    } else if matches!(to, Kind::String) {
        Conversion::Text
    } else if matches!(to, Kind::Bytes) && matches!(src_kind, Kind::String) {
        Conversion::Bytes
    } else if is_number(&src_kind) && is_number(&to) {
        Conversion::Number
    } else {
        return mismatch();
    };
    Ok(ValueTemplate::Copy {
        from: source,
        conv,
        to,
        into: path.to_owned(),
    })
}

/// A message without one of its proto2 `required` fields, said for a person.
pub fn missing_required(desc: &MessageDescriptor, field: &FieldDescriptor) -> String {
    format!(
        "{} needs its required field \"{}\" ({}): clients refuse a message without it; give it",
        desc.full_name(),
        field.name(),
        type_name(field)
    )
}

/// How deep [`give_required`] goes: a message type whose required fields lead back to it has
/// no finite value, and is given up on there.
const REQUIRED_DEPTH: usize = 32;

/// Sets every proto2 `required` field `msg` lacks to its default, a message's own required
/// fields included, `depth` levels down at most.
fn give_required(msg: &mut DynamicMessage, depth: usize) {
    if depth == 0 {
        return;
    }
    let desc = prost_reflect::ReflectMessage::descriptor(msg);
    for field in desc.fields() {
        if field.cardinality() != Cardinality::Required || msg.has_field(&field) {
            continue;
        }
        let value = match field.kind() {
            Kind::Message(m) => {
                let mut inner = DynamicMessage::new(m);
                give_required(&mut inner, depth - 1);
                Value::Message(inner)
            }
            _ => field.default_value(),
        };
        msg.set_field(&field, value);
    }
}

/// True for a field a copy of an unset request value leaves unset: one that tracks presence,
/// except a proto2 `required` field, which a reply must carry (it gets the default read).
pub fn leaves_unset(field: &FieldDescriptor) -> bool {
    field.supports_presence() && field.cardinality() != Cardinality::Required
}

impl ValueTemplate {
    /// True for a copy of a request value that is not set (see [`FieldPath::is_set`]): a
    /// field that tracks presence is left unset by it, so the reply says what the request
    /// said rather than a default made up in between.
    pub fn copies_unset(&self, req: &DynamicMessage) -> bool {
        matches!(self, ValueTemplate::Copy { from, .. } if !from.is_set(req))
    }

    /// The value for `req`, each copied or interpolated part counted in `budget` before it is
    /// built.
    pub fn render(
        &self,
        req: &DynamicMessage,
        budget: &mut Budget,
    ) -> std::result::Result<Value, RenderError> {
        Ok(match self {
            ValueTemplate::Const(v) => v.clone(),
            ValueTemplate::Copy {
                from,
                conv,
                to,
                into,
            } => {
                let v = from.read(req);
                budget.take(value_size(&v))?;
                match conv {
                    // A required message field copied from a message the request does not
                    // carry gets the default message, which must carry its own required
                    // fields too (at their defaults): clients refuse a message without them.
                    Conversion::Same if matches!(v.as_ref(), Value::Message(_)) && !from.is_set(req) => {
                        let mut v = v.into_owned();
                        if let Value::Message(m) = &mut v {
                            give_required(m, REQUIRED_DEPTH);
                        }
                        v
                    }
                    Conversion::Same => v.into_owned(),
                    Conversion::Text => {
                        let mut s = String::new();
                        let kind = from.last().map(FieldDescriptor::kind);
                        write_text(&mut s, &v, kind.as_ref());
                        // As text, a value may take more room than encoded.
                        budget.take(s.len().saturating_sub(value_size(&v)))?;
                        Value::String(s)
                    }
                    Conversion::Bytes => match v.as_ref() {
                        Value::String(s) => Value::Bytes(Bytes::copy_from_slice(s.as_bytes())),
                        other => other.clone(),
                    },
                    Conversion::Number => convert_number(&v, to).ok_or_else(|| {
                        let mut shown = String::new();
                        write_text(&mut shown, &v, None);
                        RenderError::Unfit(format!(
                            "the request's {{{{{}}}}} is {shown}, which does not fit {into}, a field of type {} ({}); send a value that fits",
                            from.text(),
                            kind_name(to),
                            holds(to)
                        ))
                    })?,
                }
            }
            ValueTemplate::Text { text, bytes } => {
                let s = text
                    .render(req, budget.left())
                    .ok_or(RenderError::TooLarge)?;
                budget.take(s.len())?;
                if *bytes {
                    Value::Bytes(Bytes::from(s.into_bytes()))
                } else {
                    Value::String(s)
                }
            }
            ValueTemplate::Message(t) => Value::Message(t.render(req, budget)?),
            ValueTemplate::List(items) => {
                let mut out = Vec::with_capacity(items.len());
                // A copy of a value the request does not carry adds no item, as it leaves a
                // field with presence unset: an item made of a default (an empty `Any` is not
                // even valid JSON) would say what the request did not.
                for item in items.iter().filter(|item| !item.copies_unset(req)) {
                    match item.render(req, budget)? {
                        // A copied repeated value inside a list literal is spliced in.
                        Value::List(l) => out.extend(l),
                        v => out.push(v),
                    }
                }
                Value::List(out)
            }
            ValueTemplate::Map(entries) => {
                let mut out = std::collections::HashMap::with_capacity(entries.len());
                for (k, t) in entries.iter().filter(|(_, t)| !t.copies_unset(req)) {
                    out.insert(k.clone(), t.render(req, budget)?);
                }
                Value::Map(out)
            }
        })
    }
}

/// What a number field into which a copy may narrow holds, said for a person.
fn holds(kind: &Kind) -> &'static str {
    match ValueClass::of(kind) {
        Some(ValueClass::I32) => "whole numbers from -2147483648 to 2147483647",
        Some(ValueClass::I64) => "whole numbers from -9223372036854775808 to 9223372036854775807",
        Some(ValueClass::U32) => "whole numbers from 0 to 4294967295",
        Some(ValueClass::U64) => "whole numbers from 0 to 18446744073709551615",
        _ => "numbers",
    }
}

/// About the bytes `value` takes encoded: exact for strings, bytes and messages, which are
/// what can make a reply large; a few bytes for other scalars.
fn value_size(value: &Value) -> usize {
    match value {
        Value::String(s) => s.len(),
        Value::Bytes(b) => b.len(),
        Value::Message(m) => prost::Message::encoded_len(m),
        Value::List(items) => items.iter().map(|v| value_size(v) + 1).sum(),
        Value::Map(entries) => entries
            .iter()
            .map(|(k, v)| key_size(k) + value_size(v) + 2)
            .sum(),
        _ => 8,
    }
}

fn key_size(key: &MapKey) -> usize {
    match key {
        MapKey::String(s) => s.len(),
        _ => 8,
    }
}

/// `Some("path")` when `text` is exactly `{{path}}`.
pub fn whole_placeholder(text: &str) -> Option<&str> {
    let inner = text.trim().strip_prefix("{{")?.strip_suffix("}}")?;
    (!inner.contains("{{") && !inner.contains("}}")).then_some(inner.trim())
}

/// True when a JSON value has a `{{` anywhere in its strings.
pub fn has_placeholder(value: &Json) -> bool {
    match value {
        Json::String(s) => s.contains("{{"),
        Json::Array(a) => a.iter().any(has_placeholder),
        Json::Object(o) => o.values().any(has_placeholder),
        _ => false,
    }
}
