//! Journal records as JSON, made only when someone reads the journal: messages are decoded
//! with the method's descriptors and written as proto3 JSON, statuses get their names,
//! timestamps are RFC 3339.
//!
//! The journal holds messages as bytes (`--journal-bytes`), but their decoded and JSON forms
//! can take fifty times as much: a packed field of one-byte numbers or a repeated field of empty
//! strings becomes a value of dozens of bytes per element, a string of control characters six
//! times its length as JSON text. Read whole, a full journal of such messages took gigabytes
//! per read. So each read has a [`RenderBudget`]: a message is costed from its bytes before it
//! is decoded ([`wire::check`], as requests are), and one that would take the read past its
//! budget is shown as its bytes (`bytes_base64`) with an `error` saying why; a page of the
//! journal ends early instead (see [`crate::journal::query`]).

use std::time::Duration;

use base64::Engine as _;
use http::HeaderMap;
use prost_reflect::{DynamicMessage, MessageDescriptor};
use serde_json::{json, Map, Value as Json};

use super::{Call, CallView, Direction};
use crate::codec::DECODED_PER_ENCODED;
use crate::metadata::code_name;
use crate::wire;

/// The most one read of the journal (a page, one call, a verify's shown messages) may spend
/// on messages, by their estimated decoded size plus the most their JSON text may take.
pub const READ_BUDGET: usize = 64 * 1024 * 1024;

/// JSON text per byte of a message at most: a string byte written as `\u0001`.
const TEXT_PER_BYTE: usize = 6;

/// What a journal read may still spend on messages (see the module docs).
#[derive(Debug, Clone)]
pub struct RenderBudget {
    total: usize,
    left: usize,
    /// Whether a message was shown as bytes for want of budget.
    refused: bool,
}

impl Default for RenderBudget {
    fn default() -> Self {
        Self::new(READ_BUDGET)
    }
}

impl RenderBudget {
    pub fn new(bytes: usize) -> Self {
        Self {
            total: bytes,
            left: bytes,
            refused: false,
        }
    }

    /// Whether a message was shown as bytes because the read's budget was spent.
    pub fn refused(&self) -> bool {
        self.refused
    }

    /// Spends what a message shown as its bytes takes: its base64 text. Messages shown so
    /// (too costly to decode, or not valid) were not counted, and a page of them went on to
    /// hundreds of megabytes; past the budget, the read is cut as for a message not decoded.
    fn spend_shown_bytes(&mut self, len: usize) {
        let text = len.div_ceil(3).saturating_mul(4);
        self.refused |= text > self.left;
        self.left = self.left.saturating_sub(text);
    }
}

/// How much of a call to show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    /// Who called what, when, and how it ended.
    Summary,
    /// Also metadata, every message, response headers and trailers.
    Full,
}

/// Request headers not shown: they are the same for every gRPC call.
const TRANSPORT_HEADERS: &[&str] = &["te", "content-type"];
/// Trailers shown as the status instead.
const STATUS_HEADERS: &[&str] = &["grpc-status", "grpc-message", "content-type"];
/// Response headers the protocol sets (see [`super::arena::protocol_response_header`]).
const PROTOCOL_RESPONSE_HEADERS: &[&str] =
    &["content-type", "grpc-encoding", "grpc-accept-encoding"];

/// Header values by name; a name sent several times has its values joined with `, `.
pub fn headers_json(headers: &HeaderMap, skip: &[&str]) -> Json {
    let mut out = Map::new();
    for key in headers.keys() {
        if skip.contains(&key.as_str()) {
            continue;
        }
        let values: Vec<String> = headers
            .get_all(key)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect();
        out.insert(key.as_str().to_owned(), Json::String(values.join(", ")));
    }
    Json::Object(out)
}

fn millis(d: Duration) -> Json {
    json!((d.as_secs_f64() * 1_000_000.0).round() / 1000.0)
}

