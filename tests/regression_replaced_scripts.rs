//! Regressions of the Lua states replaced generations keep for the script calls open on them.
//!
//! - Every rebuild started new Lua states, even when nothing they are built from changed (a PUT
//!   of a declarative handler, an edit of a reply), and a script stream open on the replaced
//!   generation kept that generation's states running (their threads, each state's copy of the
//!   data sets) until it ended. A client that kept one script stream open across each of many
//!   PUTs grew the server by a full set of states per PUT (8 PUTs: 24 threads more and about
//!   8 × 35 MiB), without bound. A rebuild now keeps the states when their scripts, data sets,
//!   options and schema are the same; a change to a script or a data set still builds new ones.
//! - A change that does replace the scripts (here: a script edited before each reload) could
//!   still be made with a stream open each time. At most `--keep-replaced-scripts` replaced sets
//!   of states (default 2) now stay for the calls open on them: a further one closes the oldest,
//!   whose streams end at once with UNAVAILABLE ("… replaced by a reload; call again") and whose
//!   threads exit, while the newest keep working.
//! - Closed states whose calls could not end yet (their clients read nothing, so the status waits
//!   behind the messages sent) kept their watchdog thread: one per closed set (6: 5 threads
//!   more). Closing stops it.
//! - A module a script looked for and did not find (`pcall(require, "extra")`) was not among
//!   what a rebuild compares, so creating it later kept the states, and the script went on
//!   answering without it (while `check` of the same folder passed). A module file that could
//!   not be read counts as an input too now: once it appears, the states are new.

mod common;

use std::time::{Duration, Instant};

use common::{project_folder, put_handler as put, rss_mib, serve_folders, threads, Client, Server};
use serde_json::{json, Value as Json};
use tonic::Code;

const PROTO: &str = r#"syntax = "proto3";
package t;
message B { string s = 1; int32 n = 2; }
service T {
  rpc Echo(B) returns (B);
  rpc Scr(B) returns (B);
  rpc Chat(stream B) returns (stream B);
  rpc Flood(B) returns (stream B);
}
"#;

const HANDLERS: &str = r#"{ "service": "t.T", "methods": {
  "Echo": { "reply": { "s": "file" } },
  "Scr": { "script": "t.lua" },
  "Chat": { "script": "t.lua" },
  "Flood": { "script": "t.lua" }
} }"#;

/// The script of version `v`: it reads the data set as it loads, so every Lua state holds its
/// copy; each answer names the version it ran.
fn script(v: usize) -> String {
    format!(
        r#"
local VERSION = "v{v}"
local ROWS = #data.big
function Scr(req, ctx) return {{ s = VERSION, n = ROWS }} end
function Chat(notes, ctx)
  for note in notes do ctx:send({{ s = VERSION, n = note.n }}) end
end
function Flood(req, ctx)
  local big = string.rep("x", 60000)
  while true do ctx:send({{ s = big }}) end
end
"#
    )
}

/// Rows in the data set: a JSON file of about 1.7 MB.
const ROWS: usize = 25_000;
/// Lua states per set.
const STATES: u64 = 2;
/// Threads a set of states runs: one per state and its watchdog.
const SET_THREADS: u64 = STATES + 1;
/// Rebuilds, each made with one more script stream open.
const CHANGES: usize = 8;
/// Script changes, each made with one more script stream open (each builds new states).
const SCRIPT_CHANGES: usize = 5;
/// Streams whose clients stop reading, each on states a script change then closes.
const STALLED: usize = 6;

fn data_file(rows: usize) -> String {
    let rows: Vec<Json> = (0..rows)
        .map(|i| json!({"name": format!("row number {i:08}"), "v": [i, i * 3, i * 7, i + 1], "k": i}))
        .collect();
    Json::Array(rows).to_string()
}

/// About what one set of states costs: each state's tables (~10x the file) and the text.
fn set_mib(data: &str) -> u64 {
    (30 * data.len() as u64) >> 20
}

