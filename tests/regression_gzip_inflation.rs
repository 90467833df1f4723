//! Regressions of gzip-compressed requests inflated on the threads that drive the network.
//!
//! tonic inflated a compressed request message inside its decoder, on the thread that polls
//! the request stream: a few KB of gzip inflating to just under the 4 MiB message limit kept
//! every other call that thread served waiting, on every connection (tens of milliseconds in
//! a release build, far more in a debug one). The server now inflates such messages on the
//! blocking pool, so a quick call on another connection is answered meanwhile; and everything
//! a client sees of a compressed call is what it saw before: the answers, the statuses of gzip
//! that inflates too far or not at all, and the journal's record.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::gzip::{frame, gzip, noise};
use common::{fixtures, slowest_call_during, RawCodec, Server};
use serde_json::json;
use tokio_stream::StreamExt;
use tonic::codec::CompressionEncoding;
use tonic::{Code, Request, Status};

/// The slowest quick call allowed while compressed requests are inflated. Measured on a busy
/// two-core machine (debug build, load average about 4): 335-650 ms before, 20-46 ms now.
const BOUND: Duration = Duration::from_millis(200);

/// `msg` gzip-compressed and framed as such.
fn compressed(msg: &[u8]) -> Bytes {
    frame(1, &gzip(msg))
}

fn plain(msg: &[u8]) -> Bytes {
    frame(0, msg)
}

/// A protobuf varint.
fn varint(n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    prost::encoding::encode_varint(n as u64, &mut out);
    out
}

/// A kitchen `Item` with `id` (field 1) and `blob` (field 7); a `Query` reads the same bytes
/// as `id` and an unknown field.
fn item(id: &str, blob: &[u8]) -> Bytes {
    let mut out = vec![0x0a];
    out.extend(varint(id.len()));
    out.extend_from_slice(id.as_bytes());
    out.push(0x3a);
    out.extend(varint(blob.len()));
    out.extend_from_slice(blob);
    out.into()
}

/// The answer of a raw call: its status and its response messages' payloads.
#[derive(Debug, PartialEq)]
struct Answer {
    code: Code,
    message: String,
    responses: Vec<Bytes>,
}

/// Sends `chunks` (the request body, as DATA frames of these bytes) to `path` on a connection
/// of its own, with `grpc-encoding: encoding` when given; the answer.
async fn raw_call(
    addr: SocketAddr,
    path: &str,
    encoding: Option<&str>,
    chunks: Vec<Bytes>,
) -> Answer {
    let mut send = common::h2_connect(addr).await.ready().await.unwrap();
    let mut req = common::grpc_request(addr, path);
    if let Some(encoding) = encoding {
        req = req.header("grpc-encoding", encoding);
    }
    let (resp, mut body) = send.send_request(req.body(()).unwrap(), false).unwrap();
    let last = chunks.len().saturating_sub(1);
    for (i, chunk) in chunks.into_iter().enumerate() {
        body.reserve_capacity(chunk.len());
        body.send_data(chunk, i == last).unwrap();
    }
    if last == 0 {
        // No chunk at all: end the stream.
        let _ = body.send_data(Bytes::new(), true);
    }
    let resp = tokio::time::timeout(Duration::from_secs(60), resp)
        .await
        .expect("an answer")
        .unwrap();
    let (parts, mut stream) = resp.into_parts();
    if let Some(status) = Status::from_header_map(&parts.headers) {
        return Answer {
            code: status.code(),
            message: status.message().to_owned(),
            responses: Vec::new(),
        };
    }
    let mut data = Vec::new();
    while let Some(chunk) = stream.data().await {
        let chunk = chunk.unwrap();
        stream.flow_control().release_capacity(chunk.len()).unwrap();
        data.extend_from_slice(&chunk);
    }
    let trailers = stream.trailers().await.unwrap().expect("trailers");
    let status = Status::from_header_map(&trailers).expect("grpc-status");
    let mut responses = Vec::new();
    let mut rest = &data[..];
    while !rest.is_empty() {
        assert_eq!(
            rest[0], 0,
            "the server compresses only for clients that accept it"
        );
        let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        responses.push(Bytes::copy_from_slice(&rest[5..5 + len]));
        rest = &rest[5 + len..];
    }
    Answer {
        code: status.code(),
        message: status.message().to_owned(),
        responses,
    }
}

