//! The admin API as the gRPC service `protoserve.admin.v1.Admin`, with server reflection.
//!
//! Requests are decoded as [`DynamicMessage`]s of the shipped `.proto` and turned into the
//! same [`Op`]s the HTTP routes run; answers are the same JSON, read into the response message
//! with the proto3 JSON mapping. So the two front ends cannot drift apart: a field the JSON
//! has and the message lacks is the only difference possible, and the tests compare them.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Buf;
use http::{Request, Response};
use prost::Message;
use prost_reflect::{
    DeserializeOptions, DynamicMessage, MessageDescriptor, MethodDescriptor, SerializeOptions,
};
use serde_json::Value as Json;
use tonic::body::Body;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::server::{Grpc, UnaryService};
use tonic::Status;
use tower::Service;

use super::http::MAX_BODY;
use super::schema::AdminSchema;
use super::{Admin, Op};
use crate::error::AdminError;
use crate::router::BuiltinService;

/// The gRPC front end: the admin service and reflection over its `.proto`.
#[derive(Clone)]
pub struct GrpcFront {
    admin: Arc<Admin>,
    methods: Arc<[(String, MethodDescriptor)]>,
    reflection: Arc<[(String, BuiltinService)]>,
}

impl GrpcFront {
    pub fn new(admin: Arc<Admin>, schema: &AdminSchema) -> Result<Self, String> {
        let reflection = crate::builtin::reflection_over(&[&schema.encoded])
            .map_err(|e| format!("reflection over the admin .proto failed: {e}"))?;
        let service = schema.service.full_name();
        let methods: Vec<(String, MethodDescriptor)> = schema
            .service
            .methods()
            .map(|m| (format!("/{service}/{}", m.name()), m))
            .collect();
        Ok(Self {
            admin,
            methods: methods.into(),
            reflection: reflection.into(),
        })
    }

    pub async fn call(&self, req: Request<Body>) -> Response<Body> {
        let path = req.uri().path();
        if let Some((_, method)) = self.methods.iter().find(|(p, _)| p == path) {
            let method = method.clone();
            let mut grpc = Grpc::new(AdminCodec(method.input()))
                .accept_compressed(tonic::codec::CompressionEncoding::Gzip)
                .send_compressed(tonic::codec::CompressionEncoding::Gzip)
                .max_decoding_message_size(MAX_BODY)
                .max_encoding_message_size(usize::MAX);
            let call = AdminCall {
                admin: self.admin.clone(),
                method,
            };
            // Inflated off the threads that drive the network, which serve the gRPC port too;
            // its limit is no flag's.
            let limit = crate::layers::inflate::Limit::new(MAX_BODY, None);
            let req = crate::layers::inflate::inflating(req, limit, None);
            return grpc.unary(call, req).await;
        }
        for (prefix, svc) in self.reflection.iter() {
            if path.starts_with(prefix) {
                let result: Result<Response<Body>, Infallible> = svc.clone().call(req).await;
                return match result {
                    Ok(resp) => resp,
                    Err(never) => match never {},
                };
            }
        }
        Status::unimplemented(format!(
            "unknown method {path}: the admin listener serves protoserve.admin.v1.Admin and server reflection"
        ))
        .into_http()
    }
}

/// One call of the admin service.
#[derive(Clone)]
struct AdminCall {
    admin: Arc<Admin>,
    method: MethodDescriptor,
}

type CallFuture =
    Pin<Box<dyn Future<Output = Result<tonic::Response<DynamicMessage>, Status>> + Send>>;

impl UnaryService<DynamicMessage> for AdminCall {
    type Response = DynamicMessage;
    type Future = CallFuture;

    fn call(&mut self, request: tonic::Request<DynamicMessage>) -> Self::Future {
        let admin = self.admin.clone();
        let method = self.method.clone();
        Box::pin(async move {
            let request = to_json(request.get_ref())?;
            let op = op_for(method.name(), request)?;
            let answer = admin.run(op).await?;
            from_json(&method.output(), answer).map(tonic::Response::new)
        })
    }
}

