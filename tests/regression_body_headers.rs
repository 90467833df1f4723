//! Regressions of response metadata naming the body's own HTTP fields: a handler file or a
//! script could send `content-length` (or `content-encoding`) as a header or trailer, which
//! misstates the body the server sends: HTTP/2 clients that check it (hyper's, so tonic's)
//! reject the response as malformed, and one that believes `content-encoding` tries to
//! decode a body that is not encoded. Both keys are refused now, as `content-type` and
//! `grpc-*` were: at startup with the file's place, and in the script where it sets them.

mod common;

use serde_json::json;

const PROTO: &str = r#"
syntax = "proto3";
package body;

service S {
  rpc Header (Req) returns (Out);
  rpc Trailer (Req) returns (Out);
  rpc Encoding (Req) returns (Out);
}

message Req { string key = 1; }
message Out { string text = 1; }
"#;

/// Sets the request's `key` as a header, a trailer or both ways, and says whether each took.
const SCRIPT: &str = r#"
local function try(f, key)
  local ok, err = pcall(f, key, "1")
  return ok and "set" or tostring(err)
end
function Header(req, ctx)
  return { text = try(function(k, v) ctx:set_header(k, v) end, req.key) }
end
function Trailer(req, ctx)
  return { text = try(function(k, v) ctx:set_trailer(k, v) end, req.key) }
end
function Encoding(req, ctx)
  return { text = try(function(k, v) ctx:set_header(k, v) end, "content-encoding") }
end
"#;

fn project(handler_json: &str) -> tempfile::TempDir {
    common::project_folder(&[
        ("protos/body.proto", PROTO),
        ("handlers/body.json", handler_json),
        ("handlers/body.lua", SCRIPT),
    ])
}

#[tokio::test]
async fn scripts_cannot_send_the_bodys_own_length_or_encoding() {
    let dir = project(
        r#"{ "service": "body.S", "methods": {
  "Header": { "script": "body.lua" }, "Trailer": { "script": "body.lua" },
  "Encoding": { "script": "body.lua" } } }"#,
    );
    let (_server, client) = common::serve_folders(
        &dir.path().join("protos"),
        &dir.path().join("handlers"),
        &[],
    )
    .await;
    for (method, key) in [
        ("body.S/Header", "content-length"),
        ("body.S/Trailer", "Content-Length"),
        ("body.S/Encoding", ""),
    ] {
        let out = client
            .unary(method, json!({ "key": key }))
            .await
            .unwrap_or_else(|e| panic!("{method}: the client gets the reply: {e:?}"));
        let text = out["text"].as_str().unwrap_or_default();
        assert!(
            text.contains("is reserved for gRPC and HTTP/2"),
            "{method}: the script is told: {text}"
        );
    }
    // Other keys still go out.
    let out = client
        .unary("body.S/Header", json!({ "key": "x-length" }))
        .await
        .unwrap();
    assert_eq!(out["text"], "set");
}

#[test]
fn handler_files_setting_the_bodys_own_length_or_encoding_are_refused_at_startup() {
    let dir = project(
        r#"{ "service": "body.S", "methods": {
  "Header": { "reply": { "text": "hi" }, "headers": { "content-length": "1" } },
  "Trailer": { "error": { "code": "NOT_FOUND", "metadata": { "Content-Encoding": "gzip" } } },
  "Encoding": { "script": "body.lua" }
} }"#,
    );
    let root = dir.path();
    let (code, _, err) = common::run(&[
        "check",
        "--protos",
        root.join("protos").to_str().unwrap(),
        "--handlers",
        root.join("handlers").to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("headers.content-length: metadata \"content-length\" is reserved"),
        "{err}"
    );
    assert!(
        err.contains("error.metadata.Content-Encoding: metadata \"content-encoding\" is reserved"),
        "{err}"
    );
    assert!(err.contains("body.json:2:"), "{err}");
}
