//! Regressions of the files a live server reads and watches. Each used to go wrong:
//!
//! - a handler fixed after a reload that also changed the protos was paired with the protos
//!   of before;
//! - a handlers folder replaced while serving (renamed away or removed and created again, or
//!   a link to it switched to another folder) was watched no more;
//! - a folder that kept changing (a data file rewritten every 20 ms) held every reload back
//!   for as long as it did;
//! - a descriptor set rebuilt while serving was not noticed, and one read from a pipe was
//!   empty on reload, which served nothing;
//! - two symbolic links back up the proto tree made loading exponential (a hang growing
//!   memory), and a FIFO in the handler folder blocked loading forever;
//! - a runtime handler whose method left the protos came with advice about naming methods,
//!   and following the advice it then gave (remove the handler) built the handler files on
//!   disk with the protos of before: refused when the method was renamed, and serving the
//!   removed method when it was removed (and the status kept the failure once it built);
//! - an editor's hidden lock link (Emacs's `.#x.proto`) failed every load while it existed;
//! - a byte-order mark made every kind of file unreadable;
//! - text that is not UTF-8, an import cycle, and one name declared by two files that do not
//!   import each other were reported without a line and column;
//! - a descriptor cache folder (`--cache-dir`) inside a watched folder set off a second reload
//!   each time a reload wrote an entry to it, and still did when the cache folder or the
//!   watched folder was named through a symbolic link or with `..`; and a new folder on the way
//!   to the cache folder was taken for the cache's own, so the protos in it were not read;
//! - a change in a hidden folder (`git commit` writing `.git/`), which loading does not read,
//!   set off a reload;
//! - a watched folder removed while serving (a handlers folder replaced, a proto subfolder
//!   deleted) logged a warning from the file watcher in its debug format;
//! - a .proto seen half-written (an editor saving in place, slower than the reload) was
//!   reported without a line and column, its message printed twice;
//! - a broken handler file whose name held a line break wrote the rest of its name at the
//!   margin of the serve log: a name could forge a whole, timestamped log line.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::project::{live_handler, Project, LIVE_PROTO};
use common::{binary, pool, run_bounded, Client, Server};
use serde_json::json;

/// Polls `method` until it answers `want` (bounded).
async fn wait_for_answer(client: &Client, method: &str, want: serde_json::Value) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = client.unary(method, json!({"text": "x"})).await;
        if got.as_ref().ok() == Some(&want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{method}: still {got:?}, want {want}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn a_handler_fixed_after_a_failed_reload_is_served_with_the_new_protos() {
    let project = Project::new();
    let server = project.start(&[]);
    // One edit: the proto gains a field and a method, the handler uses both with a typo.
    let proto = LIVE_PROTO
        .replace(
            "rpc Chat (Line) returns (Line);",
            "rpc Chat (Line) returns (Line);\n  rpc Again (Line) returns (Line);",
        )
        .replace("string text = 1;", "string text = 1; string extra = 2;");
    let handler = |field: &str| {
        format!(
            r#"{{"service": "live.Live", "methods": {{
  "Chat": {{"reply": {{"text": "v2: {{{{text}}}}", "extra": "e"}}}},
  "Again": {{"reply": {{"{field}": "again"}}}}
}}}}"#
        )
    };
    project.write("handlers/live.json", &handler("txet"));
    project.write("protos/live.proto", &proto);
    // This problem is only found once the new proto is compiled.
    server.wait_for_log(r#"live.Line has no field "txet""#);
    // Fixing only the handler must serve it with the protos on disk.
    project.write("handlers/live.json", &handler("text"));
    let client = project.client(&server).await;
    wait_for_answer(&client, "live.Live/Again", json!({"text": "again"})).await;
    let chat = client.unary("live.Live/Chat", json!({"text": "x"})).await;
    assert_eq!(chat.unwrap(), json!({"text": "v2: x", "extra": "e"}));
}

#[tokio::test]
async fn a_handlers_folder_replaced_while_serving_is_still_watched() {
    let project = Project::new();
    let server = project.start(&[]);
    let client = Client::connect(server.addr, pool(&project.path("protos"))).await;
    wait_for_answer(&client, "live.Live/Chat", json!({"text": "v1: x"})).await;
    // As a generator or `rsync --delete-after` does: the folder is renamed away and created anew.
    std::fs::rename(project.path("handlers"), project.path("handlers.old")).unwrap();
    std::fs::create_dir(project.path("handlers")).unwrap();
    server.wait_for_log("generation 2 serving");
    std::fs::write(project.path("handlers/live.json"), live_handler("v2")).unwrap();
    wait_for_answer(&client, "live.Live/Chat", json!({"text": "v2: x"})).await;
    // The folder renamed away is not watched any more, the new one still is.
    std::fs::write(project.path("handlers.old/live.json"), live_handler("old")).unwrap();
    std::fs::write(project.path("handlers/live.json"), live_handler("v3")).unwrap();
    wait_for_answer(&client, "live.Live/Chat", json!({"text": "v3: x"})).await;
}

