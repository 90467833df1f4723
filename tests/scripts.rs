//! Lua script handlers: every shape, every ctx feature, the sandbox and the limits.

mod common;

use std::time::{Duration, Instant};

use common::{fixtures, Client, Server};
use serde_json::json;
use tonic::metadata::MetadataMap;
use tonic::Code;

fn lab_server(extra: &[&str]) -> Server {
    let mut args = extra.to_vec();
    if !extra.contains(&"--script-time-ms") {
        args.extend(["--script-time-ms", "300"]);
    }
    Server::lab(&args)
}

async fn lab(extra: &[&str]) -> (Server, Client) {
    let server = lab_server(extra);
    let client = Client::connect(server.addr, common::pool(&fixtures().join("protos"))).await;
    (server, client)
}

#[tokio::test]
async fn every_proto3_type_round_trips_through_lua() {
    let (_s, client) = lab(&[]).await;
    let item = json!({
        "id": "ü-id", "count": "-9223372036854775808", "color": "RED", "tags": ["a", "", "c"],
        "attrs": {"x": -1, "y": 2147483647}, "inner": {"x": -5, "label": "in"}, "blob": "AP8Q",
        "price": 1.25e-7, "ok": true, "at": "2024-02-29T23:59:59.123456789Z", "b": 0,
        "big": "18446744073709551615", "inners": [{"x": 1}, {}, {"label": "z"}]
    });
    let back = client
        .unary("lab.Lab/Roundtrip", item.clone())
        .await
        .unwrap();
    assert_eq!(back, item);
    let only_a = json!({"a": ""});
    assert_eq!(
        client
            .unary("lab.Lab/Roundtrip", only_a.clone())
            .await
            .unwrap(),
        only_a
    );
    assert_eq!(
        client.unary("lab.Lab/Roundtrip", json!({})).await.unwrap(),
        json!({})
    );
}

#[tokio::test]
async fn ctx_gives_metadata_method_deadline_headers_trailers_and_data() {
    let (_s, client) = lab(&[]).await;
    let mut md = MetadataMap::new();
    md.insert("x-user", "ada".parse().unwrap());
    md.insert("grpc-timeout", "5S".parse().unwrap());
    let m = client.method("lab.Lab/Describe");
    let req = Client::message(
        &m.input(),
        json!({"name": "hey", "limit": 21, "color": "GREEN", "inner": {"x": 3}}),
    );
    let mut request = tonic::Request::new(protoserve::codec::Outgoing::Message(req));
    *request.metadata_mut() = md;
    request.set_timeout(Duration::from_secs(5));
    let mut grpc = tonic::client::Grpc::new(client.channel.clone());
    grpc.ready().await.unwrap();
    let resp = grpc
        .unary(
            request,
            "/lab.Lab/Describe".parse().unwrap(),
            common::DynamicCodec::new(m.output()),
        )
        .await
        .unwrap();
    assert_eq!(resp.metadata().get("x-seen-by").unwrap(), "lab");
    let body = common::to_json(resp.get_ref());
    assert_eq!(
        body,
        json!({"id": "HEY!", "count": "42", "color": "GREEN", "tags": ["lab.Lab/Describe", "ada", "true", "true"],
               "inner": {"x": 3}, "attrs": {"n": 3, "first": 1}, "blob": "AAEC", "big": "18446744073709551615"})
    );

    // Trailers arrive after the body: read them with a raw HTTP/2 call.
    use tower::ServiceExt;
    let mut framed = vec![0u8, 0, 0, 0, 0];
    let payload = prost::Message::encode_to_vec(&Client::message(&m.input(), json!({"name": "t"})));
    framed[1..5].copy_from_slice(&(payload.len() as u32).to_be_bytes());
    framed.extend(payload);
    let http_req = http::Request::builder()
        .method("POST")
        .uri(format!("http://{}/lab.Lab/Describe", _s.addr))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(tonic::body::Body::new(http_body_util::Full::new(
            bytes::Bytes::from(framed),
        )))
        .unwrap();
    let resp = client.channel.clone().oneshot(http_req).await.unwrap();
    let collected = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap();
    let trailers = collected.trailers().cloned().expect("trailers");
    assert_eq!(trailers.get("grpc-status").unwrap(), "0");
    assert_eq!(trailers.get("x-done").unwrap(), "yes");
}

