//! Startup: broken protos and handler files stop the server with `file:line:col` and a hint;
//! `check` and `list` report what was loaded.

mod common;

use std::fs;
use std::path::Path;

use common::run;

/// A scratch project: protos/ with the tutorial Greeter, handlers/ with the given files.
fn project(extra_protos: &[(&str, &str)], handlers: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir_all(dir.path().join("protos")).unwrap();
    fs::create_dir_all(dir.path().join("handlers")).unwrap();
    fs::create_dir_all(dir.path().join("data")).unwrap();
    fs::copy(
        common::repo().join("protos/helloworld.proto"),
        dir.path().join("protos/helloworld.proto"),
    )
    .unwrap();
    for (name, text) in extra_protos {
        let path = dir.path().join("protos").join(name);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }
    for (name, text) in handlers {
        fs::write(dir.path().join("handlers").join(name), text).unwrap();
    }
    dir
}

fn check(dir: &Path) -> (i32, String, String) {
    let protos = dir.join("protos");
    let handlers = dir.join("handlers");
    run(&[
        "check",
        "--protos",
        protos.to_str().unwrap(),
        "--handlers",
        handlers.to_str().unwrap(),
    ])
}

#[test]
fn shipped_project_checks_clean_and_lists_every_method() {
    let (code, out, err) = run(&["check"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("ok: 2 services"), "{out}");
    let (code, out, _) = run(&["list"]);
    assert_eq!(code, 0);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "helloworld.Greeter");
    assert!(
        lines[1].contains("SayHello") && lines[1].contains("unary") && lines[1].ends_with("reply"),
        "{out}"
    );
    assert!(out.contains("routeguide.RouteGuide"), "{out}");
    for (method, shape) in [
        ("GetFeature", "unary"),
        ("ListFeatures", "server-streaming"),
        ("RecordRoute", "client-streaming"),
        ("RouteChat", "bidi-streaming"),
    ] {
        let line = lines
            .iter()
            .find(|l| l.trim_start().starts_with(method))
            .unwrap();
        assert!(line.contains(shape), "{line}");
    }
}

#[test]
fn proto_syntax_error_points_at_file_line_col() {
    let dir = project(&[("shop/broken.proto", "syntax = \"proto3\";\npackage shop;\nmessage A {\n  string name = 1\n  int32 x = 2;\n}\n")], &[]);
    let (code, _, err) = check(dir.path());
    assert_eq!(code, 2, "{err}");
    let want = format!(
        "{}:5:3: expected ';'",
        dir.path().join("protos/shop/broken.proto").display()
    );
    assert!(err.contains(&want), "wanted {want:?} in:\n{err}");
}

#[test]
fn proto_type_error_points_at_file_line_col() {
    let dir = project(
        &[(
            "t.proto",
            "syntax = \"proto3\";\npackage t;\nmessage A {\n  Missing m = 1;\n}\n",
        )],
        &[],
    );
    let (code, _, err) = check(dir.path());
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("t.proto:4:3: name 'Missing' is not defined"),
        "{err}"
    );
}

