//! Regressions of admin API requests that cost the server far more than their size: an unknown
//! method name of a megabyte used to be compared, character by character, with every method
//! served ("did you mean"), which for a big tree kept a core busy for minutes per request.
//!
//! - The problems of a `PUT /v1/handlers/…` body had no position: the same entry in a handler
//!   file gets `file:line:col` for each problem, the body got only the method's name.
//! - A body that starts with a byte-order mark (a handler entry saved by a Windows editor and
//!   sent with `curl --data-binary @entry.json`) was refused as "not valid JSON" at 1:1; the
//!   same text in a handler file loads, its mark dropped. The body's is dropped too now.
//! - A body nested more than 128 deep was "not valid JSON: recursion limit exceeded"; it says
//!   what the limit is now.
//! - A verify explained every call that did not match, each with every condition it failed and
//!   every value of an `in` list, and held every explanation until the end to pick the closest
//!   five: a list of 200 000 values over 500 calls took a gigabyte. Only the closest calls are
//!   explained now, an `in` list by its first values, a call's failures by the first 20.
//! - A verify whose client went away, or that outlived the listener's 120 s, went on checking
//!   the journal to the end, however long that took, and every journal read and verify after
//!   it waited for it: a verify stops at the next message it would check once nobody waits.
//! - Over gRPC, a `ListCalls` metadata filter whose key held `=` was split at it into another
//!   filter (`{"x-user=al": "ice"}` read as `x-user` = `al=ice`, and listed that call); no
//!   metadata key holds `=`, so such a key is refused, and a value with `=` reads the same on
//!   both front ends.
//! - A verify with a byte-order mark (a body, or a file given to `protoserve verify`) was "not
//!   valid JSON" at 1:1; the mark is dropped, as from a handler file.
//! - A `PUT /v1/handlers/…` body with a key given twice was installed with the last of the two;
//!   it is refused with 400, each repeat a problem at its line and column, as in a file.
//! - A body with a key given twice in each of many nested objects cost the square of its size:
//!   each repeat spelled its object's path in full, so a 60 KB body was answered with 26 MB.
//! - A `POST /v1/verify` body that was not JSON was placed by serde_json's own words, counting
//!   bytes (a key given twice in it counted characters), and one nested more than 128 deep was
//!   "not valid JSON: recursion limit exceeded"; it is placed in characters and said to be too
//!   deep now.

mod common;

use std::time::{Duration, Instant};

use common::{Client, Server};
use serde_json::json;

/// A proto with one service of `n` methods, and a handler for the first, in a temporary folder.
fn many_methods(n: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mut proto = String::from(
        "syntax = \"proto3\";\npackage many;\nmessage M { string s = 1; }\nservice Many {\n",
    );
    for i in 0..n {
        proto.push_str(&format!("  rpc MethodNumber{i:05}(M) returns (M);\n"));
    }
    proto.push_str("}\n");
    std::fs::create_dir(dir.path().join("protos")).unwrap();
    std::fs::write(dir.path().join("protos/many.proto"), proto).unwrap();
    std::fs::create_dir(dir.path().join("handlers")).unwrap();
    std::fs::write(
        dir.path().join("handlers/many.json"),
        r#"{"service": "many.Many", "methods": {"MethodNumber00000": {"echo": {}}}}"#,
    )
    .unwrap();
    dir
}

#[tokio::test]
async fn a_huge_unknown_method_name_is_refused_without_comparing_it_to_every_method() {
    let dir = many_methods(3000);
    let server = Server::start(&[
        "--protos",
        dir.path().join("protos").to_str().unwrap(),
        "--handlers",
        dir.path().join("handlers").to_str().unwrap(),
    ]);
    // Close to the 1 MiB body limit. Comparing it with 3 000 names took minutes.
    let name = format!("many.Many/{}", "E".repeat(1000 * 1000));
    let body = json!({"method": name, "exactly": 1});
    let answer = tokio::time::timeout(
        Duration::from_secs(60),
        server.admin_post("/v1/verify", &body),
    )
    .await;
    let (status, json) = answer.expect("the verify was answered");
    assert_eq!(status, 404, "{json:#}");
    assert!(json["message"]
        .as_str()
        .unwrap()
        .starts_with("unknown method"));

    // A near miss still gets its suggestion.
    let (status, json) = server
        .admin_post(
            "/v1/verify",
            &json!({"method": "many.Many/MethodNumber0000", "exactly": 1}),
        )
        .await;
    assert_eq!(status, 404, "{json:#}");
    assert!(
        json["message"].as_str().unwrap().contains("did you mean"),
        "{json:#}"
    );
}