/// A message as proto3 JSON, or what is wrong with its bytes, on a budget of its own.
pub fn message_json(desc: Option<&MessageDescriptor>, bytes: &[u8]) -> Result<Json, String> {
    message_json_within(desc, bytes, &mut RenderBudget::default())
}

/// A message as proto3 JSON, or what is wrong with its bytes (or why it was not decoded),
/// spending from `budget` what its decoded form and its text may take. A message is never
/// decoded into more than [`DECODED_PER_ENCODED`] times its size (as requests are held to),
/// whatever the budget.
pub fn message_json_within(
    desc: Option<&MessageDescriptor>,
    bytes: &[u8],
    budget: &mut RenderBudget,
) -> Result<Json, String> {
    let Some(desc) = desc else {
        return Err("the method is not in the served protos".into());
    };
    let text = bytes.len().saturating_mul(TEXT_PER_BYTE);
    let own = bytes
        .len()
        .saturating_mul(DECODED_PER_ENCODED)
        .saturating_add(64 * 1024);
    let limit = own.min(budget.left.saturating_sub(text));
    let mut cost = wire::Cost::new(limit);
    let (total, taken) = (budget.total, budget.total.saturating_sub(budget.left));
    let too_costly = |cost: usize| {
        format!(
            "not decoded: as JSON this {} would take over {cost} bytes of memory, more than {} (its bytes are shown instead)",
            desc.full_name(),
            if limit == own {
                format!("{DECODED_PER_ENCODED} times its size")
            } else {
                // Shown only for a call read with a whole budget (a page ends before any other
                // call it could not show), so reading fewer calls would not help.
                format!(
                    "what one read of the journal may spend on a call's messages ({} bytes, of which the call's earlier messages took {})",
                    total, taken
                )
            }
        )
    };
    match wire::check(bytes, desc, &mut cost) {
        Ok(()) => {}
        Err(wire::Invalid::Malformed(e)) => {
            return Err(format!("not a valid {}: {e}", desc.full_name()))
        }
        Err(wire::Invalid::TooCostly { cost, .. }) => {
            // Cut short by the read's budget: unless it is too costly by its own bound anyway
            // (then it is shown as bytes on any page, and the page goes on).
            let own_bound = limit < own && {
                let mut alone = wire::Cost::new(own);
                wire::check(bytes, desc, &mut alone).is_err()
            };
            if own_bound {
                return Err(format!(
                    "not decoded: as JSON this {} would take over {own} bytes of memory, more than {DECODED_PER_ENCODED} times its size (its bytes are shown instead)",
                    desc.full_name()
                ));
            }
            budget.refused |= limit < own;
            return Err(too_costly(cost));
        }
    }
    budget.left = budget
        .left
        .saturating_sub(cost.spent().saturating_add(text));
    let msg = DynamicMessage::decode(desc.clone(), bytes)
        .map_err(|e| format!("not a valid {}: {e}", desc.full_name()))?;
    serde_json::to_value(&msg)
        .map_err(|e| format!("cannot write {} as JSON: {e}", desc.full_name()))
}

/// The record as JSON, or `None` if it left the journal meanwhile (a read of its own).
pub fn call_json(record: &Call, view: View) -> Option<Json> {
    let log = record.snapshot()?;
    Some(call_json_from(
        record,
        &log,
        view,
        &mut RenderBudget::default(),
    ))
}