#[tokio::test]
async fn server_streaming_sends_and_returns_arrays() {
    let (_s, client) = lab(&[]).await;
    let items = client
        .server_stream("lab.Lab/Count", json!({"id": "c", "limit": 3}))
        .await
        .unwrap();
    assert_eq!(
        items,
        vec![
            json!({"id": "c-1", "count": "1"}),
            json!({"id": "c-2", "count": "2"}),
            json!({"id": "c-3", "count": "3"})
        ]
    );
    let items = client
        .server_stream("lab.Lab/Returned", json!({}))
        .await
        .unwrap();
    assert_eq!(
        items,
        vec![
            json!({"id": "sent first"}),
            json!({"id": "a"}),
            json!({"id": "b"})
        ]
    );
}

#[tokio::test]
async fn client_streaming_iterates_the_requests() {
    let (_s, client) = lab(&[]).await;
    let r = client
        .client_stream(
            "lab.Lab/Sum",
            vec![
                json!({"id": "x", "limit": 2}),
                json!({"id": "y", "limit": 5}),
            ],
        )
        .await
        .unwrap();
    assert_eq!(r, json!({"count": "7", "tags": ["x", "y"]}));
    assert_eq!(
        client.client_stream("lab.Lab/Sum", vec![]).await.unwrap(),
        json!({})
    );
}

#[tokio::test]
async fn bidi_iterates_and_sends_and_ends_with_a_script_status() {
    let (_s, client) = lab(&[]).await;
    let (items, status) = client
        .bidi(
            "lab.Lab/Mirror",
            vec![
                json!({"id": "a", "limit": 2}),
                json!({"id": "b", "limit": 1}),
            ],
        )
        .await;
    assert!(status.is_none(), "{status:?}");
    assert_eq!(
        items,
        vec![
            json!({"id": "a", "count": "1"}),
            json!({"id": "a", "count": "2"}),
            json!({"id": "b", "count": "1"})
        ]
    );
    let (items, status) = client
        .bidi(
            "lab.Lab/Mirror",
            vec![
                json!({"id": "a", "limit": 1}),
                json!({"id": "boom", "limit": 4}),
            ],
        )
        .await;
    assert_eq!(items.len(), 1);
    let status = status.unwrap();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(status.message(), "boom at 4");
}

/// The server still answers after whatever the test did to it.
async fn still_serves(client: &Client) {
    let r = client
        .unary("lab.Lab/Roundtrip", json!({"id": "alive"}))
        .await
        .unwrap();
    assert_eq!(r["id"], "alive");
}

async fn fail(client: &Client, case: &str) -> tonic::Status {
    client
        .unary("lab.Lab/Fail", json!({"id": case}))
        .await
        .unwrap_err()
}

