//! Regressions of a big request's conversion into Lua tables keeping its state's thread: it
//! ran in Rust in one go, between two of the script's instructions, where no time slice ends.
//! A 4 MiB request of empty items of a repeated message field, sent to a script, kept a lone
//! state for the whole conversion (up to the conversion's memory cap), and a quick call on the
//! same state waited all that time; a big message of a request stream too. Now a big request's
//! conversion gives way at the end of its call's time slice, as a script does, and other calls
//! go on meanwhile. Timing tests, so they live in their own test binary and run one at a time.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Client, Server};
use serde_json::json;
use tonic::Code;

/// The tests here measure latency: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const PROTO: &str = r#"syntax = "proto3";
package t;
message Item {
  string s = 1;
  int32 i = 2;
}
message Req {
  repeated Item items = 1;
}
message Reply {
  int64 n = 1;
  string s = 2;
}
service T {
  rpc Count(Req) returns (Reply);
  rpc Quick(Reply) returns (Reply);
  rpc Drain(stream Req) returns (Reply);
}
"#;

const HANDLERS: &str = r#"{
  "service": "t.T",
  "methods": {
    "Count": { "script": "t.lua" },
    "Quick": { "script": "t.lua" },
    "Drain": { "script": "t.lua" }
  }
}"#;

const SCRIPT: &str = r#"
function Count(req)
  local n = 0
  for _, item in ipairs(req.items) do
    if item.s == "" and item.i == 0 then n = n + 1 end
  end
  return { n = n }
end
function Quick(req) return { s = "quick" } end
function Drain(reqs)
  local n = 0
  for r in reqs do n = n + #r.items end
  return { n = n }
end
"#;

/// The largest request a 4 MiB `--max-message-size` lets through, in empty items.
const MOST_ITEMS: usize = (4 * 1024 * 1024 - 16) / 2;

/// 200 KB of empty items: just under the conversion's memory cap, yet far longer to convert
/// than a time slice.
const LEGIT_ITEMS: usize = 100_000;

/// `n` empty items of `repeated Item items = 1` (two bytes each: key, zero length).
fn empty_items(n: usize) -> Bytes {
    Bytes::from(b"\x0a\x00".repeat(n))
}

/// A server with one Lua state and a long time budget (the conversions must end on their own),
/// and a client of it.
async fn serve() -> (Server, Client, tempfile::TempDir) {
    serve_with_time_ms("60000").await
}

/// A server with one Lua state and a time budget of `time_ms` per call, and a client of it.
async fn serve_with_time_ms(time_ms: &str) -> (Server, Client, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    for sub in ["protos", "handlers", "data"] {
        std::fs::create_dir_all(dir.path().join(sub)).unwrap();
    }
    std::fs::write(dir.path().join("protos/t.proto"), PROTO).unwrap();
    std::fs::write(dir.path().join("handlers/t.json"), HANDLERS).unwrap();
    std::fs::write(dir.path().join("handlers/t.lua"), SCRIPT).unwrap();
    let server = common::start_folders(
        &dir.path().join("protos"),
        &dir.path().join("handlers"),
        &[
            "--data",
            dir.path().join("data").to_str().unwrap(),
            "--script-states",
            "1",
            "--script-time-ms",
            time_ms,
            "--script-watchdog-ms",
            "60000",
            "--no-watch",
            "--admin",
            "off",
        ],
    );
    let client = Client::connect(server.addr, common::pool(&dir.path().join("protos"))).await;
    (server, client, dir)
}

