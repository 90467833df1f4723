//! Regressions of header blocks that clients refused: lists that were each held to 8192 bytes
//! (keys, values and 32 per entry) but went out together in one block, and status messages
//! sent next to kilobytes of metadata. The client must get the call's reply or status, never an
//! HTTP/2 error instead.

mod common;

use std::net::SocketAddr;

use common::{Client, Server};
use serde_json::json;
use tonic::metadata::MetadataMap;
use tonic::Code;

/// A server of the repository's protos and the handler file `json` (with the script
/// `script`, as g.lua, when given), and a client of it.
async fn serve(json: &str, script: &str) -> (Server, Client, tempfile::TempDir) {
    let files = [("g.json", json), ("g.lua", script)];
    let files = if script.is_empty() {
        &files[..1]
    } else {
        &files[..]
    };
    common::serve_repo_protos_with(files, &[]).await
}

fn pool() -> prost_reflect::DescriptorPool {
    common::pool(&common::repo().join("protos"))
}

/// A client that accepts header lists of at most 8 KiB, as grpc-java's does by default.
async fn strict_client(addr: SocketAddr) -> Client {
    Client::connect_8k(addr, pool()).await
}

/// An entry's `headers` next to `script` went out in one header block with what the script
/// set with `ctx:set_header`, but each was held to 8192 bytes alone: together (16 KiB and
/// more) the client refused the block and saw an HTTP/2 error instead of the reply. Now
/// `ctx:set_header` counts the entry's headers too and refuses in the script, saying what
/// they take. The same for `ctx:set_trailer`: the entry's headers go out with the trailers
/// when the call ends in an error (Trailers-Only).
#[tokio::test]
async fn entry_headers_and_script_metadata_are_counted_together() {
    let (entry, smaller) = ("e".repeat(7600), "e".repeat(6000));
    let json = format!(
        r#"{{"service": "helloworld.Greeter", "methods": {{
  "SayHello": {{"script": "g.lua", "headers": {{"x-entry": "{entry}"}}}},
  "SayHelloAgain": {{"script": "g.lua", "headers": {{"x-entry": "{smaller}"}}}}
}}}}"#
    );
    let script = r#"
function SayHello(req, ctx)
  local ok, err = pcall(ctx.set_header, ctx, "x-script", string.rep("s", tonumber(req.name)))
  return { message = ok and "set" or tostring(err) }
end
function SayHelloAgain(req, ctx)
  local ok, err = pcall(ctx.set_trailer, ctx, "x-script", string.rep("s", tonumber(req.name)))
  error(grpc.status("FAILED_PRECONDITION", ok and "set" or tostring(err)))
end
"#;
    let (s, c, _dir) = serve(&json, script).await;

    // Headers: the entry's and the script's alone each fit; together they do not.
    let (reply, md) = c
        .unary_with(
            "helloworld.Greeter/SayHello",
            json!({"name": "7640"}),
            MetadataMap::new(),
        )
        .await
        .expect("the client gets the reply, not a refused header block");
    let said = reply["message"].as_str().unwrap();
    assert!(
        said.contains("may take 7680 bytes in all")
            && said.contains("the entry's headers in its handler file already take 7639 of them"),
        "{said}"
    );
    assert_eq!(md.get("x-entry").unwrap().len(), 7600);
    assert!(md.get("x-script").is_none(), "{md:?}");
    // What fits beside the entry's headers is set.
    let (reply, md) = c
        .unary_with(
            "helloworld.Greeter/SayHello",
            json!({"name": "1"}),
            MetadataMap::new(),
        )
        .await
        .unwrap();
    assert_eq!(reply["message"], "set");
    assert_eq!(md.get("x-script").unwrap(), "s");
    assert_eq!(md.get("x-entry").unwrap().len(), 7600);

    // Trailers: an error carries the entry's headers and the script's trailers in one block
    // (with its status message, so less of each, and a client that accepts 8 KiB).
    let status = strict_client(s.addr)
        .await
        .unary("helloworld.Greeter/SayHelloAgain", json!({"name": "4000"}))
        .await
        .expect_err("the call fails");
    assert_eq!(
        status.code(),
        Code::FailedPrecondition,
        "the client gets the script's status, not a refused header block: {}",
        status.message()
    );
    assert!(
        status
            .message()
            .contains("the entry's headers in its handler file already take 6039 of them"),
        "{}",
        status.message()
    );
    assert_eq!(status.metadata().get("x-entry").unwrap().len(), 6000);
}

