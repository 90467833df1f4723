//! Requests at the edges of what the server accepts, and what the log shows of them: Unicode
//! line separators and bidi controls in logged text, a gRPC request with a method other than
//! POST, a deadline that has passed on arrival, a content-type in capitals, a script unpacking
//! more values than fit, and a descriptor set nesting messages past the decoder's limit.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::Server;

const PROTO: &str = r#"syntax = "proto3";
package edge;
message M { string name = 1; }
service Edge {
  rpc Reply(M) returns (M);
  rpc Rules(M) returns (M);
  rpc Error(M) returns (M);
  rpc Echo(M) returns (M);
  rpc Script(M) returns (M);
  rpc Stream(M) returns (stream M);
  rpc Fails(M) returns (M);
  rpc Unpack(M) returns (M);
}
"#;

const HANDLERS: &str = r#"{
  "service": "edge.Edge",
  "methods": {
    "Reply": { "reply": { "name": "hi {{name}}" } },
    "Rules": { "rules": [ { "when": { "request": { "name": "x" } }, "reply": { "name": "x" } }, { "reply": { "name": "other" } } ] },
    "Error": { "error": { "code": "NOT_FOUND", "message": "none" } },
    "Echo": { "echo": {} },
    "Script": { "script": "edge.lua" },
    "Stream": { "stream": [ { "name": "a" }, { "name": "b" } ] },
    "Fails": { "script": "edge.lua" },
    "Unpack": { "script": "edge.lua" }
  }
}"#;

const SCRIPT: &str = r##"
function Script(req, ctx)
  print("script ran for " .. req.name)
  return { name = "scripted " .. req.name }
end

function Fails(req, ctx)
  print("printed " .. req.name)
  error("failed " .. req.name .. " note " .. tostring(ctx.metadata["x-note"]), 0)
end

function Unpack(req, ctx)
  return { name = tostring(select("#", table.unpack({}, 1, tonumber(req.name)))) }
end
"##;

fn start(extra: &[&str]) -> (Server, tempfile::TempDir) {
    let dir = common::project_folder(&[
        ("protos/edge.proto", PROTO),
        ("handlers/edge.json", HANDLERS),
        ("handlers/edge.lua", SCRIPT),
    ]);
    let server = common::start_folders(
        &dir.path().join("protos"),
        &dir.path().join("handlers"),
        extra,
    );
    (server, dir)
}

/// `M { name }`, framed as one gRPC message.
fn framed_name(name: &str) -> Bytes {
    let mut msg = vec![0x0a, name.len() as u8];
    msg.extend_from_slice(name.as_bytes());
    let mut out = vec![0];
    out.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    out.extend_from_slice(&msg);
    Bytes::from(out)
}

/// What a raw call got: its HTTP status, grpc-status and grpc-message (from a Trailers-Only
/// answer's headers or from the trailers).
#[derive(Debug)]
struct Answer {
    http: u16,
    status: Option<String>,
    message: String,
}

/// Sends `req` with `body` and reads the whole answer (bounded).
async fn call(addr: SocketAddr, req: http::Request<()>, body: Bytes) -> Answer {
    let mut conn = common::h2_connect(addr).await.ready().await.unwrap();
    let (resp, mut send) = conn.send_request(req, false).unwrap();
    send.send_data(body, true).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(20), resp)
        .await
        .expect("no answer")
        .unwrap();
    let http = resp.status().as_u16();
    let get = |h: &http::HeaderMap, k: &str| {
        h.get(k)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    };
    if let Some(status) = get(resp.headers(), "grpc-status") {
        let message = get(resp.headers(), "grpc-message").unwrap_or_default();
        return Answer {
            http,
            status: Some(status),
            message,
        };
    }
    let mut body = resp.into_body();
    while let Some(data) = body.data().await {
        let data = data.unwrap();
        body.flow_control().release_capacity(data.len()).unwrap();
    }
    let trailers = body.trailers().await.unwrap().unwrap_or_default();
    Answer {
        http,
        status: get(&trailers, "grpc-status"),
        message: get(&trailers, "grpc-message").unwrap_or_default(),
    }
}

/// Characters that make one log line look like two, or reorder what a terminal shows.
const HOSTILE: &[char] = &[
    '\u{2028}', '\u{2029}', '\u{85}', '\u{202a}', '\u{202b}', '\u{202c}', '\u{202d}', '\u{202e}',
    '\u{2066}', '\u{2067}', '\u{2068}', '\u{2069}', '\u{7f}', '\u{1b}', '\u{200f}',
];

