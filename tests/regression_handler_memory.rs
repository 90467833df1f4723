//! Regressions of what declarative handlers make the server hold.
//!
//! - A reply, stream item or error message may repeat a request field: `"{{name}}"` written 64
//!   times, a repeated field spliced into a list 64 times, a message copied into 64 list items.
//!   With a 3 MiB request such a template renders 192 MiB; the server built all of it before the
//!   size check refused it (a 300-copy template took 1.8 GiB for one call, so a few calls at
//!   once could exhaust the machine). Rendering now stops at `--max-message-size`, with
//!   RESOURCE_EXHAUSTED naming the flag, and an error message stops at what a status carries.
//! - A reply or echo waiting out its `delay_ms` was held outside `--max-buffered`: 64 delayed
//!   echoes of 4 MiB held 340 MB on one connection limited to 64 MiB (4096 calls, the default
//!   `--max-calls`, would hold 16 GiB). It is counted now, like a response not yet written.
//! - Big requests to `rules`, matched one at a time off the network threads, each held an OS
//!   thread while waiting for their turn (120 waiting calls: 28 more threads on a release
//!   build). They wait as futures now.

mod common;

use bytes::{BufMut, Bytes, BytesMut};
use common::{fixtures, Client, Server};
use tonic::Code;

const COPIES: usize = 64;
const FIELD: usize = 3 << 20;

/// A handler file whose every method repeats request fields `COPIES` times.
fn handler_file() -> String {
    let text = "{{name}}".repeat(COPIES);
    let tags = vec!["{{tags}}"; COPIES];
    let inners = vec![serde_json::json!({"label": "{{name}}"}); COPIES];
    let copies = vec!["{{id}}"; COPIES];
    serde_json::json!({
        "service": "kitchen.Kitchen",
        "methods": {
            // Text read straight from the request's bytes.
            "Get": {"reply": {"id": text}},
            // Text into messages, built as a message.
            "Summary": {"reply": {"inners": inners, "count": 1}},
            // A repeated field spliced into a list.
            "Lookup": {"reply": {"tags": tags}},
            // A string copied into list items.
            "Missing": {"reply": {"tags": copies}},
            // A stream item.
            "List": {"stream": [{"id": text}]},
            // A status message.
            "Fail": {"error": {"code": "NOT_FOUND", "message": text}}
        }
    })
    .to_string()
}

/// `field` as a length-delimited protobuf field.
fn put_field(buf: &mut BytesMut, number: u32, data: &[u8]) {
    prost::encoding::encode_key(number, prost::encoding::WireType::LengthDelimited, buf);
    prost::encoding::encode_varint(data.len() as u64, buf);
    buf.put_slice(data);
}

#[tokio::test]
async fn templates_that_repeat_a_large_request_field_stop_at_the_message_limit() {
    let (server, _handlers) = Server::kitchen_with(&handler_file(), &[]);
    let protos = fixtures().join("protos");
    let client = Client::connect(server.addr, common::pool(&protos)).await;

    // kitchen.Query: id = 1, name = 3, tags = 6.
    let mut big_name = BytesMut::new();
    put_field(&mut big_name, 3, &vec![b'n'; FIELD]);
    let mut big_id = BytesMut::new();
    put_field(&mut big_id, 1, &vec![b'i'; FIELD]);
    let mut many_tags = BytesMut::new();
    for _ in 0..(FIELD / 1000) {
        put_field(&mut many_tags, 6, &[b't'; 1000]);
    }
    let (big_name, big_id, many_tags) = (big_name.freeze(), big_id.freeze(), many_tags.freeze());

    let before = common::proc_status_kib(server.pid(), "VmHWM");
    for (method, request) in [
        ("Get", &big_name),
        ("Summary", &big_name),
        ("Lookup", &many_tags),
        ("Missing", &big_id),
    ] {
        let path = format!("/kitchen.Kitchen/{method}");
        let status = client
            .raw_unary(&path, request.clone())
            .await
            .expect_err(method);
        assert_eq!(
            status.code(),
            Code::ResourceExhausted,
            "{method}: {status:?}"
        );
        assert!(
            status.message().contains("--max-message-size"),
            "{method}: {status:?}"
        );
    }
    let stream = stream_status(&client, &big_name).await;
    assert_eq!(stream.code(), Code::ResourceExhausted, "List: {stream:?}");

    let status = client
        .raw_unary("/kitchen.Kitchen/Fail", big_name.clone())
        .await
        .expect_err("Fail");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert!(status.message().len() < 8192, "{}", status.message().len());

    // Each call holds its request, its decoded form and at most one message's worth of reply;
    // rendering any of these templates in full takes 192 MiB or more.
    let grown = common::proc_status_kib(server.pid(), "VmHWM").saturating_sub(before) / 1024;
    assert!(grown < 120, "the server grew by {grown} MiB");

    // And it goes on serving small requests with the same templates.
    let mut small = BytesMut::new();
    put_field(&mut small, 3, b"ab");
    let reply = client
        .raw_unary("/kitchen.Kitchen/Get", small.freeze())
        .await
        .unwrap();
    // kitchen.Item.id: its key, a two-byte length and the name 64 times.
    assert_eq!(reply.len(), 3 + 2 * COPIES);
}

