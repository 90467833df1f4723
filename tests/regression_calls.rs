//! Regressions of single calls and of startup: deadlines, Trailers-Only, entry options around any
//! handler, reflection, health Watch, command-line errors. Each starts the real binary.

mod common;

use std::time::{Duration, Instant};

use common::{fixtures, repo, run, Client, Server};
use serde_json::json;
use tonic::metadata::MetadataMap;
use tonic::Code;

fn timeout_md(value: &str) -> MetadataMap {
    let mut md = MetadataMap::new();
    md.insert("grpc-timeout", value.parse().unwrap());
    md
}

fn lab_server() -> Server {
    Server::lab(&[])
}

/// A `grpc-timeout` too large for an `Instant` is no deadline, not a panic (a reset without
/// status), on declarative and script methods alike; a malformed one is INVALID_ARGUMENT.
#[tokio::test]
async fn huge_grpc_timeout_does_not_panic() {
    // Scripts read the deadline (ctx.deadline, ctx:remaining()), where `Instant + Duration`
    // overflowed.
    let lab = lab_server();
    let client = Client::connect(lab.addr, common::pool(&fixtures().join("protos"))).await;
    let (r, _) = client
        .unary_with(
            "lab.Lab/Describe",
            json!({"name": "x", "limit": 1}),
            timeout_md("9223372036854775807S"),
        )
        .await
        .unwrap();
    // No representable deadline: the script sees none.
    assert_eq!(r["tags"][2], "false", "{r}");

    let server = Server::repo_default();
    let client = Client::connect(server.addr, common::pool(&repo().join("protos"))).await;
    for huge in ["9223372036854775807S", "18446744073709551615H", "99999999H"] {
        let (r, _) = client
            .unary_with(
                "helloworld.Greeter/SayHello",
                json!({"name": "t"}),
                timeout_md(huge),
            )
            .await
            .unwrap_or_else(|s| panic!("{huge}: {s:?}"));
        assert_eq!(r["message"], "Hello, t!");
    }
    for bad in ["", "S", "12", "1x", "-1S", "1.5S"] {
        let err = client
            .unary_with(
                "helloworld.Greeter/SayHello",
                json!({"name": "t"}),
                timeout_md(bad),
            )
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{bad:?}: {err:?}");
        assert!(err.message().contains("grpc-timeout"), "{err:?}");
    }
}

/// A project with the repository's protos and the given handler files.
fn handlers(files: &[(&str, String)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    dir
}

/// A delay past the client's deadline answers DEADLINE_EXCEEDED (tonic's layer said CANCELLED
/// "Timeout expired"), before the response and in the middle of a stream.
#[tokio::test]
async fn delay_past_deadline_is_deadline_exceeded() {
    let dir = handlers(&[
        (
            "g.json",
            json!({"service": "helloworld.Greeter", "methods": {
                "SayHello": {"reply": {"message": "late"}, "delay_ms": 3000}
            }})
            .to_string(),
        ),
        (
            "r.json",
            json!({"service": "routeguide.RouteGuide", "methods": {
                "ListFeatures": {"stream": [{"name": "a"}, {"name": "b"}, {"name": "c"}], "delay_ms": 400}
            }})
            .to_string(),
        ),
    ]);
    let server = Server::start(&["--handlers", dir.path().to_str().unwrap()]);
    // A raw HTTP/2 client: tonic's client enforces the deadline on its own side too, and
    // would race the server's answer.
    let mut conn = common::h2_connect(server.addr).await;

    // HelloRequest { name: "t" }
    let hello = &[0, 0, 0, 0, 3, 0x0a, 1, b't'][..];
    let (head, mut body) = call(
        &mut conn,
        server.addr,
        "/helloworld.Greeter/SayHello",
        "200m",
        hello,
    )
    .await;
    let _ = &mut body;
    assert_eq!(head.get("grpc-status").unwrap(), "4", "{head:?}");
    assert!(
        head.get("grpc-message")
            .unwrap()
            .to_str()
            .unwrap()
            .contains("grpc-timeout"),
        "{head:?}"
    );

    // Mid-stream: the first message comes at 400 ms, the deadline at 600 ms, the second at 800.
    let empty = &[0, 0, 0, 0, 0][..];
    let (head, mut body) = call(
        &mut conn,
        server.addr,
        "/routeguide.RouteGuide/ListFeatures",
        "600m",
        empty,
    )
    .await;
    assert!(head.get("grpc-status").is_none(), "{head:?}");
    let mut bytes = 0;
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        bytes += chunk.len();
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    let trailers = body.trailers().await.unwrap().expect("trailers");
    assert_eq!(trailers.get("grpc-status").unwrap(), "4", "{trailers:?}");
    // One Feature { name: "a" } message: 5 bytes of framing and 3 of message.
    assert_eq!(bytes, 8, "exactly the first message went out");
}

/// A call with `grpc-timeout: timeout` and the framed request `request`: the response headers
/// and body.
async fn call(
    conn: &mut h2::client::SendRequest<bytes::Bytes>,
    addr: std::net::SocketAddr,
    path: &str,
    timeout: &str,
    request: &'static [u8],
) -> (http::HeaderMap, h2::RecvStream) {
    let req = http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", timeout)
        .body(())
        .unwrap();
    *conn = conn.clone().ready().await.unwrap();
    let (resp, mut send) = conn.send_request(req, false).unwrap();
    send.send_data(bytes::Bytes::from_static(request), true)
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(20), resp)
        .await
        .expect("no answer")
        .unwrap();
    let (parts, body) = resp.into_parts();
    (parts.headers, body)
}

