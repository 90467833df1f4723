//! Regressions of compressed request messages waiting for their turn on the blocking pool.
//!
//! A gzip message too big to inflate in place waits for the one turn that big requests and
//! big compressed messages take on the blocking pool. Two things went wrong while it waited:
//!
//! - The wait was driven by polling the request body. A script's request stream is kept by
//!   the script's state after its call ends, until Lua collects it, and nobody polls it then;
//!   so when the call was cancelled (or its deadline passed) while its message waited, the turn
//!   came to a waiter that never took it, and every later big request on the server waited
//!   forever.
//! - A whole compressed message waiting for the turn held its bytes in no budget: one
//!   connection could leave hundreds of 4 MiB messages waiting behind one slow inflation,
//!   far past `--max-buffered-per-connection`.
//!
//! - A call cancelled while its message was inflated kept the turn until the message was
//!   inflated whole when its gzip inflated to nothing.
//! - Small messages inflated in place were taken in one after the other without the stream
//!   ever yielding its thread.
//!
//! The tests use gzip that takes long to inflate for its size: empty fixed-Huffman deflate
//! blocks, ten bits each, which inflate to nothing. Turns go round the connections, and a
//! connection's calls wait for its own earlier ones, so the calls that must wait are sent on
//! the slow gzip's connection.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::gzip::{empty_blocks, frame, gzip, noise_hex};
use common::len_field;
use common::Server;

/// The slow gzip's size: some seconds of inflation in a debug build.
const HOG: usize = 512 * 1024;

/// `payload` framed as one compressed gRPC message.
fn compressed_frame(payload: &[u8]) -> Bytes {
    frame(1, payload)
}

/// A gzip call on the connection of `conn`, its request sent and ended; its answer, read in a
/// task of its own.
struct Pending {
    answer: tokio::task::JoinHandle<String>,
}

impl Pending {
    async fn send(
        conn: &h2::client::SendRequest<Bytes>,
        addr: SocketAddr,
        path: &str,
        request: Bytes,
    ) -> Pending {
        let (resp, _stream) = open_on(conn, addr, path, request, true).await;
        Pending {
            answer: tokio::spawn(async move { common::http2::status_of(resp).await }),
        }
    }

    fn answered(&self) -> bool {
        self.answer.is_finished()
    }

    async fn status(self, within: Duration) -> Option<String> {
        tokio::time::timeout(within, self.answer)
            .await
            .ok()
            .map(Result::unwrap)
    }
}

/// Opens a gzip call to `path` on a connection of its own and sends `request` (ending the
/// request stream when `end`).
async fn open(
    addr: SocketAddr,
    path: &str,
    request: Bytes,
    end: bool,
) -> (h2::client::ResponseFuture, h2::SendStream<Bytes>) {
    open_on(&common::h2_connect(addr).await, addr, path, request, end).await
}

/// Opens a gzip call to `path` on the connection of `conn` and sends `request` (ending the
/// request stream when `end`).
async fn open_on(
    conn: &h2::client::SendRequest<Bytes>,
    addr: SocketAddr,
    path: &str,
    request: Bytes,
    end: bool,
) -> (h2::client::ResponseFuture, h2::SendStream<Bytes>) {
    let mut send = conn.clone().ready().await.unwrap();
    let req = common::grpc_request(addr, path)
        .header("grpc-encoding", "gzip")
        .body(())
        .unwrap();
    let (resp, mut body) = send.send_request(req, false).unwrap();
    body.reserve_capacity(request.len());
    body.send_data(request, end).unwrap();
    (resp, body)
}

/// A client-streaming script call whose gzip message waits for the turn, cancelled by its
/// client: the big gzip request after it, on the same connection, is answered at once, not
/// held up for good by a turn nobody takes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_call_cancelled_while_its_gzip_message_waits_leaves_the_turn_to_others() {
    let server = Server::lab(&[]);
    let addr = server.addr;
    let conn = common::h2_connect(addr).await;
    let hog = Pending::send(
        &conn,
        addr,
        "/lab.Lab/Roundtrip",
        compressed_frame(&empty_blocks(HOG)),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A Query whose name (3) is 3 000 bytes of noise: its gzip is past the in-place bound.
    let query = len_field(3, &noise_hex(3000, 11));
    let (resp, mut sum) = open_on(
        &conn,
        addr,
        "/lab.Lab/Sum",
        compressed_frame(&gzip(&query)),
        false,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !hog.answered(),
        "the slow gzip must still hold the turn while the script's message waits"
    );
    sum.send_reset(h2::Reason::CANCEL);
    drop(resp);
    let hog = hog.status(Duration::from_secs(300)).await;
    assert_eq!(
        hog.as_deref(),
        Some("0: "),
        "the slow gzip inflates to nothing"
    );

    let item = [
        len_field(1, b"after"),
        len_field(7, &noise_hex(64 * 1024, 5)),
    ]
    .concat();
    let started = Instant::now();
    let after = Pending::send(
        &conn,
        addr,
        "/lab.Lab/Roundtrip",
        compressed_frame(&gzip(&item)),
    )
    .await
    .status(Duration::from_secs(30))
    .await;
    assert_eq!(
        after.as_deref(),
        Some("0: "),
        "a big gzip request after the cancelled script call waited {:?} for its turn",
        started.elapsed()
    );
}

