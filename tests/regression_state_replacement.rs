//! Regressions of what calls hear when their Lua state runs out of memory or is replaced: every
//! call in progress is answered at once (never left waiting, even by a client that set no
//! deadline), a call that merely met a state filled by another call is not blamed for it, and
//! the call holding the memory is the one stopped. Scripts: tests/fixtures/replacement.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{fixtures, Client, Server};
use serde_json::json;
use tonic::Code;

const METHOD: &str = "helloworld.Greeter/SayHello";

/// How long any one call may go unanswered before the test calls it hung.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);

async fn start(extra: &[&str]) -> (Server, Client) {
    let protos = common::repo().join("protos");
    let handlers = fixtures().join("replacement/handlers");
    let (s, c) = common::serve_folders(&protos, &handlers, extra).await;
    (s, c)
}

/// A call with no deadline of its own; the test gives up on it after `within`.
async fn call(
    client: &Client,
    name: &str,
    within: Duration,
) -> Option<Result<String, tonic::Status>> {
    let answer = tokio::time::timeout(within, client.unary(METHOD, json!({ "name": name }))).await;
    answer
        .ok()
        .map(|r| r.map(|j| j["message"].as_str().unwrap_or_default().to_owned()))
}

fn code_of(r: &Result<String, tonic::Status>) -> Code {
    match r {
        Ok(_) => Code::Ok,
        Err(s) => s.code(),
    }
}

/// What the probes saw: answers by code (with one message each), and calls left unanswered.
#[derive(Default)]
struct Probes {
    codes: BTreeMap<String, (usize, String)>,
    unanswered: usize,
    slowest: Duration,
}

/// Runs `hog` calls one after the other (`rounds` times) while four tasks send trivial calls
/// back to back, none with a deadline; returns each hog's end and what the probes saw.
async fn hog_beside_probes(
    client: &Client,
    rounds: usize,
) -> (Vec<(Code, String, Duration)>, Probes) {
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Probes::default()));
    let probes: Vec<_> = (0..4)
        .map(|i| {
            let (client, stop, seen) = (client.clone(), stop.clone(), seen.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    let r = call(&client, &format!("probe {i}"), ANSWER_WITHIN).await;
                    let took = started.elapsed();
                    let mut seen = seen.lock().unwrap();
                    seen.slowest = seen.slowest.max(took);
                    match r {
                        None => {
                            seen.unanswered += 1;
                            return;
                        }
                        Some(r) => {
                            let message = r.as_ref().err().map(|s| s.message().to_owned());
                            let entry = seen
                                .codes
                                .entry(format!("{:?}", code_of(&r)))
                                .or_insert((0, message.unwrap_or_default()));
                            entry.0 += 1;
                        }
                    }
                }
            })
        })
        .collect();
    // The probes get going first.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut hogs = Vec::new();
    for _ in 0..rounds {
        let started = Instant::now();
        let r = call(client, "hog", Duration::from_secs(30))
            .await
            .expect("the hog call is answered within 30 s");
        let took = started.elapsed();
        let message = r.as_ref().err().map(|s| s.message().to_owned());
        eprintln!("hog: {:?} after {took:?}: {message:?}", code_of(&r));
        hogs.push((code_of(&r), message.unwrap_or_default(), took));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for p in probes {
        p.await.unwrap();
    }
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    eprintln!(
        "probes: {:?}; unanswered after {ANSWER_WITHIN:?}: {}; slowest answer {:?}",
        seen.codes, seen.unanswered, seen.slowest
    );
    (hogs, seen)
}

fn check_hog_run(s: &Server, hogs: &[(Code, String, Duration)], probes: &Probes) {
    assert_eq!(
        probes.unanswered,
        0,
        "probe calls left unanswered for {ANSWER_WITHIN:?}; log:\n{}",
        s.log().join("\n")
    );
    for (code, message) in probes.codes.iter() {
        assert!(
            code == "Ok" || code == "Unavailable",
            "a probe was answered {code} {message:?}: blamed for the hog's memory; warnings:\n{}",
            warnings(s)
        );
    }
    for (code, message, took) in hogs {
        assert_eq!(*code, Code::ResourceExhausted, "the hog: {message}");
        // Its time budget is 1 s of running; the bound leaves room for a loaded machine.
        assert!(
            *took < Duration::from_secs(6),
            "the hog ended only after {took:?}: {message}"
        );
    }
}

fn warnings(s: &Server) -> String {
    let log = s.log();
    let warnings: Vec<_> = log.iter().filter(|l| !l.contains(" INFO ")).collect();
    format!("{warnings:#?}")
}

async fn still_serves(client: &Client) {
    let r = call(client, "after", ANSWER_WITHIN)
        .await
        .expect("a call after the hog is answered");
    assert_eq!(r.expect("a call after the hog succeeds"), "hi after");
}

#[tokio::test]
async fn memory_hog_on_one_state_leaves_no_call_unanswered() {
    let (s, client) = start(&["--script-states", "1", "--script-memory", "64"]).await;
    still_serves(&client).await;
    let (hogs, probes) = hog_beside_probes(&client, 3).await;
    check_hog_run(&s, &hogs, &probes);
    still_serves(&client).await;
}