/// Encodes `Query { id }` (kitchen.proto) as one gRPC frame.
fn framed_query(id: &str) -> bytes::Bytes {
    let mut msg = vec![0x0a, id.len() as u8];
    msg.extend_from_slice(id.as_bytes());
    let mut out = vec![0];
    out.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    out.extend_from_slice(&msg);
    out.into()
}

/// A streaming call that fails before its first message answers Trailers-Only: one HEADERS
/// frame carrying grpc-status and END_STREAM. tonic clients then see the call itself fail.
#[tokio::test]
async fn streaming_error_is_trailers_only() {
    let f = fixtures();
    let server = Server::kitchen();

    // Frame by frame, with a raw HTTP/2 client.
    let mut send = common::h2_connect(server.addr).await.ready().await.unwrap();
    let req = common::grpc_request(server.addr, "/kitchen.Kitchen/Chat")
        .body(())
        .unwrap();
    let (resp, mut body) = send.send_request(req, false).unwrap();
    body.send_data(framed_query("stop"), true).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), resp)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        resp.headers().get("grpc-status").map(|v| v.as_bytes()),
        Some(&b"10"[..]),
        "grpc-status is in the first and only HEADERS frame: {:?}",
        resp.headers()
    );
    assert!(
        resp.body().is_end_stream(),
        "the HEADERS frame ends the stream"
    );

    // With a tonic client, the call fails (not a successful call with an error item).
    let client = Client::connect(server.addr, common::pool(&f.join("protos"))).await;
    let m = client.method("kitchen.Kitchen/Chat");
    let msgs = vec![protoserve::codec::Outgoing::Message(Client::message(
        &m.input(),
        json!({"id": "stop"}),
    ))];
    let mut grpc = tonic::client::Grpc::new(client.channel.clone());
    grpc.ready().await.unwrap();
    let result = grpc
        .streaming(
            tonic::Request::new(futures_util::stream::iter(msgs)),
            "/kitchen.Kitchen/Chat".parse().unwrap(),
            common::DynamicCodec::new(m.output()),
        )
        .await;
    let status = result.expect_err("the call itself fails");
    assert_eq!(status.code(), Code::Aborted, "{status:?}");
    assert_eq!(status.message(), "stopped at stop");
}

