//! Regressions of the transport: floods, half-open connections, shutdown, limits. Every test
//! starts the real binary on a loopback port; load is bounded in count and time.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::http2::{frame, PREFACE};
use common::{repo, Client, Server};
use serde_json::json;
use tonic::Code;

/// A gRPC request header block in HPACK, every field a literal without indexing.
fn request_headers(path: &str) -> Vec<u8> {
    let mut block = Vec::new();
    for (name, value) in [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path),
        (":authority", "localhost"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ] {
        block.push(0);
        block.push(name.len() as u8);
        block.extend_from_slice(name.as_bytes());
        block.push(value.len() as u8);
        block.extend_from_slice(value.as_bytes());
    }
    block
}

const DATA: u8 = 0;
const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const GOAWAY: u8 = 7;
const END_HEADERS: u8 = 4;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// A client that ignores SETTINGS_MAX_CONCURRENT_STREAMS and opens 20 000 streams on one
/// connection without ever sending a body. The server refuses the streams over its limit at
/// once and drops the connection when the client keeps going; memory stays bounded and a call on
/// another connection is answered meanwhile.
#[tokio::test]
async fn stream_flood_is_bounded() {
    const STREAMS: u32 = 20_000;
    // Default limits: they must be sane on their own.
    let server = Server::repo_default();
    let pid = server.pid();
    let client = Client::connect(server.addr, common::pool(&repo().join("protos"))).await;
    client
        .unary("helloworld.Greeter/SayHello", json!({"name": "warm"}))
        .await
        .unwrap();
    let baseline = rss_kib(pid);

    let refused = Arc::new(AtomicUsize::new(0));
    let goaway = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicUsize::new(baseline as usize));
    let flooding = Arc::new(AtomicBool::new(true));

    let mut tcp = TcpStream::connect(server.addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut reader = tcp.try_clone().unwrap();
    let (r, g) = (refused.clone(), goaway.clone());
    let read_frames = std::thread::spawn(move || {
        let started = Instant::now();
        let mut header = [0u8; 9];
        let mut payload = Vec::new();
        while started.elapsed() < Duration::from_secs(30) {
            if reader.read_exact(&mut header).is_err() {
                return;
            }
            let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
            payload.resize(len, 0);
            if reader.read_exact(&mut payload).is_err() {
                return;
            }
            match header[3] {
                RST_STREAM => {
                    r.fetch_add(1, Ordering::Relaxed);
                }
                GOAWAY => g.store(true, Ordering::Relaxed),
                _ => {}
            }
        }
    });
    let (p, f) = (peak.clone(), flooding.clone());
    let sample_memory = std::thread::spawn(move || {
        while f.load(Ordering::Relaxed) {
            p.fetch_max(rss_kib(pid) as usize, Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(20));
        }
    });

    let write_flood = std::thread::spawn(move || {
        let started = Instant::now();
        let block = request_headers("/helloworld.Greeter/SayHello");
        if tcp.write_all(PREFACE).is_err() || tcp.write_all(&frame(SETTINGS, 0, 0, &[])).is_err() {
            return 0;
        }
        let mut sent = 0;
        let mut batch = Vec::new();
        for i in 0..STREAMS {
            batch.extend_from_slice(&frame(HEADERS, END_HEADERS, 2 * i + 1, &block));
            if batch.len() > 16 * 1024 {
                if tcp.write_all(&batch).is_err() {
                    return sent;
                }
                batch.clear();
            }
            sent = i + 1;
            if started.elapsed() > Duration::from_secs(30) {
                break;
            }
        }
        let _ = tcp.write_all(&batch);
        sent
    });

    // Meanwhile, a call on another connection is answered promptly.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let other = Client::connect(server.addr, common::pool(&repo().join("protos"))).await;
    let started = Instant::now();
    let reply = other
        .unary("helloworld.Greeter/SayHello", json!({"name": "other"}))
        .await
        .unwrap();
    assert_eq!(reply["message"], "Hello, other!");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "a call on another connection took {:?} during the flood",
        started.elapsed()
    );

    let sent = tokio::task::spawn_blocking(move || write_flood.join().unwrap())
        .await
        .unwrap();
    tokio::task::spawn_blocking(move || read_frames.join().unwrap())
        .await
        .unwrap();
    flooding.store(false, Ordering::Relaxed);
    sample_memory.join().unwrap();

    assert!(
        refused.load(Ordering::Relaxed) > 0 || goaway.load(Ordering::Relaxed),
        "{sent} streams opened past the limit and none was refused"
    );
    let grown_mib = (peak.load(Ordering::Relaxed) as u64).saturating_sub(baseline) / 1024;
    assert!(
        grown_mib < 64,
        "the flood of {sent} streams grew the server by {grown_mib} MiB"
    );
    let reply = other
        .unary("helloworld.Greeter/SayHello", json!({"name": "after"}))
        .await
        .unwrap();
    assert_eq!(reply["message"], "Hello, after!");
}