/// Connections to send big requests on, one per thread the server drives the network with
/// (one per core).
async fn connections(addr: SocketAddr) -> Vec<h2::client::SendRequest<Bytes>> {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get().max(2));
    let mut out = Vec::new();
    for _ in 0..threads {
        out.push(common::h2_connect(addr).await);
    }
    out
}

/// Sends the one-message `request` (framed) with `grpc-encoding: gzip` to `path` on `conn`;
/// the response body and the gRPC status.
async fn gzip_unary(
    conn: h2::client::SendRequest<Bytes>,
    addr: SocketAddr,
    path: &'static str,
    request: Bytes,
) -> (Bytes, String) {
    gzip_unary_within(conn, addr, path, request, None).await
}

/// [`gzip_unary`], with a `grpc-timeout` when given.
async fn gzip_unary_within(
    conn: h2::client::SendRequest<Bytes>,
    addr: SocketAddr,
    path: &'static str,
    request: Bytes,
    timeout: Option<&str>,
) -> (Bytes, String) {
    let mut send = conn.ready().await.unwrap();
    let mut req = common::grpc_request(addr, path).header("grpc-encoding", "gzip");
    if let Some(timeout) = timeout {
        req = req.header("grpc-timeout", timeout);
    }
    let req = req.body(()).unwrap();
    let (resp, mut body) = send.send_request(req, false).unwrap();
    body.send_data(request, true).unwrap();
    let (parts, mut stream) = resp.await.unwrap().into_parts();
    if let Some(s) = parts.headers.get("grpc-status") {
        return (Bytes::new(), s.to_str().unwrap().to_owned());
    }
    let mut data = Vec::new();
    while let Some(chunk) = stream.data().await {
        let chunk = chunk.unwrap();
        stream.flow_control().release_capacity(chunk.len()).unwrap();
        data.extend_from_slice(&chunk);
    }
    let trailers = stream.trailers().await.unwrap().unwrap();
    let status = trailers["grpc-status"].to_str().unwrap().to_owned();
    (data.into(), status)
}

/// HelloRequest with an unknown field of 3 999 990 bytes of a sentence over and over, framed
/// gzip-compressed: about 11 KB.
fn big_hello() -> Bytes {
    let mut hello = vec![0x12];
    hello.extend(varint(3_999_990));
    let sentence = b"the quick brown fox jumps over the lazy dog 0123456789 ";
    hello.extend(sentence.iter().cycle().take(3_999_990));
    compressed(&hello)
}

/// The shipped project: `SayHello` requests of a few KB of gzip, each inflating to just under
/// 4 MB (one unknown field of zeros, which the handler skips at no cost: the inflation is the
/// work), kept `SayHelloAgain` on another connection waiting while tonic inflated them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inflating_big_gzip_requests_does_not_hold_up_another_connection() {
    let server = Server::repo_default();
    let conns = connections(server.addr).await;
    let request = big_hello();
    assert!(request.len() < 16 * 1024, "{} bytes of gzip", request.len());
    let calls = 6 * conns.len();
    let started = Instant::now();
    let work = async {
        let mut set = tokio::task::JoinSet::new();
        for i in 0..calls {
            let conn = conns[i % conns.len()].clone();
            let request = request.clone();
            set.spawn(gzip_unary(
                conn,
                server.addr,
                "/helloworld.Greeter/SayHello",
                request,
            ));
        }
        let mut answers = Vec::new();
        while let Some(r) = set.join_next().await {
            answers.push(r.unwrap());
        }
        answers
    };
    let (answers, slowest) = slowest_call_during(
        server.addr,
        "/helloworld.Greeter/SayHelloAgain",
        Bytes::from_static(b"\x0a\x05probe"),
        work,
    )
    .await;
    eprintln!(
        "slowest SayHelloAgain: {slowest:?}; {calls} gzip SayHello inflating to 4 MB answered \
         in {:?}",
        started.elapsed()
    );
    assert_eq!(answers.len(), calls);
    for (body, status) in answers {
        assert_eq!(status, "0");
        assert_eq!(&body[..], &plain(b"\x0a\x08Hello, !")[..]);
    }
    assert!(
        slowest < BOUND,
        "SayHelloAgain waited {slowest:?} while gzip SayHello requests were inflated"
    );
}