/// `delay_ms` and `headers` next to `script` or `rules` are honoured (they passed `check` and
/// did nothing), and a rule's headers reach bidi clients.
#[tokio::test]
async fn delay_and_headers_honoured_for_rules_and_scripts() {
    let dir = handlers(&[
        (
            "g.json",
            json!({"service": "helloworld.Greeter", "methods": {
                "SayHello": {"script": "g.lua", "delay_ms": 300, "headers": {"x-entry": "script"}},
                "SayHelloAgain": {
                    "rules": [
                        {"when": {"request": {"name": "a"}}, "reply": {"message": "A"}, "headers": {"x-rule": "a"}},
                        {"reply": {"message": "other"}}
                    ],
                    "delay_ms": 300,
                    "headers": {"x-entry": "rules"}
                }
            }})
            .to_string(),
        ),
        (
            "g.lua",
            "function SayHello(req, ctx) return { message = \"hi \" .. req.name } end\n".into(),
        ),
        (
            "r.json",
            json!({"service": "routeguide.RouteGuide", "methods": {
                "RouteChat": {"rules": [
                    {"when": {"request": {"message": "h"}}, "echo": {}, "headers": {"x-chat": "h"}},
                    {"echo": {}}
                ]}
            }})
            .to_string(),
        ),
    ]);
    let server = Server::start(&["--handlers", dir.path().to_str().unwrap()]);
    let client = Client::connect(server.addr, common::pool(&repo().join("protos"))).await;

    let started = Instant::now();
    let (r, md) = client
        .unary_with(
            "helloworld.Greeter/SayHello",
            json!({"name": "s"}),
            MetadataMap::new(),
        )
        .await
        .unwrap();
    assert_eq!(r["message"], "hi s");
    assert!(started.elapsed() >= Duration::from_millis(300), "no delay");
    assert_eq!(md.get("x-entry").unwrap(), "script");

    let started = Instant::now();
    let (r, md) = client
        .unary_with(
            "helloworld.Greeter/SayHelloAgain",
            json!({"name": "a"}),
            MetadataMap::new(),
        )
        .await
        .unwrap();
    assert_eq!(r["message"], "A");
    assert!(started.elapsed() >= Duration::from_millis(300), "no delay");
    assert_eq!(md.get("x-entry").unwrap(), "rules");
    assert_eq!(md.get("x-rule").unwrap(), "a");

    // Bidi: the rule answering the first message sets the response headers.
    let m = client.method("routeguide.RouteGuide/RouteChat");
    let msgs: Vec<_> = ["h", "i"]
        .iter()
        .map(|t| {
            protoserve::codec::Outgoing::Message(Client::message(&m.input(), json!({"message": t})))
        })
        .collect();
    let mut grpc = tonic::client::Grpc::new(client.channel.clone());
    grpc.ready().await.unwrap();
    let resp = grpc
        .streaming(
            tonic::Request::new(futures_util::stream::iter(msgs)),
            "/routeguide.RouteGuide/RouteChat".parse().unwrap(),
            common::DynamicCodec::new(m.output()),
        )
        .await
        .unwrap();
    assert_eq!(resp.metadata().get("x-chat").unwrap(), "h");
    let mut stream = resp.into_inner();
    let mut echoed = Vec::new();
    while let Some(msg) = stream.message().await.unwrap() {
        echoed.push(common::to_json(&msg)["message"].clone());
    }
    assert_eq!(echoed, vec![json!("h"), json!("i")]);
}

/// `delay_ms` and `headers` next to `error` were accepted and ignored: the error now waits for
/// the delay and carries the headers (in its Trailers-Only response), in every shape.
#[tokio::test]
async fn delay_and_headers_honoured_for_errors() {
    let error = json!({"error": {"code": "NOT_FOUND", "message": "none"}, "delay_ms": 300, "headers": {"x-err": "1"}});
    let dir = handlers(&[(
        "r.json",
        json!({"service": "routeguide.RouteGuide", "methods": {
            "GetFeature": error,
            "ListFeatures": error,
            "RouteChat": {"rules": [{"error": {"code": "NOT_FOUND", "message": "none"}, "delay_ms": 300, "headers": {"x-err": "1"}}]}
        }})
        .to_string(),
    )]);
    let server = Server::start(&["--handlers", dir.path().to_str().unwrap()]);
    let client = Client::connect(server.addr, common::pool(&repo().join("protos"))).await;
    let started = Instant::now();
    let err = client
        .unary("routeguide.RouteGuide/GetFeature", json!({}))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(started.elapsed() >= Duration::from_millis(300), "no delay");
    assert_eq!(err.metadata().get("x-err").unwrap(), "1", "{err:?}");

    let started = Instant::now();
    let err = client
        .server_stream("routeguide.RouteGuide/ListFeatures", json!({}))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(started.elapsed() >= Duration::from_millis(300), "no delay");
    assert_eq!(err.metadata().get("x-err").unwrap(), "1", "{err:?}");

    let started = Instant::now();
    let (items, err) = client
        .bidi(
            "routeguide.RouteGuide/RouteChat",
            vec![json!({"message": "m"})],
        )
        .await;
    let err = err.expect("an error");
    assert!(items.is_empty());
    assert_eq!(err.code(), Code::NotFound);
    assert!(started.elapsed() >= Duration::from_millis(300), "no delay");
    assert_eq!(err.metadata().get("x-err").unwrap(), "1", "{err:?}");
}

