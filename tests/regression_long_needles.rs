//! Regression of `string.find(s, needle, init, true)` with a long needle: the plain search
//! read windows four needles long, so a 30 MB needle in a 60 MB string was searched in one
//! go the hook could not pause, holding the state (every other call on it waiting) past the
//! time budget. Long needles are searched by a rolling hash that pays for every piece it
//! reads and is paused between pieces like a pattern match.

mod common;

use std::time::{Duration, Instant};

use serde_json::json;

const PROTO: &str = r#"
syntax = "proto3";
package needles;

service S {
  rpc Find (Req) returns (Out);
  rpc Quick (Req) returns (Out);
}

message Req { int64 at = 1; }
message Out { string text = 1; }
"#;

const SCRIPT: &str = r#"
-- Built once, at load, so that a call spends its time in the search alone.
local HAY = ("a"):rep(40000000)
local NEEDLE = ("a"):rep(20000000) .. "b"

function Find(req)
  if req.at == 0 then return { text = tostring(HAY:find(NEEDLE, 1, true)) } end
  -- The needle placed at `at`: found there, not before.
  local hay = HAY:sub(1, req.at - 1) .. NEEDLE .. "a"
  return { text = tostring(hay:find(NEEDLE, 1, true)) }
end

function Quick() return { text = "quick" } end
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_plain_needle_is_searched_in_paused_pieces() {
    let handlers = r#"{ "service": "needles.S", "methods": {
  "Find": { "script": "needles.lua" }, "Quick": { "script": "needles.lua" } } }"#;
    let (_server, client, _dir) = common::serve_files(
        &[
            ("protos/needles.proto", PROTO),
            ("handlers/needles.json", handlers),
            ("handlers/needles.lua", SCRIPT),
        ],
        &[
            "--script-states",
            "1",
            "--script-time-ms",
            "60000",
            "--script-memory",
            "512",
        ],
    )
    .await;

    let probe = common::probe(&client, "needles.S/Quick", "quick", Duration::from_secs(3));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let out = client
        .unary("needles.S/Find", json!({ "at": 0 }))
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(out["text"], "nil", "after {took:?}");
    let (worst, calls) = probe.await.unwrap();
    assert!(
        worst < Duration::from_millis(300),
        "a call on the same state waited {worst:?} ({calls} calls; the search took {took:?})"
    );

    for at in [1, 12_345_679] {
        let out = client
            .unary("needles.S/Find", json!({ "at": at }))
            .await
            .unwrap();
        assert_eq!(out["text"], at.to_string());
    }
}
