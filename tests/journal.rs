//! The call journal, read through the admin API: every shape, every frame, in order; open
//! streams while they run; bounds; `--journal off`; filters and paging.

mod common;

use std::time::Duration;

use common::{Client, Server};
use serde_json::{json, Value as Json};
use tonic::metadata::MetadataMap;

async fn kitchen(server: &Server) -> Client {
    let pool = common::pool(&common::fixtures().join("protos"));
    Client::connect(server.addr, pool).await
}

fn kitchen_args() -> Vec<String> {
    let f = common::fixtures();
    vec![
        "--protos".into(),
        f.join("protos").display().to_string(),
        "--handlers".into(),
        f.join("handlers").display().to_string(),
    ]
}

fn start(extra: &[&str]) -> Server {
    let mut args = kitchen_args();
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Server::start(&args)
}

/// The calls of one method, oldest first.
async fn calls_of(server: &Server, method: &str) -> Vec<Json> {
    let page = server
        .admin_get(&format!("/v1/journal?method={method}&page_size=1000"))
        .await;
    page["calls"].as_array().unwrap().clone()
}

/// The one call of `method` in the journal.
async fn only_call(server: &Server, method: &str) -> Json {
    let calls = calls_of(server, method).await;
    assert_eq!(calls.len(), 1, "{method}: {calls:#?}");
    calls.into_iter().next().unwrap()
}

/// The one call of `method`, once the server has recorded its end (it does so as the call's
/// last frame goes out, which may be just after the client has seen it).
async fn only_call_once_done(server: &Server, method: &str) -> Json {
    let mut call = only_call(server, method).await;
    for _ in 0..200 {
        if call["state"] == "done" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        call = only_call(server, method).await;
    }
    assert_eq!(call["state"], "done", "{call:#}");
    call
}

fn messages<'a>(call: &'a Json, direction: &str) -> Vec<&'a Json> {
    call["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["direction"] == direction)
        .collect()
}

