//! Every declarative handler kind across the four call shapes, against the real binary.

mod common;

use common::{fixtures, Client, Server};
use serde_json::json;
use tonic::metadata::MetadataMap;
use tonic::Code;

async fn kitchen() -> (Server, Client) {
    let server = Server::kitchen();
    let client = Client::connect(server.addr, common::pool(&fixtures().join("protos"))).await;
    (server, client)
}

#[tokio::test]
async fn reply_interpolates_copies_and_converts() {
    let (_s, client) = kitchen().await;
    let (r, md) = client
        .unary_with(
            "kitchen.Kitchen/Get",
            json!({"id": "7", "limit": 3, "name": "pan", "color": "GREEN", "tags": ["x", "y"],
                   "inner": {"x": 9, "label": "lid"}}),
            MetadataMap::new(),
        )
        .await
        .unwrap();
    assert_eq!(
        r,
        json!({
            "id": "item-7",
            "count": "3",
            "color": "GREEN",
            "tags": ["fixed", "pan", "x", "y"],
            "attrs": {"limit": 3, "one": 1},
            "inner": {"x": 9, "label": "lid"},
            "inners": [{"x": 7, "label": "lid"}],
            "price": 2.5,
            "ok": true,
            "at": "2024-01-02T03:04:05Z",
            "a": "9 of pan",
            "big": "18446744073709551615"
        })
    );
    assert_eq!(md.get("x-kind").unwrap(), "reply");
}

#[tokio::test]
async fn empty_messages_and_well_known_types() {
    let (_s, client) = kitchen().await;
    assert_eq!(
        client
            .unary("kitchen.Kitchen/Nothing", json!({}))
            .await
            .unwrap(),
        json!({})
    );
}

#[tokio::test]
async fn rules_match_fields_metadata_and_fall_through() {
    let (_s, client) = kitchen().await;
    let lookup = |j| client.unary("kitchen.Kitchen/Lookup", j);
    assert_eq!(
        lookup(json!({"id": "42"})).await.unwrap()["id"],
        "the answer"
    );
    assert_eq!(
        lookup(json!({"id": "x", "name": "Ada", "limit": 10}))
            .await
            .unwrap()["id"],
        "prefix+range"
    );
    // limit 20 is outside [10, 20): falls through to later rules.
    let err = lookup(json!({"id": "x", "name": "Ada", "limit": 20}))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().contains("kitchen.Kitchen/Lookup"), "{err:?}");
    assert_eq!(
        lookup(json!({"id": "x", "name": "zzz"})).await.unwrap()["id"],
        "regex"
    );
    assert_eq!(
        lookup(json!({"id": "x", "inner": {"label": "a mid b"}}))
            .await
            .unwrap()["id"],
        "nested contains"
    );
    assert_eq!(
        lookup(json!({"id": "x", "color": "GREEN"})).await.unwrap()["id"],
        "enum by name"
    );
    assert_eq!(
        lookup(json!({"id": "2"})).await.unwrap()["id"],
        "one or two"
    );

    let mut md = MetadataMap::new();
    md.insert("authorization", "Bearer bad".parse().unwrap());
    let err = client
        .unary_with("kitchen.Kitchen/Lookup", json!({"id": "x"}), md)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert_eq!(err.message(), "bad token");

    let mut md = MetadataMap::new();
    md.insert("x-tenant", "b".parse().unwrap());
    let (r, _) = client
        .unary_with("kitchen.Kitchen/Lookup", json!({"id": "t1"}), md)
        .await
        .unwrap();
    assert_eq!(r["id"], "tenant t1");

    let err = lookup(json!({})).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(err.message(), "no id");
}

