//! Bad requests get the right status with a useful message, and the server keeps serving.

mod common;

use bytes::Bytes;
use common::{repo, Client, Server};
use serde_json::json;
use tonic::Code;
use tower::ServiceExt;

async fn still_serves(client: &Client) {
    let r = client
        .unary("helloworld.Greeter/SayHello", json!({"name": "again"}))
        .await
        .unwrap();
    assert_eq!(r["message"], "Hello, again!");
}

/// POSTs `body` to `path` on the server at `addr` with `te: trailers` and `headers`, through the
/// client's channel: the response, which must be one the client can read.
async fn post(
    client: &Client,
    addr: std::net::SocketAddr,
    path: &str,
    headers: &[(&str, http::HeaderValue)],
    body: tonic::body::Body,
) -> http::Response<tonic::body::Body> {
    let mut req = http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}{path}"))
        .header("te", "trailers");
    for (name, value) in headers {
        req = req.header(*name, value.clone());
    }
    client
        .channel
        .clone()
        .oneshot(req.body(body).unwrap())
        .await
        .expect("a response the client can read")
}

#[tokio::test]
async fn garbage_bytes_are_invalid_argument() {
    let server = Server::repo_default();
    let client = Client::connect(server.addr, common::pool(&repo().join("protos"))).await;
    for garbage in [
        &[0xff, 0xff, 0xff][..],
        &[0x0a, 0x10, b'a'][..],
        &[0x0b][..],
    ] {
        let err = client
            .raw_unary(
                "/helloworld.Greeter/SayHello",
                Bytes::copy_from_slice(garbage),
            )
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{garbage:?}: {err:?}");
        assert!(err.message().contains("helloworld.HelloRequest"), "{err:?}");
    }
    still_serves(&client).await;
}

#[tokio::test]
async fn oversize_messages_are_resource_exhausted() {
    let server = Server::start(&["--max-message-size", "1024"]);
    let client = Client::connect(server.addr, common::pool(&repo().join("protos"))).await;
    let err = client
        .unary(
            "helloworld.Greeter/SayHello",
            json!({"name": "x".repeat(2000)}),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("--max-message-size"), "{err:?}");
    // The request fits but the reply ("Hello, …!") would not.
    let err = client
        .unary(
            "helloworld.Greeter/SayHello",
            json!({"name": "y".repeat(1015)}),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    still_serves(&client).await;
}

/// Health and reflection hold requests to `--max-message-size` like every method: a larger
/// limit lets a larger request through, and a smaller one refuses with the flag's name.
#[tokio::test]
async fn health_and_reflection_requests_follow_max_message_size() {
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::ServerReflectionRequest;

    async fn health(server: &Server, name: String) -> Result<(), tonic::Status> {
        let mut client = HealthClient::new(common::channel(server.addr).await);
        client
            .check(HealthCheckRequest { service: name })
            .await
            .map(|_| ())
    }
    /// Whether reflection answered.
    async fn reflection(server: &Server, symbol: String) -> Result<bool, tonic::Status> {
        // The answer repeats the request.
        let mut client = ServerReflectionClient::new(common::channel(server.addr).await)
            .max_decoding_message_size(64 * 1024 * 1024);
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol(symbol)),
        };
        let mut answers = client
            .server_reflection_info(futures_util::stream::iter(vec![request]))
            .await?
            .into_inner();
        answers.message().await.map(|answer| answer.is_some())
    }

    // 5 MiB requests are over the 4 MiB default, within 8 MiB.
    let big = "s".repeat(5 * 1024 * 1024);
    let server = Server::start(&["--max-message-size", "8388608"]);
    let err = health(&server, big.clone()).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(reflection(&server, big.clone()).await.unwrap());
    // 2 KiB requests are over 1 KiB.
    let server = Server::start(&["--max-message-size", "1024"]);
    let err = health(&server, "s".repeat(2048)).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("--max-message-size"), "{err:?}");
    // Reflection ends its stream with the same status (it used to end OK, without an answer).
    let err = reflection(&server, "s".repeat(2048)).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("--max-message-size"), "{err:?}");
    health(&server, "helloworld.Greeter".into()).await.unwrap();
    assert!(reflection(&server, "helloworld.Greeter".into())
        .await
        .unwrap());
}

