//! Regressions of admin API requests that cost the server far more than their size: an unknown
//! method name of a megabyte used to be compared, character by character, with every method
//! served ("did you mean"), which for a big tree kept a core busy for minutes per request.

mod common;

use std::time::Duration;

use common::Server;
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
