//! Regressions of the time a request takes to become Lua tables: it ran in one go on the
//! state's thread, charged by its bytes only, and past the call's time budget. An empty item
//! of a repeated message field is three bytes on the wire but a table with a default per field
//! in Lua: 300 KB of them, sent to a script that ignores them, held a lone state for seconds
//! before the call ended RESOURCE_EXHAUSTED, and every other script call waited that long.
//! Now the tables made are charged as they are made and the call's time is checked meanwhile,
//! so the call stops at its budget and the state is free again right after. Timing tests, so
//! they live in their own test binary and run one at a time.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Client, Server};
use serde_json::json;
use tonic::Code;

/// The tests here measure latency: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The call's time budget (`--script-time-ms`).
const BUDGET: Duration = Duration::from_millis(500);

const PROTO: &str = r#"syntax = "proto3";
package t;
message Req {
  string s = 1;
  int32 i = 2;
  repeated int32 ri = 3;
  map<string, string> m = 4;
  Req child = 5;
  repeated string rs = 6;
  repeated Req rr = 16;
  map<int32, Req> mm = 17;
}
service T {
  rpc Ignore(Req) returns (Req);
  rpc Quick(Req) returns (Req);
  rpc Drain(stream Req) returns (Req);
}
"#;

const HANDLERS: &str = r#"{
  "service": "t.T",
  "methods": {
    "Ignore": { "script": "t.lua" },
    "Quick": { "script": "t.lua" },
    "Drain": { "script": "t.lua" }
  }
}"#;

const SCRIPT: &str = r#"
function Ignore(req) return {} end
function Quick(req) return { s = "quick" } end
function Drain(reqs) for r in reqs do end return {} end
"#;

/// `n` empty items of `repeated Req rr = 16` (three bytes each).
fn empty_items(n: usize) -> Bytes {
    Bytes::from(b"\x82\x01\x00".repeat(n))
}

/// `n` empty entries of `map<int32, Req> mm = 17`: each one a key 0 and an empty message.
fn empty_entries(n: usize) -> Bytes {
    Bytes::from(b"\x8a\x01\x00".repeat(n))
}

/// A server with one Lua state and a time budget of [`BUDGET`], and a client of it.
async fn serve() -> (Server, Client, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    for sub in ["protos", "handlers", "data"] {
        std::fs::create_dir_all(dir.path().join(sub)).unwrap();
    }
    std::fs::write(dir.path().join("protos/t.proto"), PROTO).unwrap();
    std::fs::write(dir.path().join("handlers/t.json"), HANDLERS).unwrap();
    std::fs::write(dir.path().join("handlers/t.lua"), SCRIPT).unwrap();
    let budget = BUDGET.as_millis().to_string();
    let server = common::start_folders(
        &dir.path().join("protos"),
        &dir.path().join("handlers"),
        &[
            "--data",
            dir.path().join("data").to_str().unwrap(),
            "--script-states",
            "1",
            "--script-time-ms",
            &budget,
            "--no-watch",
            "--admin",
            "off",
        ],
    );
    let client = Client::connect(server.addr, common::pool(&dir.path().join("protos"))).await;
    (server, client, dir)
}

/// Calls `Quick` until `done` resolves (the call in flight then included); the slowest answer.
async fn slowest_quick(client: &Client, done: impl std::future::Future<Output = ()>) -> Duration {
    tokio::pin!(done);
    let mut slowest = Duration::ZERO;
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
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    slowest
}

/// The call ended as a script past its time budget does, within half a budget more.
fn stopped_at_budget(what: &str, r: Result<Bytes, tonic::Status>, took: Duration) {
    let status = r.expect_err(what);
    assert_eq!(status.code(), Code::ResourceExhausted, "{what}: {status:?}");
    assert!(
        status
            .message()
            .contains("ran past its time budget of 500 ms"),
        "{what}: {status:?}"
    );
    assert!(
        took < BUDGET * 3 / 2,
        "{what}: RESOURCE_EXHAUSTED after {took:?}, for a time budget of {BUDGET:?}"
    );
}

/// Warms the connection and the state up.
async fn warm(client: &Client) {
    for _ in 0..3 {
        client.unary("t.T/Quick", json!({})).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_tables_stop_at_the_time_budget() {
    let _serial = SERIAL.lock().await;
    let (_s, client, _dir) = serve().await;
    warm(&client).await;
    for (what, body) in [
        ("100 000 empty list items", empty_items(100_000)),
        ("90 000 empty map entries", empty_entries(90_000)),
    ] {
        let big = client.clone();
        let call = tokio::spawn(async move {
            let started = Instant::now();
            let r = big.raw_unary("/t.T/Ignore", body).await;
            (r, started.elapsed())
        });
        let (tx, rx) = tokio::sync::oneshot::channel();
        let probe = async {
            let _ = rx.await;
        };
        let waiter = tokio::spawn(async move {
            let out = call.await.unwrap();
            let _ = tx.send(());
            out
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let slowest = slowest_quick(&client, probe).await;
        let (r, took) = waiter.await.unwrap();
        eprintln!("{what}: answered after {took:?}; slowest other call {slowest:?}");
        stopped_at_budget(what, r, took);
        assert!(
            slowest < BUDGET * 3 / 2,
            "{what}: another script call waited {slowest:?} behind it"
        );
        // The state is free right after.
        let started = Instant::now();
        client.unary("t.T/Quick", json!({})).await.unwrap();
        assert!(
            started.elapsed() < Duration::from_millis(250),
            "{what}: the next call took {:?}",
            started.elapsed()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_request_tables_stop_at_the_time_budget() {
    let _serial = SERIAL.lock().await;
    let (_s, client, _dir) = serve().await;
    warm(&client).await;
    let big = client.clone();
    let call = tokio::spawn(async move {
        let started = Instant::now();
        let r = big
            .raw_client_stream("/t.T/Drain", vec![empty_items(100_000), empty_items(10)])
            .await;
        (r, started.elapsed())
    });
    let (tx, rx) = tokio::sync::oneshot::channel();
    let waiter = tokio::spawn(async move {
        let out = call.await.unwrap();
        let _ = tx.send(());
        out
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let slowest = slowest_quick(&client, async {
        let _ = rx.await;
    })
    .await;
    let (r, took) = waiter.await.unwrap();
    eprintln!("stream: answered after {took:?}; slowest other call {slowest:?}");
    stopped_at_budget("a stream of 100 000 empty list items", r, took);
    assert!(
        slowest < BUDGET * 3 / 2,
        "another script call waited {slowest:?} behind the stream"
    );
    let started = Instant::now();
    client.unary("t.T/Quick", json!({})).await.unwrap();
    assert!(
        started.elapsed() < Duration::from_millis(250),
        "the next call took {:?}",
        started.elapsed()
    );
}