#[tokio::test]
async fn script_errors_and_prints_reach_the_log_with_line_separators_and_bidi_controls_escaped() {
    let (server, _dir) = start(&[]);
    let name: String = HOSTILE.iter().flat_map(|c| ['x', *c]).collect();
    let req = common::grpc_request(server.addr, "/edge.Edge/Fails")
        .header(
            "x-note",
            http::HeaderValue::from_bytes("N\u{2028}O\u{202e}TE".as_bytes()).unwrap(),
        )
        .body(())
        .unwrap();
    let answer = call(server.addr, req, framed_name(&name)).await;
    assert_eq!(answer.status.as_deref(), Some("13"), "{answer:?}");
    assert_eq!(answer.http, 200, "{answer:?}");
    assert!(answer.message.contains("failed"), "{answer:?}");
    let error = server.wait_for_log("script error: failed");
    server.wait_for_log("printed x");
    for line in server.log() {
        for c in HOSTILE {
            assert!(
                !line.contains(*c),
                "a log line holds U+{:04X} raw: {line:?}",
                *c as u32
            );
        }
    }
    for c in HOSTILE {
        let escaped = format!("\\u{{{:x}}}", *c as u32);
        assert!(
            error.contains(&escaped),
            "{escaped} in the script error line: {error:?}"
        );
    }
    let printed = server.wait_for_log("printed x");
    assert!(
        printed.contains("\\u{2028}") && printed.contains("\\u{202e}"),
        "{printed:?}"
    );
}

/// A file name the server warns about reaches the log escaped as well: here a folder under the
/// data folder, named with a line separator and a right-to-left override.
#[test]
fn file_names_in_warnings_reach_the_log_with_line_separators_and_bidi_controls_escaped() {
    let data = tempfile::tempdir().unwrap();
    let odd = data.path().join("sub\u{2028}WARN fake\u{202e}dir");
    std::fs::create_dir(&odd).unwrap();
    std::fs::write(odd.join("x.json"), "{}").unwrap();
    let (server, _dir) = start(&["--data", data.path().to_str().unwrap()]);
    let line = server.wait_for_log("are not data sets");
    assert!(
        !line.contains('\u{2028}') && !line.contains('\u{202e}'),
        "raw in the log: {line:?}"
    );
    assert!(
        line.contains("sub\\u{2028}WARN fake\\u{202e}dir"),
        "escaped in the log: {line:?}"
    );
}

/// A gRPC request whose method is not POST is refused as grpc-go refuses it (HTTP 405,
/// INTERNAL), before any handler runs or the journal records a call.
#[tokio::test]
async fn a_grpc_request_that_is_not_a_post_is_refused_with_405_and_internal() {
    let (server, _dir) = start(&[]);
    for method in ["GET", "PUT", "DELETE", "PATCH"] {
        let req = common::grpc_request(server.addr, "/edge.Edge/Script")
            .method(method)
            .body(())
            .unwrap();
        let answer = call(server.addr, req, framed_name("m")).await;
        assert_eq!(answer.http, 405, "{method}: {answer:?}");
        assert_eq!(answer.status.as_deref(), Some("13"), "{method}: {answer:?}");
        assert!(
            answer.message.contains(method) && answer.message.contains("POST"),
            "{method}: {answer:?}"
        );
    }
    // The same call as a POST runs the script, and is the only call in the journal.
    let req = common::grpc_request(server.addr, "/edge.Edge/Script")
        .body(())
        .unwrap();
    let answer = call(server.addr, req, framed_name("posted")).await;
    assert_eq!(answer.status.as_deref(), Some("0"), "{answer:?}");
    server.wait_for_log("script ran for posted");
    let journal = server.admin_get("/v1/journal").await;
    let calls = journal["calls"].as_array().unwrap();
    assert_eq!(calls.len(), 1, "{journal:#}");
    assert!(
        !server.log().iter().any(|l| l.contains("script ran for m")),
        "{:#?}",
        server.log()
    );
}

