//! Regressions of the headers a script sets with `ctx:set_header` on a call that then fails:
//! the client got the status, the script's trailers and the entry's `headers`, but not the
//! script's own headers. grpc-go sends them (what `SetHeader` set before the handler returned
//! an error goes out with the status), and so does protoserve now: in one Trailers-Only block
//! when everything fits one, else the headers first and the status with the trailers after.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{Client, Server};
use serde_json::{json, Value as Json};
use tonic::metadata::MetadataMap;
use tonic::{Code, Status};

/// A server of the repository's protos and the handler `files` (name, text), and a client.
async fn serve(files: &[(&str, &str)], extra: &[&str]) -> (Server, Client, tempfile::TempDir) {
    common::serve_repo_protos_with(files, extra).await
}

fn pool() -> prost_reflect::DescriptorPool {
    common::pool(&common::repo().join("protos"))
}

/// A client that accepts header lists of at most 8 KiB, as grpc-java's does by default.
async fn strict_client(addr: SocketAddr) -> Client {
    Client::connect_8k(addr, pool()).await
}

/// The value of `key` in the status's metadata, as text.
fn value<'a>(status: &'a Status, key: &str) -> Option<&'a str> {
    status.metadata().get(key).map(|v| v.to_str().unwrap())
}

/// The calls of `method` in the journal, oldest first, once all `n` have ended.
async fn journaled(server: &Server, method: &str, n: usize) -> Vec<Json> {
    for _ in 0..200 {
        let page = server
            .admin_get(&format!("/v1/journal?method={method}&page_size=1000"))
            .await;
        let calls = page["calls"].as_array().unwrap().clone();
        if calls.len() == n && calls.iter().all(|c| c["state"] == "done") {
            return calls;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{method}: {n} calls did not end in the journal");
}

/// Sets a header (one on a key the entry's `headers` name too) and a trailer, then fails as
/// `kind` says; for `sleep` it waits past the client's deadline.
const FAILING: &str = r#"
local function fail(kind, ctx)
  ctx:set_header("x-h", "from the script")
  ctx:set_header("x-both", "script")
  ctx:set_trailer("x-t", "trailer")
  if kind == "error" then error("boom") end
  if kind == "status" then error(grpc.status("NOT_FOUND", "no such thing")) end
  if kind == "budget" then while true do end end
  if kind == "sleep" then ctx:sleep(5000) end
  return { message = {} }
end
local kinds = { "error", "status", "bad", "budget", "sleep" }

function SayHello(req, ctx)
  return fail(req.name, ctx)
end

function RecordRoute(points, ctx)
  local kind
  for p in points do kind = kinds[p.latitude] end
  return fail(kind, ctx)
end

function ListFeatures(req, ctx)
  return fail(kinds[req.lo.latitude], ctx)
end

function RouteChat(notes, ctx)
  local kind
  for n in notes do kind = kinds[n.location.latitude] end
  return fail(kind, ctx)
end
"#;

/// Entries of [`FAILING`] (g.lua), each with headers of its own.
const ENTRIES: [(&str, &str); 3] = [
    (
        "g.json",
        r#"{"service": "helloworld.Greeter", "methods": {
  "SayHello": {"script": "g.lua", "headers": {"x-entry": "e", "x-both": "entry"}}
}}"#,
    ),
    (
        "r.json",
        r#"{"service": "routeguide.RouteGuide", "methods": {
  "RecordRoute": {"script": "g.lua", "headers": {"x-entry": "e", "x-both": "entry"}},
  "ListFeatures": {"script": "g.lua", "headers": {"x-entry": "e", "x-both": "entry"}},
  "RouteChat": {"script": "g.lua", "headers": {"x-entry": "e", "x-both": "entry"}}
}}"#,
    ),
    ("g.lua", FAILING),
];

/// The failures a script can end in, by their index in the script's `kinds` (from 1), with the
/// code the client gets and a part of its message.
const KINDS: [(&str, Code, &str); 4] = [
    ("error", Code::Internal, "boom"),
    ("status", Code::NotFound, "no such thing"),
    ("bad", Code::Internal, "returned a bad routeguide"),
    ("budget", Code::ResourceExhausted, "time budget"),
];

/// What every failed call's status carries: the script's header and trailer, the entry's
/// header, and the script's value on the key both set.
fn assert_all_metadata(status: &Status, what: &str) {
    assert_eq!(
        value(status, "x-h"),
        Some("from the script"),
        "{what}: the script's header: {status:?}"
    );
    assert_eq!(value(status, "x-t"), Some("trailer"), "{what}: {status:?}");
    assert_eq!(value(status, "x-entry"), Some("e"), "{what}: {status:?}");
    assert_eq!(
        value(status, "x-both"),
        Some("script"),
        "{what}: {status:?}"
    );
}

