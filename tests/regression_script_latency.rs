//! Regressions of where Lua runs: a hostile script must not delay calls to other methods, nor
//! keep other script calls from their time slices. Timing tests, so they live in their own test
//! binary and run one at a time. Scripts: tests/fixtures/safety.

mod common;

use std::time::{Duration, Instant};

use common::{fixtures, Client, Server};
use serde_json::json;
use tonic::metadata::MetadataMap;
use tonic::Code;

/// The tests here measure latency: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn safety_dir() -> std::path::PathBuf {
    fixtures().join("safety")
}

async fn start(extra: &[&str]) -> (Server, Client) {
    let f = safety_dir();
    let (s, c) = common::serve_folders(&f.join("protos"), &f.join("handlers"), extra).await;
    (s, c)
}

fn timeout_md(ms: u64) -> MetadataMap {
    let mut md = MetadataMap::new();
    md.insert("grpc-timeout", format!("{ms}m").parse().unwrap());
    md
}

/// DEADLINE_EXCEEDED from the server, or CANCELLED when tonic's grpc-timeout answers first.
fn at_deadline(s: &tonic::Status) -> bool {
    s.code() == Code::DeadlineExceeded
        || (s.code() == Code::Cancelled && s.message().contains("Timeout expired"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_script_does_not_delay_reply_methods() {
    let _serial = SERIAL.lock().await;
    // The hostile calls are long on purpose: the watchdog must not give up on them here.
    let (_s, client) = start(&[
        "--script-time-ms",
        "600000",
        "--script-watchdog-ms",
        "120000",
    ])
    .await;
    // Warm up the connection and the reply path.
    for _ in 0..5 {
        client
            .unary("safety.Safety/Hello", json!({"name": "w"}))
            .await
            .unwrap();
    }
    // Two hostile calls (one per state on a two-core machine), each one long library call.
    let hostile: Vec<_> = (0..2)
        .map(|_| {
            let c = client.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                let r = c
                    .unary("safety.Safety/Gsub", json!({"n": 30_000_000}))
                    .await;
                (r.map(|j| j["n"].clone()), started.elapsed())
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut latencies = Vec::new();
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until && latencies.len() < 400 {
        let started = Instant::now();
        let r = client
            .unary("safety.Safety/Hello", json!({"name": "x"}))
            .await
            .unwrap();
        latencies.push(started.elapsed());
        assert_eq!(r["text"], "hello x");
    }
    let mut gsub_times = Vec::new();
    for h in hostile {
        let (r, took) = h.await.unwrap();
        assert_eq!(r.unwrap(), json!("60000000"));
        gsub_times.push(took);
    }
    latencies.sort();
    let slow = latencies
        .iter()
        .filter(|l| **l > Duration::from_millis(50))
        .count();
    let max = *latencies.last().unwrap();
    eprintln!(
        "{} SayHello-style calls while hostile scripts ran ({gsub_times:?}): max {max:?}, {slow} over 50 ms",
        latencies.len()
    );
    // The hostile calls must actually have overlapped the measurement.
    assert!(gsub_times.iter().all(|t| *t > Duration::from_millis(300)));
    assert!(
        slow * 50 <= latencies.len() && max < Duration::from_millis(250),
        "reply calls were delayed by a script: max {max:?}, {slow} of {} over 50 ms",
        latencies.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_loops_on_every_state_do_not_block_other_scripts() {
    let _serial = SERIAL.lock().await;
    let (_s, client) = start(&["--script-states", "2", "--script-time-ms", "600000"]).await;
    client
        .unary("safety.Safety/Quick", json!({"name": "warm"}))
        .await
        .unwrap();
    let hostile: Vec<_> = (0..4)
        .map(|_| {
            let c = client.clone();
            tokio::spawn(async move {
                c.unary_with("safety.Safety/Spin", json!({}), timeout_md(4000))
                    .await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut latencies = Vec::new();
    for i in 0..40 {
        let started = Instant::now();
        let r = client
            .unary("safety.Safety/Quick", json!({"name": i.to_string()}))
            .await
            .unwrap();
        latencies.push(started.elapsed());
        assert_eq!(r["text"], format!("quick {i}"));
    }
    for h in hostile {
        let s = h.await.unwrap().unwrap_err();
        assert!(at_deadline(&s), "{s:?}");
    }
    latencies.sort();
    let median = latencies[latencies.len() / 2];
    let max = *latencies.last().unwrap();
    eprintln!("quick script calls beside endless loops: median {median:?}, max {max:?}");
    // Time slices are 2 ms, so a quick call waits a few slices at most; the margins are for a
    // busy machine. A state that let one call run to its end would take seconds here.
    assert!(median < Duration::from_millis(150), "median {median:?}");
    assert!(max < Duration::from_millis(1000), "max {max:?}");
}
