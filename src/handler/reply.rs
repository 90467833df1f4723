//! `reply`: one response, written as proto3 JSON with `{{field}}` interpolation (and each item
//! of a `stream`, which is a list of replies).
//!
//! A reply's constant top-level fields are encoded once at startup; a call encodes only the
//! templated fields and appends them (protobuf merges repeated occurrences of a message field,
//! so this is exact). When every templated field is text read from the request, the reply is
//! written straight from the request's wire bytes, with no message decoded or built.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message;
use prost_reflect::{DynamicMessage, FieldDescriptor, MessageDescriptor, Value};
use serde_json::Value as Json;

use super::MethodInfo;
use crate::codec::Outgoing;
use crate::error::CallError;
use crate::fieldpath::FieldPath;
use crate::template::{
    err, leaves_unset, whole_placeholder, Budget, EntryError, EntryErrors, MessageTemplate,
    RenderError, TextTemplate, ValueTemplate,
};

#[derive(Debug)]
pub struct ReplyAction {
    template: ReplyTemplate,
}

impl ReplyAction {
    /// The size of the reply's constant part (see [`Handler::least_message_size`]).
    ///
    /// [`Handler::least_message_size`]: super::Handler::least_message_size
    pub fn least_size(&self) -> usize {
        self.template.least_size()
    }

    pub fn compile(json: &Json, info: &MethodInfo, path: &str) -> Result<Self, EntryErrors> {
        Ok(Self {
            template: ReplyTemplate::compile(json, &info.input, &info.output, path)?,
        })
    }

    /// True when the reply can be rendered from the request's bytes (see `wire`).
    pub fn reads_wire(&self) -> bool {
        self.template.reads_wire()
    }

    /// Passes over the request's bytes a wire-read reply makes: the check, then one per
    /// placeholder (see [`ReplyTemplate::wire_passes`]).
    pub fn wire_passes(&self) -> usize {
        self.template.wire_passes()
    }

    /// The reply rendered from validated request bytes, at most `limit` bytes.
    pub fn respond_wire(
        &self,
        req: &[u8],
        method: &Arc<str>,
        limit: usize,
    ) -> Result<Outgoing, CallError> {
        self.template
            .render_wire(req, limit)
            .map_err(|e| render_error(e, method, limit))
    }

    /// The reply for `req`, at most `limit` bytes.
    pub fn respond(
        &self,
        req: &DynamicMessage,
        method: &Arc<str>,
        limit: usize,
    ) -> Result<Outgoing, CallError> {
        self.template
            .render(req, limit)
            .map_err(|e| render_error(e, method, limit))
    }
}

/// A reply that could not be rendered, as the call's error.
pub fn render_error(e: RenderError, method: &Arc<str>, limit: usize) -> CallError {
    match e {
        RenderError::Bad(message) => CallError::BadResponse {
            method: method.clone(),
            message,
        },
        RenderError::Unfit(message) => CallError::RequestUnfit {
            method: method.clone(),
            message,
        },
        RenderError::TooLarge => CallError::TemplateTooLarge {
            method: method.clone(),
            limit,
        },
    }
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
    /// The size of the constant top-level fields, encoded once: no reply is smaller.
    pub fn least_size(&self) -> usize {
        self.prefix.len()
    }

    /// Compiles `json` as a message of type `output`, reading placeholders from `input`.
    pub fn compile(
        json: &Json,
        input: &MessageDescriptor,
        output: &MessageDescriptor,
        path: &str,
    ) -> Result<Self, EntryErrors> {
        if let Some(text) = json.as_str() {
            if let Some(from) = whole_placeholder(text) {
                // The whole response copied from a request value of the same message type.
                let from = FieldPath::resolve(input, from).map_err(|m| EntryError {
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

    /// The response for one request; rendering stops with [`RenderError::TooLarge`] once it
    /// passes `limit` bytes, before the rest is built.
    pub fn render(
        &self,
        req: &DynamicMessage,
        limit: usize,
    ) -> std::result::Result<Outgoing, RenderError> {
        if let Some(from) = &self.whole {
            return match from.read(req).into_owned() {
                Value::Message(m) => Ok(Outgoing::Message(m)),
                _ => Err(RenderError::Bad(format!(
                    "{{{{{}}}}} is not a message",
                    from.text()
                ))),
            };
        }
        if self.dynamic.is_empty() {
            return Ok(Outgoing::Encoded(self.prefix.clone()));
        }
        let mut budget = Budget::new(limit);
        budget.take(self.prefix.len())?;
        if self.text_only {
            return self
                .encode_text_fields(budget, |t, out, cap| t.render_into(req, out, cap))
                .map(Outgoing::Encoded);
        }
        let mut msg = DynamicMessage::new(self.desc.clone());
        for (field, t) in &self.dynamic {
            if leaves_unset(field) && t.copies_unset(req) {
                continue;
            }
            let value = t.render(req, &mut budget)?;
            if field.supports_presence() || !value.is_default_for_field(field) {
                msg.set_field(field, value);
            }
        }
        let mut buf = BytesMut::with_capacity(self.prefix.len() + msg.encoded_len());
        buf.put_slice(&self.prefix);
        msg.encode(&mut buf)
            .map_err(|e| RenderError::Bad(e.to_string()))?;
        Ok(Outgoing::Encoded(buf.freeze()))
    }

    /// True when the reply can be rendered straight from the request's wire bytes.
    pub fn reads_wire(&self) -> bool {
        self.wire
    }

    /// Passes over a request's wire bytes that answering it takes when the reply
    /// [`reads_wire`](Self::reads_wire): one to check the request, one per placeholder to find
    /// its field (the last occurrence wins, so each reads the whole message).
    pub fn wire_passes(&self) -> usize {
        1 + self
            .dynamic
            .iter()
            .map(|(_, v)| match v {
                ValueTemplate::Text { text, .. } => text.fields_read(),
                _ => 0,
            })
            .sum::<usize>()
    }

    /// The reply for validated request bytes (requires [`reads_wire`](Self::reads_wire)), at
    /// most `limit` bytes.
    pub fn render_wire(
        &self,
        req: &[u8],
        limit: usize,
    ) -> std::result::Result<Outgoing, RenderError> {
        if self.dynamic.is_empty() {
            return Ok(Outgoing::Encoded(self.prefix.clone()));
        }
        let mut budget = Budget::new(limit);
        budget.take(self.prefix.len())?;
        self.encode_text_fields(budget, |t, out, cap| t.render_wire_into(req, out, cap))
            .map(Outgoing::Encoded)
    }

    /// The common case of text fields only (`"Hello, {{name}}!"`): the prefix, then each text
    /// field rendered by `render` (which stops past the cap it is given) and written straight
    /// to the wire as a string field, with no message built in between.
    fn encode_text_fields(
        &self,
        mut budget: Budget,
        render: impl Fn(&TextTemplate, &mut String, usize) -> bool,
    ) -> std::result::Result<Bytes, RenderError> {
        let mut text = String::new();
        let mut buf = BytesMut::with_capacity(self.prefix.len() + 64);
        buf.put_slice(&self.prefix);
        for (field, t) in &self.dynamic {
            let ValueTemplate::Text { text: template, .. } = t else {
                continue;
            };
            text.clear();
            if !render(template, &mut text, budget.left()) {
                return Err(RenderError::TooLarge);
            }
            budget.take(text.len())?;
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
        Ok(buf.freeze())
    }
}