#[test]
fn missing_import_is_reported_and_import_paths_resolve_it() {
    let dir = project(&[("uses.proto", "syntax = \"proto3\";\npackage u;\nimport \"shared/dep.proto\";\nimport \"google/protobuf/timestamp.proto\";\nmessage M { shared.D d = 1; google.protobuf.Timestamp at = 2; }\n")], &[]);
    let (code, _, err) = check(dir.path());
    assert_eq!(code, 2);
    assert!(
        err.contains("uses.proto:3:1") && err.contains("shared/dep.proto"),
        "{err}"
    );

    let extra = tempfile::tempdir().unwrap();
    fs::create_dir_all(extra.path().join("shared")).unwrap();
    fs::write(
        extra.path().join("shared/dep.proto"),
        "syntax = \"proto3\";\npackage shared;\nmessage D { int32 v = 1; }\n",
    )
    .unwrap();
    let (code, out, err) = run(&[
        "check",
        "--protos",
        dir.path().join("protos").to_str().unwrap(),
        "-I",
        extra.path().to_str().unwrap(),
        "--handlers",
        dir.path().join("handlers").to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn handler_mistakes_name_file_entry_and_suggest_a_fix() {
    let dir = project(
        &[],
        &[
            (
                "a.json",
                r#"{
  "service": "helloworld.Greeter",
  "methods": {
    "SayHelo": { "reply": { "message": "hi" } },
    "SayHello": { "reply": { "mesage": "Hello" } },
    "SayHelloAgain": { "reply": { "message": "Hello, {{nam}}!" } }
  }
}"#,
            ),
            ("b.json", r#"{ "service": "helloworld.Greter", "methods": {} }"#),
            ("c.json", "{ \"service\": \"helloworld.Greeter\",\n  \"methods\": { \"SayHello\": { \"reply\": { \"message\": 5 } }, } }"),
        ],
    );
    let (code, _, err) = check(dir.path());
    assert_eq!(code, 2, "{err}");
    let a = dir.path().join("handlers/a.json").display().to_string();
    assert!(err.contains(&format!("{a}:4:5: helloworld.Greeter/SayHelo: helloworld.Greeter has no method \"SayHelo\" (did you mean \"SayHello\"?)")), "{err}");
    assert!(
        err.contains(&format!(
            "{a}:5:30: helloworld.Greeter/SayHello: reply.mesage:"
        )),
        "{err}"
    );
    assert!(err.contains("(did you mean \"message\"?)"), "{err}");
    assert!(err.contains(&format!("{a}:6:35: helloworld.Greeter/SayHelloAgain: reply.message: helloworld.HelloRequest has no field \"nam\" (did you mean \"name\"?)")), "{err}");
    assert!(err.contains("b.json:1:3: helloworld.Greter: unknown service \"helloworld.Greter\" (did you mean \"helloworld.Greeter\"?)"), "{err}");
    assert!(
        err.contains("c.json:2:") && err.contains("trailing comma"),
        "{err}"
    );
    assert!(
        err.contains("4 problem(s) found") || err.contains("5 problem(s) found"),
        "{err}"
    );
}

#[test]
fn wrong_value_types_and_shape_mismatches_are_startup_errors() {
    let dir = project(
        &[(
            "s.proto",
            "syntax = \"proto3\";\npackage s;\nmessage M { int32 n = 1; string t = 2; }\nmessage N { int64 n = 1; }\nservice S {\n  rpc U(M) returns (M);\n  rpc V(M) returns (N);\n  rpc W(M) returns (M);\n  rpc X(M) returns (M);\n}\n",
        )],
        &[(
            "s.json",
            r#"{"service": "s.S", "methods": {
  "U": { "reply": { "n": "not a number" } },
  "V": { "echo": {} },
  "W": { "stream": [ {} ] },
  "X": { "reply": { "n": "{{t}} and more" } }
}}"#,
        )],
    );
    let (code, _, err) = check(dir.path());
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("s.S/U: reply.n: not a valid int32 for \"n\""),
        "{err}"
    );
    assert!(
        err.contains("s.S/V: echo: \"echo\" needs the same input and output type"),
        "{err}"
    );
    assert!(
        err.contains("s.S/W: stream: \"stream\" needs a server-streaming or bidi method"),
        "{err}"
    );
    assert!(
        err.contains("s.S/X: reply.n: {{…}} inside text only works in string or bytes fields"),
        "{err}"
    );
}

#[test]
fn serve_refuses_to_start_on_errors() {
    let dir = project(&[("t.proto", "syntax = \"proto3\";\nmessage {\n")], &[]);
    let (code, _, err) = run(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--protos",
        dir.path().join("protos").to_str().unwrap(),
        "--handlers",
        dir.path().join("handlers").to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("t.proto:2:9"), "{err}");
    assert!(!err.contains("listening on"), "{err}");
}

#[test]
fn missing_folders_are_usage_errors() {
    let (code, _, err) = run(&["check", "--protos", "no/such/dir"]);
    assert_eq!(code, 2);
    assert!(err.contains("--protos no/such/dir: not a folder"), "{err}");
    let (code, _, err) = run(&["check", "--handlers", "no/such/dir"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("--handlers no/such/dir: no such folder"),
        "{err}"
    );
}

fn check_with_data(dir: &Path) -> (i32, String, String) {
    let p = |s: &str| dir.join(s).display().to_string();
    run(&[
        "check",
        "--protos",
        &p("protos"),
        "--handlers",
        &p("handlers"),
        "--data",
        &p("data"),
    ])
}

const GREETER_SCRIPT: &str = r#"{"service": "helloworld.Greeter", "methods": {
  "SayHello": {"script": "greet.lua"},
  "SayHelloAgain": {"script": "greet.lua", "function": "again"}
}}"#;

#[test]
fn script_syntax_error_stops_startup_with_file_and_line() {
    let dir = project(
        &[],
        &[
            ("g.json", GREETER_SCRIPT),
            (
                "greet.lua",
                "function SayHello(req, ctx)\n  return { message = \"hi\" \nend\n",
            ),
        ],
    );
    let (code, _, err) = check_with_data(dir.path());
    assert_eq!(code, 2, "{err}");
    let want = format!("{}:3:", dir.path().join("handlers/greet.lua").display());
    assert!(err.contains(&want), "wanted {want:?} in:\n{err}");
    assert!(err.contains("expected"), "{err}");
}

