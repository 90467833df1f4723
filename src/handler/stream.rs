//! `stream`: a list of responses for server-streaming and bidi methods, each one a `reply`
//! template, sent in order (with `delay_ms` before each, when set).

use prost_reflect::DynamicMessage;
use serde_json::Value as Json;
use std::sync::Arc;

use super::reply::{render_error, ReplyTemplate};
use super::MethodInfo;
use crate::codec::Outgoing;
use crate::error::CallError;
use crate::template::{EntryError, EntryErrors};

#[derive(Debug)]
pub struct StreamAction {
    items: Vec<ReplyTemplate>,
}

impl StreamAction {
    /// The largest constant part of one of its messages.
    pub fn least_size(&self) -> usize {
        self.items
            .iter()
            .map(ReplyTemplate::least_size)
            .max()
            .unwrap_or(0)
    }

    pub fn compile(items: &[Json], info: &MethodInfo, path: &str) -> Result<Self, EntryErrors> {
        if !info.shape.streams_output() {
            return Err(EntryError {
                path: path.to_owned(),
                message: format!(
                    "\"stream\" needs a server-streaming or bidi method, and {} is {}; use \"reply\"",
                    info.name,
                    info.shape.name()
                ),
            }
            .into());
        }
        let mut problems = EntryErrors::default();
        let mut compiled = Vec::with_capacity(items.len());
        for (i, json) in items.iter().enumerate() {
            let item =
                ReplyTemplate::compile(json, &info.input, &info.output, &format!("{path}[{i}]"));
            if let Some(item) = problems.keep(item) {
                compiled.push(item);
            }
        }
        problems.or(Self { items: compiled })
    }

    /// How many messages one request gets.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Message `index` for `req`, rendered when the client is ready for it, so a stream holds
    /// one rendered message at a time.
    pub fn render(
        &self,
        index: usize,
        req: &DynamicMessage,
        method: &Arc<str>,
        limit: usize,
    ) -> Option<Result<Outgoing, CallError>> {
        let template = self.items.get(index)?;
        Some(
            template
                .render(req, limit)
                .map_err(|e| render_error(e, method, limit)),
        )
    }
}
