//! The live server: reload on file change and SIGHUP, a broken reload keeps serving, services
//! come and go in health and reflection, calls in flight keep their generation, and no call
//! fails while the server reloads under load, and the script threads of a replaced generation
//! (its watchdog included) stop. Each test serves a copy of a project in a temporary folder
//! and edits it.

mod common;

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::project::{live_handler, Project, LIVE_PROTO};
use common::{pool, Client, Server};
use serde_json::json;
use tonic::Code;

/// Polls `Chat` until it answers `want` (bounded).
/// The live service's answer to `Chat("x")`.
async fn chat(client: &Client) -> Result<serde_json::Value, tonic::Status> {
    client.unary("live.Live/Chat", json!({"text": "x"})).await
}

/// `Chat("x")` answers `want` now.
async fn assert_reply(client: &Client, want: &str) {
    assert_eq!(chat(client).await.unwrap(), json!({ "text": want }));
}

async fn wait_for_reply(client: &Client, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = chat(client).await;
        if got.as_ref().ok() == Some(&json!({"text": want})) {
            return;
        }
        assert!(Instant::now() < deadline, "still {got:?}, want {want:?}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn sighup(server: &Server) {
    let ok = Command::new("kill")
        .args(["-HUP", &server.pid().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -HUP failed");
}

#[tokio::test]
async fn editing_a_handler_file_reloads_it() {
    let project = Project::new();
    let server = project.start(&[]);
    let client = project.client(&server).await;
    wait_for_reply(&client, "v1: x").await;
    project.write("handlers/live.json", &live_handler("v2"));
    wait_for_reply(&client, "v2: x").await;
    let line = server.wait_for_log("generation 2 serving");
    assert!(line.contains("files changed"), "{line}");
    assert!(line.contains(" ms"), "the reload logs its time: {line}");
}

/// A reload reads the files, which inotify reports too (open, close-without-write); reacting
/// to those reloaded forever.
#[tokio::test]
async fn a_reload_does_not_set_off_another() {
    let project = Project::new();
    let server = project.start(&[]);
    let client = project.client(&server).await;
    project.write("handlers/live.json", &live_handler("v2"));
    wait_for_reply(&client, "v2: x").await;
    server.wait_for_log("generation 2 serving");
    std::thread::sleep(Duration::from_millis(1500));
    let again: Vec<String> = server
        .log()
        .into_iter()
        .filter(|l| l.contains("generation 3"))
        .collect();
    assert!(again.is_empty(), "reloads feed on themselves: {again:?}");
}

/// `serve` watches the `-I` folders as it watches `protos/`: editing an imported file there
/// reloads. Editors' swap, backup and lock files in the watched folders do not.
#[tokio::test]
async fn an_import_folder_is_watched_and_editor_files_are_not() {
    let project = Project::new();
    let imports = tempfile::tempdir().unwrap();
    let line = |extra: &str| {
        format!("syntax = \"proto3\";\npackage live;\nmessage Line {{ string text = 1;{extra} }}\n")
    };
    std::fs::write(imports.path().join("line.proto"), line("")).unwrap();
    let (head, service) = LIVE_PROTO.split_once("service").unwrap();
    let service = service.split("message Line").next().unwrap();
    project.write(
        "protos/live.proto",
        &format!("{head}import \"line.proto\";\nservice{service}"),
    );
    let server = project.start(&["-I", imports.path().to_str().unwrap()]);
    let mut inputs = protoserve::schema::SchemaInputs::protos(&[project.path("protos")]);
    inputs.import_paths.push(imports.path().to_path_buf());
    let schema = protoserve::schema::compile(&inputs).expect("compile protos");
    let client = Client::connect(server.addr, schema.pool).await;
    assert_reply(&client, "v1: x").await;

    for (dir, name) in [
        ("handlers", ".live.json.swp"),
        ("handlers", "live.json~"),
        ("protos", "#live.proto#"),
    ] {
        std::fs::write(project.path(dir).join(name), "not what it seems {").unwrap();
    }
    std::fs::write(imports.path().join(".line.proto.swx"), "x").unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let reloads: Vec<String> = server
        .log()
        .into_iter()
        .filter(|l| l.contains("generation 2") || l.contains("reload"))
        .collect();
    assert!(reloads.is_empty(), "editor files reloaded: {reloads:?}");

    std::fs::write(imports.path().join("line.proto"), line(" string note = 2;")).unwrap();
    let reloaded = server.wait_for_log("generation 2 serving");
    assert!(reloaded.contains("files changed"), "{reloaded}");
    assert_reply(&client, "v1: x").await;
}

/// A change only under `handlers/` or `data/` reuses the compiled protos; a change to a
/// `.proto` compiles them again. (The debug log says "schema ready" each time protos are
/// compiled or read from the cache.)
#[tokio::test]
async fn a_handler_change_reuses_the_compiled_protos() {
    let project = Project::new();
    let server = project.start(&["--log-level", "protoserve=debug"]);
    let client = project.client(&server).await;
    let schemas = || {
        server
            .log()
            .iter()
            .filter(|l| l.contains("schema ready"))
            .count()
    };
    assert_eq!(schemas(), 1, "{:#?}", server.log());
    project.write("handlers/live.json", &live_handler("v2"));
    wait_for_reply(&client, "v2: x").await;
    server.wait_for_log("generation 2 serving");
    assert_eq!(schemas(), 1, "a handler change compiled the protos");
    project.write("protos/live.proto", &format!("{LIVE_PROTO}// edited\n"));
    server.wait_for_log("generation 3 serving");
    assert_eq!(schemas(), 2, "a proto change did not compile the protos");
}

#[tokio::test]
async fn sighup_reloads_when_watching_is_off() {
    let project = Project::new();
    let server = project.start(&["--no-watch"]);
    let client = project.client(&server).await;
    project.write("handlers/live.json", &live_handler("v2"));
    // Without watching, the edit is not seen until the signal.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_reply(&client, "v1: x").await;
    sighup(&server);
    wait_for_reply(&client, "v2: x").await;
    assert!(server
        .wait_for_log("generation 2 serving")
        .contains("SIGHUP"));
}

#[tokio::test]
async fn a_broken_reload_keeps_serving_and_names_the_place() {
    let project = Project::new();
    let server = project.start(&[]);
    let client = project.client(&server).await;
    // A reply field that does not exist, on line 5.
    project.write(
        "handlers/live.json",
        &live_handler("v2").replace(
            "\"Talk\": { \"reply\": { \"text\"",
            "\"Talk\": { \"reply\": { \"txet\"",
        ),
    );
    let failed = server.wait_for_log("failed with 1 problem");
    assert!(failed.contains("still serving generation 1"), "{failed}");
    let problem = server.wait_for_log("txet");
    let file = project.path("handlers/live.json").display().to_string();
    assert!(
        problem.contains(&format!("{file}:5:")),
        "file:line:col in {problem}"
    );
    // Nothing changed: the whole old generation answers, the valid half of the edit too.
    assert_reply(&client, "v1: x").await;
    // Fixing the file loads it.
    project.write("handlers/live.json", &live_handler("v3"));
    wait_for_reply(&client, "v3: x").await;
    assert!(server
        .wait_for_log("generation 2 serving")
        .contains("files changed"));
}

#[tokio::test]
async fn a_broken_proto_on_reload_keeps_serving() {
    let project = Project::new();
    let server = project.start(&[]);
    let client = project.client(&server).await;
    project.write(
        "protos/live.proto",
        &LIVE_PROTO.replace("string text = 1;", "strin text = 1;"),
    );
    let problem = server.wait_for_log("live.proto:");
    assert!(problem.contains("live.proto:7:16:"), "{problem}");
    server.wait_for_log("still serving generation 1");
    assert_reply(&client, "v1: x").await;
}

#[tokio::test]
async fn services_come_and_go_in_health_and_reflection() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
    let project = Project::new();
    let server = project.start(&[]);
    let channel = common::channel(server.addr).await;
    let mut health = HealthClient::new(channel.clone());
    let check = |name: &str| HealthCheckRequest {
        service: name.into(),
    };
    assert_eq!(
        health
            .check(check("live.Live"))
            .await
            .unwrap()
            .into_inner()
            .status,
        ServingStatus::Serving as i32
    );
    let mut watch = health
        .watch(check("extra.Extra"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        watch.message().await.unwrap().unwrap().status,
        ServingStatus::ServiceUnknown as i32
    );
    let mut watch_live = health.watch(check("live.Live")).await.unwrap().into_inner();
    assert_eq!(
        watch_live.message().await.unwrap().unwrap().status,
        ServingStatus::Serving as i32
    );

    // live.Live goes away, extra.Extra arrives.
    std::fs::remove_file(project.path("handlers/live.json")).unwrap();
    std::fs::remove_file(project.path("protos/live.proto")).unwrap();
    project.write(
        "protos/extra.proto",
        "syntax = \"proto3\";\npackage extra;\nservice Extra { rpc Ping (P) returns (P); }\nmessage P { string s = 1; }\n",
    );
    let next = tokio::time::timeout(Duration::from_secs(20), watch.message())
        .await
        .expect("the watcher hears of the new service")
        .unwrap()
        .unwrap();
    assert_eq!(next.status, ServingStatus::Serving as i32);
    let gone = tokio::time::timeout(Duration::from_secs(20), watch_live.message())
        .await
        .expect("the watcher hears the service went")
        .unwrap()
        .unwrap();
    assert_eq!(gone.status, ServingStatus::ServiceUnknown as i32);
    let err = health.check(check("live.Live")).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    // Reflection lists what the new generation serves.
    let names = common::reflection::v1::list_services(channel).await;
    assert!(names.contains(&"extra.Extra".to_owned()), "{names:?}");
    assert!(!names.contains(&"live.Live".to_owned()), "{names:?}");
    assert!(
        names.contains(&"helloworld.Greeter".to_owned()),
        "{names:?}"
    );
    // And the router: the new method is there, without a handler; the old one is gone.
    let client = Client::connect(server.addr, pool(&project.path("protos"))).await;
    let err = client
        .unary("extra.Extra/Ping", json!({}))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);
    assert!(err.message().contains("no handler"), "{}", err.message());
}

#[tokio::test]
async fn an_open_stream_keeps_the_generation_it_started_on() {
    let project = Project::new();
    let server = project.start(&[]);
    let client = project.client(&server).await;
    let (tx, stream) = client
        .bidi_open("live.Live/Talk", vec![json!({"text": "a"})])
        .await;
    let mut stream = stream.unwrap();
    let first = stream.message().await.unwrap().unwrap();
    assert_eq!(common::to_json(&first), json!({"text": "v1: a"}));

    project.write("handlers/live.json", &live_handler("v2"));
    wait_for_reply(&client, "v2: x").await;
    // The open stream still answers as generation 1 did; a new stream answers as 2.
    for word in ["b", "c"] {
        tx.send(json!({"text": word})).await.unwrap();
        let got = stream.message().await.unwrap().unwrap();
        assert_eq!(
            common::to_json(&got),
            json!({"text": format!("v1: {word}")})
        );
    }
    drop(tx);
    assert!(stream.message().await.unwrap().is_none());
    let (fresh, _) = client
        .bidi("live.Live/Talk", vec![json!({"text": "d"})])
        .await;
    assert_eq!(fresh, vec![json!({"text": "v2: d"})]);
}

/// Threads named `lua-*` in the server process.
fn lua_threads(pid: u32) -> usize {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with("lua-"))
        .count()
}

/// Twenty reloads while unary calls (declarative and Lua) and an open bidi stream run: no call
/// fails, the stream sees every answer, and the Lua threads of replaced generations stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloading_under_load_fails_no_call() {
    let project = Project::new();
    let server = project.start(&["--no-watch", "--script-states", "2"]);
    let client = Arc::new(project.client(&server).await);
    let threads_at_start = lua_threads(server.pid());
    assert_eq!(
        threads_at_start, 3,
        "one thread per Lua state, and their watchdog"
    );

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let calls = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for w in 0..2 {
        let (client, stop, calls) = (client.clone(), stop.clone(), calls.clone());
        workers.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let result = if w == 0 {
                    client
                        .unary("helloworld.Greeter/SayHello", json!({"name": "n"}))
                        .await
                        .map(|_| ())
                } else {
                    client
                        .unary(
                            "routeguide.RouteGuide/GetFeature",
                            json!({"latitude": 409146138, "longitude": -746188906}),
                        )
                        .await
                        .map(|_| ())
                };
                calls.fetch_add(1, Ordering::Relaxed);
                if let Err(e) = result {
                    failures.push(e);
                }
            }
            failures
        }));
    }
    let (tx, stream) = client
        .bidi_open("routeguide.RouteGuide/RouteChat", vec![note(0), note(1)])
        .await;
    let mut stream = stream.unwrap();
    // RouteChat answers each note with the notes sent before at its location: at one location
    // note k is answered with notes 0..k, so none may be lost.
    let mut stream_answers = 0;
    let mut expect_last = 0;
    for reload in 1..=20 {
        loop {
            let got = stream
                .message()
                .await
                .expect("stream fails")
                .expect("stream ends");
            stream_answers += 1;
            if common::to_json(&got)["message"] == json!(format!("note {expect_last}")) {
                break;
            }
        }
        sighup(&server);
        server.wait_for_log(&format!("generation {} serving", reload + 1));
        tx.send(note(reload + 1)).await.unwrap();
        expect_last = reload;
    }
    drop(tx);
    while stream
        .message()
        .await
        .expect("stream fails at its end")
        .is_some()
    {
        stream_answers += 1;
    }
    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    for w in workers {
        failures.extend(w.await.unwrap());
    }
    assert!(
        failures.is_empty(),
        "calls failed during reloads: {failures:?}"
    );
    assert!(
        calls.load(Ordering::Relaxed) >= 40,
        "the calls kept running"
    );
    // Notes 0..=21 at one place: note k is answered with the k notes before it.
    assert_eq!(stream_answers, (0..=21).sum::<usize>());
    // Replaced generations' Lua states stop once their calls are done.
    let deadline = Instant::now() + Duration::from_secs(10);
    while lua_threads(server.pid()) > 3 {
        assert!(
            Instant::now() < deadline,
            "{} lua threads after 20 reloads; old generations leak",
            lua_threads(server.pid())
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn note(i: usize) -> serde_json::Value {
    json!({"location": {"latitude": 1, "longitude": 2}, "message": format!("note {i}")})
}

/// Threads named `lua-watchdog` in the server process: one per generation that has scripts.
fn watchdogs(pid: u32) -> usize {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.trim() == "lua-watchdog")
        .count()
}

/// A replaced generation's script watchdog stops with its states, not at the end of its
/// period (a quarter of `--script-watchdog-ms`): with a long period, a loop of reloads kept
/// one thread per generation it replaced.
#[tokio::test]
async fn replaced_generations_stop_their_script_watchdog_at_once() {
    let project = Project::new();
    let server = project.start(&[
        "--no-watch",
        "--script-states",
        "1",
        "--script-watchdog-ms",
        "120000",
    ]);
    assert_eq!(watchdogs(server.pid()), 1);
    for _ in 0..30 {
        let (status, body) = server.admin_post("/v1/reload", &json!({})).await;
        assert_eq!(status, 200, "{body:#}");
    }
    // Their period is 30 s: waiting a third of it tells stopping at once from sleeping it out.
    let deadline = Instant::now() + Duration::from_secs(10);
    while watchdogs(server.pid()) > 1 {
        assert!(
            Instant::now() < deadline,
            "{} script watchdogs after 30 reloads",
            watchdogs(server.pid())
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let client = project.client(&server).await;
    let feature = client
        .unary(
            "routeguide.RouteGuide/GetFeature",
            json!({"latitude": 409146138, "longitude": -746188906}),
        )
        .await
        .unwrap();
    assert!(feature["name"].as_str().is_some_and(|n| !n.is_empty()));
}

/// CPU time the process `pid` has used.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name, which is in parentheses and may hold spaces: the
    // state, then from field 4 on; utime and stime are fields 14 and 15, in clock ticks (100
    // a second on Linux).
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let field = |n: usize| -> u64 { fields.get(n - 3).and_then(|f| f.parse().ok()).unwrap_or(0) };
    let ticks = field(14) + field(15);
    Duration::from_millis(ticks * 10)
}

/// A server started on `project` whose loading takes about a second of CPU (a script counts at
/// load time, once: one Lua state), caught well into loading. Its log, and the script's text
/// without the count (written back, a reload is quick).
struct Loading {
    child: std::process::Child,
    log: Arc<std::sync::Mutex<Vec<String>>>,
    script: std::path::PathBuf,
    quick: String,
}

impl Loading {
    fn start(project: &Project, extra: &[&str]) -> Loading {
        use std::io::{BufRead, BufReader};
        let script = project.path("handlers/route_guide.lua");
        let quick = std::fs::read_to_string(&script).unwrap();
        let slow = "local counted = 0\nfor _ = 1, 100000000 do counted = counted + 1 end\n";
        std::fs::write(&script, format!("{slow}{quick}")).unwrap();
        let mut args = project.args();
        args.extend(
            [
                "--listen",
                "127.0.0.1:0",
                "--admin",
                "off",
                "--script-states",
                "1",
            ]
            .iter()
            .chain(extra)
            .map(|a| a.to_string()),
        );
        let mut child = Command::new(common::binary())
            .arg("serve")
            .args(&args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let sink = log.clone();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let loading = Loading {
            child,
            log,
            script,
            quick,
        };
        // Well into loading: the count takes about a second of CPU, starting milliseconds.
        let deadline = Instant::now() + Duration::from_secs(120);
        while cpu_time(loading.child.id()) < Duration::from_millis(200) {
            assert!(Instant::now() < deadline, "loading never started");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(
            !loading.logged("listening on"),
            "loaded before anything could happen while loading"
        );
        loading
    }

    fn logged(&self, needle: &str) -> bool {
        self.log.lock().unwrap().iter().any(|l| l.contains(needle))
    }

    /// Writes the script back without its count.
    fn quicken(&self) {
        std::fs::write(&self.script, &self.quick).unwrap();
    }

    /// Waits (bounded) for a log line with `needle`; the server must not end meanwhile.
    fn wait_for(&mut self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while !self.logged(needle) {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "the server ended ({status}): {:#?}",
                    self.log.lock().unwrap()
                );
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?}: {:#?}",
                self.log.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The address the server listens on.
    fn addr(&mut self) -> std::net::SocketAddr {
        self.wait_for("listening on ");
        let log = self.log.lock().unwrap();
        let line = log.iter().find(|l| l.contains("listening on ")).unwrap();
        let rest = &line[line.find("listening on ").unwrap() + "listening on ".len()..];
        rest[..rest.find(": ").unwrap()].parse().unwrap()
    }
}

impl Drop for Loading {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A SIGHUP that comes while the server loads (a big tree takes seconds) does not end it: it
/// reloads once the server is up.
#[tokio::test]
async fn a_sighup_while_loading_reloads_once_serving() {
    let project = Project::new();
    let mut loading = Loading::start(&project, &["--no-watch"]);
    let ok = Command::new("kill")
        .args(["-HUP", &loading.child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -HUP failed");
    loading.quicken();
    loading.wait_for("generation 2 serving (SIGHUP)");
    assert!(loading.logged("listening on"));
}

/// A handler file edited while the server loads, after loading read it, is reloaded once the
/// server is up: the file watch started only after loading, and missed it.
#[tokio::test]
async fn a_file_changed_while_loading_is_reloaded_once_serving() {
    let project = Project::new();
    let mut loading = Loading::start(&project, &[]);
    loading.quicken();
    project.write("handlers/live.json", &live_handler("v2"));
    let client = Client::connect(loading.addr(), pool(&project.path("protos"))).await;
    wait_for_reply(&client, "v2: x").await;
}
