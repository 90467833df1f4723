//! Text with `{{field}}` placeholders, rendered from a decoded request or straight from its
//! wire bytes.

use std::fmt::Write as _;

use prost_reflect::{DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, Value};

use super::{EntryErrors, Result};
use crate::fieldpath::{type_name, FieldPath};
use crate::wire;

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
        let mut problems = EntryErrors::default();
        let mut pieces = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find("{{") {
            if start > 0 {
                pieces.push(Piece::Lit(rest[..start].to_owned()));
            }
            let after = &rest[start + 2..];
            let Some(end) = after.find("}}") else {
                problems.push(
                    path,
                    format!("\"{{{{\" without a closing \"}}}}\" in {text:?}"),
                );
                break;
            };
            rest = &after[end + 2..];
            let field = match FieldPath::resolve(input, &after[..end]) {
                Ok(field) => field,
                Err(message) => {
                    problems.push(path, message);
                    continue;
                }
            };
            if let Some(last) = field.last() {
                if last.is_list() || last.is_map() {
                    problems.push(
                        path,
                        format!(
                            "{{{{{}}}}} is a {} and cannot be written into text; copy it into a field of the same type instead",
                            field.text(),
                            type_name(last)
                        ),
                    );
                    continue;
                }
            }
            let wire_path = wire::Path::from_numbers(input, field.numbers())
                .unwrap_or_else(|| wire::Path::new([]));
            let kind = field.last().map(FieldDescriptor::kind);
            pieces.push(Piece::Field(field, wire_path, kind));
        }
        if !rest.is_empty() && !rest.contains("{{") {
            pieces.push(Piece::Lit(rest.to_owned()));
        }
        problems.or(Self { pieces })
    }

    /// True when every placeholder can be read from wire bytes.
    pub fn reads_wire(&self) -> bool {
        self.pieces.iter().all(|p| match p {
            Piece::Lit(_) => true,
            Piece::Field(path, _, _) => path.reads_wire(),
        })
    }

    /// How many request fields the text reads: each is a pass over the request's wire bytes
    /// when rendered from them.
    pub fn fields_read(&self) -> usize {
        self.pieces
            .iter()
            .filter(|p| matches!(p, Piece::Field(..)))
            .count()
    }

    /// Renders from the request's validated wire bytes (requires [`reads_wire`](Self::reads_wire)),
    /// stopping once `out` holds more than `cap` bytes; false when it stopped.
    pub fn render_wire_into(&self, req: &[u8], out: &mut String, cap: usize) -> bool {
        for piece in &self.pieces {
            if out.len() > cap {
                return false;
            }
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
        out.len() <= cap
    }

    /// The text for `req`, or `None` when it would be over `cap` bytes.
    pub fn render(&self, req: &DynamicMessage, cap: usize) -> Option<String> {
        let mut out = String::new();
        self.render_into(req, &mut out, cap).then_some(out)
    }

    /// Appends the text for `req` to `out`, stopping once `out` holds more than `cap` bytes
    /// (a template may repeat a large request field many times); false when it stopped.
    pub fn render_into(&self, req: &DynamicMessage, out: &mut String, cap: usize) -> bool {
        for piece in &self.pieces {
            if out.len() > cap {
                return false;
            }
            match piece {
                Piece::Lit(s) => out.push_str(s),
                Piece::Field(path, _, kind) => write_text(out, &path.read(req), kind.as_ref()),
            }
        }
        out.len() <= cap
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