/// Compressed messages waiting for the turn hold room in the connection's buffers: past
/// `--max-buffered-per-connection` a call is refused at once with RESOURCE_EXHAUSTED naming
/// the flag, where the messages were all kept waiting, whatever their number.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_messages_waiting_for_their_turn_count_against_the_connection() {
    let protos = common::fixtures().join("protos");
    let handlers = common::fixtures().join("handlers");
    let server = Server::start(&[
        "--protos",
        protos.to_str().unwrap(),
        "--handlers",
        handlers.to_str().unwrap(),
        "--max-buffered-per-connection",
        "8MiB",
    ]);
    let addr = server.addr;
    let mut conn = common::h2_connect(addr).await;
    let hog = Pending::send(
        &conn,
        addr,
        "/kitchen.Kitchen/Echo",
        compressed_frame(&empty_blocks(HOG)),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Six calls on the same connection, each with 3 MiB of compressed bytes (not gzip at all:
    // they fail once inflated, if they ever are), each sent whole before the next.
    let junk = compressed_frame(&noise_hex(3 << 20, 3));
    let mut answers = tokio::task::JoinSet::new();
    let mut streams = Vec::new();
    for _ in 0..6 {
        conn = conn.ready().await.unwrap();
        let req = common::grpc_request(addr, "/kitchen.Kitchen/Echo")
            .header("grpc-encoding", "gzip")
            .body(())
            .unwrap();
        let (resp, mut body) = conn.send_request(req, false).unwrap();
        body.reserve_capacity(junk.len());
        let _ = body.send_data(junk.clone(), true);
        streams.push(body);
        answers.spawn(common::http2::status_of(resp));
        // One after the other: a message still arriving holds room anyway.
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    // Refused ones answer at once; the rest wait for the slow gzip.
    let mut refused = Vec::new();
    while let Ok(Some(answer)) =
        tokio::time::timeout(Duration::from_secs(2), answers.join_next()).await
    {
        refused.push(answer.unwrap());
    }
    assert!(
        !hog.answered(),
        "the slow gzip must still hold the turn while the calls wait"
    );
    assert!(
        !refused.is_empty()
            && refused
                .iter()
                .all(|s| s.starts_with("8: ") && s.contains("--max-buffered-per-connection")),
        "answered while the turn was busy: {refused:?}"
    );
    assert!(
        refused.len() >= 3,
        "8 MiB holds two 3 MiB messages, not more: {refused:?}"
    );
    drop(streams);
}

/// A call cancelled while its gzip is being inflated gives up its turn at once, even when the
/// gzip inflates to nothing (empty blocks), where the inflation was stopped only between reads
/// of output and went on for the whole message (some 4 s in a release build, 100 s in a debug
/// one) while every big request on the server waited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_cancelled_while_its_gzip_inflates_to_nothing_gives_up_its_turn() {
    let server = Server::kitchen();
    let addr = server.addr;
    let slow = compressed_frame(&empty_blocks((4 << 20) - 64));
    let conn = common::h2_connect(addr).await;
    let (resp, mut body) = open_on(&conn, addr, "/kitchen.Kitchen/Echo", slow, true).await;
    // Inflating by now: a 4 MiB message reaches the server in milliseconds.
    tokio::time::sleep(Duration::from_millis(700)).await;
    body.send_reset(h2::Reason::CANCEL);
    drop(resp);
    tokio::time::sleep(Duration::from_millis(200)).await;

    // On the same connection, which would wait for the cancelled call's whole inflation.
    let item = [
        len_field(1, b"after"),
        len_field(7, &noise_hex(64 * 1024, 9)),
    ]
    .concat();
    let started = Instant::now();
    let after = Pending::send(
        &conn,
        addr,
        "/kitchen.Kitchen/Echo",
        compressed_frame(&gzip(&item)),
    )
    .await
    .status(Duration::from_secs(20))
    .await;
    assert_eq!(
        after.as_deref(),
        Some("0: "),
        "a big gzip request after the cancelled call waited {:?} for its turn",
        started.elapsed()
    );
}

/// Client streams of many small gzip messages, each inflated in place and each slow for its
/// size (1 KiB of empty deflate blocks), do not keep a quick call on another connection
/// waiting: a stream yields its thread every few messages, where it took in everything its
/// client had sent (about a second for a hundred messages on each of two connections).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_of_small_slow_gzip_messages_do_not_hold_up_another_connection() {
    const BOUND: Duration = Duration::from_millis(200);
    let server = Server::kitchen();
    let addr = server.addr;
    let one = compressed_frame(&empty_blocks(1024 - 40));
    assert!(
        one.len() - 5 <= 1024,
        "inflated in place: {} bytes",
        one.len()
    );
    let body: Bytes = one.repeat(100).into();
    let work = async {
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..2 {
            let body = body.clone();
            set.spawn(async move {
                let (resp, _stream) = open(addr, "/kitchen.Kitchen/EchoClient", body, true).await;
                common::http2::status_of(resp).await
            });
        }
        let mut out = Vec::new();
        while let Some(r) = set.join_next().await {
            out.push(r.unwrap());
        }
        out
    };
    let (answers, slowest) = common::slowest_call_during(
        addr,
        "/kitchen.Kitchen/Echo",
        Bytes::from_static(b"\x0a\x01x"),
        work,
    )
    .await;
    assert_eq!(answers, ["0: ", "0: "]);
    assert!(
        slowest < BOUND,
        "a quick Echo waited {slowest:?} while two streams of slow 1 KiB gzip messages were \
         inflated"
    );
}