/// The record as JSON from a snapshot of it, its messages rendered within `budget`.
pub fn call_json_from(
    record: &Call,
    log: &CallView,
    view: View,
    budget: &mut RenderBudget,
) -> Json {
    let mut out = Map::new();
    out.insert("id".into(), json!(record.id));
    out.insert("method".into(), json!(log.method_name));
    out.insert(
        "shape".into(),
        log.method
            .as_ref()
            .map_or(Json::Null, |m| json!(m.shape.name())),
    );
    out.insert(
        "peer".into(),
        log.peer.map_or(Json::Null, |p| json!(p.to_string())),
    );
    out.insert(
        "started_at".into(),
        json!(humantime::format_rfc3339_micros(record.started_at()).to_string()),
    );
    let ended = log.end.as_ref().map(|(_, after)| *after);
    out.insert(
        "ended_at".into(),
        ended.map_or(Json::Null, |after| {
            json!(humantime::format_rfc3339_micros(record.started_at() + after).to_string())
        }),
    );
    out.insert("duration_ms".into(), ended.map_or(Json::Null, millis));
    out.insert(
        "state".into(),
        json!(if ended.is_some() {
            "done"
        } else {
            "in_progress"
        }),
    );
    out.insert(
        "status".into(),
        log.status.as_ref().map_or(
            Json::Null,
            |(code, message)| json!({"code": code, "name": code_name(*code), "message": message}),
        ),
    );
    out.insert("handler".into(), handler_json(log));
    let requests = log
        .frames
        .iter()
        .filter(|f| f.direction == Direction::Request)
        .count();
    out.insert("requests".into(), json!(requests));
    out.insert("responses".into(), json!(log.frames.len() - requests));
    out.insert("dropped_messages".into(), json!(log.dropped));
    if view == View::Full {
        out.insert(
            "metadata".into(),
            headers_json(&log.metadata, TRANSPORT_HEADERS),
        );
        out.insert("messages".into(), Json::Array(messages_json(log, budget)));
        // Null when no response headers went out (the call ended before it answered, or
        // answered Trailers-Only, whose only headers are the trailers); {} when the response
        // had no headers besides the protocol's.
        out.insert(
            "response_headers".into(),
            log.response_headers
                .as_ref()
                .map_or(Json::Null, |h| headers_json(h, PROTOCOL_RESPONSE_HEADERS)),
        );
        out.insert(
            "trailers".into(),
            log.trailers
                .as_ref()
                .map_or(Json::Null, |h| headers_json(h, STATUS_HEADERS)),
        );
    }
    Json::Object(out)
}

fn handler_json(log: &CallView) -> Json {
    let Some(note) = &log.handler else {
        return Json::Null;
    };
    let mut out = Map::new();
    out.insert("kind".into(), json!(note.kind));
    if let Some(source) = note.origin.source() {
        out.insert("source".into(), json!(source));
    }
    if let Some(file) = note.origin.file() {
        out.insert("file".into(), json!(file.display().to_string()));
    }
    if !log.rules.is_empty() {
        out.insert("rules".into(), json!(log.rules));
    }
    Json::Object(out)
}

fn messages_json(log: &CallView, budget: &mut RenderBudget) -> Vec<Json> {
    let input = log.method.as_ref().map(|m| &m.input);
    let output = log.method.as_ref().map(|m| &m.output);
    let (mut requests, mut responses) = (0usize, 0usize);
    log.frames
        .iter()
        .map(|frame| {
            let (direction, index, desc) = match frame.direction {
                Direction::Request => {
                    requests += 1;
                    ("request", requests - 1, input)
                }
                Direction::Response => {
                    responses += 1;
                    ("response", responses - 1, output)
                }
            };
            let mut out = Map::new();
            out.insert("direction".into(), json!(direction));
            out.insert("index".into(), json!(index));
            out.insert("at_ms".into(), millis(frame.at));
            out.insert("size".into(), json!(frame.bytes.len()));
            match message_json_within(desc, &frame.bytes, budget) {
                Ok(message) => {
                    out.insert("message".into(), message);
                }
                Err(error) => {
                    budget.spend_shown_bytes(frame.bytes.len());
                    out.insert("message".into(), Json::Null);
                    out.insert("error".into(), json!(error));
                    out.insert(
                        "bytes_base64".into(),
                        json!(base64::engine::general_purpose::STANDARD.encode(&frame.bytes)),
                    );
                }
            }
            Json::Object(out)
        })
        .collect()
}
