//! Regression of `string.packsize`, `string.pack` and `string.unpack` given a long format:
//! Lua reads a format option by option in one C call the hook cannot pause, and the budget
//! was charged a unit per byte of it, so `string.packsize(("i"):rep(1e8))` held its state for
//! seconds (every other call on it waiting) and ran far past the time budget. Formats of more
//! than 64 KiB are refused at once, naming the function and the limit; formats up to it work.

mod common;

use std::time::{Duration, Instant};

use serde_json::json;

const PROTO: &str = r#"
syntax = "proto3";
package packs;

service S {
  rpc Pack (Req) returns (Out);
  rpc Quick (Req) returns (Out);
}

message Req { string name = 1; int64 n = 2; }
message Out { string text = 1; }
"#;

const SCRIPT: &str = r##"
-- 100 million options that take no data and no argument (`!` sets the alignment): built
-- once, at load, so that a call spends its time in the library function alone.
local LONG = ("!"):rep(100000000)

function Pack(req)
  local ok, r = pcall(function()
    if req.n == 0 then
      if req.name == "packsize" then return string.packsize(LONG) end
      if req.name == "pack" then return #string.pack(LONG) end
      return select("#", string.unpack(LONG, ""))
    end
    local fmt = ("i"):rep(req.n)
    if req.name == "packsize" then return string.packsize(fmt) end
    if req.name == "pack" then
      local zeros = {}
      for i = 1, req.n do zeros[i] = 0 end
      return #string.pack(fmt, table.unpack(zeros))
    end
    return select("#", string.unpack(fmt, ("\0"):rep(4 * req.n)))
  end)
  return { text = tostring(r) }
end

function Quick() return { text = "quick" } end
"##;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_pack_formats_are_refused_at_once_and_hold_no_state() {
    let handlers = r#"{ "service": "packs.S", "methods": {
  "Pack": { "script": "packs.lua" }, "Quick": { "script": "packs.lua" } } }"#;
    let (_server, client, _dir) = common::serve_files(
        &[
            ("protos/packs.proto", PROTO),
            ("handlers/packs.json", handlers),
            ("handlers/packs.lua", SCRIPT),
        ],
        &[
            "--script-states",
            "1",
            "--script-time-ms",
            "5000",
            "--script-memory",
            "512",
        ],
    )
    .await;

    for name in ["packsize", "pack", "unpack"] {
        // A format of 100 million options: refused before Lua reads it, while a call on the
        // same state goes on answering at once.
        let probe = common::probe(
            &client,
            "packs.S/Quick",
            "quick",
            Duration::from_millis(1500),
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        let started = Instant::now();
        let out = client
            .unary("packs.S/Pack", json!({ "name": name, "n": 0 }))
            .await
            .unwrap_or_else(|e| panic!("{name}: {e:?}"));
        let took = started.elapsed();
        let text = out["text"].as_str().unwrap_or_default();
        assert!(
            text.contains(&format!(
                "bad argument #1 to '{name}' (a format of 100000000 bytes; at most 65536 here)"
            )),
            "{name}: {text} after {took:?}"
        );
        let (worst, _) = probe.await.unwrap();
        assert!(
            worst < Duration::from_millis(400),
            "{name}: a call on the same state waited {worst:?} (the long format took {took:?})"
        );
    }

    // Up to the limit, formats work as in Lua.
    for (name, n, want) in [
        ("packsize", 65536, "262144"),
        ("pack", 65536, "262144"),
        ("unpack", 65536, "65537"),
    ] {
        let out = client
            .unary("packs.S/Pack", json!({ "name": name, "n": n }))
            .await
            .unwrap();
        assert_eq!(out["text"], want, "{name}");
    }
}
