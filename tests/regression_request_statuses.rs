//! Regressions of requests that break the gRPC protocol in ways a client library would not, sent
//! as raw HTTP/2: each must get the status the gRPC status codes table gives, with a message
//! that says what was wrong, and the server must go on serving.
//!
//! - A unary or server-streaming request with no message, or with more than one, is a request
//!   cardinality violation: UNIMPLEMENTED (tonic said INTERNAL "Missing request message." for
//!   none, and answered OK to the first of several).
//! - A reflection request that does not decode, or is over `--max-message-size`, ends the
//!   stream with its status, and so does an answer over it (RESOURCE_EXHAUSTED; an answer
//!   repeats its request, and one just under the limit made an answer over it that clients
//!   refused) (the stream used to end OK, with no answer); a health or
//!   reflection request that does not decode is INVALID_ARGUMENT, as for every method (tonic's
//!   codec said INTERNAL).
//! - Metadata over `--max-header-list-size` is RESOURCE_EXHAUSTED naming the flag (HTTP/2 used
//!   to refuse it with HTTP 431 and no gRPC status).
//! - A gRPC-Web request (over HTTP/2) was told to send application/grpc; it is told this
//!   server does not speak gRPC-Web, and what to use instead.
//! - A method a loaded service does not have was said to be of "no loaded service"; it names
//!   the service, and the method meant when the name is a typo of one.

mod common;

use std::net::SocketAddr;

use bytes::Bytes;
use common::{fixtures, Client, Server};
use serde_json::json;
use tonic::{Code, Status};

/// `msg` framed as one gRPC message.
fn framed(msg: &[u8]) -> Vec<u8> {
    let mut out = vec![0];
    out.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    out.extend_from_slice(msg);
    out
}

/// Sends `body` (any bytes) as the whole request of a call to `path`, then returns the call's
/// gRPC status, from the headers of a Trailers-Only answer or from the trailers.
async fn raw_call(addr: SocketAddr, path: &str, body: Vec<u8>) -> Status {
    let mut conn = common::h2_connect(addr).await;
    let req = common::grpc_request(addr, path).body(()).unwrap();
    let (resp, mut send) = conn.send_request(req, body.is_empty()).unwrap();
    if !body.is_empty() {
        send.send_data(Bytes::from(body), true).unwrap();
    }
    let resp = resp.await.unwrap();
    if let Some(status) = Status::from_header_map(resp.headers()) {
        return status;
    }
    let mut body = resp.into_body();
    while let Some(data) = body.data().await {
        let data = data.unwrap();
        body.flow_control().release_capacity(data.len()).unwrap();
    }
    let trailers = body.trailers().await.unwrap().expect("trailers");
    Status::from_header_map(&trailers).expect("grpc-status in the trailers")
}

#[tokio::test]
async fn unary_and_server_streaming_calls_take_exactly_one_request() {
    let server = Server::kitchen();
    let one = framed(&[0x0a, 0x03, b'a', b'b', b'c']);
    let two = [one.clone(), one.clone()].concat();

    for method in ["kitchen.Kitchen/Echo", "kitchen.Kitchen/List"] {
        let path = format!("/{method}");
        for (body, sent) in [(Vec::new(), "sent none"), (two.clone(), "more than one")] {
            let s = raw_call(server.addr, &path, body).await;
            assert_eq!(s.code(), Code::Unimplemented, "{method}, {sent}: {s:?}");
            assert!(s.message().contains(method), "{method}, {sent}: {s:?}");
            assert!(s.message().contains(sent), "{method}, {sent}: {s:?}");
            assert!(s.message().contains("exactly one"), "{method}: {s:?}");
        }
        let s = raw_call(server.addr, &path, one.clone()).await;
        assert_eq!(s.code(), Code::Ok, "{method}, one message: {s:?}");
    }

    // Health's Check (tonic's) says the same.
    let s = raw_call(server.addr, "/grpc.health.v1.Health/Check", Vec::new()).await;
    assert_eq!(s.code(), Code::Unimplemented, "{s:?}");
    assert!(s.message().contains("exactly one"), "{s:?}");

    // Client streams may send any number, none included.
    let s = raw_call(server.addr, "/kitchen.Kitchen/Collect", Vec::new()).await;
    assert_eq!(s.code(), Code::Ok, "{s:?}");

    // The server goes on serving, and real clients are unaffected.
    let client = Client::connect(server.addr, common::pool(&fixtures().join("protos"))).await;
    let reply = client
        .unary("kitchen.Kitchen/Echo", json!({"id": "still"}))
        .await
        .unwrap();
    assert_eq!(reply["id"], "still");
}

