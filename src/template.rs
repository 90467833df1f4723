//! Responses written as JSON in a handler file, with request fields interpolated.
//!
//! A template is compiled once at startup against the method's input and output descriptors:
//! every constant part is parsed (proto3 JSON mapping) and checked then, every `{{path}}` is
//! resolved to field descriptors then. At call time rendering only copies values.
//!
//! - `"Hello, {{name}}!"` interpolates fields into a string (or bytes) field;
//! - a string that is exactly one placeholder, `"{{location}}"`, copies the field's typed value
//!   (numbers widen, anything turns into text for a string field); `"{{.}}"` is the whole request.
//!
//! A reply's constant top-level fields are encoded once; a call encodes only the templated fields
//! and appends them (protobuf merges repeated occurrences of a message field, so this is exact).

use std::fmt::Write as _;

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message;
use prost_reflect::{DynamicMessage, FieldDescriptor, Kind, MapKey, MessageDescriptor, Value};
use serde_json::{Map, Value as Json};

use crate::codec::Outgoing;
use crate::fieldpath::{field_names, find_field, kind_name, type_name, FieldPath};
use crate::suggest::did_you_mean;
use crate::wire;

/// A startup problem in a template, with the JSON path to the offending value.
#[derive(Debug, Clone)]
pub struct TemplateError {
    pub path: String,
    pub message: String,
}

type Result<T> = std::result::Result<T, TemplateError>;

fn err<T>(path: &str, message: impl Into<String>) -> Result<T> {
    Err(TemplateError {
        path: path.to_owned(),
        message: message.into(),
    })
}

/// A text template: literal pieces and request fields, in order.
#[derive(Debug, Clone)]
pub struct TextTemplate {
    pieces: Vec<Piece>,
}

#[derive(Debug, Clone)]
enum Piece {
    Lit(String),
    /// A request field, with its field numbers for reading wire bytes and its kind.
    Field(FieldPath, wire::Path, Option<Kind>),
}

impl TextTemplate {
    /// Compiles `text` against the request type `input`.
    pub fn compile(text: &str, input: &MessageDescriptor, path: &str) -> Result<Self> {
        let mut pieces = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find("{{") {
            if start > 0 {
                pieces.push(Piece::Lit(rest[..start].to_owned()));
            }
            let after = &rest[start + 2..];
            let Some(end) = after.find("}}") else {
                return err(
                    path,
                    format!("\"{{{{\" without a closing \"}}}}\" in {text:?}"),
                );
            };
            let field = FieldPath::resolve(input, &after[..end]).map_err(|m| TemplateError {
                path: path.to_owned(),
                message: m,
            })?;
            if let Some(last) = field.last() {
                if last.is_list() || last.is_map() {
                    return err(
                        path,
                        format!(
                            "{{{{{}}}}} is a {} and cannot be written into text; copy it into a field of the same type instead",
                            field.text(),
                            type_name(last)
                        ),
                    );
                }
            }
            let wire_path = wire::Path::from_numbers(input, field.numbers())
                .unwrap_or_else(|| wire::Path::new([]));
            let kind = field.last().map(FieldDescriptor::kind);
            pieces.push(Piece::Field(field, wire_path, kind));
            rest = &after[end + 2..];
        }
        if !rest.is_empty() {
            pieces.push(Piece::Lit(rest.to_owned()));
        }
        Ok(Self { pieces })
    }

    /// True when every placeholder can be read from wire bytes.
    pub fn reads_wire(&self) -> bool {
        self.pieces.iter().all(|p| match p {
            Piece::Lit(_) => true,
            Piece::Field(path, _, _) => path.reads_wire(),
        })
    }