/// The 1-based line and column of the first `needle` in `text`.
fn position(text: &str, needle: &str) -> (u64, u64) {
    let at = text
        .find(needle)
        .unwrap_or_else(|| panic!("{needle:?} in {text}"));
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let col = at - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line as u64, col as u64)
}

#[tokio::test]
async fn a_put_handler_body_has_each_problem_at_its_line_and_column() {
    let server = Server::repo_default();
    let put = |body: &'static str| {
        let server = &server;
        async move {
            server
                .admin_call(
                    "PUT",
                    "/v1/handlers/helloworld.Greeter/SayHello",
                    None,
                    Some(body),
                )
                .await
        }
    };
    let source = "runtime handler helloworld.Greeter/SayHello";

    // One problem of every kind `check` finds in an entry, each where it is written.
    let body = r#"{
  "rules": [
    { "when": { "request": { "name": { "regex": "(" } } },
      "reply": { "message": "hi {{nam}}" } },
    { "when": { "metadata": { "x-a": { "prefx": "b" } } }, "reply": { "mesage": "x" } },
    { "reply": { "message": "ok" }, "headers": { "a b": "1" }, "delay_ms": -1 }
  ],
  "delay": 5
}"#;
    let (status, answer) = put(body).await;
    assert_eq!(status, 400, "{answer:#}");
    let problems = answer["problems"].as_array().expect("problems").clone();
    let wanted = [
        ("\"regex\"", "invalid regex"),
        ("\"message\": \"hi", "\"nam\""),
        ("\"prefx\"", "unknown metadata operator"),
        ("\"mesage\"", "no field \"mesage\""),
        ("\"a b\"", "not a valid metadata key"),
        ("\"delay_ms\"", "whole number of milliseconds"),
        ("\"delay\"", "unknown key \"delay\""),
    ];
    assert_eq!(problems.len(), wanted.len(), "{answer:#}");
    for (problem, (key, says)) in problems.iter().zip(wanted) {
        let (line, col) = position(body, key);
        let message = problem["message"].as_str().unwrap();
        assert_eq!(problem["file"], source, "{problem:#}");
        assert_eq!(
            (problem["line"].as_u64(), problem["col"].as_u64()),
            (Some(line), Some(col)),
            "{key} ({says}): {problem:#}"
        );
        assert!(
            message.starts_with(&format!("{source}:{line}:{col}: ")) && message.contains(says),
            "{message}"
        );
    }

    // JSON that does not parse: where the parser stopped, in the same form.
    let (status, answer) = put("{\n  \"reply\": { \"message\": \"x\", }\n}").await;
    assert_eq!(status, 400, "{answer:#}");
    assert_eq!(answer["problems"][0]["file"], source, "{answer:#}");
    assert_eq!(answer["problems"][0]["line"], 2, "{answer:#}");
    assert_eq!(answer["problems"][0]["col"], 30, "{answer:#}");
    let message = answer["message"].as_str().unwrap();
    assert!(message.contains("not valid JSON"), "{message}");

    // An entry that is not an object: at its first character.
    let (status, answer) = put("\n  [1]").await;
    assert_eq!(status, 400, "{answer:#}");
    assert_eq!(
        (
            &answer["problems"][0]["line"],
            &answer["problems"][0]["col"]
        ),
        (&json!(2), &json!(3)),
        "{answer:#}"
    );
}

