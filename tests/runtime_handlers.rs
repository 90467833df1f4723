//! Runtime handlers through the admin API: add, replace and remove one method's handler with
//! the JSON of a handler file, validated with the same errors; they stay on top of the files'
//! handlers across reloads until removed or reset; a call in flight keeps the handler it
//! started with. Also reload through the API, with the same problems `check` prints.

mod common;

use common::project::{live_handler, Project};
use common::{run, Client, Server};
use serde_json::{json, Value as Json};
use tonic::Code;

async fn put(server: &Server, method: &str, entry: &Json) -> (u16, Json) {
    server
        .admin_call(
            "PUT",
            &format!("/v1/handlers/{method}"),
            None,
            Some(&entry.to_string()),
        )
        .await
}

async fn delete(server: &Server, method: &str) -> (u16, Json) {
    server
        .admin_call("DELETE", &format!("/v1/handlers/{method}"), None, None)
        .await
}

async fn hello(client: &Client) -> Result<Json, tonic::Status> {
    client
        .unary("helloworld.Greeter/SayHello", json!({"name": "x"}))
        .await
}

fn handler_of<'a>(services: &'a Json, service: &str, method: &str) -> &'a Json {
    services["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == service)
        .and_then(|s| {
            s["methods"]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| m["name"] == method)
        })
        .map(|m| &m["handler"])
        .unwrap_or_else(|| panic!("{service}/{method} not listed: {services:#}"))
}

#[tokio::test]
async fn a_runtime_handler_replaces_the_files_one_until_removed() {
    let server = Server::repo_default();
    let client = Client::connect(server.addr, common::pool(&common::repo().join("protos"))).await;
    assert_eq!(
        hello(&client).await.unwrap(),
        json!({"message": "Hello, x!"})
    );

    let (status, body) = put(
        &server,
        "helloworld.Greeter/SayHello",
        &json!({"reply": {"message": "stub for {{name}}"}, "headers": {"x-stub": "1"}}),
    )
    .await;
    assert_eq!(status, 200, "{body:#}");
    // It serves as soon as the answer is in.
    let (reply, headers) = client
        .unary_with(
            "helloworld.Greeter/SayHello",
            json!({"name": "x"}),
            Default::default(),
        )
        .await
        .unwrap();
    assert_eq!(reply, json!({"message": "stub for x"}));
    assert_eq!(headers.get("x-stub").unwrap(), "1");
    let services = server.admin_get("/v1/services").await;
    let handler = handler_of(&services, "helloworld.Greeter", "SayHello");
    assert_eq!(handler["source"], "runtime", "{handler}");
    assert_eq!(handler["kind"], "reply", "{handler}");
    assert_eq!(server.admin_get("/v1/status").await["runtime_handlers"], 1);

    // Replacing it.
    let (status, _) = put(
        &server,
        "helloworld.Greeter/SayHello",
        &json!({"error": {"code": "NOT_FOUND", "message": "no {{name}}"}}),
    )
    .await;
    assert_eq!(status, 200);
    let err = hello(&client).await.unwrap_err();
    assert_eq!((err.code(), err.message()), (Code::NotFound, "no x"));

    // Removing it: the file's handler serves again.
    let (status, body) = delete(&server, "helloworld.Greeter/SayHello").await;
    assert_eq!(status, 200, "{body:#}");
    assert_eq!(
        hello(&client).await.unwrap(),
        json!({"message": "Hello, x!"})
    );
    let services = server.admin_get("/v1/services").await;
    let handler = handler_of(&services, "helloworld.Greeter", "SayHello");
    assert_eq!(handler["source"], "file", "{handler}");
    assert!(handler["file"]
        .as_str()
        .unwrap()
        .ends_with("helloworld.json"));
    // Nothing left to remove.
    let (status, body) = delete(&server, "helloworld.Greeter/SayHello").await;
    assert_eq!(status, 404, "{body:#}");
    assert!(
        body.to_string().contains("has no runtime handler"),
        "{body}"
    );
}

#[tokio::test]
async fn a_bad_runtime_handler_is_refused_with_the_files_errors() {
    let server = Server::repo_default();
    let client = Client::connect(server.addr, common::pool(&common::repo().join("protos"))).await;

    let (status, body) = put(
        &server,
        "helloworld.Greeter/SayHello",
        &json!({"reply": {"mesage": "x"}}),
    )
    .await;
    assert_eq!(status, 400, "{body:#}");
    let text = body.to_string();
    assert!(
        text.contains("has no field \\\"mesage\\\"") && text.contains("did you mean"),
        "{body:#}"
    );
    assert!(
        text.contains("runtime handler helloworld.Greeter/SayHello"),
        "{body:#}"
    );

    let (status, body) = put(
        &server,
        "helloworld.Greeter/SayHello",
        &json!({"script": "nowhere.lua"}),
    )
    .await;
    assert_eq!(status, 400, "{body:#}");
    assert!(body.to_string().contains("cannot read script"), "{body:#}");

    let (status, body) = put(&server, "helloworld.Greeter/SayHelo", &json!({"reply": {}})).await;
    assert_eq!(status, 404, "{body:#}");
    assert!(
        body.to_string().contains("SayHello"),
        "did you mean: {body:#}"
    );

    // Nothing changed.
    assert_eq!(
        hello(&client).await.unwrap(),
        json!({"message": "Hello, x!"})
    );
    assert_eq!(server.admin_get("/v1/status").await["runtime_handlers"], 0);
}

