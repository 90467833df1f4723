//! Scripts that overflow the Lua stack: they must not hold up other calls on their state or
//! outlive their budget, and one overflow must leave nothing behind that slows the next.
//! Scripts: tests/fixtures/stack_overflow.

mod common;

use std::time::{Duration, Instant};

use common::{fixtures, Client, Server};
use serde_json::json;

type Reply = Result<serde_json::Value, tonic::Status>;

/// The server with one Lua state and each call's time budget, in milliseconds.
async fn start(budget_ms: u64) -> (Server, Client) {
    let f = fixtures().join("stack_overflow");
    let protos = f.join("protos").display().to_string();
    let handlers = f.join("handlers").display().to_string();
    let budget = budget_ms.to_string();
    let s = Server::start(&[
        "--protos",
        &protos,
        "--handlers",
        &handlers,
        "--script-time-ms",
        &budget,
        "--script-states",
        "1",
    ]);
    let c = Client::connect(s.addr, common::pool(&f.join("protos"))).await;
    (s, c)
}

async fn run(c: &Client, name: &str, n: i64) -> (Reply, Duration) {
    let t = Instant::now();
    let r = tokio::time::timeout(
        Duration::from_secs(30),
        c.unary("ovf.Ovf/Run", json!({"name": name, "n": n})),
    )
    .await
    .unwrap_or_else(|_| Err(tonic::Status::unknown("CLIENT TIMEOUT")));
    (r, t.elapsed())
}

/// What a call did while quick calls on the same state went back to back beside it.
struct Beside {
    reply: Reply,
    took: Duration,
    quick_calls: usize,
    slowest_quick: Duration,
}

async fn beside_quick_calls(c: &Client, name: &'static str, n: i64) -> Beside {
    let c2 = c.clone();
    let long = tokio::spawn(async move { run(&c2, name, n).await });
    tokio::time::sleep(Duration::from_millis(2)).await;
    let (mut quick_calls, mut slowest_quick) = (0, Duration::ZERO);
    while !long.is_finished() {
        let (r, took) = run(c, "quick", 0).await;
        assert_eq!(r.expect("the quick call answers")["text"], "quick");
        quick_calls += 1;
        slowest_quick = slowest_quick.max(took);
    }
    let (reply, took) = long.await.unwrap();
    eprintln!(
        "{name}: {} after {took:?}; {quick_calls} quick calls beside it, the slowest {slowest_quick:?}",
        match &reply {
            Ok(v) => v.to_string(),
            Err(s) => format!("{:?}: {}", s.code(), s.message()),
        }
    );
    Beside {
        reply,
        took,
        quick_calls,
        slowest_quick,
    }
}

/// Quick calls on the state of a script that overflows wait at most this long (they wait for
/// time slices of a few milliseconds, and a debug build's steps).
const QUICK_WAIT: Duration = Duration::from_millis(500);

/// One caught overflow (`pcall` of a function that recurses without end) held the state for a
/// quarter of a second, and the next one, on the same state, until the watchdog replaced the
/// state (the call got UNAVAILABLE after some 6 s, a quick call beside it waited as long). Now
/// each overflow is caught quickly, the same every time, and quick calls go on beside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caught_overflows_in_a_row_stay_quick() {
    let (_s, c) = start(3000).await;
    for i in 0..4 {
        let b = beside_quick_calls(&c, "once", 0).await;
        let reply = b.reply.expect("the overflow is caught");
        let text = reply["text"].as_str().unwrap();
        assert!(
            text.starts_with("false ") && text.ends_with("stack overflow"),
            "{text}"
        );
        assert!(
            b.took < Duration::from_millis(1500),
            "overflow {i} took {:?}",
            b.took
        );
        assert!(
            b.slowest_quick < QUICK_WAIT,
            "overflow {i}: a quick call beside it waited {:?}",
            b.slowest_quick
        );
    }
}

/// `while true do pcall(endless) end` was never paused (a quick call waited 6 s) and ended by
/// the watchdog replacing its state (UNAVAILABLE). Now the hook pauses it like any loop and it
/// ends at its budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overflow_loop_is_paused_and_stops_at_its_budget() {
    let (_s, c) = start(1000).await;
    let b = beside_quick_calls(&c, "loop", 0).await;
    let status = b.reply.expect_err("the loop never returns");
    assert_eq!(
        status.code(),
        tonic::Code::ResourceExhausted,
        "{}",
        status.message()
    );
    assert!(status.message().contains("time budget"), "{status:?}");
    assert!(b.took < Duration::from_secs(4), "the loop ran {:?}", b.took);
    assert!(b.quick_calls >= 3, "{} quick calls", b.quick_calls);
    assert!(
        b.slowest_quick < QUICK_WAIT,
        "a quick call beside the loop waited {:?}",
        b.slowest_quick
    );
}

/// `local function f() return xpcall(f, f) end f()` held its state for about a second at a
/// time. Now quick calls go on beside it and it ends at its budget at the latest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xpcall_of_itself_lets_quick_calls_through() {
    let (_s, c) = start(4000).await;
    let b = beside_quick_calls(&c, "xpcall", 0).await;
    if let Err(status) = &b.reply {
        assert_ne!(status.code(), tonic::Code::Unavailable, "{status:?}");
    }
    assert!(b.took < Duration::from_secs(7), "the call ran {:?}", b.took);
    assert!(
        b.slowest_quick < QUICK_WAIT,
        "a quick call beside it waited {:?}",
        b.slowest_quick
    );
}

/// 10,000 nested calls of a function with some 15 registers still work; a recursion past the
/// stack limit fails with Lua's "stack overflow", which `pcall` catches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_recursion_works_and_deeper_overflows() {
    let (_s, c) = start(3000).await;
    let (r, took) = run(&c, "deep", 10_000).await;
    eprintln!("deep 10000: {r:?} after {took:?}");
    assert_eq!(r.expect("the call answers")["text"], "true 10000");
    let (r, took) = run(&c, "deep", 1_000_000).await;
    eprintln!("deep 1000000: {r:?} after {took:?}");
    let reply = r.expect("the call answers");
    let text = reply["text"].as_str().unwrap();
    assert!(
        text.starts_with("false ") && text.ends_with("stack overflow"),
        "{text}"
    );
}