    /// Renders from the request's validated wire bytes (requires [`reads_wire`](Self::reads_wire)).
    pub fn render_wire_into(&self, req: &[u8], out: &mut String) {
        for piece in &self.pieces {
            match piece {
                Piece::Lit(s) => out.push_str(s),
                Piece::Field(path, wire_path, kind) => {
                    let (Some(field), Some(kind)) = (path.last(), kind) else {
                        continue;
                    };
                    match (wire::find(req, wire_path), kind) {
                        (Some(wire::Raw::Len(b)), Kind::String | Kind::Bytes) => {
                            out.push_str(&String::from_utf8_lossy(b));
                        }
                        (Some(raw), _) => match wire::scalar(raw, kind) {
                            Some(v) => write_text(out, &v, Some(kind)),
                            None => {
                                write_text(out, &Value::default_value_for_field(field), Some(kind))
                            }
                        },
                        (None, _) => {
                            write_text(out, &Value::default_value_for_field(field), Some(kind))
                        }
                    }
                }
            }
        }
    }

    pub fn render(&self, req: &DynamicMessage) -> String {
        let mut out = String::new();
        self.render_into(req, &mut out);
        out
    }

    pub fn render_into(&self, req: &DynamicMessage, out: &mut String) {
        for piece in &self.pieces {
            match piece {
                Piece::Lit(s) => out.push_str(s),
                Piece::Field(path, _, kind) => write_text(out, &path.read(req), kind.as_ref()),
            }
        }
    }
}

/// Writes a single value as text: strings as they are, enums by name, messages as proto3 JSON.
pub fn write_text(out: &mut String, value: &Value, kind: Option<&Kind>) {
    match value {
        Value::String(s) => out.push_str(s),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::I32(n) => write!(out, "{n}").unwrap_or(()),
        Value::I64(n) => write!(out, "{n}").unwrap_or(()),
        Value::U32(n) => write!(out, "{n}").unwrap_or(()),
        Value::U64(n) => write!(out, "{n}").unwrap_or(()),
        Value::F32(n) => write!(out, "{n}").unwrap_or(()),
        Value::F64(n) => write!(out, "{n}").unwrap_or(()),
        Value::Bytes(b) => out.push_str(&String::from_utf8_lossy(b)),
        Value::EnumNumber(n) => {
            match kind.and_then(|k| k.as_enum().and_then(|e| e.get_value(*n))) {
                Some(v) => out.push_str(v.name()),
                None => write!(out, "{n}").unwrap_or(()),
            }
        }
        Value::Message(m) => match serde_json::to_string(m) {
            Ok(s) => out.push_str(&s),
            Err(_) => out.push_str("{}"),
        },
        Value::List(_) | Value::Map(_) => {}
    }
}

/// How a copied value is turned into the target field's type.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Conversion {
    Same,
    Text,
    Bytes,
    Number,
}