#[tokio::test]
async fn runtime_handlers_survive_reloads_until_reset() {
    let project = Project::new();
    let server = project.start(&[]);
    let client = project.client(&server).await;
    let (status, body) = put(
        &server,
        "live.Live/Chat",
        &json!({"reply": {"text": "runtime: {{text}}"}}),
    )
    .await;
    assert_eq!(status, 200, "{body:#}");
    let chat = || client.unary("live.Live/Chat", json!({"text": "x"}));
    assert_eq!(chat().await.unwrap(), json!({"text": "runtime: x"}));

    // A reload through the API (and one by a file change) keeps it on top.
    project.write("handlers/live.json", &live_handler("v2"));
    let (status, body) = server.admin_post("/v1/reload", &json!({})).await;
    assert_eq!(status, 200, "{body:#}");
    assert_eq!(chat().await.unwrap(), json!({"text": "runtime: x"}));
    let talk = client
        .bidi("live.Live/Talk", vec![json!({"text": "t"})])
        .await
        .0;
    assert_eq!(
        talk,
        vec![json!({"text": "v2: t"})],
        "the files' edit applies"
    );

    let (status, body) = server.admin_post("/v1/reset", &json!({})).await;
    assert_eq!(status, 200, "{body:#}");
    assert_eq!(chat().await.unwrap(), json!({"text": "v2: x"}));
    assert_eq!(server.admin_get("/v1/status").await["runtime_handlers"], 0);
}

#[tokio::test]
async fn a_call_in_flight_keeps_its_handler() {
    let server = Server::repo_default();
    let client = Client::connect(server.addr, common::pool(&common::repo().join("protos"))).await;
    let note = |m: &str| json!({"location": {"latitude": 1, "longitude": 1}, "message": m});
    // The shipped Lua RouteChat answers a note with the earlier notes at its place.
    let (tx, stream) = client
        .bidi_open(
            "routeguide.RouteGuide/RouteChat",
            vec![note("a"), note("b")],
        )
        .await;
    let mut stream = stream.unwrap();
    let first = stream.message().await.unwrap().unwrap();
    assert_eq!(common::to_json(&first)["message"], "a");

    let (status, body) = put(
        &server,
        "routeguide.RouteGuide/RouteChat",
        &json!({"echo": {}}),
    )
    .await;
    assert_eq!(status, 200, "{body:#}");
    // A new call echoes; the open one is still the script.
    let (echoed, _) = client
        .bidi("routeguide.RouteGuide/RouteChat", vec![note("new")])
        .await;
    assert_eq!(echoed.len(), 1);
    assert_eq!(echoed[0]["message"], "new");
    tx.send(note("c")).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..2 {
        let m = stream.message().await.unwrap().unwrap();
        got.push(common::to_json(&m)["message"].as_str().unwrap().to_owned());
    }
    assert_eq!(got, ["a", "b"], "the script still answers the open stream");
    drop(tx);
    assert!(stream.message().await.unwrap().is_none());
}

#[tokio::test]
async fn a_failed_reload_through_the_api_reports_what_check_prints() {
    let project = Project::new();
    let server = project.start(&["--no-watch"]);
    let client = project.client(&server).await;
    project.write(
        "handlers/live.json",
        &live_handler("v2").replace(
            "\"Chat\": { \"reply\": { \"text\"",
            "\"Chat\": { \"reply\": { \"txet\"",
        ),
    );
    let (status, body) = server.admin_post("/v1/reload", &json!({})).await;
    assert_eq!(status, 400, "{body:#}");
    let problems = body["problems"].as_array().expect("problems").clone();
    assert_eq!(problems.len(), 1, "{body:#}");
    let file = project.path("handlers/live.json").display().to_string();
    assert_eq!(problems[0]["file"], json!(file));
    assert_eq!(problems[0]["line"], 4);
    assert!(problems[0]["col"].as_u64().unwrap() > 0);
    // The same text as `check`.
    let args = project.args();
    let mut check = vec!["check"];
    check.extend(args.iter().map(String::as_str));
    let (code, _, err) = run(&check);
    assert_eq!(code, 2);
    let message = problems[0]["message"].as_str().unwrap();
    assert!(
        err.contains(message),
        "check says:\n{err}\nthe API says:\n{message}"
    );
    // The status keeps it; the old generation serves.
    let status = server.admin_get("/v1/status").await;
    assert_eq!(status["generation"], 1);
    assert_eq!(status["last_reload"]["ok"], false);
    assert_eq!(status["last_reload"]["problems"], json!(problems));
    assert_eq!(
        client
            .unary("live.Live/Chat", json!({"text": "x"}))
            .await
            .unwrap(),
        json!({"text": "v1: x"})
    );
}