/// The status message went out with the metadata in one block (the trailers, or the headers
/// of a Trailers-Only answer) and was cut only at 6 KiB percent-encoded by itself: a script's
/// 4 KiB of trailers and an error of 4 KiB of spaces (12 KiB encoded, cut to 6), or an `error`
/// entry's metadata next to a message filled from the request, made a block past 8 KiB, which
/// a client that accepts 8 KiB refused. Now the message is cut so the block fits, ending in
/// "…" (and saying so when there is room); the code and the metadata always go out.
#[tokio::test]
async fn status_messages_are_cut_to_fit_the_block_they_go_out_in() {
    let metadata = "m".repeat(4000);
    let json = format!(
        r#"{{"service": "helloworld.Greeter", "methods": {{
  "SayHello": {{"script": "g.lua"}},
  "SayHelloAgain": {{"error": {{"code": "ABORTED", "message": "{{{{name}}}}",
    "metadata": {{"x-meta": "{metadata}"}}}}}}
}}}}"#
    );
    let script = r#"
function SayHello(req, ctx)
  ctx:set_trailer("x-trailer", string.rep("t", 4000))
  error(grpc.status("NOT_FOUND", string.rep(" ", 4000)))
end
"#;
    let (s, _c, _dir) = serve(&json, script).await;
    let c = strict_client(s.addr).await;
    for (method, code, key) in [
        ("SayHello", Code::NotFound, "x-trailer"),
        ("SayHelloAgain", Code::Aborted, "x-meta"),
    ] {
        let status = c
            .unary(
                &format!("helloworld.Greeter/{method}"),
                json!({"name": " ".repeat(4000)}),
            )
            .await
            .expect_err("the call fails");
        assert_eq!(
            status.code(),
            code,
            "{method}: the client gets the status, not a refused header block: {}",
            status.message()
        );
        let said = status.message();
        assert!(
            said.starts_with("   ") && said.ends_with("… (message truncated)"),
            "{method}: {said:?}"
        );
        assert_eq!(
            status.metadata().get(key).map(|v| v.len()),
            Some(4000),
            "{method}"
        );
    }
}

/// Not a regression: a message that fits is sent whole, with the metadata beside it.
#[tokio::test]
async fn status_messages_that_fit_are_sent_whole() {
    let json = r#"{"service": "helloworld.Greeter", "methods": {
  "SayHello": {"error": {"code": "ABORTED", "message": "no {{name}}", "metadata": {"x-meta": "1"}}}
}}"#;
    let (s, _c, _d) = serve(json, "").await;
    let c = strict_client(s.addr).await;
    let status = c
        .unary("helloworld.Greeter/SayHello", json!({"name": "luck"}))
        .await
        .expect_err("the call fails");
    assert_eq!(status.code(), Code::Aborted);
    assert_eq!(status.message(), "no luck");
    assert_eq!(status.metadata().get("x-meta").unwrap(), "1");
}

/// Metadata was held to 8192 bytes by itself, but the block it goes out in also carries the
/// protocol's entries (`:status`, `content-type`, `date`, `grpc-status`, about 200 bytes more),
/// so a script's headers or trailers near the limit, or a handler file's, made a block a
/// client that takes 8 KiB refused. Metadata is held to 7680 bytes now, and a block at that
/// limit reaches such a client whole.
#[tokio::test]
async fn metadata_at_its_limit_leaves_room_for_the_protocols_own_entries() {
    // 7680 bytes as HTTP/2 counts them: "x-entry" (7) + value + 32.
    let at_limit = "e".repeat(7680 - 7 - 32);
    let json = format!(
        r#"{{"service": "helloworld.Greeter", "methods": {{
  "SayHello": {{"script": "g.lua"}},
  "SayHelloAgain": {{"reply": {{"message": "hi"}}, "headers": {{"x-entry": "{at_limit}"}}}}
}}}}"#
    );
    // Headers on a reply, or trailers beside an error, of `name` bytes as a "x-s" entry
    // (3 + 32 more): set when the script may, and the call answers either way.
    let script = r#"
function SayHello(req, ctx)
  local n = tonumber(req.name:sub(2))
  local set = req.name:sub(1, 1) == "h" and ctx.set_header or ctx.set_trailer
  local ok = pcall(set, ctx, "x-s", string.rep("s", n - 35))
  if req.name:sub(1, 1) == "h" then return { message = tostring(ok) } end
  error(grpc.status("ABORTED", tostring(ok)))
end
"#;
    let (s, _c, _dir) = serve(&json, script).await;
    let c = strict_client(s.addr).await;
    for (size, set) in [(7680, "true"), (8192, "false")] {
        let (reply, md) = c
            .unary_with(
                "helloworld.Greeter/SayHello",
                json!({"name": format!("h{size}")}),
                MetadataMap::new(),
            )
            .await
            .unwrap_or_else(|e| panic!("headers of {size}: the client gets the reply: {e:?}"));
        assert_eq!(reply["message"], set, "headers of {size}");
        assert_eq!(md.contains_key("x-s"), set == "true", "headers of {size}");
        let status = c
            .unary(
                "helloworld.Greeter/SayHello",
                json!({"name": format!("t{size}")}),
            )
            .await
            .expect_err("the call fails");
        assert_eq!(
            status.code(),
            Code::Aborted,
            "trailers of {size}: the client gets the status, not a refused header block: {}",
            status.message()
        );
        assert_eq!(status.message(), set, "trailers of {size}");
        assert_eq!(
            status.metadata().contains_key("x-s"),
            set == "true",
            "trailers of {size}"
        );
    }
    // A handler file's headers at the limit reach the client too.
    let (_reply, md) = c
        .unary_with(
            "helloworld.Greeter/SayHelloAgain",
            json!({"name": "x"}),
            MetadataMap::new(),
        )
        .await
        .expect("the client gets the reply, not a refused header block");
    assert_eq!(md.get("x-entry").unwrap().len(), at_limit.len());
}