/// A request string field that is not UTF-8 is named whatever answers it: `reply`, `rules`
/// and `error` said the decoder's "failed to decode Protobuf message: invalid string value",
/// where `echo` and scripts named the field.
#[tokio::test]
async fn a_string_field_that_is_not_utf8_is_named_for_every_handler_kind() {
    let (server, _dir) = start(&[]);
    let mut msg = vec![0x0a, 2, 0xff, 0xfe];
    let mut body = vec![0];
    body.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    body.append(&mut msg);
    let body = Bytes::from(body);
    for path in [
        "/edge.Edge/Reply",
        "/edge.Edge/Rules",
        "/edge.Edge/Error",
        "/edge.Edge/Echo",
        "/edge.Edge/Script",
    ] {
        let req = common::grpc_request(server.addr, path).body(()).unwrap();
        let answer = call(server.addr, req, body.clone()).await;
        assert_eq!(answer.status.as_deref(), Some("3"), "{path}: {answer:?}");
        // (grpc-message is percent-encoded.)
        assert!(
            answer
                .message
                .replace("%20", " ")
                .contains("field edge.M.name is not valid UTF-8"),
            "{path}: {answer:?}"
        );
    }
}

/// A zero `grpc-timeout` in any unit is said as 0 s: `0S` was "outlived its grpc-timeout of
/// 0ns", as Rust writes a zero duration.
#[tokio::test]
async fn a_zero_grpc_timeout_is_said_as_zero_seconds() {
    let (server, _dir) = start(&[]);
    for timeout in ["0S", "0n", "0H"] {
        let req = common::grpc_request(server.addr, "/edge.Edge/Reply")
            .header("grpc-timeout", timeout)
            .body(())
            .unwrap();
        let answer = call(server.addr, req, framed_name("x")).await;
        assert_eq!(answer.status.as_deref(), Some("4"), "{timeout}: {answer:?}");
        // (grpc-message is percent-encoded.)
        assert_eq!(
            answer.message.replace("%20", " "),
            "deadline exceeded: the call came with a grpc-timeout of 0 s, so its deadline had passed when it arrived",
            "{timeout}: {answer:?}"
        );
    }
}

/// A call whose deadline has passed when it arrives gets DEADLINE_EXCEEDED whatever answers it.
#[tokio::test]
async fn a_deadline_passed_on_arrival_is_deadline_exceeded_for_every_handler_kind_and_health() {
    let (server, _dir) = start(&[]);
    let calls = [
        ("/edge.Edge/Reply", framed_name("x")),
        ("/edge.Edge/Rules", framed_name("x")),
        ("/edge.Edge/Error", framed_name("x")),
        ("/edge.Edge/Echo", framed_name("x")),
        ("/edge.Edge/Script", framed_name("x")),
        ("/edge.Edge/Stream", framed_name("x")),
        (
            "/grpc.health.v1.Health/Check",
            Bytes::from_static(&[0, 0, 0, 0, 0]),
        ),
    ];
    for timeout in ["0n", "0u", "0m", "0S", "0M", "0H"] {
        for (path, body) in &calls {
            let req = common::grpc_request(server.addr, path)
                .header("grpc-timeout", timeout)
                .body(())
                .unwrap();
            let answer = call(server.addr, req, body.clone()).await;
            assert_eq!(
                answer.status.as_deref(),
                Some("4"),
                "{path} with grpc-timeout {timeout}: {answer:?}"
            );
        }
    }
    // The calls to served methods are journaled with the status they got; health is not.
    let journal = server
        .admin_get("/v1/journal?page_size=1000&view=summary")
        .await;
    let recorded = journal["calls"].as_array().unwrap();
    assert_eq!(recorded.len(), 6 * 6, "{journal:#}");
    for call in recorded {
        assert_eq!(call["status"]["name"], "DEADLINE_EXCEEDED", "{call:#}");
        assert!(call["handler"]["kind"].is_string(), "{call:#}");
    }
    // A deadline ahead is met as before.
    let req = common::grpc_request(server.addr, "/edge.Edge/Reply")
        .header("grpc-timeout", "5S")
        .body(())
        .unwrap();
    let answer = call(server.addr, req, framed_name("x")).await;
    assert_eq!(answer.status.as_deref(), Some("0"), "{answer:?}");
}

