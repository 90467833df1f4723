//! Regressions of the encoders that turn a script's reply tables into protobuf bytes (the
//! stack encoder and the plain one it falls back to). Scripts: tests/fixtures/stack_encoder.
//!
//! - A reply's tables were charged one unit per table read, and the call's time was checked
//!   only every 4 096 units; but a walk of a table steps over every empty slot of its array
//!   part, so a reply naming one emptied table many times ran for many times the call's time
//!   budget, with every other call on its state waiting (the watchdog does not watch a
//!   returned reply being encoded). `slow_to_walk_reply_stops_at_the_time_budget`.
//! - `ctx:sleep(0)` gives the state's other calls a turn without a timer; an endless loop of it
//!   must still meet the budget. `endless_zero_sleeps_stop_at_the_budget_and_let_others_run`.

mod common;

use std::time::{Duration, Instant};

use common::{fixtures, Client, Server};
use serde_json::json;

fn dir() -> std::path::PathBuf {
    fixtures().join("stack_encoder")
}

async fn start(extra: &[&str]) -> (Server, Client) {
    let f = dir();
    let (s, c) = common::serve_folders(&f.join("protos"), &f.join("handlers"), extra).await;
    (s, c)
}

/// Any call of the Stk service: unary or server streaming, its outcome (a stream's status,
/// or the count of its messages) and how long it took.
async fn call(
    c: &Client,
    method: &str,
    name: &str,
    n: i64,
) -> (Result<String, tonic::Status>, Duration) {
    let t = Instant::now();
    let path = format!("stk.Stk/{method}");
    let request = json!({"name": name, "n": n});
    let outcome = async {
        if method == "Stream" {
            c.server_stream(&path, request)
                .await
                .map(|m| format!("{} messages", m.len()))
        } else {
            c.unary(&path, request).await.map(|v| v.to_string())
        }
    };
    let r = tokio::time::timeout(Duration::from_secs(90), outcome)
        .await
        .unwrap_or_else(|_| Err(tonic::Status::unknown("CLIENT TIMEOUT")));
    (r, t.elapsed())
}

/// A reply whose tables are slow to walk: one message table, with millions of empty slots in
/// its array part, 200 000 times in a list. Each walk of it steps over every slot, yet was
/// charged as one table read, and the encoders only asked the clock after 4 096 reads: with a
/// time budget of one second, the reply took 55 s to stop (the state's other calls waited as
/// long, and the watchdog never stepped in: a reply returned is encoded after the script's
/// last poll). With `ctx:send` the state was replaced by the watchdog. Now the encoders ask
/// the clock whenever its signal came since they last did (every millisecond of CPU), and the
/// call stops at its time budget however it hands the reply over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_to_walk_reply_stops_at_the_time_budget() {
    // Paused by the clock, and counting instructions (where no clock signals the thread).
    for mode in [
        &[][..],
        &[
            "--script-instructions",
            "1000000000",
            "--script-time-ms",
            "1500",
        ],
    ] {
        let mut args = vec!["--script-states", "1"];
        args.extend(mode);
        let (_s, c) = start(&args).await;
        slow_to_walk_replies(&c).await;
    }
}

async fn slow_to_walk_replies(c: &Client) {
    for (method, name) in [
        ("Run", "sparse_children"),
        ("Stream", "sparse_send"),
        ("Stream", "sparse_stream_return"),
    ] {
        let c2 = c.clone();
        let probe = tokio::spawn(async move {
            // When the reply is being encoded (the table takes about a third of a second to build).
            tokio::time::sleep(Duration::from_millis(700)).await;
            call(&c2, "Quick", "probe", 0).await
        });
        let (r, took) = call(c, method, name, 3_000_000).await;
        let (probe, waited) = probe.await.unwrap();
        let s = r.expect_err(name);
        assert_eq!(
            s.code(),
            tonic::Code::ResourceExhausted,
            "{name}: {}",
            s.message()
        );
        assert!(
            s.message().contains("time budget"),
            "{name}: {}",
            s.message()
        );
        assert!(
            took < Duration::from_secs(5),
            "{name}: the call took {took:?}"
        );
        assert_eq!(probe.unwrap(), json!({"text": "quick probe"}).to_string());
        assert!(
            waited < Duration::from_secs(5),
            "{name}: the probe waited {waited:?}"
        );
    }
}

/// An endless loop of `ctx:sleep(0)`, in the handler or in a coroutine of it: each gives the
/// state's other calls a turn without a timer, so the loop must still be stopped by the time
/// budget, and a call on the same state meanwhile must answer at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_zero_sleeps_stop_at_the_budget_and_let_others_run() {
    let (_s, c) = start(&["--script-states", "1"]).await;
    for name in ["sleep0", "co_sleep0"] {
        let c2 = c.clone();
        let probe = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            call(&c2, "Quick", "probe", 0).await
        });
        let (r, took) = call(&c, "Run", name, 0).await;
        let (probe, waited) = probe.await.unwrap();
        let s = r.expect_err(name);
        assert_eq!(
            s.code(),
            tonic::Code::ResourceExhausted,
            "{name}: {}",
            s.message()
        );
        assert!(
            took < Duration::from_secs(10),
            "{name}: the call took {took:?}"
        );
        assert_eq!(probe.unwrap(), json!({"text": "quick probe"}).to_string());
        assert!(
            waited < Duration::from_secs(1),
            "{name}: the probe waited {waited:?}"
        );
    }
}