#[tokio::test]
async fn error_sets_code_message_and_trailers() {
    let (_s, client) = kitchen().await;
    let err = client
        .unary("kitchen.Kitchen/Fail", json!({"id": "9"}))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(err.message(), "no item 9");
    assert_eq!(err.metadata().get("retry-after").unwrap(), "5");
    assert_eq!(
        err.metadata()
            .get_bin("trace-bin")
            .unwrap()
            .to_bytes()
            .unwrap()
            .as_ref(),
        b"raw"
    );
}

#[tokio::test]
async fn stream_sends_every_message_with_delay() {
    let (_s, client) = kitchen().await;
    let started = std::time::Instant::now();
    let items = client
        .server_stream("kitchen.Kitchen/List", json!({"id": "p"}))
        .await
        .unwrap();
    assert_eq!(
        items,
        vec![
            json!({"id": "p-1", "count": "1"}),
            json!({"id": "p-2", "count": "2"}),
            json!({"id": "p-3", "count": "3"})
        ]
    );
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(60),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn rules_on_server_streaming_choose_stream_or_single() {
    let (_s, client) = kitchen().await;
    let many = client
        .server_stream("kitchen.Kitchen/Pick", json!({"limit": 1}))
        .await
        .unwrap();
    assert_eq!(many, vec![json!({"id": "a"}), json!({"id": "b"})]);
    let one = client
        .server_stream("kitchen.Kitchen/Pick", json!({}))
        .await
        .unwrap();
    assert_eq!(one, vec![json!({"id": "single"})]);
}

#[tokio::test]
async fn client_streaming_answers_from_the_last_message() {
    let (_s, client) = kitchen().await;
    let r = client
        .client_stream(
            "kitchen.Kitchen/Collect",
            vec![
                json!({"id": "a", "limit": 1}),
                json!({"id": "b", "limit": 2}),
            ],
        )
        .await
        .unwrap();
    assert_eq!(r, json!({"id": "last=b", "count": "2"}));
    let r = client
        .client_stream("kitchen.Kitchen/Collect", vec![])
        .await
        .unwrap();
    assert_eq!(r, json!({"id": "last="}));
}

#[tokio::test]
async fn bidi_answers_each_message_and_stops_at_an_error() {
    let (_s, client) = kitchen().await;
    let (items, status) = client
        .bidi(
            "kitchen.Kitchen/Chat",
            vec![
                json!({"id": "1"}),
                json!({"id": "2", "limit": 2}),
                json!({"id": "stop"}),
                json!({"id": "never"}),
            ],
        )
        .await;
    assert_eq!(
        items,
        vec![
            json!({"id": "re:1"}),
            json!({"id": "2.a"}),
            json!({"id": "2.b"})
        ]
    );
    let status = status.expect("ends with the rule's error");
    assert_eq!(status.code(), Code::Aborted);
    assert_eq!(status.message(), "stopped at stop");
}

#[tokio::test]
async fn echo_in_every_shape() {
    let (_s, client) = kitchen().await;
    let item = json!({"id": "e", "count": "5", "tags": ["a"], "attrs": {"k": 1}, "blob": "AAEC",
                      "inner": {"x": 1}, "b": 4, "big": "123"});
    assert_eq!(
        client
            .unary("kitchen.Kitchen/Echo", item.clone())
            .await
            .unwrap(),
        item
    );
    assert_eq!(
        client
            .server_stream("kitchen.Kitchen/EchoServer", item.clone())
            .await
            .unwrap(),
        vec![item.clone()]
    );
    let two = vec![item.clone(), json!({"id": "f"})];
    assert_eq!(
        client
            .client_stream("kitchen.Kitchen/EchoClient", two.clone())
            .await
            .unwrap(),
        json!({"id": "f"})
    );
    let (got, status) = client.bidi("kitchen.Kitchen/EchoStream", two.clone()).await;
    assert!(status.is_none(), "{status:?}");
    assert_eq!(got, two);
}

#[tokio::test]
async fn method_without_handler_is_unimplemented_and_named() {
    let (_s, client) = kitchen().await;
    let err = client
        .unary("kitchen.Kitchen/Missing", json!({}))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);
    assert!(err.message().contains("kitchen.Kitchen/Missing"), "{err:?}");
    assert!(err.message().contains("no handler"), "{err:?}");
}