/// Health's Check and Watch take one request message: tonic's server read the first of two
/// and answered it (SERVING, or a Watch stream that stayed open). And a method the built-in
/// services do not have got UNIMPLEMENTED with no message at all; it is named, with the
/// service's methods, as an unknown method of a loaded service is.
#[tokio::test]
async fn builtin_services_keep_to_their_methods_and_one_message() {
    let server = Server::kitchen();
    // HealthCheckRequest { service: "" }: an empty message.
    let two = [framed(&[]), framed(&[])].concat();
    for method in ["grpc.health.v1.Health/Check", "grpc.health.v1.Health/Watch"] {
        let s = raw_call(server.addr, &format!("/{method}"), two.clone()).await;
        assert_eq!(s.code(), Code::Unimplemented, "{method}: {s:?}");
        assert!(s.message().contains(method), "{method}: {s:?}");
        assert!(s.message().contains("more than one"), "{method}: {s:?}");
    }
    let s = raw_call(server.addr, "/grpc.health.v1.Health/Check", framed(&[])).await;
    assert_eq!(s.code(), Code::Ok, "{s:?}");
    for (path, named) in [
        (
            "/grpc.health.v1.Health/List",
            "Health has no method \"List\"",
        ),
        ("/grpc.health.v1.Health/Chek", "did you mean \"Check\""),
        (
            "/grpc.reflection.v1.ServerReflection/Nope",
            "ServerReflection has no method \"Nope\"",
        ),
        (
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInf",
            "did you mean \"ServerReflectionInfo\"",
        ),
    ] {
        let s = raw_call(server.addr, path, framed(&[])).await;
        assert_eq!(s.code(), Code::Unimplemented, "{path}: {s:?}");
        assert!(s.message().contains("has no method"), "{path}: {s:?}");
        assert!(s.message().contains(named), "{path}: {s:?}");
    }
}

/// The health protocol's own .proto, as projects vendor it.
const HEALTH_PROTO: &str = r#"syntax = "proto3";
package grpc.health.v1;
message HealthCheckRequest { string service = 1; }
message HealthCheckResponse {
  enum ServingStatus { UNKNOWN = 0; SERVING = 1; NOT_SERVING = 2; SERVICE_UNKNOWN = 3; }
  ServingStatus status = 1;
}
service Health {
  rpc Check(HealthCheckRequest) returns (HealthCheckResponse);
  rpc Watch(HealthCheckRequest) returns (stream HealthCheckResponse);
}
"#;

/// A project whose protos hold a copy of grpc/health/v1/health.proto (many vendor it) had its
/// health checks answered UNIMPLEMENTED "no handler": the declared methods took the place of
/// the built-in service, and every probe failed. The built-in service answers them, unless a
/// handler file names the method: then the handler does.
#[tokio::test]
async fn a_vendored_health_proto_leaves_health_to_the_server_unless_handled() {
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
    let dir = common::project_folder(&[
        ("protos/grpc/health/v1/health.proto", HEALTH_PROTO),
        (
            "protos/helloworld.proto",
            &std::fs::read_to_string(common::repo().join("protos/helloworld.proto")).unwrap(),
        ),
        (
            "handlers/hello.json",
            r#"{"service": "helloworld.Greeter", "methods": {"SayHello": {"reply": {"message": "hi"}}}}"#,
        ),
    ]);
    let start = |dir: &std::path::Path| {
        Server::start(&[
            "--protos",
            dir.join("protos").to_str().unwrap(),
            "--handlers",
            dir.join("handlers").to_str().unwrap(),
        ])
    };
    let server = start(dir.path());
    let mut health = HealthClient::new(common::channel(server.addr).await);
    for service in ["", "helloworld.Greeter"] {
        let answer = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap_or_else(|s| panic!("Check({service:?}): {s:?}"));
        assert_eq!(answer.into_inner().status, 1, "Check({service:?}): SERVING");
    }
    drop(server);
    // A handler for Check answers it.
    std::fs::write(
        dir.path().join("handlers/health.json"),
        r#"{"service": "grpc.health.v1.Health", "methods": {"Check": {"reply": {"status": "NOT_SERVING"}}}}"#,
    )
    .unwrap();
    let server = start(dir.path());
    let mut health = HealthClient::new(common::channel(server.addr).await);
    let answer = health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap();
    assert_eq!(answer.into_inner().status, 2, "the handler's NOT_SERVING");
}

