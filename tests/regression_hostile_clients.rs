//! Regressions of clients that play HTTP/2 against the server: a connection that asks for large
//! answers and never takes them, or starts large requests and never finishes them, must not
//! make the server hold memory in proportion to its streams, and must not delay other calls.
//! Every test starts the real binary on a loopback port with default limits; attacks are
//! bounded in streams, bytes and time.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{fixtures, Client, Server};
use serde_json::json;

fn hostile_server() -> Server {
    let f = fixtures();
    Server::start(&[
        "--protos",
        f.join("protos").to_str().unwrap(),
        "--handlers",
        f.join("hostile/handlers").to_str().unwrap(),
    ])
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The highest RSS seen over `span`, sampled every 50 ms.
async fn peak_rss(pid: u32, span: Duration) -> u64 {
    let until = Instant::now() + span;
    let mut peak = rss_kib(pid);
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
        peak = peak.max(rss_kib(pid));
    }
    peak
}

/// A raw HTTP/2 client whose windows (per stream) start at `window`.
async fn h2_client(addr: SocketAddr, window: u32) -> h2::client::SendRequest<Bytes> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (send, conn) = h2::client::Builder::new()
        .initial_window_size(window)
        .handshake(tcp)
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

/// A call to `method` of `kitchen.Kitchen`, or to the path `method` when it starts with `/`.
fn grpc_request(addr: SocketAddr, method: &str) -> http::Request<()> {
    let path = if method.starts_with('/') {
        method.to_owned()
    } else {
        format!("/kitchen.Kitchen/{method}")
    };
    http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap()
}

/// A message whose only field is varint field 2 (`Query.limit`, `Item.count`) = `n`, framed.
fn framed_field2(n: u64) -> Bytes {
    let mut msg = vec![0x10];
    let mut v = n;
    while v >= 0x80 {
        msg.push((v as u8) | 0x80);
        v >>= 7;
    }
    msg.push(v as u8);
    let mut out = vec![0];
    out.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    out.extend_from_slice(&msg);
    out.into()
}

type Calls = Vec<(h2::client::ResponseFuture, h2::SendStream<Bytes>)>;

/// Opens `n` calls to `method` on `conn`, each sending `body` (and ending its request).
async fn open_calls(
    conn: &mut h2::client::SendRequest<Bytes>,
    addr: SocketAddr,
    method: &str,
    n: usize,
    body: Bytes,
) -> Calls {
    let mut calls = Vec::new();
    for _ in 0..n {
        let ready = conn.clone().ready().await.unwrap();
        *conn = ready;
        let (resp, mut send) = conn
            .send_request(grpc_request(addr, method), false)
            .unwrap();
        send.reserve_capacity(body.len());
        send.send_data(body.clone(), true).unwrap();
        calls.push((resp, send));
    }
    calls
}