/// Calls `Quick` until `done` resolves (the call in flight then included): the slowest answer
/// and how many answered.
async fn quick_calls(
    client: &Client,
    done: impl std::future::Future<Output = ()>,
) -> (Duration, usize) {
    tokio::pin!(done);
    let mut slowest = Duration::ZERO;
    let mut answered = 0;
    let mut over = false;
    while !over {
        let started = Instant::now();
        let quick = client.unary("t.T/Quick", json!({}));
        tokio::pin!(quick);
        let r = tokio::select! {
            r = &mut quick => r,
            () = &mut done => {
                over = true;
                quick.await
            }
        };
        assert_eq!(r.expect("Quick answers")["s"], "quick");
        slowest = slowest.max(started.elapsed());
        answered += 1;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    (slowest, answered)
}

/// Warms the connection and the state up.
async fn warm(client: &Client) {
    for _ in 0..3 {
        client.unary("t.T/Quick", json!({})).await.unwrap();
    }
}

/// Sends `bodies` to `path` one after another while quick calls run beside them: each big
/// call's answer and time, and the quick calls' slowest answer and count.
async fn beside_quick_calls(
    client: &Client,
    path: &'static str,
    bodies: Vec<Bytes>,
) -> (
    Vec<(Result<Bytes, tonic::Status>, Duration)>,
    Duration,
    usize,
) {
    let big = client.clone();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let calls = tokio::spawn(async move {
        let mut out = Vec::new();
        for body in bodies {
            let started = Instant::now();
            let r = big.raw_unary(path, body).await;
            out.push((r, started.elapsed()));
        }
        let _ = tx.send(());
        out
    });
    let (slowest, answered) = quick_calls(client, async {
        let _ = rx.await;
    })
    .await;
    (calls.await.unwrap(), slowest, answered)
}

/// Streams `messages` to `Drain` while quick calls run beside it: its answer and time, and the
/// quick calls' slowest answer and count.
async fn stream_beside_quick_calls(
    client: &Client,
    messages: Vec<Bytes>,
) -> (Result<Bytes, tonic::Status>, Duration, Duration, usize) {
    let big = client.clone();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let call = tokio::spawn(async move {
        let started = Instant::now();
        let r = big.raw_client_stream("/t.T/Drain", messages).await;
        let _ = tx.send(());
        (r, started.elapsed())
    });
    let (slowest, answered) = quick_calls(client, async {
        let _ = rx.await;
    })
    .await;
    let (r, took) = call.await.unwrap();
    (r, took, slowest, answered)
}

/// `Reply.n` of an encoded reply.
fn reply_n(bytes: &Bytes) -> u64 {
    let mut b = &bytes[..];
    assert_eq!(b.first(), Some(&0x08), "a reply with n: {bytes:?}");
    b = &b[1..];
    let (mut n, mut shift) = (0u64, 0);
    for &byte in b {
        n |= u64::from(byte & 0x7f) << shift;
        shift += 7;
        if byte & 0x80 == 0 {
            break;
        }
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_request_conversion_gives_way_to_other_calls() {
    let _serial = SERIAL.lock().await;
    let (_s, client, _dir) = serve().await;
    warm(&client).await;
    let bodies = vec![empty_items(MOST_ITEMS); 3];
    let (answers, slowest, answered) = beside_quick_calls(&client, "/t.T/Count", bodies).await;
    let took: Vec<Duration> = answers.iter().map(|(_, t)| *t).collect();
    eprintln!(
        "3 requests of {MOST_ITEMS} empty items, answered after {took:?}; \
         {answered} quick calls beside them, slowest {slowest:?}"
    );
    for (r, _) in answers {
        let status = r.expect_err("a request past the conversion's memory cap");
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert_eq!(status.message(), CAP_MESSAGE);
    }
    assert!(
        slowest < Duration::from_millis(CAP_WAIT_MS),
        "a quick call waited {slowest:?} behind the conversion of a big request"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_legit_big_request_is_converted_in_slices_and_answered() {
    let _serial = SERIAL.lock().await;
    let (_s, client, _dir) = serve().await;
    warm(&client).await;
    let bodies = vec![empty_items(LEGIT_ITEMS); 2];
    let (answers, slowest, answered) = beside_quick_calls(&client, "/t.T/Count", bodies).await;
    let took: Vec<Duration> = answers.iter().map(|(_, t)| *t).collect();
    eprintln!(
        "2 requests of {LEGIT_ITEMS} empty items, answered after {took:?}; \
         {answered} quick calls beside them, slowest {slowest:?}"
    );
    for (r, _) in answers {
        assert_eq!(
            reply_n(&r.expect("a request under the cap")),
            LEGIT_ITEMS as u64
        );
    }
    assert!(
        slowest < Duration::from_millis(LEGIT_WAIT_MS),
        "a quick call waited {slowest:?} behind the conversion of a big request"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_big_messages_are_converted_in_slices() {
    let _serial = SERIAL.lock().await;
    let (_s, client, _dir) = serve().await;
    warm(&client).await;
    let messages = vec![
        empty_items(LEGIT_ITEMS),
        empty_items(3),
        empty_items(LEGIT_ITEMS),
    ];
    let (r, took, slowest, answered) = stream_beside_quick_calls(&client, messages).await;
    eprintln!(
        "a stream of two messages of {LEGIT_ITEMS} empty items, answered after {took:?}; \
         {answered} quick calls beside it, slowest {slowest:?}"
    );
    assert_eq!(
        reply_n(&r.expect("a stream of messages under the cap")),
        2 * LEGIT_ITEMS as u64 + 3
    );
    assert!(
        slowest < Duration::from_millis(LEGIT_WAIT_MS),
        "a quick call waited {slowest:?} behind the conversion of a streamed message"
    );
    let messages = vec![empty_items(3), empty_items(MOST_ITEMS)];
    let (r, took, slowest, answered) = stream_beside_quick_calls(&client, messages).await;
    eprintln!(
        "a stream with a message of {MOST_ITEMS} empty items, answered after {took:?}; \
         {answered} quick calls beside it, slowest {slowest:?}"
    );
    let status = r.expect_err("a streamed message past the conversion's memory cap");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(status.message(), CAP_MESSAGE);
    assert!(
        slowest < Duration::from_millis(CAP_WAIT_MS),
        "a quick call waited {slowest:?} behind a streamed message past the cap"
    );
}

/// Conversions stopped while paused (their calls cancelled by clients that gave up) unwind
/// and leave their state sound: big requests sent afterwards, several at once, are answered in
/// full, and so are quick calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conversions_stopped_while_paused_leave_the_state_sound() {
    let _serial = SERIAL.lock().await;
    let (_s, client, _dir) = serve().await;
    warm(&client).await;
    let give_up = Duration::from_millis(40);
    for _ in 0..3 {
        let mut calls = Vec::new();
        for _ in 0..2 {
            let c = client.clone();
            calls.push(tokio::spawn(async move {
                let call = c.raw_unary("/t.T/Count", empty_items(LEGIT_ITEMS));
                let _ = tokio::time::timeout(give_up, call).await;
            }));
            let c = client.clone();
            calls.push(tokio::spawn(async move {
                let call = c.raw_client_stream("/t.T/Drain", vec![empty_items(LEGIT_ITEMS)]);
                let _ = tokio::time::timeout(give_up, call).await;
            }));
        }
        for call in calls {
            call.await.unwrap();
        }
        assert_eq!(
            client.unary("t.T/Quick", json!({})).await.unwrap()["s"],
            "quick"
        );
    }
    let calls: Vec<_> = (0..3)
        .map(|_| {
            let c = client.clone();
            tokio::spawn(async move { c.raw_unary("/t.T/Count", empty_items(LEGIT_ITEMS)).await })
        })
        .collect();
    for call in calls {
        let r = call.await.unwrap();
        assert_eq!(
            reply_n(&r.expect("a request under the cap")),
            LEGIT_ITEMS as u64
        );
    }
    let r = client
        .raw_client_stream("/t.T/Drain", vec![empty_items(LEGIT_ITEMS); 2])
        .await;
    assert_eq!(
        reply_n(&r.expect("a stream under the cap")),
        2 * LEGIT_ITEMS as u64
    );
}

/// Streams `messages` to `Drain` on the client's one connection and waits for its answer (an
/// error is expected), then makes a quick call on the same connection: the stream's status,
/// and how long the quick call took, or `None` if it did not answer within [`QUICK_WITHIN`].
async fn quick_call_after_a_failed_stream(
    client: &Client,
    messages: Vec<Bytes>,
) -> (tonic::Status, Option<Duration>) {
    let started = Instant::now();
    let stream = tokio::time::timeout(
        QUICK_WITHIN * 6,
        client.raw_client_stream("/t.T/Drain", messages),
    )
    .await
    .expect("the stream is answered");
    let status = stream.expect_err("a stream whose conversion fails");
    eprintln!(
        "stream answered {:?} {:?} after {:?}",
        status.code(),
        status.message(),
        started.elapsed()
    );
    let started = Instant::now();
    let quick = tokio::time::timeout(QUICK_WITHIN, client.unary("t.T/Quick", json!({}))).await;
    let took = quick.ok().map(|r| {
        assert_eq!(r.expect("Quick answers")["s"], "quick");
        started.elapsed()
    });
    (status, took)
}

/// How long a quick call may take after a failed stream on the same connection: far more than
/// it takes (milliseconds), far less than forever, which it took when the unread messages kept
/// the connection's flow-control window.
const QUICK_WITHIN: Duration = Duration::from_secs(5);

/// A client-streaming call whose big message fails its conversion at the memory cap, while the
/// client still has messages to send, ends its request stream at once: the messages the server
/// accepted and never read gave back the connection's flow-control window only when Lua
/// collected the stream's iterator, so every later call on the connection hung.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_failed_at_the_cap_leaves_its_connection_usable() {
    let _serial = SERIAL.lock().await;
    let (_s, client, _dir) = serve().await;
    warm(&client).await;
    for round in 0..3 {
        let messages = vec![empty_items(MOST_ITEMS); 8];
        let (status, took) = quick_call_after_a_failed_stream(&client, messages).await;
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert_eq!(status.message(), CAP_MESSAGE);
        eprintln!("round {round}: a quick call on the same connection took {took:?}");
        assert!(
            took.is_some(),
            "round {round}: a quick call on the connection of a stream failed at the cap did \
             not answer within {QUICK_WITHIN:?}"
        );
    }
}

/// The same when the conversion runs out of the call's time budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_out_of_time_budget_leaves_its_connection_usable() {
    let _serial = SERIAL.lock().await;
    let (_s, client, _dir) = serve_with_time_ms("5").await;
    warm(&client).await;
    for round in 0..3 {
        let messages = vec![empty_items(LEGIT_ITEMS); 8];
        let (status, took) = quick_call_after_a_failed_stream(&client, messages).await;
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        eprintln!("round {round}: a quick call on the same connection took {took:?}");
        assert!(
            took.is_some(),
            "round {round}: a quick call on the connection of a stream out of time budget did \
             not answer within {QUICK_WITHIN:?}"
        );
    }
}

/// What a request past the conversion's memory cap is answered, as before conversions paused.
const CAP_MESSAGE: &str = "decoding this t.Req would take over 33554472 bytes of memory \
    (at t.Req.items), more than 33554432 (8 times --max-message-size); send fewer elements or \
    raise --max-message-size";

/// The slowest quick call allowed beside requests past the cap, in a debug build: a few time
/// slices and the quick call's own way through the server, with a wide margin (converted in one
/// go, the walk that costs such a request kept a quick call waiting 135 to 220 ms).
const CAP_WAIT_MS: u64 = 100;

/// The slowest quick call allowed beside requests under the cap (converted in one go, such a
/// request kept a quick call waiting about a second in a debug build).
const LEGIT_WAIT_MS: u64 = 250;