#[tokio::test]
async fn builtin_requests_that_do_not_decode_are_invalid_argument() {
    let server = Server::kitchen();
    let garbage = framed(&[0xff, 0xff, 0xff]);
    for path in [
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        "/grpc.health.v1.Health/Check",
        "/grpc.health.v1.Health/Watch",
    ] {
        let s = raw_call(server.addr, path, garbage.clone()).await;
        assert_eq!(s.code(), Code::InvalidArgument, "{path}: {s:?}");
        assert!(s.message().contains("not a valid message"), "{path}: {s:?}");
    }

    // A reflection request that breaks the framing ends the stream with an error, not OK.
    let compressed_without_encoding = {
        let mut f = framed(&[0x3a, 0x01, b'*']);
        f[0] = 1;
        f
    };
    let s = raw_call(
        server.addr,
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        compressed_without_encoding,
    )
    .await;
    assert_eq!(s.code(), Code::Internal, "{s:?}");
    assert!(s.message().contains("grpc-encoding"), "{s:?}");

    // A good request is still answered (list services).
    let s = raw_call(
        server.addr,
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        framed(&[0x3a, 0x01, b'*']),
    )
    .await;
    assert_eq!(s.code(), Code::Ok, "{s:?}");
}

/// A reflection answer repeats its request: a symbol name just under `--max-message-size` got
/// an answer over it, with status OK (538 bytes under a limit of 300; a 4 MiB answer under the
/// default, which grpcio refused as larger than its maximum). It ends the stream with
/// RESOURCE_EXHAUSTED naming the flag, as a method's reply over the limit does.
#[tokio::test]
async fn reflection_answers_over_the_limit_are_resource_exhausted() {
    let server = Server::kitchen_args(&["--max-message-size", "300"]);
    let path = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo";
    // FileContainingSymbol (field 4) of an unknown 280-byte name: the request fits, the answer
    // (the request again, and a NOT_FOUND message quoting the name) does not.
    let name = "x".repeat(280);
    let mut request = vec![0x22, 0x98, 0x02];
    request.extend_from_slice(name.as_bytes());
    assert!(request.len() <= 300);
    let s = raw_call(server.addr, path, framed(&request)).await;
    assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
    assert!(s.message().contains("--max-message-size"), "{s:?}");
    // A short one is answered.
    let mut request = vec![0x22, 0x03];
    request.extend_from_slice(b"x.Y");
    let s = raw_call(server.addr, path, framed(&request)).await;
    assert_eq!(s.code(), Code::Ok, "{s:?}");
}

/// Metadata over `--max-header-list-size` used to be refused by HTTP/2 itself, with HTTP 431
/// and no gRPC status: clients said UNKNOWN and nothing named the flag.
#[tokio::test]
async fn metadata_over_the_limit_is_resource_exhausted_naming_the_flag() {
    let server = Server::kitchen();
    let client = Client::connect(server.addr, common::pool(&fixtures().join("protos"))).await;
    let with_value = |len: usize| {
        let mut md = tonic::metadata::MetadataMap::new();
        md.insert("x-big", "v".repeat(len).parse().unwrap());
        md
    };
    let call = |len| client.unary_with("kitchen.Kitchen/Echo", json!({"id": "m"}), with_value(len));

    let (reply, _) = call(15_000).await.unwrap();
    assert_eq!(reply["id"], "m");
    for len in [17_000, 40_000] {
        let s = call(len).await.unwrap_err();
        assert_eq!(s.code(), Code::ResourceExhausted, "{len}: {s:?}");
        assert!(s.message().contains("--max-header-list-size"), "{s:?}");
        assert!(s.message().contains("16384"), "{s:?}");
    }
    // The connection and the server go on serving.
    let (reply, _) = call(10).await.unwrap();
    assert_eq!(reply["id"], "m");
}