#[tokio::test]
async fn text_replies_read_fields_straight_from_the_request_bytes() {
    let (_s, client) = kitchen().await;
    let r = client
        .unary(
            "kitchen.Kitchen/Summary",
            json!({"name": "n", "inner": {"x": -3, "label": "L"}, "color": "RED", "limit": 9}),
        )
        .await
        .unwrap();
    assert_eq!(r, json!({"id": "n|L|-3|RED|9", "ok": true}));
    // Unset fields read as their defaults, as from a decoded message.
    let r = client
        .unary("kitchen.Kitchen/Summary", json!({}))
        .await
        .unwrap();
    assert_eq!(r, json!({"id": "||0|COLOR_UNSPECIFIED|0", "ok": true}));
    // A later occurrence of a field wins, and nested messages merge, as in any decoder.
    let raw = bytes::Bytes::from_static(&[
        0x1a, 1, b'a', 0x22, 3, 0x12, 1, b'X', 0x1a, 1, b'b', 0x22, 2, 0x08, 4,
    ]);
    let reply = client
        .raw_unary("/kitchen.Kitchen/Summary", raw)
        .await
        .unwrap();
    let m = client.method("kitchen.Kitchen/Summary");
    let decoded = prost_reflect::DynamicMessage::decode(m.output(), reply).unwrap();
    assert_eq!(common::to_json(&decoded)["id"], "b|X|4|COLOR_UNSPECIFIED|0");
}

