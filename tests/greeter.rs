//! The repository as shipped: Greeter answers like the tutorial, RouteGuide is listed, reflection
//! and health work.

mod common;

use common::{repo, Client, Server};
use serde_json::json;
use tonic::Code;

#[tokio::test]
async fn greeter_answers_like_the_tutorial() {
    let server = Server::repo_default();
    let client = Client::connect(server.addr, common::pool(&repo().join("protos"))).await;
    for (method, request, reply) in [
        ("SayHello", json!({"name": "you"}), "Hello, you!"),
        ("SayHelloAgain", json!({"name": "you"}), "Hello again, you!"),
        ("SayHello", json!({}), "Hello, !"),
        ("SayHello", json!({"name": "Zoë 🌍"}), "Hello, Zoë 🌍!"),
    ] {
        let r = client
            .unary(&format!("helloworld.Greeter/{method}"), request)
            .await
            .unwrap();
        assert_eq!(r, json!({ "message": reply }), "{method}");
    }
}

#[tokio::test]
async fn gzip_is_accepted_and_offered() {
    let server = Server::repo_default();
    let pool = common::pool(&repo().join("protos"));
    let channel = common::channel(server.addr).await;
    let method = pool
        .get_service_by_name("helloworld.Greeter")
        .unwrap()
        .methods()
        .next()
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel)
        .send_compressed(tonic::codec::CompressionEncoding::Gzip)
        .accept_compressed(tonic::codec::CompressionEncoding::Gzip);
    grpc.ready().await.unwrap();
    let name = "x".repeat(10_000);
    let req = Client::message(&method.input(), json!({ "name": name }));
    let resp = grpc
        .unary(
            tonic::Request::new(protoserve::codec::Outgoing::Message(req)),
            "/helloworld.Greeter/SayHello".parse().unwrap(),
            common::DynamicCodec::new(method.output()),
        )
        .await
        .unwrap();
    // The server said it compressed the reply (tonic's client then inflated it).
    assert_eq!(
        resp.metadata()
            .get("grpc-encoding")
            .map(|v| v.to_str().unwrap()),
        Some("gzip"),
        "reply not gzip-compressed: {:?}",
        resp.metadata()
    );
    assert_eq!(
        common::to_json(resp.get_ref())["message"],
        json!(format!("Hello, {name}!"))
    );
}

#[tokio::test]
async fn route_guide_is_served_by_the_shipped_script() {
    let server = Server::repo_default();
    let client = Client::connect(server.addr, common::pool(&repo().join("protos"))).await;
    let feature = client
        .unary(
            "routeguide.RouteGuide/GetFeature",
            json!({"latitude": 1, "longitude": 2}),
        )
        .await
        .expect("the shipped handlers answer RouteGuide");
    assert_eq!(
        feature,
        json!({"location": {"latitude": 1, "longitude": 2}}),
        "a point with no feature gets a nameless feature there"
    );
}

#[tokio::test]
async fn method_without_handler_is_unimplemented_naming_it() {
    let empty = tempfile::tempdir().unwrap();
    let server = Server::start(&["--handlers", empty.path().to_str().unwrap()]);
    let client = Client::connect(server.addr, common::pool(&repo().join("protos"))).await;
    let status = client
        .unary(
            "routeguide.RouteGuide/GetFeature",
            json!({"latitude": 1, "longitude": 2}),
        )
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented);
    assert!(
        status
            .message()
            .contains("routeguide.RouteGuide/GetFeature"),
        "{status:?}"
    );
    assert!(status.message().contains("no handler"), "{status:?}");
}

#[tokio::test]
async fn unknown_method_is_unimplemented() {
    let server = Server::repo_default();
    let client = Client::connect(server.addr, common::pool(&repo().join("protos"))).await;
    let err = client
        .raw_unary("/helloworld.Greeter/SayGoodbye", bytes::Bytes::new())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);
    assert!(
        err.message().contains("/helloworld.Greeter/SayGoodbye"),
        "{err:?}"
    );
}