/// Sends `bytes` on a new connection and reads until the server closes it.
async fn send_and_wait_close(addr: SocketAddr, bytes: &[u8]) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(bytes).await.unwrap();
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        tcp.read_to_end(&mut sink),
    )
    .await;
}

/// Whether a log line containing `what` shows up, trying `attempt` until it does (the log
/// names such connections once a second at most).
async fn logged(server: &Server, what: &str, attempt: impl Fn() -> Vec<u8>) -> bool {
    for _ in 0..20 {
        send_and_wait_close(server.addr, &attempt()).await;
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        if server.log().iter().any(|l| l.contains(what)) {
            return true;
        }
    }
    false
}

/// A client configured for TLS, or speaking HTTP/1, used to see the connection close and the
/// log say nothing.
#[tokio::test]
async fn clients_that_do_not_speak_http2_are_told_in_the_log() {
    let server = Server::kitchen();
    let client_hello = || {
        let mut b = vec![
            0x16, 0x03, 0x01, 0x00, 0xa5, 0x01, 0x00, 0x00, 0xa1, 0x03, 0x03,
        ];
        b.resize(180, 0);
        b
    };
    assert!(
        logged(&server, "TLS handshake", client_hello).await,
        "{:#?}",
        server.log()
    );
    let http1 = || b"GET /kitchen.Kitchen/Echo HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
    assert!(
        logged(&server, "\"GET /kitchen.Kitchen/Echo HTTP/1.1\"", http1).await,
        "{:#?}",
        server.log()
    );
    let line = server
        .log()
        .into_iter()
        .find(|l| l.contains("HTTP/1 request"))
        .unwrap();
    assert!(line.contains("--http2-prior-knowledge"), "{line}");
    assert!(line.contains("WARN"), "{line}");

    // The server goes on serving.
    let client = Client::connect(server.addr, common::pool(&fixtures().join("protos"))).await;
    client
        .unary("kitchen.Kitchen/Echo", json!({"id": "x"}))
        .await
        .unwrap();
}

/// A gzip request that inflates past `--max-message-size` is RESOURCE_EXHAUSTED naming the
/// flag, as an uncompressed one is (tonic's message named no flag).
#[tokio::test]
async fn inflated_request_over_the_limit_names_the_flag() {
    let server = Server::start(&[
        "--protos",
        fixtures().join("protos").to_str().unwrap(),
        "--handlers",
        fixtures().join("handlers").to_str().unwrap(),
        "--max-message-size",
        "1024",
    ]);
    let client = Client::connect(server.addr, common::pool(&fixtures().join("protos"))).await;
    let mut grpc = tonic::client::Grpc::new(common::channel(server.addr).await)
        .send_compressed(tonic::codec::CompressionEncoding::Gzip);
    // An Item whose blob (field 7) is 2000 bytes: 2003 bytes, a few dozen compressed.
    let mut item = vec![0x3a, 0xd0, 0x0f];
    item.resize(2003, b'x');
    grpc.ready().await.unwrap();
    let s = grpc
        .unary(
            tonic::Request::new(Bytes::from(item)),
            "/kitchen.Kitchen/Echo".parse().unwrap(),
            common::RawCodec,
        )
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
    assert!(s.message().contains("--max-message-size"), "{s:?}");

    let reply = client
        .unary("kitchen.Kitchen/Echo", json!({"id": "small"}))
        .await
        .unwrap();
    assert_eq!(reply["id"], "small");
}