#[tokio::test]
async fn script_errors_become_the_right_status() {
    let (_s, client) = lab(&[]).await;
    let s = fail(&client, "status").await;
    assert_eq!((s.code(), s.message()), (Code::NotFound, "no such thing"));
    let s = fail(&client, "numeric").await;
    assert_eq!((s.code(), s.message()), (Code::PermissionDenied, "denied"));

    let s = fail(&client, "runtime").await;
    assert_eq!(s.code(), Code::Internal);
    let script = std::fs::read_to_string(fixtures().join("lab_handlers/lab.lua")).unwrap();
    let line = script
        .lines()
        .position(|l| l.contains("runtime = function"))
        .unwrap()
        + 1;
    let want = format!("lab.lua:{line}: attempt to index a nil value (local 't')");
    assert!(s.message().contains(&want), "wanted {want:?} in {s:?}");
    assert!(!s.message().contains("stack traceback"), "{s:?}");

    let s = fail(&client, "type").await;
    assert_eq!(s.code(), Code::Internal);
    assert!(s.message().contains("lab.lua: Fail returned a bad kitchen.Item: field count: expected int64, got string \"lots\""), "{s:?}");
    let s = fail(&client, "field").await;
    assert!(
        s.message().contains(
            "field colour: kitchen.Item has no field \"colour\" (did you mean \"color\"?)"
        ),
        "{s:?}"
    );
    let s = fail(&client, "nested").await;
    assert!(
        s.message()
            .contains("field inner.x: expected int32, got number 1.5"),
        "{s:?}"
    );
    let s = fail(&client, "enum").await;
    assert!(
        s.message()
            .contains("kitchen.common.Color has no value \"PURPLE\""),
        "{s:?}"
    );

    let s = fail(&client, "trailer").await;
    assert_eq!(s.code(), Code::Aborted);
    assert_eq!(s.metadata().get("x-why").unwrap(), "because");

    // The server keeps serving after every one of them.
    still_serves(&client).await;
}

#[tokio::test]
async fn sandbox_has_no_io_and_no_shared_writable_state() {
    let (_s, client) = lab(&[]).await;
    let r = client
        .unary("lab.Lab/Fail", json!({"id": "io"}))
        .await
        .unwrap();
    assert_eq!(r["id"], "nilnilnilnil");
    let s = fail(&client, "global").await;
    assert_eq!(s.code(), Code::Internal);
    assert!(s.message().contains("cannot set global 'leaked'"), "{s:?}");
    let s = fail(&client, "data").await;
    assert!(
        s.message().contains("attempt to modify read-only table"),
        "{s:?}"
    );
    let (r, _) = client
        .unary_with("lab.Lab/Describe", json!({"name": "n"}), MetadataMap::new())
        .await
        .unwrap();
    assert_eq!(r["attrs"]["first"], 1);
}

#[tokio::test]
async fn endless_loop_hits_the_time_budget() {
    let (_s, client) = lab(&[]).await;
    let started = Instant::now();
    let s = fail(&client, "loop").await;
    assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
    assert!(s.message().contains("time budget of 300 ms"), "{s:?}");
    assert!(started.elapsed() < Duration::from_secs(20));
    still_serves(&client).await;
}

/// The time budget counts the time a script runs, not the time it waits: a call that sleeps
/// twice its budget answers.
#[tokio::test]
async fn waiting_does_not_count_against_the_time_budget() {
    let (_s, client) = lab(&[]).await;
    let r = client
        .unary("lab.Lab/Fail", json!({"id": "nap"}))
        .await
        .expect("the sleeping call answers");
    assert_eq!(r["id"], "rested", "{r}");
}