/// MIME types are case-insensitive (RFC 2045): `APPLICATION/GRPC` is gRPC.
#[tokio::test]
async fn a_grpc_content_type_in_any_case_is_accepted() {
    /// A call to Reply with `content-type: ct` (in place of the usual one).
    fn with_content_type(addr: SocketAddr, ct: &str) -> http::Request<()> {
        let mut req = common::grpc_request(addr, "/edge.Edge/Reply")
            .body(())
            .unwrap();
        req.headers_mut()
            .insert(http::header::CONTENT_TYPE, ct.parse().unwrap());
        req
    }

    let (server, _dir) = start(&[]);
    for ct in [
        "APPLICATION/GRPC",
        "Application/gRPC+proto",
        "application/GRPC+PROTO",
        "Application/Grpc;charset=utf-8",
    ] {
        let req = with_content_type(server.addr, ct);
        let answer = call(server.addr, req, framed_name("x")).await;
        assert_eq!(answer.http, 200, "{ct}: {answer:?}");
        assert_eq!(answer.status.as_deref(), Some("0"), "{ct}: {answer:?}");
    }
    for ct in ["APPLICATION/GRPC+JSON", "Application/Json"] {
        let req = with_content_type(server.addr, ct);
        let answer = call(server.addr, req, framed_name("x")).await;
        assert_eq!(answer.http, 415, "{ct}: {answer:?}");
    }
}

/// Unpacking more values than a script's stack holds fails with Lua's own words, the count and
/// the limit, not a stack overflow.
#[tokio::test]
async fn unpacking_too_many_values_says_so_with_the_count_and_the_limit() {
    let (server, dir) = start(&[]);
    let client =
        common::Client::connect(server.addr, common::pool(&dir.path().join("protos"))).await;
    let err = client
        .unary("edge.Edge/Unpack", serde_json::json!({"name": "900000"}))
        .await
        .unwrap_err();
    assert!(
        err.message()
            .contains("edge.lua:13: too many results to unpack (900000 values; at most 400000)"),
        "{err:?}"
    );
    // The limit itself is within it; one more is not.
    let ok = client
        .unary("edge.Edge/Unpack", serde_json::json!({"name": "400000"}))
        .await
        .unwrap();
    assert_eq!(ok["name"], "400000");
    let err = client
        .unary("edge.Edge/Unpack", serde_json::json!({"name": "400001"}))
        .await
        .unwrap_err();
    assert!(
        err.message().contains("(400001 values; at most 400000)"),
        "{err:?}"
    );
}

/// A descriptor set of one file whose message `dset.L0` nests `depth` messages inside it
/// (`L0.L1.L2…`), each holding a field of the next.
fn set_nesting_messages(depth: usize) -> Vec<u8> {
    use prost::Message as _;
    use prost_types::field_descriptor_proto::{Label, Type};
    use prost_types::{
        DescriptorProto, FieldDescriptorProto, FileDescriptorProto, FileDescriptorSet,
    };
    let mut inner: Option<DescriptorProto> = None;
    for level in (0..=depth).rev() {
        let mut message = DescriptorProto {
            name: Some(format!("L{level}")),
            ..Default::default()
        };
        if let Some(next) = inner.take() {
            let path: String = (0..=level + 1).map(|l| format!(".L{l}")).collect();
            message.field.push(FieldDescriptorProto {
                name: Some("next".into()),
                number: Some(1),
                label: Some(Label::Optional as i32),
                r#type: Some(Type::Message as i32),
                type_name: Some(format!(".dset{path}")),
                ..Default::default()
            });
            message.nested_type.push(next);
        }
        inner = Some(message);
    }
    let file = FileDescriptorProto {
        name: Some("deep_messages.proto".into()),
        package: Some("dset".into()),
        syntax: Some("proto3".into()),
        message_type: vec![inner.unwrap()],
        ..Default::default()
    };
    FileDescriptorSet { file: vec![file] }.encode_to_vec()
}

/// A descriptor set whose messages nest past what a protobuf decoder reads (100 levels) is
/// refused naming the set, the file, the message where the limit is passed and the limit.
#[test]
fn check_refuses_a_descriptor_set_nesting_messages_too_deep_naming_file_message_and_limit() {
    let dir = tempfile::tempdir().unwrap();
    let set = dir.path().join("deep.binpb");
    std::fs::write(&set, set_nesting_messages(120)).unwrap();
    let (code, _, stderr) = common::run(&["check", "--descriptor-set", set.to_str().unwrap()]);
    assert_eq!(code, 2, "a startup problem, not a crash: {stderr}");
    assert!(
        stderr.contains(&set.display().to_string()) && stderr.contains("deep_messages.proto"),
        "names the set and the file: {stderr}"
    );
    assert!(
        stderr.contains("deep_messages.proto: message dset.L0 nests messages more than 98 levels deep (dset.L0.L1.L2.….L96.L97.L98 is level 99)")
            && stderr.contains("(100 levels, counting the set and the file)"),
        "names the message and the limit: {stderr}"
    );
    assert!(stderr.len() < 4000, "short: {stderr}");
}