/// The status of a server-streaming call to `kitchen.Kitchen/List` with `request`.
async fn stream_status(client: &Client, request: &Bytes) -> tonic::Status {
    let mut body = BytesMut::new();
    body.put_slice(request);
    let mut grpc = tonic::client::Grpc::new(client.channel.clone());
    grpc.ready().await.unwrap();
    let resp = grpc
        .server_streaming(
            tonic::Request::new(body.freeze()),
            "/kitchen.Kitchen/List".parse().unwrap(),
            common::RawCodec,
        )
        .await;
    match resp {
        Err(status) => status,
        Ok(resp) => {
            let mut stream = resp.into_inner();
            loop {
                match stream.message().await {
                    Ok(Some(_)) => {}
                    Ok(None) => panic!("List ended OK"),
                    Err(status) => return status,
                }
            }
        }
    }
}

#[tokio::test]
async fn replies_waiting_for_their_delay_count_against_the_connection_buffers() {
    let (server, _handlers) = Server::kitchen_with(
        r#"{"service": "kitchen.Kitchen", "methods": {"Echo": {"echo": {}, "delay_ms": 5000}}}"#,
        &["--max-buffered-per-connection", "4194304"],
    );
    let protos = fixtures().join("protos");
    // One connection; each call's 1 MiB request arrives well before the next starts, so only
    // the replies waiting for their delay can fill the connection's 4 MiB.
    let client = Client::connect(server.addr, common::pool(&protos)).await;
    let mut item = BytesMut::new();
    put_field(&mut item, 1, &vec![b'e'; 1 << 20]);
    let item = item.freeze();
    let mut calls = Vec::new();
    for _ in 0..8 {
        let (client, item) = (client.channel.clone(), item.clone());
        calls.push(tokio::spawn(async move {
            let mut grpc = tonic::client::Grpc::new(client);
            grpc.ready().await.unwrap();
            grpc.unary(
                tonic::Request::new(item),
                "/kitchen.Kitchen/Echo".parse().unwrap(),
                common::RawCodec,
            )
            .await
            .map(|r| r.into_inner().len())
        }));
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let mut refused = Vec::new();
    let mut answered = 0;
    for call in calls {
        match call.await.unwrap() {
            Ok(len) => {
                assert_eq!(len, item.len());
                answered += 1;
            }
            Err(status) => refused.push(status),
        }
    }
    assert!(answered >= 1, "{refused:?}");
    assert!(
        !refused.is_empty(),
        "all 8 delayed 1 MiB echoes were held at once"
    );
    for status in refused {
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert!(
            status.message().contains("--max-buffered-per-connection"),
            "{status:?}"
        );
    }
}

/// Rules were matched on the thread that drives the network: a big request against many
/// `regex` tests (400 of them over a 1 MiB field, seconds of CPU in a debug build) held up every call that
/// thread served, so a quick call on another method waited for the slow ones. A big request is
/// now matched off those threads, and the quick call is answered meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_over_a_big_request_do_not_hold_up_other_calls() {
    let rules: Vec<_> = (0..400)
        .map(|i| serde_json::json!({"when": {"request": {"name": {"regex": format!("z{i}q[0-9]+y")}}}, "reply": {"id": "matched"}}))
        .chain([serde_json::json!({"reply": {"id": "none"}})])
        .collect();
    let file = serde_json::json!({
        "service": "kitchen.Kitchen",
        "methods": {"Get": {"rules": rules}, "Lookup": {"reply": {"id": "quick"}}}
    });
    let (server, _handlers) = Server::kitchen_with(&file.to_string(), &[]);
    let protos = fixtures().join("protos");
    let client = Client::connect(server.addr, common::pool(&protos)).await;
    let mut big = BytesMut::new();
    put_field(&mut big, 3, &vec![b'n'; 1 << 20]);
    let big = big.freeze();

    let started = std::time::Instant::now();
    let mut slow = tokio::task::JoinSet::new();
    for _ in 0..3 {
        let (client, big) = (client.clone(), big.clone());
        slow.spawn(async move { client.raw_unary("/kitchen.Kitchen/Get", big).await });
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let mut worst = std::time::Duration::ZERO;
    for _ in 0..5 {
        let t = std::time::Instant::now();
        let quick = client
            .unary("kitchen.Kitchen/Lookup", serde_json::json!({}))
            .await;
        worst = worst.max(t.elapsed());
        assert_eq!(quick.unwrap()["id"], "quick");
    }
    let mut slow_done = 0;
    while let Some(r) = slow.join_next().await {
        r.unwrap().expect("the big request was answered");
        slow_done += 1;
    }
    let slow_took = started.elapsed();
    eprintln!("quick calls: worst {worst:?}; three big requests matched in {slow_took:?}");
    assert_eq!(slow_done, 3);
    // Each big request takes seconds to match; the quick calls must not wait for them.
    assert!(
        worst < slow_took / 6,
        "a quick call waited {worst:?} while big requests were matched (they took {slow_took:?})"
    );
}

/// Big requests to `rules` are matched one at a time. Those waiting for their turn each held
/// an OS thread, blocked in place: 120 waiting calls held 120 threads, and a flood of them
/// could use up tokio's blocking pool, which the network threads need to hand their work on
/// while a match runs. They wait as futures now, holding nothing but their request; a bidi
/// stream's big messages take the same path.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn big_requests_waiting_for_rules_hold_no_threads() {
    const WAITING: usize = 120;
    let rules: Vec<_> = (0..20)
        .map(|i| serde_json::json!({"when": {"request": {"name": {"regex": format!("z{i}q[0-9]+y")}}}, "reply": {"id": "matched"}}))
        .chain([serde_json::json!({"reply": {"id": "none"}})])
        .collect();
    let file = serde_json::json!({
        "service": "kitchen.Kitchen",
        "methods": {"Get": {"rules": rules}, "Chat": {"rules": rules}}
    });
    let (server, _handlers) = Server::kitchen_with(&file.to_string(), &[]);
    let protos = fixtures().join("protos");
    let client = Client::connect(server.addr, common::pool(&protos)).await;
    let mut big = BytesMut::new();
    put_field(&mut big, 3, &vec![b'n'; 96 << 10]);
    let big = big.freeze();

    // Warm up, so that the threads the server starts for its first calls are counted before.
    let reply = client.raw_unary("/kitchen.Kitchen/Get", big.clone()).await;
    assert!(reply.is_ok(), "{reply:?}");
    // `Threads:` of /proc/PID/status is a plain count, read like the memory figures.
    let threads = || common::proc_status_kib(server.pid(), "Threads");
    let before = threads();

    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..WAITING {
        let (client, big) = (client.clone(), big.clone());
        calls.spawn(async move { client.raw_unary("/kitchen.Kitchen/Get", big).await });
    }
    let mut most = before;
    let mut answered = 0;
    loop {
        tokio::select! {
            done = calls.join_next() => match done {
                Some(r) => {
                    let r = r.unwrap();
                    assert!(r.is_ok(), "a big request failed: {r:?}");
                    answered += 1;
                }
                None => break,
            },
            _ = tokio::time::sleep(std::time::Duration::from_millis(10)) => {
                most = most.max(threads());
            }
        }
    }
    eprintln!("server threads: {before} before, at most {most} with {WAITING} big requests");
    assert_eq!(answered, WAITING);
    assert!(
        most < before + 10,
        "{WAITING} big requests waiting for their turn took threads: {before} before, {most} during"
    );

    // A bidi stream's big messages are answered through the same turn, in order.
    let name = "n".repeat(96 << 10);
    let items = vec![
        serde_json::json!({"name": name}),
        serde_json::json!({"name": "z7q12y"}),
        serde_json::json!({"name": format!("z3q4y{name}")}),
    ];
    let (replies, status) = client.bidi("kitchen.Kitchen/Chat", items).await;
    assert!(status.is_none(), "{status:?}");
    let ids: Vec<_> = replies.iter().map(|r| r["id"].clone()).collect();
    assert_eq!(ids, ["none", "matched", "matched"]);
}

