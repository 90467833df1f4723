//! Regressions of metadata values that start or end with a space or tab. HTTP/2 forbids such
//! a field value (RFC 9113, section 8.2.1), yet a handler file's `headers` and a script's
//! `ctx:set_header`/`ctx:set_trailer` took them and sent them as written: python's h2 (under
//! grpcio's pure-Python tools) rejected the whole response as a protocol error, and Node's
//! HTTP/2 (under @grpc/grpc-js) dropped the header without a word. They are refused now, at
//! `check` and startup with the value's line and column, and in the script where it sets them.

mod common;

use serde_json::json;

const PROTO: &str = r#"
syntax = "proto3";
package pad;

service S {
  rpc Fixed (Req) returns (Out);
  rpc Scripted (Req) returns (Out);
}

message Req { string key = 1; string value = 2; bool trailer = 3; }
message Out { string text = 1; }
"#;

/// Sets the request's key and value as a header (or a trailer) and says whether it took.
const SCRIPT: &str = r#"
function Scripted(req, ctx)
  local set = req.trailer and ctx.set_trailer or ctx.set_header
  local ok, err = pcall(set, ctx, req.key, req.value)
  return { text = ok and "set" or tostring(err) }
end
"#;

const HANDLERS: &str = r#"{ "service": "pad.S", "methods": {
  "Fixed": { "reply": { "text": "fixed" }, "headers": { "x-ok": "a b", "x-pad": " padded " } },
  "Scripted": { "script": "pad.lua" } } }"#;

fn project(handlers: &str) -> tempfile::TempDir {
    common::project_folder(&[
        ("protos/pad.proto", PROTO),
        ("handlers/pad.json", handlers),
        ("handlers/pad.lua", SCRIPT),
    ])
}

#[test]
fn a_padded_header_value_in_a_handler_file_is_a_problem_at_its_place() {
    let dir = project(HANDLERS);
    let protos = dir.path().join("protos");
    let handlers = dir.path().join("handlers");
    let (code, _, err) = common::run(&[
        "check",
        "--protos",
        protos.to_str().unwrap(),
        "--handlers",
        handlers.to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "{err}");
    let line = HANDLERS.lines().position(|l| l.contains("x-pad")).unwrap() + 1;
    let col = HANDLERS
        .lines()
        .nth(line - 1)
        .unwrap()
        .find("\"x-pad\"")
        .unwrap()
        + 1;
    let wanted = format!("pad.json:{line}:{col}: pad.S/Fixed: headers.x-pad: ");
    assert!(err.contains(&wanted), "{wanted:?} missing in:\n{err}");
    assert!(
        err.contains("may not start or end with a space or tab"),
        "{err}"
    );
    assert!(err.contains("1 problem(s) found"), "{err}");
}

#[tokio::test]
async fn scripts_cannot_send_a_padded_header_or_trailer_value() {
    let dir = project(
        r#"{ "service": "pad.S", "methods": {
  "Fixed": { "reply": { "text": "fixed" }, "headers": { "x-ok": "a b" } },
  "Scripted": { "script": "pad.lua" } } }"#,
    );
    let (_server, client) = common::serve_folders(
        &dir.path().join("protos"),
        &dir.path().join("handlers"),
        &[],
    )
    .await;
    for (value, trailer) in [
        ("value ", false),
        (" lead", true),
        ("\tv", false),
        ("v\t", true),
    ] {
        let out = client
            .unary(
                "pad.S/Scripted",
                json!({ "key": "x-script", "value": value, "trailer": trailer }),
            )
            .await
            .unwrap_or_else(|e| panic!("{value:?}: the client gets the reply: {e:?}"));
        let text = out["text"].as_str().unwrap_or_default();
        assert!(
            text.contains("may not start or end with a space or tab"),
            "{value:?} (trailer: {trailer}): the script is told: {text}"
        );
    }
    // Inner spaces and tabs are fine, and go out.
    let out = client
        .unary(
            "pad.S/Scripted",
            json!({ "key": "x-script", "value": "a b\tc" }),
        )
        .await
        .unwrap();
    assert_eq!(out["text"], "set");
    let out = client.unary("pad.S/Fixed", json!({})).await.unwrap();
    assert_eq!(out["text"], "fixed");
}