/// A call of any shape made with a tonic client: its responses and final status.
async fn tonic_call(
    channel: tonic::transport::Channel,
    path: &'static str,
    requests: Vec<Bytes>,
    gzip: bool,
) -> (Vec<Bytes>, Code, String) {
    let mut grpc = tonic::client::Grpc::new(channel);
    if gzip {
        grpc = grpc.send_compressed(CompressionEncoding::Gzip);
    }
    grpc.ready().await.unwrap();
    let resp = grpc
        .streaming(
            Request::new(tokio_stream::iter(requests)),
            path.parse().unwrap(),
            RawCodec,
        )
        .await;
    let mut stream = match resp {
        Ok(r) => r.into_inner(),
        Err(s) => return (Vec::new(), s.code(), s.message().to_owned()),
    };
    let mut out = Vec::new();
    loop {
        match stream.next().await {
            Some(Ok(m)) => out.push(m),
            Some(Err(s)) => return (out, s.code(), s.message().to_owned()),
            None => return (out, Code::Ok, String::new()),
        }
    }
}

/// Requests of every size the server treats differently: inflated in place, inflated in
/// place and then on the blocking pool, and on the pool from the start.
fn assorted() -> Vec<Bytes> {
    vec![
        item("small", b"x"),
        item("spills", &b"abc".repeat(100_000)),
        item("noisy", &noise(20_000, 7)),
        item("", b""),
        item("last", &b"z".repeat(5_000)),
    ]
}