#[tokio::test]
async fn a_runtime_handler_of_a_removed_method_says_how_to_remove_it() {
    let project = Project::new();
    let server = project.start(&[]);
    let (status, body) = server
        .admin_call(
            "PUT",
            "/v1/handlers/live.Live/Talk",
            None,
            Some(r#"{"reply": {"text": "runtime"}}"#),
        )
        .await;
    assert_eq!(status, 200, "{body:#}");
    project.write(
        "protos/live.proto",
        &LIVE_PROTO.replace("  rpc Talk (stream Line) returns (stream Line);\n", ""),
    );
    project.write(
        "handlers/live.json",
        &live_handler("v2").replace(
            ",\n    \"Talk\": { \"reply\": { \"text\": \"v2: {{text}}\" } }",
            "",
        ),
    );
    server.wait_for_log("reload (files changed) failed");
    let (_, problems) = server.admin_call("POST", "/v1/reload", None, None).await;
    let text = problems.to_string();
    assert!(
        text.contains("live.Live has no method")
            && text.contains("DELETE /v1/handlers/live.Live/Talk"),
        "the problem says how to remove the handler: {problems:#}"
    );
}

#[cfg(unix)]
#[test]
fn two_links_back_up_the_proto_tree_load_once() {
    let dir = tempfile::tempdir().unwrap();
    let protos = dir.path().join("protos");
    std::fs::create_dir(&protos).unwrap();
    std::fs::write(
        protos.join("a.proto"),
        "syntax = \"proto3\";\npackage a;\nmessage M { string s = 1; }\nservice S { rpc Go (M) returns (M); }\n",
    )
    .unwrap();
    std::os::unix::fs::symlink(".", protos.join("here")).unwrap();
    std::os::unix::fs::symlink("..", protos.join("up")).unwrap();
    let handlers = dir.path().join("handlers");
    std::fs::create_dir(&handlers).unwrap();
    std::fs::write(
        handlers.join("a.json"),
        r#"{"service": "a.S", "methods": {"Go": {"echo": {}}}}"#,
    )
    .unwrap();
    let mut cmd = Command::new(binary());
    cmd.arg("check")
        .arg("--no-cache")
        .arg("--protos")
        .arg(&protos)
        .arg("--handlers")
        .arg(&handlers);
    let (code, err) = run_bounded(cmd);
    assert_eq!(
        code,
        Some(0),
        "check must finish and accept the tree: {err}"
    );
    assert!(
        err.contains("read already"),
        "the skipped links are named: {err}"
    );
}

#[cfg(unix)]
#[test]
fn a_fifo_in_the_handlers_folder_is_an_error_not_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    let handlers = dir.path().join("handlers");
    std::fs::create_dir(&handlers).unwrap();
    let fifo = handlers.join("pipe.json");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success(), "mkfifo failed");
    let (code, err) = check_handlers(&handlers);
    assert_eq!(
        code,
        Some(2),
        "check must finish and refuse the tree: {err}"
    );
    assert!(
        err.contains("pipe.json") && err.contains("not a regular file"),
        "the FIFO is named: {err}"
    );
}