/// The request message as JSON with the `.proto`'s field names, defaults left out.
fn to_json(msg: &DynamicMessage) -> Result<Json, AdminError> {
    let options = SerializeOptions::new().use_proto_field_name(true);
    msg.serialize_with_options(serde_json::value::Serializer, &options)
        .map_err(|e| AdminError::Internal(format!("reading the request failed: {e}")))
}

/// The JSON answer as the response message. Fields the message does not have are left out.
fn from_json(desc: &MessageDescriptor, answer: Json) -> Result<DynamicMessage, Status> {
    let options = DeserializeOptions::new().deny_unknown_fields(false);
    DynamicMessage::deserialize_with_options(desc.clone(), answer, &options)
        .map_err(|e| Status::internal(format!("the answer does not fit {}: {e}", desc.full_name())))
}

fn text(request: &Json, key: &str) -> String {
    request[key].as_str().unwrap_or_default().to_owned()
}

/// The operation a method asks for, with its request's fields.
fn op_for(method: &str, request: Json) -> Result<Op, AdminError> {
    Ok(match method {
        "Status" => Op::Status,
        "ListServices" => Op::Services,
        "Reload" => Op::Reload,
        "PutHandler" => Op::PutHandler {
            method: text(&request, "method"),
            entry: match request.get("entry") {
                Some(entry) => entry.clone(),
                None => {
                    return Err(AdminError::BadRequest(
                        "give the handler entry in \"entry\", such as {\"reply\": {…}}".into(),
                    ))
                }
            },
            // A Struct has no text to locate problems in; their paths inside it say where.
            text: None,
        },
        "RemoveHandler" => Op::RemoveHandler {
            method: text(&request, "method"),
        },
        "Reset" => Op::Reset,
        "ListCalls" => Op::ListCalls(query_pairs(&request)?),
        "GetCall" => Op::GetCall(match &request["id"] {
            Json::String(s) => s.clone(),
            Json::Number(n) => n.to_string(),
            _ => "0".into(),
        }),
        "ClearJournal" => Op::ClearJournal,
        "Verify" => Op::Verify(request),
        other => {
            return Err(AdminError::NotFound(format!(
                "the admin service has no method {other}"
            )))
        }
    })
}

/// A `ListCallsRequest` as the query parameters of `GET /v1/journal`. A metadata filter is
/// `KEY=VALUE` there, split at the first `=`: a value may hold `=`, and a key never does (no
/// metadata key can), so a key with one is refused rather than split into another filter.
fn query_pairs(request: &Json) -> Result<Vec<(String, String)>, AdminError> {
    let mut pairs = Vec::new();
    let Json::Object(fields) = request else {
        return Ok(pairs);
    };
    for (key, value) in fields {
        match value {
            Json::Object(map) if key == "metadata" => {
                for (k, v) in map {
                    if k.contains('=') {
                        return Err(AdminError::BadRequest(format!(
                            "metadata {k:?}: not a metadata key (keys hold letters, digits, '-', '_' and '.', never '='); a value may hold '='"
                        )));
                    }
                    pairs.push((
                        "metadata".to_owned(),
                        format!("{k}={}", v.as_str().unwrap_or_default()),
                    ));
                }
            }
            Json::String(s) => pairs.push((key.clone(), s.clone())),
            Json::Number(n) => pairs.push((key.clone(), n.to_string())),
            _ => {}
        }
    }
    Ok(pairs)
}

/// Encodes and decodes the admin service's messages, whose types are known at run time.
struct AdminCodec(MessageDescriptor);

impl Codec for AdminCodec {
    type Encode = DynamicMessage;
    type Decode = DynamicMessage;
    type Encoder = AdminEncoder;
    type Decoder = AdminDecoder;

    fn encoder(&mut self) -> AdminEncoder {
        AdminEncoder
    }

    fn decoder(&mut self) -> AdminDecoder {
        AdminDecoder(self.0.clone())
    }
}

struct AdminEncoder;

impl Encoder for AdminEncoder {
    type Item = DynamicMessage;
    type Error = Status;

    fn encode(&mut self, item: DynamicMessage, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.reserve(item.encoded_len());
        item.encode(dst)
            .map_err(|e| Status::internal(format!("encoding the answer failed: {e}")))
    }
}

