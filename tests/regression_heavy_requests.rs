//! Regressions of big requests to declarative handlers holding up other calls.
//!
//! Only `rules` answered a big request off the threads that drive the network; every other
//! declarative kind checked, decoded and rendered it on them. 4 MB of empty unknown fields to
//! the shipped greeter's `SayHello` kept `SayHelloAgain`, on another connection, waiting for
//! about a second (debug build); an echo or a constant reply of 4 MB of empty list items, for
//! seconds. Every declarative kind now answers a big request off those threads, and renders a
//! stream's items from it there, so the other connection's calls are answered meanwhile.
//!
//! Each test calls a quick method on a connection of its own every few milliseconds while big
//! requests are answered on another, and bounds the slowest quick call. The bound has a wide
//! margin both ways on a busy two-core machine (a load average of 9, debug build): the slowest
//! quick call took 6-7 s before, and 70-250 ms now, most of it waiting for a core.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{fixtures, slowest_call_during, Client, RawCodec, Server};
use tokio_stream::StreamExt;
use tonic::Request;

/// The slowest quick call allowed while big requests are answered.
const BOUND: Duration = Duration::from_millis(500);

/// The tests here measure how long calls wait, so they take turns: one test's big requests
/// would count against another's quick calls.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `item` repeated to just under 4 MB, the default `--max-message-size` being 4 MiB.
fn big(item: &[u8]) -> Bytes {
    item.repeat(4_000_000 / item.len()).into()
}

/// Connections to send big requests on, one per thread the server drives the network with
/// (one per core): before, a big request held one thread, and a quick call waited only when
/// every thread was held.
async fn connections(addr: SocketAddr, protos: &std::path::Path) -> Vec<Client> {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get().max(2));
    let mut clients = Vec::new();
    for _ in 0..threads {
        clients.push(Client::connect(addr, common::pool(protos)).await);
    }
    clients
}

/// `request` to `path` `calls` times, spread over `clients`' connections, all at once; the
/// answers.
async fn at_once(
    clients: &[Client],
    path: &'static str,
    request: &Bytes,
    calls: usize,
) -> Vec<Bytes> {
    let mut set = tokio::task::JoinSet::new();
    for i in 0..calls {
        let (client, request) = (clients[i % clients.len()].clone(), request.clone());
        set.spawn(async move { client.raw_unary(path, request).await });
    }
    let mut answers = Vec::new();
    while let Some(r) = set.join_next().await {
        answers.push(r.unwrap().expect("the big request is answered"));
    }
    answers
}

/// The shipped project: `SayHello` with 4 MB of empty unknown fields (`12 00`, field 2 of a
/// message with only field 1) held up `SayHelloAgain` on another connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_greetings_do_not_hold_up_another_connection() {
    let _turn = TURN.lock().await;
    let server = Server::repo_default();
    let clients = connections(server.addr, &common::repo().join("protos")).await;
    let calls = 2 * clients.len();
    let request = big(b"\x12\x00");
    let started = Instant::now();
    let (answers, slowest) = slowest_call_during(
        server.addr,
        "/helloworld.Greeter/SayHelloAgain",
        Bytes::from_static(b"\x0a\x05probe"),
        at_once(&clients, "/helloworld.Greeter/SayHello", &request, calls),
    )
    .await;
    eprintln!(
        "slowest SayHelloAgain: {slowest:?}; {calls} 4 MB SayHello answered in {:?}",
        started.elapsed()
    );
    assert_eq!(answers.len(), calls);
    for answer in answers {
        assert_eq!(answer, Bytes::from_static(b"\x0a\x08Hello, !"));
    }
    assert!(
        slowest < BOUND,
        "SayHelloAgain waited {slowest:?} while big SayHello requests were answered"
    );
}

/// A bidi call whose requests are `raw` bytes; its responses' bytes.
async fn raw_bidi(client: &Client, path: &'static str, raw: Vec<Bytes>) -> Vec<Bytes> {
    let mut grpc = tonic::client::Grpc::new(client.channel.clone());
    grpc.ready().await.unwrap();
    let responses = grpc
        .streaming(
            Request::new(tokio_stream::iter(raw)),
            path.parse().unwrap(),
            RawCodec,
        )
        .await
        .expect("the bidi call starts")
        .into_inner();
    responses
        .collect::<Result<Vec<_>, _>>()
        .await
        .expect("the bidi call ends well")
}

/// A server-streaming call of one `raw` request; its responses' bytes.
async fn raw_server_stream(client: &Client, path: &'static str, raw: Bytes) -> Vec<Bytes> {
    let mut grpc = tonic::client::Grpc::new(client.channel.clone());
    grpc.ready().await.unwrap();
    let responses = grpc
        .server_streaming(Request::new(raw), path.parse().unwrap(), RawCodec)
        .await
        .expect("the stream starts")
        .into_inner();
    responses
        .collect::<Result<Vec<_>, _>>()
        .await
        .expect("the stream ends well")
}