/// ListServices names both reflection services, whichever version is asked.
#[tokio::test]
async fn reflection_lists_both_versions() {
    let server = Server::repo_default();
    let channel = common::channel(server.addr).await;
    let want = [
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
        "helloworld.Greeter",
    ];
    let v1 = common::reflection::v1::list_services(channel.clone()).await;
    let v1alpha = common::reflection::v1alpha::list_services(channel).await;
    for (version, names) in [("v1", v1), ("v1alpha", v1alpha)] {
        for w in want {
            assert!(
                names.iter().any(|n| n == w),
                "{version}: {w} missing from {names:?}"
            );
        }
    }
}

/// Watch on an unknown service streams SERVICE_UNKNOWN and stays open (the health protocol);
/// Check on it stays NOT_FOUND.
#[tokio::test]
async fn health_watch_unknown_service_streams_service_unknown() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
    let server = Server::repo_default();
    let channel = common::channel(server.addr).await;
    let mut health = HealthClient::new(channel);
    let mut stream = health
        .watch(HealthCheckRequest {
            service: "no.Such".into(),
        })
        .await
        .expect("Watch on an unknown service is not an error")
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert_eq!(first.status, ServingStatus::ServiceUnknown as i32);
    // Still open: nothing more arrives, and the call has not ended.
    let next = tokio::time::timeout(Duration::from_millis(500), stream.message()).await;
    assert!(next.is_err(), "the watch ended or changed: {next:?}");

    let err = health
        .check(HealthCheckRequest {
            service: "no.Such".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    // Known services still stream their status.
    let mut known = health
        .watch(HealthCheckRequest {
            service: "helloworld.Greeter".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = known.message().await.unwrap().unwrap();
    assert_eq!(first.status, ServingStatus::Serving as i32);
}

/// A `--data` or `-I` folder given on the command line that does not exist is an error naming
/// it (the default data/ may be absent), for `check` and `serve`, with exit status 2.
#[test]
fn missing_folder_flag_is_an_error() {
    for command in ["check", "serve"] {
        let (code, err) = run_bounded(&[command, "--data", "no/such/data"]);
        assert_eq!(code, Some(2), "{command}: {err}");
        assert!(
            err.contains("--data no/such/data: no such folder"),
            "{command}: {err}"
        );
        let (code, err) = run_bounded(&[command, "-I", "no/such/imports"]);
        assert_eq!(code, Some(2), "{command}: {err}");
        assert!(
            err.contains("--import-path no/such/imports: no such folder"),
            "{command}: {err}"
        );
    }
    // Without --data, a project without data/ checks clean.
    let dir = tempfile::tempdir().unwrap();
    let protos = repo().join("protos");
    let handlers = dir.path().join("handlers");
    std::fs::create_dir(&handlers).unwrap();
    std::fs::copy(
        repo().join("handlers/helloworld.json"),
        handlers.join("helloworld.json"),
    )
    .unwrap();
    let out = std::process::Command::new(common::binary())
        .args(["check", "--protos", protos.to_str().unwrap()])
        .args(["--handlers", handlers.to_str().unwrap()])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `protoserve ARGS…` (serve on a free loopback port); kills it if still running after 30 s.
fn run_bounded(args: &[&str]) -> (Option<i32>, String) {
    let mut cmd = std::process::Command::new(common::binary());
    cmd.args(args);
    if args[0] == "serve" {
        cmd.args(["--listen", "127.0.0.1:0"]);
    }
    common::run_bounded(cmd)
}

/// A bad `--log-level` is an error (it was silently `info`).
#[test]
fn bad_log_level_is_an_error() {
    let (code, _, err) = run(&["check", "--log-level", "verbose"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--log-level"), "{err}");
    assert!(err.contains("\"verbose\" is not a log level"), "{err}");
    let (code, _, err) = run(&["check", "--log-level", "protoserve=loud"]);
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = run(&["check", "--log-level", "protoserve=debug,warn"]);
    assert_eq!(code, 0, "{err}");
}

/// A port already in use is a startup problem like the others: exit status 2, naming the address.
#[test]
fn port_in_use_exits_2() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, _, err) = run(&["serve", "--listen", &addr]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--listen"), "{err}");
    assert!(err.contains(&format!("cannot listen on {addr}")), "{err}");
}

/// Reflection answered every extension request as if the schema had none: `FileContaining
/// Extension` was always NOT_FOUND and `AllExtensionNumbersOfType` always empty, so a client
/// could not describe a proto2 message's extensions. It finds them now, declared at top level,
/// inside a message or in another file; a long unknown name is quoted by its start.
#[tokio::test]
async fn reflection_serves_extensions() {
    let dir = tempfile::tempdir().unwrap();
    let protos = dir.path().join("protos");
    std::fs::create_dir_all(&protos).unwrap();
    std::fs::write(
        protos.join("ext.proto"),
        "syntax = \"proto2\";\npackage ext;\n\
         message Base { optional string id = 1; extensions 100 to 200; }\n\
         extend Base { optional int32 weight = 100; }\n\
         message Holder { extend Base { optional string label = 150; } }\n\
         service Ext { rpc Get(Base) returns (Base); }\n",
    )
    .unwrap();
    std::fs::write(
        protos.join("more.proto"),
        "syntax = \"proto2\";\npackage more;\nimport \"ext.proto\";\n\
         extend ext.Base { optional bool flag = 120; }\n",
    )
    .unwrap();
    let handlers = dir.path().join("handlers");
    std::fs::create_dir_all(&handlers).unwrap();
    std::fs::write(
        handlers.join("ext.json"),
        r#"{"service": "ext.Ext", "methods": {"Get": {"echo": true}}}"#,
    )
    .unwrap();
    let server = Server::start(&[
        "--protos",
        protos.to_str().unwrap(),
        "--handlers",
        handlers.to_str().unwrap(),
        "--no-cache",
    ]);
    let channel = common::channel(server.addr).await;

    use common::reflection::v1::{ask, MessageRequest, MessageResponse};
    use tonic_reflection::pb::v1::ExtensionRequest;
    let extension = |containing_type: &str, extension_number| {
        MessageRequest::FileContainingExtension(ExtensionRequest {
            containing_type: containing_type.into(),
            extension_number,
        })
    };
    let long = format!("ext.{}", "x".repeat(100_000));
    let answers = ask(
        channel.clone(),
        vec![
            extension("ext.Base", 100),
            extension("ext.Base", 150),
            extension(".ext.Base", 120),
            extension("ext.Base", 199),
            MessageRequest::AllExtensionNumbersOfType("ext.Base".into()),
            MessageRequest::AllExtensionNumbersOfType("ext.Holder".into()),
            MessageRequest::FileContainingSymbol(long),
        ],
    )
    .await;
    let file_name = |answer: &MessageResponse| match answer {
        MessageResponse::FileDescriptorResponse(f) => {
            use prost::Message as _;
            let file =
                prost_types::FileDescriptorProto::decode(f.file_descriptor_proto[0].as_slice());
            file.unwrap().name().to_owned()
        }
        other => panic!("expected a file, got {other:?}"),
    };
    assert_eq!(file_name(&answers[0]), "ext.proto");
    assert_eq!(file_name(&answers[1]), "ext.proto");
    assert_eq!(file_name(&answers[2]), "more.proto");
    match &answers[3] {
        MessageResponse::ErrorResponse(e) => {
            assert_eq!(e.error_code, Code::NotFound as i32);
            assert_eq!(e.error_message, "extension 199 of \"ext.Base\" not found");
        }
        other => panic!("expected NOT_FOUND, got {other:?}"),
    }
    match &answers[4] {
        MessageResponse::AllExtensionNumbersResponse(n) => {
            assert_eq!(n.base_type_name, "ext.Base");
            assert_eq!(n.extension_number, [100, 120, 150]);
        }
        other => panic!("expected extension numbers, got {other:?}"),
    }
    match &answers[5] {
        MessageResponse::AllExtensionNumbersResponse(n) => assert!(n.extension_number.is_empty()),
        other => panic!("expected no extension numbers, got {other:?}"),
    }
    match &answers[6] {
        MessageResponse::ErrorResponse(e) => {
            assert!(
                e.error_message.len() < 300,
                "{} bytes",
                e.error_message.len()
            );
            assert!(
                e.error_message.contains("(100004 bytes)"),
                "{}",
                e.error_message
            );
        }
        other => panic!("expected NOT_FOUND, got {other:?}"),
    }

    // v1alpha answers the same.
    use common::reflection::v1alpha;
    let old = v1alpha::ask(
        channel,
        vec![v1alpha::MessageRequest::AllExtensionNumbersOfType(
            "ext.Base".into(),
        )],
    )
    .await;
    match &old[0] {
        v1alpha::MessageResponse::AllExtensionNumbersResponse(n) => {
            assert_eq!(n.extension_number, [100, 120, 150]);
        }
        other => panic!("expected extension numbers, got {other:?}"),
    }
}

/// The fixture folder `name` (its `protos/` and `handlers/`): `check` passes on it, and it is
/// served, with a client.
async fn checked_and_served(name: &str) -> (Server, Client) {
    let dir = fixtures().join(name);
    let protos = dir.join("protos");
    let handlers = dir.join("handlers");
    let args = [
        "--protos",
        protos.to_str().unwrap(),
        "--handlers",
        handlers.to_str().unwrap(),
    ];
    let mut check = vec!["check"];
    check.extend(args);
    let (code, out, err) = run(&check);
    assert_eq!(code, 0, "{out}{err}");
    let server = Server::start(&args);
    let client = Client::connect(server.addr, common::pool(&protos)).await;
    (server, client)
}

/// A script method whose request type has no fields (`google.protobuf.Empty`, or a message of
/// its own) stopped the server from starting: the request builder generated for the type was
/// not valid Lua. `check` accepts it, and every shape hands the script empty tables.
#[tokio::test]
async fn scripts_take_requests_without_fields() {
    let (_server, client) = checked_and_served("empty_requests").await;
    let one = client.unary("counts.Counts/One", json!({})).await.unwrap();
    assert_eq!(one, json!({"n": 7}));
    let many = client
        .client_stream("counts.Counts/Many", vec![json!({}); 3])
        .await
        .unwrap();
    assert_eq!(many, json!({"n": 3}));
    let (echoes, status) = client
        .bidi("counts.Counts/Echoes", vec![json!({}); 2])
        .await;
    assert!(status.is_none(), "{status:?}");
    assert_eq!(echoes, vec![json!({"n": 1}), json!({"n": 2})]);
}

/// A request type whose nested message fits the builder's slot limit on its own, but not with
/// the fields that come after it (in its message or in the enclosing ones), made a builder of
/// more than 200 parameters: not valid Lua, so serve and check refused the handler files. Such
/// a nested message is built as a table instead; the script reads every field either way.
#[tokio::test]
async fn scripts_take_requests_whose_nested_fields_pass_the_slot_limit() {
    let (_server, client) = checked_and_served("wide_requests").await;
    let outer = json!({"wide": {"w1": 1, "w149": 10}, "o2": 100, "o101": 1000});
    let one = client.unary("wide.Wides/One", outer.clone()).await.unwrap();
    assert_eq!(one, json!({"n": "1111"}));
    let many = client
        .client_stream("wide.Wides/Many", vec![outer, json!({"o101": 5})])
        .await
        .unwrap();
    assert_eq!(many, json!({"n": "1116"}));
    let deep =
        json!({"mid": {"half": {"h1": 1, "h120": 10}, "m11": 100}, "d2": 1000, "d81": 10000});
    let nested = client.unary("wide.Wides/Nested", deep).await.unwrap();
    assert_eq!(nested, json!({"n": "11111"}));
}

/// A request type with big messages nested inside big messages (GKE's `CreateClusterRequest`,
/// Cloud SQL's `SqlInstancesInsertRequest`, Google Ads' `MutateOperation`) stopped a script
/// method from starting: its request builder took more than Lua's 200 locals ("too many local
/// variables"), because a nested message's own nested messages were not counted against the
/// slots left. `check` accepts it, and the request reaches the script whole, deep fields and
/// late ones alike.
#[tokio::test]
async fn scripts_take_requests_with_big_nested_messages() {
    let (_server, client) = checked_and_served("big_requests").await;
    let wide = json!({
        "middle": {"deep": {"d1": 1, "d100": 100}, "m2": 2, "m10": 10},
        "w2": 2,
        "w101": 101,
    });
    let echo = client.unary("wide.Wides/Echo", wide.clone()).await.unwrap();
    assert_eq!(echo, wide);
}

/// An enum with a negative value had the wrong default in scripts: its values are listed by
/// number, and the first listed (the negative one) was taken for the default. A reply's field
/// or map value set to it was left out as a default (the client read the zero value), a zero
/// was written out, and a map entry sent without its value read as the negative value.
#[tokio::test]
async fn scripts_keep_negative_enum_values() {
    let (_server, client) = checked_and_served("negative_enums").await;

    // Replies: the negative value is sent, the zero value is left out.
    let low = client.unary("signs.Signs/Low", json!({})).await.unwrap();
    assert_eq!(
        low,
        json!({"level": "LEVEL_LOW", "byName": {"low": "LEVEL_LOW", "zero": "LEVEL_ZERO"}})
    );
    let method = client.method("signs.Signs/Low");
    let bytes = client
        .raw_unary("/signs.Signs/Low", bytes::Bytes::new())
        .await
        .unwrap();
    let decoded = prost_reflect::DynamicMessage::decode(method.output(), bytes.as_ref()).unwrap();
    let level = method.output().get_field_by_name("level").unwrap();
    assert!(
        decoded.has_field(&level),
        "LEVEL_LOW was left out of the reply"
    );
    let echo = client
        .unary(
            "signs.Signs/Echo",
            json!({"level": "LEVEL_LOW", "levels": ["LEVEL_LOW", "LEVEL_ZERO"]}),
        )
        .await
        .unwrap();
    assert_eq!(
        echo,
        json!({"level": "LEVEL_LOW", "levels": ["LEVEL_LOW", "LEVEL_ZERO"]})
    );
    // A zero value is not written: the echo of an empty request is empty.
    let empty = client
        .raw_unary("/signs.Signs/Echo", bytes::Bytes::new())
        .await
        .unwrap();
    assert!(empty.is_empty(), "{empty:02x?}");

    // Requests: by_name = {"k": <entry without a value>} reads as the default, LEVEL_ZERO.
    let entry = [0x0a, 0x01, b'k'];
    let mut request = vec![0x12, entry.len() as u8];
    request.extend_from_slice(&entry);
    let text = client
        .raw_unary("/signs.Signs/Describe", request.into())
        .await
        .unwrap();
    let method = client.method("signs.Signs/Describe");
    let text = prost_reflect::DynamicMessage::decode(method.output(), text.as_ref()).unwrap();
    assert_eq!(
        common::to_json(&text),
        json!({"text": "LEVEL_ZERO k=LEVEL_ZERO"})
    );
}

/// A script that returns a well-known type in its JSON form (a Timestamp as an RFC 3339
/// string, a wrapper as its bare value), as a declarative reply may, was told only "expected a
/// table for google.protobuf.Timestamp, got string": the message now shows the table it takes.
#[tokio::test]
async fn scripts_returning_well_known_types_as_json_are_shown_the_table() {
    let (_server, client) = checked_and_served("wkt_replies").await;
    let ok = client
        .unary("stamp.Stamps/AsTables", json!({}))
        .await
        .unwrap();
    assert_eq!(
        ok,
        json!({"at": "2020-01-01T00:00:00.000000005Z", "count": "3"})
    );
    for (method, expected) in [
        (
            "stamp.Stamps/AsJson",
            "field at: expected a table for google.protobuf.Timestamp (a table {seconds = …, nanos = …}), got string",
        ),
        (
            "stamp.Stamps/BareWrapper",
            "field count: expected a table for google.protobuf.Int64Value (a table {value = …}), got integer",
        ),
    ] {
        let err = client.unary(method, json!({})).await.unwrap_err();
        assert_eq!(err.code(), Code::Internal, "{method}: {err:?}");
        assert!(err.message().contains(expected), "{method}: {}", err.message());
    }
}