/// A project of one service answered by a script, with `files` (path, bytes) written over it.
fn text_project(files: &[(&str, &[u8])]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for sub in ["protos", "handlers", "data"] {
        std::fs::create_dir(dir.path().join(sub)).unwrap();
    }
    let base: [(&str, &[u8]); 4] = [
        (
            "protos/t.proto",
            b"syntax = \"proto3\";\npackage t;\nmessage M { string s = 1; }\nservice S { rpc Go (M) returns (M); }\n",
        ),
        (
            "handlers/t.json",
            br#"{"service": "t.S", "methods": {"Go": {"script": "t.lua"}}}"#,
        ),
        (
            "handlers/t.lua",
            b"function Go(m, ctx) return {s = data.d.k} end\n",
        ),
        ("data/d.json", br#"{"k": "v"}"#),
    ];
    for (path, bytes) in base.iter().chain(files) {
        let path = dir.path().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
    dir
}

fn check_text(dir: &std::path::Path) -> (Option<i32>, String) {
    let mut cmd = Command::new(binary());
    cmd.arg("check").arg("--no-cache");
    for sub in ["protos", "handlers", "data"] {
        cmd.arg(format!("--{sub}")).arg(dir.join(sub));
    }
    run_bounded(cmd)
}

#[test]
fn a_byte_order_mark_is_accepted_in_every_kind_of_file() {
    let with_bom = |text: &[u8]| [b"\xEF\xBB\xBF".as_slice(), text].concat();
    let proto = with_bom(
        b"syntax = \"proto3\";\npackage t;\nmessage M { string s = 1; }\nservice S { rpc Go (M) returns (M); }\n",
    );
    let handler = with_bom(br#"{"service": "t.S", "methods": {"Go": {"script": "t.lua"}}}"#);
    let script = with_bom(b"function Go(m, ctx) return {s = data.d.k} end\n");
    let data = with_bom(br#"{"k": "v"}"#);
    let dir = text_project(&[
        ("protos/t.proto", &proto),
        ("handlers/t.json", &handler),
        ("handlers/t.lua", &script),
        ("data/d.json", &data),
    ]);
    let (code, err) = check_text(dir.path());
    assert_eq!(
        code,
        Some(0),
        "files saved with a byte-order mark load: {err}"
    );
}

#[test]
fn text_that_is_not_utf8_is_reported_at_its_line_and_column() {
    let dir = text_project(&[
        ("data/d.json", b"{\"k\":\n  \"ab\xFF\"}"),
        (
            "handlers/t.json",
            b"{\"service\": \"t.S\",\n \"methods\": {\"Go\": {\"reply\": {\"s\": \"\xC3\xA9\xE9\"}}}}",
        ),
    ]);
    let (code, err) = check_text(dir.path());
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("d.json:2:6: not UTF-8 text"), "{err}");
    assert!(err.contains("t.json:2:38: not UTF-8 text"), "{err}");
    let dir = text_project(&[(
        "protos/t.proto",
        b"syntax = \"proto3\";\npackage t;\n// caf\xE9\nmessage M { string s = 1; }\nservice S { rpc Go (M) returns (M); }\n",
    )]);
    let (code, err) = check_text(dir.path());
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("t.proto:3:7: not UTF-8 text"), "{err}");
}

#[test]
fn an_import_cycle_is_reported_at_the_import_that_closes_it() {
    let dir = text_project(&[
        (
            "protos/a.proto",
            b"syntax = \"proto3\";\npackage a;\nimport \"google/protobuf/empty.proto\";\nimport \"b.proto\";\nmessage A {}\n",
        ),
        (
            "protos/b.proto",
            b"syntax = \"proto3\";\npackage b;\n\n  import \"a.proto\";\nmessage B {}\n",
        ),
    ]);
    let (code, err) = check_text(dir.path());
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("b.proto:4:3: import cycle: a.proto -> b.proto -> a.proto"),
        "{err}"
    );
}

#[tokio::test]
async fn a_folder_that_never_stays_quiet_still_reloads() {
    let project = Project::new();
    let server = project.start(&[]);
    let client = project.client(&server).await;
    wait_for_answer(&client, "live.Live/Chat", json!({"text": "v1: x"})).await;
    project.write("handlers/live.json", &live_handler("v2"));
    // Another process rewrites a data file far more often than the quiet time the watcher
    // waits for, for as long as the test runs (bounded).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ticker = {
        let (stop, path) = (stop.clone(), project.path("data/tick.json"));
        std::thread::spawn(move || {
            let until = Instant::now() + Duration::from_secs(30);
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < until {
                n += 1;
                std::fs::write(&path, format!("{{\"n\": {n}}}")).unwrap();
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let answer = tokio::time::timeout(
        Duration::from_secs(20),
        wait_for_answer(&client, "live.Live/Chat", json!({"text": "v2: x"})),
    )
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    ticker.join().unwrap();
    assert!(
        answer.is_ok(),
        "no reload while the data folder kept changing"
    );
}

/// `proto` compiled into a binary descriptor set at `set`, as `buf build -o` writes one.
fn write_set(proto: &str, set: &std::path::Path) {
    use prost::Message as _;
    let src = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("d.proto"), proto).unwrap();
    let files = protox::compile(["d.proto"], [src.path()]).unwrap();
    let tmp = set.with_extension("partial~");
    std::fs::write(&tmp, files.encode_to_vec()).unwrap();
    std::fs::rename(&tmp, set).unwrap();
}

#[tokio::test]
async fn a_descriptor_set_rebuilt_while_serving_is_reloaded() {
    let dir = tempfile::tempdir().unwrap();
    let set = dir.path().join("schema.binpb");
    let proto = "syntax = \"proto3\";\npackage d;\nmessage M { string a = 1; }\nservice S { rpc Go (M) returns (M); }\n";
    write_set(proto, &set);
    let handlers = dir.path().join("handlers");
    std::fs::create_dir(&handlers).unwrap();
    std::fs::write(
        handlers.join("d.json"),
        r#"{"service": "d.S", "methods": {"Go": {"echo": {}}}}"#,
    )
    .unwrap();
    let server = Server::start(&[
        "--descriptor-set",
        set.to_str().unwrap(),
        "--handlers",
        handlers.to_str().unwrap(),
        "--no-cache",
    ]);
    write_set(
        &proto.replace(
            "rpc Go (M) returns (M);",
            "rpc Go (M) returns (M); rpc Two (M) returns (M);",
        ),
        &set,
    );
    server.wait_for_log("generation 2 serving");
    let services = server.admin_get("/v1/services").await;
    assert!(
        services.to_string().contains("/d.S/Two"),
        "the rebuilt set is served: {services:#}"
    );
}

#[test]
fn one_name_declared_by_two_unrelated_files_is_located() {
    let dir = text_project(&[(
        "protos/u.proto",
        b"syntax = \"proto3\";\npackage t;\n\nmessage Other {}\n  message M { int32 x = 1; }\n",
    )]);
    let (code, err) = check_text(dir.path());
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("u.proto:5:11: u.proto: name 't.M' is already defined in file 't.proto'"),
        "{err}"
    );
}

#[cfg(unix)]
#[tokio::test]
async fn a_handlers_link_switched_to_another_folder_is_followed() {
    let project = Project::new();
    // handlers -> h1, then switched atomically to h2, as a deployment switches releases.
    std::fs::rename(project.path("handlers"), project.path("h1")).unwrap();
    std::fs::create_dir(project.path("h2")).unwrap();
    for entry in std::fs::read_dir(project.path("h1")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), project.path("h2").join(entry.file_name())).unwrap();
    }
    std::fs::write(project.path("h2/live.json"), live_handler("v2")).unwrap();
    std::os::unix::fs::symlink("h1", project.path("handlers")).unwrap();
    let server = project.start(&[]);
    let client = project.client(&server).await;
    wait_for_answer(&client, "live.Live/Chat", json!({"text": "v1: x"})).await;
    std::os::unix::fs::symlink("h2", project.path("handlers.next")).unwrap();
    std::fs::rename(project.path("handlers.next"), project.path("handlers")).unwrap();
    wait_for_answer(&client, "live.Live/Chat", json!({"text": "v2: x"})).await;
    std::fs::write(project.path("h2/live.json"), live_handler("v3")).unwrap();
    wait_for_answer(&client, "live.Live/Chat", json!({"text": "v3: x"})).await;
}

