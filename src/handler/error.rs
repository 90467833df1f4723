//! `error`: end the call with a chosen gRPC status, message (which may interpolate request fields)
//! and trailing metadata.

use prost_reflect::DynamicMessage;
use serde::Deserialize;
use serde_json::Value as Json;
use std::collections::BTreeMap;
use tonic::metadata::MetadataMap;
use tonic::{Code, Status};

use super::MethodInfo;
use crate::template::{TemplateError, TextTemplate};

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

const CODE_NAMES: &[&str] = &[
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// The canonical name of a gRPC status code (`NOT_FOUND`), or `"UNKNOWN"` for a number outside
/// 0-16.
pub fn code_name(code: i32) -> &'static str {
    usize::try_from(code)
        .ok()
        .and_then(|i| CODE_NAMES.get(i))
        .copied()
        .unwrap_or("UNKNOWN")
}

/// The number of a gRPC status code named in any case (`not_found`, `NOT_FOUND`), or given as
/// a number 0-16.
pub fn code_number(text: &str) -> Option<i32> {
    let text = text.trim();
    if let Ok(n) = text.parse::<i32>() {
        return (0..=16).contains(&n).then_some(n);
    }
    let wanted = text.to_ascii_uppercase().replace(['-', ' '], "_");
    CODE_NAMES
        .iter()
        .position(|n| *n == wanted)
        .and_then(|i| i32::try_from(i).ok())
}

/// A gRPC status code from its name (`NOT_FOUND`, any case) or number.
pub fn parse_code(json: &Json) -> Result<Code, String> {
    let number = match json {
        Json::Number(n) => n.as_i64().filter(|n| (0..=16).contains(n)),
        Json::String(s) => {
            let wanted = s.trim().to_ascii_uppercase().replace(['-', ' '], "_");
            CODE_NAMES
                .iter()
                .position(|n| *n == wanted)
                .map(|i| i as i64)
        }
        _ => None,
    };
    let Some(number) = number else {
        let hint = json
            .as_str()
            .map(|s| {
                crate::suggest::did_you_mean(&s.to_ascii_uppercase(), CODE_NAMES.iter().copied())
            })
            .unwrap_or_default();
        return Err(format!("{json} is not a gRPC status code{hint}; use a name such as \"NOT_FOUND\" or a number 1-16"));
    };
    if number == 0 {
        return Err("an error needs a code other than OK".into());
    }
    Ok(Code::from_i32(number as i32))
}

/// Response metadata from a handler file, checked at startup.
pub fn parse_metadata(
    pairs: &BTreeMap<String, String>,
    path: &str,
) -> Result<MetadataMap, TemplateError> {
    let mut map = MetadataMap::new();
    for (k, v) in pairs {
        let key = k.to_ascii_lowercase();
        let bad = |what: &str| TemplateError {
            path: format!("{path}.{k}"),
            message: what.to_owned(),
        };
        if key.ends_with("-bin") {
            let key = tonic::metadata::BinaryMetadataKey::from_bytes(key.as_bytes())
                .map_err(|_| bad("not a valid metadata key"))?;
            map.insert_bin(
                key,
                tonic::metadata::BinaryMetadataValue::from_bytes(v.as_bytes()),
            );
        } else {
            let key =
                tonic::metadata::AsciiMetadataKey::from_bytes(key.as_bytes()).map_err(|_| {
                    bad("not a valid metadata key (lowercase letters, digits, '-', '_', '.')")
                })?;
            let value = v.parse().map_err(|_| {
                bad("metadata values must be printable ASCII; use a key ending in -bin for binary")
            })?;
            map.insert(key, value);
        }
    }
    Ok(map)
}

impl ErrorAction {
    pub fn compile(spec: &ErrorSpec, info: &MethodInfo, path: &str) -> Result<Self, TemplateError> {
        let code = parse_code(&spec.code).map_err(|message| TemplateError {
            path: format!("{path}.code"),
            message,
        })?;
        let message =
            TextTemplate::compile(&spec.message, &info.input, &format!("{path}.message"))?;
        let metadata = parse_metadata(&spec.metadata, &format!("{path}.metadata"))?;
        Ok(Self {
            code,
            message,
            metadata,
        })
    }

    pub fn status(&self, req: &DynamicMessage) -> Status {
        Status::with_metadata(self.code, self.message.render(req), self.metadata.clone())
    }
}