#[derive(Debug, Clone)]
enum ValueTemplate {
    Const(Value),
    Copy {
        from: FieldPath,
        conv: Conversion,
        to: Kind,
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
    base: DynamicMessage,
    dynamic: Vec<(FieldDescriptor, ValueTemplate)>,
}

/// A compiled response: the constant fields pre-encoded, the templated ones rendered per call.
#[derive(Debug, Clone)]
pub struct ReplyTemplate {
    desc: MessageDescriptor,
    prefix: Bytes,
    dynamic: Vec<(FieldDescriptor, ValueTemplate)>,
    /// `"{{.}}"` or `"{{some_message_field}}"`: the response is that request value.
    whole: Option<FieldPath>,
    /// Every templated field is a singular string or bytes field filled from text.
    text_only: bool,
    /// Moreover every placeholder can be read straight from the request's wire bytes
    /// (decided at startup, so a call only reads the flag).
    wire: bool,
}

impl ReplyTemplate {
    /// Compiles `json` as a message of type `output`, reading placeholders from `input`.
    pub fn compile(
        json: &Json,
        input: &MessageDescriptor,
        output: &MessageDescriptor,
        path: &str,
    ) -> Result<Self> {
        if let Some(text) = json.as_str() {
            if let Some(from) = whole_placeholder(text) {
                // The whole response copied from a request value of the same message type.
                let from = FieldPath::resolve(input, from).map_err(|m| TemplateError {
                    path: path.to_owned(),
                    message: m,
                })?;
                let source_desc = match from.last() {
                    None => Some(input.clone()),
                    Some(f) if !f.is_list() && !f.is_map() => f.kind().as_message().cloned(),
                    Some(_) => None,
                };
                if source_desc.as_ref().map(MessageDescriptor::full_name)
                    != Some(output.full_name())
                {
                    return err(
                        path,
                        format!("{text:?} is not a {} message", output.full_name()),
                    );
                }
                return Ok(Self {
                    desc: output.clone(),
                    prefix: Bytes::new(),
                    dynamic: Vec::new(),
                    whole: Some(from),
                    text_only: false,
                    wire: false,
                });
            }
        }
        let Json::Object(obj) = json else {
            return err(
                path,
                format!(
                    "a response must be a JSON object of {} fields",
                    output.full_name()
                ),
            );
        };
        let t = MessageTemplate::compile(obj, input, output, path)?;
        let text_only = t
            .dynamic
            .iter()
            .all(|(f, v)| !f.is_list() && !f.is_map() && matches!(v, ValueTemplate::Text { .. }));
        let wire = text_only
            && t.dynamic
                .iter()
                .all(|(_, v)| matches!(v, ValueTemplate::Text { text, .. } if text.reads_wire()));
        Ok(Self {
            desc: output.clone(),
            prefix: Bytes::from(t.base.encode_to_vec()),
            text_only,
            wire,
            dynamic: t.dynamic,
            whole: None,
        })
    }

    /// The response for one request.
    pub fn render(&self, req: &DynamicMessage) -> std::result::Result<Outgoing, String> {
        if let Some(from) = &self.whole {
            return match from.read(req).into_owned() {
                Value::Message(m) => Ok(Outgoing::Message(m)),
                _ => Err(format!("{{{{{}}}}} is not a message", from.text())),
            };
        }
        if self.dynamic.is_empty() {
            return Ok(Outgoing::Encoded(self.prefix.clone()));
        }
        if self.text_only {
            return Ok(Outgoing::Encoded(self.render_text_fields(req)));
        }
        let mut msg = DynamicMessage::new(self.desc.clone());
        for (field, t) in &self.dynamic {
            let value = t.render(req)?;
            if field.supports_presence() || !value.is_default_for_field(field) {
                msg.set_field(field, value);
            }
        }
        let mut buf = BytesMut::with_capacity(self.prefix.len() + msg.encoded_len());
        buf.put_slice(&self.prefix);
        msg.encode(&mut buf).map_err(|e| e.to_string())?;
        Ok(Outgoing::Encoded(buf.freeze()))
    }

    /// True when the reply can be rendered straight from the request's wire bytes.
    pub fn reads_wire(&self) -> bool {
        self.wire
    }

    /// The reply for validated request bytes (requires [`reads_wire`](Self::reads_wire)).
    pub fn render_wire(&self, req: &[u8]) -> Outgoing {
        if self.dynamic.is_empty() {
            return Outgoing::Encoded(self.prefix.clone());
        }
        Outgoing::Encoded(self.encode_text_fields(|t, out| t.render_wire_into(req, out)))
    }

    /// The common case of text fields only (`"Hello, {{name}}!"`): written straight to the wire
    /// after the constant prefix, with no message built in between.
    fn render_text_fields(&self, req: &DynamicMessage) -> Bytes {
        self.encode_text_fields(|t, out| t.render_into(req, out))
    }