/// A stream whose first item is an error answers Trailers-Only: the script's headers and its
/// trailers, each within the limit, went out together in that one block (~14 KB), which a
/// client that takes 8 KiB refused, and the status message was cut to nothing for want of
/// room. When they do not fit one block, the headers now go out first and the status with
/// the trailers after; when they fit, the answer stays Trailers-Only with all of them.
#[tokio::test]
async fn a_stream_failing_at_its_first_item_sends_what_does_not_fit_one_block_in_two() {
    let json = r#"{"service": "routeguide.RouteGuide", "methods": {
  "ListFeatures": {"script": "g.lua", "headers": {"x-entry": "e"}}
}}"#;
    // A returned list whose first item is no Feature: the stream's first item is an error.
    let script = r#"
function ListFeatures(req, ctx)
  local n = req.lo.latitude
  ctx:set_header("x-h", string.rep("h", n))
  ctx:set_trailer("x-t", string.rep("t", n))
  return { 5 }
end
"#;
    let (s, _c, _dir) = serve(json, script).await;
    let c = strict_client(s.addr).await;
    for n in [7000, 100] {
        let status = c
            .server_stream(
                "routeguide.RouteGuide/ListFeatures",
                json!({"lo": {"latitude": n}, "hi": {"latitude": 1}}),
            )
            .await
            .expect_err("the call fails");
        assert_eq!(
            status.code(),
            Code::Internal,
            "{n}: the client gets the status, not a refused header block: {}",
            status.message()
        );
        assert!(
            status.message().contains("ListFeatures"),
            "{n}: the message is kept: {:?}",
            status.message()
        );
        assert_eq!(
            status.metadata().get("x-t").map(|v| v.len()),
            Some(n as usize),
            "{n}"
        );
    }
}

/// `ctx:set_trailer` holds a call's trailers to 7680 bytes as HTTP/2 counts them (key, value
/// and 32 per entry; a `-bin` value as its base64 without padding), exactly: a value one byte
/// under the limit is set and reaches the client with the successful reply, one byte over is
/// refused with the documented words, and setting the same key again replaces its entry rather
/// than counting it twice.
#[tokio::test]
async fn set_trailer_takes_exactly_its_limit_and_a_key_set_again_counts_once() {
    let json = r#"{"service": "helloworld.Greeter", "methods": {
  "SayHello": {"script": "g.lua"} }}"#;
    let script = r#"
function SayHello(req, ctx)
  local key, n = req.name:match("^(.-) (%d+)$")
  local value = string.rep("v", tonumber(n))
  local ok, err = pcall(ctx.set_trailer, ctx, key, value)
  -- Again, the same key: it replaces the entry.
  if ok then ok, err = pcall(ctx.set_trailer, ctx, key, value) end
  return { message = ok and "set" or tostring(err) }
end
"#;
    let (_s, c, _dir) = serve(json, script).await;
    // "k": 1 + n + 32 <= 7680; "k-bin": 5 + ceil(4n / 3) + 32 <= 7680.
    for (key, fits) in [("k", 7647usize), ("k-bin", 5732)] {
        for (n, set) in [(fits, true), (fits + 1, false)] {
            let (reply, md) = c
                .unary_with(
                    "helloworld.Greeter/SayHello",
                    json!({ "name": format!("{key} {n}") }),
                    MetadataMap::new(),
                )
                .await
                .unwrap_or_else(|e| panic!("{key} {n}: {e:?}"));
            let said = reply["message"].as_str().unwrap();
            if set {
                assert_eq!(said, "set", "{key} {n}");
                let got = if key.ends_with("-bin") {
                    md.get_bin(key).unwrap().to_bytes().unwrap().len()
                } else {
                    md.get(key).unwrap().len()
                };
                assert_eq!(got, n, "{key} {n}: the trailer the client got");
            } else {
                assert!(
                    said.contains(&format!(
                        "metadata {key:?}: the headers or trailers a script sets may take 7680 bytes in all (keys, values and 32 per entry)"
                    )),
                    "{key} {n}: {said}"
                );
                assert!(
                    md.get(key).is_none() && md.get_bin(key).is_none(),
                    "{key} {n}: {md:?}"
                );
            }
        }
    }
}
