//! Regressions of how handler files are checked.
//!
//! - Every problem of an entry is reported, each at its own line and column: `check` used to
//!   name only the first problem of each method entry (and of each rule), all at the method's
//!   line, so fixing a file took one run per mistake. The same holds at startup and in the
//!   admin API's 400.
//! - Keys that were accepted and then ignored are refused: `"echo"` with options (it has
//!   none), two header keys that differ only in case (one value was dropped), and header
//!   values outside printable ASCII (said to be refused, but sent), two members of one oneof
//!   when one is a template (the template's member won, the other was dropped).
//! - A rule's `when.metadata` test on a `-bin` key never held: the value was looked up as
//!   text, where tonic keeps no binary key, so `present: true` failed even when the client
//!   sent the key.
//! - A `-bin` header value in a handler file was sent as the bytes of the JSON string, where
//!   every gRPC tool writes binary values in base64; now it is base64, decoded at load (as the
//!   values `when.metadata` compares a `-bin` key with), and a value that is not is a problem
//!   at its line and column.
//! - `check` took minutes on a file with many broken rules: each problem was compared with
//!   every one listed before (20 000 broken rules: 576 s in a release build). Now one pass.
//! - Range tests (`gt`, `lte`…) compared as `f64`, so on 64-bit fields past 2^53 neighbours
//!   were equal: `big > 9007199254740992` did not hold for 9007199254740993.
//! - Columns counted bytes in handler files, data files, admin bodies and .proto files (but
//!   characters where a file was not UTF-8): a problem after `é日本` on its line was reported
//!   six columns to the right of where an editor shows it. Every column counts characters now.
//! - A `-bin` value of `"=="` was said to hold a character outside the base64 alphabet: a
//!   base64 problem now says what is wrong (padding in the wrong place or not fitting the
//!   length, a length no bytes have, a character outside the alphabet and where), and an item
//!   of a rule's `"in"` list is located at itself, not at the list.
//! - A file nested more than 128 deep was reported as serde_json's "recursion limit exceeded",
//!   with the advice to write a handler file's shape; it says what the limit is now, as for
//!   data files (and a `PUT /v1/handlers` body no longer calls such JSON invalid).
//! - A key given twice in one object (a method, an entry's `reply` or `error`, a reply's field,
//!   a header) was resolved by the JSON reader without a word: the last one was kept, at
//!   `check`, at startup and on reload (a second `"service"` or `"methods"` was refused as
//!   serde's "duplicate field", at the end of the key and without the first's place). Each
//!   repeat is a problem at its own line and column now, naming the line of the first.
//! - A key given twice in each of many nested objects cost the square of the file: each repeat
//!   spelled its object's path in full (`k.k.k…`), so a 60 KB file made `check` print 26 MB,
//!   and a 1 MB handler file, data set or `PUT /v1/handlers` body would have taken gigabytes.
//!   A long path keeps its start and end around an ellipsis now.
//! - A regex that does not parse was reported with the regex crate's text, whose last line
//!   starts `error:`: `check` showed two `error:` lines for one problem. What is wrong comes
//!   first now, the pattern and its marker under it, indented, and any line after the first of
//!   a problem is indented.

mod common;

use common::{fixtures, run, Client, Server};
use serde_json::json;
use tonic::metadata::{BinaryMetadataValue, MetadataMap};

const FILE: &str = r#"{
  "service": "kitchen.Kitchen",
  "methods": {
    "Get": {
      "reply": { "idd": "x", "count": "many", "colour": "RED" },
      "delay_ms": -5,
      "headers": { "X-Trace": "a", "x-trace": "b", "x-note": "caf\u00e9" }
    },
    "Pick": { "rules": [
      { "when": { "request": { "name": { "regex": "(" }, "idd": "1" } }, "reply": { "x": 1 } },
      { "reply": { "id": "{{nam}}" }, "delayms": 5 }
    ] },
    "Echo": { "echo": { "copy": true } },
    "Fail": { "error": { "code": 0, "message": "{{nope}}", "details": [] } },
    "Summary": { "reply": { "a": "{{name}}", "b": 5 } }
  }
}"#;