#[tokio::test]
async fn memory_hog_on_default_states_leaves_no_call_unanswered() {
    let (s, client) = start(&["--script-memory", "64"]).await;
    still_serves(&client).await;
    let (hogs, probes) = hog_beside_probes(&client, 3).await;
    check_hog_run(&s, &hogs, &probes);
    still_serves(&client).await;
}

/// A call alone on its state that fills the state's memory over many time slices, without
/// catching the error: the memory was its own, so it hears RESOURCE_EXHAUSTED naming the limit.
/// It heard UNAVAILABLE "out of memory because of other calls on it": by the time the memory
/// error was judged, the collection that followed it had been counted against the call, so it
/// seemed to have added nothing to a state that was full when its last time slice began.
#[tokio::test]
async fn a_call_filling_its_state_alone_is_told_it_passed_the_limit() {
    let (s, client) = start(&["--script-states", "1", "--script-memory", "64"]).await;
    still_serves(&client).await;
    for round in 0..3 {
        let r = call(&client, "fill", Duration::from_secs(30))
            .await
            .expect("the filling call is answered within 30 s");
        let status = r.expect_err("the filling call fails");
        assert_eq!(
            status.code(),
            Code::ResourceExhausted,
            "round {round}: {status:?}; warnings:\n{}",
            warnings(&s)
        );
        assert!(
            status.message().contains("memory limit of 64 MiB"),
            "round {round}: {status:?}"
        );
        still_serves(&client).await;
    }
}

/// Twenty calls that each hold 5 MiB fill a 100 MiB state with no one call to blame: the state
/// is replaced, and the calls in progress on it (waiting in `ctx:sleep`, no deadline) are told
/// so at once; the calls that come after are served by the fresh state.
#[tokio::test]
async fn replaced_state_answers_its_calls_in_progress() {
    let (s, client) = start(&["--script-states", "1", "--script-memory", "100"]).await;
    still_serves(&client).await;
    let started = Instant::now();
    let calls: Vec<_> = (0..20)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                let r = call(&client, "share 5", Duration::from_secs(20)).await;
                (r, started.elapsed())
            })
        })
        .collect();
    let mut answers = Vec::new();
    for c in calls {
        answers.push(c.await.unwrap());
    }
    let unanswered = answers.iter().filter(|(r, _)| r.is_none()).count();
    assert_eq!(
        unanswered,
        0,
        "calls left unanswered for 20 s; warnings:\n{}",
        warnings(&s)
    );
    let mut codes: BTreeMap<String, usize> = BTreeMap::new();
    let mut replaced = 0;
    for (r, took) in answers {
        let r = r.expect("answered");
        if let Err(status) = &r {
            if codes.is_empty() {
                eprintln!("{:?} after {took:?}: {}", status.code(), status.message());
            }
            assert_eq!(status.code(), Code::Unavailable, "{status:?}");
            if status.message().contains("was replaced") {
                replaced += 1;
            }
        }
        *codes.entry(format!("{:?}", code_of(&r))).or_default() += 1;
    }
    eprintln!("answers: {codes:?}, {replaced} told their state was replaced");
    // The log line is written after the answers.
    s.wait_for_log("script state 0 replaced");
    assert!(
        replaced > 0,
        "no call heard its state was replaced: {codes:?}"
    );
    still_serves(&client).await;
}

/// A call stuck in one library call makes the watchdog replace its state: a call waiting on
/// the same state (no deadline) cannot move until the stuck one returns, so it is answered
/// UNAVAILABLE at the replacement, not when the stuck thread comes back.
#[tokio::test]
async fn watchdog_replacement_answers_every_call_on_the_stuck_state() {
    let (s, client) = start(&[
        "--script-states",
        "1",
        "--script-memory",
        "1024",
        "--script-watchdog-ms",
        "100",
        "--script-time-ms",
        "600000",
    ])
    .await;
    still_serves(&client).await;
    let c = client.clone();
    let napping = tokio::spawn(async move {
        let started = Instant::now();
        let r = call(&c, "nap", Duration::from_secs(20)).await;
        (r, started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let c = client.clone();
    let stuck =
        tokio::spawn(async move { call(&c, "stuck 200000000", Duration::from_secs(30)).await });
    let (napped, took) = napping.await.unwrap();
    let napped = napped.unwrap_or_else(|| {
        panic!(
            "the call waiting beside a stuck one was left unanswered for 20 s; warnings:\n{}",
            warnings(&s)
        )
    });
    eprintln!("the waiting call: {napped:?} after {took:?}");
    let status = napped.expect_err("the waiting call is given up with its state");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("was replaced"), "{status:?}");
    assert!(
        took < Duration::from_secs(10),
        "answered only after {took:?}"
    );
    let stuck = stuck.await.unwrap().expect("the stuck call is answered");
    assert_eq!(code_of(&stuck), Code::Unavailable, "{stuck:?}");
    still_serves(&client).await;
}
