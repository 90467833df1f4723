//! Work a script starts inside Lua's C library is bounded by the call's budget: each case in
//! tests/fixtures/stdlib/handlers/trap.lua would, on a plain Lua, run for minutes (or forever)
//! inside C calls the instruction hook never sees. Here each answers RESOURCE_EXHAUSTED within
//! a few seconds, and the server goes on serving.

mod common;

use std::time::{Duration, Instant};

use common::{fixtures, Client, Server};
use serde_json::{json, Value as Json};
use tonic::metadata::MetadataMap;
use tonic::{Code, Status};

/// Far longer than any bounded case takes, far shorter than the unbounded ones.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);
/// A bounded case answers well within this, even on a busy machine.
const QUICK: Duration = Duration::from_secs(10);

async fn trap(instructions: &str) -> (Server, Client) {
    let dir = fixtures().join("stdlib");
    let server = Server::start(&[
        "--protos",
        dir.join("protos").to_str().unwrap(),
        "--handlers",
        dir.join("handlers").to_str().unwrap(),
        "--script-instructions",
        instructions,
    ]);
    let client = Client::connect(server.addr, common::pool(&dir.join("protos"))).await;
    (server, client)
}

async fn run(client: &Client, case: &str) -> (Result<Json, Status>, Duration) {
    let mut md = MetadataMap::new();
    md.insert("grpc-timeout", "30S".parse().unwrap());
    let started = Instant::now();
    let call = client.unary_with("trap.Trap/Run", json!({ "name": case }), md);
    let result = match tokio::time::timeout(CLIENT_TIMEOUT, call).await {
        Ok(r) => r.map(|(j, _)| j),
        Err(_) => Err(Status::deadline_exceeded("client timeout")),
    };
    (result, started.elapsed())
}

/// The case stops with RESOURCE_EXHAUSTED (the budget), quickly, and the server still answers.
async fn stops_on_budget(client: &Client, case: &str, budget: &str) {
    let (result, took) = run(client, case).await;
    let status = result.expect_err(case);
    assert_eq!(status.code(), Code::ResourceExhausted, "{case}: {status:?}");
    assert!(
        status
            .message()
            .contains(&format!("budget of {budget} Lua instructions")),
        "{case}: {status:?}"
    );
    assert!(took < QUICK, "{case} took {took:?}");
    still_serves(client).await;
}

async fn still_serves(client: &Client) {
    let (result, took) = run(client, "ok").await;
    assert_eq!(result.unwrap()["value"], "ok");
    assert!(took < QUICK, "the next call took {took:?}");
}

#[tokio::test]
async fn pattern_backtracking_is_bounded() {
    let (_s, client) = trap("2000000").await;
    stops_on_budget(&client, "backtracking", "2000000").await;
    stops_on_budget(&client, "backtracking_short", "2000000").await;
}

#[tokio::test]
async fn huge_gsub_is_charged() {
    // Enough for the 3e7-byte subject (about 1.1e7), not for 3e7 replacements.
    let (_s, client) = trap("12000000").await;
    stops_on_budget(&client, "gsub", "12000000").await;
}

#[tokio::test]
async fn rep_of_empty_string_is_bounded() {
    // Nothing to build, so nothing to charge: the answer is "" at once.
    let (_s, client) = trap("2000000").await;
    let (result, took) = run(&client, "rep_empty").await;
    let out = result.unwrap();
    assert_eq!(out["value"], "[]");
    assert!(took < QUICK, "took {took:?}");
    stops_on_budget(&client, "rep_loop", "2000000").await;
}

#[tokio::test]
async fn table_move_huge_range_is_bounded() {
    let (_s, client) = trap("2000000").await;
    stops_on_budget(&client, "table_move", "2000000").await;
}

#[tokio::test]
async fn table_concat_huge_is_bounded() {
    let (_s, client) = trap("2000000").await;
    stops_on_budget(&client, "table_concat", "2000000").await;
}

#[tokio::test]
async fn table_unpack_insert_and_sort_are_charged() {
    let (_s, client) = trap("2000000").await;
    for case in [
        "table_unpack",
        "table_insert_front",
        "table_sort",
        "select_loop",
    ] {
        stops_on_budget(&client, case, "2000000").await;
    }
}

#[tokio::test]
async fn big_string_work_is_charged() {
    let (_s, client) = trap("2000000").await;
    for case in ["upper_loop", "utf8_len_loop", "format_loop", "pack_padding"] {
        stops_on_budget(&client, case, "2000000").await;
    }
}

#[tokio::test]
async fn pattern_errors_and_ordinary_patterns_behave_as_in_lua() {
    let (_s, client) = trap("2000000").await;
    let (result, _) = run(&client, "patterns").await;
    assert_eq!(result.unwrap()["value"], "the,quick,brown,fox|v=k; b=a|2");
    let (result, _) = run(&client, "bad_pattern").await;
    let value = result.unwrap()["value"].as_str().unwrap().to_owned();
    let source = std::fs::read_to_string(fixtures().join("stdlib/handlers/trap.lua")).unwrap();
    let line = source
        .lines()
        .position(|l| l.contains(r#"local m = ("abc"):match("%")"#))
        .unwrap()
        + 1;
    assert!(
        value.starts_with("false|malformed pattern (missing ']')|"),
        "{value}"
    );
    assert!(
        value.ends_with(&format!(
            "trap.lua:{line}: malformed pattern (ends with '%')"
        )),
        "{value}"
    );
}
