//! Regressions of what a replaced generation keeps alive.
//!
//! - Every call held the whole generation it started on until it ended: an idle declarative
//!   bidi stream (an `echo`, no Lua) kept that generation's Lua states (their threads, their
//!   copies of the data) and everything else it had loaded. A test harness that PUTs a handler
//!   per test while its app keeps one stream open grew by a full set of states and data per
//!   PUT (a 12 MB data file: 143 MB and 3 threads each, 1.3 GB after 8), until the streams
//!   ended. A call now holds only its method's entry: a declarative call keeps its handler, a
//!   script call keeps the Lua states of its generation (it runs on them) until it ends.

mod common;

use std::time::{Duration, Instant};

use common::{project_folder, put_handler as put, rss_mib, serve_folders, threads};
use serde_json::{json, Value as Json};

const PROTO: &str = r#"syntax = "proto3";
package t;
message B { string s = 1; int32 n = 2; }
service T {
  rpc Echo(B) returns (B);
  rpc Scr(B) returns (B);
  rpc Sstream(B) returns (stream B);
  rpc Bidi(stream B) returns (stream B);
}
"#;

const HANDLERS: &str = r#"{ "service": "t.T", "methods": {
  "Echo": { "echo": {} },
  "Scr": { "script": "t.lua" },
  "Sstream": { "script": "t.lua" },
  "Bidi": { "echo": {} }
} }"#;

/// Both scripts read the data set, so every Lua state holds its copy.
const SCRIPT: &str = r#"
function Scr(req, ctx) return { s = "rows", n = #data.big } end
function Sstream(req, ctx)
  for i = 1, req.n do ctx:send({ n = i, s = tostring(#data.big) }); ctx:sleep(100) end
end
"#;

/// Rows in the data set: a JSON file of about 1.7 MB.
const ROWS: usize = 25_000;
/// Items of the script call left open across a change (one each 100 ms).
const SCRIPT_ITEMS: usize = 20;
/// Lua states per generation.
const STATES: u64 = 2;
/// Handler changes, each made with one more call open on the generation it replaces.
const CHANGES: usize = 8;

fn data_file() -> String {
    let rows: Vec<Json> = (0..ROWS)
        .map(|i| json!({"name": format!("row number {i:08}"), "v": [i, i * 3, i * 7, i + 1], "k": i}))
        .collect();
    Json::Array(rows).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_declarative_calls_do_not_keep_replaced_generations_lua_states() {
    let data = data_file();
    let dir = project_folder(&[
        ("protos/t.proto", PROTO),
        ("handlers/t.json", HANDLERS),
        ("handlers/t.lua", SCRIPT),
        ("data/big.json", &data),
    ]);
    let data_dir = dir.path().join("data");
    let states = STATES.to_string();
    let (server, client) = serve_folders(
        &dir.path().join("protos"),
        &dir.path().join("handlers"),
        &[
            "--no-watch",
            "--data",
            data_dir.to_str().unwrap(),
            "--script-states",
            &states,
        ],
    )
    .await;
    let rows = json!({"s": "rows", "n": ROWS});
    assert_eq!(client.unary("t.T/Scr", json!({})).await.unwrap(), rows);

    let threads_before = threads(&server);
    let rss_before = rss_mib(&server);
    let started = Instant::now();
    let mut open = Vec::new();
    let mut script_call = None;
    for i in 1..=CHANGES {
        let (tx, resp) = client.bidi_open("t.T/Bidi", vec![json!({"n": i})]).await;
        let mut stream = resp.expect("Bidi opens");
        let echoed = stream.message().await.unwrap().expect("an echo");
        assert_eq!(common::to_json(&echoed)["n"], i);
        open.push((tx, stream));
        if i == CHANGES {
            // A script call open across the last change runs to its end on the states it
            // started on.
            let call = client
                .server_stream_open("t.T/Sstream", json!({"n": SCRIPT_ITEMS}))
                .await
                .expect("Sstream opens");
            script_call = Some(call);
        }
        put(
            &server,
            "t.T/Echo",
            &json!({"reply": {"s": format!("v{i}")}}),
        )
        .await;
        eprintln!(
            "{i} open calls, generation {}: threads {} RSS {} MiB ({:?})",
            i + 1,
            threads(&server),
            rss_mib(&server),
            started.elapsed()
        );
    }
    // A replaced generation's state threads stop soon after it is dropped: wait for them,
    // not for a fixed time.
    let settle = Instant::now();
    let (mut threads_after, mut rss_after) = (threads(&server), rss_mib(&server));
    // The generation served now runs as many states as the one before; the states of the
    // generation the script call started on, and the threads tokio keeps a while after a build,
    // may be there too.
    let bound = threads_before + 2 * STATES + 2;
    while threads_after > bound && settle.elapsed() < Duration::from_secs(15) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        (threads_after, rss_after) = (threads(&server), rss_mib(&server));
    }
    eprintln!(
        "after {CHANGES} changes with {CHANGES} calls open: threads {threads_before} -> \
         {threads_after}, RSS {rss_before} -> {rss_after} MiB (settled in {:?})",
        settle.elapsed()
    );
    // Each generation has STATES state threads: kept alive by the open calls, 8 changes added
    // 8 * STATES threads. The script call's generation may be kept, and tokio keeps a thread or
    // two a while after a build.
    assert!(
        threads_after <= bound,
        "{CHANGES} changes with declarative calls open on each generation: threads \
         {threads_before} -> {threads_after} (each generation runs {STATES} Lua states)"
    );
    // A generation costs about 30x the data file (each state's copy, ~10x, and the text the
    // server keeps): ~50 MB here, so 8 kept generations are ~400 MB. Besides the one served,
    // the script call keeps the one it started on; a third is room for the allocator.
    let generation_mib = (30 * data.len() as u64) >> 20;
    assert!(
        generation_mib >= 40,
        "the data file is {} bytes",
        data.len()
    );
    assert!(
        rss_after < rss_before + 3 * generation_mib,
        "{CHANGES} changes with declarative calls open on each generation: RSS \
         {rss_before} -> {rss_after} MiB (a generation takes ~{generation_mib} MiB)"
    );

    // Only a script call keeps a replaced generation's states, and the server says so.
    for line in server.log() {
        if line.contains("replaced generation(s)") {
            assert!(line.contains("of 1 replaced"), "{line}");
        }
    }

    // What is served is the last change, with scripts and data.
    assert_eq!(
        client.unary("t.T/Echo", json!({"n": 1})).await.unwrap(),
        json!({"s": format!("v{CHANGES}")})
    );
    assert_eq!(client.unary("t.T/Scr", json!({})).await.unwrap(), rows);

    // Every old call still answers, and ends well.
    for (i, (tx, mut stream)) in open.into_iter().enumerate() {
        let n = 100 + i as i64;
        tx.send(json!({"n": n})).await.unwrap();
        let echoed = stream.message().await.unwrap().expect("an echo");
        assert_eq!(common::to_json(&echoed)["n"], n);
        drop(tx);
        assert!(
            stream.message().await.unwrap().is_none(),
            "call {i} ends OK"
        );
    }
    let mut script_call = script_call.expect("opened");
    let mut items = 0;
    while let Some(item) = script_call.message().await.expect("Sstream ends OK") {
        items += 1;
        assert_eq!(common::to_json(&item)["s"], ROWS.to_string());
    }
    assert_eq!(items, SCRIPT_ITEMS, "the script call ran to its end");
}