struct AdminDecoder(MessageDescriptor);

impl Decoder for AdminDecoder {
    type Item = DynamicMessage;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<DynamicMessage>, Status> {
        let bytes = src.copy_to_bytes(src.remaining());
        DynamicMessage::decode(self.0.clone(), bytes)
            .map(Some)
            .map_err(|e| {
                Status::invalid_argument(format!(
                    "the request is not a valid {}: {e}",
                    self.0.full_name()
                ))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn output(method: &str) -> MessageDescriptor {
        let schema = super::super::schema::compile().unwrap();
        let m = schema
            .service
            .methods()
            .find(|m| m.name() == method)
            .unwrap();
        m.output()
    }

    /// Every field of the JSON answers is a field of the gRPC message, under the same name.
    fn round_trips(method: &str, answer: Json) {
        let desc = output(method);
        let strict = DeserializeOptions::new().deny_unknown_fields(true);
        let msg = DynamicMessage::deserialize_with_options(desc, answer.clone(), &strict)
            .unwrap_or_else(|e| panic!("{method}: {e}\n{answer:#}"));
        assert!(msg.fields().next().is_some(), "{method}: nothing mapped");
    }

    #[test]
    fn json_answers_map_onto_the_messages() {
        round_trips(
            "Status",
            json!({"generation": 3, "loaded_at": "2024-05-01T12:00:00Z", "load_ms": 12,
                   "inputs": {"protos": ["protos"], "handlers": "handlers"},
                   "last_reload": {"ok": false, "at": "2024-05-01T12:00:00Z",
                                   "problems": [{"file": "a.json", "line": 1, "col": 2, "message": "m"}]},
                   "runtime_handlers": 0,
                   "journal": {"enabled": true, "calls": 1, "bytes": 2, "max_calls": 3, "max_bytes": 4, "evicted": 0}}),
        );
        round_trips(
            "ListServices",
            json!({"services": [{"name": "a.S", "methods": [{"name": "M", "path": "/a.S/M",
                   "shape": "unary", "input": "a.I", "output": "a.O",
                   "handler": {"kind": "reply", "source": "file", "file": "h.json"}},
                   {"name": "N", "path": "/a.S/N", "shape": "unary", "input": "a.I", "output": "a.O", "handler": null}]}]}),
        );
        round_trips(
            "ListCalls",
            json!({"calls": [{"id": 1, "method": "a.S/M", "shape": "unary", "peer": "127.0.0.1:1",
                   "started_at": "x", "ended_at": null, "duration_ms": null, "state": "in_progress",
                   "status": null, "handler": {"kind": "rules", "source": "file", "file": "f", "rules": [0, 2]},
                   "requests": 1, "responses": 0, "dropped_messages": 0,
                   "metadata": {"x": "y"}, "response_headers": null, "trailers": {"t": "v"},
                   "messages": [{"direction": "request", "index": 0, "at_ms": 0.5, "size": 3,
                                 "message": {"name": "x", "n": [1, 2]}},
                                {"direction": "response", "index": 0, "at_ms": 0.7, "size": 2,
                                 "message": null, "error": "bad", "bytes_base64": "AAE="}]}],
                   "next_page_token": "1"}),
        );
        round_trips(
            "Verify",
            json!({"ok": false, "method": "a.S/M", "expected": {"exactly": 2}, "count": 1,
                   "calls_to_method": 3, "matched": [4], "message": "m", "note": "n",
                   "near_misses": [{"id": 5, "failed": ["request.name: wanted \"a\", got \"b\""],
                                    "request": {"name": "b"}}]}),
        );
        round_trips("ClearJournal", json!({"cleared": 3}));
    }

    #[test]
    fn list_calls_requests_become_query_pairs() {
        let pairs = query_pairs(
            &json!({"method": "a.S/M", "page_size": 5, "metadata": {"x-user": "al=ice"}}),
        )
        .unwrap();
        assert!(pairs.contains(&("method".into(), "a.S/M".into())));
        assert!(pairs.contains(&("page_size".into(), "5".into())));
        assert!(pairs.contains(&("metadata".into(), "x-user=al=ice".into())));
    }
}