#[tokio::test]
async fn endless_loop_hits_the_instruction_budget_when_counted() {
    let (_s, client) = lab(&["--script-instructions", "5000000"]).await;
    let started = Instant::now();
    let s = fail(&client, "loop").await;
    assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
    assert!(
        s.message().contains("budget of 5000000 Lua instructions"),
        "{s:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(20));
    still_serves(&client).await;
}

#[tokio::test]
async fn deadline_stops_sleeping_and_looping_scripts() {
    let (_s, client) = lab(&["--script-time-ms", "600000"]).await;
    for case in ["sleep", "loop"] {
        let mut md = MetadataMap::new();
        md.insert("grpc-timeout", "300m".parse().unwrap());
        let started = Instant::now();
        let s = client
            .unary_with("lab.Lab/Fail", json!({"id": case}), md)
            .await
            .unwrap_err();
        // tonic's own grpc-timeout layer may answer first (CANCELLED, "Timeout expired");
        // either way the script must stop and the call end at the deadline.
        assert!(
            matches!(s.code(), Code::DeadlineExceeded | Code::Cancelled),
            "{case}: {s:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{case}: {:?}",
            started.elapsed()
        );
    }
    still_serves(&client).await;
}

#[tokio::test]
async fn memory_limit_per_state() {
    let (_s, client) = lab(&["--script-memory", "16"]).await;
    let s = fail(&client, "memory").await;
    assert_eq!(s.code(), Code::ResourceExhausted);
    assert!(s.message().contains("memory limit of 16 MiB"), "{s:?}");
    still_serves(&client).await;
}

#[tokio::test]
async fn cancelling_mid_stream_stops_the_script() {
    let (server, client) = lab(&["--log-level", "debug"]).await;
    let m = client.method("lab.Lab/Forever");
    let mut grpc = tonic::client::Grpc::new(client.channel.clone());
    grpc.ready().await.unwrap();
    let req = tonic::Request::new(protoserve::codec::Outgoing::Message(Client::message(
        &m.input(),
        json!({}),
    )));
    let mut stream = grpc
        .server_streaming(
            req,
            "/lab.Lab/Forever".parse().unwrap(),
            common::DynamicCodec::new(m.output()),
        )
        .await
        .unwrap()
        .into_inner();
    for _ in 0..3 {
        stream.message().await.unwrap().unwrap();
    }
    drop(stream);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if server.log().iter().any(|l| {
            l.contains("lab.Lab/Forever") && l.contains("script stopped: the call was cancelled")
        }) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "script not stopped: {:?}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Protobuf wire encoding, for requests a JSON client cannot send (bad bytes, odd varints).
mod wire_bytes {
    pub fn varint(mut n: u64) -> Vec<u8> {
        let mut out = Vec::new();
        while n >= 0x80 {
            out.push((n as u8) | 0x80);
            n >>= 7;
        }
        out.push(n as u8);
        out
    }
    pub fn key(field: u64, wire_type: u64) -> Vec<u8> {
        varint(field << 3 | wire_type)
    }
    pub fn int(field: u64, n: u64) -> Vec<u8> {
        [key(field, 0), varint(n)].concat()
    }
    pub fn double(field: u64, x: f64) -> Vec<u8> {
        [key(field, 1), x.to_le_bytes().to_vec()].concat()
    }
    pub fn float(field: u64, x: f32) -> Vec<u8> {
        [key(field, 5), x.to_le_bytes().to_vec()].concat()
    }
    pub fn fixed64(field: u64, n: u64) -> Vec<u8> {
        [key(field, 1), n.to_le_bytes().to_vec()].concat()
    }
    pub fn fixed32(field: u64, n: u32) -> Vec<u8> {
        [key(field, 5), n.to_le_bytes().to_vec()].concat()
    }
    pub fn message(field: u64, body: &[u8]) -> Vec<u8> {
        [key(field, 2), varint(body.len() as u64), body.to_vec()].concat()
    }
}

/// A request stream whose type has only numbers (taken by a C function that pushes them onto
/// the Lua stack) reads like the same stream with a string field (taken through Lua values):
/// the same tables in the same order, edge values included, the same error for a message
/// that does not decode, reading on after it, and `nil` again after the end.
#[tokio::test]
async fn number_streams_read_like_streams_with_strings() {
    use bytes::Bytes;
    use wire_bytes::*;
    let dir = fixtures().join("number_streams");
    let protos = dir.join("protos");
    let server = Server::start(&[
        "--protos",
        protos.to_str().unwrap(),
        "--handlers",
        dir.join("handlers").to_str().unwrap(),
    ]);
    let client = Client::connect(server.addr, common::pool(&protos)).await;
    let inner = |a: u64, d: f64| [int(1, a), double(2, d)].concat();
    let requests: Vec<Vec<u8>> = vec![
        vec![],
        [
            int(1, u64::MAX),
            int(2, u64::MAX),
            int(3, 9),
            int(4, 2),
            float(5, f32::NAN),
            double(6, f64::NEG_INFINITY),
        ]
        .concat(),
        [
            int(7, 1),
            int(7, 99),
            fixed64(8, 1 << 63),
            fixed32(9, u32::MAX),
            int(10, 0),
        ]
        .concat(),
        [message(11, &inner(3, 1.5)), message(11, &int(1, 4))].concat(),
        [message(12, &inner(1, 2.0)), message(13, &inner(5, 0.25))].concat(),
        [message(13, &inner(5, 0.25)), message(12, &int(1, 9))].concat(),
        [
            message(12, &inner(1, 2.0)),
            int(14, 77),
            message(99, b"unknown"),
        ]
        .concat(),
        [int(1, 1), double(1, 1.0)].concat(),
        int(1, 2),
        [int(1, 3), key(6, 1), vec![0; 3]].concat(),
        int(1, 4),
    ];
    let text = |r: Result<Bytes, tonic::Status>| -> String {
        let bytes = r.expect("the call answers");
        let output = client.method("numbers.Streams/Points").output();
        let seen = prost_reflect::DynamicMessage::decode(output, bytes).unwrap();
        seen.get_field_by_name("text")
            .unwrap()
            .as_str()
            .unwrap()
            .to_owned()
    };
    let points: Vec<Bytes> = requests.iter().map(|r| Bytes::from(r.clone())).collect();
    let named: Vec<Bytes> = requests
        .iter()
        .map(|r| Bytes::from([r.clone(), message(15, b"n")].concat()))
        .collect();
    let numbers = text(
        client
            .raw_client_stream("/numbers.Streams/Points", points)
            .await,
    );
    let strings = text(
        client
            .raw_client_stream("/numbers.Streams/Names", named)
            .await,
    );
    assert_eq!(numbers, strings);
    let lines: Vec<&str> = numbers.lines().collect();
    assert_eq!(lines.len(), requests.len() + 2, "{numbers}");
    assert_eq!(
        lines[1],
        "{b=true,c=RED,d=-inff,f=nan,fx=0,i32=-1,s32=-5,sf=0,u64=-1}"
    );
    assert_eq!(
        lines[2],
        "{b=false,c=99,d=0f,f=0f,fx=-9223372036854775808,i32=0,o=0,s32=0,sf=-1,u64=0}"
    );
    assert!(lines[3].contains("in={a=4,d=1.5f}"), "{}", lines[3]);
    assert!(
        lines[4].contains("y={a=5,d=0.25f}") && !lines[4].contains(",x="),
        "{}",
        lines[4]
    );
    assert!(
        lines[5].contains("x={a=9,d=0f}") && !lines[5].contains(",y="),
        "{}",
        lines[5]
    );
    assert!(
        lines[6].contains("z=77") && !lines[6].contains(",x="),
        "{}",
        lines[6]
    );
    assert!(
        lines[7].starts_with("error: ") && lines[7].contains("wrong wire type"),
        "{}",
        lines[7]
    );
    assert!(lines[8].contains("i32=2"), "{}", lines[8]);
    assert!(
        lines[9].starts_with("error: ") && lines[9].contains("truncated"),
        "{}",
        lines[9]
    );
    assert!(lines[10].contains("i32=4"), "{}", lines[10]);
    assert_eq!(lines[11..], ["end", "then nil"]);
}

/// A server of the lab protos and data whose one handler is `script` for lab.Lab's `method`,
/// and a client of it; the folder holding the handler lives as long as the last value.
async fn one_script(method: &str, script: &str) -> (Server, Client, tempfile::TempDir) {
    let handlers = tempfile::tempdir().unwrap();
    std::fs::write(
        handlers.path().join("one.json"),
        format!(
            r#"{{ "service": "lab.Lab", "methods": {{ "{method}": {{ "script": "one.lua" }} }} }}"#
        ),
    )
    .unwrap();
    std::fs::write(handlers.path().join("one.lua"), script).unwrap();
    let f = fixtures();
    let data = f.join("data");
    let (server, client) = common::serve_folders(
        &f.join("protos"),
        handlers.path(),
        &["--data", data.to_str().unwrap()],
    )
    .await;
    (server, client, handlers)
}

/// `ctx:send` takes common messages through a Lua C function that reads them off the stack
/// and leaves the rest to the encoder that reads through handles: messages of every kind it
/// takes (plain tables, frozen data, a frozen table sent twice, frozen tables inside a plain
/// one) arrive whole, and a bad message still fails the call naming the script, the type and
/// the field, after the good ones before it.
#[tokio::test]
async fn sent_messages_arrive_whole_and_bad_ones_name_the_field() {
    let (_s, client, _dir) = one_script(
        "Count",
        r#"
local shared = { id = "shared", tags = { "x", "y" } }
function Count(q, ctx)
  ctx:send({ id = "plain", count = q.limit, attrs = { n = data.lab.items[2].n } })
  ctx:send(shared)
  ctx:send(shared)
  ctx:send({ id = "nested", inner = { x = data.lab.items[3].n }, tags = shared.tags })
  if q.id == "bad" then ctx:send({ id = "bad", count = "lots" }) end
  ctx:send({ id = "last", ok = true })
end
"#,
    )
    .await;
    let expected = [
        json!({"id": "plain", "count": "4", "attrs": {"n": 2}}),
        json!({"id": "shared", "tags": ["x", "y"]}),
        json!({"id": "shared", "tags": ["x", "y"]}),
        json!({"id": "nested", "inner": {"x": 3}, "tags": ["x", "y"]}),
    ];
    let items = client
        .server_stream("lab.Lab/Count", json!({"id": "good", "limit": 4}))
        .await
        .unwrap();
    let mut all = expected.to_vec();
    all.push(json!({"id": "last", "ok": true}));
    assert_eq!(items, all);
    let mut stream = client
        .server_stream_open("lab.Lab/Count", json!({"id": "bad", "limit": 4}))
        .await
        .unwrap();
    let mut got = Vec::new();
    let status = loop {
        match stream.message().await {
            Ok(Some(msg)) => got.push(common::to_json(&msg)),
            Ok(None) => panic!("the stream ended without an error after {got:?}"),
            Err(status) => break status,
        }
    };
    assert_eq!(got, expected.to_vec());
    let message = status.message();
    assert!(
        message.contains("one.lua")
            && message.contains("sent a bad kitchen.Item")
            && message.contains("count"),
        "{status:?}"
    );
}

/// `ctx:sleep(0)` waited for the next tick of the timer wheel, a millisecond or two, where
/// scripts use it to give other calls a turn: 200 of them took about as long as 200
/// `ctx:sleep(1)`. It is now a turn and no timer, measured against `ctx:sleep(1)` in the same
/// call, which cannot take less than its millisecond.
#[tokio::test]
async fn sleeping_zero_ms_is_a_turn_not_a_timer_tick() {
    let (_s, client, _dir) = one_script(
        "Describe",
        r#"
function Describe(q, ctx)
  local t0 = ctx:elapsed()
  for _ = 1, q.limit do ctx:sleep(0) end
  local t1 = ctx:elapsed()
  for _ = 1, q.limit do ctx:sleep(1) end
  local t2 = ctx:elapsed()
  return { id = string.format("%.6f %.6f", t1 - t0, t2 - t1) }
end
"#,
    )
    .await;
    let reply = client
        .unary("lab.Lab/Describe", json!({"limit": 200}))
        .await
        .unwrap();
    let times: Vec<f64> = reply["id"]
        .as_str()
        .unwrap()
        .split(' ')
        .map(|t| t.parse().unwrap())
        .collect();
    let (zero, one) = (times[0], times[1]);
    assert!(one >= 0.2, "200 sleeps of 1 ms took {one} s");
    assert!(
        zero < one / 4.0,
        "200 ctx:sleep(0) took {zero} s, 200 ctx:sleep(1) {one} s"
    );
}