/// An echo and a constant reply of 4 MB of empty list items, a bidi echo of such messages, and
/// a stream whose item copies a list of 100 000 items from the request: each held up a quick
/// call on another connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_requests_to_every_declarative_kind_do_not_hold_up_another_connection() {
    let _turn = TURN.lock().await;
    let file = serde_json::json!({
        "service": "kitchen.Kitchen",
        "methods": {
            "Echo": {"echo": {}},
            "EchoStream": {"echo": {}},
            "Get": {"reply": {"id": "const"}},
            "List": {"stream": [{"tags": "{{tags}}"}, {"id": "second"}]},
            "Nothing": {"reply": {}}
        }
    });
    let (server, _handlers) = Server::kitchen_with(&file.to_string(), &[]);
    let clients = connections(server.addr, &fixtures().join("protos")).await;
    let (one, other) = (&clients[0], &clients[1]);
    // Item.inners (14) and Query.tags (6), empty items.
    let inners = big(b"\x72\x00");
    let tags = big(b"\x32\x00");
    let few_tags = Bytes::from(b"\x32\x00".repeat(100_000));
    let started = Instant::now();
    let ((echoes, consts, chat, list), slowest) = slowest_call_during(
        server.addr,
        "/kitchen.Kitchen/Nothing",
        Bytes::new(),
        async {
            // Two big requests at a time, on two connections.
            let echoes = at_once(&clients, "/kitchen.Kitchen/Echo", &inners, 2);
            let consts = at_once(&clients, "/kitchen.Kitchen/Get", &tags, 2);
            let (echoes, consts) = tokio::join!(echoes, consts);
            let chat = raw_bidi(one, "/kitchen.Kitchen/EchoStream", vec![inners.clone(); 2]);
            let list = raw_server_stream(other, "/kitchen.Kitchen/List", few_tags.clone());
            let (chat, list) = tokio::join!(chat, list);
            (echoes, consts, chat, list)
        },
    )
    .await;
    eprintln!(
        "slowest quick call: {slowest:?}; the big requests answered in {:?}",
        started.elapsed()
    );
    assert_eq!(echoes, [inners.clone(), inners.clone()]);
    let constant = Bytes::from_static(b"\x0a\x05const");
    assert_eq!(consts, [constant.clone(), constant]);
    assert_eq!(chat, [inners.clone(), inners]);
    // The tags copied (Item.tags is field 4), then the second item.
    let copied: Bytes = b"\x22\x00".repeat(100_000).into();
    assert_eq!(list, [copied, Bytes::from_static(b"\x0a\x06second")]);
    assert!(
        slowest < BOUND,
        "a quick call waited {slowest:?} while big requests were answered"
    );
}

/// An echo, a constant reply and a reply copying a request field only read the request, so
/// they answer requests of a few long fields in place, without a hop; but 250 KB of two-byte
/// empty list items is 125 000 fields to check, which held a network thread for a long time
/// (a tenth of a second each in a debug build). They are checked in place only for a few
/// thousand fields, then answered off the network threads like any big request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_tiny_fields_to_kinds_that_only_read_them_do_not_hold_up_another_connection() {
    let _turn = TURN.lock().await;
    let file = serde_json::json!({
        "service": "kitchen.Kitchen",
        "methods": {
            "Echo": {"echo": {}},
            "Get": {"reply": {"id": "const"}},
            "Lookup": {"reply": {"id": "found {{name}}"}},
            "Nothing": {"reply": {}}
        }
    });
    let (server, _handlers) = Server::kitchen_with(&file.to_string(), &[]);
    let clients = connections(server.addr, &fixtures().join("protos")).await;
    let calls = 8 * clients.len();
    // Item.inners (14) and Query.tags (6), empty items, just under the size from which such
    // requests always go off the network threads (256 KiB).
    let inners: Bytes = b"\x72\x00".repeat(125_000).into();
    let tags: Bytes = b"\x32\x00".repeat(125_000).into();
    let started = Instant::now();
    let ((echoes, consts, found), slowest) = slowest_call_during(
        server.addr,
        "/kitchen.Kitchen/Nothing",
        Bytes::new(),
        async {
            let echoes = at_once(&clients, "/kitchen.Kitchen/Echo", &inners, calls);
            let consts = at_once(&clients, "/kitchen.Kitchen/Get", &tags, calls);
            let found = at_once(&clients, "/kitchen.Kitchen/Lookup", &tags, calls);
            tokio::join!(echoes, consts, found)
        },
    )
    .await;
    eprintln!(
        "slowest quick call: {slowest:?}; {} requests of 250 KB answered in {:?}",
        3 * calls,
        started.elapsed()
    );
    assert_eq!(echoes, vec![inners; calls]);
    assert_eq!(consts, vec![Bytes::from_static(b"\x0a\x05const"); calls]);
    assert_eq!(found, vec![Bytes::from_static(b"\x0a\x06found "); calls]);
    // Tighter than the others' bound: checking a request of this size in place held the
    // quick call up for 440-500 ms, a few requests' worth; now it waits 35-70 ms.
    assert!(
        slowest < Duration::from_millis(250),
        "a quick call waited {slowest:?} while requests of many tiny fields were answered"
    );
}