#[tokio::test]
async fn unary_call_is_journaled_with_metadata_messages_headers_and_status() {
    let server = start(&[]);
    let client = kitchen(&server).await;
    let mut md = MetadataMap::new();
    md.insert("x-user", "alice".parse().unwrap());
    let (reply, _) = client
        .unary_with(
            "kitchen.Kitchen/Get",
            json!({"id": "7", "limit": 3, "name": "pan"}),
            md,
        )
        .await
        .unwrap();
    let call = only_call(&server, "kitchen.Kitchen/Get").await;
    assert_eq!(call["shape"], "unary");
    assert_eq!(call["state"], "done");
    assert_eq!(
        call["status"],
        json!({"code": 0, "name": "OK", "message": ""})
    );
    assert_eq!(call["metadata"]["x-user"], "alice");
    assert!(call["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert_eq!(call["response_headers"]["x-kind"], "reply");
    assert_eq!(call["handler"]["kind"], "reply");
    assert_eq!(call["handler"]["source"], "file");
    assert!(call["handler"]["file"]
        .as_str()
        .unwrap()
        .ends_with("kitchen.json"));
    assert_eq!(call["requests"], 1);
    assert_eq!(call["responses"], 1);
    let requests = messages(&call, "request");
    assert_eq!(
        requests[0]["message"],
        json!({"id": "7", "limit": 3, "name": "pan"})
    );
    assert!(requests[0]["size"].as_u64().unwrap() > 0);
    // The response in the journal is what the client got.
    assert_eq!(messages(&call, "response")[0]["message"], reply);
    assert!(call["started_at"].as_str().unwrap() <= call["ended_at"].as_str().unwrap());
    // The same call by id.
    let id = call["id"].as_u64().unwrap();
    let by_id = server.admin_get(&format!("/v1/journal/{id}")).await;
    assert_eq!(by_id, call);
}

#[tokio::test]
async fn errors_rules_and_trailers_are_journaled() {
    let server = start(&[]);
    let client = kitchen(&server).await;
    let status = client
        .unary("kitchen.Kitchen/Fail", json!({"id": "9"}))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);
    let call = only_call(&server, "kitchen.Kitchen/Fail").await;
    assert_eq!(call["status"]["name"], "NOT_FOUND");
    assert_eq!(call["status"]["code"], 5);
    assert_eq!(call["status"]["message"], "no item 9");
    assert_eq!(call["trailers"]["retry-after"], "5");
    assert_eq!(call["responses"], 0);

    // Which rule answered: the fifth (index 4, "enum by name").
    client
        .unary("kitchen.Kitchen/Lookup", json!({"color": "GREEN"}))
        .await
        .unwrap();
    let call = only_call(&server, "kitchen.Kitchen/Lookup").await;
    assert_eq!(call["handler"]["kind"], "rules");
    assert_eq!(call["handler"]["rules"], json!([4]));

    // A method without a handler, and a path no service has.
    client
        .raw_unary("/no.Such/Method", bytes::Bytes::new())
        .await
        .unwrap_err();
    let call = only_call(&server, "no.Such/Method").await;
    assert_eq!(call["status"]["name"], "UNIMPLEMENTED");
    assert_eq!(call["handler"], Json::Null);
}

#[tokio::test]
async fn server_and_client_streams_are_journaled_message_by_message() {
    let server = start(&[]);
    let client = kitchen(&server).await;
    let items = client
        .server_stream("kitchen.Kitchen/List", json!({"id": "x"}))
        .await
        .unwrap();
    assert_eq!(items.len(), 3);
    let call = only_call(&server, "kitchen.Kitchen/List").await;
    assert_eq!(call["shape"], "server-streaming");
    let responses = messages(&call, "response");
    assert_eq!(responses.len(), 3);
    for (i, (logged, got)) in responses.iter().zip(&items).enumerate() {
        assert_eq!(logged["index"], i);
        assert_eq!(&logged["message"], got);
    }
    // Frames are in the order they crossed, with their times.
    let times: Vec<f64> = call["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["at_ms"].as_f64().unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");

    let sent: Vec<Json> = (0..5)
        .map(|i| json!({"id": format!("q{i}"), "limit": i}))
        .collect();
    client
        .client_stream("kitchen.Kitchen/Collect", sent.clone())
        .await
        .unwrap();
    let call = only_call(&server, "kitchen.Kitchen/Collect").await;
    assert_eq!(call["shape"], "client-streaming");
    let requests: Vec<Json> = messages(&call, "request")
        .iter()
        .map(|m| m["message"].clone())
        .collect();
    // proto3 JSON leaves out the default 0.
    let mut expected = sent.clone();
    expected[0] = json!({"id": "q0"});
    assert_eq!(requests, expected);
    assert_eq!(messages(&call, "response")[0]["message"]["id"], "last=q4");
}

#[tokio::test]
async fn bidi_stream_of_100_messages_each_way_is_journaled_frame_by_frame() {
    let server = start(&[]);
    let client = kitchen(&server).await;
    let sent: Vec<Json> = (0..100)
        .map(|i| json!({"id": format!("m{i}"), "count": i + 1, "tags": [format!("t{i}")]}))
        .collect();
    let (got, status) = client
        .bidi("kitchen.Kitchen/EchoStream", sent.clone())
        .await;
    assert!(status.is_none(), "{status:?}");
    assert_eq!(got.len(), 100);
    let call = only_call(&server, "kitchen.Kitchen/EchoStream").await;
    assert_eq!(call["shape"], "bidi-streaming");
    assert_eq!(call["status"]["name"], "OK");
    assert_eq!(call["requests"], 100);
    assert_eq!(call["responses"], 100);
    let frames = call["messages"].as_array().unwrap();
    assert_eq!(frames.len(), 200);
    let requests = messages(&call, "request");
    let responses = messages(&call, "response");
    for i in 0..100 {
        assert_eq!(requests[i]["index"], i);
        assert_eq!(responses[i]["index"], i);
        // int64 is a string in proto3 JSON.
        let want =
            json!({"id": format!("m{i}"), "count": (i + 1).to_string(), "tags": [format!("t{i}")]});
        assert_eq!(requests[i]["message"], want, "request {i}");
        assert_eq!(responses[i]["message"], want, "response {i}");
        assert_eq!(responses[i]["message"], got[i], "response {i}");
    }
    // Each echo goes out after its request came in.
    let position = |direction: &str, index: usize| {
        frames
            .iter()
            .position(|f| f["direction"] == direction && f["index"] == index)
            .unwrap()
    };
    for i in 0..100 {
        assert!(
            position("request", i) < position("response", i),
            "frame {i}"
        );
    }

    // A rules bidi notes the rule of each message.
    let (got, _) = client
        .bidi(
            "kitchen.Kitchen/Chat",
            vec![
                json!({"id": "a"}),
                json!({"id": "b", "limit": 2}),
                json!({"id": "stop"}),
            ],
        )
        .await;
    assert_eq!(got.len(), 3);
    let call = only_call(&server, "kitchen.Kitchen/Chat").await;
    assert_eq!(call["handler"]["rules"], json!([2, 1, 0]));
    assert_eq!(call["status"]["name"], "ABORTED");
}

#[tokio::test]
async fn an_open_stream_is_visible_with_its_frames_before_it_ends() {
    let server = start(&[]);
    let client = kitchen(&server).await;
    // The first request goes before the call returns: the server answers it first.
    let (tx, responses) = client
        .bidi_open("kitchen.Kitchen/EchoStream", vec![json!({"id": "open0"})])
        .await;
    let mut responses = responses.unwrap();
    assert!(responses.message().await.unwrap().is_some());
    tx.send(json!({"id": "open1"})).await.unwrap();
    assert!(responses.message().await.unwrap().is_some());
    // Still open: two frames each way so far, no status.
    let call = only_call(&server, "kitchen.Kitchen/EchoStream").await;
    assert_eq!(call["state"], "in_progress");
    assert_eq!(call["status"], Json::Null);
    assert_eq!(call["ended_at"], Json::Null);
    assert_eq!(call["requests"], 2);
    assert_eq!(call["responses"], 2);
    assert_eq!(messages(&call, "request")[1]["message"]["id"], "open1");
    let running = server.admin_get("/v1/journal?status=in_progress").await;
    assert_eq!(running["calls"].as_array().unwrap().len(), 1);
    // The client ends the stream: the call is done.
    drop(tx);
    while responses.message().await.unwrap().is_some() {}
    let call = only_call_once_done(&server, "kitchen.Kitchen/EchoStream").await;
    assert_eq!(call["status"]["name"], "OK");
}

#[tokio::test]
async fn a_cancelled_call_is_journaled_as_cancelled() {
    let server = start(&[]);
    let client = kitchen(&server).await;
    let (tx, stream) = client
        .bidi_open("kitchen.Kitchen/EchoStream", vec![json!({"id": "going"})])
        .await;
    let mut stream = stream.unwrap();
    assert!(stream.message().await.unwrap().is_some());
    drop(stream);
    drop(tx);
    let call = only_call_once_done(&server, "kitchen.Kitchen/EchoStream").await;
    assert_eq!(call["status"]["name"], "CANCELLED", "{call:#}");
    assert_eq!(call["requests"], 1);
}

#[tokio::test]
async fn journal_keeps_at_most_journal_calls_the_oldest_going_first() {
    let server = start(&["--journal-calls", "5"]);
    let client = kitchen(&server).await;
    for i in 0..8 {
        client
            .unary("kitchen.Kitchen/Get", json!({"id": i.to_string()}))
            .await
            .unwrap();
    }
    let calls = calls_of(&server, "kitchen.Kitchen/Get").await;
    let ids: Vec<String> = calls
        .iter()
        .map(|c| {
            messages(c, "request")[0]["message"]["id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(ids, ["3", "4", "5", "6", "7"]);
    let status = server.admin_get("/v1/status").await;
    assert_eq!(status["journal"]["calls"], 5);
    assert_eq!(status["journal"]["evicted"], 3);
    assert_eq!(status["journal"]["max_calls"], 5);
}

#[tokio::test]
async fn journal_keeps_within_its_byte_budget() {
    let server = start(&["--journal-bytes", "64KiB"]);
    let client = kitchen(&server).await;
    let blob = base64_of(&[7u8; 12_000]);
    for i in 0..6 {
        client
            .unary(
                "kitchen.Kitchen/Echo",
                json!({"id": format!("big{i}"), "blob": blob}),
            )
            .await
            .unwrap();
    }
    let status = server.admin_get("/v1/status").await;
    let bytes = status["journal"]["bytes"].as_u64().unwrap();
    assert!(bytes <= 64 * 1024, "{status:#}");
    assert!(
        status["journal"]["evicted"].as_u64().unwrap() >= 3,
        "{status:#}"
    );
    // The newest call is whole.
    let calls = calls_of(&server, "kitchen.Kitchen/Echo").await;
    let last = calls.last().unwrap();
    assert_eq!(messages(last, "request")[0]["message"]["id"], "big5");
    assert_eq!(last["dropped_messages"], 0);

    // One call larger than the budget keeps its first messages and counts the rest.
    let sent: Vec<Json> = (0..10)
        .map(|i| json!({"id": format!("s{i}"), "blob": blob}))
        .collect();
    let (got, status) = client.bidi("kitchen.Kitchen/EchoStream", sent).await;
    assert!(status.is_none());
    assert_eq!(got.len(), 10);
    let call = only_call(&server, "kitchen.Kitchen/EchoStream").await;
    let kept = call["messages"].as_array().unwrap().len() as u64;
    let dropped = call["dropped_messages"].as_u64().unwrap();
    assert!(kept > 0 && dropped > 0, "{kept} kept, {dropped} dropped");
    assert_eq!(kept + dropped, 20);
    assert_eq!(messages(&call, "request")[0]["message"]["id"], "s0");
    assert_eq!(call["status"]["name"], "OK");
    let status = server.admin_get("/v1/status").await;
    assert!(status["journal"]["bytes"].as_u64().unwrap() <= 64 * 1024);
}

fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[tokio::test]
async fn journal_off_records_nothing_and_says_so() {
    let server = start(&["--journal", "off"]);
    let client = kitchen(&server).await;
    client
        .unary("kitchen.Kitchen/Get", json!({"id": "1"}))
        .await
        .unwrap();
    let (status, body) = server.admin_call("GET", "/v1/journal", None, None).await;
    assert_eq!(status, 409, "{body:#}");
    assert_eq!(body["error"], "journal_off");
    assert!(body["message"].as_str().unwrap().contains("--journal off"));
    let (status, _) = server
        .admin_post("/v1/verify", &json!({"method": "kitchen.Kitchen/Get"}))
        .await;
    assert_eq!(status, 409);
    let status = server.admin_get("/v1/status").await;
    assert_eq!(status["journal"], json!({"enabled": false}));
}

#[tokio::test]
async fn reflection_and_health_calls_are_not_journaled() {
    let server = start(&[]);
    let channel = common::channel(server.addr).await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap();
    let page = server.admin_get("/v1/journal").await;
    assert_eq!(page["calls"], json!([]));
}

/// A request that is not gRPC is refused before it is a call: nothing is journaled.
#[tokio::test]
async fn a_request_that_is_not_grpc_is_not_journaled() {
    use tower::ServiceExt;
    let server = start(&[]);
    let client = kitchen(&server).await;
    let req = http::Request::builder()
        .method("POST")
        .uri(format!("http://{}/kitchen.Kitchen/Echo", server.addr))
        .header("content-type", "application/json")
        .header("te", "trailers")
        .body(tonic::body::Body::empty())
        .unwrap();
    let resp = client.channel.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), http::StatusCode::UNSUPPORTED_MEDIA_TYPE);
    client
        .unary("kitchen.Kitchen/Echo", json!({"id": "after"}))
        .await
        .unwrap();
    let calls = calls_of(&server, "kitchen.Kitchen/Echo").await;
    assert_eq!(calls.len(), 1, "only the gRPC call: {calls:#?}");
    let page = server.admin_get("/v1/journal").await;
    assert_eq!(page["calls"].as_array().unwrap().len(), 1, "{page:#}");
}

#[tokio::test]
async fn queries_filter_by_method_status_metadata_and_time() {
    let server = start(&[]);
    let client = kitchen(&server).await;
    for (i, user) in ["ann", "bob", "ann"].iter().enumerate() {
        let mut md = MetadataMap::new();
        md.insert("x-user", user.parse().unwrap());
        client
            .unary_with("kitchen.Kitchen/Get", json!({"id": i.to_string()}), md)
            .await
            .unwrap();
    }
    client
        .unary("kitchen.Kitchen/Fail", json!({"id": "f"}))
        .await
        .unwrap_err();
    client
        .unary("kitchen.Kitchen/Summary", json!({"name": "s"}))
        .await
        .unwrap();

    let ids = |page: &Json| -> Vec<u64> {
        page["calls"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["id"].as_u64().unwrap())
            .collect()
    };
    let all = server.admin_get("/v1/journal").await;
    assert_eq!(ids(&all).len(), 5);
    let by_method = server
        .admin_get("/v1/journal?method=kitchen.Kitchen/Get")
        .await;
    assert_eq!(ids(&by_method).len(), 3);
    let by_service = server.admin_get("/v1/journal?method=kitchen.Kitchen").await;
    assert_eq!(ids(&by_service).len(), 5);
    let by_status = server.admin_get("/v1/journal?status=NOT_FOUND").await;
    assert_eq!(by_status["calls"][0]["method"], "kitchen.Kitchen/Fail");
    assert_eq!(ids(&by_status).len(), 1);
    let by_number = server.admin_get("/v1/journal?status=5").await;
    assert_eq!(ids(&by_number), ids(&by_status));
    let ok = server.admin_get("/v1/journal?status=ok").await;
    assert_eq!(ids(&ok).len(), 4);
    let anns = server.admin_get("/v1/journal?metadata=x-user=ann").await;
    assert_eq!(ids(&anns).len(), 2);
    let none = server
        .admin_get("/v1/journal?metadata=x-user=ann&metadata=x-user=bob")
        .await;
    assert_eq!(ids(&none).len(), 0);
    // Time range: from the third call's start on.
    let third = &all["calls"][2];
    let since = third["started_at"].as_str().unwrap();
    let later = server
        .admin_get(&format!("/v1/journal?since={since}"))
        .await;
    assert_eq!(ids(&later), ids(&all)[2..]);
    let earlier = server
        .admin_get(&format!("/v1/journal?until={since}"))
        .await;
    assert_eq!(ids(&earlier), ids(&all)[..2]);
    // Summaries leave the messages out.
    let summary = server.admin_get("/v1/journal?view=summary").await;
    assert!(summary["calls"][0].get("messages").is_none());
    assert_eq!(summary["calls"][0]["requests"], 1);
    // Newest first.
    let newest = server.admin_get("/v1/journal?order=newest").await;
    let mut reversed = ids(&all);
    reversed.reverse();
    assert_eq!(ids(&newest), reversed);
}

/// A `method` filter that names nothing served and nothing journaled is a typo, so it is
/// refused (404, with a suggestion, as a verify of such a method is) rather than answered with
/// an empty page a test would take for "no calls". A method that is served but was never called
/// lists nothing, and a path the journal holds calls to lists them, served or not.
#[tokio::test]
async fn a_method_filter_naming_no_method_is_refused() {
    let server = start(&[]);
    let client = kitchen(&server).await;
    client
        .unary("kitchen.Kitchen/Get", json!({"id": "1"}))
        .await
        .unwrap();
    for (filter, hint) in [
        ("kitchen.Kitchen/Gte", "kitchen.Kitchen/Get"),
        ("kitchen.Kitchn", "kitchen.Kitchen"),
    ] {
        let (status, body) = server
            .admin_call("GET", &format!("/v1/journal?method={filter}"), None, None)
            .await;
        assert_eq!(status, 404, "{filter}: {body:#}");
        assert_eq!(body["error"], "not_found", "{body:#}");
        let message = body["message"].as_str().unwrap();
        assert!(message.contains(filter), "{message}");
        assert!(
            message.contains(&format!("(did you mean \"{hint}\"?)")),
            "{message}"
        );
    }
    // Served, never called: an empty page, as any filter that matches nothing.
    let page = server
        .admin_get("/v1/journal?method=kitchen.Kitchen/Fail")
        .await;
    assert_eq!(page["calls"], json!([]), "{page:#}");
    let page = server
        .admin_get("/v1/journal?method=kitchen.Kitchen/Get&status=NOT_FOUND")
        .await;
    assert_eq!(page["calls"], json!([]), "{page:#}");
    // A path no service has, once called, is in the journal and can be asked for.
    client
        .raw_unary("/no.Such/Method", bytes::Bytes::new())
        .await
        .unwrap_err();
    let page = server.admin_get("/v1/journal?method=no.Such/Method").await;
    assert_eq!(page["calls"].as_array().unwrap().len(), 1, "{page:#}");
    let page = server
        .admin_get("/v1/journal?method=no.Such/Method&status=OK")
        .await;
    assert_eq!(page["calls"], json!([]), "{page:#}");
}

/// `since` and `until` also take milliseconds since 1970, and each call says how long it took.
#[tokio::test]
async fn time_bounds_take_milliseconds_and_calls_have_a_duration() {
    let server = start(&[]);
    let client = kitchen(&server).await;
    for i in 0..3 {
        if i > 0 {
            // Calls a few milliseconds apart, so that each starts in a millisecond of its own.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        client
            .unary("kitchen.Kitchen/Get", json!({"id": i.to_string()}))
            .await
            .unwrap();
    }
    let all = server.admin_get("/v1/journal").await;
    let calls = all["calls"].as_array().unwrap();
    let ids: Vec<u64> = calls.iter().map(|c| c["id"].as_u64().unwrap()).collect();
    assert_eq!(ids.len(), 3, "{all:#}");
    for call in calls {
        let duration = call["duration_ms"].as_f64().expect("duration_ms");
        assert!(duration >= 0.0, "{call:#}");
    }
    let second = humantime::parse_rfc3339(calls[1]["started_at"].as_str().unwrap()).unwrap();
    let ms = second
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let page_ids = |page: Json| -> Vec<u64> {
        page["calls"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["id"].as_u64().unwrap())
            .collect()
    };
    let since = server.admin_get(&format!("/v1/journal?since={ms}")).await;
    assert_eq!(page_ids(since), ids[1..]);
    let until = server.admin_get(&format!("/v1/journal?until={ms}")).await;
    assert_eq!(page_ids(until), ids[..1]);
    let between = server
        .admin_get(&format!("/v1/journal?since={ms}&until={}", ms + 1))
        .await;
    assert_eq!(page_ids(between), ids[1..2]);
    let (status, body) = server
        .admin_call(
            "GET",
            &format!("/v1/journal?since={ms}&until={ms}"),
            None,
            None,
        )
        .await;
    assert_eq!(status, 400, "{body:#}");
}

#[tokio::test]
async fn paging_walks_every_call_once_and_tokens_are_checked() {
    let server = start(&[]);
    let client = kitchen(&server).await;
    for i in 0..23 {
        client
            .unary("kitchen.Kitchen/Get", json!({"id": i.to_string()}))
            .await
            .unwrap();
    }
    for order in ["oldest", "newest"] {
        let mut seen = Vec::new();
        let mut token = String::new();
        let mut pages = 0;
        loop {
            let page = server
                .admin_get(&format!(
                    "/v1/journal?page_size=5&view=summary&order={order}&page_token={token}"
                ))
                .await;
            pages += 1;
            seen.extend(
                page["calls"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|c| c["id"].as_u64().unwrap()),
            );
            match page["next_page_token"].as_str() {
                Some(t) => token = t.to_owned(),
                None => break,
            }
            assert!(pages < 10, "paging does not end");
        }
        assert_eq!(seen.len(), 23, "{order}: {seen:?}");
        let mut sorted = seen.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 23);
        if order == "newest" {
            sorted.reverse();
        }
        assert_eq!(seen, sorted, "{order}");
    }
    // A token past the end is an empty page; a page size over the maximum is capped.
    let page = server
        .admin_get("/v1/journal?page_token=18446744073709551615")
        .await;
    assert_eq!(page["calls"], json!([]));
    let page = server.admin_get("/v1/journal?page_size=1000000").await;
    assert_eq!(page["calls"].as_array().unwrap().len(), 23);
    for bad in [
        "page_token=-1",
        "page_token=abc",
        "page_size=x",
        "status=bogus",
        "order=sideways",
        "since=yesterday",
        "colour=red",
        "metadata=nokey",
    ] {
        let (status, body) = server
            .admin_call("GET", &format!("/v1/journal?{bad}"), None, None)
            .await;
        assert_eq!(status, 400, "{bad}: {body:#}");
        assert_eq!(body["error"], "bad_request", "{bad}");
        assert!(!body["message"].as_str().unwrap().is_empty());
    }
    // Unknown and malformed ids.
    let (status, body) = server
        .admin_call("GET", "/v1/journal/999999", None, None)
        .await;
    assert_eq!(status, 404, "{body:#}");
    let (status, _) = server
        .admin_call("GET", "/v1/journal/abc", None, None)
        .await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn reset_and_delete_clear_the_journal() {
    let server = start(&[]);
    let client = kitchen(&server).await;
    for _ in 0..3 {
        client
            .unary("kitchen.Kitchen/Get", json!({"id": "1"}))
            .await
            .unwrap();
    }
    let (status, body) = server.admin_call("DELETE", "/v1/journal", None, None).await;
    assert_eq!(status, 200);
    assert_eq!(body["cleared"], 3);
    assert_eq!(server.admin_get("/v1/journal").await["calls"], json!([]));
    client
        .unary("kitchen.Kitchen/Get", json!({"id": "1"}))
        .await
        .unwrap();
    let (status, body) = server.admin_post("/v1/reset", &json!({})).await;
    assert_eq!(status, 200, "{body:#}");
    assert_eq!(body["journal_cleared"], 1);
    assert_eq!(server.admin_get("/v1/journal").await["calls"], json!([]));
    let status = server.admin_get("/v1/status").await;
    assert_eq!(status["journal"]["bytes"], 0);
}

#[tokio::test]
async fn a_call_cut_off_by_its_deadline_is_journaled_with_that_status() {
    let server = start(&[]);
    // A raw HTTP/2 client: tonic's would cancel at the deadline itself, racing the server.
    let mut send = common::h2_connect(server.addr).await.ready().await.unwrap();
    // List sends three messages 20 ms apart: a 30 ms deadline cannot let all three out.
    let req = common::grpc_request(server.addr, "/kitchen.Kitchen/List")
        .header("grpc-timeout", "30m")
        .body(())
        .unwrap();
    let (resp, mut body) = send.send_request(req, false).unwrap();
    // Query { id: "late" }, framed.
    body.send_data(
        bytes::Bytes::from_static(&[0, 0, 0, 0, 6, 0x0a, 4, b'l', b'a', b't', b'e']),
        true,
    )
    .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(20), resp)
        .await
        .expect("no answer")
        .unwrap();
    let (parts, mut stream) = resp.into_parts();
    let status = match parts.headers.get("grpc-status") {
        Some(s) => s.clone(),
        None => {
            while let Some(data) = stream.data().await {
                data.unwrap();
            }
            let trailers = stream.trailers().await.unwrap().unwrap();
            trailers.get("grpc-status").unwrap().clone()
        }
    };
    assert_eq!(status, "4", "DEADLINE_EXCEEDED");
    let call = only_call(&server, "kitchen.Kitchen/List").await;
    assert_eq!(call["status"]["name"], "DEADLINE_EXCEEDED", "{call:#}");
    assert!(call["responses"].as_u64().unwrap() < 3, "{call:#}");
    assert_eq!(call["metadata"]["grpc-timeout"], "30m");
}

/// A call refused for a `grpc-timeout` that cannot be read never reaches the router; its
/// record still names the shape and handler of the method it called, as any other refused
/// call's does.
#[tokio::test]
async fn a_call_refused_for_a_bad_grpc_timeout_is_journaled_with_its_shape_and_handler() {
    let server = start(&[]);
    let client = kitchen(&server).await;
    let mut md = MetadataMap::new();
    md.insert("grpc-timeout", "1.5S".parse().unwrap());
    let err = client
        .unary_with("kitchen.Kitchen/Get", json!({"id": "7"}), md)
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    let call = only_call_once_done(&server, "kitchen.Kitchen/Get").await;
    assert_eq!(call["status"]["name"], "INVALID_ARGUMENT", "{call:#}");
    assert_eq!(call["shape"], "unary", "{call:#}");
    assert_eq!(call["handler"]["kind"], "reply", "{call:#}");
    assert_eq!(call["handler"]["source"], "file", "{call:#}");
}

/// Response headers are `null` for a call that ended before it answered or answered
/// Trailers-Only, and `{}` for one that answered with only the protocol's headers.
#[tokio::test]
async fn a_call_cancelled_before_it_answered_has_no_response_headers() {
    let server = start(&[]);
    // Echo answers after 10 s from now on: the client cancels long before.
    let (status, body) = server
        .admin_call(
            "PUT",
            "/v1/handlers/kitchen.Kitchen/Echo",
            None,
            Some(&json!({"echo": {}, "delay_ms": 10_000}).to_string()),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let mut send = common::h2_connect(server.addr).await.ready().await.unwrap();
    let req = common::grpc_request(server.addr, "/kitchen.Kitchen/Echo")
        .body(())
        .unwrap();
    let (_resp, mut body) = send.send_request(req, false).unwrap();
    body.send_data(
        bytes::Bytes::from_static(&[0, 0, 0, 0, 5, 0x0a, 3, b'p', b'a', b'n']),
        true,
    )
    .unwrap();
    // Cancel once the call is journaled as running.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let calls = calls_of(&server, "kitchen.Kitchen/Echo").await;
        if calls.first().is_some_and(|c| c["requests"] == 1) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never journaled");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    body.send_reset(h2::Reason::CANCEL);
    let call = only_call_once_done(&server, "kitchen.Kitchen/Echo").await;
    assert_eq!(call["status"]["name"], "CANCELLED", "{call:#}");
    assert_eq!(call["responses"], 0, "{call:#}");
    assert_eq!(call["response_headers"], Json::Null, "{call:#}");
    // An answered call whose headers are only the protocol's shows an empty object.
    let client = kitchen(&server).await;
    client
        .unary("kitchen.Kitchen/Lookup", json!({"id": "1"}))
        .await
        .unwrap();
    let call = only_call(&server, "kitchen.Kitchen/Lookup").await;
    assert_eq!(call["response_headers"], json!({}), "{call:#}");
    // An error answers Trailers-Only: no headers went out, its metadata is in the trailers.
    client
        .unary("kitchen.Kitchen/Fail", json!({"id": "1"}))
        .await
        .unwrap_err();
    let call = only_call_once_done(&server, "kitchen.Kitchen/Fail").await;
    assert_eq!(call["response_headers"], Json::Null, "{call:#}");
    assert_eq!(call["trailers"]["retry-after"], "5", "{call:#}");
}

/// A request over `--max-message-size` gets RESOURCE_EXHAUSTED naming the flag (tonic says
/// OUT_OF_RANGE), both when it fails the call before any response (Trailers-Only) and when it
/// arrives in the middle of a stream (the status in the trailers), and the journal records
/// the status the client got.
#[tokio::test]
async fn an_oversize_request_is_resource_exhausted_for_the_client_and_the_journal() {
    let server = start(&["--max-message-size", "1024"]);
    let client = kitchen(&server).await;
    let big = "x".repeat(2000);
    let err = client
        .unary("kitchen.Kitchen/Echo", json!({ "id": big }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("--max-message-size"), "{err:?}");
    let call = only_call_once_done(&server, "kitchen.Kitchen/Echo").await;
    assert_eq!(call["status"]["name"], "RESOURCE_EXHAUSTED", "{call:#}");

    let (tx, stream) = client
        .bidi_open("kitchen.Kitchen/EchoStream", vec![json!({"id": "small"})])
        .await;
    let mut stream = stream.unwrap();
    assert!(stream.message().await.unwrap().is_some());
    tx.send(json!({ "id": big })).await.unwrap();
    let err = loop {
        match stream.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the stream ended without an error"),
            Err(e) => break e,
        }
    };
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("--max-message-size"), "{err:?}");
    let call = only_call_once_done(&server, "kitchen.Kitchen/EchoStream").await;
    assert_eq!(call["status"]["name"], "RESOURCE_EXHAUSTED", "{call:#}");
    assert_eq!(call["responses"], 1, "{call:#}");
}

/// The bytes the journal reports stay within `--journal-bytes` once calls have ended, with no
/// call coming after to make room.
#[tokio::test]
async fn the_journal_is_within_its_byte_budget_once_calls_end() {
    let server = start(&["--journal-bytes", "64KiB"]);
    let client = kitchen(&server).await;
    // Calls a little over 1 KiB each way: several share one of the journal's store segments.
    let blob = base64_of(&[7u8; 1000]);
    for i in 0..40 {
        client
            .unary(
                "kitchen.Kitchen/Echo",
                json!({"id": format!("c{i}"), "blob": blob}),
            )
            .await
            .unwrap();
        // Wait until the server has recorded the call's end.
        for _ in 0..200 {
            let page = server
                .admin_get("/v1/journal?order=newest&page_size=1&view=summary")
                .await;
            if page["calls"][0]["state"] == "done" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let status = server.admin_get("/v1/status").await;
        let bytes = status["journal"]["bytes"].as_u64().unwrap();
        assert!(bytes <= 64 * 1024, "after call {i}: {status:#}");
    }
}

/// A call as large as the budget allows, after a small one: the small one goes, and the bytes
/// it held come back, so the journal is within its budget again.
#[tokio::test]
async fn a_large_call_after_a_small_one_keeps_the_journal_within_its_budget() {
    let server = start(&["--journal-bytes", "64KiB"]);
    let client = kitchen(&server).await;
    client
        .unary("kitchen.Kitchen/Get", json!({"id": "1"}))
        .await
        .unwrap();
    only_call_once_done(&server, "kitchen.Kitchen/Get").await;
    let blob = base64_of(&[7u8; 50_000]);
    client
        .unary("kitchen.Kitchen/Echo", json!({"id": "big", "blob": blob}))
        .await
        .unwrap();
    let call = only_call_once_done(&server, "kitchen.Kitchen/Echo").await;
    assert_eq!(messages(&call, "request")[0]["message"]["id"], "big");
    let status = server.admin_get("/v1/status").await;
    let bytes = status["journal"]["bytes"].as_u64().unwrap();
    assert!(bytes <= 64 * 1024, "{status:#}");
}

/// `response_headers` leaves out the protocol's own headers whatever the client: a reply
/// gzip-compressed for a client that accepts gzip (`grpc-encoding`) shows `{}`, and with a
/// handler's header shows only that header.
#[tokio::test]
async fn response_headers_leave_out_the_compression_header() {
    let server = start(&[]);
    let client = kitchen(&server).await;
    let mut grpc = tonic::client::Grpc::new(client.channel.clone())
        .accept_compressed(tonic::codec::CompressionEncoding::Gzip);
    for (method, id) in [("Lookup", "1"), ("Get", "g")] {
        let m = client.method(&format!("kitchen.Kitchen/{method}"));
        grpc.ready().await.unwrap();
        let resp = grpc
            .unary(
                tonic::Request::new(protoserve::codec::Outgoing::Message(Client::message(
                    &m.input(),
                    json!({"id": id}),
                ))),
                format!("/kitchen.Kitchen/{method}").parse().unwrap(),
                common::DynamicCodec::new(m.output()),
            )
            .await
            .unwrap();
        assert_eq!(
            resp.metadata()
                .get("grpc-encoding")
                .map(|v| v.to_str().unwrap()),
            Some("gzip"),
            "the reply was compressed"
        );
    }
    let call = only_call(&server, "kitchen.Kitchen/Lookup").await;
    assert_eq!(call["response_headers"], json!({}), "{call:#}");
    let call = only_call(&server, "kitchen.Kitchen/Get").await;
    assert_eq!(
        call["response_headers"],
        json!({"x-kind": "reply"}),
        "{call:#}"
    );
}