#[test]
fn missing_script_function_or_file_is_a_startup_error() {
    let dir = project(
        &[],
        &[
            ("g.json", GREETER_SCRIPT),
            (
                "greet.lua",
                "function SayHello(req, ctx) return {} end\nfunction agian() end\n",
            ),
        ],
    );
    let (code, _, err) = check_with_data(dir.path());
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("helloworld.Greeter/SayHelloAgain: script: "),
        "{err}"
    );
    assert!(
        err.contains("defines no function again (did you mean \"agian\"?)"),
        "{err}"
    );

    let dir = project(&[], &[("g.json", GREETER_SCRIPT)]);
    let (code, _, err) = check_with_data(dir.path());
    assert_eq!(code, 2);
    assert!(
        err.contains("cannot read script") && err.contains("greet.lua"),
        "{err}"
    );

    let dir = project(
        &[],
        &[(
            "g.json",
            r#"{"service": "helloworld.Greeter", "methods": {"SayHello": {"script": "../outside.lua"}}}"#,
        )],
    );
    let (code, _, err) = check_with_data(dir.path());
    assert_eq!(code, 2);
    assert!(
        err.contains("must be a path inside the handlers folder"),
        "{err}"
    );
}

#[test]
fn malformed_data_file_stops_startup_with_file_line_col() {
    let dir = project(&[], &[]);
    fs::create_dir_all(dir.path().join("data")).unwrap();
    fs::write(
        dir.path().join("data/points.json"),
        "[\n  {\"a\": 1},\n  {\"b\": 2,}\n]\n",
    )
    .unwrap();
    let (code, _, err) = check_with_data(dir.path());
    assert_eq!(code, 2, "{err}");
    let want = format!(
        "{}:3:11: not valid JSON",
        dir.path().join("data/points.json").display()
    );
    assert!(err.contains(&want), "wanted {want:?} in:\n{err}");
}

#[test]
fn data_handler_and_script_problems_are_reported_together() {
    let dir = project(
        &[],
        &[
            (
                "g.json",
                r#"{"service": "helloworld.Greeter", "methods": {"SayHello": {"script": "greet.lua"}, "SayHelo": {"echo": {}}}}"#,
            ),
            (
                "greet.lua",
                "function SayHello(req, ctx)\n  return {\nend\n",
            ),
        ],
    );
    fs::create_dir_all(dir.path().join("data")).unwrap();
    fs::write(dir.path().join("data/bad.json"), "{").unwrap();
    let (code, _, err) = check_with_data(dir.path());
    assert_eq!(code, 2);
    assert!(err.contains("data/bad.json:1:"), "{err}");
    assert!(err.contains("greet.lua:3:"), "{err}");
    assert!(err.contains("has no method \"SayHelo\""), "{err}");
    assert!(err.contains("3 problem(s) found"), "{err}");
}

/// Handler files and scripts follow one set of metadata rules: a header gRPC or HTTP/2 owns
/// (`grpc-status`, `content-type`, `te`, …) broke the stream or contradicted the real status
/// when a handler file set it; scripts were refused already.
#[test]
fn reserved_headers_in_handler_files_are_refused_at_startup() {
    let dir = project(
        &[],
        &[(
            "h.json",
            r#"{ "service": "helloworld.Greeter", "methods": {
  "SayHello": { "reply": { "message": "hi" }, "headers": { "grpc-status": "0" } },
  "SayHelloAgain": { "error": { "code": "NOT_FOUND", "metadata": { "Content-Type": "text/html" } } }
} }"#,
        )],
    );
    let (code, _, err) = check(dir.path());
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("headers.grpc-status: metadata \"grpc-status\" is reserved"),
        "{err}"
    );
    assert!(
        err.contains("error.metadata.Content-Type: metadata \"content-type\" is reserved"),
        "{err}"
    );
    assert!(err.contains("h.json:2:"), "{err}");
}

