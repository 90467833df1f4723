//! Nothing crosses from one script call to the next: what scripts build while loading is frozen,
//! module state cannot be assigned, replies are converted raw and size-bounded, and startup
//! problems say where they are. Fixtures: tests/fixtures/isolation.

mod common;

use std::time::Duration;

use common::{fixtures, Client, Server};
use serde_json::{json, Value as Json};
use tonic::Code;

fn isolation_args(states: &str) -> Vec<String> {
    let f = fixtures();
    vec![
        "--protos".into(),
        f.join("protos").display().to_string(),
        "--handlers".into(),
        f.join("isolation/handlers").display().to_string(),
        "--data".into(),
        f.join("isolation/data").display().to_string(),
        "--script-states".into(),
        states.into(),
        "--script-time-ms".into(),
        "5000".into(),
    ]
}

/// One Lua state, so every call sees whatever an earlier call could have left behind.
async fn one_state() -> (Server, Client) {
    let args = isolation_args("1");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = Server::start(&args);
    let client = Client::connect(server.addr, common::pool(&fixtures().join("protos"))).await;
    (server, client)
}

async fn case(client: &Client, name: &str) -> Result<Json, tonic::Status> {
    client.unary("lab.Lab/Fail", json!({"id": name})).await
}

fn tags(reply: &Json) -> Vec<String> {
    reply["tags"]
        .as_array()
        .map(|a| a.iter().map(|t| t.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default()
}

async fn still_serves(client: &Client) {
    let r = tokio::time::timeout(
        Duration::from_secs(30),
        client.unary("lab.Lab/Roundtrip", json!({"id": "alive"})),
    )
    .await
    .expect("the server stopped answering")
    .unwrap();
    assert_eq!(r["id"], "alive");
}

#[tokio::test]
async fn library_tables_cannot_be_replaced_through_pairs() {
    let (_s, client) = one_state().await;
    let attempts = tags(&case(&client, "poison_libs").await.unwrap());
    assert_eq!(attempts.len(), 7, "{attempts:?}");
    for a in &attempts {
        assert!(a != "ALLOWED", "an attack went through: {attempts:?}");
    }
    assert!(
        attempts[0].contains("attempt to modify read-only table (the string library, key 'upper')"),
        "{attempts:?}"
    );
    for _ in 0..3 {
        let libs = tags(&case(&client, "libs").await.unwrap());
        assert_eq!(libs, ["ABC", "ABC", "x-y", "2"]);
    }
}

/// A write to frozen data made by a library function (`table.insert`, `table.sort`) raised an
/// error naming no line: the level above the read-only table's `__newindex` is the library
/// function, which has none. The error names the script's line that called it now, as a
/// write made by the script itself does.
#[tokio::test]
async fn writes_to_data_by_library_functions_name_the_script_line() {
    let (_s, client) = one_state().await;
    let attempts = tags(&case(&client, "poison_data").await.unwrap());
    assert!(
        attempts[3].contains("iso.lua:76: attempt to modify read-only table (data set"),
        "{attempts:?}"
    );
    let e = case(&client, "sort_data").await.unwrap_err();
    assert_eq!(e.code(), Code::Internal, "{}", e.message());
    assert!(
        e.message()
            .contains("iso.lua:203: attempt to modify read-only table (data set"),
        "{}",
        e.message()
    );
}

/// A write to `ctx` made by a library function (`table.insert(ctx, 1)`) raised "ctx is
/// read-only" naming no line, as writes to frozen data did: the level above ctx's
/// `__newindex` is the library function. It names the script's line that called it now, and
/// says what was written and what to use instead, as a write by the script itself does.
#[tokio::test]
async fn writes_to_ctx_by_library_functions_name_the_script_line() {
    let (_s, client) = one_state().await;
    let attempts = tags(&case(&client, "ctx_writes").await.unwrap());
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    for (attempt, wanted) in attempts.iter().zip([
        "iso.lua:210: attempt to modify ctx (key 'deadline'): ctx is read-only",
        "iso.lua:211: attempt to modify ctx (key '1'): ctx is read-only",
    ]) {
        assert!(attempt.contains(wanted), "{wanted:?} in {attempts:?}");
    }
    let e = case(&client, "ctx_insert").await.unwrap_err();
    assert_eq!(e.code(), Code::Internal, "{}", e.message());
    assert!(
        e.message()
            .contains("iso.lua:216: attempt to modify ctx (key '1'): ctx is read-only"),
        "{}",
        e.message()
    );
}

#[tokio::test]
async fn data_cannot_be_rewritten_through_pairs() {
    let (_s, client) = one_state().await;
    let attempts = tags(&case(&client, "poison_data").await.unwrap());
    assert_eq!(attempts.len(), 5, "{attempts:?}");
    for a in &attempts {
        assert!(a != "ALLOWED", "an attack went through: {attempts:?}");
    }
    assert!(
        attempts[0].contains("attempt to modify read-only table (data set")
            && attempts[0].contains("catalog.json, key 'id'"),
        "{attempts:?}"
    );
    let item = case(&client, "item").await.unwrap();
    assert_eq!(item, json!({"id": "first", "count": "2"}));
    // The data table itself as the reply.
    let r = client
        .unary("lab.Lab/Describe", json!({"id": "data"}))
        .await
        .unwrap();
    assert_eq!(r, json!({"id": "first", "count": "1"}));
}

#[tokio::test]
async fn load_time_global_cannot_be_reassigned() {
    let (_s, client) = one_state().await;
    for _ in 0..3 {
        let s = case(&client, "count").await.unwrap_err();
        assert_eq!(s.code(), Code::Internal, "{s:?}");
        assert!(
            s.message().contains("cannot set global 'counter'")
                && s.message().contains("iso.lua while serving a call"),
            "{s:?}"
        );
    }
}

#[tokio::test]
async fn module_local_table_is_frozen() {
    let (_s, client) = one_state().await;
    for name in ["one", "two"] {
        let s = client
            .unary("lab.Lab/Fail", json!({"id": "remember", "name": name}))
            .await
            .unwrap_err();
        assert_eq!(s.code(), Code::Internal, "{s:?}");
        assert!(
            s.message()
                .contains("attempt to modify read-only table built while loading")
                && s.message()
                    .contains("iso.lua (key '2'): keep per-call state in locals"),
            "{s:?}"
        );
    }
}

/// The first draw Lua 5.4 makes of `math.random(1, math.maxinteger)` after `math.randomseed(seed)`.
fn first_draw(seed: i64) -> i64 {
    let lua = mlua::Lua::new();
    lua.load(format!(
        "math.randomseed({seed}) return math.random(1, math.maxinteger)"
    ))
    .eval()
    .unwrap()
}

/// Every call on a state drew from the state's one generator: a call that seeded it decided
/// what the next call drew (after `reseed`, `draw` got the second value of seed 42's sequence),
/// and a call's draws depended on every call before it. Each call now has its own generator,
/// which starts from the seed the script set while loading.
#[tokio::test]
async fn each_call_draws_from_its_own_generator() {
    let (_s, client) = one_state().await;
    let draw = |r: Json| r["count"].as_str().unwrap().parse::<i64>().unwrap();
    let loaded = first_draw(7);
    for _ in 0..3 {
        assert_eq!(draw(case(&client, "draw").await.unwrap()), loaded);
        assert_eq!(draw(case(&client, "reseed").await.unwrap()), first_draw(42));
    }
    assert_eq!(draw(case(&client, "draw").await.unwrap()), loaded);
}

#[test]
fn module_local_assignment_is_a_startup_error() {
    let f = fixtures();
    let handlers = f.join("isolation/bad_handlers");
    let (code, _, stderr) = common::run(&[
        "check",
        "--protos",
        f.join("protos").to_str().unwrap(),
        "--handlers",
        handlers.to_str().unwrap(),
        "--data",
        f.join("isolation/data").to_str().unwrap(),
    ]);
    assert_ne!(code, 0, "{stderr}");
    let script = std::fs::read_to_string(handlers.join("bad.lua")).unwrap();
    let line_of = |needle: &str| script.lines().position(|l| l.contains(needle)).unwrap() + 1;
    let bad = handlers.join("bad.lua").display().to_string();
    for (line, what) in [
        (
            line_of("calls = calls + 1"),
            "'calls' is a module-level local assigned while serving a call; module state is read-only (it would be shared by every call): make it a local inside the function",
        ),
        (line_of("last = q.name"), "'last' is a module-level local assigned while serving a call"),
        (line_of("_ENV = {}"), "'_ENV' is reassigned while serving a call"),
    ] {
        let want = format!("{bad}:{line}: {what}");
        assert!(stderr.contains(&want), "wanted {want:?} in:\n{stderr}");
    }
    let co = handlers.join("co.lua").display().to_string();
    assert!(
        stderr.contains(&format!(
            "{co}: a coroutine created while loading is still reachable after loading (through 'worker')"
        )),
        "{stderr}"
    );
    // A gmatch iterator kept from loading answered each call with the next word: the first
    // call on a state got "alpha", the next one "beta".
    let gm = handlers.join("gm.lua").display().to_string();
    assert!(
        stderr.contains(&format!(
            "{gm}: a string.gmatch iterator made while loading is still reachable after loading (through 'words'); its position would carry over from one call to the next"
        )),
        "{stderr}"
    );
    // Lua's own iterator (a short subject takes it) and one kept as a table key were not
    // reported: the first call on a state got "a", the next one "b".
    for through in ["'letters'", "a table key"] {
        assert!(
            stderr.contains(&format!(
                "{gm}: a string.gmatch iterator made while loading is still reachable after loading (through {through})"
            )),
            "{through}: {stderr}"
        );
    }
    // A module's value itself was not looked at: `require("next_word")` in a call gave each
    // call the next word, and `require("shared_worker")` each call the same coroutine.
    for (file, what) in [
        (
            "next_word.lua",
            "a string.gmatch iterator made while loading",
        ),
        ("shared_worker.lua", "a coroutine created while loading"),
    ] {
        let file = handlers.join(file).display().to_string();
        let want = format!(
            "{file}: {what} is still reachable after loading (through the value the file returns)"
        );
        assert!(stderr.contains(&want), "wanted {want:?} in:\n{stderr}");
    }
    assert_eq!(
        stderr.matches("string.gmatch iterator").count(),
        4,
        "the iterator used up while loading is not reported: {stderr}"
    );
}

#[tokio::test]
async fn class_metatable_idiom_still_works() {
    let (_s, client) = one_state().await;
    for _ in 0..2 {
        let t = tags(&case(&client, "classes").await.unwrap());
        let want_reads = [
            "(3,1)",
            "3",
            "true",
            "true",
            "true",
            "7/3",
            "hi bob",
            "true",
            "__add,__eq,__index,__tostring,new,norm1",
            "3",
            "abc",
            "b",
            "a",
            "c",
            "3",
            "OK!",
            "(0,0)(1,1)0",
            "true",
            "kept hello!",
            "6",
        ];
        assert_eq!(&t[..want_reads.len()], want_reads, "{t:?}");
        let writes = &t[want_reads.len()..];
        assert_eq!(writes.len(), 5, "{t:?}");
        for w in writes {
            assert!(w.contains("attempt to modify read-only table"), "{t:?}");
        }
    }
}

#[tokio::test]
async fn encoded_reply_cache_cannot_be_poisoned() {
    let args = isolation_args("2");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = Server::start(&args);
    let client = Client::connect(server.addr, common::pool(&fixtures().join("protos"))).await;
    let mut foreign = Vec::new();
    for round in 0..30 {
        let calls = (0..20).map(|i| {
            let client = client.clone();
            async move {
                let id = format!("{round}-{i}");
                let r = client
                    .unary("lab.Lab/Describe", json!({"id": id}))
                    .await
                    .unwrap();
                (
                    format!("SECRET-{id}"),
                    r["id"].as_str().unwrap_or("").to_owned(),
                )
            }
        });
        for (want, got) in futures_util::future::join_all(calls).await {
            if want != got {
                foreign.push((want, got));
            }
        }
    }
    assert!(
        foreign.is_empty(),
        "{} of 600 replies were another call's: {foreign:?}",
        foreign.len()
    );
}

#[tokio::test]
async fn gc_metamethod_is_rejected() {
    let (_s, client) = one_state().await;
    for name in ["gc", "gc_via_class"] {
        let s = case(&client, name).await.unwrap_err();
        assert_eq!(s.code(), Code::Internal, "{s:?}");
        assert!(
            s.message()
                .contains("finalizers (__gc) are not allowed in scripts"),
            "{s:?}"
        );
    }
    // Plenty of garbage, so a finalizer would have had its chance to run.
    for _ in 0..20 {
        let r = client
            .unary("lab.Lab/Describe", json!({"id": "x"}))
            .await
            .unwrap();
        assert_eq!(r["id"], "SECRET-x");
    }
    still_serves(&client).await;
}

#[tokio::test]
async fn huge_repeated_string_reply_is_resource_exhausted() {
    let (_s, client) = one_state().await;
    let s = case(&client, "huge").await.unwrap_err();
    assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
    assert!(
        s.message().contains("lab.Lab/Fail") && s.message().contains("4194304 bytes"),
        "{s:?}"
    );
    still_serves(&client).await;

    // The same through ctx:send on a stream: what was sent arrives, then the status.
    let m = client.method("lab.Lab/Count");
    let mut grpc = tonic::client::Grpc::new(client.channel.clone());
    grpc.ready().await.unwrap();
    let req = tonic::Request::new(protoserve::codec::Outgoing::Message(Client::message(
        &m.input(),
        json!({}),
    )));
    let mut stream = grpc
        .server_streaming(
            req,
            "/lab.Lab/Count".parse().unwrap(),
            common::DynamicCodec::new(m.output()),
        )
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert_eq!(common::to_json(&first), json!({"id": "small"}));
    let s = stream.message().await.unwrap_err();
    assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
    assert!(s.message().contains("lab.Lab/Count"), "{s:?}");
    still_serves(&client).await;
}

#[test]
fn large_data_file_error_names_file_and_limit() {
    let f = fixtures();
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        f.join("isolation/data/catalog.json"),
        dir.path().join("catalog.json"),
    )
    .unwrap();
    let mut big = String::from("[");
    for i in 0..40_000 {
        if i > 0 {
            big.push(',');
        }
        big.push_str(&format!(
            "{{\"id\":{i},\"name\":\"item number {i}\",\"tags\":[\"a\",\"b\"]}}"
        ));
    }
    big.push(']');
    std::fs::write(dir.path().join("big.json"), big).unwrap();
    let (code, _, stderr) = common::run(&[
        "check",
        "--protos",
        f.join("protos").to_str().unwrap(),
        "--handlers",
        f.join("isolation/handlers").to_str().unwrap(),
        "--data",
        dir.path().to_str().unwrap(),
        "--script-memory",
        "4",
    ]);
    assert_ne!(code, 0, "{stderr}");
    let file = dir.path().join("big.json").display().to_string();
    assert!(
        stderr.contains(&format!(
            "{file}: this data set does not fit in a script state's memory limit of 4 MiB (--script-memory"
        )),
        "{stderr}"
    );
    assert!(stderr.contains("help: raise --script-memory"), "{stderr}");
}

/// Two handler files whose methods run scripts meet the same data problem: `check` listed it
/// once per file ("2 problem(s) found", the same lines twice); it is one problem.
#[test]
fn a_data_problem_met_by_two_handler_files_is_listed_once() {
    let handlers = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    std::fs::write(
        handlers.path().join("greeter.json"),
        r#"{"service": "helloworld.Greeter", "methods": {"SayHello": {"script": "all.lua"}}}"#,
    )
    .unwrap();
    std::fs::write(
        handlers.path().join("guide.json"),
        r#"{"service": "routeguide.RouteGuide", "methods": {"GetFeature": {"script": "all.lua"}}}"#,
    )
    .unwrap();
    std::fs::write(
        handlers.path().join("all.lua"),
        "function SayHello() return {} end\nfunction GetFeature() return {} end\n",
    )
    .unwrap();
    let rows: Vec<String> = (0..40_000)
        .map(|i| format!("{{\"id\":{i},\"name\":\"item number {i}\"}}"))
        .collect();
    std::fs::write(
        data.path().join("big.json"),
        format!("[{}]", rows.join(",")),
    )
    .unwrap();
    let (code, _, stderr) = common::run(&[
        "check",
        "--protos",
        common::repo().join("protos").to_str().unwrap(),
        "--handlers",
        handlers.path().to_str().unwrap(),
        "--data",
        data.path().to_str().unwrap(),
        "--script-memory",
        "4",
    ]);
    assert_eq!(code, 2, "{stderr}");
    assert_eq!(
        stderr.matches("this data set does not fit").count(),
        1,
        "{stderr}"
    );
    assert!(stderr.contains("1 problem(s) found"), "{stderr}");
}

#[test]
fn missing_data_set_error_has_line() {
    let empty = tempfile::tempdir().unwrap();
    let (code, _, stderr) = common::run(&["check", "--data", empty.path().to_str().unwrap()]);
    assert_ne!(code, 0, "{stderr}");
    let script = std::fs::read_to_string(common::repo().join("handlers/route_guide.lua")).unwrap();
    let line = script
        .lines()
        .position(|l| l.contains("data.route_guide_db"))
        .unwrap()
        + 1;
    let want = format!("handlers/route_guide.lua:{line}: data.route_guide_db: no such data set");
    // Once, though the script serves four methods.
    assert_eq!(
        stderr.matches(&want).count(),
        1,
        "wanted {want:?} once in:\n{stderr}"
    );
}

#[tokio::test]
async fn require_at_call_time_is_refused() {
    let (_s, client) = one_state().await;
    let r = case(&client, "late_require").await.unwrap();
    let id = r["id"].as_str().unwrap();
    assert!(
        id.starts_with("false: ")
            && id.contains("require(\"late\") at call time: modules load with the scripts; require it at the top of the script"),
        "{id}"
    );
    // A module loaded with the scripts is handed back.
    assert_eq!(r["a"], "true");
}

/// `math.randomseed()` (no seed) while loading made every call's generator start from the one
/// random seed the state drew: every call on the state drew the same numbers. Calls now start
/// from fresh seeds, as when the scripts seed nothing.
#[tokio::test]
async fn unseeded_randomseed_while_loading_leaves_calls_random() {
    let f = fixtures();
    let mut args = isolation_args("1");
    args[3] = f
        .join("isolation/fresh_seed_handlers")
        .display()
        .to_string();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = Server::start(&args);
    let client = Client::connect(server.addr, common::pool(&f.join("protos"))).await;
    let mut draws = std::collections::HashSet::new();
    for _ in 0..4 {
        let r = client.unary("lab.Lab/Fail", json!({})).await.unwrap();
        draws.insert(r["count"].as_str().unwrap().to_owned());
    }
    assert_eq!(draws.len(), 4, "calls drew the same numbers: {draws:?}");
}

/// A script that runs out of its state's memory while loading said only "out of memory: not
/// enough memory" at its line, with nothing on what to change; it points at `--script-memory`
/// as a data set too big for it does.
#[test]
fn scripts_out_of_memory_while_loading_point_at_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let protos = fixtures().join("negative_enums/protos");
    let handlers = dir.path().join("handlers");
    std::fs::create_dir(&handlers).unwrap();
    std::fs::write(
        handlers.join("signs.json"),
        r#"{ "service": "signs.Signs", "methods": { "Echo": { "script": "signs.lua" } } }"#,
    )
    .unwrap();
    std::fs::write(
        handlers.join("signs.lua"),
        "local t = {}\nfor i = 1, 1e7 do t[i] = { i } end\nfunction Echo(req) return req end\n",
    )
    .unwrap();
    let (code, _, stderr) = common::run(&[
        "check",
        "--protos",
        protos.to_str().unwrap(),
        "--handlers",
        handlers.to_str().unwrap(),
        "--script-memory",
        "4",
    ]);
    assert_eq!(code, 2, "{stderr}");
    let file = handlers.join("signs.lua").display().to_string();
    assert!(stderr.contains(&format!("error: {file}")), "{stderr}");
    assert!(stderr.contains("out of memory"), "{stderr}");
    assert!(stderr.contains("help: raise --script-memory"), "{stderr}");
}
