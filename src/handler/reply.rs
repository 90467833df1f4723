//! `reply`: one response, written as proto3 JSON with `{{field}}` interpolation.
//!
//! All the work happens in [`crate::template`] at startup; a call renders the compiled template.

use std::sync::Arc;
use prost_reflect::DynamicMessage;
use serde_json::Value as Json;

use super::MethodInfo;
use crate::codec::Outgoing;
use crate::error::CallError;
use crate::template::{ReplyTemplate, TemplateError};

#[derive(Debug)]
pub struct ReplyAction {
    template: ReplyTemplate,
}

impl ReplyAction {
    pub fn compile(json: &Json, info: &MethodInfo, path: &str) -> Result<Self, TemplateError> {
        Ok(Self {
            template: ReplyTemplate::compile(json, &info.input, &info.output, path)?,
        })
    }

    /// True when the reply can be rendered from the request's bytes (see `wire`).
    pub fn reads_wire(&self) -> bool {
        self.template.reads_wire()
    }

    /// The reply rendered from validated request bytes.
    pub fn respond_wire(&self, req: &[u8]) -> Outgoing {
        self.template.render_wire(req)
    }

    pub fn respond(
        &self,
        req: &DynamicMessage,
        method: &Arc<str>,
    ) -> Result<Outgoing, CallError> {
        self.template
            .render(req)
            .map_err(|message| CallError::BadResponse { method: method.clone(), message })
    }
}