/// A unary script request of plain fields is read before the call runs and its values pushed
/// onto the Lua stack as the call starts; the request was kept with the call until it ended,
/// and with it tonic's whole read buffer (unknown fields and all), counted by no limit: 40
/// sleeping calls of 3.9 MB held ~220 MiB (4096 calls of 4 MiB, the defaults, ~20 GiB). The
/// request goes as soon as its values are on the stack.
#[tokio::test]
async fn a_running_script_call_does_not_keep_its_request_bytes() {
    let handlers = tempfile::tempdir().unwrap();
    std::fs::write(
        handlers.path().join("g.json"),
        r#"{"service": "helloworld.Greeter", "methods": {"SayHello": {"script": "g.lua"}}}"#,
    )
    .unwrap();
    std::fs::write(
        handlers.path().join("g.lua"),
        "function SayHello(req, ctx) ctx:sleep(15000) return { message = req.name } end",
    )
    .unwrap();
    let server = common::start_folders(
        &common::repo().join("protos"),
        handlers.path(),
        &["--script-time-ms", "60000"],
    );
    let channel = common::channel(server.addr).await;
    // name = "x", then an unknown field of 3.9 MB the script never sees.
    let mut request = BytesMut::new();
    put_field(&mut request, 1, b"x");
    put_field(&mut request, 15, &vec![b'u'; 3_900_000]);
    let request = request.freeze();
    let before = common::proc_status_kib(server.pid(), "VmRSS");
    let mut calls = Vec::new();
    for _ in 0..40 {
        let (channel, request) = (channel.clone(), request.clone());
        calls.push(tokio::spawn(async move {
            let mut grpc = tonic::client::Grpc::new(channel);
            grpc.ready().await.unwrap();
            grpc.unary(
                tonic::Request::new(request),
                "/helloworld.Greeter/SayHello".parse().unwrap(),
                common::RawCodec,
            )
            .await
        }));
        // One request at a time reaches the server, so only those held stay in memory.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(1000)).await;
    let during = common::proc_status_kib(server.pid(), "VmRSS");
    for call in &calls {
        assert!(!call.is_finished(), "a call ended before its sleep did");
    }
    // Held, the 40 requests take ~220 MiB; freed, what the allocator keeps of them ~80.
    let grown_mib = during.saturating_sub(before) / 1024;
    assert!(
        grown_mib < 150,
        "40 sleeping calls grew the server by {grown_mib} MiB: their request bytes are held"
    );
    for call in calls {
        call.abort();
    }
}