#[cfg(unix)]
#[test]
fn editors_lock_links_and_hidden_files_are_not_inputs() {
    let dir = text_project(&[
        // A stale copy in a hidden folder would declare every name twice.
        (
            "protos/.history/t.proto",
            b"syntax = \"proto3\";\npackage t;\nmessage M {}\n",
        ),
        ("data/.d.json", b"{"),
    ]);
    // Emacs's lock links for files with unsaved changes: they point nowhere.
    for lock in ["protos/.#t.proto", "handlers/.#t.json", "data/.#d.json"] {
        std::os::unix::fs::symlink("user@host.4242:1700000000", dir.path().join(lock)).unwrap();
    }
    let (code, err) = check_text(dir.path());
    assert_eq!(code, Some(0), "{err}");
}

#[tokio::test]
async fn a_handlers_folder_removed_and_created_again_is_still_watched() {
    let project = Project::new();
    let server = project.start(&[]);
    let client = project.client(&server).await;
    wait_for_answer(&client, "live.Live/Chat", json!({"text": "v1: x"})).await;
    // The new folder often gets the inode of the old one: that must not pass for "unchanged".
    std::fs::remove_dir_all(project.path("handlers")).unwrap();
    std::fs::create_dir(project.path("handlers")).unwrap();
    server.wait_for_log("generation 2 serving");
    std::fs::write(project.path("handlers/live.json"), live_handler("v2")).unwrap();
    wait_for_answer(&client, "live.Live/Chat", json!({"text": "v2: x"})).await;
    std::fs::write(project.path("handlers/live.json"), live_handler("v3")).unwrap();
    wait_for_answer(&client, "live.Live/Chat", json!({"text": "v3: x"})).await;
}

#[test]
fn a_descriptor_set_without_files_is_refused() {
    let dir = text_project(&[]);
    let set = dir.path().join("empty.binpb");
    std::fs::write(&set, b"").unwrap();
    let mut cmd = Command::new(binary());
    cmd.arg("check")
        .arg("--no-cache")
        .arg("--descriptor-set")
        .arg(&set)
        .arg("--protos")
        .arg(dir.path().join("protos"))
        .arg("--handlers")
        .arg(dir.path().join("handlers"))
        .arg("--data")
        .arg(dir.path().join("data"));
    let (code, err) = run_bounded(cmd);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("empty.binpb: holds no files"), "{err}");
}