/// Opens `n` calls to SayHello on `conn` that send headers and never a body.
async fn open_silent_calls(
    conn: &mut h2::client::SendRequest<bytes::Bytes>,
    addr: std::net::SocketAddr,
    n: usize,
) -> Vec<(h2::client::ResponseFuture, h2::SendStream<bytes::Bytes>)> {
    let mut calls = Vec::new();
    for _ in 0..n {
        let req = http::Request::builder()
            .method("POST")
            .uri(format!("http://{addr}/helloworld.Greeter/SayHello"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .unwrap();
        let ready = conn.clone().ready().await.unwrap();
        *conn = ready;
        calls.push(conn.send_request(req, false).unwrap());
    }
    calls
}

/// Waits (up to 20 s) until `expected` of `calls` are answered, then gives a moment for any
/// unexpected extra answer: the answers (grpc-status, grpc-message), how many calls are still
/// waiting, and the request halves to keep those calls open.
async fn answered(
    calls: Vec<(h2::client::ResponseFuture, h2::SendStream<bytes::Bytes>)>,
    expected: usize,
) -> (
    Vec<(String, String)>,
    usize,
    Vec<h2::SendStream<bytes::Bytes>>,
) {
    use futures_util::StreamExt;
    let total = calls.len();
    let (responses, keep): (Vec<_>, Vec<_>) = calls.into_iter().unzip();
    let mut pending: futures_util::stream::FuturesUnordered<_> = responses.into_iter().collect();
    let mut done = Vec::new();
    let record = |done: &mut Vec<_>, resp: Result<http::Response<h2::RecvStream>, h2::Error>| {
        let resp = resp.expect("stream failed");
        let h = resp.headers();
        let get = |k: &str| {
            h.get(k)
                .map(|v| v.to_str().unwrap_or_default().to_owned())
                .unwrap_or_default()
        };
        assert!(resp.body().is_end_stream(), "a refusal is Trailers-Only");
        done.push((get("grpc-status"), get("grpc-message")));
    };
    let until = tokio::time::Instant::now() + Duration::from_secs(20);
    while done.len() < expected {
        match tokio::time::timeout_at(until, pending.next()).await {
            Ok(Some(resp)) => record(&mut done, resp),
            Ok(None) | Err(_) => break,
        }
    }
    // Anything answered past the expected count shows up here.
    while let Ok(Some(resp)) =
        tokio::time::timeout(Duration::from_millis(300), pending.next()).await
    {
        record(&mut done, resp);
    }
    let waiting = total - done.len();
    drop(pending);
    (done, waiting, keep)
}

/// Calls over `--max-calls-per-connection` or `--max-calls` are answered at once with
/// RESOURCE_EXHAUSTED naming the flag, not queued; the calls that got in are untouched. The
/// server-wide limit counts each connection's calls past its first 4.
#[tokio::test]
async fn calls_over_the_limits_are_refused_at_once() {
    let server = Server::start(&["--max-calls-per-connection", "8", "--max-calls", "12"]);
    let mut a = common::h2_connect(server.addr).await;
    let calls = open_silent_calls(&mut a, server.addr, 20).await;
    let (refusals, waiting, _keep_a) = answered(calls, 12).await;
    assert_eq!(waiting, 8, "8 calls get in and wait for their request");
    assert_eq!(refusals.len(), 12);
    for (status, message) in &refusals {
        assert_eq!(status, "8", "{message}");
        assert!(message.contains("--max-calls-per-connection"), "{message}");
    }

    // a counts 4 against the server (its first 4 are its own), b another 4, c the last 4.
    let mut b = common::h2_connect(server.addr).await;
    let calls = open_silent_calls(&mut b, server.addr, 8).await;
    let (refusals, waiting, _keep_b) = answered(calls, 0).await;
    assert_eq!((waiting, refusals.len()), (8, 0), "{refusals:?}");
    let mut c = common::h2_connect(server.addr).await;
    let calls = open_silent_calls(&mut c, server.addr, 8).await;
    let (refusals, waiting, _keep_c) = answered(calls, 0).await;
    assert_eq!((waiting, refusals.len()), (8, 0), "{refusals:?}");

    let mut d = common::h2_connect(server.addr).await;
    let calls = open_silent_calls(&mut d, server.addr, 8).await;
    let (refusals, waiting, _keep_d) = answered(calls, 4).await;
    assert_eq!(
        waiting, 4,
        "a full server still takes a connection's first 4 calls"
    );
    assert_eq!(refusals.len(), 4);
    for (status, message) in &refusals {
        assert_eq!(status, "8", "{message}");
        assert!(message.contains("--max-calls"), "{message}");
    }

    // Closing the first connection frees its calls' places.
    drop(_keep_a);
    drop(a);
    let client = Client::connect(server.addr, common::pool(&repo().join("protos"))).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match client
            .unary("helloworld.Greeter/SayHello", json!({"name": "x"}))
            .await
        {
            Ok(r) => {
                assert_eq!(r["message"], "Hello, x!");
                break;
            }
            Err(s) if s.code() == Code::ResourceExhausted && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(s) => panic!("{s:?}"),
        }
    }
}

/// A client that sends half the HTTP/2 preface and stops is disconnected after
/// `--handshake-timeout`.
#[test]
fn half_open_connection_is_closed_after_the_handshake_timeout() {
    let server = Server::start(&["--handshake-timeout", "1s"]);
    let mut tcp = TcpStream::connect(server.addr).unwrap();
    tcp.write_all(&PREFACE[..10]).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tcp.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {} // the server's SETTINGS
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the half-open connection was kept for {:?}",
        started.elapsed()
    );
}