#[tokio::test]
async fn default_limit_is_4_mib() {
    let server = Server::repo_default();
    let client = Client::connect(server.addr, common::pool(&repo().join("protos"))).await;
    let r = client
        .unary(
            "helloworld.Greeter/SayHello",
            json!({"name": "z".repeat(3 * 1024 * 1024)}),
        )
        .await
        .unwrap();
    assert_eq!(r["message"].as_str().unwrap().len(), 3 * 1024 * 1024 + 8);
    let err = client
        .unary(
            "helloworld.Greeter/SayHello",
            json!({"name": "z".repeat(4 * 1024 * 1024 + 1)}),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
}

#[tokio::test]
async fn wrong_content_type_is_refused_with_415() {
    let server = Server::repo_default();
    let client = Client::connect(server.addr, common::pool(&repo().join("protos"))).await;
    for content_type in [
        Some("text/plain"),
        Some("application/grpc-web"),
        Some("application/json"),
        None,
    ] {
        let mut req = http::Request::builder()
            .method("POST")
            .uri(format!(
                "http://{}/helloworld.Greeter/SayHello",
                server.addr
            ))
            .header("te", "trailers");
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        let req = req.body(tonic::body::Body::empty()).unwrap();
        let resp = client.channel.clone().oneshot(req).await.unwrap();
        assert_eq!(
            resp.status(),
            http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "{content_type:?}"
        );
        let message = resp
            .headers()
            .get("grpc-message")
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        assert!(message.contains("application/grpc"), "{message}");
    }
    still_serves(&client).await;
}

#[tokio::test]
async fn truncated_frames_and_resets_do_not_hurt_the_server() {
    let server = Server::repo_default();
    let client = Client::connect(server.addr, common::pool(&repo().join("protos"))).await;
    // A frame header promising 100 bytes followed by 3.
    let body = Bytes::from_static(&[0, 0, 0, 0, 100, 1, 2, 3]);
    let req = http::Request::builder()
        .method("POST")
        .uri(format!(
            "http://{}/helloworld.Greeter/SayHello",
            server.addr
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(tonic::body::Body::new(http_body_util::Full::new(body)))
        .unwrap();
    let resp = client.channel.clone().oneshot(req).await.unwrap();
    let status = tonic::Status::from_header_map(resp.headers()).map(|s| s.code());
    let trailers = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .ok()
        .and_then(|c| c.trailers().cloned());
    let code = status.or_else(|| {
        trailers
            .as_ref()
            .and_then(tonic::Status::from_header_map)
            .map(|s| s.code())
    });
    assert!(
        matches!(code, Some(Code::Internal) | Some(Code::InvalidArgument)),
        "{code:?}"
    );
    still_serves(&client).await;
}

/// A long content-type, of bytes that are not UTF-8 or only plain letters, is named in the 415's
/// `grpc-message` only in part: echoed whole (each odd byte as a percent-encoded U+FFFD, nine
/// bytes) the response headers passed the 16 KiB clients accept, and the client saw a broken
/// stream instead of the refusal.
#[tokio::test]
async fn a_huge_content_type_is_refused_with_415_the_client_can_read() {
    let server = Server::repo_default();
    let client = Client::connect(server.addr, common::pool(&repo().join("protos"))).await;
    let odd = http::HeaderValue::from_bytes(&[0xff; 3000]).unwrap();
    let long = http::HeaderValue::from_str(&format!("text/{}", "x".repeat(12_000))).unwrap();
    for content_type in [odd, long] {
        let resp = post(
            &client,
            server.addr,
            "/helloworld.Greeter/SayHello",
            &[("content-type", content_type)],
            tonic::body::Body::empty(),
        )
        .await;
        assert_eq!(resp.status(), http::StatusCode::UNSUPPORTED_MEDIA_TYPE);
        let status = tonic::Status::from_header_map(resp.headers()).expect("a grpc-status");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains("application/grpc"), "{status:?}");
        assert!(status.message().len() < 1024, "{}", status.message().len());
    }
    still_serves(&client).await;
}

/// A call to an unknown path gets UNIMPLEMENTED the client can read however long the path is:
/// echoed whole (each `%` percent-encoded as three bytes) it made response headers larger than
/// the 16 KiB clients accept.
#[tokio::test]
async fn a_huge_unknown_path_is_unimplemented_the_client_can_read() {
    let server = Server::repo_default();
    let client = Client::connect(server.addr, common::pool(&repo().join("protos"))).await;
    let grpc = http::HeaderValue::from_static("application/grpc");
    let resp = post(
        &client,
        server.addr,
        &format!("/{}", "%".repeat(6000)),
        &[("content-type", grpc)],
        tonic::body::Body::empty(),
    )
    .await;
    let status = tonic::Status::from_header_map(resp.headers()).expect("a grpc-status");
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
    assert!(status.message().contains("unknown method"), "{status:?}");
    still_serves(&client).await;
}

/// A call whose `grpc-encoding` is unknown gets UNIMPLEMENTED the client can read however long
/// the header is (tonic's message names it whole; each `%` goes out as three bytes).
#[tokio::test]
async fn a_huge_unknown_encoding_is_unimplemented_the_client_can_read() {
    let server = Server::repo_default();
    let client = Client::connect(server.addr, common::pool(&repo().join("protos"))).await;
    let resp = post(
        &client,
        server.addr,
        "/helloworld.Greeter/SayHello",
        &[
            (
                "content-type",
                http::HeaderValue::from_static("application/grpc"),
            ),
            (
                "grpc-encoding",
                http::HeaderValue::from_str(&"%".repeat(6000)).unwrap(),
            ),
        ],
        tonic::body::Body::new(http_body_util::Full::new(Bytes::from_static(&[
            1, 0, 0, 0, 0,
        ]))),
    )
    .await;
    let status = match tonic::Status::from_header_map(resp.headers()) {
        Some(s) => s,
        None => {
            let body = http_body_util::BodyExt::collect(resp.into_body())
                .await
                .expect("a body the client can read");
            tonic::Status::from_header_map(body.trailers().expect("trailers")).expect("a status")
        }
    };
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
    still_serves(&client).await;
}

/// Request headers (metadata) are bounded per call by `--max-header-list-size`, 16384 bytes by
/// default: a call over it is refused with `RESOURCE_EXHAUSTED` naming the flag before any
/// handler runs, a call under it is served, and so are later calls on the same connection.
#[tokio::test]
async fn request_headers_are_bounded_by_max_header_list_size() {
    use tonic::metadata::MetadataMap;
    let with_header = |bytes: usize| {
        let mut md = MetadataMap::new();
        md.insert("x-big", "a".repeat(bytes).parse().unwrap());
        md
    };
    for (args, over, under) in [
        (vec![], 20_000, 15_000),
        (vec!["--max-header-list-size", "4096"], 5_000, 3_000),
    ] {
        let server = Server::start(&args);
        let client = Client::connect(server.addr, common::pool(&repo().join("protos"))).await;
        let err = client
            .unary_with(
                "helloworld.Greeter/SayHello",
                json!({"name": "big"}),
                with_header(over),
            )
            .await
            .unwrap_err();
        assert_eq!(
            err.code(),
            tonic::Code::ResourceExhausted,
            "{args:?}: {err:?}"
        );
        assert!(
            err.message().contains("--max-header-list-size"),
            "{args:?}: {err:?}"
        );
        let (r, _) = client
            .unary_with(
                "helloworld.Greeter/SayHello",
                json!({"name": "fits"}),
                with_header(under),
            )
            .await
            .unwrap();
        assert_eq!(r["message"], "Hello, fits!", "{args:?}");
        still_serves(&client).await;
        // The refused call never reached a handler: the journal has only the two served ones.
        let page = server.admin_get("/v1/journal?view=summary").await;
        assert_eq!(page["calls"].as_array().unwrap().len(), 2, "{page:#}");
    }
}