/// A unary script that set a header and then failed (an error, a deliberate status, a bad
/// returned message, its time budget) sent its trailers and the entry's headers with the
/// status, but not its own header.
#[tokio::test]
async fn a_failing_unary_script_sends_the_headers_it_set() {
    let (s, c, _dir) = serve(&ENTRIES, &["--script-time-ms", "100"]).await;
    for (kind, code, said) in KINDS {
        let status = c
            .unary("helloworld.Greeter/SayHello", json!({"name": kind}))
            .await
            .expect_err("the call fails");
        let said = said.replace("routeguide", "helloworld");
        assert_eq!(status.code(), code, "{kind}: {}", status.message());
        assert!(status.message().contains(&said), "{kind}: {status:?}");
        assert_all_metadata(&status, kind);
    }
    // The journal records the status, and the headers in its one block (Trailers-Only).
    let calls = journaled(&s, "helloworld.Greeter/SayHello", KINDS.len()).await;
    for (call, (kind, code, _)) in calls.iter().zip(KINDS) {
        assert_eq!(call["status"]["code"], code as i32, "{kind}: {call:#}");
        assert_eq!(call["response_headers"], Json::Null, "{kind}: {call:#}");
        assert_eq!(
            call["trailers"]["x-h"], "from the script",
            "{kind}: {call:#}"
        );
        assert_eq!(call["trailers"]["x-t"], "trailer", "{kind}: {call:#}");
    }

    // A passed deadline still ends the call with DEADLINE_EXCEEDED, and the server goes on.
    let mut md = MetadataMap::new();
    md.insert("grpc-timeout", "200m".parse().unwrap());
    let status = c
        .unary_with("helloworld.Greeter/SayHello", json!({"name": "sleep"}), md)
        .await
        .expect_err("the call fails");
    // (CANCELLED when tonic's own grpc-timeout handling answers first.)
    assert!(
        status.code() == Code::DeadlineExceeded
            || (status.code() == Code::Cancelled && status.message().contains("Timeout expired")),
        "{status:?}"
    );
    let status = c
        .unary("helloworld.Greeter/SayHello", json!({"name": "error"}))
        .await
        .expect_err("the call fails");
    assert_all_metadata(&status, "after the deadline");
}

/// The same for a client-streaming script, which answers the same way as a unary one.
#[tokio::test]
async fn a_failing_client_streaming_script_sends_the_headers_it_set() {
    let (_s, c, _dir) = serve(&ENTRIES, &["--script-time-ms", "100"]).await;
    for (i, (kind, code, said)) in KINDS.into_iter().enumerate() {
        let points = vec![json!({"latitude": 9}), json!({"latitude": i + 1})];
        let status = c
            .client_stream("routeguide.RouteGuide/RecordRoute", points)
            .await
            .expect_err("the call fails");
        assert_eq!(status.code(), code, "{kind}: {}", status.message());
        assert!(status.message().contains(said), "{kind}: {status:?}");
        assert_all_metadata(&status, kind);
    }
}

/// A server-streaming or bidi script that fails before its first message answers
/// Trailers-Only: its headers go out in that block too.
#[tokio::test]
async fn a_streaming_script_failing_before_its_first_message_sends_the_headers_it_set() {
    let (_s, c, _dir) = serve(&ENTRIES, &[]).await;
    let status = c
        .server_stream(
            "routeguide.RouteGuide/ListFeatures",
            json!({"lo": {"latitude": 2}, "hi": {}}),
        )
        .await
        .expect_err("the call fails");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert_all_metadata(&status, "server-streaming");
    let (got, status) = c
        .bidi(
            "routeguide.RouteGuide/RouteChat",
            vec![json!({"location": {"latitude": 1}})],
        )
        .await;
    assert!(got.is_empty(), "{got:?}");
    let status = status.expect("the call fails");
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    assert_all_metadata(&status, "bidi");
}

/// Headers and trailers near their limit (7000 bytes each) on a failing unary call do not fit
/// one header block: the headers go out first and the status with the trailers after, so a
/// client that takes 8 KiB gets the status, not a refused block; small ones stay Trailers-Only.
#[tokio::test]
async fn a_failing_unary_script_near_the_limit_sends_its_headers_and_trailers_in_two_blocks() {
    let json = r#"{"service": "helloworld.Greeter", "methods": {"SayHello": {"script": "g.lua"}}}"#;
    let script = r#"
function SayHello(req, ctx)
  local n = tonumber(req.name)
  ctx:set_header("x-h", string.rep("h", n))
  ctx:set_trailer("x-t", string.rep("t", n))
  error(grpc.status("ABORTED", "too much"))
end
"#;
    let (s, c, _dir) = serve(&[("g.json", json), ("g.lua", script)], &[]).await;
    let strict = strict_client(s.addr).await;
    let sizes = [7000, 100];
    for n in sizes {
        for (client, which) in [(&c, "default client"), (&strict, "8 KiB client")] {
            let status = client
                .unary(
                    "helloworld.Greeter/SayHello",
                    json!({"name": n.to_string()}),
                )
                .await
                .expect_err("the call fails");
            assert_eq!(
                status.code(),
                Code::Aborted,
                "{n}, {which}: the client gets the status, not a refused header block: {}",
                status.message()
            );
            assert_eq!(status.message(), "too much", "{n}, {which}");
            assert_eq!(
                value(&status, "x-h").map(str::len),
                Some(n),
                "{n}, {which}: the script's header"
            );
            assert_eq!(value(&status, "x-t").map(str::len), Some(n), "{n}, {which}");
        }
    }
    let calls = journaled(&s, "helloworld.Greeter/SayHello", 4).await;
    for (call, n) in calls.iter().zip([7000, 7000, 100, 100]) {
        assert_eq!(call["status"]["name"], "ABORTED", "{n}: {call:#}");
        assert_eq!(call["status"]["message"], "too much", "{n}: {call:#}");
        let (headers, trailers) = (&call["response_headers"], &call["trailers"]);
        if n == 7000 {
            // Two blocks: the headers, then the status with the trailers.
            assert_eq!(headers["x-h"].as_str().map(str::len), Some(n), "{call:#}");
            assert!(trailers.get("x-h").is_none(), "{call:#}");
        } else {
            assert_eq!(*headers, Json::Null, "{call:#}");
            assert_eq!(trailers["x-h"].as_str().map(str::len), Some(n), "{call:#}");
        }
        assert_eq!(trailers["x-t"].as_str().map(str::len), Some(n), "{call:#}");
    }
}