#[tokio::test]
async fn malformed_requests_are_refused_on_the_undecoded_paths_too() {
    let (_s, client) = kitchen().await;
    for path in [
        "/kitchen.Kitchen/Echo",
        "/kitchen.Kitchen/Summary",
        "/kitchen.Kitchen/Nothing",
    ] {
        for garbage in [&[0xff, 0xff][..], &[0x0a, 0x09, b'x'][..], &[0x0b][..]] {
            let err = client
                .raw_unary(path, bytes::Bytes::copy_from_slice(garbage))
                .await
                .unwrap_err();
            assert_eq!(
                err.code(),
                Code::InvalidArgument,
                "{path} {garbage:?}: {err:?}"
            );
        }
    }
    // A string field that is not UTF-8.
    let err = client
        .raw_unary(
            "/kitchen.Kitchen/Echo",
            bytes::Bytes::from_static(&[0x0a, 2, 0xc3, 0x28]),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
}

/// Request metadata for one call: (key, value) pairs.
type Metadata = &'static [(&'static str, &'static str)];

/// The rule operators and forms the kitchen fixture does not use, one rule each: `equals`,
/// `suffix`, `lte`, `present` both ways, dotted paths, a number written as a string, and on
/// metadata `prefix`, `suffix`, `contains`, `regex`, `present` and `equals`. Also an error code
/// in lower case and as a number, and `"reply": "{{.}}"`.
#[tokio::test]
async fn every_rule_operator_and_error_code_form_holds() {
    let handlers = tempfile::tempdir().unwrap();
    std::fs::write(
        handlers.path().join("kitchen.json"),
        r#"{
  "service": "kitchen.Kitchen",
  "methods": {
    "Lookup": { "rules": [
      { "when": { "request": { "id": { "equals": "e" } } }, "reply": { "id": "equals" } },
      { "when": { "request": { "name": { "suffix": "son" } } }, "reply": { "id": "suffix" } },
      { "when": { "request": { "id": "lte", "limit": { "lte": 5 } } }, "reply": { "id": "lte" } },
      { "when": { "request": { "id": "p", "inner": { "present": true } } }, "reply": { "id": "present" } },
      { "when": { "request": { "id": "p", "inner": { "present": false } } }, "reply": { "id": "absent" } },
      { "when": { "request": { "inner.label": "dot" } }, "reply": { "id": "dotted" } },
      { "when": { "request": { "limit": "7" } }, "reply": { "id": "number from a string" } },
      { "when": { "metadata": { "x-a": { "prefix": "pre" } } }, "reply": { "id": "md prefix" } },
      { "when": { "metadata": { "x-a": { "suffix": "fix" } } }, "reply": { "id": "md suffix" } },
      { "when": { "metadata": { "x-a": { "contains": "mid" } } }, "reply": { "id": "md contains" } },
      { "when": { "metadata": { "x-a": { "regex": "^r[0-9]+$" } } }, "reply": { "id": "md regex" } },
      { "when": { "metadata": { "x-b": { "present": true } } }, "reply": { "id": "md present" } },
      { "when": { "metadata": { "x-a": { "equals": "eq" } } }, "reply": { "id": "md equals" } }
    ] },
    "Echo": { "reply": "{{.}}" },
    "Fail": { "error": { "code": "not_found", "message": "lower {{id}}" } },
    "Summary": { "error": { "code": 14, "message": "numbered {{id}}" } }
  }
}"#,
    )
    .unwrap();
    let server = Server::start(&[
        "--protos",
        fixtures().join("protos").to_str().unwrap(),
        "--handlers",
        handlers.path().to_str().unwrap(),
        "--no-watch",
    ]);
    let client = Client::connect(server.addr, common::pool(&fixtures().join("protos"))).await;
    let lookup = |request: serde_json::Value, metadata: &[(&'static str, &'static str)]| {
        let mut md = MetadataMap::new();
        for (k, v) in metadata {
            md.insert(*k, v.parse().unwrap());
        }
        let client = client.clone();
        async move {
            client
                .unary_with("kitchen.Kitchen/Lookup", request, md)
                .await
                .map(|(r, _)| r["id"].as_str().unwrap_or("").to_owned())
                .map_err(|s| s.code())
        }
    };
    let cases: Vec<(serde_json::Value, Metadata, Result<&str, Code>)> = vec![
        (json!({"id": "e"}), &[], Ok("equals")),
        (json!({"name": "Jackson"}), &[], Ok("suffix")),
        (json!({"name": "Jacksons"}), &[], Err(Code::NotFound)),
        (json!({"id": "lte", "limit": 5}), &[], Ok("lte")),
        (json!({"id": "lte", "limit": 6}), &[], Err(Code::NotFound)),
        (json!({"id": "p", "inner": {"x": 1}}), &[], Ok("present")),
        (json!({"id": "p"}), &[], Ok("absent")),
        (json!({"inner": {"label": "dot"}}), &[], Ok("dotted")),
        (json!({"limit": 7}), &[], Ok("number from a string")),
        (json!({"limit": 8}), &[], Err(Code::NotFound)),
        (json!({}), &[("x-a", "prefoo")], Ok("md prefix")),
        (json!({}), &[("x-a", "thefix")], Ok("md suffix")),
        (json!({}), &[("x-a", "amidb")], Ok("md contains")),
        (json!({}), &[("x-a", "r123")], Ok("md regex")),
        (json!({}), &[("x-a", "r12x")], Err(Code::NotFound)),
        (json!({}), &[("x-b", "")], Ok("md present")),
        (json!({}), &[("x-a", "eq")], Ok("md equals")),
        (json!({}), &[("x-a", "eq2")], Err(Code::NotFound)),
    ];
    for (request, metadata, want) in cases {
        let got = lookup(request.clone(), metadata).await;
        assert_eq!(
            got.as_deref().map_err(|c| *c),
            want,
            "{request} {metadata:?}"
        );
    }

    let item = json!({"id": "a", "count": "5", "tags": ["x"], "inner": {"x": 3}});
    assert_eq!(
        client
            .unary("kitchen.Kitchen/Echo", item.clone())
            .await
            .unwrap(),
        item
    );
    let err = client
        .unary("kitchen.Kitchen/Fail", json!({"id": "f"}))
        .await
        .unwrap_err();
    assert_eq!((err.code(), err.message()), (Code::NotFound, "lower f"));
    let err = client
        .unary("kitchen.Kitchen/Summary", json!({"id": "s"}))
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (Code::Unavailable, "numbered s")
    );
}