/// Changes the protos of `project` (served by `server`, whose descriptor cache is `cache`),
/// then a handler, and checks that each change set off one reload and the cache entry the
/// first one wrote set off none.
async fn one_reload_per_change(project: &Project, server: &Server, cache: &Path, place: &str) {
    let client = project.client(server).await;
    wait_for_answer(&client, "live.Live/Chat", json!({"text": "v1: x"})).await;
    let entries = || {
        std::fs::read_dir(cache)
            .map(|d| d.filter_map(Result::ok).count())
            .unwrap_or(0)
    };
    let before = entries();
    // New protos: the reload compiles them and writes a cache entry in the watched folder.
    let started = Instant::now();
    project.write(
        "protos/live.proto",
        &LIVE_PROTO.replace("string text = 1;", "string text = 1; string extra = 2;"),
    );
    server.wait_for_log("generation 2 serving");
    let reload = started.elapsed();
    assert!(entries() > before, "{place}: no cache entry was written");
    // A reload set off by that write would come within about one reload's time: wait for
    // three (this one compiled; a second one would read the cache).
    std::thread::sleep(reload * 3);
    project.write("handlers/live.json", &live_handler("v2"));
    wait_for_answer(&client, "live.Live/Chat", json!({"text": "v2: x"})).await;
    two_reloads(
        server,
        &format!("{place}: one reload per change, none for the cache entry"),
    );
}

#[tokio::test]
async fn a_descriptor_cache_inside_a_watched_folder_sets_off_no_reload() {
    // Inside the protos, as a watched folder itself, and inside the data.
    for place in ["protos/cache/descriptors", "handlers", "data/cache"] {
        let project = Project::new();
        let cache = project.path(place);
        let server = project.start(&["--cache-dir", cache.to_str().unwrap()]);
        one_reload_per_change(&project, &server, &cache, place).await;
    }
}

#[cfg(unix)]
#[tokio::test]
async fn a_descriptor_cache_named_through_a_link_or_dots_sets_off_no_reload() {
    // The cache folder named through a link to the project, or with `..`; then the protos
    // folder named through the link and the cache folder by its real path.
    for (place, protos_through_link) in [
        ("alias/protos/cache", false),
        ("protos/../protos/cache", false),
        ("protos/cache", true),
    ] {
        let project = Project::new();
        let outside = tempfile::tempdir().unwrap();
        let alias = outside.path().join("alias");
        std::os::unix::fs::symlink(project.path(""), &alias).unwrap();
        let cache = match place.strip_prefix("alias/") {
            Some(rest) => alias.join(rest),
            None => project.path(place),
        };
        let mut args = project.args();
        if protos_through_link {
            args[1] = alias.join("protos").display().to_string();
        }
        args.extend(["--cache-dir".to_owned(), cache.display().to_string()]);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let server = Server::start(&refs);
        let label = format!("{place} (protos through a link: {protos_through_link})");
        one_reload_per_change(&project, &server, &cache, &label).await;
    }
}