/// gzip calls of every shape, made by tonic's client, get the answers uncompressed calls get;
/// so do requests whose compressed and uncompressed messages alternate, however the bytes are
/// cut into DATA frames. The journal records the inflated messages and the `grpc-encoding`
/// the client sent.
#[tokio::test]
async fn gzip_calls_of_every_shape_answer_as_uncompressed_ones() {
    let server = Server::kitchen();
    let channel = common::channel(server.addr).await;
    let requests = assorted();
    for (path, requests) in [
        ("/kitchen.Kitchen/Echo", vec![requests[1].clone()]),
        ("/kitchen.Kitchen/Echo", vec![requests[0].clone()]),
        ("/kitchen.Kitchen/EchoServer", vec![requests[2].clone()]),
        ("/kitchen.Kitchen/EchoClient", requests.clone()),
        ("/kitchen.Kitchen/Collect", requests.clone()),
        ("/kitchen.Kitchen/EchoStream", requests.clone()),
        ("/kitchen.Kitchen/Chat", requests.clone()),
        // A second message to a unary method: refused the same way.
        ("/kitchen.Kitchen/Echo", requests[..2].to_vec()),
    ] {
        let expected = tonic_call(channel.clone(), path, requests.clone(), false).await;
        let got = tonic_call(channel.clone(), path, requests.clone(), true).await;
        assert_eq!(got, expected, "{path}, {} requests", requests.len());
        assert!(!expected.0.is_empty() || expected.1 != Code::Ok, "{path}");
    }

    // Alternating, in one DATA frame and cut every 3 bytes.
    let mixed: Vec<Bytes> = requests
        .iter()
        .enumerate()
        .map(|(i, r)| if i % 2 == 0 { compressed(r) } else { plain(r) })
        .collect();
    let all_plain: Vec<Bytes> = requests.iter().map(|r| plain(r)).collect();
    let expected = raw_call(
        server.addr,
        "/kitchen.Kitchen/EchoStream",
        None,
        vec![all_plain.concat().into()],
    )
    .await;
    assert_eq!(expected.code, Code::Ok, "{expected:?}");
    assert_eq!(expected.responses.len(), requests.len());
    let whole: Bytes = mixed.concat().into();
    // Cut at every size from 1 byte (within a message's prefix) to 4 KiB: few enough DATA
    // frames that HTTP/2 does not take them for a flood.
    let mut cut = Vec::new();
    let mut rest = whole.clone();
    for size in [1, 2, 3, 4, 5, 6, 7, 4096].iter().cycle() {
        if rest.is_empty() {
            break;
        }
        cut.push(rest.split_to((*size).min(rest.len())));
    }
    for chunks in [vec![whole.clone()], cut] {
        let got = raw_call(
            server.addr,
            "/kitchen.Kitchen/EchoStream",
            Some("gzip"),
            chunks,
        )
        .await;
        assert_eq!(got, expected);
    }

    // The journal: the inflated message, and the request's headers as sent.
    let got = tonic_call(
        channel.clone(),
        "/kitchen.Kitchen/Summary",
        vec![Bytes::from_static(b"\x0a\x09journaled")],
        true,
    )
    .await;
    assert_eq!(got.1, Code::Ok, "{got:?}");
    let page = server
        .admin_get("/v1/journal?method=kitchen.Kitchen/Summary")
        .await;
    let call = &page["calls"][0];
    assert_eq!(call["metadata"]["grpc-encoding"], "gzip", "{call:#}");
    let request = call["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["direction"] == "request")
        .unwrap_or_else(|| panic!("{call:#}"));
    assert_eq!(request["message"], json!({"id": "journaled"}), "{call:#}");
}

/// What a client sees of gzip that inflates past the limit, of a compressed length past it,
/// of gzip that does not inflate, of a request that ends inside a compressed message, and of
/// an encoding the server does not take: the statuses tonic's decoder answered before.
#[tokio::test]
async fn gzip_that_inflates_too_far_or_not_at_all_answers_as_before() {
    let server = common::start_folders(
        &fixtures().join("protos"),
        &fixtures().join("handlers"),
        &["--max-message-size", "8KiB"],
    );
    let echo = "/kitchen.Kitchen/EchoStream";
    let too_large = "Error decompressing: size limit, of 8192 bytes, exceeded while decompressing \
                     message; raise the server's limit with --max-message-size";
    let exactly = item("at the limit", &[b'a'; 8192 - 17]);
    assert_eq!(exactly.len(), 8192);
    let one_more = item("at the limit", &[b'a'; 8192 - 16]);
    // Compressed, more than a kilobyte: inflated on the blocking pool.
    let mut spilling = noise(2_000, 5);
    spilling.extend_from_slice(&[b'a'; 7_000]);
    let spilling = gzip(&item("over", &spilling));
    assert!(spilling.len() > 1024 && spilling.len() < 8192);
    let too_long = gzip(&item("x", &noise(9_000, 3)));
    let mut cut_short = gzip(&item("x", &noise(6_000, 3)));
    cut_short.truncate(5_000);
    let cases = [
        // Inflated in place.
        (
            "small gzip over the limit",
            vec![compressed(&one_more)],
            Code::ResourceExhausted,
            too_large.to_owned(),
        ),
        // On the blocking pool, after a first message that went well.
        (
            "gzip over the limit, inflated on the pool",
            vec![compressed(b""), frame(1, &spilling)],
            Code::ResourceExhausted,
            too_large.to_owned(),
        ),
        (
            "a compressed length over the limit",
            vec![frame(1, &too_long)],
            Code::ResourceExhausted,
            format!(
                "Error, decoded message length too large: found {} bytes, the limit is: 8192 \
                 bytes; raise the server's limit with --max-message-size",
                too_long.len()
            ),
        ),
        (
            "gzip cut short",
            vec![frame(1, &cut_short)],
            Code::Internal,
            "Error decompressing: incomplete deflate stream, while sending request".to_owned(),
        ),
        (
            "not gzip",
            vec![frame(1, b"this is not gzip at all")],
            Code::Internal,
            "Error decompressing: invalid gzip header, while sending request".to_owned(),
        ),
        (
            "a request that ends inside a compressed message",
            vec![compressed(&exactly).slice(..40)],
            Code::Internal,
            "Unexpected EOF decoding stream.".to_owned(),
        ),
    ];
    for (what, body, code, message) in cases {
        let got = raw_call(server.addr, echo, Some("gzip"), body).await;
        assert_eq!(
            (got.code, got.message.as_str()),
            (code, message.as_str()),
            "{what}: {got:?}"
        );
    }

    // At the limit exactly, inflated in place and (from noise) on the pool: answered.
    let mut half_noise = noise(4_000, 11);
    half_noise.resize(8192 - 6, b'a');
    let exact_noise = item("n", &half_noise);
    assert_eq!(exact_noise.len(), 8192);
    assert!(gzip(&exact_noise).len() > 1024);
    for msg in [exactly, exact_noise] {
        let got = raw_call(server.addr, echo, Some("gzip"), vec![compressed(&msg)]).await;
        assert_eq!(got.code, Code::Ok, "{got:?}");
        assert_eq!(got.responses, vec![msg]);
    }

    // An encoding the server does not take is refused before any message, as before.
    let got = raw_call(server.addr, echo, Some("br"), vec![compressed(b"")]).await;
    assert_eq!(got.code, Code::Unimplemented, "{got:?}");
    assert!(got.message.contains("`br`"), "{got:?}");

    // A request inflated past the limit costs its call only.
    let got = raw_call(
        server.addr,
        echo,
        Some("gzip"),
        vec![compressed(b"\x0a\x01k")],
    )
    .await;
    assert_eq!(
        (got.code, got.responses),
        (Code::Ok, vec![Bytes::from_static(b"\x0a\x01k")])
    );
}

/// gzip data may be a series of members (RFC 1952; Go's gzip.Reader and Java's
/// GZIPInputStream read them all): a message compressed as two members was refused, INVALID_ARGUMENT
/// "not a valid … truncated" (only the first was inflated), while one member followed by junk
/// was answered. Every member is inflated now, and bytes after the last that are no member are
/// refused as gzip that does not inflate (INTERNAL).
#[tokio::test]
async fn gzip_of_several_members_inflates_whole_and_junk_after_it_is_refused() {
    let server = common::start_folders(
        &fixtures().join("protos"),
        &fixtures().join("handlers"),
        &[],
    );
    let echo = "/kitchen.Kitchen/EchoStream";
    let msg = item("two members", &noise(3_000, 7));
    let (head, tail) = msg.split_at(20);
    for (what, members) in [
        ("two members", [gzip(head), gzip(tail)].concat()),
        (
            "three members, one empty",
            [gzip(head), gzip(b""), gzip(tail)].concat(),
        ),
    ] {
        let got = raw_call(server.addr, echo, Some("gzip"), vec![frame(1, &members)]).await;
        assert_eq!(got.code, Code::Ok, "{what}: {got:?}");
        assert_eq!(got.responses, vec![msg.clone()], "{what}");
    }
    let mut junk_after = gzip(&msg);
    junk_after.extend_from_slice(b"GARBAGE");
    let got = raw_call(server.addr, echo, Some("gzip"), vec![frame(1, &junk_after)]).await;
    assert_eq!(got.code, Code::Internal, "{got:?}");
    assert!(got.message.contains("Error decompressing"), "{got:?}");
}

/// Calls that go away while their big messages wait to be inflated, or are being inflated,
/// leave nothing behind: the next big gzip request is inflated and answered at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_that_go_away_while_inflating_leave_nothing_behind() {
    let server = Server::repo_default();
    let conn = common::h2_connect(server.addr).await;
    let request = big_hello();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..8 {
        set.spawn(gzip_unary_within(
            conn.clone(),
            server.addr,
            "/helloworld.Greeter/SayHello",
            request.clone(),
            Some("1m"),
        ));
    }
    while let Some(r) = set.join_next().await {
        assert_eq!(r.unwrap().1, "4", "DEADLINE_EXCEEDED");
    }
    let started = Instant::now();
    let (body, status) = tokio::time::timeout(
        Duration::from_secs(20),
        gzip_unary(conn, server.addr, "/helloworld.Greeter/SayHello", request),
    )
    .await
    .expect("the next big request is answered");
    assert_eq!(
        (status.as_str(), &body[..]),
        ("0", &plain(b"\x0a\x08Hello, !")[..])
    );
    eprintln!("the next big request answered in {:?}", started.elapsed());
}

/// The admin API's gRPC methods take gzip as before: a request inflating past its 1 MiB limit
/// gets tonic's words, which name no flag (no flag sets that limit).
#[tokio::test]
async fn admin_grpc_requests_inflate_as_before() {
    let server = Server::repo_default();
    let status = "/protoserve.admin.v1.Admin/Status";
    // StatusRequest with an unknown field (15) of a mebibyte of zeros.
    let mut big = vec![0x7a];
    big.extend(varint(1 << 20));
    big.resize(big.len() + (1 << 20), 0);
    let got = raw_call(
        server.admin_addr(),
        status,
        Some("gzip"),
        vec![compressed(&big)],
    )
    .await;
    assert_eq!(
        (got.code, got.message.as_str()),
        (
            Code::ResourceExhausted,
            "Error decompressing: size limit, of 1048576 bytes, exceeded while decompressing \
             message"
        ),
        "{got:?}"
    );
    let got = raw_call(
        server.admin_addr(),
        status,
        Some("gzip"),
        vec![compressed(b"")],
    )
    .await;
    assert_eq!(got.code, Code::Ok, "{got:?}");
    assert_eq!(got.responses.len(), 1);
}