#[tokio::test]
async fn health_reports_serving_for_every_service() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
    let server = Server::repo_default();
    let channel = common::channel(server.addr).await;
    let mut health = HealthClient::new(channel);
    for service in ["", "helloworld.Greeter", "routeguide.RouteGuide"] {
        let r = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.status, ServingStatus::Serving as i32, "{service}");
    }
    let err = health
        .check(HealthCheckRequest {
            service: "no.Such".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}

#[tokio::test]
async fn reflection_resolves_greeter_in_v1_and_v1alpha() {
    use common::reflection::{v1, v1alpha};
    use prost::Message;
    let server = Server::repo_default();
    let channel = common::channel(server.addr).await;
    let answers = v1::ask(
        channel.clone(),
        vec![
            v1::MessageRequest::ListServices(String::new()),
            v1::MessageRequest::FileContainingSymbol("helloworld.Greeter".into()),
        ],
    )
    .await;
    let [v1::MessageResponse::ListServicesResponse(list), v1::MessageResponse::FileDescriptorResponse(files)] =
        &answers[..]
    else {
        panic!("expected a service list, then file descriptors: {answers:?}")
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    for want in [
        "helloworld.Greeter",
        "routeguide.RouteGuide",
        "grpc.health.v1.Health",
    ] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    let file = prost_types::FileDescriptorProto::decode(files.file_descriptor_proto[0].as_slice())
        .unwrap();
    assert_eq!(file.package(), "helloworld");
    let greeter = &file.service[0];
    assert_eq!(greeter.name(), "Greeter");
    let methods: Vec<_> = greeter
        .method
        .iter()
        .map(|m| (m.name(), m.input_type()))
        .collect();
    assert!(
        methods.contains(&("SayHello", ".helloworld.HelloRequest")),
        "{methods:?}"
    );
    assert!(
        methods.contains(&("SayHelloAgain", ".helloworld.HelloRequest")),
        "{methods:?}"
    );

    let answers = v1alpha::ask(
        channel,
        vec![v1alpha::MessageRequest::FileContainingSymbol(
            "helloworld.Greeter".into(),
        )],
    )
    .await;
    let [v1alpha::MessageResponse::FileDescriptorResponse(files)] = &answers[..] else {
        panic!("expected file descriptors from v1alpha: {answers:?}")
    };
    assert!(!files.file_descriptor_proto.is_empty());
}

#[tokio::test]
async fn sigterm_lets_in_flight_calls_finish() {
    let f = common::fixtures();
    let server = Server::start(&[
        "--protos",
        f.join("protos").to_str().unwrap(),
        "--handlers",
        f.join("handlers").to_str().unwrap(),
    ]);
    let client = Client::connect(server.addr, common::pool(&f.join("protos"))).await;
    // List sends three messages 20 ms apart; stop the server once the first has arrived, so
    // the call is certainly in flight (however slow the machine).
    let mut stream = client
        .server_stream_open("kitchen.Kitchen/List", json!({"id": "s"}))
        .await
        .unwrap();
    let first = stream.message().await.unwrap();
    assert!(first.is_some(), "the stream started");
    let status = tokio::task::spawn_blocking(move || server.terminate());
    let mut items = 1;
    while stream
        .message()
        .await
        .expect("in-flight call completes")
        .is_some()
    {
        items += 1;
    }
    assert_eq!(items, 3);
    let status = status.await.unwrap();
    assert!(status.success(), "exit status {status:?}");
}

/// SIGINT (Ctrl-C) stops the server as SIGTERM does: draining first, then a clean exit.
#[tokio::test]
async fn sigint_stops_the_server_gracefully() {
    let mut server = Server::repo_default();
    let client = Client::connect(server.addr, common::pool(&repo().join("protos"))).await;
    client
        .unary("helloworld.Greeter/SayHello", json!({"name": "x"}))
        .await
        .unwrap();
    let sent = std::process::Command::new("kill")
        .args(["-INT", &server.pid().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let (status, log) = tokio::task::spawn_blocking(move || {
        let status = server.wait_exit(std::time::Duration::from_secs(20));
        // The last lines reach the log reader just after the exit.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !server.log().iter().any(|l| l.contains("stopped"))
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        (status, server.log())
    })
    .await
    .unwrap();
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{log:#?}");
    assert!(log.iter().any(|l| l.contains("shutting down")), "{log:#?}");
    assert!(log.iter().any(|l| l.contains("stopped")), "{log:#?}");
}
