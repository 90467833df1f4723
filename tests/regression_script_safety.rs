//! Regressions of the script execution model: hostile scripts must not hang, crash or slow the
//! server, escape their budget, or reach another call. Scripts: tests/fixtures/safety.

mod common;

use std::time::{Duration, Instant};

use common::{fixtures, Client, Server};
use serde_json::json;
use tonic::metadata::MetadataMap;
use tonic::Code;

fn safety_dir() -> std::path::PathBuf {
    fixtures().join("safety")
}

fn server(extra: &[&str]) -> Server {
    let f = safety_dir();
    let mut args = vec![
        "--protos".to_owned(),
        f.join("protos").display().to_string(),
        "--handlers".to_owned(),
        f.join("handlers").display().to_string(),
    ];
    if !extra.contains(&"--script-time-ms") {
        args.extend(["--script-time-ms".to_owned(), "300".to_owned()]);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Server::start(&args)
}

async fn start(extra: &[&str]) -> (Server, Client) {
    let s = server(extra);
    let c = Client::connect(s.addr, common::pool(&safety_dir().join("protos"))).await;
    (s, c)
}

fn timeout_md(ms: u64) -> MetadataMap {
    let mut md = MetadataMap::new();
    md.insert("grpc-timeout", format!("{ms}m").parse().unwrap());
    md
}

/// A call that must fail; the client gives up after `limit` (so a hang fails the test).
async fn fails_within(
    client: &Client,
    method: &str,
    req: serde_json::Value,
    limit: Duration,
) -> tonic::Status {
    let started = Instant::now();
    let r = tokio::time::timeout(limit, client.unary(method, req)).await;
    let r = r.unwrap_or_else(|_| panic!("{method} did not answer within {limit:?}"));
    let s = r.expect_err("the call should fail");
    eprintln!("{method}: {:?} after {:?}", s, started.elapsed());
    s
}

/// How a call ends at its deadline: DEADLINE_EXCEEDED from the server, or CANCELLED when
/// tonic's own grpc-timeout handling answers first. (A panic would reset the stream instead.)
fn at_deadline(s: &tonic::Status) -> bool {
    s.code() == Code::DeadlineExceeded
        || (s.code() == Code::Cancelled && s.message().contains("Timeout expired"))
}

async fn still_serves(client: &Client) {
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        client.unary("safety.Safety/Quick", json!({"name": "q"})),
    )
    .await
    .expect("Quick answers")
    .expect("Quick succeeds");
    assert_eq!(r["text"], "quick q");
}