/// A half-open connection does not keep SIGTERM from finishing: a connection that never
/// completed its handshake has no calls to wait for.
#[test]
fn half_open_connection_does_not_block_shutdown() {
    let mut server = Server::repo_default();
    let mut tcp = TcpStream::connect(server.addr).unwrap();
    tcp.write_all(&PREFACE[..10]).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    server.send_term();
    // Well before the default --shutdown-timeout (10 s) and handshake timeout (10 s).
    let status = server.wait_exit(Duration::from_secs(8));
    assert!(
        status.is_some_and(|s| s.success()),
        "the server did not exit after SIGTERM: {status:?}"
    );
}

type Chat = (
    tokio::sync::mpsc::Sender<protoserve::codec::Outgoing>,
    tonic::Streaming<prost_reflect::DynamicMessage>,
);

/// A bidi Chat call on the kitchen fixtures, open, after its first answer.
async fn open_chat(client: &Client) -> Chat {
    let m = client.method("kitchen.Kitchen/Chat");
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(protoserve::codec::Outgoing::Message(Client::message(
        &m.input(),
        json!({"id": "hi"}),
    )))
    .await
    .unwrap();
    let mut grpc = tonic::client::Grpc::new(client.channel.clone());
    grpc.ready().await.unwrap();
    let mut stream = grpc
        .streaming(
            tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx)),
            "/kitchen.Kitchen/Chat".parse().unwrap(),
            common::DynamicCodec::new(m.output()),
        )
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert_eq!(common::to_json(&first)["id"], "re:hi");
    (tx, stream)
}