/// A connection over `--max-connections` while every connection has a call in flight is
/// refused at once; the log used to say why only at debug level, so a suite whose calls failed
/// to connect found nothing in it.
#[tokio::test]
async fn connections_over_the_limit_are_told_in_the_log() {
    let server = Server::start(&["--max-connections", "1"]);
    let held = common::call_in_flight(server.addr).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let mut said = false;
    for _ in 0..20 {
        send_and_wait_close(server.addr, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        said = server
            .log()
            .iter()
            .any(|l| l.contains("WARN") && l.contains("--max-connections (1)"));
        if said {
            break;
        }
    }
    assert!(said, "{:#?}", server.log());
    drop(held);
}

/// Health and reflection take gzip requests as every method does: a client that compresses
/// every call (a channel-wide setting) used to get UNIMPLEMENTED from them.
#[tokio::test]
async fn health_and_reflection_take_gzip_requests() {
    use tonic::codec::CompressionEncoding::Gzip;
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::ServerReflectionRequest;

    let server = Server::kitchen();
    let channel = common::channel(server.addr).await;
    let mut health = HealthClient::new(channel.clone())
        .send_compressed(Gzip)
        .accept_compressed(Gzip);
    let status = health
        .check(HealthCheckRequest {
            service: "kitchen.Kitchen".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(status, 1, "SERVING");

    let mut reflection = ServerReflectionClient::new(channel)
        .send_compressed(Gzip)
        .accept_compressed(Gzip);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = reflection
        .server_reflection_info(futures_util::stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    let answer = answers.message().await.unwrap().expect("an answer");
    assert!(
        format!("{answer:?}").contains("kitchen.Kitchen"),
        "{answer:?}"
    );
}

/// Statuses a handler chose leave as chosen, even when their code and message are the ones
/// tonic gives a malformed call (which the server rewrites: INTERNAL "failed to decode
/// Protobuf message" to INVALID_ARGUMENT, "Missing request message." to UNIMPLEMENTED, a
/// message over the limit to RESOURCE_EXHAUSTED naming the flag): an `error` entry's, a script's
/// `grpc.status` ending a unary call, and one ending a stream in its trailers. A fake server
/// replays the errors of real ones, tonic's among them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statuses_handlers_choose_are_not_rewritten() {
    let handlers = tempfile::tempdir().unwrap();
    std::fs::write(
        handlers.path().join("greeter.json"),
        r#"{ "service": "helloworld.Greeter", "methods": {
             "SayHello": { "error": { "code": "INTERNAL", "message": "failed to decode Protobuf message: invalid wire type" } },
             "SayHelloAgain": { "error": { "code": "OUT_OF_RANGE", "message": "Error, decoded message length too large: found 9 bytes, the limit is: 4" } } } }"#,
    )
    .unwrap();
    std::fs::write(
        handlers.path().join("guide.json"),
        r#"{ "service": "routeguide.RouteGuide", "methods": {
             "GetFeature": { "script": "guide.lua" }, "ListFeatures": { "script": "guide.lua" } } }"#,
    )
    .unwrap();
    std::fs::write(
        handlers.path().join("guide.lua"),
        "function GetFeature(p) error(grpc.status(\"INTERNAL\", \"Missing request message.\")) end\n\
         function ListFeatures(r, ctx)\n\
         \x20 ctx:send({ name = \"first\" })\n\
         \x20 error(grpc.status(\"RESOURCE_EXHAUSTED\", \"Error decompressing: size limit reached\"))\n\
         end\n",
    )
    .unwrap();
    let protos = common::repo().join("protos");
    let server = Server::start(&[
        "--protos",
        protos.to_str().unwrap(),
        "--handlers",
        handlers.path().to_str().unwrap(),
    ]);
    let client = Client::connect(server.addr, common::pool(&protos)).await;

    let unary = |name: &'static str, req: serde_json::Value| {
        let client = &client;
        async move { client.unary(name, req).await.expect_err(name) }
    };
    let s = unary("helloworld.Greeter/SayHello", json!({"name": "a"})).await;
    assert_eq!(
        (s.code(), s.message()),
        (
            Code::Internal,
            "failed to decode Protobuf message: invalid wire type"
        )
    );
    assert!(!s.metadata().contains_key("protoserve-chosen-status"));
    let s = unary("helloworld.Greeter/SayHelloAgain", json!({"name": "a"})).await;
    assert_eq!(
        (s.code(), s.message()),
        (
            Code::OutOfRange,
            "Error, decoded message length too large: found 9 bytes, the limit is: 4"
        )
    );
    let s = unary("routeguide.RouteGuide/GetFeature", json!({})).await;
    assert_eq!(
        (s.code(), s.message()),
        (Code::Internal, "Missing request message.")
    );
    assert!(!s.metadata().contains_key("protoserve-chosen-status"));

    let mut stream = client
        .server_stream_open("routeguide.RouteGuide/ListFeatures", json!({}))
        .await
        .unwrap();
    assert!(stream.message().await.unwrap().is_some());
    let s = stream
        .message()
        .await
        .expect_err("the stream ends with the status");
    assert_eq!(
        (s.code(), s.message()),
        (
            Code::ResourceExhausted,
            "Error decompressing: size limit reached"
        )
    );
    assert!(!s.metadata().contains_key("protoserve-chosen-status"));

    // The journal records them as the client got them.
    let page = server.admin_get("/v1/journal").await;
    let text = page.to_string();
    assert!(!text.contains("protoserve-chosen-status"), "{text}");
    let codes: Vec<&str> = page["calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["status"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        codes,
        ["INTERNAL", "OUT_OF_RANGE", "INTERNAL", "RESOURCE_EXHAUSTED"]
    );
}