/// Waits (bounded) until `n` log lines contain `needle`.
fn wait_for_lines(server: &Server, needle: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let log = server.log();
        if log.iter().filter(|l| l.contains(needle)).count() >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "fewer than {n} log lines with {needle:?}: {log:#?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(unix)]
#[tokio::test]
async fn a_new_folder_on_the_way_to_the_descriptor_cache_is_read_unless_the_cache_made_it() {
    const FRESH: &str = "syntax = \"proto3\";\npackage fresh;\nmessage P {}\nservice Fresh { rpc Ping (P) returns (P); }\n";
    let project = Project::new();
    let cache = project.path("protos/gen/cache");
    let server = project.start(&["--cache-dir", cache.to_str().unwrap()]);
    let client = project.client(&server).await;
    wait_for_answer(&client, "live.Live/Chat", json!({"text": "v1: x"})).await;
    // The folders the cache makes for its entry set off no reload: the removal does, once.
    let started = Instant::now();
    std::fs::remove_dir_all(project.path("protos/gen")).unwrap();
    server.wait_for_log("generation 2 serving");
    let reload = started.elapsed();
    assert!(cache.is_dir(), "no cache entry was written again");
    let services = |line: &str| line.split("): ").nth(1).map(str::to_owned);
    let first = server
        .log()
        .into_iter()
        .find(|l| l.contains("generation 2 serving"));
    let first = first.and_then(|l| services(&l)).expect("generation 2");
    std::thread::sleep(reload * 3);
    project.write("handlers/live.json", &live_handler("v2"));
    wait_for_answer(&client, "live.Live/Chat", json!({"text": "v2: x"})).await;
    two_reloads(
        &server,
        "one reload per change, none for the folders the cache made",
    );
    // While a broken file fails every reload, no cache entry is written, so the folder on the
    // way to it stays away until someone makes it.
    let failed = "reload (files changed) failed";
    project.write("protos/zz.proto", "syntax = \"proto3\";\nmessage {\n");
    std::fs::remove_dir_all(project.path("protos/gen")).unwrap();
    wait_for_lines(&server, failed, 1);
    // A link to a folder of protos: its creation is the only event.
    std::fs::create_dir(project.path("fresh")).unwrap();
    std::fs::write(project.path("fresh/fresh.proto"), FRESH).unwrap();
    std::os::unix::fs::symlink("../fresh", project.path("protos/gen")).unwrap();
    wait_for_lines(&server, failed, 2);
    std::fs::remove_file(project.path("protos/gen")).unwrap();
    wait_for_lines(&server, failed, 3);
    // A folder made and filled at once: the file may come before the folder is watched.
    std::fs::create_dir(project.path("protos/gen")).unwrap();
    std::fs::write(project.path("protos/gen/fresh.proto"), FRESH).unwrap();
    wait_for_lines(&server, failed, 4);
    std::fs::remove_file(project.path("protos/zz.proto")).unwrap();
    wait_for_lines(&server, " serving (files changed)", 3);
    let last = server.log().into_iter().rfind(|l| l.contains(" serving ("));
    let last = last.and_then(|l| services(&l)).expect("a generation");
    let count = |s: &str| s.split(' ').next().and_then(|n| n.parse::<usize>().ok());
    assert_eq!(
        count(&last),
        count(&first).map(|n| n + 1),
        "fresh.Fresh is served: {first} then {last}"
    );
}

#[tokio::test]
async fn a_change_in_a_hidden_folder_sets_off_no_reload() {
    let project = Project::new();
    std::fs::create_dir(project.path("protos/.git")).unwrap();
    let server = project.start(&["--no-cache"]);
    let client = project.client(&server).await;
    wait_for_answer(&client, "live.Live/Chat", json!({"text": "v1: x"})).await;
    let started = Instant::now();
    project.write("handlers/live.json", &live_handler("v2"));
    wait_for_answer(&client, "live.Live/Chat", json!({"text": "v2: x"})).await;
    let reload = started.elapsed();
    // Counted once the folders are quiet, so a busy machine splitting the write above into
    // two reloads does not count against the hidden folders.
    std::thread::sleep(reload * 3);
    let served = || {
        let log = server.log();
        log.iter().filter(|l| l.contains(" serving (")).count()
    };
    let before = served();
    // What `git commit` writes, and an editor's history: loading reads neither.
    std::fs::write(project.path("protos/.git/index"), "x").unwrap();
    std::fs::create_dir_all(project.path("protos/.history/sub")).unwrap();
    std::fs::write(project.path("protos/.history/sub/live.proto"), "broken").unwrap();
    // A reload set off by those would come within about one reload's time: wait for three.
    std::thread::sleep(reload * 3);
    assert_eq!(
        served(),
        before,
        "a change in a hidden folder set off a reload: {:#?}",
        server.log()
    );
    // And the watch goes on.
    project.write("handlers/live.json", &live_handler("v3"));
    wait_for_answer(&client, "live.Live/Chat", json!({"text": "v3: x"})).await;
}

/// The log says the server reloaded twice since it started, the second time into generation 3
/// (one reload per change made, none for anything else); `what` says what was expected.
fn two_reloads(server: &Server, what: &str) {
    // The answer from generation 3 can come before its log line is read from the server's
    // stderr: the line is waited for, then the reloads are counted.
    server.wait_for_log("generation 3 serving");
    let served: Vec<String> = server
        .log()
        .into_iter()
        .filter(|l| l.contains(" serving ("))
        .collect();
    assert_eq!(served.len(), 2, "{what}: {served:#?}");
    assert!(served[1].contains("generation 3 serving"), "{served:#?}");
}

/// An editor that saves in place truncates the file and writes it: a reload can read the
/// first half. The failure names the place the file stops, in the log and the admin status,
/// and the rest of the write is served.
#[tokio::test]
async fn a_proto_read_half_written_is_named_at_its_line_and_column() {
    let project = Project::new();
    let server = project.start(&[]);
    let client = project.client(&server).await;
    let grown = LIVE_PROTO.replace(
        "  rpc Talk",
        "  rpc Echo (Line) returns (Line);\n  rpc Talk",
    );
    let cut = grown.find("(Line);\n  rpc Talk").unwrap();
    let (first, rest) = grown.split_at(cut);
    let path = project.path("protos/live.proto");
    let mut file = std::fs::File::create(&path).unwrap();
    std::io::Write::write_all(&mut file, first.as_bytes()).unwrap();
    file.sync_all().unwrap();
    // A reload may also read the file emptied, before the first half is written.
    server.wait_for_log("reached end of file");
    // `  rpc Echo (Line) returns ` is line 5, its last word ending at column 25.
    let want = "live.proto:5:26: expected '(', but reached end of file";
    let log = server.log();
    let line = log.iter().find(|l| l.contains("reached end of file"));
    assert!(
        line.is_some_and(|l| l.contains(want)),
        "want {want:?}: {log:#?}"
    );
    assert_eq!(
        log.iter()
            .filter(|l| l.contains("reached end of file"))
            .count(),
        1,
        "the message once: {log:#?}"
    );
    // The status takes the report just after the log has it.
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        let status = server.admin_get("/v1/status").await;
        let message = status["last_reload"]["problems"][0]["message"].to_string();
        if message.contains("reached end of file") {
            break status;
        }
        assert!(Instant::now() < deadline, "{status:#}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let problem = &status["last_reload"]["problems"][0];
    assert_eq!(
        (&problem["line"], &problem["col"]),
        (&json!(5), &json!(26)),
        "{status:#}"
    );
    std::io::Write::write_all(&mut file, rest.as_bytes()).unwrap();
    drop(file);
    project.write(
        "handlers/live.json",
        &live_handler("v2").replace("\"Talk\"", "\"Echo\": { \"echo\": {} },\n    \"Talk\""),
    );
    wait_for_answer(&client, "live.Live/Chat", json!({"text": "v2: x"})).await;
    let echoed = Client::connect(server.addr, pool(&project.path("protos")))
        .await
        .unary("live.Live/Echo", json!({"text": "e"}))
        .await;
    assert_eq!(echoed.unwrap(), json!({"text": "e"}));
}

/// The protos rename a method that has a runtime handler, so the reload fails; removing the
/// runtime handler, as the problem advises, serves the files on disk, protos included.
#[tokio::test]
async fn removing_the_runtime_handler_of_a_renamed_method_serves_the_new_protos() {
    let project = Project::new();
    let server = project.start(&[]);
    let put = |method: &'static str| {
        let server = &server;
        async move {
            server
                .admin_call(
                    "PUT",
                    &format!("/v1/handlers/live.Live/{method}"),
                    None,
                    Some(r#"{"reply": {"text": "runtime"}}"#),
                )
                .await
        }
    };
    let (status, body) = put("Chat").await;
    assert_eq!(status, 200, "{body:#}");
    let before = project.client(&server).await;
    project.write(
        "protos/live.proto",
        &LIVE_PROTO.replace("rpc Chat", "rpc Say"),
    );
    project.write(
        "handlers/live.json",
        &live_handler("v2").replace("\"Chat\"", "\"Say\""),
    );
    server.wait_for_log("reload (files changed) failed");
    let (status, body) = server
        .admin_call("DELETE", "/v1/handlers/live.Live/Chat", None, None)
        .await;
    assert_eq!(status, 200, "the advice works: {body:#}");
    let status = server.admin_get("/v1/status").await;
    assert_eq!(
        (
            &status["last_reload"]["ok"],
            &status["last_reload"]["trigger"]
        ),
        (&json!(true), &json!("runtime handlers")),
        "the failure is over: {status:#}"
    );
    let client = project.client(&server).await;
    let said = client.unary("live.Live/Say", json!({"text": "x"})).await;
    assert_eq!(said.unwrap(), json!({"text": "v2: x"}));
    let gone = before.unary("live.Live/Chat", json!({"text": "x"})).await;
    assert_eq!(gone.unwrap_err().code(), tonic::Code::Unimplemented);
    // And a runtime handler for the new name is taken.
    let (status, body) = put("Say").await;
    assert_eq!(status, 200, "{body:#}");
    let said = client.unary("live.Live/Say", json!({"text": "x"})).await;
    assert_eq!(said.unwrap(), json!({"text": "runtime"}));
}

/// Removing watched folders is handled: the log says what was reloaded and nothing more.
#[tokio::test]
async fn folders_removed_while_serving_log_no_watcher_warnings() {
    let project = Project::new();
    std::fs::create_dir_all(project.path("protos/sub")).unwrap();
    std::fs::write(
        project.path("protos/sub/extra.proto"),
        "syntax = \"proto3\";\npackage extra;\nmessage E {}\n",
    )
    .unwrap();
    let server = project.start(&[]);
    let client = project.client(&server).await;
    std::fs::remove_dir_all(project.path("protos/sub")).unwrap();
    std::fs::remove_dir_all(project.path("handlers")).unwrap();
    server.wait_for_log("reload (files changed) failed");
    std::fs::create_dir(project.path("handlers")).unwrap();
    std::fs::write(project.path("handlers/live.json"), live_handler("v2")).unwrap();
    wait_for_answer(&client, "live.Live/Chat", json!({"text": "v2: x"})).await;
    let log = server.log();
    let noise: Vec<&String> = log
        .iter()
        .filter(|l| l.contains(" WARN ") || l.contains("watch descriptor"))
        .collect();
    assert!(noise.is_empty(), "{log:#?}");
}

/// The protos remove a method that has a runtime handler; removing the handler serves the
/// files on disk (the method is gone, not declared without a handler), and the status says
/// the failure is over.
#[tokio::test]
async fn removing_the_runtime_handler_of_a_removed_method_ends_the_failure() {
    let project = Project::new();
    let server = project.start(&[]);
    let (status, body) = server
        .admin_call(
            "PUT",
            "/v1/handlers/live.Live/Chat",
            None,
            Some(r#"{"reply": {"text": "runtime"}}"#),
        )
        .await;
    assert_eq!(status, 200, "{body:#}");
    let client = project.client(&server).await;
    project.write(
        "protos/live.proto",
        &LIVE_PROTO.replace("  rpc Chat (Line) returns (Line);\n", ""),
    );
    project.write(
        "handlers/live.json",
        &live_handler("v2").replace("\"Chat\"", "\"Gone\"").replace(
            "    \"Gone\": { \"reply\": { \"text\": \"v2: {{text}}\" } },\n",
            "",
        ),
    );
    server.wait_for_log("reload (files changed) failed");
    let (status, body) = server
        .admin_call("DELETE", "/v1/handlers/live.Live/Chat", None, None)
        .await;
    assert_eq!(status, 200, "{body:#}");
    let status = server.admin_get("/v1/status").await;
    assert_eq!(status["last_reload"]["ok"], json!(true), "{status:#}");
    let services = server.admin_get("/v1/services").await.to_string();
    assert!(!services.contains("live.Live/Chat"), "{services}");
    let gone = client
        .unary("live.Live/Chat", json!({"text": "x"}))
        .await
        .unwrap_err();
    assert!(
        gone.message().contains("unknown method"),
        "the protos on disk do not declare it: {gone:?}"
    );
}

/// A directory named like a handler file is called a directory, not a FIFO, socket or device.
#[test]
fn a_directory_named_like_a_handler_file_is_called_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    let handlers = dir.path().join("handlers");
    std::fs::create_dir_all(handlers.join("helloworld.json")).unwrap();
    let (code, err) = check_handlers(&handlers);
    assert_eq!(code, Some(2), "check must refuse the tree: {err}");
    assert!(
        err.contains("helloworld.json") && err.contains("a directory, not a file"),
        "the directory is called one: {err}"
    );
    assert!(!err.contains("FIFO"), "a directory is no FIFO: {err}");
}

/// `protoserve check` of the repository's protos and the handler folder `handlers`: its exit
/// code and what it printed.
fn check_handlers(handlers: &std::path::Path) -> (Option<i32>, String) {
    let mut cmd = Command::new(binary());
    cmd.arg("check")
        .arg("--no-cache")
        .arg("--protos")
        .arg(common::repo().join("protos"))
        .arg("--handlers")
        .arg(handlers);
    run_bounded(cmd)
}

/// A failed reload's problems keep their line breaks in the log (a problem quotes the lines of
/// a file), but a line break in a file's name started a line at the margin: the name
/// `x\n2026-01-01T00:00:00Z  INFO generation 9 serving…` wrote a log line that looked like
/// the server's own. Every line of a problem after its first is indented now.
#[cfg(unix)]
#[tokio::test]
async fn a_file_name_cannot_forge_a_log_line() {
    let project = Project::new();
    let server = project.start(&[]);
    let client = project.client(&server).await;
    wait_for_answer(&client, "live.Live/Chat", json!({"text": "v1: x"})).await;
    let forged = "2026-01-01T00:00:00.000000Z  INFO generation 9 serving (files changed): forged";
    std::fs::write(project.path(&format!("handlers/x\n{forged}.json")), "{bad").unwrap();
    server.wait_for_log("failed with 1 problem(s)");
    let log = server.log();
    let at_margin: Vec<_> = log.iter().filter(|l| l.starts_with(forged)).collect();
    assert!(at_margin.is_empty(), "forged: {at_margin:#?}");
    assert!(
        log.iter().any(|l| l.starts_with(&format!("  {forged}"))),
        "{log:#?}"
    );
}