/// A call still open when `--shutdown-timeout` passes ends with UNAVAILABLE (a status the
/// client sees, not a reset), and the process exits.
#[tokio::test]
async fn shutdown_deadline_ends_calls_with_unavailable() {
    let f = common::fixtures();
    let mut server = Server::start(&[
        "--protos",
        f.join("protos").to_str().unwrap(),
        "--handlers",
        f.join("handlers").to_str().unwrap(),
        "--shutdown-timeout",
        "1s",
    ]);
    let client = Client::connect(server.addr, common::pool(&f.join("protos"))).await;
    let (_tx, mut stream) = open_chat(&client).await;
    server.send_term();
    let ended = tokio::time::timeout(Duration::from_secs(20), stream.message())
        .await
        .expect("the open call was not ended");
    let status = ended.expect_err("the call ends with a status");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("shutting down"), "{status:?}");
    let exit = tokio::task::spawn_blocking(move || server.wait_exit(Duration::from_secs(20)))
        .await
        .unwrap();
    assert!(exit.is_some_and(|s| s.success()), "{exit:?}");
}

/// One client holding health `Watch` streams open over a few connections filled `--max-calls`
/// (4096 by default: 21 connections of 200), and every other client's calls were refused with
/// RESOURCE_EXHAUSTED for as long as they stayed; the idle-connection rule never applies to
/// connections with calls in flight. Each connection's first calls now take no place under the
/// server-wide limit, so another client's calls get in while the limit still holds the
/// flooding client.
#[tokio::test]
async fn watch_streams_of_one_client_do_not_shut_out_other_connections() {
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
    let server = Server::start(&["--max-calls-per-connection", "16", "--max-calls", "32"]);
    let mut watches = Vec::new();
    let mut refused = Vec::new();
    for _ in 0..4 {
        let channel = common::channel(server.addr).await;
        for _ in 0..16 {
            match HealthClient::new(channel.clone())
                .watch(HealthCheckRequest {
                    service: String::new(),
                })
                .await
            {
                Ok(stream) => watches.push(stream.into_inner()),
                Err(status) => refused.push(status),
            }
        }
    }
    let client = Client::connect(server.addr, common::pool(&repo().join("protos"))).await;
    for i in 0..4 {
        let reply = client
            .unary(
                "helloworld.Greeter/SayHello",
                json!({"name": i.to_string()}),
            )
            .await
            .unwrap_or_else(|s| panic!("another client's call {i} is refused: {s:?}"));
        assert_eq!(reply["message"], format!("Hello, {i}!"));
    }
    // The flood is still bounded: 16 + 16 + 12 + 4 in (32 counted, 4 of each connection's
    // own), the other 16 refused.
    assert_eq!(watches.len(), 48, "{refused:?}");
    assert_eq!(refused.len(), 16);
    for status in &refused {
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert!(status.message().contains("--max-calls"), "{status:?}");
    }
    for stream in &mut watches {
        assert!(stream.message().await.unwrap().is_some(), "a watch answers");
    }
}

/// While draining on SIGTERM, health reports NOT_SERVING for every service and the server; the
/// Watch streams then end, so they do not hold the shutdown for `--shutdown-timeout`.
#[tokio::test]
async fn health_not_serving_while_draining() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
    let mut server = Server::start(&["--shutdown-timeout", "30s"]);
    let channel = common::channel(server.addr).await;
    let mut watches = Vec::new();
    for service in ["", "helloworld.Greeter", "routeguide.RouteGuide"] {
        let mut stream = HealthClient::new(channel.clone())
            .watch(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        let first = stream.message().await.unwrap().unwrap();
        assert_eq!(first.status, ServingStatus::Serving as i32, "{service:?}");
        watches.push((service, stream));
    }
    server.send_term();
    for (service, stream) in &mut watches {
        let next = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("no update after SIGTERM")
            .unwrap()
            .unwrap();
        assert_eq!(next.status, ServingStatus::NotServing as i32, "{service:?}");
        let end = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("the watch did not end");
        assert!(matches!(end, Ok(None)), "{service:?}: {end:?}");
    }
    // Well before --shutdown-timeout: nothing else was in flight.
    let exit = tokio::task::spawn_blocking(move || server.wait_exit(Duration::from_secs(20)))
        .await
        .unwrap();
    assert!(exit.is_some_and(|s| s.success()), "{exit:?}");
}