/// `headers` next to `rules` or `script` are added to the response headers, and on the same
/// key the rule's or the script's own header wins: one value goes out, not both.
#[tokio::test]
async fn a_rule_or_script_header_wins_over_the_entry_header() {
    let handlers = tempfile::tempdir().unwrap();
    std::fs::write(
        handlers.path().join("g.json"),
        r#"{"service": "helloworld.Greeter", "methods": {
  "SayHello": {"script": "g.lua", "headers": {"x-k": "entry", "x-only": "entry"}},
  "SayHelloAgain": {
    "rules": [{"reply": {"message": "A"}, "headers": {"x-k": "rule"}}],
    "headers": {"x-k": "entry", "x-only": "entry"}
  }
}}"#,
    )
    .unwrap();
    std::fs::write(
        handlers.path().join("g.lua"),
        "function SayHello(req, ctx) ctx:set_header(\"x-k\", \"script\") return { message = \"hi\" } end\n",
    )
    .unwrap();
    let server = Server::start(&[
        "--handlers",
        handlers.path().to_str().unwrap(),
        "--no-watch",
    ]);
    let client = Client::connect(server.addr, common::pool(&common::repo().join("protos"))).await;
    for (method, own) in [("SayHello", "script"), ("SayHelloAgain", "rule")] {
        let (_, md) = client
            .unary_with(
                &format!("helloworld.Greeter/{method}"),
                json!({"name": "x"}),
                MetadataMap::new(),
            )
            .await
            .unwrap();
        let values: Vec<_> = md.get_all("x-k").iter().collect();
        assert_eq!(values, vec![own], "{method}: {md:?}");
        assert_eq!(md.get("x-only").unwrap(), "entry", "{method}: {md:?}");
    }
}

/// Replies are written in the proto3 JSON mapping: field names in `snake_case` or
/// `lowerCamelCase` alike, 64-bit integers as numbers or strings, enums by name, bytes as
/// base64, numbers written as strings.
#[tokio::test]
async fn replies_take_either_field_name_form_and_the_json_mapping_values() {
    let handlers = tempfile::tempdir().unwrap();
    std::fs::write(
        handlers.path().join("r.json"),
        r#"{"service": "routeguide.RouteGuide", "methods": {
  "RecordRoute": {"reply": {"point_count": 1, "featureCount": 2, "distance": 3, "elapsedTime": "{{latitude}}"}}
}}"#,
    )
    .unwrap();
    std::fs::write(
        handlers.path().join("k.json"),
        r#"{"service": "kitchen.Kitchen", "methods": {
  "Get": {"reply": {"blob": "AAEC", "big": 5, "count": "-7", "color": "RED", "price": "1.5"}}
}}"#,
    )
    .unwrap();
    let (repo_protos, kitchen_protos) = (common::repo().join("protos"), fixtures().join("protos"));
    let server = Server::start(&[
        "--protos",
        repo_protos.to_str().unwrap(),
        "--protos",
        kitchen_protos.to_str().unwrap(),
        "--handlers",
        handlers.path().to_str().unwrap(),
        "--no-watch",
    ]);
    let pool = protoserve::schema::compile(&protoserve::schema::SchemaInputs::protos(&[
        repo_protos,
        kitchen_protos,
    ]))
    .expect("compile protos")
    .pool;
    let client = Client::connect(server.addr, pool).await;
    let summary = client
        .client_stream(
            "routeguide.RouteGuide/RecordRoute",
            vec![json!({"latitude": 4}), json!({"latitude": 9})],
        )
        .await
        .unwrap();
    assert_eq!(
        summary,
        json!({"pointCount": 1, "featureCount": 2, "distance": 3, "elapsedTime": 9})
    );
    let item = client
        .unary("kitchen.Kitchen/Get", json!({}))
        .await
        .unwrap();
    assert_eq!(
        item,
        json!({"blob": "AAEC", "big": "5", "count": "-7", "color": "RED", "price": 1.5})
    );
}

