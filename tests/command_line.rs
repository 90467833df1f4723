//! What README "Command line" and "Mistakes are caught at startup" promise of the flags:
//! import roots in their order, the exit status of every startup problem for `serve` as for
//! `check`, and the environment variable that stands for `--log-level`.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;

use common::{binary, repo, run};

fn write(path: &Path, text: &str) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
}

/// `protoserve ARGS…`, bounded: its exit status (none when it kept running) and standard
/// error. `serve` gets free loopback ports unless ARGS name them.
fn run_bounded(args: &[&str]) -> (Option<i32>, String) {
    let mut cmd = Command::new(binary());
    cmd.args(args);
    if args[0] == "serve" {
        if !args.contains(&"--listen") {
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
        if !args.contains(&"--admin") {
            cmd.args(["--admin", "127.0.0.1:0"]);
        }
    }
    common::run_bounded(cmd)
}

#[test]
fn import_roots_are_searched_in_the_order_given() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(
        &d.join("first/common.proto"),
        "syntax = \"proto3\";\npackage common;\nmessage Item { string from_first = 1; }\n",
    );
    write(
        &d.join("second/common.proto"),
        "syntax = \"proto3\";\npackage common;\nmessage Item { string from_second = 1; }\n",
    );
    write(
        &d.join("protos/shop.proto"),
        "syntax = \"proto3\";\npackage shop;\nimport \"common.proto\";\nservice Shop { rpc Get(common.Item) returns (common.Item); }\n",
    );
    write(
        &d.join("handlers/shop.json"),
        r#"{"service": "shop.Shop", "methods": {"Get": {"reply": {"from_first": "yes"}}}}"#,
    );
    let path = |p: &str| d.join(p).to_str().unwrap().to_owned();
    // With a cache: the order of the roots is part of what an entry stands for.
    let check = |a: &str, b: &str| {
        run(&[
            "check",
            "--protos",
            &path("protos"),
            "-I",
            &path(a),
            "-I",
            &path(b),
            "--handlers",
            &path("handlers"),
            "--cache-dir",
            &path("cache"),
        ])
    };
    let (code, out, err) = check("first", "second");
    assert_eq!(code, 0, "{out}{err}");
    let (code, _, err) = check("second", "first");
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("reply.from_first: common.Item has no field \"from_first\""),
        "{err}"
    );
}

#[test]
fn serve_exits_2_for_each_startup_problem_check_reports_and_says_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(
        &d.join("broken/shop.proto"),
        "syntax = \"proto3\";\nmessage A { int32 a = 1 int32 b = 2; }\n",
    );
    write(&d.join("a_file"), "not a folder");
    let path = |p: &str| d.join(p).to_str().unwrap().to_owned();
    let cases: Vec<(Vec<String>, String)> = vec![
        (
            vec!["--protos".into(), path("broken")],
            format!(
                "error: {}:2:25: expected ';' or '['",
                path("broken/shop.proto")
            ),
        ),
        (
            vec!["--protos".into(), path("missing")],
            format!("error: --protos {}: not a folder", path("missing")),
        ),
        (
            vec!["--handlers".into(), path("a_file")],
            format!("error: --handlers {}: not a folder", path("a_file")),
        ),
        (
            vec!["--descriptor-set".into(), path("missing.binpb")],
            format!(
                "error: --descriptor-set {}: no such file",
                path("missing.binpb")
            ),
        ),
        (
            vec!["--data".into(), path("a_file")],
            format!("error: --data {}: not a folder", path("a_file")),
        ),
        (
            vec!["--log-level".into(), "loud".into()],
            "error: --log-level \"loud\": \"loud\" is not a log level".into(),
        ),
    ];
    for (args, wanted) in cases {
        for command in ["check", "serve"] {
            let mut all = vec![command];
            all.extend(args.iter().map(String::as_str));
            let (code, err) = run_bounded(&all);
            assert_eq!(code, Some(2), "{all:?}: {err}");
            assert!(err.contains(&wanted), "{all:?}: wanted {wanted:?} in {err}");
            assert!(!err.contains("listening on"), "{all:?}: {err}");
        }
    }
}

#[test]
fn an_admin_port_in_use_exits_2_naming_the_flag() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, err) = run_bounded(&["serve", "--admin", &addr]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains(&format!("error: --admin: cannot listen on {addr}"))
            && err.contains("--admin off"),
        "{err}"
    );
}

#[test]
fn protoserve_log_stands_for_log_level_and_is_checked_like_it() {
    let out = Command::new(binary())
        .arg("check")
        .env("PROTOSERVE_LOG", "verbose")
        .current_dir(repo())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("\"verbose\" is not a log level"), "{err}");
    // The flag wins over the variable.
    let out = Command::new(binary())
        .args(["check", "--log-level", "info"])
        .env("PROTOSERVE_LOG", "verbose")
        .current_dir(repo())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn list_with_prefixes_shows_only_their_services_and_exits_1_when_none_matches() {
    let (code, out, err) = run(&["list", "routeguide", "helloworld.Greeter"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("helloworld.Greeter\n") && out.contains("routeguide.RouteGuide\n"),
        "{out}"
    );
    let (code, out, err) = run(&["list", "routeguide"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("routeguide.RouteGuide\n") && !out.contains("helloworld"),
        "{out}"
    );
    let (code, out, err) = run(&["list", "shop", "inventory.v1"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.is_empty(), "{out}");
    assert!(
        err.contains("no service starts with shop or inventory.v1; `protoserve list` without a prefix lists all 2"),
        "{err}"
    );
}

#[test]
fn version_prints_the_version() {
    let (code, out, _) = run(&["--version"]);
    assert_eq!(code, 0);
    assert_eq!(
        out.trim(),
        format!("protoserve {}", env!("CARGO_PKG_VERSION"))
    );
}