    /// The prefix, then each text field rendered by `render` and encoded as a string field.
    fn encode_text_fields(&self, render: impl Fn(&TextTemplate, &mut String)) -> Bytes {
        let mut text = String::new();
        let mut buf = BytesMut::with_capacity(self.prefix.len() + 64);
        buf.put_slice(&self.prefix);
        for (field, t) in &self.dynamic {
            let ValueTemplate::Text { text: template, .. } = t else {
                continue;
            };
            text.clear();
            render(template, &mut text);
            if text.is_empty() && !field.supports_presence() {
                continue;
            }
            prost::encoding::encode_key(
                field.number(),
                prost::encoding::WireType::LengthDelimited,
                &mut buf,
            );
            prost::encoding::encode_varint(text.len() as u64, &mut buf);
            buf.put_slice(text.as_bytes());
        }
        buf.freeze()
    }
}

impl MessageTemplate {
    fn compile(
        obj: &Map<String, Json>,
        input: &MessageDescriptor,
        output: &MessageDescriptor,
        path: &str,
    ) -> Result<Self> {
        let mut constant = Map::new();
        let mut dynamic = Vec::new();
        for (key, value) in obj {
            let field_path = format!("{path}.{key}");
            let Some(field) = find_field(output, key) else {
                let names = field_names(output);
                return err(
                    &field_path,
                    format!(
                        "{} has no field \"{key}\"{}",
                        output.full_name(),
                        did_you_mean(key, names.iter().map(String::as_str))
                    ),
                );
            };
            if has_placeholder(value) {
                dynamic.push((
                    field.clone(),
                    compile_field(&field, value, input, output, &field_path)?,
                ));
            } else {
                constant.insert(key.clone(), value.clone());
            }
        }
        let base = parse_message(output, Json::Object(constant), path)?;
        Ok(Self { base, dynamic })
    }

