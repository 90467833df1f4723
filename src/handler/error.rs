//! `error`: end the call with a chosen gRPC status, message (which may interpolate request fields)
//! and trailing metadata.

use prost_reflect::DynamicMessage;
use serde_json::Value as Json;
use std::collections::BTreeMap;
use tonic::metadata::MetadataMap;
use tonic::{Code, Status};

use super::MethodInfo;
use crate::metadata::{parse_code, parse_pairs};
use crate::suggest::did_you_mean;
use crate::template::{EntryError, EntryErrors, TextTemplate};

/// `{"code": "NOT_FOUND", "message": "no user {{id}}", "metadata": {"retry-after": "5"}}`
#[derive(Debug, Default)]
pub struct ErrorSpec {
    pub code: Option<Json>,
    pub message: String,
    pub metadata: BTreeMap<String, String>,
}

impl ErrorSpec {
    /// Reads an `error` object at `path`: every key that is unknown or of the wrong type goes
    /// to `problems`, and the rest is read, so that its own problems are found too.
    pub fn parse(json: &Json, path: &str, problems: &mut EntryErrors) -> Option<Self> {
        let Json::Object(obj) = json else {
            problems.push(
                path,
                "an error is an object such as {\"code\": \"NOT_FOUND\", \"message\": \"…\"}",
            );
            return None;
        };
        let mut spec = ErrorSpec::default();
        for (key, value) in obj {
            let at = format!("{path}.{key}");
            match key.as_str() {
                "code" => spec.code = Some(value.clone()),
                "message" => match value {
                    Json::String(s) => spec.message = s.clone(),
                    _ => problems.push(at, "\"message\" takes a string"),
                },
                "metadata" => match serde_json::from_value(value.clone()) {
                    Ok(m) => spec.metadata = m,
                    Err(_) => problems.push(
                        at,
                        "\"metadata\" takes an object of strings, such as {\"retry-after\": \"5\"}",
                    ),
                },
                other => problems.push(
                    at,
                    format!(
                        "unknown key {other:?} in an error{}; an error takes code, message and metadata",
                        did_you_mean(other, ["code", "message", "metadata"])
                    ),
                ),
            }
        }
        if spec.code.is_none() {
            problems.push(
                path,
                "an error needs a \"code\", such as \"NOT_FOUND\" or 5",
            );
        }
        Some(spec)
    }
}

#[derive(Debug)]
pub struct ErrorAction {
    code: Code,
    message: TextTemplate,
    metadata: MetadataMap,
}

impl ErrorAction {
    pub fn compile(spec: &ErrorSpec, info: &MethodInfo, path: &str) -> Result<Self, EntryErrors> {
        let mut problems = EntryErrors::default();
        let code = spec.code.as_ref().and_then(|code| {
            problems.keep(parse_code(code).map_err(|message| EntryError {
                path: format!("{path}.code"),
                message,
            }))
        });
        let message = problems.keep(TextTemplate::compile(
            &spec.message,
            &info.input,
            &format!("{path}.message"),
        ));
        let metadata = problems.keep(parse_pairs(&spec.metadata, &format!("{path}.metadata")));
        problems.or_else(|| {
            Some(Self {
                code: code?,
                message: message?,
                metadata: metadata?,
            })
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
