//! Regressions of what `regex` tests in `rules` make a load hold.
//!
//! Each pattern was held under the regex crate's 10 MiB limit, and nothing more: `\w{100}N`
//! compiles to about 6 MiB, so a 17 KB handler file of 200 such rules took 1.2 GB and 13 s
//! (release build) to load, in `check` and through a `PUT` of the admin API alike, and a body
//! under the admin API's 1 MiB limit took tens of GB. A load now has one budget for all its
//! patterns together, and a pattern written many times is compiled once.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{binary, proc_status_kib, repo, Server};
use serde_json::{json, Value as Json};

const RULES: usize = 200;

/// A `rules` entry of `RULES` rules testing `name` against `pattern(i)`.
fn rules_entry(pattern: impl Fn(usize) -> String) -> Json {
    let rules: Vec<Json> = (0..RULES)
        .map(|i| json!({"when": {"request": {"name": {"regex": pattern(i)}}}, "reply": {"message": "m"}}))
        .collect();
    json!({"rules": rules})
}

fn handler_file(entry: Json) -> String {
    json!({"service": "helloworld.Greeter", "methods": {"SayHello": entry}}).to_string()
}

/// `protoserve check` of the repository's protos and `file` as the only handler file: its exit
/// code, what it wrote to stderr, the highest resident memory seen while it ran (KiB) and how
/// long it took.
fn check(file: &str) -> (Option<i32>, String, u64, Duration) {
    let handlers = tempfile::tempdir().unwrap();
    std::fs::write(handlers.path().join("greet.json"), file).unwrap();
    let started = Instant::now();
    let mut child = Command::new(binary())
        .current_dir(repo())
        .args(["check", "--protos", "protos", "--handlers"])
        .arg(handlers.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut peak = 0;
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if started.elapsed() > Duration::from_secs(300) {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        let status = std::fs::read_to_string(format!("/proc/{}/status", child.id()));
        if let Some(rss) = status.ok().and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        }) {
            peak = peak.max(rss);
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let elapsed = started.elapsed();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    (code, err, peak, elapsed)
}

/// The most resident memory a load of these files may take, in KiB (the 64 MiB of compiled
/// patterns, the protos and the process itself, with room to spare).
const PEAK_KIB: u64 = 400 << 10;

#[test]
fn distinct_heavy_patterns_are_refused_past_the_load_budget() {
    let (code, err, peak, elapsed) =
        check(&handler_file(rules_entry(|i| format!(r"\w{{100}}N{i}"))));
    eprintln!("check: {elapsed:?}, peak RSS {peak} KiB");
    assert_eq!(code, Some(2), "{err}");
    let first = err
        .lines()
        .find(|l| l.contains("regex too large"))
        .unwrap_or_else(|| panic!("no pattern refused for the budget:\n{err}"));
    assert!(
        first.contains("greet.json:1:")
            && first.contains(".when.request.name.regex: ")
            && first.contains("64 MiB")
            && first.contains("(?-u:\\w)"),
        "{first}"
    );
    assert!(peak < PEAK_KIB, "check took {peak} KiB");
    assert!(elapsed < Duration::from_secs(120), "check took {elapsed:?}");
}

#[test]
fn identical_heavy_patterns_compile_once() {
    let (code, err, peak, elapsed) = check(&handler_file(rules_entry(|_| r"\w{100}N".into())));
    eprintln!("check: {elapsed:?}, peak RSS {peak} KiB");
    assert_eq!(code, Some(0), "{err}");
    // One compiled pattern is about 6 MiB; 200 of them were 1.2 GB.
    assert!(peak < 150 << 10, "check took {peak} KiB");
}

#[tokio::test]
async fn a_runtime_handler_past_the_budget_is_refused_with_400() {
    let server = Server::repo_default();
    let before = proc_status_kib(server.pid(), "VmHWM");
    let started = Instant::now();
    let body = rules_entry(|i| format!(r"\w{{100}}N{i}")).to_string();
    let (status, answer) = server
        .admin_call(
            "PUT",
            "/v1/handlers/helloworld.Greeter/SayHello",
            None,
            Some(&body),
        )
        .await;
    let elapsed = started.elapsed();
    let after = proc_status_kib(server.pid(), "VmHWM");
    eprintln!("PUT: {elapsed:?}, VmHWM {before} KiB before, {after} KiB after, answer {answer:#}");
    assert_eq!(status, 400, "{answer:#}");
    assert!(answer.to_string().contains("regex too large"), "{answer:#}");
    assert!(
        after - before < PEAK_KIB,
        "the PUT took {} KiB",
        after - before
    );
}