/// The gRPC statuses (code, message) of the calls that end, reading no response data: waits
/// until `expected` of them ended or `within` passed; calls still open are then reset.
async fn ended_statuses(calls: Calls, expected: usize, within: Duration) -> Vec<(String, String)> {
    let header = |h: &http::HeaderMap, k: &str| {
        h.get(k)
            .map(|v| v.to_str().unwrap_or_default().to_owned())
            .unwrap_or_default()
    };
    let mut waiting = tokio::task::JoinSet::new();
    for (resp, send) in calls {
        waiting.spawn(async move {
            let _keep_open = send;
            let resp = resp.await.ok()?;
            if resp.headers().contains_key("grpc-status") {
                return Some((
                    header(resp.headers(), "grpc-status"),
                    header(resp.headers(), "grpc-message"),
                ));
            }
            let trailers = resp.into_body().trailers().await.ok()??;
            Some((
                header(&trailers, "grpc-status"),
                header(&trailers, "grpc-message"),
            ))
        });
    }
    let until = tokio::time::Instant::now() + within;
    let mut out = Vec::new();
    while out.len() < expected {
        match tokio::time::timeout_at(until, waiting.join_next()).await {
            Ok(Some(Ok(Some(status)))) => out.push(status),
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    out
}

/// How many of `statuses` are RESOURCE_EXHAUSTED naming the connection's buffer limit.
fn refused(statuses: &[(String, String)]) -> usize {
    statuses
        .iter()
        .filter(|(code, msg)| code == "8" && msg.contains("--max-buffered-per-connection"))
        .count()
}

/// A call on another connection is answered within a generous bound while the attack runs.
async fn answered_meanwhile(addr: SocketAddr) {
    let client = Client::connect(addr, common::pool(&fixtures().join("protos"))).await;
    let started = Instant::now();
    let reply = tokio::time::timeout(
        Duration::from_secs(5),
        client.unary("kitchen.Kitchen/Nothing", json!({})),
    )
    .await
    .expect("a call on another connection was not answered within 5 s");
    reply.unwrap_or_else(|s| panic!("a call on another connection failed: {s:?}"));
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// The server's growth over `baseline` (peak over `span`) while an attack goes on.
async fn grown_mib(server: &Server, baseline: u64, span: Duration) -> u64 {
    peak_rss(server.pid(), span).await.saturating_sub(baseline) / 1024
}

async fn warm(server: &Server) -> u64 {
    answered_meanwhile(server.addr).await;
    rss_kib(server.pid())
}

/// A client that advertises a zero flow-control window and asks 256 times for a 3 MB reply
/// (a few bytes each) made one connection hold every reply, three quarters of a gigabyte, for
/// as long as it stayed open. The connection may hold `--max-buffered-per-connection` (64 MiB); the calls past
/// it end at once with RESOURCE_EXHAUSTED naming the flag.
#[tokio::test]
async fn zero_window_replies_are_bounded_per_connection() {
    let server = hostile_server();
    let baseline = warm(&server).await;
    let mut conn = h2_client(server.addr, 0).await;
    let calls = open_calls(&mut conn, server.addr, "Get", 256, framed_field2(3_000_000)).await;
    answered_meanwhile(server.addr).await;
    // Long enough for the scripts to build every reply.
    let grown = grown_mib(&server, baseline, Duration::from_secs(6)).await;
    let statuses = ended_statuses(calls, 192, Duration::from_secs(60)).await;
    eprintln!("grew {grown} MiB; {} calls ended", statuses.len());
    assert!(
        grown < 200,
        "256 unsent 3 MB replies grew the server by {grown} MiB"
    );
    assert!(
        refused(&statuses) >= 192,
        "expected most calls to end with RESOURCE_EXHAUSTED; {} ended, first: {:?}",
        statuses.len(),
        statuses.first()
    );
    answered_meanwhile(server.addr).await;
}

/// A client that opens 256 server streams of 128 kB messages and takes none of them: each
/// stream filled a 2 MiB outbox and the transport's buffers, over half a gigabyte for one
/// connection. Now a stream holds a couple of messages in transit and a 64 KiB outbox, counted
/// in the connection's buffers (a stream past them ends with RESOURCE_EXHAUSTED, queued behind
/// the messages its client does not read, and its script stops).
#[tokio::test]
async fn unread_server_streams_are_bounded_per_connection() {
    let server = hostile_server();
    let baseline = warm(&server).await;
    // Default windows (64 KiB per stream), never released: nothing beyond them is taken.
    let mut conn = h2_client(server.addr, 65_535).await;
    let _calls = open_calls(
        &mut conn,
        server.addr,
        "EchoServer",
        256,
        framed_field2(128_000),
    )
    .await;
    answered_meanwhile(server.addr).await;
    let grown = grown_mib(&server, baseline, Duration::from_secs(4)).await;
    eprintln!("grew {grown} MiB");
    assert!(
        grown < 200,
        "256 unread server streams grew the server by {grown} MiB"
    );
    answered_meanwhile(server.addr).await;
}

/// A client that starts 256 requests of 2 MB and stops one byte short of the end of each:
/// the server kept every partial message, half a gigabyte for one connection, for as long as
/// it stayed open. Requests past the connection's buffers end with RESOURCE_EXHAUSTED.
#[tokio::test]
async fn unfinished_requests_are_bounded_per_connection() {
    const SIZE: usize = 2_000_000;
    let server = hostile_server();
    let baseline = warm(&server).await;
    let mut conn = h2_client(server.addr, 65_535).await;
    // An Item whose blob (field 7) is SIZE bytes, framed; every stream sends all but its last
    // byte and leaves the request open.
    let mut msg = vec![0x3a];
    let mut v = SIZE;
    while v >= 0x80 {
        msg.push((v as u8) | 0x80);
        v >>= 7;
    }
    msg.push(v as u8);
    msg.resize(msg.len() + SIZE, b'z');
    let mut framed = vec![0];
    framed.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    framed.extend_from_slice(&msg);
    let framed = Bytes::from(framed);
    let partial = framed.slice(..framed.len() - 1);
    let mut calls = Vec::new();
    for _ in 0..256 {
        conn = conn.ready().await.unwrap();
        let (resp, mut send) = conn
            .send_request(grpc_request(server.addr, "Echo"), false)
            .unwrap();
        send.reserve_capacity(partial.len());
        send.send_data(partial.clone(), false).unwrap();
        calls.push((resp, send));
    }
    answered_meanwhile(server.addr).await;
    let grown = grown_mib(&server, baseline, Duration::from_secs(3)).await;
    let statuses = ended_statuses(calls, 192, Duration::from_secs(60)).await;
    eprintln!("grew {grown} MiB; {} calls ended", statuses.len());
    assert!(
        grown < 200,
        "256 unfinished 2 MB requests grew the server by {grown} MiB"
    );
    assert!(
        refused(&statuses) >= 192,
        "expected most requests to end with RESOURCE_EXHAUSTED; {} ended, first: {:?}",
        statuses.len(),
        statuses.first()
    );
    answered_meanwhile(server.addr).await;
}

/// A client whose flow-control window stays at zero kept its calls open past their deadline:
/// the deadline ends a call from inside its response body, which hyper does not poll while the
/// window has no room, so the calls held their slots and stayed "in progress" in the journal
/// for as long as the client kept the connection. Each stream's task now watches the deadline
/// from outside the body and resets the stream a grace period after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_a_client_never_reads_end_at_their_deadline() {
    let server = hostile_server();
    let addr = server.addr;
    let mut conn = h2_client(addr, 0).await;
    let mut calls = Vec::new();
    let attacks = std::iter::repeat_n(("EchoServer", 1000), 20).chain([("Get", 100_000)]);
    for (method, n) in attacks {
        let body = framed_field2(n);
        let ready = conn.clone().ready().await.unwrap();
        conn = ready;
        let mut req = grpc_request(addr, method);
        req.headers_mut()
            .insert("grpc-timeout", http::HeaderValue::from_static("1S"));
        let (resp, mut send) = conn.send_request(req, false).unwrap();
        send.reserve_capacity(body.len());
        send.send_data(body, true).unwrap();
        calls.push((method, resp, send));
    }
    let started = Instant::now();
    let mut waiting = tokio::task::JoinSet::new();
    for (method, resp, send) in calls {
        waiting.spawn(async move {
            let _keep_open = send;
            // Headers need no window; the answer's data does, and never gets any.
            if let Ok(resp) = resp.await {
                let mut body = resp.into_body();
                while let Some(Ok(_)) = body.data().await {}
            }
            method
        });
    }
    let mut ended = 0;
    while ended < 21 {
        match tokio::time::timeout(Duration::from_secs(20), waiting.join_next()).await {
            Ok(Some(Ok(_))) => ended += 1,
            Ok(Some(Err(e))) => panic!("{e}"),
            Ok(None) => break,
            Err(_) => panic!(
                "only {ended} of 21 calls ended in 20 s: the others outlived their 1 s deadline"
            ),
        }
    }
    eprintln!("21 calls ended {:?} after they started", started.elapsed());
    // None of them is left in progress, and other calls are served.
    let page = server
        .admin_get("/v1/journal?status=in_progress&view=summary")
        .await;
    assert_eq!(page["calls"].as_array().map(Vec::len), Some(0), "{page:#}");
    answered_meanwhile(addr).await;
}

/// A proto file whose descriptor is about 2 MB: 1 500 messages of 12 fields with long names.
fn big_proto() -> String {
    let mut text = String::from("syntax = \"proto3\";\npackage big;\n");
    for m in 0..1500 {
        text.push_str(&format!("message Message{m} {{\n"));
        for f in 1..=12 {
            text.push_str(&format!(
                "  string a_field_with_a_rather_long_name_{f}_in_message_{m} = {f};\n"
            ));
        }
        text.push_str("}\n");
    }
    text
}

/// A client that asks a reflection stream for a big file a few times and reads nothing made the
/// server hold four more answers per stream than the transport took, outside the connection's
/// buffers: 64 such streams of a 2 MB file held about 300 MB, and with more connections five
/// times `--max-buffered`. A stream now answers a request only when the transport takes the
/// answer, so what it holds is counted, and streams past the buffers end with
/// RESOURCE_EXHAUSTED.
#[tokio::test]
async fn unread_reflection_answers_are_bounded_per_connection() {
    use prost::Message as _;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::ServerReflectionRequest;

    let big = tempfile::tempdir().unwrap();
    std::fs::write(big.path().join("big.proto"), big_proto()).unwrap();
    let f = fixtures();
    let server = Server::start(&[
        "--protos",
        f.join("protos").to_str().unwrap(),
        "--protos",
        big.path().to_str().unwrap(),
        "--handlers",
        f.join("hostile/handlers").to_str().unwrap(),
        "--no-cache",
    ]);
    let baseline = warm(&server).await;
    // Four requests for big.proto, framed one after the other in one request body.
    let ask = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::FileByFilename("big.proto".into())),
    }
    .encode_to_vec();
    let mut body = Vec::new();
    for _ in 0..4 {
        body.push(0);
        body.extend_from_slice(&(ask.len() as u32).to_be_bytes());
        body.extend_from_slice(&ask);
    }
    let mut conn = h2_client(server.addr, 65_535).await;
    let calls = open_calls(
        &mut conn,
        server.addr,
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        64,
        body.into(),
    )
    .await;
    answered_meanwhile(server.addr).await;
    let grown = grown_mib(&server, baseline, Duration::from_secs(4)).await;
    let statuses = ended_statuses(calls, 16, Duration::from_secs(20)).await;
    eprintln!("grew {grown} MiB; {} streams ended", statuses.len());
    assert!(
        grown < 160,
        "64 unread reflection streams of a 2 MB file grew the server by {grown} MiB"
    );
    assert!(
        refused(&statuses) >= 16,
        "expected the streams past the connection's buffers to end with RESOURCE_EXHAUSTED; \
         {} ended, first: {:?}",
        statuses.len(),
        statuses.first()
    );
    answered_meanwhile(server.addr).await;
}