/// `"{{.}}"` is the whole request: as the reply when the types match, or in a field of the
/// request's type.
#[tokio::test]
async fn the_whole_request_goes_into_a_field() {
    let dir = tempfile::tempdir().unwrap();
    let (protos, handlers) = (dir.path().join("protos"), dir.path().join("handlers"));
    std::fs::create_dir_all(&protos).unwrap();
    std::fs::create_dir_all(&handlers).unwrap();
    std::fs::write(
        protos.join("w.proto"),
        "syntax = \"proto3\";\npackage w;\nmessage Req { string a = 1; repeated int64 n = 2; }\nmessage Wrapped { Req inner = 1; string b = 2; }\nservice W {\n  rpc Wrap(Req) returns (Wrapped);\n  rpc Same(Req) returns (Req);\n}\n",
    )
    .unwrap();
    std::fs::write(
        handlers.join("w.json"),
        r#"{"service": "w.W", "methods": {
  "Wrap": {"reply": {"inner": "{{.}}", "b": "got {{a}}"}},
  "Same": {"reply": "{{.}}"}
}}"#,
    )
    .unwrap();
    let server = Server::start(&[
        "--protos",
        protos.to_str().unwrap(),
        "--handlers",
        handlers.to_str().unwrap(),
        "--no-watch",
    ]);
    let client = Client::connect(server.addr, common::pool(&protos)).await;
    let request = json!({"a": "x", "n": ["1", "-2"]});
    assert_eq!(
        client.unary("w.W/Wrap", request.clone()).await.unwrap(),
        json!({"inner": request, "b": "got x"})
    );
    assert_eq!(
        client.unary("w.W/Same", request.clone()).await.unwrap(),
        request
    );
}

/// In text, numbers print as numbers, enums by name and messages as JSON (unset fields at their
/// defaults); a placeholder alone in a string field turns any scalar into text.
#[tokio::test]
async fn text_placeholders_print_numbers_enums_and_messages() {
    let handlers = tempfile::tempdir().unwrap();
    std::fs::write(
        handlers.path().join("k.json"),
        r#"{"service": "kitchen.Kitchen", "methods": {
  "Summary": {"reply": {"id": "in {{inner}} / {{color}} / {{limit}}", "tags": ["{{limit}}", "{{color}}"]}}
}}"#,
    )
    .unwrap();
    let server = Server::start(&[
        "--protos",
        fixtures().join("protos").to_str().unwrap(),
        "--handlers",
        handlers.path().to_str().unwrap(),
        "--no-watch",
    ]);
    let client = Client::connect(server.addr, common::pool(&fixtures().join("protos"))).await;
    let full = client
        .unary(
            "kitchen.Kitchen/Summary",
            json!({"inner": {"x": 1, "label": "l"}, "color": "RED", "limit": 3}),
        )
        .await
        .unwrap();
    assert_eq!(
        full,
        json!({"id": "in {\"x\":1,\"label\":\"l\"} / RED / 3", "tags": ["3", "RED"]})
    );
    let empty = client
        .unary("kitchen.Kitchen/Summary", json!({}))
        .await
        .unwrap();
    assert_eq!(
        empty,
        json!({"id": "in {} / COLOR_UNSPECIFIED / 0", "tags": ["0", "COLOR_UNSPECIFIED"]})
    );
}