/// A typo in the method's name, of a service that is loaded, says the service has no such
/// method and which one was meant; a path whose service is not loaded says that.
#[tokio::test]
async fn an_unknown_method_of_a_loaded_service_names_the_service_and_the_method_meant() {
    let server = Server::repo_default();
    let body = framed(b"\x0a\x03Ann");
    let status = raw_call(server.addr, "/helloworld.Greeter/SayHelo", body.clone()).await;
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
    assert_eq!(
        status.message(),
        r#"unknown method /helloworld.Greeter/SayHelo: helloworld.Greeter has no method "SayHelo" (did you mean "SayHello"?)"#
    );
    let status = raw_call(server.addr, "/helloworld.Greeter/Nothing", body.clone()).await;
    assert_eq!(
        status.message(),
        r#"unknown method /helloworld.Greeter/Nothing: helloworld.Greeter has no method "Nothing""#
    );
    for path in [
        "/helloworld.Greter/SayHello",
        "//helloworld.Greeter/SayHello",
        "/",
    ] {
        let status = raw_call(server.addr, path, body.clone()).await;
        assert_eq!(status.code(), Code::Unimplemented, "{path}: {status:?}");
        assert_eq!(
            status.message(),
            format!("unknown method {path}: no loaded service declares it")
        );
    }
}

/// A gRPC-Web request is refused (HTTP 415) with a message that says the server does not speak
/// gRPC-Web and what to use instead, for each of its content-types.
#[tokio::test]
async fn a_grpc_web_request_is_told_the_server_does_not_speak_grpc_web() {
    let server = Server::repo_default();
    for content_type in [
        "application/grpc-web",
        "application/grpc-web+proto",
        "application/grpc-web-text",
        "Application/gRPC-Web-Text+proto",
    ] {
        let mut conn = common::h2_connect(server.addr).await;
        let req = http::Request::builder()
            .method("POST")
            .uri(format!(
                "http://{}/helloworld.Greeter/SayHello",
                server.addr
            ))
            .header("content-type", content_type)
            .header("x-grpc-web", "1")
            .body(())
            .unwrap();
        let (resp, _) = conn.send_request(req, true).unwrap();
        let resp = resp.await.unwrap();
        assert_eq!(resp.status(), 415, "{content_type}");
        let status = Status::from_header_map(resp.headers()).unwrap();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert_eq!(
            status.message(),
            format!("content-type {content_type:?} is gRPC-Web, which this server does not speak: call it with a gRPC client (application/grpc over HTTP/2), or put a gRPC-Web proxy such as Envoy in front of it")
        );
    }
}