/// The per-stream send buffer is bounded: a client that opens many server streams of large
/// messages and reads none of them does not grow the server's memory without bound (stream items
/// are rendered as the client takes them, and HTTP/2 queues at most 64 KiB per stream).
#[tokio::test]
async fn unread_streams_do_not_grow_memory() {
    let f = common::fixtures();
    let dir = tempfile::tempdir().unwrap();
    let items: Vec<_> = (0..200)
        .map(|i| json!({"id": "{{name}}", "count": i}))
        .collect();
    std::fs::write(
        dir.path().join("k.json"),
        json!({"service": "kitchen.Kitchen", "methods": { "List": { "stream": items } }})
            .to_string(),
    )
    .unwrap();
    let server = Server::start(&[
        "--protos",
        f.join("protos").to_str().unwrap(),
        "--handlers",
        dir.path().to_str().unwrap(),
    ]);
    let pid = server.pid();
    let baseline = rss_kib(pid);
    // Query { name: 60 000 × "x" }, framed: each of the 200 answers is 60 kB.
    let name_len: usize = 60_000;
    let mut msg = vec![0x1a, 0xe0, 0xd4, 0x03];
    msg.extend(std::iter::repeat_n(b'x', name_len));
    let mut framed = vec![0];
    framed.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    framed.extend_from_slice(&msg);
    let body = bytes::Bytes::from(framed);
    let mut conn = common::h2_connect(server.addr).await;
    let mut keep = Vec::new();
    for _ in 0..100 {
        let req = http::Request::builder()
            .method("POST")
            .uri(format!("http://{}/kitchen.Kitchen/List", server.addr))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .unwrap();
        conn = conn.ready().await.unwrap();
        let (resp, mut send) = conn.send_request(req, false).unwrap();
        send.reserve_capacity(body.len());
        send.send_data(body.clone(), true).unwrap();
        keep.push((resp, send));
    }
    // 100 streams × 200 messages × 60 kB = 1.2 GB if nothing held them back.
    let mut peak = baseline;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        peak = peak.max(rss_kib(pid));
    }
    let grown_mib = peak.saturating_sub(baseline) / 1024;
    assert!(
        grown_mib < 128,
        "unread streams grew the server by {grown_mib} MiB"
    );
    // Still serving.
    let client = Client::connect(server.addr, common::pool(&f.join("protos"))).await;
    let r = client
        .unary("kitchen.Kitchen/Nothing", json!({}))
        .await
        .unwrap_err();
    assert_eq!(r.code(), Code::Unimplemented, "{r:?}");
    drop(keep);
}

/// A second SIGTERM while draining exits at once, without waiting for `--shutdown-timeout`.
#[tokio::test]
async fn second_signal_exits_at_once() {
    let f = common::fixtures();
    let mut server = Server::start(&[
        "--protos",
        f.join("protos").to_str().unwrap(),
        "--handlers",
        f.join("handlers").to_str().unwrap(),
        "--shutdown-timeout",
        "120s",
    ]);
    let client = Client::connect(server.addr, common::pool(&f.join("protos"))).await;
    let (_tx, _stream) = open_chat(&client).await;
    server.send_term();
    // The first signal starts draining; the open call keeps the server up.
    let mut exited = None;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if server.log().iter().any(|l| l.contains("shutting down")) {
            exited = Some(server.is_running());
            break;
        }
    }
    assert_eq!(
        exited,
        Some(true),
        "draining did not start: {:?}",
        server.log()
    );
    server.send_term();
    let exit = tokio::task::spawn_blocking(move || server.wait_exit(Duration::from_secs(20)))
        .await
        .unwrap();
    assert!(exit.is_some(), "a second signal did not end the process");
}

/// A peer that completes the handshake and then goes silent (answers no ping) is dropped after
/// the keepalive timeout, instead of holding its connection forever.
#[test]
fn dead_peer_is_dropped_by_keepalive() {
    let server = Server::start(&[
        "--keepalive-interval",
        "200ms",
        "--keepalive-timeout",
        "500ms",
    ]);
    let mut tcp = TcpStream::connect(server.addr).unwrap();
    tcp.write_all(PREFACE).unwrap();
    tcp.write_all(&frame(SETTINGS, 0, 0, &[])).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tcp.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {} // SETTINGS, PINGs, GOAWAY
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the silent peer was kept for {:?}",
        started.elapsed()
    );
}