#[tokio::test]
async fn pcall_cannot_swallow_budget() {
    let (_s, client) = start(&["--script-states", "1"]).await;
    let s = fails_within(
        &client,
        "safety.Safety/PcallLoop",
        json!({}),
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
    assert!(s.message().contains("budget"), "{s:?}");
    still_serves(&client).await;
}

#[tokio::test]
async fn xpcall_and_coroutine_cannot_swallow_abort() {
    let (_s, client) = start(&["--script-states", "1"]).await;
    for variant in ["xpcall", "handler", "resume", "wrap", "close"] {
        eprintln!("variant {variant}");
        let s = fails_within(
            &client,
            "safety.Safety/Swallow",
            json!({"name": variant}),
            Duration::from_secs(20),
        )
        .await;
        assert_eq!(s.code(), Code::ResourceExhausted, "{variant}: {s:?}");
    }
    still_serves(&client).await;
    // The deadline cannot be swallowed either.
    let (_s, client) = start(&["--script-states", "1", "--script-time-ms", "600000"]).await;
    let started = Instant::now();
    let r = tokio::time::timeout(
        Duration::from_secs(20),
        client.unary_with(
            "safety.Safety/Swallow",
            json!({"name": "xpcall"}),
            timeout_md(300),
        ),
    )
    .await
    .expect("answers");
    let s = r.unwrap_err();
    assert!(at_deadline(&s), "{s:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    still_serves(&client).await;
}

#[tokio::test]
async fn coroutine_wrap_generator_survives_time_slices() {
    let (server, client) = start(&["--script-time-ms", "600000", "--script-states", "1"]).await;
    let expected = [
        "start:a",
        "SUM1",
        "got:b",
        "SUM2",
        "two",
        "done",
        "2",
        "dead-error",
        "outer-yieldable:true",
        "running-is-outer:true:false",
        "outer-status-in-inner:normal",
        "inner1:true:42:true",
        "inner-status:suspended",
        "outer1:true:from-outer",
        "outer-status:suspended",
        "inner2:true:hi!",
        "inner-status:dead",
        "outer2:true:outer-done",
        "outer-status:dead",
        "bad:false:bad thing",
        "bad-status:dead",
        "tbl:false:7",
        "wrap-error:false:wrapped",
        "slept",
        "woke",
        "main-yieldable:true",
    ];
    // Small work: no time slice lands inside a coroutine. Large work: many do (well over
    // 50 ms between yields). Both must give exactly Lua 5.4's results.
    let mut texts = Vec::new();
    for n in [10i64, 3_000_000] {
        let started = Instant::now();
        let r = client
            .unary("safety.Safety/Coroutines", json!({"n": n}))
            .await
            .unwrap_or_else(|s| panic!("n={n}: {s:?}\n{}", server.log().join("\n")));
        eprintln!("n={n}: {:?}", started.elapsed());
        let text = r["text"].as_str().unwrap().to_owned();
        let parts: Vec<&str> = text.split(',').collect();
        assert_eq!(parts.len(), expected.len(), "n={n}: {text}");
        for (got, want) in parts.iter().zip(expected) {
            if !want.starts_with("SUM") {
                assert_eq!(*got, want, "n={n}: {text}");
            }
        }
        texts.push(text);
    }
    assert!(
        texts[1] != texts[0] || texts[0].is_empty(),
        "the work sums differ with n"
    );
    // Calls interleaving on one state, each sliced many times inside its coroutines.
    let calls: Vec<_> = (0..3)
        .map(|_| {
            let c = client.clone();
            tokio::spawn(async move {
                c.unary("safety.Safety/Coroutines", json!({"n": 3_000_000}))
                    .await
            })
        })
        .collect();
    for call in calls {
        let r = call
            .await
            .unwrap()
            .unwrap_or_else(|s| panic!("{s:?}\n{}", server.log().join("\n")));
        assert_eq!(r["text"].as_str().unwrap(), texts[1]);
    }
}

#[tokio::test]
async fn close_handler_loop_is_bounded() {
    let (_s, client) = start(&["--script-states", "1"]).await;
    let s = fails_within(
        &client,
        "safety.Safety/CloseLoop",
        json!({"name": "fail"}),
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
    // A coroutine left suspended with a pending __close: nothing runs it outside a call.
    for _ in 0..5 {
        let r = tokio::time::timeout(
            Duration::from_secs(10),
            client.unary("safety.Safety/CloseLoop", json!({"name": "abandon"})),
        )
        .await
        .expect("answers")
        .expect("succeeds");
        assert_eq!(r["text"], "abandoned");
        still_serves(&client).await;
    }
}

#[tokio::test]
async fn tostring_metamethod_error_is_bounded() {
    let (_s, client) = start(&["--script-states", "1"]).await;
    let s = fails_within(
        &client,
        "safety.Safety/Metamethods",
        json!({"name": "tostring"}),
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(s.code(), Code::Internal, "{s:?}");
    assert!(s.message().contains("script raised a table"), "{s:?}");
    assert!(!s.message().contains("0x"), "{s:?}");
    still_serves(&client).await;
    // A returned table full of endless metamethods: converted under the call's budget (or
    // without them), never hanging.
    let r = tokio::time::timeout(
        Duration::from_secs(20),
        client.unary("safety.Safety/Metamethods", json!({"name": "returned"})),
    )
    .await
    .expect("a returned table with endless metamethods does not hang the call");
    if let Err(s) = r {
        assert!(
            matches!(s.code(), Code::ResourceExhausted | Code::Internal),
            "{s:?}"
        );
    }
    still_serves(&client).await;
}

/// Runs `protoserve check` on a handlers folder; (exit code, stderr), or a panic if it hangs.
fn check_with_timeout(handlers: &str) -> (i32, String) {
    let f = safety_dir();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_protoserve"))
        .args(["check", "--protos"])
        .arg(f.join("protos"))
        .arg("--handlers")
        .arg(f.join(handlers))
        .args(["--script-states", "1", "--script-instructions", "5000000"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            use std::io::Read;
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            return (status.code().unwrap_or(-1), err);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("loading {handlers} did not finish within 30 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn load_time_infinite_loop_is_a_startup_error() {
    let (code, err) = check_with_timeout("load_loop");
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("loop.lua:2:"), "{err}");
    assert!(err.contains("budget"), "{err}");
    let (code, err) = check_with_timeout("load_require_loop");
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("spinner.lua:3:"), "{err}");
}

#[tokio::test]
async fn ctx_sleep_huge_does_not_panic() {
    let (_s, client) = start(&[]).await;
    for variant in ["huge", "1e300"] {
        let started = Instant::now();
        let r = client
            .unary_with(
                "safety.Safety/Sleep",
                json!({"name": variant}),
                timeout_md(300),
            )
            .await;
        let s = r.expect_err("sleeping past the deadline fails");
        assert!(at_deadline(&s), "{variant}: {s:?}");
        assert!(started.elapsed() < Duration::from_secs(5), "{variant}");
    }
    let r = client
        .unary("safety.Safety/Sleep", json!({"name": "negative"}))
        .await
        .expect("a negative sleep does not wait");
    assert_eq!(r["text"], "slept");
    let s = client
        .unary("safety.Safety/Sleep", json!({"name": "nan"}))
        .await
        .expect_err("nan is refused");
    assert_eq!(s.code(), Code::Internal, "{s:?}");
    assert!(s.message().contains("nan"), "{s:?}");
    still_serves(&client).await;
}

#[tokio::test]
async fn ctx_kept_past_its_call_is_dead() {
    let (_s, client) = start(&["--script-states", "1"]).await;
    let mut md = MetadataMap::new();
    md.insert("x-who", "alice".parse().unwrap());
    let (r, _) = client
        .unary_with("safety.Safety/Keep", json!({"name": "store"}), md)
        .await
        .unwrap();
    let mut md = MetadataMap::new();
    md.insert("x-who", "bob".parse().unwrap());
    let (later, _) = client
        .unary_with("safety.Safety/Keep", json!({"name": "read"}), md)
        .await
        .unwrap();
    let later = later["text"].as_str().unwrap().to_owned();
    assert!(
        !later.contains("bob"),
        "a kept ctx read a later call: {later}"
    );
    assert!(
        !later.contains("alice"),
        "a kept ctx outlived its call: {later}"
    );
    if r["text"] == "stored" {
        assert!(later.contains("ctx used after its call ended"), "{later}");
    } else {
        // The sandbox refused to keep anything across calls: nothing can cross.
        assert_eq!(later, "nothing kept");
    }
}

#[tokio::test]
async fn lua_oom_is_resource_exhausted() {
    let (_s, client) = start(&["--script-memory", "16", "--script-states", "1"]).await;
    let s = fails_within(
        &client,
        "safety.Safety/Hog",
        json!({}),
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
    assert!(
        s.message()
            .contains("script exceeded its memory limit of 16 MiB"),
        "{s:?}"
    );
    still_serves(&client).await;
}

#[tokio::test]
async fn error_table_gives_useful_message() {
    let (_s, client) = start(&[]).await;
    let cases = [
        ("message", "the widget is broken"),
        ("empty", "script raised a table (no message)"),
        ("nil", "script raised nil"),
        ("userdata", "script raised a table (no message)"),
    ];
    for (variant, want) in cases {
        let s = client
            .unary("safety.Safety/ErrorValue", json!({"name": variant}))
            .await
            .unwrap_err();
        assert_eq!(s.code(), Code::Internal, "{variant}: {s:?}");
        assert!(s.message().contains(want), "{variant}: {s:?}");
        assert!(!s.message().contains("0x"), "{variant}: {s:?}");
    }
}

/// The server's resident memory, in MiB.
fn rss_mib(pid: u32) -> u64 {
    common::proc_status_kib(pid, "VmRSS") / 1024
}

#[tokio::test]
async fn stream_buffer_is_bounded_in_bytes() {
    let (s, client) = start(&["--script-time-ms", "600000"]).await;
    let pid = s.pid();
    let before = rss_mib(pid);
    let m = client.method("safety.Safety/Flood");
    let mut held = Vec::new();
    for _ in 0..16 {
        let mut grpc = tonic::client::Grpc::new(client.channel.clone());
        grpc.ready().await.unwrap();
        let req = tonic::Request::new(protoserve::codec::Outgoing::Message(Client::message(
            &m.input(),
            json!({"n": 200}),
        )));
        let started = tokio::time::timeout(
            Duration::from_secs(20),
            grpc.server_streaming(
                req,
                "/safety.Safety/Flood".parse().unwrap(),
                common::DynamicCodec::new(m.output()),
            ),
        )
        .await
        .expect("the stream starts or is refused");
        match started {
            // Never read from it.
            Ok(stream) => held.push(stream),
            // The connection already holds --max-buffered-per-connection of unread messages.
            Err(s) => {
                assert_eq!(s.code(), tonic::Code::ResourceExhausted, "{s:?}");
                assert!(
                    s.message().contains("--max-buffered-per-connection"),
                    "{s:?}"
                );
            }
        }
    }
    assert!(!held.is_empty(), "no stream started");
    // Give the scripts time to fill whatever the server buffers.
    let mut peak = 0;
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        peak = peak.max(rss_mib(pid));
    }
    eprintln!("RSS before {before} MiB, peak with 16 stalled streams {peak} MiB");
    // 16 streams × 200 messages × 4 MiB would be 12 GiB; a bound of a few messages per
    // stream stays in the hundreds of MiB.
    assert!(peak < before + 700, "RSS grew from {before} to {peak} MiB");
    // The stalled connection's own window is full; a fresh connection is served.
    let fresh = Client::connect(s.addr, common::pool(&safety_dir().join("protos"))).await;
    still_serves(&fresh).await;
    drop(held);
    still_serves(&fresh).await;
}

#[tokio::test]
async fn state_is_replaced_after_unrecoverable_error() {
    let (s, client) = start(&[
        "--script-states",
        "1",
        "--script-time-ms",
        "600000",
        "--script-watchdog-ms",
        "100",
        "--script-memory",
        "1024",
    ])
    .await;
    still_serves(&client).await;
    // One long library call holds the only state far past any time slice.
    let c = client.clone();
    let stuck = tokio::spawn(async move {
        let r = c
            .unary("safety.Safety/Upper", json!({"n": 200_000_000}))
            .await;
        (r, Instant::now())
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The watchdog replaces the state: other calls are served meanwhile.
    let started = Instant::now();
    still_serves(&client).await;
    let served_at = Instant::now();
    let (stuck_result, stuck_done) = stuck.await.unwrap();
    eprintln!(
        "served after {:?} beside a stuck call; the stuck call: {stuck_result:?}",
        served_at - started
    );
    // The other call is served by the fresh state, and the stuck call is answered when the
    // watchdog gives up on it, not when (if ever) its thread returns.
    assert!(
        served_at - started < Duration::from_secs(5),
        "the other call waited {:?}",
        served_at - started
    );
    assert!(
        stuck_done - started < Duration::from_secs(5),
        "the stuck call was answered only after {:?}",
        stuck_done - started
    );
    let status = stuck_result.expect_err("the stuck call is given up");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    // The log line is written after the answer and read from the server's stderr meanwhile.
    let logged = Instant::now();
    while !s
        .log()
        .iter()
        .any(|l| l.contains("script state 0 replaced"))
        && logged.elapsed() < Duration::from_secs(10)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let log = s.log().join("\n");
    assert!(
        log.contains("script state 0 replaced"),
        "no replacement logged:\n{log}"
    );
    assert!(log.contains("without returning"), "{log}");
    still_serves(&client).await;
}

/// The server's peak resident memory, in MiB.
fn peak_rss_mib(pid: u32) -> u64 {
    common::proc_status_kib(pid, "VmHWM") / 1024
}

/// `gsub` with a replacement string builds its text outside Lua's memory, and a long one is
/// paused at each time slice (see `pausable`). Lua's count did not see those texts, so calls
/// paused in turn each built one as big as the memory the state had left: 24 calls widening
/// 1 MiB to 32 MiB on a 64 MiB state held them all at once. Those bytes now count, both for
/// the memory a text may take and for the mark above which a state keeps one call paused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn texts_paused_gsubs_build_count_against_the_memory_limit() {
    let (s, client) = start(&[
        "--script-states",
        "1",
        "--script-memory",
        "64",
        "--script-time-ms",
        "600000",
    ])
    .await;
    still_serves(&client).await;
    let before = peak_rss_mib(s.pid());
    let calls: Vec<_> = (0..24)
        .map(|_| {
            let c = client.clone();
            tokio::spawn(async move { c.unary("safety.Safety/Widen", json!({"n": 32})).await })
        })
        .collect();
    let mut done = 0;
    for call in calls {
        match call.await.unwrap() {
            Ok(r) => {
                assert_eq!(r["n"], json!("33554432"));
                done += 1;
            }
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
            }
        }
    }
    let peak = peak_rss_mib(s.pid());
    eprintln!("{done} of 24 calls widened; peak RSS {before} -> {peak} MiB");
    assert!(done > 0, "no call got through");
    // One call's text (32 MiB, in a buffer that may have doubled to 64) and the state's own
    // 64 MiB: a few hundred MiB at most, where 24 texts held at once took gigabytes.
    assert!(
        peak < before + 450,
        "peak RSS grew from {before} to {peak} MiB"
    );
    still_serves(&client).await;
}