    fn render(&self, req: &DynamicMessage) -> std::result::Result<DynamicMessage, String> {
        let mut msg = self.base.clone();
        for (field, t) in &self.dynamic {
            msg.set_field(field, t.render(req)?);
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
        let mut out = Vec::with_capacity(entries.len());
        for (k, v) in entries {
            let key = map_key(&key_field.kind(), k).ok_or_else(|| TemplateError {
                path: path.to_owned(),
                message: format!(
                    "{k:?} is not a valid {} map key",
                    kind_name(&key_field.kind())
                ),
            })?;
            let vpath = format!("{path}.{k}");
            let vt = if has_placeholder(v) {
                compile_single(&value_field, v, input, Target::Single, &vpath)?
            } else {
                ValueTemplate::Const(parse_field_value(&entry, &value_field, v.clone(), &vpath)?)
            };
            out.push((key, vt));
        }
        return Ok(ValueTemplate::Map(out));
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
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let ipath = format!("{path}[{i}]");
            let t = if has_placeholder(item) {
                compile_single(field, item, input, Target::ListItem, &ipath)?
            } else {
                let list =
                    parse_field_value(parent, field, Json::Array(vec![item.clone()]), &ipath)?;
                match list {
                    Value::List(mut l) if l.len() == 1 => ValueTemplate::Const(l.remove(0)),
                    _ => return err(&ipath, "could not read this list item"),
                }
            };
            out.push(t);
        }
        return Ok(ValueTemplate::List(out));
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
    let source = FieldPath::resolve(input, from).map_err(|m| TemplateError {
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
    })
}

impl ValueTemplate {
    fn render(&self, req: &DynamicMessage) -> std::result::Result<Value, String> {
        Ok(match self {
            ValueTemplate::Const(v) => v.clone(),
            ValueTemplate::Copy { from, conv, to } => {
                let v = from.read(req);
                match conv {
                    Conversion::Same => v.into_owned(),
                    Conversion::Text => {
                        let mut s = String::new();
                        let kind = from.last().map(FieldDescriptor::kind);
                        write_text(&mut s, &v, kind.as_ref());
                        Value::String(s)
                    }
                    Conversion::Bytes => match v.as_ref() {
                        Value::String(s) => Value::Bytes(Bytes::copy_from_slice(s.as_bytes())),
                        other => other.clone(),
                    },
                    Conversion::Number => convert_number(&v, to).ok_or_else(|| {
                        format!(
                            "{{{{{}}}}} = {v:?} does not fit a {}",
                            from.text(),
                            kind_name(to)
                        )
                    })?,
                }
            }
            ValueTemplate::Text { text, bytes } => {
                let s = text.render(req);
                if *bytes {
                    Value::Bytes(Bytes::from(s.into_bytes()))
                } else {
                    Value::String(s)
                }
            }
            ValueTemplate::Message(t) => Value::Message(t.render(req)?),
            ValueTemplate::List(items) => {
                let mut out = Vec::with_capacity(items.len());
                for item in items {
                    match item.render(req)? {
                        // A copied repeated value inside a list literal is spliced in.
                        Value::List(l) => out.extend(l),
                        v => out.push(v),
                    }
                }
                Value::List(out)
            }
            ValueTemplate::Map(entries) => {
                let mut out = std::collections::HashMap::with_capacity(entries.len());
                for (k, t) in entries {
                    out.insert(k.clone(), t.render(req)?);
                }
                Value::Map(out)
            }
        })
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

/// Parses a whole message from proto3 JSON, rejecting unknown fields.
pub fn parse_message(desc: &MessageDescriptor, json: Json, path: &str) -> Result<DynamicMessage> {
    DynamicMessage::deserialize(desc.clone(), json).map_err(|e| TemplateError {
        path: path.to_owned(),
        message: format!(
            "not a valid {} in the proto3 JSON mapping: {e}",
            desc.full_name()
        ),
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
    let msg = DynamicMessage::deserialize(parent.clone(), Json::Object(obj)).map_err(|e| {
        TemplateError {
            path: path.to_owned(),
            message: format!(
                "not a valid {} for \"{}\": {e}",
                type_name(field),
                field.name()
            ),
        }
    })?;
    Ok(msg.get_field(field).into_owned())
}

fn map_key(kind: &Kind, text: &str) -> Option<MapKey> {
    Some(match kind {
        Kind::String => MapKey::String(text.to_owned()),
        Kind::Bool => MapKey::Bool(text.parse().ok()?),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => MapKey::I32(text.parse().ok()?),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => MapKey::I64(text.parse().ok()?),
        Kind::Uint32 | Kind::Fixed32 => MapKey::U32(text.parse().ok()?),
        Kind::Uint64 | Kind::Fixed64 => MapKey::U64(text.parse().ok()?),
        _ => return None,
    })
}

fn same_kind(a: &Kind, b: &Kind) -> bool {
    match (a, b) {
        (Kind::Message(x), Kind::Message(y)) => x.full_name() == y.full_name(),
        (Kind::Enum(x), Kind::Enum(y)) => x.full_name() == y.full_name(),
        (x, y) => value_class(x) == value_class(y) && value_class(x).is_some(),
    }
}

/// Kinds that share one `Value` variant (int32 and sint32 are both `Value::I32`, …).
fn value_class(kind: &Kind) -> Option<u8> {
    Some(match kind {
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => 1,
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => 2,
        Kind::Uint32 | Kind::Fixed32 => 3,
        Kind::Uint64 | Kind::Fixed64 => 4,
        Kind::Float => 5,
        Kind::Double => 6,
        Kind::Bool => 7,
        Kind::String => 8,
        Kind::Bytes => 9,
        Kind::Message(_) | Kind::Enum(_) => return None,
    })
}

fn is_number(kind: &Kind) -> bool {
    matches!(value_class(kind), Some(1..=6))
}

fn convert_number(v: &Value, to: &Kind) -> Option<Value> {
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
    Some(match value_class(to)? {
        1 => Value::I32(i32::try_from(int?).ok()?),
        2 => Value::I64(i64::try_from(int?).ok()?),
        3 => Value::U32(u32::try_from(int?).ok()?),
        4 => Value::U64(u64::try_from(int?).ok()?),
        5 => Value::F32(as_f64 as f32),
        6 => Value::F64(as_f64),
        _ => return None,
    })
}