/// The bounds handler files state: `delay_ms` at most a day, an error `code` from 1 to 16 (or
/// a name), never OK; each out-of-bounds value is a startup error naming its place, and every
/// rule of a list is checked, the condition and the answer of one rule alike.
#[test]
fn delay_and_error_code_bounds_are_startup_errors() {
    let dir = project(
        &[],
        &[(
            "g.json",
            r#"{"service": "helloworld.Greeter", "methods": {
  "SayHello": { "reply": { "message": "late" }, "delay_ms": 86400001 },
  "SayHelloAgain": { "rules": [
    { "when": { "request": { "name": "a" } }, "error": { "code": 17, "message": "x" } },
    { "when": { "request": { "name": "b" } }, "error": { "code": 0, "message": "x" } },
    { "when": { "request": { "nam": "c" } }, "error": { "code": "NOT_A_CODE", "message": "x" } },
    { "error": { "code": 16, "message": "x" }, "delay_ms": 86400000 }
  ] }
}}"#,
        )],
    );
    let (code, _, err) = check(dir.path());
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("helloworld.Greeter/SayHello: delay_ms: 86400001 ms is more than a day"),
        "{err}"
    );
    assert!(err.contains("17 is not a gRPC status code"), "{err}");
    assert!(err.contains("an error needs a code other than OK"), "{err}");
    assert!(err.contains("rules[2].when"), "{err}");
    assert!(err.contains("did you mean \"name\""), "{err}");
    assert!(err.contains("rules[2].error.code"), "{err}");
    assert!(err.contains("NOT_A_CODE"), "{err}");
    // Exactly those five: a day to the millisecond and code 16 are fine.
    assert!(err.contains("5 problem(s) found"), "{err}");
}

/// The README's example of a failed start, line by line: each problem with its place, and the
/// `help:` lines that say what to do.
#[test]
fn the_readme_example_of_startup_problems_reads_as_documented() {
    let dir = project(
        &[],
        &[
            (
                "a.json",
                r#"{
  "service": "helloworld.Greeter",
  "methods": {
    "SayHelo": { "reply": { "message": "hi" } },
    "SayHello": { "script": "greet.lua" },
    "SayHelloAgain": { "reply": { "message": "Hello, {{nam}}!" } }
  }
}"#,
            ),
            (
                "greet.lua",
                "function SayHello(req, ctx)\n  return { message = \"hi\"\nend\n",
            ),
        ],
    );
    fs::write(
        dir.path().join("data/points.json"),
        "[\n  {\"a\": 1},\n  {\"b\": 2,}\n]\n",
    )
    .unwrap();
    let (code, _, err) = check_with_data(dir.path());
    assert_eq!(code, 2, "{err}");
    let at = |rel: &str| dir.path().join(rel).display().to_string();
    let lines: Vec<&str> = err.lines().collect();
    let follows = |first: &str, help: &str| {
        let i = lines
            .iter()
            .position(|l| l.starts_with(first))
            .unwrap_or_else(|| panic!("no line starting {first:?} in:\n{err}"));
        assert_eq!(
            lines.get(i + 1).copied(),
            Some(help),
            "after {first:?} in:\n{err}"
        );
    };
    follows(
        &format!(
            "error: {}:3:11: not valid JSON: trailing comma",
            at("data/points.json")
        ),
        "  help: scripts see this file as data.points; fix the JSON or move the file out of the data folder",
    );
    follows(
        &format!(
            "error: {}:4:5: helloworld.Greeter/SayHelo: helloworld.Greeter has no method \"SayHelo\" (did you mean \"SayHello\"?)",
            at("handlers/a.json")
        ),
        "  help: add the rpc to the service in the .proto, or use one of: SayHello, SayHelloAgain",
    );
    follows(
        &format!(
            "error: {}:3: '}}' expected (to close '{{' at line 2) near 'end'",
            at("handlers/greet.lua")
        ),
        "  help: fix the Lua syntax; scripts are Lua 5.4",
    );
    assert!(
        lines.contains(&format!(
            "error: {}:6:35: helloworld.Greeter/SayHelloAgain: reply.message: helloworld.HelloRequest has no field \"nam\" (did you mean \"name\"?)",
            at("handlers/a.json")
        ).as_str()),
        "{err}"
    );
    assert_eq!(
        lines.last().copied(),
        Some("protoserve: 4 problem(s) found; nothing was served"),
        "{err}"
    );
}

/// Without `--data`, a missing `data/` just means no data sets; named with `--data`, the folder
/// must exist (exit 2, naming the flag).
#[test]
fn a_missing_default_data_folder_is_no_data_sets() {
    let dir = project(&[], &[]);
    fs::remove_dir(dir.path().join("data")).unwrap();
    let run_in = |args: &[&str]| {
        let out = std::process::Command::new(common::binary())
            .args(args)
            .current_dir(dir.path())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run_in(&["check"]);
    assert_eq!(code, Some(0), "{err}");
    let (code, err) = run_in(&["check", "--data", "data"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--data data: no such folder"), "{err}");
}