/// Each problem of `FILE`: the text its location points at, the entry and the path inside it.
const PROBLEMS: &[(&str, &str, &str)] = &[
    (r#""idd": "x""#, "Get", "reply.idd"),
    (r#""count""#, "Get", "reply.count"),
    (r#""colour""#, "Get", "reply.colour"),
    (r#""delay_ms""#, "Get", "delay_ms"),
    (r#""x-trace""#, "Get", "headers.x-trace"),
    (r#""x-note""#, "Get", "headers.x-note"),
    (r#""regex""#, "Pick", "rules[0].when.request.name.regex"),
    (r#""idd": "1""#, "Pick", "rules[0].when.request.idd"),
    (r#""x": 1"#, "Pick", "rules[0].reply.x"),
    (r#""id": "{{nam}}""#, "Pick", "rules[1].reply.id"),
    (r#""delayms""#, "Pick", "rules[1].delayms"),
    (r#""echo""#, "Echo", "echo"),
    (r#""code""#, "Fail", "error.code"),
    (r#""message""#, "Fail", "error.message"),
    (r#""details""#, "Fail", "error.details"),
    (r#""b": 5"#, "Summary", "reply.b"),
];

/// The 1-based line and column of the first `needle` in `FILE`.
fn position(needle: &str) -> (usize, usize) {
    position_in(FILE, needle)
}

/// The 1-based line and column of the first `needle` in `text`.
fn position_in(text: &str, needle: &str) -> (usize, usize) {
    let at = text
        .find(needle)
        .unwrap_or_else(|| panic!("{needle} in {text}"));
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let col = at - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, col)
}

fn handlers() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("k.json"), FILE).unwrap();
    dir
}

/// Asserts that `out` names every problem of `FILE` at its own line and column, and no more.
fn assert_every_problem(out: &str) {
    for (needle, method, path) in PROBLEMS {
        let (line, col) = position(needle);
        let wanted = format!("k.json:{line}:{col}: kitchen.Kitchen/{method}: {path}: ");
        assert!(out.contains(&wanted), "{wanted:?} missing in:\n{out}");
    }
    let count = format!("{} problem(s) found", PROBLEMS.len());
    assert!(out.contains(&count), "{count:?} missing in:\n{out}");
}

#[test]
fn check_and_startup_name_every_problem_of_an_entry_at_its_own_position() {
    let dir = handlers();
    let protos = fixtures().join("protos");
    let (protos, handlers) = (protos.to_str().unwrap(), dir.path().to_str().unwrap());
    let (code, _, err) = run(&["check", "--protos", protos, "--handlers", handlers]);
    assert_eq!(code, 2, "{err}");
    assert_every_problem(&err);
    // What the file promises and does not keep is said too.
    assert!(err.contains("(it has no options)"), "{err}");
    assert!(err.contains("are the same metadata key"), "{err}");
    assert!(err.contains("printable ASCII"), "{err}");
    assert!(err.contains("are both in oneof \"choice\""), "{err}");

    let (code, _, err) = run(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "off",
        "--protos",
        protos,
        "--handlers",
        handlers,
    ]);
    assert_eq!(code, 2, "{err}");
    assert_every_problem(&err);
}

#[tokio::test]
async fn the_admin_api_names_every_problem_of_an_entry() {
    let protos = fixtures().join("protos");
    let server = Server::start(&[
        "--protos",
        protos.to_str().unwrap(),
        "--handlers",
        fixtures().join("handlers").to_str().unwrap(),
        "--no-watch",
    ]);
    let entry = json!({
        "reply": {"idd": "x", "count": "many"},
        "delayms": 5,
        "headers": {"A": "1", "a": "2"}
    });
    let (status, body) = server
        .admin_call(
            "PUT",
            "/v1/handlers/kitchen.Kitchen/Get",
            None,
            Some(&entry.to_string()),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    let problems = body["problems"].as_array().expect("problems");
    let messages: Vec<&str> = problems
        .iter()
        .map(|p| p["message"].as_str().unwrap())
        .collect();
    assert_eq!(messages.len(), 4, "{messages:#?}");
    for path in ["reply.idd: ", "reply.count: ", "delayms: ", "headers.a: "] {
        assert!(
            messages.iter().any(|m| m.contains(path)),
            "{path} missing in {messages:#?}"
        );
    }
}

#[tokio::test]
async fn rules_test_binary_metadata_by_its_bytes() {
    let file = json!({"service": "kitchen.Kitchen", "methods": {"Get": {"rules": [
        {"when": {"metadata": {"x-id-bin": "aGVsbG8="}}, "reply": {"id": "equals"}},
        {"when": {"metadata": {"x-id-bin": {"present": true}}}, "reply": {"id": "present"}},
        {"reply": {"id": "none"}}
    ]}}});
    let (server, _handlers) = Server::kitchen_with(&file.to_string(), &[]);
    let protos = fixtures().join("protos");
    let client = Client::connect(server.addr, common::pool(&protos)).await;
    for (sent, wanted) in [
        (Some(&b"hello"[..]), "equals"),
        (Some(&b"\xff\x00"[..]), "present"),
        (None, "none"),
    ] {
        let mut md = MetadataMap::new();
        if let Some(bytes) = sent {
            md.insert_bin("x-id-bin", BinaryMetadataValue::from_bytes(bytes));
        }
        let (reply, _) = client
            .unary_with("kitchen.Kitchen/Get", json!({}), md)
            .await
            .unwrap();
        assert_eq!(reply["id"], wanted, "{sent:?}");
    }
}

#[tokio::test]
async fn range_tests_compare_64_bit_integers_exactly() {
    let file = json!({"service": "kitchen.Kitchen", "methods": {"Echo": {"rules": [
            {"when": {"request": {"big": {"gt": "9007199254740992"}}}, "reply": {"id": "big above"}},
            {"when": {"request": {"count": {"lte": -9007199254740993_i64}}}, "reply": {"id": "count below"}},
            {"reply": {"id": "neither"}}
        ]}, "EchoClient": {"reply": {"b": "{{big}}"}}}});
    let (server, _handlers) = Server::kitchen_with(&file.to_string(), &[]);
    let protos = fixtures().join("protos");
    let client = Client::connect(server.addr, common::pool(&protos)).await;
    for (request, wanted) in [
        (json!({"big": "9007199254740993"}), "big above"),
        (json!({"big": "9007199254740992"}), "neither"),
        (json!({"count": "-9007199254740993"}), "count below"),
        (json!({"count": "-9007199254740992"}), "neither"),
    ] {
        let reply = client.unary("kitchen.Kitchen/Echo", request.clone()).await;
        assert_eq!(reply.unwrap()["id"], wanted, "{request}");
    }
    // A copy that does not fit says so with the value as written (it showed `U64(…)`).
    let status = client
        .client_stream(
            "kitchen.Kitchen/EchoClient",
            vec![json!({"big": "5000000000"})],
        )
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(
        status
            .message()
            .contains("{{big}} is 5000000000, which does not fit reply.b, a field of type int32"),
        "{status:?}"
    );
}

#[test]
fn check_names_ten_thousand_broken_rules_in_one_pass() {
    let dir = tempfile::tempdir().unwrap();
    let rules: Vec<_> = (0..10_000)
        .map(|i| json!({"when": {"request": {"idd": format!("k{i}")}}, "reply": {"id": "r"}}))
        .collect();
    let file = json!({"service": "kitchen.Kitchen", "methods": {"Lookup": {"rules": rules}}});
    let text = serde_json::to_string_pretty(&file).unwrap();
    std::fs::write(dir.path().join("k.json"), &text).unwrap();
    let last = text
        .lines()
        .position(|l| l.contains(r#""idd": "k9999""#))
        .unwrap();
    let col = text.lines().nth(last).unwrap().find("\"idd\"").unwrap() + 1;
    let log = dir.path().join("check.log");
    let mut child = std::process::Command::new(common::binary())
        .arg("check")
        .args(["--protos", fixtures().join("protos").to_str().unwrap()])
        .args(["--handlers", dir.path().to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    // A few seconds in a debug build; the comparison of every pair took minutes.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("check of 10 000 broken rules still ran after 90 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let err = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(2));
    assert!(
        err.contains("10000 problem(s) found"),
        "{}",
        &err[err.len().saturating_sub(500)..]
    );
    assert!(
        err.contains(&format!(
            "k.json:{}:{col}: kitchen.Kitchen/Lookup: rules[9999].when.request.idd: ",
            last + 1
        )),
        "{}",
        &err[err.len().saturating_sub(500)..]
    );
}

/// The bytes of binary metadata `key` in `md`.
/// `protoserve check` of the fixture protos with `text` as the only handler file (`k.json`):
/// its exit code and what it printed on stderr.
fn check_one_file(text: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("k.json"), text).unwrap();
    let protos = fixtures().join("protos");
    let (code, _, err) = run(&[
        "check",
        "--protos",
        protos.to_str().unwrap(),
        "--handlers",
        dir.path().to_str().unwrap(),
    ]);
    (code, err)
}

fn bin(md: &MetadataMap, key: &str) -> Vec<u8> {
    md.get_bin(key)
        .unwrap_or_else(|| panic!("no {key} in {md:?}"))
        .to_bytes()
        .unwrap()
        .to_vec()
}

#[tokio::test]
async fn binary_header_values_in_handler_files_are_base64() {
    let file = json!({"service": "kitchen.Kitchen", "methods": {
        "Get": {"reply": {"id": "r"}, "headers": {"trace-bin": "/wBoaQ==", "Plain-Bin": "AAE"}},
        "Lookup": {"rules": [
            {"when": {"metadata": {"x-id-bin": "/wA="}}, "reply": {"id": "equals"},
             "headers": {"rule-bin": "AQI="}},
            {"when": {"metadata": {"x-id-bin": {"prefix": "aGVs", "in": ["aGVsbG8=", "aGVscA"]}}},
             "reply": {"id": "prefix"}},
            {"reply": {"id": "none"}}
        ], "headers": {"around-bin": "Kg=="}},
        "Fail": {"error": {"code": "NOT_FOUND", "message": "no", "metadata": {"trace-bin": "cmF3"}}}
    }});
    let (server, _handlers) = Server::kitchen_with(&file.to_string(), &[]);
    let client = Client::connect(server.addr, common::pool(&fixtures().join("protos"))).await;

    // Padded and unpadded, as sent by a reply.
    let (_, headers) = client
        .unary_with("kitchen.Kitchen/Get", json!({}), MetadataMap::new())
        .await
        .unwrap();
    assert_eq!(bin(&headers, "trace-bin"), b"\xff\x00hi");
    assert_eq!(bin(&headers, "plain-bin"), b"\x00\x01");

    // A rule's headers, the headers around the rules, and `when.metadata` on the bytes sent.
    for (sent, wanted) in [
        (&b"\xff\x00"[..], "equals"),
        (b"hello", "prefix"),
        (b"help", "prefix"),
        (b"helpful", "none"),
        (b"\xff", "none"),
    ] {
        let mut md = MetadataMap::new();
        md.insert_bin("x-id-bin", BinaryMetadataValue::from_bytes(sent));
        let (reply, headers) = client
            .unary_with("kitchen.Kitchen/Lookup", json!({}), md)
            .await
            .unwrap();
        assert_eq!(reply["id"], wanted, "{sent:?}");
        assert_eq!(bin(&headers, "around-bin"), b"*");
        if wanted == "equals" {
            assert_eq!(bin(&headers, "rule-bin"), b"\x01\x02");
        }
    }

    // An error's trailers.
    let status = client
        .unary("kitchen.Kitchen/Fail", json!({}))
        .await
        .unwrap_err();
    assert_eq!(bin(status.metadata(), "trace-bin"), b"raw");
}

#[tokio::test]
async fn a_binary_header_value_that_is_not_base64_is_located() {
    let file = r#"{"service": "kitchen.Kitchen", "methods": {
  "Get": { "reply": {}, "headers": { "trace-bin": "not base64!" } },
  "Lookup": { "rules": [
    { "when": { "metadata": { "x-bin": { "in": ["AA==", "A"] } } }, "reply": {} }
  ] },
  "Fail": { "error": { "code": 5, "metadata": { "e-bin": "a_b" } } }
}}"#;
    let at = |needle: &str| position_in(file, needle);
    let (code, err) = check_one_file(file);
    assert_eq!(code, 2, "{err}");
    for (needle, method, path) in [
        ("\"trace-bin\"", "Get", "headers.trace-bin"),
        ("\"A\"]", "Lookup", "rules[0].when.metadata.x-bin.in[1]"),
        ("\"e-bin\"", "Fail", "error.metadata.e-bin"),
    ] {
        let (line, col) = at(needle);
        let wanted = format!("k.json:{line}:{col}: kitchen.Kitchen/{method}: {path}: ");
        let found = err.lines().find(|l| l.contains(&wanted));
        assert!(
            found.is_some_and(|l| l.contains("is not base64") && l.contains("-bin")),
            "{wanted:?} missing in:\n{err}"
        );
    }
    assert!(err.contains("3 problem(s) found"), "{err}");

    // The same in an admin API body.
    let (server, _handlers) =
        Server::kitchen_with(r#"{"service": "kitchen.Kitchen", "methods": {}}"#, &[]);
    let body = "{\"reply\": {},\n \"headers\": {\"trace-bin\": \"%%\"}}";
    let (status, answer) = server
        .admin_call("PUT", "/v1/handlers/kitchen.Kitchen/Get", None, Some(body))
        .await;
    assert_eq!(status, 400, "{answer:#}");
    assert_eq!(answer["problems"][0]["line"], 2, "{answer:#}");
    assert_eq!(answer["problems"][0]["col"], 14, "{answer:#}");
    let message = answer["problems"][0]["message"].as_str().unwrap();
    assert!(message.contains("is not base64"), "{message}");
}

/// A handler file nested deeper than the JSON reader goes is reported as nested too deep, at
/// its line and column, not as a syntax error.
#[test]
fn a_handler_file_nested_too_deep_says_so() {
    let deep = format!("{}1{}", r#"{"inner": "#.repeat(200), "}".repeat(200));
    let text =
        format!(r#"{{"service": "kitchen.Kitchen", "methods": {{"Get": {{"reply": {deep}}}}}}}"#);
    let (code, err) = check_one_file(&text);
    assert_ne!(code, 0, "{err}");
    assert!(
        err.contains("k.json:1:") && err.contains("nested more than 128 deep"),
        "{err}"
    );
    assert!(!err.contains("recursion limit"), "{err}");
}

/// The 1-based line and column of the first `needle` in `text`, the column counting
/// characters; asserts that counting bytes would give another column.
fn char_position(text: &str, needle: &str) -> (usize, usize) {
    let (line, bytes) = position_in(text, needle);
    let start = text[..text.find(needle).unwrap()]
        .rfind('\n')
        .map_or(0, |i| i + 1);
    let col = text[start..start + bytes - 1].chars().count() + 1;
    assert_ne!(col, bytes, "{needle}: no multi-byte character before it");
    (line, col)
}

/// Columns count characters in every kind of file, as in .proto files: a problem after `é日本`
/// and a tab on its line is at the column an editor shows, not at its byte offset.
#[test]
fn columns_count_characters_in_every_kind_of_file() {
    let protos = fixtures().join("protos");
    let protos = protos.to_str().unwrap();
    // A problem found in an entry, and JSON that does not parse.
    let entry = "{\"service\": \"kitchen.Kitchen\", \"methods\": {\n\t\"Get\": { \"reply\": { \"id\": \"é日本\",\t\"count\": \"many\" } }\n}}";
    let (code, err) = check_one_file(entry);
    assert_eq!(code, 2, "{err}");
    let (line, col) = char_position(entry, "\"count\"");
    let wanted = format!("k.json:{line}:{col}: kitchen.Kitchen/Get: reply.count: ");
    assert!(err.contains(&wanted), "{wanted:?} missing in:\n{err}");
    let syntax = "{\"service\": \"kitchen.Kitchen\",\n \"methods\": {\"é日本\":\t]}}";
    let (code, err) = check_one_file(syntax);
    assert_eq!(code, 2, "{err}");
    let (line, col) = char_position(syntax, "]");
    let wanted = format!("k.json:{line}:{col}: ");
    let found = err.lines().find(|l| l.contains(&wanted));
    assert!(
        found.is_some_and(|l| !l.contains(" column ")),
        "{wanted:?} (with no byte column in the message) missing in:\n{err}"
    );

    // A data file.
    let dir = tempfile::tempdir().unwrap();
    for sub in ["handlers", "data", "protos"] {
        std::fs::create_dir(dir.path().join(sub)).unwrap();
    }
    let data = "{\"note\": \"é日本\",\t}";
    std::fs::write(dir.path().join("data/d.json"), data).unwrap();
    let folder = |sub: &str| dir.path().join(sub).display().to_string();
    let (handlers, data_dir) = (folder("handlers"), folder("data"));
    let (code, _, err) = run(&[
        "check",
        "--protos",
        protos,
        "--handlers",
        &handlers,
        "--data",
        &data_dir,
    ]);
    assert_eq!(code, 2, "{err}");
    let (line, col) = char_position(data, "}");
    assert!(err.contains(&format!("d.json:{line}:{col}: ")), "{err}");
    std::fs::remove_file(dir.path().join("data/d.json")).unwrap();

    // A .proto file, as protox reports it.
    let proto =
        "syntax = \"proto3\";\nmessage M { string s = 1 [json_name = \"é日本\"];\tint32 = 2; }\n";
    std::fs::write(dir.path().join("protos/m.proto"), proto).unwrap();
    let own = folder("protos");
    let (code, _, err) = run(&[
        "check",
        "--protos",
        &own,
        "--handlers",
        &handlers,
        "--no-cache",
    ]);
    assert_eq!(code, 2, "{err}");
    let (line, col) = char_position(proto, "= 2");
    assert!(err.contains(&format!("m.proto:{line}:{col}: ")), "{err}");
}

/// The same in an admin API body: a problem in the entry, and JSON that does not parse.
#[tokio::test]
async fn admin_bodies_count_columns_in_characters() {
    let (server, _handlers) =
        Server::kitchen_with(r#"{"service": "kitchen.Kitchen", "methods": {}}"#, &[]);
    for (body, needle) in [
        (
            "{\"reply\": {\"id\": \"é日本\",\t\"count\": \"many\"}}",
            "\"count\"",
        ),
        ("{\"reply\": {\"id\": \"é日本\",\t]}}", "]"),
    ] {
        let (status, answer) = server
            .admin_call("PUT", "/v1/handlers/kitchen.Kitchen/Get", None, Some(body))
            .await;
        assert_eq!(status, 400, "{answer:#}");
        let (line, col) = char_position(body, needle);
        let problem = &answer["problems"][0];
        assert_eq!(
            (problem["line"].as_u64(), problem["col"].as_u64()),
            (Some(line as u64), Some(col as u64)),
            "{body}: {answer:#}"
        );
    }
}

/// Each base64 mistake is named for what it is, at the value's line and column.
#[test]
fn base64_problems_say_what_is_wrong_where() {
    let file = r#"{"service": "kitchen.Kitchen", "methods": {
  "Get": { "reply": {}, "headers": { "trace-bin": "==" } },
  "Lookup": { "rules": [
    { "when": { "metadata": { "x-bin": { "in": ["aGk=", "aGk=x"] } } }, "reply": {} }
  ] },
  "Fail": { "error": { "code": 5, "metadata": { "e-bin": "aGk==", "f-bin": "aGlhY", "g-bin": "aGk_" } } }
}}"#;
    let (code, err) = check_one_file(file);
    assert_eq!(code, 2, "{err}");
    for (needle, method, path, says) in [
        (
            "\"trace-bin\"",
            "Get",
            "headers.trace-bin",
            "\"==\" is not base64: \"=\" at character 1 is padding in the wrong place",
        ),
        (
            "\"aGk=x\"",
            "Lookup",
            "rules[0].when.metadata.x-bin.in[1]",
            "\"aGk=x\" is not base64: \"=\" at character 4 is padding in the wrong place",
        ),
        (
            "\"e-bin\"",
            "Fail",
            "error.metadata.e-bin",
            "\"aGk==\" is not base64: it ends in 2 \"=\" where its 3 characters take 1",
        ),
        (
            "\"f-bin\"",
            "Fail",
            "error.metadata.f-bin",
            "\"aGlhY\" is not base64: its length cannot be base64",
        ),
        (
            "\"g-bin\"",
            "Fail",
            "error.metadata.g-bin",
            "'_' at character 4 is not in the base64 alphabet",
        ),
    ] {
        let (line, col) = position_in(file, needle);
        let wanted = format!("k.json:{line}:{col}: kitchen.Kitchen/{method}: {path}: ");
        let found = err.lines().find(|l| l.contains(&wanted));
        assert!(
            found.is_some_and(|l| l.contains(says)),
            "{wanted:?} saying {says:?} missing in:\n{err}"
        );
    }
    assert!(!err.contains("\"==\" is not base64: '='"), "{err}");
}

/// `{{…}}` in a metadata value (an error's `metadata`, a reply's, a rule's or a method's
/// `headers`) was sent literally, where an error's message next to it filled it in. Metadata
/// values are sent as written, so a placeholder in one is a problem at its line and column
/// that says what to do instead.
#[test]
fn placeholders_in_metadata_values_are_refused_where_they_are() {
    let text = r#"{
  "service": "kitchen.Kitchen",
  "methods": {
    "Fail": { "error": { "code": "NOT_FOUND", "message": "no {{name}}", "metadata": { "x-missing": "{{name}}" } } },
    "Get": { "reply": { "id": "x" }, "headers": { "x-id": "id-{{name}}" } },
    "Lookup": { "headers": { "x-all": "{{name}}" }, "rules": [
      { "error": { "code": 5, "metadata": { "x-rule-bin": "{{name}}" } } } ] }
  }
}
"#;
    let (code, err) = check_one_file(text);
    assert_eq!(code, 2, "{err}");
    for (needle, path) in [
        (
            "\"x-missing\"",
            "kitchen.Kitchen/Fail: error.metadata.x-missing",
        ),
        ("\"x-id\"", "kitchen.Kitchen/Get: headers.x-id"),
        ("\"x-all\"", "kitchen.Kitchen/Lookup: headers.x-all"),
        (
            "\"x-rule-bin\"",
            "kitchen.Kitchen/Lookup: rules[0].error.metadata.x-rule-bin",
        ),
    ] {
        let (line, col) = position_in(text, needle);
        let want = format!("k.json:{line}:{col}: {path}: metadata ");
        assert!(err.contains(&want), "missing {want:?} in:\n{err}");
    }
    assert!(
        err.contains("is not filled in in metadata, which is sent as written")
            && err.contains("ctx:set_header or ctx:set_trailer"),
        "{err}"
    );
    assert!(err.contains("4 problem(s) found"), "{err}");
}

/// A number the request carries that does not fit the reply field it is copied into (an int64
/// into an int32, a negative number into a uint64) failed the call with `INTERNAL` ("bad
/// response"), as if the server were broken, with only the request's field named. The request
/// is what the handler cannot answer: `INVALID_ARGUMENT`, naming both fields, the value and
/// what the reply field holds, in a reply and in a stream alike.
#[tokio::test]
async fn a_copied_number_that_does_not_fit_its_reply_field_is_invalid_argument() {
    let file = json!({"service": "kitchen.Kitchen", "methods": {
        "Echo": {"reply": {"b": "{{count}}", "big": "{{big}}"}},
        "EchoServer": {"stream": [{"id": "first"}, {"big": "{{count}}"}]}
    }});
    let (server, _handlers) = Server::kitchen_with(&file.to_string(), &[]);
    let protos = fixtures().join("protos");
    let client = Client::connect(server.addr, common::pool(&protos)).await;
    let fits = client
        .unary("kitchen.Kitchen/Echo", json!({"count": "-7", "big": "9"}))
        .await
        .unwrap();
    assert_eq!(fits["b"], -7, "{fits}");
    let status = client
        .unary("kitchen.Kitchen/Echo", json!({"count": "3000000000"}))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    let want = "kitchen.Kitchen/Echo: the request's {{count}} is 3000000000, which does not fit \
                reply.b, a field of type int32 (whole numbers from -2147483648 to 2147483647)";
    assert!(status.message().contains(want), "{status:?}");
    let status = client
        .server_stream("kitchen.Kitchen/EchoServer", json!({"count": "-1"}))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains(
            "{{count}} is -1, which does not fit stream[1].big, a field of type uint64 (whole numbers from 0 to"
        ),
        "{status:?}"
    );
}

/// `"name": "{{id}}"` in a rule was compared literally (it held only for a request whose name
/// was the text `{{id}}`), where a reply or an error message next to it fills the placeholder
/// in. A request field's placeholder in a value a rule compares with is a problem at its line
/// and column; text with `{{` that names no request field is still compared as written.
#[tokio::test]
async fn request_placeholders_in_rule_values_are_refused_where_they_are() {
    let text = r#"{
  "service": "kitchen.Kitchen",
  "methods": {
    "Get": { "rules": [ { "when": { "request": { "name": "{{id}}" }, "metadata": { "x-a": "{{ id }}" } }, "reply": {} } ] },
    "Lookup": { "rules": [ { "when": { "request": { "inner": { "label": { "in": ["x", "a{{inner.x}}"] } } } }, "reply": {} } ] }
  }
}
"#;
    let (code, err) = check_one_file(text);
    assert_eq!(code, 2, "{err}");
    for (needle, path, name) in [
        (
            "\"name\"",
            "kitchen.Kitchen/Get: rules[0].when.request.name",
            "id",
        ),
        (
            "\"x-a\"",
            "kitchen.Kitchen/Get: rules[0].when.metadata.x-a",
            "id",
        ),
        (
            "\"label\"",
            "kitchen.Kitchen/Lookup: rules[0].when.request.inner.label",
            "inner.x",
        ),
    ] {
        let (line, col) = position_in(text, needle);
        let want =
            format!("k.json:{line}:{col}: {path}: {{{{{name}}}}} is not filled in in a rule");
        assert!(err.contains(&want), "missing {want:?} in:\n{err}");
    }
    assert!(err.contains("3 problem(s) found"), "{err}");

    // `{{` naming no request field is a value like any other.
    let file = json!({"service": "kitchen.Kitchen", "methods": {"Get": {"rules": [
        {"when": {"request": {"name": {"prefix": "{{user}}"}}}, "reply": {"id": "literal"}},
        {"reply": {"id": "other"}}
    ]}}});
    let (server, _handlers) = Server::kitchen_with(&file.to_string(), &[]);
    let client = Client::connect(server.addr, common::pool(&fixtures().join("protos"))).await;
    for (name, want) in [("{{user}} here", "literal"), ("user", "other")] {
        let reply = client
            .unary("kitchen.Kitchen/Get", json!({"name": name}))
            .await
            .unwrap();
        assert_eq!(reply["id"], want, "{name}");
    }
}

/// A handler file with keys given twice: a method, an entry's `error`, a reply's field, a
/// header, and the file's `service`. Each once silently kept one of the two.
const TWICE: &str = r#"{
  "service": "kitchen.Kitchen",
  "methods": {
    "Get": { "reply": { "id": "first" } },
    "Lookup": {
      "reply": { "id": "a", "count": 1, "id": "b" },
      "headers": { "x-a": "1", "x-a": "2" }
    },
    "Fail": { "error": { "code": 5 }, "error": { "code": 3 } },
    "Get": { "reply": { "id": "second" } }
  },
  "service": "kitchen.Kitchen"
}"#;

/// Each key of `TWICE` given twice: the key, the object holding it, and the text its first
/// and its second occurrence start with.
const TWICE_KEYS: &[(&str, &str, &str, &str)] = &[
    (
        "id",
        " in methods.Lookup.reply",
        r#""id": "a""#,
        r#""id": "b""#,
    ),
    (
        "x-a",
        " in methods.Lookup.headers",
        r#""x-a": "1""#,
        r#""x-a": "2""#,
    ),
    (
        "error",
        " in methods.Fail",
        r#""error": { "code": 5"#,
        r#""error": { "code": 3"#,
    ),
    (
        "Get",
        " in methods",
        r#""Get": { "reply": { "id": "first"#,
        r#""Get": { "reply": { "id": "second"#,
    ),
    (
        "service",
        "",
        "\"service\": \"kitchen.Kitchen\",",
        "\"service\": \"kitchen.Kitchen\"\n}",
    ),
];

/// Asserts that `out` names each key of `TWICE_KEYS` at its second occurrence, with the line
/// and column of its first and a hint, and no other problem.
fn assert_every_key_given_twice(out: &str) {
    for (key, object, first, again) in TWICE_KEYS {
        let (line, col) = position_in(TWICE, again);
        let (first_line, first_col) = position_in(TWICE, first);
        let wanted = format!(
            "k.json:{line}:{col}: duplicate key \"{key}\"{object}: the first is at line {first_line}, column {first_col}; "
        );
        let found = out.lines().position(|l| l.contains(&wanted));
        let found = found.unwrap_or_else(|| panic!("{wanted:?} missing in:\n{out}"));
        let hint = out.lines().nth(found + 1).unwrap_or_default();
        assert!(
            hint.contains(&format!("help: keep one \"{key}\" in this object")),
            "no hint after {wanted:?} in:\n{out}"
        );
    }
    let count = format!("{} problem(s) found", TWICE_KEYS.len());
    assert!(out.contains(&count), "{count:?} missing in:\n{out}");
}

/// A key given twice in a handler file is refused by `check` and at startup, each at its
/// second occurrence: serde_json kept the last `"Get"`, `"error"`, reply field and header
/// without a word (and refused a second `"service"` at the end of the key, naming neither
/// occurrence's line).
#[test]
fn keys_given_twice_in_a_handler_file_are_refused_where_they_repeat() {
    let (code, err) = check_one_file(TWICE);
    assert_eq!(code, 2, "{err}");
    assert_every_key_given_twice(&err);

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("k.json"), TWICE).unwrap();
    let protos = fixtures().join("protos");
    let (code, _, err) = run(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "off",
        "--protos",
        protos.to_str().unwrap(),
        "--handlers",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "{err}");
    assert_every_key_given_twice(&err);
}

/// A handler file saved with a method given twice is refused by the reload it sets off (the
/// server keeps serving the file as it was), and the status names the repeat where it is: the
/// reload used to succeed, serving the second entry.
#[tokio::test]
async fn a_reload_refuses_a_handler_file_with_a_key_given_twice() {
    let project = common::project::Project::new();
    let server = project.start(&[]);
    let client = project.client(&server).await;
    let twice = common::project::live_handler("v2").replace(
        "    \"Talk\"",
        "    \"Chat\": { \"reply\": { \"text\": \"v3: {{text}}\" } },\n    \"Talk\"",
    );
    project.write("handlers/live.json", &twice);
    let (line, col) = position_in(&twice, "\"Chat\": { \"reply\": { \"text\": \"v3");
    let (first_line, _) = position_in(&twice, "\"Chat\"");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let problem = loop {
        let status = server.admin_get("/v1/status").await;
        let problem = status["last_reload"]["problems"][0].clone();
        if problem["message"]
            .as_str()
            .is_some_and(|m| m.contains("duplicate key"))
        {
            break problem;
        }
        assert!(std::time::Instant::now() < deadline, "{status:#}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(
        (&problem["line"], &problem["col"]),
        (&json!(line), &json!(col)),
        "{problem:#}"
    );
    let message = problem["message"].as_str().unwrap();
    assert!(
        message.contains(&format!(
            "duplicate key \"Chat\" in methods: the first is at line {first_line}, column 5"
        )),
        "{message}"
    );
    let reply = client
        .unary("live.Live/Chat", json!({"text": "x"}))
        .await
        .unwrap();
    assert_eq!(
        reply,
        json!({"text": "v1: x"}),
        "the file as it was serves on"
    );
}

/// A handler file with a key given twice in each of 5 000 nested objects (60 KB) names each
/// repeat's object in a few words: each was spelled in full (`k.k.k…`, 10 KB at the deepest),
/// so `check` printed 26 MB, and a file of a megabyte would have printed gigabytes.
#[test]
fn repeats_in_deeply_nested_objects_name_their_objects_briefly() {
    let depth = 5_000;
    let text = common::nested_repeats(depth);
    let (code, err) = check_one_file(&text);
    assert_eq!(code, 2, "{}", &err[..err.len().min(2000)]);
    common::assert_nested_repeats_named_briefly(&err, "k.json", depth);
}

/// A handler's `headers` (or an error's `metadata`) past what one header list may hold: 30 000
/// entries made the header map panic ("size overflows MAX_SIZE"), so `check` and startup ended
/// with exit 101 and a backtrace; a list past 8 KiB, which clients refuse, passed. Each is one
/// problem at its place, saying the limit (7680 bytes, which leave the protocol's own entries
/// room in a client's 8 KiB); a list at the limit is served.
#[test]
fn metadata_past_what_a_header_list_holds_is_refused_at_its_place() {
    let many: Vec<String> = (0..30_000)
        .map(|i| format!("\"x-k{i}\": \"{i}\""))
        .collect();
    let big = "v".repeat(8_200);
    let text = format!(
        r#"{{
  "service": "kitchen.Kitchen",
  "methods": {{
    "Get": {{ "reply": {{ "id": "x" }}, "headers": {{ {} }} }},
    "Fail": {{ "error": {{ "code": 5, "metadata": {{ "x-big": "{big}" }} }} }},
    "Lookup": {{ "reply": {{}}, "headers": {{ "x-fits": "{}" }} }}
  }}
}}
"#,
        many.join(", "),
        "v".repeat(7_680 - 32 - "x-fits".len())
    );
    let (code, err) = check_one_file(&text);
    assert_eq!(code, 2, "{err}");
    assert!(!err.contains("panicked"), "{err}");
    for (needle, path, entries) in [
        (
            "\"headers\"",
            "kitchen.Kitchen/Get: headers",
            "30000 metadata entries",
        ),
        (
            "\"metadata\"",
            "kitchen.Kitchen/Fail: error.metadata",
            "1 metadata entries",
        ),
    ] {
        let (line, col) = position_in(&text, needle);
        let want = format!("k.json:{line}:{col}: {path}: {entries}");
        assert!(err.contains(&want), "missing {want:?} in:\n{err}");
    }
    assert!(err.contains("at most 7680 bytes are sent"), "{err}");
    assert!(err.contains("2 problem(s) found"), "{err}");
}

/// A handler file with a key given twice listed that repeat and nothing else: a misspelled
/// method in the same file was only named by the next `check`, once the repeat was fixed. The
/// rest of the file is read too, so one pass lists every problem.
#[test]
fn a_repeat_and_a_misspelled_method_are_listed_in_one_pass() {
    let text = r#"{
  "service": "kitchen.Kitchen",
  "methods": {
    "Get": { "reply": { "id": "a" }, "reply": { "id": "b" } },
    "Gte": { "reply": {} }
  }
}
"#;
    let (code, err) = check_one_file(text);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("k.json:4:38: duplicate key \"reply\""),
        "{err}"
    );
    assert!(
        err.contains("k.json:5:5: kitchen.Kitchen/Gte: kitchen.Kitchen has no method \"Gte\""),
        "{err}"
    );
    assert!(err.contains("2 problem(s) found"), "{err}");
}

/// Lists that each fit a header block but go out in one: the entry's headers next to `rules`
/// and a rule's headers (one block with the reply's first message), a rule's error metadata
/// with the entry's headers (one Trailers-Only block). Each passed `check`, and a client
/// refused the block instead of reading the answer. Each action is checked with what it is
/// sent with.
#[test]
fn lists_sent_in_one_header_block_are_checked_together() {
    let half = "v".repeat(5_000);
    let text = format!(
        r#"{{
  "service": "kitchen.Kitchen",
  "methods": {{
    "Get": {{ "headers": {{ "x-entry": "{half}" }}, "rules": [
      {{ "reply": {{ "id": "a" }}, "headers": {{ "x-rule": "{half}" }} }} ] }},
    "Fail": {{ "headers": {{ "x-entry": "{half}" }}, "rules": [
      {{ "error": {{ "code": 5, "metadata": {{ "x-err": "{half}" }} }} }} ] }},
    "Lookup": {{ "headers": {{ "x-entry": "{half}" }}, "rules": [
      {{ "reply": {{}}, "headers": {{ "x-small": "1" }} }} ] }}
  }}
}}
"#
    );
    let (code, err) = check_one_file(&text);
    assert_eq!(code, 2, "{err}");
    for (needle, path) in [
        ("\"x-rule\"", "kitchen.Kitchen/Get: rules[0].headers"),
        ("\"x-err\"", "kitchen.Kitchen/Fail: rules[0].error.metadata"),
    ] {
        let (line, _) = position_in(&text, needle);
        let want = format!("k.json:{line}:");
        assert!(
            err.lines().any(|l| l.contains(&want)
                && l.contains(path)
                && l.contains("one header block of 10")),
            "missing {path} at line {line} in:\n{err}"
        );
    }
    assert!(err.contains("2 problem(s) found"), "{err}");
}

/// A second `"service"` stopped the reading of the file there: a trailing comma after it was
/// named only once the repeat was fixed. Both are listed in one pass.
#[test]
fn a_second_service_and_a_later_syntax_error_are_listed_in_one_pass() {
    let text = "{\n  \"service\": \"kitchen.Kitchen\",\n  \"service\": \"kitchen.Kitchen\",\n  \"methods\": { \"Get\": { \"reply\": {} }, }\n}\n";
    let (code, err) = check_one_file(text);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("k.json:3:3: duplicate key \"service\""),
        "{err}"
    );
    assert!(err.contains("k.json:4:40: "), "{err}");
    assert!(err.contains("2 problem(s) found"), "{err}");
}

#[test]
fn a_regex_that_does_not_parse_is_one_error_line() {
    let file = json!({"service": "kitchen.Kitchen", "methods": {
        "Get": {"rules": [{"when": {"request": {"name": {"regex": "ab(?=x)"}}}, "reply": {}}]}
    }});
    let (code, err) = check_one_file(&file.to_string());
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("1 problem(s) found"), "{err}");
    let headlines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(headlines.len(), 1, "{err}");
    assert!(
        headlines[0].ends_with(
            "regex: invalid regex: look-around, including look-ahead and look-behind, is not supported"
        ),
        "{err}"
    );
    assert!(err.contains("\n    ab(?=x)\n      ^^^\n"), "{err}");
}

/// A constant reply larger than `--max-message-size` passed `check`, and then every call of the
/// method failed with RESOURCE_EXHAUSTED. It is refused at its entry, in a reply, a stream's
/// item or a rule alike; a reply whose size depends on the request is left to the call.
#[test]
fn a_constant_reply_over_the_message_size_is_refused_at_its_entry() {
    let big = "x".repeat(2000);
    let greeter = format!(
        r#"{{"service": "helloworld.Greeter", "methods": {{
  "SayHello": {{ "reply": {{ "message": "{big}" }} }},
  "SayHelloAgain": {{ "rules": [
    {{ "when": {{ "request": {{ "name": "a" }} }}, "reply": {{ "message": "short" }} }},
    {{ "reply": {{ "message": "{big}" }} }}
  ] }}
}}}}"#
    );
    let guide = format!(
        r#"{{"service": "routeguide.RouteGuide", "methods": {{
  "ListFeatures": {{ "stream": [ {{ "name": "one" }}, {{ "name": "{big}" }} ] }},
  "GetFeature": {{ "reply": {{ "name": "{{{{latitude}}}}{big}" }} }}
}}}}"#
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("greeter.json"), &greeter).unwrap();
    std::fs::write(dir.path().join("guide.json"), &guide).unwrap();
    let (code, _, err) = run(&[
        "check",
        "--protos",
        common::repo().join("protos").to_str().unwrap(),
        "--handlers",
        dir.path().to_str().unwrap(),
        "--max-message-size",
        "1KiB",
    ]);
    assert_eq!(code, 2, "{err}");
    for (file, method) in [
        ("greeter.json", "helloworld.Greeter/SayHello"),
        ("greeter.json", "helloworld.Greeter/SayHelloAgain"),
        ("guide.json", "routeguide.RouteGuide/ListFeatures"),
    ] {
        assert!(
            err.lines().any(|l| l.contains(file)
                && l.contains(&format!("{method}: a reply of this entry is at least"))
                && l.contains("over --max-message-size (1024 bytes)")),
            "{method}: {err}"
        );
    }
    assert!(!err.contains("GetFeature"), "{err}");
    assert!(err.contains("3 problem(s) found"), "{err}");
}
