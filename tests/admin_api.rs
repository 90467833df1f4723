//! The admin listener: its two front ends (JSON over HTTP, gRPC with reflection) agree, the
//! token is required on both, it can be turned off, and bad or hostile requests get clear
//! answers without harming the server.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{Client, Server};
use serde_json::{json, Value as Json};
use tonic::metadata::MetadataMap;

fn admin_pool() -> prost_reflect::DescriptorPool {
    protoserve::admin::schema::compile()
        .unwrap()
        .service
        .parent_pool()
        .clone()
}

async fn admin_grpc(server: &Server) -> Client {
    Client::connect(server.admin_addr(), admin_pool()).await
}

async fn greeter(server: &Server) -> Client {
    Client::connect(server.addr, common::pool(&common::repo().join("protos"))).await
}

#[tokio::test]
async fn status_and_services_describe_the_server() {
    let server = Server::repo_default();
    let status = server.admin_get("/v1/status").await;
    assert_eq!(status["generation"], 1);
    assert!(status["loaded_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(status["inputs"]["handlers"], "handlers");
    assert_eq!(status["journal"]["enabled"], true);
    assert_eq!(status["journal"]["max_calls"], 10_000);
    let services = server.admin_get("/v1/services").await;
    let greeter = services["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "helloworld.Greeter")
        .unwrap();
    let say = &greeter["methods"][0];
    assert_eq!(say["name"], "SayHello");
    assert_eq!(say["path"], "/helloworld.Greeter/SayHello");
    assert_eq!(say["shape"], "unary");
    assert_eq!(say["input"], "helloworld.HelloRequest");
    assert_eq!(say["handler"]["kind"], "reply");
    assert_eq!(say["handler"]["source"], "file");
    assert_eq!(say["handler"]["file"], "handlers/helloworld.json");
}

#[tokio::test]
async fn grpc_front_end_answers_the_same_as_json() {
    let server = Server::repo_default();
    greeter(&server)
        .await
        .unary("helloworld.Greeter/SayHello", json!({"name": "Ann"}))
        .await
        .unwrap();
    let admin = admin_grpc(&server).await;

    let over_http = server.admin_get("/v1/services").await;
    let over_grpc = admin
        .unary("protoserve.admin.v1.Admin/ListServices", json!({}))
        .await
        .unwrap();
    assert_eq!(over_grpc, over_http);

    let status = admin
        .unary("protoserve.admin.v1.Admin/Status", json!({}))
        .await
        .unwrap();
    assert_eq!(status["generation"], "1");
    assert_eq!(status["journal"]["enabled"], true);

    let http_calls = server.admin_get("/v1/journal").await;
    let grpc_calls = admin
        .unary(
            "protoserve.admin.v1.Admin/ListCalls",
            json!({"method": "helloworld.Greeter/SayHello"}),
        )
        .await
        .unwrap();
    let (h, g) = (&http_calls["calls"][0], &grpc_calls["calls"][0]);
    assert_eq!(g["id"], h["id"].to_string());
    assert_eq!(g["method"], h["method"]);
    assert_eq!(g["startedAt"], h["started_at"]);
    assert_eq!(g["messages"][0]["message"], json!({"name": "Ann"}));
    assert_eq!(g["messages"][1]["message"], h["messages"][1]["message"]);
    assert_eq!(g["status"]["name"], "OK");

    let id = h["id"].as_u64().unwrap();
    let one = admin
        .unary("protoserve.admin.v1.Admin/GetCall", json!({"id": id}))
        .await
        .unwrap();
    assert_eq!(one["id"], id.to_string());

    let verdict = admin
        .unary(
            "protoserve.admin.v1.Admin/Verify",
            json!({"method": "helloworld.Greeter/SayHello",
                   "when": {"request": {"name": "Ann"}}, "exactly": 1}),
        )
        .await
        .unwrap();
    assert_eq!(verdict["ok"], true, "{verdict:#}");
    assert_eq!(verdict["count"], "1");
    let verdict = admin
        .unary(
            "protoserve.admin.v1.Admin/Verify",
            json!({"method": "helloworld.Greeter/SayHello",
                   "when": {"request": {"name": "Bob"}}}),
        )
        .await
        .unwrap();
    assert_eq!(
        verdict["ok"],
        Json::Null,
        "false is the default: {verdict:#}"
    );
    assert_eq!(
        verdict["nearMisses"][0]["failed"][0],
        "request.name: wanted \"Bob\", got \"Ann\""
    );

    // Refusals are statuses with the same message.
    let err = admin
        .unary(
            "protoserve.admin.v1.Admin/Verify",
            json!({"method": "helloworld.Greeter/SayHi"}),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    assert!(err.message().contains("SayHello"), "{}", err.message());
    let err = admin
        .unary(
            "protoserve.admin.v1.Admin/ListCalls",
            json!({"status": "bogus"}),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let err = admin
        .unary(
            "protoserve.admin.v1.Admin/ListCalls",
            json!({"method": "helloworld.Greeter/SayHelo"}),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    assert!(
        err.message()
            .contains("did you mean \"helloworld.Greeter/SayHello\""),
        "{}",
        err.message()
    );

    let cleared = admin
        .unary("protoserve.admin.v1.Admin/ClearJournal", json!({}))
        .await
        .unwrap();
    assert_eq!(cleared["cleared"], "1");
}

#[tokio::test]
async fn admin_service_is_listed_by_reflection_on_the_admin_listener_only() {
    let server = Server::repo_default();
    let list = |addr| async move {
        common::reflection::v1::list_services(common::channel(addr).await).await
    };
    let admin = list(server.admin_addr()).await;
    assert!(
        admin.contains(&"protoserve.admin.v1.Admin".to_owned()),
        "{admin:?}"
    );
    assert!(
        !admin.contains(&"helloworld.Greeter".to_owned()),
        "{admin:?}"
    );
    let public = list(server.addr).await;
    assert!(
        !public.contains(&"protoserve.admin.v1.Admin".to_owned()),
        "{public:?}"
    );
    // The admin service is not callable on the public port.
    let err = Client::connect(server.addr, admin_pool())
        .await
        .unary("protoserve.admin.v1.Admin/Status", json!({}))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unimplemented);
}

#[tokio::test]
async fn a_token_is_required_on_both_front_ends() {
    let server = Server::start(&["--admin-token", "s3cret"]);
    let (status, body) = server.admin_call("GET", "/v1/status", None, None).await;
    assert_eq!(status, 401, "{body:#}");
    assert_eq!(body["error"], "unauthenticated");
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("Authorization: Bearer"), "{message}");
    assert!(message.contains("--admin-token"), "{message}");
    let (status, _) = server
        .admin_call("GET", "/v1/status", Some("wrong"), None)
        .await;
    assert_eq!(status, 401);
    let (status, _) = server
        .admin_call("GET", "/v1/journal", Some("s3cret"), None)
        .await;
    assert_eq!(status, 200);

    let admin = admin_grpc(&server).await;
    let err = admin
        .unary("protoserve.admin.v1.Admin/Status", json!({}))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    assert!(err.message().contains("authorization: Bearer"));
    let mut md = MetadataMap::new();
    md.insert("authorization", "Bearer s3cret".parse().unwrap());
    let (status, _) = admin
        .unary_with("protoserve.admin.v1.Admin/Status", json!({}), md)
        .await
        .unwrap();
    assert_eq!(status["journal"]["enabled"], true);

    // The public port needs no token.
    greeter(&server)
        .await
        .unary("helloworld.Greeter/SayHello", json!({"name": "x"}))
        .await
        .unwrap();
}

#[tokio::test]
async fn the_token_can_come_from_the_environment() {
    let server = Server::start_with_env(&[], &[("PROTOSERVE_ADMIN_TOKEN", "from-env")]);
    let (status, _) = server.admin_call("GET", "/v1/status", None, None).await;
    assert_eq!(status, 401);
    let (status, _) = server
        .admin_call("GET", "/v1/status", Some("from-env"), None)
        .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn admin_off_starts_no_admin_listener() {
    let server = Server::start(&["--admin", "off"]);
    assert!(server.admin.is_none());
    assert!(
        !server.log().iter().any(|l| l.contains("admin API on")),
        "{:?}",
        server.log()
    );
    greeter(&server)
        .await
        .unary("helloworld.Greeter/SayHello", json!({"name": "x"}))
        .await
        .unwrap();
}

#[test]
fn a_bad_admin_address_is_a_startup_error() {
    let (code, _, err) = common::run(&["serve", "--listen", "127.0.0.1:0", "--admin", "nowhere"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("such as 127.0.0.1:9901"), "{err}");
    assert!(err.contains("; or off"), "{err}");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, _, err) = common::run(&["serve", "--listen", "127.0.0.1:0", "--admin", &addr]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--admin"), "{err}");
    assert!(err.contains("--admin off"), "{err}");
}

#[tokio::test]
async fn bad_requests_get_400_with_a_message() {
    let server = Server::repo_default();
    let cases: &[(&str, &str, Option<&str>, u16, &str)] = &[
        ("POST", "/v1/verify", Some("{\"method\": "), 400, "not valid JSON"),
        ("POST", "/v1/verify", Some(""), 400, "body is empty"),
        ("POST", "/v1/verify", Some("[1, 2]"), 400, "a verify is an object"),
        ("POST", "/v1/verify", Some("{\"methd\": \"x\"}"), 400, "did you mean \"method\""),
        (
            "POST",
            "/v1/verify",
            Some("{\"method\": \"helloworld.Greeter/SayHello\", \"exactly\": -1}"),
            400,
            "whole number",
        ),
        (
            "POST",
            "/v1/verify",
            Some("{\"method\": \"helloworld.Greeter/SayHello\", \"exactly\": 1, \"at_least\": 1}"),
            400,
            "not both",
        ),
        (
            "POST",
            "/v1/verify",
            Some("{\"method\": \"helloworld.Greeter/SayHello\", \"when\": {\"request\": {\"nam\": \"x\"}}}"),
            400,
            "did you mean \"name\"",
        ),
        ("PUT", "/v1/handlers/helloworld.Greeter/SayHello", Some("not json"), 400, "not valid JSON"),
        ("GET", "/v1/nothing", None, 404, "GET /v1/status"),
        ("DELETE", "/v1/status", None, 405, "does not take DELETE"),
        ("GET", "/v1/journal/12abc", None, 400, "not a call id"),
    ];
    for (method, path, body, want, says) in cases {
        let (status, json) = server.admin_call(method, path, None, *body).await;
        assert_eq!(status, *want, "{method} {path} {body:?}: {json:#}");
        let message = json["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(says),
            "{method} {path} {body:?}: {message}"
        );
    }
}

/// Sends `request` on a raw connection and reads the answer until the server closes it or
/// a few seconds pass.
fn raw(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let _ = stream.write_all(request);
    let mut answer = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                answer.extend_from_slice(&buf[..n]);
                if answer.windows(4).any(|w| w == b"\r\n\r\n") && answer.ends_with(b"}\n") {
                    break;
                }
            }
        }
    }
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn hostile_requests_are_refused_and_the_admin_api_keeps_answering() {
    let server = Server::repo_default();
    let addr = server.admin_addr();
    // A body over the limit: refused before it is read in full.
    let huge = format!("{{\"method\": \"{}\"}}", "x".repeat(2 * 1024 * 1024));
    let (status, body) = server
        .admin_call("POST", "/v1/verify", None, Some(&huge))
        .await;
    assert_eq!(status, 413, "{body:#}");
    assert_eq!(body["error"], "too_large");
    // A declared length over the limit.
    let answer = tokio::task::spawn_blocking(move || {
        raw(
            addr,
            b"POST /v1/verify HTTP/1.1\r\nhost: x\r\ncontent-length: 999999999\r\n\r\n{",
        )
    })
    .await
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    // JSON nested far deeper than any verify.
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let (status, body) = server
        .admin_call("POST", "/v1/verify", None, Some(&deep))
        .await;
    assert_eq!(status, 400, "{body:#}");
    // Not HTTP at all, and a head far too large.
    let answer = tokio::task::spawn_blocking(move || {
        raw(
            addr,
            &[
                0xde, 0xad, 0xbe, 0xef, 0, 1, 2, 3, b'\n', b'\n', 0xff, 0x00, 0x13, 0x37, 0x42,
                0x42, 0x42,
            ],
        )
    })
    .await
    .unwrap();
    assert!(!answer.contains("200 OK"), "{answer}");
    let mut big_head = b"GET /v1/status HTTP/1.1\r\nx-filler: ".to_vec();
    big_head.extend(std::iter::repeat_n(b'a', 200 * 1024));
    big_head.extend_from_slice(b"\r\n\r\n");
    let answer = tokio::task::spawn_blocking(move || raw(addr, &big_head))
        .await
        .unwrap();
    assert!(!answer.contains("200 OK"), "{answer}");
    // gRPC with a message the service cannot decode.
    let admin = admin_grpc(&server).await;
    let err = admin
        .raw_unary(
            "/protoserve.admin.v1.Admin/Verify",
            bytes::Bytes::from_static(&[0xff, 0xff, 0xff]),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let err = admin
        .raw_unary("/protoserve.admin.v1.Admin/Nope", bytes::Bytes::new())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unimplemented);
    // Still answering, on a fresh connection.
    let status = server.admin_get("/v1/status").await;
    assert_eq!(status["generation"], 1);
}

/// The JSON front end speaks HTTP/2 (prior knowledge, as `curl --http2-prior-knowledge` does)
/// as well as HTTP/1.1, with the same answers.
#[tokio::test]
async fn the_json_front_end_speaks_http2_too() {
    let server = Server::repo_default();
    let mut send = common::h2_connect(server.admin_addr())
        .await
        .ready()
        .await
        .unwrap();
    let request = http::Request::builder()
        .method("GET")
        .uri(format!("http://{}/v1/services", server.admin_addr()))
        .body(())
        .unwrap();
    let (response, _) = send.send_request(request, true).unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let mut bytes = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        bytes.extend_from_slice(&chunk);
    }
    let over_h2: Json = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(over_h2, server.admin_get("/v1/services").await);
    assert!(
        over_h2["services"].as_array().unwrap().len() >= 2,
        "{over_h2:#}"
    );
}

/// The admin listener serves at most 64 connections at once: one more is served, and the one
/// idle the longest (the first of 64 that never sent anything) is closed to make room.
#[tokio::test]
async fn the_admin_listener_serves_at_most_64_connections() {
    let server = Server::repo_default();
    let addr = server.admin_addr();
    let mut held: Vec<TcpStream> = Vec::new();
    for _ in 0..64 {
        held.push(TcpStream::connect(addr).unwrap());
        // Accepted in this order, so the first is the one idle the longest.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (status, body) = tokio::time::timeout(
        Duration::from_secs(20),
        protoserve::admin::client::request(
            &addr.to_string(),
            http::Method::GET,
            "/v1/status",
            None,
            None,
        ),
    )
    .await
    .expect("the 65th connection got no answer")
    .unwrap();
    assert_eq!(status.as_u16(), 200, "{}", String::from_utf8_lossy(&body));
    let first = held.remove(0);
    let closed = tokio::task::spawn_blocking(move || {
        let mut first = first;
        first
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut buf = [0u8; 64];
        match first.read(&mut buf) {
            Ok(0) => Ok(()),
            Ok(n) => Err(format!("answered: {}", String::from_utf8_lossy(&buf[..n]))),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                Err("the connection idle the longest was left open".to_owned())
            }
            Err(_) => Ok(()),
        }
    })
    .await
    .unwrap();
    assert_eq!(closed, Ok(()));
}

/// PutHandler, RemoveHandler, Reload and Reset over gRPC do what their JSON routes do: a
/// handler put over gRPC serves the next call, a bad one is INVALID_ARGUMENT with the problem
/// and changes nothing, removing it brings the file's back (twice: NOT_FOUND), and Reset
/// clears the journal.
#[tokio::test]
async fn grpc_front_end_changes_handlers_like_json() {
    let server = Server::repo_default();
    let admin = admin_grpc(&server).await;
    let greeter = greeter(&server).await;
    let hello = || greeter.unary("helloworld.Greeter/SayHello", json!({"name": "Ann"}));
    assert_eq!(hello().await.unwrap()["message"], "Hello, Ann!");

    let put = admin
        .unary(
            "protoserve.admin.v1.Admin/PutHandler",
            json!({"method": "helloworld.Greeter/SayHello",
                   "entry": {"reply": {"message": "over gRPC, {{name}}"}}}),
        )
        .await
        .unwrap();
    assert_eq!(put["method"], "helloworld.Greeter/SayHello", "{put:#}");
    assert_eq!(hello().await.unwrap()["message"], "over gRPC, Ann");

    let err = admin
        .unary(
            "protoserve.admin.v1.Admin/PutHandler",
            json!({"method": "helloworld.Greeter/SayHello",
                   "entry": {"reply": {"mesage": "typo"}}}),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("did you mean \"message\""),
        "{err:?}"
    );
    assert_eq!(hello().await.unwrap()["message"], "over gRPC, Ann");

    let services = admin
        .unary("protoserve.admin.v1.Admin/ListServices", json!({}))
        .await
        .unwrap();
    assert!(services.to_string().contains("runtime"), "{services:#}");

    admin
        .unary(
            "protoserve.admin.v1.Admin/RemoveHandler",
            json!({"method": "helloworld.Greeter/SayHello"}),
        )
        .await
        .unwrap();
    assert_eq!(hello().await.unwrap()["message"], "Hello, Ann!");
    let err = admin
        .unary(
            "protoserve.admin.v1.Admin/RemoveHandler",
            json!({"method": "helloworld.Greeter/SayHello"}),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");

    let before = admin
        .unary("protoserve.admin.v1.Admin/Status", json!({}))
        .await
        .unwrap();
    let reloaded = admin
        .unary("protoserve.admin.v1.Admin/Reload", json!({}))
        .await
        .unwrap();
    let generation = |s: &Json| s["generation"].as_str().unwrap().parse::<u64>().unwrap();
    assert_eq!(
        generation(&reloaded),
        generation(&before) + 1,
        "{reloaded:#}"
    );
    assert_eq!(reloaded["lastReload"]["ok"], true, "{reloaded:#}");

    let reset = admin
        .unary("protoserve.admin.v1.Admin/Reset", json!({}))
        .await
        .unwrap();
    // The four greetings above (admin calls are not journaled).
    assert_eq!(reset["journal_cleared"].as_f64(), Some(4.0), "{reset:#}");
    let page = server.admin_get("/v1/journal").await;
    assert_eq!(page["calls"], json!([]), "{page:#}");
}

/// A request head must arrive within 10 s: a connection that sends half a head and stops is
/// closed then, and other requests are answered meanwhile.
#[tokio::test]
async fn a_request_head_that_stops_halfway_is_closed_after_10_s() {
    let server = Server::repo_default();
    let addr = server.admin_addr();
    let started = std::time::Instant::now();
    let stalled = tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        stream
            .write_all(b"GET /v1/status HTTP/1.1\r\nhost: x\r\n")
            .unwrap();
        let mut buf = [0u8; 256];
        let read = stream.read(&mut buf);
        (
            read.map(|n| String::from_utf8_lossy(&buf[..n]).into_owned()),
            started.elapsed(),
        )
    });
    // Meanwhile the API answers.
    server.admin_get("/v1/status").await;
    let (read, after) = stalled.await.unwrap();
    match &read {
        Ok(text) => assert!(
            text.is_empty() || text.starts_with("HTTP/1.1 408"),
            "{text}"
        ),
        Err(e) => assert!(
            !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "never closed: {e}"
        ),
    }
    assert!(
        after >= Duration::from_secs(9),
        "closed after {after:?}, before its 10 s"
    );
    assert!(after < Duration::from_secs(60), "never closed");
}