/// A `PUT /v1/handlers/…` body with a leading byte-order mark installs, as a handler file with
/// one loads; its problems are located as without the mark.
#[tokio::test]
async fn a_put_handler_body_with_a_byte_order_mark_is_taken_as_a_file_is() {
    let server = Server::repo_default();
    let path = "/v1/handlers/helloworld.Greeter/SayHello";
    let body = "\u{feff}{\"reply\": {\"message\": \"marked\"}}";
    let (status, answer) = server.admin_call("PUT", path, None, Some(body)).await;
    assert_eq!(status, 200, "{answer:#}");

    let body = "\u{feff}{\"reply\": {\"mesage\": \"x\"}}";
    let (status, answer) = server.admin_call("PUT", path, None, Some(body)).await;
    assert_eq!(status, 400, "{answer:#}");
    let problem = &answer["problems"][0];
    assert!(
        problem["message"]
            .as_str()
            .unwrap()
            .contains("no field \"mesage\""),
        "{problem:#}"
    );
    // `"mesage"` is the 12th character after the mark.
    assert_eq!(
        (problem["line"].as_u64(), problem["col"].as_u64()),
        (Some(1), Some(12)),
        "{problem:#}"
    );
}

/// A `PUT /v1/handlers/…` body nested deeper than the JSON reader goes is refused as nested
/// too deep, not as invalid JSON.
#[tokio::test]
async fn a_put_handler_body_nested_too_deep_says_so() {
    let server = Server::repo_default();
    let deep = format!("{}1{}", r#"{"inner": "#.repeat(200), "}".repeat(200));
    let body = format!(r#"{{"reply": {deep}}}"#);
    let (status, answer) = server
        .admin_call(
            "PUT",
            "/v1/handlers/helloworld.Greeter/SayHello",
            None,
            Some(&body),
        )
        .await;
    assert_eq!(status, 400, "{answer:#}");
    let message = answer["problems"][0]["message"].as_str().unwrap();
    assert!(message.contains("nested more than 128 deep"), "{message}");
    assert!(!message.contains("not valid JSON"), "{message}");
}

/// `n` calls to `helloworld.Greeter/SayHello` on `server`, 50 at a time.
async fn say_hello_calls(server: &Server, n: usize) {
    let client = Client::connect(server.addr, common::pool(&common::repo().join("protos"))).await;
    for _ in 0..n / 50 {
        let calls = (0..50).map(|i| {
            let client = &client;
            async move {
                client
                    .unary(
                        "helloworld.Greeter/SayHello",
                        json!({"name": format!("Ann {i}")}),
                    )
                    .await
                    .unwrap()
            }
        });
        futures_util::future::join_all(calls).await;
    }
}

/// A verify's `in` list of 200 000 values, which no call matches: each call that did not match
/// was explained with the whole list written out (a megabyte), and every explanation was held
/// until the end, to pick the closest five. 500 calls took over a gigabyte and half a minute.
#[tokio::test]
async fn a_verify_with_a_huge_in_list_explains_only_the_closest_calls_and_briefly() {
    let server = Server::repo_default();
    say_hello_calls(&server, 500).await;
    let before = common::proc_status_kib(server.pid(), "VmRSS");
    let body = json!({
        "method": "helloworld.Greeter/SayHello",
        "when": {"request": {"name": {"in": vec!["x"; 200_000]}}},
    });
    let (status, answer) = server.admin_post("/v1/verify", &body).await;
    let peak = common::proc_status_kib(server.pid(), "VmHWM");
    assert_eq!(status, 200, "{}", &answer.to_string()[..2000]);
    // The list itself, as JSON values, is a few megabytes.
    assert!(
        peak < before + 128 * 1024,
        "peak RSS {peak} KiB, {before} KiB before the verify"
    );
    assert_eq!(answer["calls_to_method"], 500);
    let misses = answer["near_misses"].as_array().unwrap();
    assert_eq!(misses.len(), 5);
    let failed = misses[0]["failed"][0].as_str().unwrap();
    assert!(
        failed.starts_with(r#"request.name: wanted one of ["x", "x""#)
            && failed.contains("… 199990 more]")
            && failed.len() < 200,
        "{}",
        &failed[..failed.len().min(300)]
    );
}

/// A verify with 5 000 metadata conditions, which every call fails: each near miss said all
/// 5 000, so the answer for 50 near misses was 50 times the conditions' text. It says the
/// first 20 of them now, and how many more.
#[tokio::test]
async fn a_near_miss_says_its_first_failed_conditions_and_counts_the_others() {
    let server = Server::repo_default();
    say_hello_calls(&server, 100).await;
    let metadata: serde_json::Map<String, serde_json::Value> = (0..5000)
        .map(|i| (format!("x-key-{i:05}"), json!("wanted")))
        .collect();
    let body = json!({
        "method": "helloworld.Greeter/SayHello",
        "when": {"metadata": metadata},
        "show": 50,
    });
    let (status, answer) = server.admin_post("/v1/verify", &body).await;
    let text = answer.to_string();
    assert_eq!(status, 200, "{}", &text[..text.len().min(2000)]);
    let misses = answer["near_misses"].as_array().unwrap();
    assert_eq!(misses.len(), 50);
    let failed = misses[0]["failed"].as_array().unwrap();
    assert_eq!(failed.len(), 21, "{:?}…", &failed[..failed.len().min(3)]);
    assert_eq!(
        failed[0],
        r#"metadata x-key-00000: wanted "wanted", got missing"#
    );
    assert_eq!(failed[20], "… and 4980 more");
    assert!(text.len() < 200_000, "the answer is {} bytes", text.len());
}

/// A verify that starts with a byte-order mark (saved by a Windows editor), sent as a body or
/// given to `protoserve verify` as a file, was refused as "not valid JSON" at 1:1; a handler
/// file or a `PUT /v1/handlers/…` body with one is read without it, and so is a verify now.
#[tokio::test]
async fn a_verify_with_a_byte_order_mark_is_read_as_a_file_is() {
    let server = Server::repo_default();
    say_hello_calls(&server, 50).await;
    let verify = "\u{feff}{\"method\": \"helloworld.Greeter/SayHello\", \"exactly\": 50}";
    let (status, answer) = server
        .admin_call("POST", "/v1/verify", None, Some(verify))
        .await;
    assert_eq!(status, 200, "{answer:#}");
    assert_eq!(answer["ok"], true, "{answer:#}");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("expected-calls.json");
    std::fs::write(&file, verify).unwrap();
    let admin = server.admin_addr().to_string();
    let (code, out, err) = common::run(&["verify", "--admin", &admin, file.to_str().unwrap()]);
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
}

/// Sends `POST /v1/verify` with `body` over a connection of its own, and closes it without
/// reading the answer.
async fn verify_and_go_away(admin: std::net::SocketAddr, body: &str, after: Duration) {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(admin).await.unwrap();
    let head = format!(
        "POST /v1/verify HTTP/1.1\r\nhost: {admin}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body.as_bytes()).await.unwrap();
    tokio::time::sleep(after).await;
    drop(stream);
}

/// A verify given up by its client stops, and the journal reads waiting for their turn go on:
/// the verify went on to the end, and a read waited as long. Measured against the time the same
/// verify takes when its answer is read.
#[tokio::test]
async fn a_verify_nobody_waits_for_stops_and_lets_journal_reads_go_on() {
    let server = Server::repo_default();
    say_hello_calls(&server, 3000).await;
    // Each call matches, after its name is compared with 80 000 others.
    let mut names: Vec<String> = (0..80_000).map(|i| format!("n{i}")).collect();
    names.extend((0..50).map(|i| format!("Ann {i}")));
    let body = json!({
        "method": "helloworld.Greeter/SayHello",
        "when": {"request": {"name": {"in": names}}},
        "exactly": 3000,
    });
    let started = Instant::now();
    let (status, answer) = server.admin_post("/v1/verify", &body).await;
    let whole = started.elapsed();
    assert_eq!(status, 200, "{answer:#}");
    assert_eq!(answer["ok"], true, "{answer:#}");

    verify_and_go_away(server.admin_addr(), &body.to_string(), whole / 5).await;
    // The server notices the closed connection at once; a read then waits for the verify to
    // stop, not to end.
    tokio::time::sleep(whole / 20).await;
    let started = Instant::now();
    server
        .admin_get("/v1/journal?page_size=1&view=summary")
        .await;
    let read = started.elapsed();
    assert!(
        read < whole / 2,
        "a journal read took {read:?} after a verify was given up; the verify takes {whole:?}"
    );
}

/// A method name the admin API does not know was repeated whole in its answer: a journal
/// filter or a verify naming a method of tens of kilobytes got an answer as long. The name is
/// now repeated by its first 200 bytes, with the closest name still suggested.
#[tokio::test]
async fn a_long_unknown_name_is_repeated_clipped() {
    let server = Server::repo_default();
    let long = format!("helloworld.Greeter/{}", "x".repeat(60_000));
    let (status, json) = server
        .admin_call("GET", &format!("/v1/journal?method={long}"), None, None)
        .await;
    assert_eq!(status, 404, "{json:#}");
    let message = json["message"].as_str().unwrap();
    assert!(message.len() < 1_000, "{} bytes", message.len());
    assert!(message.contains("helloworld.Greeter/xxx"), "{message}");
    assert!(message.contains('…'), "{message}");

    let (status, json) = server
        .admin_post("/v1/verify", &json!({"method": long, "exactly": 1}))
        .await;
    assert_eq!(status, 404, "{json:#}");
    let message = json["message"].as_str().unwrap();
    assert!(message.len() < 1_000, "{} bytes", message.len());
    assert!(message.starts_with("unknown method"), "{message}");
}

#[tokio::test]
async fn a_list_calls_metadata_key_with_an_equals_sign_is_refused_not_split() {
    let server = Server::repo_default();
    let greeter = Client::connect(server.addr, common::pool(&common::repo().join("protos"))).await;
    for user in ["al=ice", "al"] {
        let mut md = tonic::metadata::MetadataMap::new();
        md.insert("x-user", user.parse().unwrap());
        greeter
            .unary_with("helloworld.Greeter/SayHello", json!({"name": "a"}), md)
            .await
            .unwrap();
    }
    let pool = protoserve::admin::schema::compile()
        .unwrap()
        .service
        .parent_pool()
        .clone();
    let admin = Client::connect(server.admin_addr(), pool).await;
    let err = admin
        .unary(
            "protoserve.admin.v1.Admin/ListCalls",
            json!({"metadata": {"x-user=al": "ice"}}),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("\"x-user=al\": not a metadata key"),
        "{}",
        err.message()
    );
    // A value with `=`: one call, on both front ends.
    let page = admin
        .unary(
            "protoserve.admin.v1.Admin/ListCalls",
            json!({"metadata": {"x-user": "al=ice"}}),
        )
        .await
        .unwrap();
    assert_eq!(page["calls"].as_array().map(Vec::len), Some(1), "{page:#}");
    assert_eq!(page["calls"][0]["metadata"]["x-user"], "al=ice", "{page:#}");
    let page = server
        .admin_get("/v1/journal?metadata=x-user=al%3Dice")
        .await;
    assert_eq!(page["calls"].as_array().map(Vec::len), Some(1), "{page:#}");
    assert_eq!(page["calls"][0]["metadata"]["x-user"], "al=ice", "{page:#}");
}

/// A `PUT /v1/handlers/…` body with keys given twice is refused with 400, each repeat a
/// problem at its line and column naming the line of the first, and nothing changes: the
/// handler used to be installed with the last of each (here the second `"reply"`).
#[tokio::test]
async fn a_runtime_handler_with_keys_given_twice_is_refused() {
    let (server, _handlers) = Server::kitchen_with(
        r#"{"service": "kitchen.Kitchen", "methods": {"Get": {"reply": {"id": "file"}}}}"#,
        &[],
    );
    let body = "{\n  \"reply\": { \"id\": \"first\" },\n  \"reply\": { \"id\": \"second\", \"count\": 1, \"count\": 2 }\n}";
    let (status, answer) = server
        .admin_call("PUT", "/v1/handlers/kitchen.Kitchen/Get", None, Some(body))
        .await;
    assert_eq!(status, 400, "{answer:#}");
    assert_eq!(answer["error"], "invalid", "{answer:#}");
    let problems = answer["problems"].as_array().expect("problems");
    let wanted = [
        (
            position(body, "\"reply\": { \"id\": \"second\""),
            "duplicate key \"reply\": the first is at line 2, column 3; ",
            "help: keep one \"reply\" in this object",
        ),
        (
            position(body, "\"count\": 2"),
            "duplicate key \"count\" in reply: the first is at line 3, column 30; ",
            "help: keep one \"count\" in this object",
        ),
    ];
    assert_eq!(problems.len(), wanted.len(), "{answer:#}");
    for (problem, ((line, col), message, hint)) in problems.iter().zip(wanted) {
        assert_eq!(
            problem["file"], "runtime handler kitchen.Kitchen/Get",
            "{problem:#}"
        );
        assert_eq!(
            (problem["line"].as_u64(), problem["col"].as_u64()),
            (Some(line), Some(col)),
            "{problem:#}"
        );
        let text = problem["message"].as_str().unwrap();
        assert!(
            text.contains(message) && text.contains(hint),
            "{message:?} and {hint:?} in {text}"
        );
    }
    let client = Client::connect(
        server.addr,
        common::pool(&common::fixtures().join("protos")),
    )
    .await;
    let reply = client
        .unary("kitchen.Kitchen/Get", json!({"id": "x"}))
        .await
        .unwrap();
    assert_eq!(reply["id"], "file", "nothing changed");
}

/// A `PUT /v1/handlers/…` body with a key given twice in each of 5 000 nested objects (60 KB)
/// is answered in a few kilobytes: each object was spelled in full (`k.k.k…`), so the answer
/// was 26 MB, and a body of the 1 MiB allowed would have made the server build gigabytes; once
/// the names were short, each of 80 000 problems was still listed twice (a 72 MB answer to a
/// 960 KB body). An answer lists the first 100 problems and counts them all.
#[tokio::test]
async fn repeats_in_deeply_nested_body_objects_name_their_objects_briefly() {
    let server = Server::kitchen();
    let depth = 5_000;
    let body = format!("{}0{}", r#"{"k":0,"k":"#.repeat(depth), "}".repeat(depth));
    let (status, answer) = server
        .admin_call("PUT", "/v1/handlers/kitchen.Kitchen/Get", None, Some(&body))
        .await;
    assert_eq!(status, 400);
    let problems = answer["problems"].as_array().expect("problems");
    assert_eq!(problems.len(), 100, "{answer:#}");
    assert!(
        problems.iter().all(|p| p["message"]
            .as_str()
            .is_some_and(|m| m.contains("duplicate key \"k\"") && m.len() < 600)),
        "{answer:#}"
    );
    let message = answer["message"].as_str().unwrap();
    assert!(
        message.contains("problem(s); nothing changed (the first 100 follow)"),
        "{}",
        &message[..message.len().min(300)]
    );
    let size = answer.to_string().len();
    assert!(size < 100_000, "an answer of {size} bytes");
}

/// A `POST /v1/verify` body that is not JSON is placed in characters, as a key given twice in
/// it is: serde_json's own words counted bytes, so a mistake after `é日本` was at column 23
/// where an editor (and the answer for a repeated key) says 18; and a body nested more than
/// 128 deep is said to be so, not "not valid JSON: recursion limit exceeded".
#[tokio::test]
async fn a_verify_body_that_is_not_json_is_placed_in_characters() {
    let server = Server::repo_default();
    let verify = |body: String| {
        let server = &server;
        async move {
            let (status, answer) = server
                .admin_call("POST", "/v1/verify", None, Some(&body))
                .await;
            assert_eq!(status, 400, "{answer:#}");
            answer["message"].as_str().unwrap().to_owned()
        }
    };
    let message = verify("{\"method\": \"é日本\" \"exactly\": 1}".into()).await;
    assert!(
        message.starts_with("the request body, line 1, column 18: not valid JSON: expected `,` or `}`; send a verify"),
        "{message}"
    );
    let message = verify("{\"method\": \"é日本\", \"method\": 1}".into()).await;
    assert!(
        message.starts_with("the request body, line 1, column 19: duplicate key \"method\""),
        "{message}"
    );
    let message = verify("{\"method\":\n".into()).await;
    assert!(
        message.starts_with("the request body, line 2: not valid JSON: EOF while parsing"),
        "{message}"
    );
    let message = verify(format!("{}{}", "[".repeat(200), "]".repeat(200))).await;
    assert!(
        message.starts_with(
            "the request body, line 1, column 128: arrays and objects nested more than 128 deep"
        ),
        "{message}"
    );
}