/// Waits (up to 15 s) for the thread count to fall to `bound`: closed states' threads exit
/// soon after, not at once.
async fn settle(server: &Server, bound: u64) -> (u64, u64) {
    let started = Instant::now();
    loop {
        let (t, rss) = (threads(server), rss_mib(server));
        if t <= bound || started.elapsed() > Duration::from_secs(15) {
            return (t, rss);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn reload(server: &Server) {
    let (status, body) = server.admin_call("POST", "/v1/reload", None, None).await;
    assert_eq!(status, 200, "reload: {body:#}");
}

type Chat = (
    tokio::sync::mpsc::Sender<Json>,
    tonic::Streaming<prost_reflect::DynamicMessage>,
);

/// Opens a Chat stream and reads the answer to its first note: the script version it runs.
async fn open_chat(client: &Client, n: i64) -> (Chat, Json) {
    let (tx, resp) = client.bidi_open("t.T/Chat", vec![json!({"n": n})]).await;
    let mut stream = resp.expect("Chat opens");
    let first = stream
        .message()
        .await
        .expect("Chat answers")
        .expect("an answer");
    ((tx, stream), common::to_json(&first))
}

/// Sends one more note on a Chat stream and reads the answer, or the status the call ended
/// with (the note is not sent if the call ended already).
async fn chat(stream: &mut Chat, n: i64) -> Result<Json, tonic::Status> {
    let _ = stream.0.send(json!({"n": n})).await;
    match stream.1.message().await {
        Ok(Some(m)) => Ok(common::to_json(&m)),
        Ok(None) => panic!("the stream ended without an answer to note {n}"),
        Err(status) => Err(status),
    }
}

async fn start(dir: &tempfile::TempDir, extra: &[&str]) -> (Server, Client) {
    let data_dir = dir.path().join("data");
    let states = STATES.to_string();
    let mut args = vec![
        "--no-watch",
        "--data",
        data_dir.to_str().unwrap(),
        "--script-states",
        &states,
    ];
    args.extend_from_slice(extra);
    serve_folders(
        &dir.path().join("protos"),
        &dir.path().join("handlers"),
        &args,
    )
    .await
}

/// A project folder with the test's proto, handlers, the first version of the script and a
/// data set of `rows` rows.
fn folder(rows: usize) -> tempfile::TempDir {
    project_folder(&[
        ("protos/t.proto", PROTO),
        ("handlers/t.json", HANDLERS),
        ("handlers/t.lua", &script(0)),
        ("data/big.json", &data_file(rows)),
    ])
}

/// Closes each numbered stream's request side and checks its call ends with OK.
async fn end_well(streams: impl Iterator<Item = (usize, Chat)>) {
    for (i, (tx, mut stream)) in streams {
        drop(tx);
        assert!(
            stream.message().await.expect("ends OK").is_none(),
            "stream {i} ends"
        );
    }
}

fn log_lines(server: &Server, needle: &str) -> Vec<String> {
    server
        .log()
        .into_iter()
        .filter(|l| l.contains(needle))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuilds_that_change_no_script_keep_the_lua_states() {
    let dir = folder(ROWS);
    let (server, client) = start(&dir, &[]).await;
    assert_eq!(
        client.unary("t.T/Scr", json!({})).await.unwrap(),
        json!({"s": "v0", "n": ROWS})
    );
    let mut open = Vec::new();
    let (call, first) = open_chat(&client, 10).await;
    assert_eq!(first, json!({"s": "v0", "n": 10}));
    open.push(call);

    let threads_before = threads(&server);
    let rss_before = rss_mib(&server);
    for i in 1..=CHANGES {
        put(
            &server,
            "t.T/Echo",
            &json!({"reply": {"s": format!("put {i}")}}),
        )
        .await;
        let (call, first) = open_chat(&client, i as i64).await;
        assert_eq!(first, json!({"s": "v0", "n": i}));
        open.push(call);
        eprintln!(
            "PUT {i}, {} script streams open: threads {} RSS {} MiB",
            i + 1,
            threads(&server),
            rss_mib(&server)
        );
    }
    // A reload that changes nothing (it compiles the protos again) keeps them too.
    reload(&server).await;
    let (call, first) = open_chat(&client, 100).await;
    assert_eq!(first, json!({"s": "v0", "n": 100}));
    open.push(call);

    let bound = threads_before + 2;
    let (threads_after, rss_after) = settle(&server, bound).await;
    eprintln!(
        "after {CHANGES} PUTs and a reload, {} script streams open: threads {threads_before} -> \
         {threads_after}, RSS {rss_before} -> {rss_after} MiB",
        open.len()
    );
    // Each set of states is STATES threads and a watchdog: new states per PUT, each kept by
    // the stream opened on it, added SET_THREADS threads per PUT. Tokio may keep a blocking
    // thread or two a while after a build.
    assert!(
        threads_after <= bound,
        "{CHANGES} PUTs of a declarative handler, each with a script stream open: threads \
         {threads_before} -> {threads_after} (a set of Lua states runs {SET_THREADS})"
    );
    let data = data_file(ROWS);
    let set = set_mib(&data);
    assert!(set >= 40, "the data file is {} bytes", data.len());
    assert!(
        rss_after < rss_before + set,
        "{CHANGES} PUTs of a declarative handler, each with a script stream open: RSS \
         {rss_before} -> {rss_after} MiB (a set of states takes ~{set} MiB)"
    );
    let same = log_lines(&server, "scripts on the same Lua states");
    assert_eq!(same.len(), CHANGES + 1, "{same:#?}");
    assert!(log_lines(&server, "replaced generation(s)").is_empty());
    assert!(log_lines(&server, "closed the Lua states").is_empty());

    // Every stream still runs, on the states it started on.
    for (i, call) in open.iter_mut().enumerate() {
        let n = 1000 + i as i64;
        assert_eq!(chat(call, n).await.unwrap(), json!({"s": "v0", "n": n}));
    }
    assert_eq!(
        client.unary("t.T/Echo", json!({})).await.unwrap(),
        json!({"s": format!("put {CHANGES}")})
    );

    // A changed data set builds new states: scripts see it.
    let fewer = data_file(ROWS / 2);
    std::fs::write(dir.path().join("data/big.json"), &fewer).unwrap();
    reload(&server).await;
    assert_eq!(
        client.unary("t.T/Scr", json!({})).await.unwrap(),
        json!({"s": "v0", "n": ROWS / 2})
    );
    // So does a changed script.
    std::fs::write(dir.path().join("handlers/t.lua"), script(1)).unwrap();
    reload(&server).await;
    assert_eq!(
        client.unary("t.T/Scr", json!({})).await.unwrap(),
        json!({"s": "v1", "n": ROWS / 2})
    );
    assert_eq!(log_lines(&server, "scripts on new Lua states").len(), 2);
    // The streams opened before run on the first states, kept for them (one replaced set of
    // the two kept at most, as the second set ran no call).
    for (i, call) in open.iter_mut().enumerate() {
        let n = 2000 + i as i64;
        assert_eq!(chat(call, n).await.unwrap(), json!({"s": "v0", "n": n}));
    }
    end_well(open.into_iter().enumerate()).await;
    assert!(log_lines(&server, "panicked").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn script_changes_with_streams_open_close_the_oldest_replaced_states() {
    let dir = folder(ROWS);
    // The default --keep-replaced-scripts: 2.
    let keep = 2;
    let (server, client) = start(&dir, &[]).await;
    assert_eq!(
        client.unary("t.T/Scr", json!({})).await.unwrap(),
        json!({"s": "v0", "n": ROWS})
    );
    let threads_before = threads(&server);
    let rss_before = rss_mib(&server);

    // One stream per version of the script, each opened before the script changes again.
    let started = Instant::now();
    let mut open = Vec::new();
    for v in 0..=SCRIPT_CHANGES {
        if v > 0 {
            std::fs::write(dir.path().join("handlers/t.lua"), script(v)).unwrap();
            reload(&server).await;
        }
        let (call, first) = open_chat(&client, 10 + v as i64).await;
        assert_eq!(first, json!({"s": format!("v{v}"), "n": 10 + v}));
        open.push(call);
        eprintln!(
            "script v{v}, {} streams open: threads {} RSS {} MiB ({:?})",
            v + 1,
            threads(&server),
            rss_mib(&server),
            started.elapsed()
        );
    }

    // The served states, and those of the `keep` newest replaced generations.
    let bound = threads_before + keep as u64 * SET_THREADS + 2;
    let (threads_after, rss_after) = settle(&server, bound).await;
    eprintln!(
        "after {SCRIPT_CHANGES} script changes with a stream open on each: threads {threads_before} -> \
         {threads_after}, RSS {rss_before} -> {rss_after} MiB"
    );
    assert!(
        threads_after <= bound,
        "{SCRIPT_CHANGES} script changes with a stream open on each: threads {threads_before} -> \
         {threads_after} (a set of Lua states runs {SET_THREADS}; {keep} replaced sets may stay)"
    );
    // The served set, the kept ones and one set's worth of slack (the estimate of a set is
    // rough, and freed pages go back to the system as the closed threads' heaps are let go):
    // before the bound, 5 changes held 5 or more sets.
    let set = set_mib(&data_file(ROWS));
    assert!(
        rss_after < rss_before + (keep as u64 + 2) * set,
        "{SCRIPT_CHANGES} script changes with a stream open on each: RSS {rss_before} -> {rss_after} \
         MiB (a set of states takes ~{set} MiB; {keep} replaced sets may stay)"
    );

    // The oldest streams were ended, saying why; the newest run on.
    for (v, call) in open.iter_mut().enumerate() {
        let n = 100 + v as i64;
        let answer = chat(call, n).await;
        if v + keep < SCRIPT_CHANGES {
            let status = answer.expect_err("the stream's states were closed");
            assert_eq!(status.code(), Code::Unavailable, "stream v{v}: {status:?}");
            assert!(
                status
                    .message()
                    .contains("the scripts this call ran on were replaced by a reload; call again"),
                "stream v{v}: {status:?}"
            );
        } else {
            assert_eq!(
                answer.unwrap_or_else(|s| panic!("stream v{v} runs: {s:?}")),
                json!({"s": format!("v{v}"), "n": n})
            );
        }
    }
    let closed = log_lines(&server, "closed the Lua states of generation");
    assert_eq!(closed.len(), SCRIPT_CHANGES - keep, "{closed:#?}");
    assert!(
        closed[0].contains("generation 1:") && closed[0].contains("1 script call(s)"),
        "{}",
        closed[0]
    );
    // A new call runs the newest script.
    let (answers, status) = client.bidi("t.T/Chat", vec![json!({"n": 7})]).await;
    assert!(status.is_none(), "{status:?}");
    assert_eq!(
        answers,
        vec![json!({"s": format!("v{SCRIPT_CHANGES}"), "n": 7})]
    );
    // The streams left end well.
    end_well(open.into_iter().enumerate().skip(SCRIPT_CHANGES - keep)).await;
    assert!(log_lines(&server, "panicked").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_replaced_scripts_zero_ends_the_calls_of_replaced_scripts_at_once() {
    let dir = folder(100);
    let (server, client) = start(&dir, &["--keep-replaced-scripts", "0"]).await;
    let (mut old, first) = open_chat(&client, 1).await;
    assert_eq!(first, json!({"s": "v0", "n": 1}));
    // A PUT of a declarative handler keeps the states, and the stream.
    put(&server, "t.T/Echo", &json!({"reply": {"s": "put"}})).await;
    assert_eq!(chat(&mut old, 2).await.unwrap(), json!({"s": "v0", "n": 2}));
    // A changed script replaces them: the stream ends at once.
    std::fs::write(dir.path().join("handlers/t.lua"), script(1)).unwrap();
    reload(&server).await;
    let status = chat(&mut old, 3).await.expect_err("closed");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("replaced by a reload"),
        "{status:?}"
    );
    let (answers, status) = client.bidi("t.T/Chat", vec![json!({"n": 4})]).await;
    assert!(status.is_none(), "{status:?}");
    assert_eq!(answers, vec![json!({"s": "v1", "n": 4})]);
    assert_eq!(
        client.unary("t.T/Scr", json!({})).await.unwrap(),
        json!({"s": "v1", "n": 100})
    );
    assert_eq!(log_lines(&server, "closed the Lua states").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_states_of_streams_whose_clients_do_not_read_leave_no_threads() {
    let dir = folder(100);
    let (server, client) = start(&dir, &["--keep-replaced-scripts", "0"]).await;
    assert_eq!(
        client.unary("t.T/Scr", json!({})).await.unwrap(),
        json!({"s": "v0", "n": 100})
    );
    let threads_before = threads(&server);
    // Each stream's script fills its flow-control window and its outbox, and waits in
    // ctx:send: the client reads one message and no more, so the status its call ends with
    // waits behind what was sent, and the call keeps its handler (and states' pool) a while.
    // Each on its own connection, whose window it fills.
    let mut stalled = Vec::new();
    for v in 1..=STALLED {
        let own = Client::connect(server.addr, common::pool(&dir.path().join("protos"))).await;
        let mut stream = own
            .server_stream_open("t.T/Flood", json!({}))
            .await
            .expect("Flood opens");
        stream
            .message()
            .await
            .expect("Flood sends")
            .expect("a message");
        tokio::time::sleep(Duration::from_millis(300)).await;
        stalled.push((own, stream));
        std::fs::write(dir.path().join("handlers/t.lua"), script(v)).unwrap();
        reload(&server).await;
    }
    let bound = threads_before + 2;
    let (threads_after, _) = settle(&server, bound).await;
    eprintln!(
        "{STALLED} script changes, each closing the states of a stream whose client does not read: \
         threads {threads_before} -> {threads_after}"
    );
    // The last close is logged as it happens, which may trail the reload's answer.
    let logged = Instant::now();
    while log_lines(&server, "closed the Lua states").len() < STALLED
        && logged.elapsed() < Duration::from_secs(10)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(log_lines(&server, "closed the Lua states").len(), STALLED);
    // The closed states' threads exit, their watchdogs too, though their calls are not over.
    assert!(
        threads_after <= bound,
        "{STALLED} closed sets of Lua states whose calls wait for their clients: threads \
         {threads_before} -> {threads_after} (a set runs {SET_THREADS})"
    );
    assert_eq!(
        client.unary("t.T/Scr", json!({})).await.unwrap(),
        json!({"s": format!("v{STALLED}"), "n": 100})
    );
    // Once read, each stream ends with the status.
    for (i, (_own, mut stream)) in stalled.into_iter().enumerate() {
        let status = loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("stream {i} ended OK"),
                Err(status) => break status,
            }
        };
        assert_eq!(status.code(), Code::Unavailable, "stream {i}: {status:?}");
        assert!(
            status.message().contains("replaced by a reload"),
            "stream {i}: {status:?}"
        );
    }
    assert!(log_lines(&server, "panicked").is_empty());
}

/// A module created after the scripts loaded without it is served after the next reload.
#[tokio::test]
async fn a_module_that_appears_later_builds_new_states() {
    let dir = project_folder(&[
        ("protos/t.proto", PROTO),
        ("handlers/t.json", HANDLERS),
        (
            "handlers/t.lua",
            r#"local ok, extra = pcall(require, "extra")
function Scr(req, ctx) return { s = ok and extra.word or "module missing" } end
function Chat(notes, ctx) end
function Flood(req, ctx) end
"#,
        ),
        ("data/big.json", "[]"),
    ]);
    let (server, client) = start(&dir, &[]).await;
    let out = client.unary("t.T/Scr", json!({})).await.unwrap();
    assert_eq!(out["s"], "module missing");
    std::fs::write(
        dir.path().join("handlers/extra.lua"),
        "return { word = \"NEW\" }\n",
    )
    .unwrap();
    reload(&server).await;
    let out = client.unary("t.T/Scr", json!({})).await.unwrap();
    assert_eq!(
        out["s"], "NEW",
        "the reload kept states built without the module"
    );
    // And a module that goes away again is missed again.
    std::fs::remove_file(dir.path().join("handlers/extra.lua")).unwrap();
    reload(&server).await;
    let out = client.unary("t.T/Scr", json!({})).await.unwrap();
    assert_eq!(out["s"], "module missing");
}
