//! `error`: end the call with a chosen gRPC status, message (which may interpolate request fields)
//! and trailing metadata.

use prost_reflect::DynamicMessage;
use serde::Deserialize;
use serde_json::Value as Json;
use std::collections::BTreeMap;
use tonic::metadata::MetadataMap;
use tonic::{Code, Status};

use super::MethodInfo;
use crate::metadata::{parse_code, parse_pairs};
use crate::template::{EntryError, TextTemplate};

/// `{"code": "NOT_FOUND", "message": "no user {{id}}", "metadata": {"retry-after": "5"}}`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorSpec {
    pub code: Json,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

#[derive(Debug)]
pub struct ErrorAction {
    code: Code,
    message: TextTemplate,
    metadata: MetadataMap,
}

impl ErrorAction {
    pub fn compile(spec: &ErrorSpec, info: &MethodInfo, path: &str) -> Result<Self, EntryError> {
        let code = parse_code(&spec.code).map_err(|message| EntryError {
            path: format!("{path}.code"),
            message,
        })?;
        let message =
            TextTemplate::compile(&spec.message, &info.input, &format!("{path}.message"))?;
        let metadata = parse_pairs(&spec.metadata, &format!("{path}.metadata"))?;
        Ok(Self {
            code,
            message,
            metadata,
        })
    }

    pub fn status(&self, req: &DynamicMessage) -> Status {
        // The status message is cut to MAX_STATUS_MESSAGE bytes anyway: render no more, however
        // often the message repeats a large request field.
        let mut message = String::new();
        self.message
            .render_into(req, &mut message, crate::error::MAX_STATUS_MESSAGE);
        crate::error::chosen(Status::with_metadata(
            self.code,
            message,
            self.metadata.clone(),
        ))
    }
}