/// Connections past `--max-connections` while every connection has a call in flight are closed
/// at once; the ones served keep working. (With an idle one among them, the one idle the
/// longest is closed instead: see `regression_idle_connections.rs`.)
#[tokio::test]
async fn connections_over_the_limit_are_closed() {
    let server = Server::start(&["--max-connections", "2"]);
    // A call in flight on each connection served (a SayHello whose request has not ended).
    let held = [
        common::call_in_flight(server.addr).await,
        common::call_in_flight(server.addr).await,
    ];
    tokio::time::sleep(Duration::from_millis(300)).await;
    let addr = server.addr;
    let closed_after = tokio::task::spawn_blocking(move || {
        let mut tcp = TcpStream::connect(addr).unwrap();
        let _ = tcp.write_all(PREFACE);
        let _ = tcp.write_all(&frame(SETTINGS, 0, 0, &[]));
        tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let started = Instant::now();
        let mut buf = [0u8; 256];
        loop {
            match tcp.read(&mut buf) {
                Ok(0) | Err(_) => return started.elapsed(),
                Ok(_) => {}
            }
        }
    })
    .await
    .unwrap();
    assert!(
        closed_after < Duration::from_secs(20),
        "the third connection was served for {closed_after:?}"
    );
    for (_conn, mut body, resp) in held {
        // HelloRequest { name: "t" }
        body.send_data(
            bytes::Bytes::from_static(&[0, 0, 0, 0, 3, 0x0a, 1, b't']),
            true,
        )
        .unwrap();
        assert_eq!(common::http2::status_of(resp).await, "0: ");
    }
}

/// HTTP/2 (h2) closes a connection that holds more than about 2 000 small DATA frames its calls
/// have not read (GOAWAY `ENHANCE_YOUR_CALM`), and hyper offers no setting for that limit. A
/// client streaming small messages faster than its handler reads them meets it, and saw every
/// call fail with UNAVAILABLE while the server logged nothing above debug level. The server
/// now says in its log which connection was closed and why.
#[test]
fn a_connection_closed_for_unread_small_frames_is_logged() {
    let server = Server::lab(&[]);
    let mut tcp = TcpStream::connect(server.addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut out = PREFACE.to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    out.extend(frame(
        HEADERS,
        END_HEADERS,
        1,
        &request_headers("/lab.Lab/Mirror"),
    ));
    // The first query asks for 100 000 replies, which this client never reads: the script
    // waits in ctx:send from then on, and reads no more requests.
    let first = [0x0a, 0x01, b'x', 0x10, 0xa0, 0x8d, 0x06];
    let mut message = vec![0, 0, 0, 0, first.len() as u8];
    message.extend_from_slice(&first);
    out.extend(frame(DATA, 0, 1, &message));
    // Then 5 000 empty queries, a frame each.
    for _ in 0..5_000 {
        out.extend(frame(DATA, 0, 1, &[0, 0, 0, 0, 0]));
    }
    tcp.write_all(&out).unwrap();
    let mut reason = None;
    let mut header = [0u8; 9];
    let mut payload = Vec::new();
    while tcp.read_exact(&mut header).is_ok() {
        let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
        payload.resize(len, 0);
        if tcp.read_exact(&mut payload).is_err() {
            break;
        }
        if header[3] == GOAWAY && payload.len() >= 8 {
            reason = Some(u32::from_be_bytes(payload[4..8].try_into().unwrap()));
            break;
        }
    }
    assert_eq!(reason, Some(11), "GOAWAY ENHANCE_YOUR_CALM expected");
    let started = Instant::now();
    let logged = loop {
        let log = server.log();
        if let Some(line) = log.iter().find(|l| l.contains("ENHANCE_YOUR_CALM")) {
            break line.clone();
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no log line names the closed connection: {log:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(logged.contains("WARN"), "{logged}");
    assert!(
        logged.contains(&tcp.local_addr().unwrap().to_string()),
        "{logged}"
    );
    assert!(logged.contains("small DATA frames"), "{logged}");
}
