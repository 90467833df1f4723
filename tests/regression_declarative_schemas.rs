//! Declarative handlers on the schema features real-world APIs use: closed proto2 enums whose
//! default is not zero, enums with negative values and aliases, proto2 defaults and groups,
//! well-known types, maps with int64 and bool keys, oneofs and `optional` fields. What the
//! client decodes must be what the handler file says. Fixture: tests/fixtures/decl_schemas.

mod common;

use bytes::Bytes;
use common::{fixtures, Client, Server};
use prost::Message;
use prost_reflect::DynamicMessage;
use serde_json::{json, Value as Json};

async fn start() -> (Server, Client) {
    let f = fixtures().join("decl_schemas");
    let protos = f.join("protos").display().to_string();
    let handlers = f.join("handlers").display().to_string();
    let s = Server::start(&["--protos", &protos, "--handlers", &handlers]);
    let c = Client::connect(s.addr, common::pool(&f.join("protos"))).await;
    (s, c)
}

/// The reply to `request`, decoded as the client's own descriptors say, without going
/// through JSON (which refuses some invalid messages outright).
async fn call(c: &Client, name: &str, request: Json) -> DynamicMessage {
    let m = c.method(name);
    let req = Client::message(&m.input(), request);
    let raw = c
        .raw_unary(&format!("/{name}"), Bytes::from(req.encode_to_vec()))
        .await
        .unwrap_or_else(|e| panic!("{name}: {e:?}"));
    DynamicMessage::decode(m.output(), raw).expect("the reply decodes")
}

/// The names of the fields a reply carries.
fn set_fields(msg: &DynamicMessage) -> Vec<String> {
    msg.fields().map(|(f, _)| f.name().to_owned()).collect()
}

fn to_json(msg: &DynamicMessage) -> Json {
    serde_json::to_value(msg).expect("the reply is valid proto3 JSON")
}

/// `"at": "{{at}}"` copied a message the request did not set as an empty one, and a proto2 or
/// `optional` field the request did not set as its default: the reply carried an `Any`
/// without a type URL (no client can read it as JSON: "unsupported type url ''"), a `Value`
/// of no kind, `opt: 0`, and made-up proto2 defaults (`count: 7`, `text: "anon"`).
#[tokio::test]
async fn copying_an_unset_request_field_leaves_the_reply_field_unset() {
    let (_s, c) = start().await;
    let reply = call(&c, "open.Open/Copy", json!({})).await;
    assert_eq!(
        set_fields(&reply),
        Vec::<String>::new(),
        "open.Open/Copy of {{}}"
    );
    let reply = call(&c, "closed.Closed/Copy", json!({})).await;
    assert_eq!(
        set_fields(&reply),
        Vec::<String>::new(),
        "closed.Closed/Copy of {{}}"
    );

    // Set fields are still copied, defaults and empty messages included.
    let request = json!({
        "color": "MINUS", "alias": "A_UNO", "opt": 0, "at": "2024-01-02T03:04:05Z", "dur": "0s",
        "w": 0, "bw": false, "st": {"k": [1, null]}, "v": null, "lv": [], "m64": {"-5": "x"},
        "mb": {"false": 0}, "any": {"@type": "type.googleapis.com/google.protobuf.Empty", "value": {}},
        "mask": "fooBar", "child": {"color": "MINUS"}, "colors": ["MINUS", 5], "a": "one"
    });
    let reply = to_json(&call(&c, "open.Open/Copy", request).await);
    assert_eq!(
        reply,
        json!({
            "color": "MINUS", "alias": "A_ONE", "opt": 0, "at": "2024-01-02T03:04:05Z",
            "dur": "0s", "w": 0, "bw": false, "st": {"k": [1.0, null]}, "v": null, "lv": [],
            "m64": {"-5": "x"}, "mb": {"false": 0},
            "any": {"@type": "type.googleapis.com/google.protobuf.Empty", "value": {}},
            "mask": "fooBar", "child": {"color": "MINUS"}, "colors": ["MINUS", 5], "name": "one"
        })
    );
    // A proto2 required field is always written: a reply without it is refused by clients.
    let reply = call(&c, "closed.Closed/Tag", json!({})).await;
    assert_eq!(to_json(&reply), json!({"id": "anon", "level": "LOW"}));
    let reply = call(
        &c,
        "closed.Closed/Tag",
        json!({"name": "n", "level": "HIGH"}),
    )
    .await;
    assert_eq!(
        to_json(&reply),
        json!({"id": "n", "note": "n", "level": "HIGH"})
    );

    let reply = call(&c, "closed.Closed/Copy", json!({"count": 0, "name": ""})).await;
    assert_eq!(set_fields(&reply), ["count", "text"]);
    assert_eq!(
        to_json(&reply),
        json!({"count": 0, "text": ""}),
        "a proto2 field set to 0 or \"\" is copied as set"
    );
}

/// A required message field copied from a message the request does not carry got an empty
/// message, which lacked its own required fields (`0a00`: protoc and every client that checks
/// said "missing required fields"). It gets the default message with its required fields at
/// their defaults; a message the request carries is copied as it is.
#[tokio::test]
async fn a_required_message_copied_from_nothing_carries_its_required_fields() {
    let (_s, c) = start().await;
    let reply = call(&c, "closed.Closed/Keep", json!({})).await;
    assert_eq!(to_json(&reply), json!({"tag": {"id": "", "level": "LOW"}}));
    let reply = call(
        &c,
        "closed.Closed/Keep",
        json!({"tag": {"id": "t", "level": "HIGH", "note": "n"}}),
    )
    .await;
    assert_eq!(
        to_json(&reply),
        json!({"tag": {"id": "t", "level": "HIGH", "note": "n"}})
    );
}

/// `present` compared the value read with zero: a proto2 field the request did not set read
/// as its default (a closed enum's first value `LOW = 1`, `[default = 7]`) and so counted as
/// present, while one set to 0, an `optional` set to 0 and a `Duration` set to `0s` counted as
/// absent.
#[tokio::test]
async fn present_asks_whether_a_field_with_presence_is_set() {
    let (_s, c) = start().await;
    for (request, want) in [
        (json!({}), "level absent"),
        (json!({"level": "LOW"}), "count absent"),
        (json!({"level": "LOW", "count": 0}), "both set"),
        (
            json!({"level": "BELOW", "count": 7, "sign": "MINUS"}),
            "MINUS and -3",
        ),
    ] {
        let reply = to_json(&call(&c, "closed.Closed/When", request.clone()).await);
        assert_eq!(reply, json!({"text": want}), "closed.Closed/When {request}");
    }
    for (request, want) in [
        (json!({}), "none"),
        (json!({"opt": 0}), "opt set"),
        (json!({"dur": "0s"}), "dur set"),
        (json!({"child": {}}), "none"),
        (
            json!({"child": {"at": "1970-01-01T00:00:00Z"}}),
            "child.at set",
        ),
        (json!({"color": "MINUS", "alias": "A_UNO"}), "MINUS and 1"),
    ] {
        let reply = to_json(&call(&c, "open.Open/When", request.clone()).await);
        assert_eq!(reply, json!({"name": want}), "open.Open/When {request}");
    }
}

/// Constants, templates, streams and echo with negative, aliased and closed enums, proto2
/// defaults and groups, well-known types and maps with int64 and bool keys reach the client
/// as the handler file writes them.
#[tokio::test]
async fn enums_defaults_and_well_known_types_reach_the_client_as_written() {
    let (_s, c) = start().await;
    let reply = to_json(&call(&c, "open.Open/Get", json!({})).await);
    assert_eq!(
        reply,
        json!({
            "color": "MINUS", "alias": "A_ONE", "opt": 0, "b": 0,
            "at": "2024-01-02T03:04:05.500Z", "dur": "-1.500s", "w": 0, "bw": false,
            "st": {"k": [1.0, "x", null, {"y": true}]}, "v": null, "lv": [1.0, null],
            "m64": {"-9007199254740993": "big"}, "mb": {"true": 1, "false": 0},
            "any": {"@type": "type.googleapis.com/google.protobuf.Duration", "value": "2s"},
            "mask": "a.b,cD", "colors": ["MINUS", "ZERO", "MINUS", 7]
        })
    );
    let reply = call(&c, "closed.Closed/Get", json!({})).await;
    assert_eq!(
        to_json(&reply),
        json!({"level": "LOW", "sign": "MINUS", "count": 0, "levels": ["BELOW", "LOW", "HIGH"]})
    );
    let text = |m: DynamicMessage| to_json(&m)["text"].clone();
    assert_eq!(
        text(call(&c, "closed.Closed/Text", json!({})).await),
        "LOW/MINUS/7/anon/0"
    );
    assert_eq!(
        text(
            call(
                &c,
                "closed.Closed/Text",
                json!({"level": "BELOW", "sign": "NONE", "count": 0, "name": "", "box": {"x": 3}})
            )
            .await
        ),
        "BELOW/NONE/0//3"
    );
    let name = |m: DynamicMessage| to_json(&m)["name"].clone();
    assert_eq!(
        name(call(&c, "open.Open/Text", json!({})).await),
        "ZERO|A_UNSPECIFIED|0|0|ZERO"
    );
    assert_eq!(
        name(call(&c, "open.Open/Text", json!({"color": "MINUS", "alias": "A_UNO", "opt": -2, "b": -3, "child": {"color": 9}})).await),
        "MINUS|A_ONE|-2|-3|9"
    );
    let echoed =
        json!({"level": "BELOW", "sign": "MINUS", "count": 0, "name": "", "box": {"x": 3}});
    assert_eq!(
        to_json(&call(&c, "closed.Closed/Echo", echoed.clone()).await),
        echoed
    );

    let items = c
        .server_stream("closed.Closed/List", json!({}))
        .await
        .unwrap();
    assert_eq!(
        items,
        [
            json!({"sign": "MINUS"}),
            json!({}),
            json!({"level": "BELOW"})
        ]
    );
    let items = c
        .server_stream("closed.Closed/List", json!({"sign": "NONE"}))
        .await
        .unwrap();
    assert_eq!(
        items,
        [
            json!({"sign": "MINUS"}),
            json!({"sign": "NONE"}),
            json!({"level": "BELOW"})
        ]
    );
    let items = c
        .server_stream(
            "open.Open/List",
            json!({"color": "MINUS", "colors": ["ONE", -1]}),
        )
        .await
        .unwrap();
    assert_eq!(
        items,
        [
            json!({"color": "MINUS"}),
            json!({"color": "MINUS"}),
            json!({"colors": ["ONE", "MINUS", "MINUS"]})
        ]
    );
    assert_eq!(
        c.unary("open.Open/Blank", json!({})).await.unwrap(),
        json!({"name": "blank", "color": "MINUS"})
    );
    assert_eq!(
        c.unary("open.Open/Void", json!({})).await.unwrap(),
        json!({})
    );
}

/// A bare value or `in` on a message field (a wrapper, a Timestamp) compared the value parsed
/// with the empty message an unset field reads as: `"w": 0` on an `Int32Value` held for every
/// request that did not send `w`, though its JSON is null there, not 0.
#[tokio::test]
async fn equality_on_a_message_field_the_request_does_not_carry_does_not_hold() {
    let (_s, c) = start().await;
    for (request, want) in [
        (json!({}), "none"),
        (json!({"name": "x", "dur": "1s"}), "none"),
        (json!({"w": 0}), "w 0"),
        (json!({"w": 1, "bw": false}), "bw false"),
        (
            json!({"bw": true, "at": "1970-01-01T00:00:00Z"}),
            "at epoch",
        ),
    ] {
        let reply = to_json(&call(&c, "open.Open/Wrapped", request.clone()).await);
        assert_eq!(reply, json!({"name": want}), "open.Open/Wrapped {request}");
    }
}

/// The JSON mapping takes any number for an enum, and a reply or a rule took it for a closed
/// (proto2) enum too: `"level": 99` was served, and every client's parser dropped it, reading
/// the field as unset (and no client can send 99, so such a rule never held). `check` refuses
/// it at its line and column, with the values there are.
#[test]
fn a_number_a_closed_enum_does_not_declare_is_refused_at_startup() {
    let (code, err) = check_closed(
        r#"{
  "service": "closed.Closed",
  "methods": {
    "Get": { "reply": { "level": 99 } },
    "When": { "rules": [ { "when": { "request": { "level": { "in": ["LOW", 5] } } }, "reply": {} } ] },
    "Text": { "reply": { "levels": ["LOW", -1] } },
    "List": { "stream": [ { "level": "BELOW" }, { "sign": 2 } ] }
  }
}
"#,
    );
    assert_eq!(code, 2, "{err}");
    for want in [
        "closed.json:4:25: closed.Closed/Get: reply.level: 99 is not a value of closed.Level",
        "closed.json:5:76: closed.Closed/When: rules[0].when.request.level.in[1]: 5 is not a value of closed.Level",
        "closed.json:6:26: closed.Closed/Text: reply.levels: -1 is not a value of closed.Level",
        "closed.json:7:51: closed.Closed/List: stream[1].sign: 2 is not a value of closed.Sign",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
    assert!(err.contains("use one of BELOW, LOW, HIGH"), "{err}");
    assert!(err.contains("4 problem(s) found"), "{err}");
}

/// A reply without a proto2 `required` field was served, and clients that check them
/// (protobuf-java, C++, protobufjs) refused every answer; `check` now names the field, in the
/// reply, in a message template inside it and in a constant message.
#[test]
fn a_reply_without_a_required_field_is_refused_at_startup() {
    let (code, err) = check_closed(
        r#"{
  "service": "closed.Closed",
  "methods": {
    "Tag": { "reply": { "note": "{{name}}", "level": "LOW" } },
    "Hold": { "rules": [
      { "when": { "request": { "name": "a" } }, "reply": { "tag": { "id": "{{name}}" } } },
      { "reply": { "tags": [ { "id": "a", "level": "LOW" }, { "id": "b" } ] } }
    ] }
  }
}
"#,
    );
    assert_eq!(code, 2, "{err}");
    for want in [
        "closed.json:4:14: closed.Closed/Tag: reply: closed.Tagged needs its required field \"id\" (string)",
        "closed.Closed/Hold: rules[0].reply.tag: closed.Tagged needs its required field \"level\" (closed.Level)",
        "closed.Closed/Hold: rules[1].reply.tags: closed.Tagged needs its required field \"level\"",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
    assert!(err.contains("3 problem(s) found"), "{err}");
}

/// `check` of the fixture protos with `file` as the only handler file (`closed.json`): its exit
/// status and standard error.
fn check_closed(file: &str) -> (i32, String) {
    let handlers = tempfile::tempdir().unwrap();
    std::fs::write(handlers.path().join("closed.json"), file).unwrap();
    let protos = fixtures().join("decl_schemas/protos");
    let (code, _, err) = common::run(&[
        "check",
        "--protos",
        protos.to_str().unwrap(),
        "--handlers",
        handlers.path().to_str().unwrap(),
        "--no-cache",
    ]);
    (code, err)
}

/// `"child": {}` descended into `child` with no tests, so it held for every request, with or
/// without `child`. It is refused at its line and column with what to write instead, and the
/// tests it names do what it says.
#[tokio::test(flavor = "multi_thread")]
async fn an_empty_object_on_a_message_field_in_a_rule_is_refused_with_what_to_write() {
    let handlers = tempfile::tempdir().unwrap();
    let file = handlers.path().join("open.json");
    std::fs::write(
        &file,
        r#"{
  "service": "open.Open",
  "methods": {
    "When": { "rules": [ { "when": { "request": { "child": {} } }, "reply": { "name": "set" } },
                         { "when": { "request": { "child": { "child": {} } } }, "reply": {} } ] }
  }
}
"#,
    )
    .unwrap();
    let f = fixtures().join("decl_schemas");
    let protos = f.join("protos");
    let dir = handlers.path().to_str().unwrap();
    let (code, _, err) = common::run(&[
        "check",
        "--protos",
        protos.to_str().unwrap(),
        "--handlers",
        dir,
        "--no-cache",
    ]);
    assert_eq!(code, 2, "{err}");
    for want in [
        "open.json:4:51: open.Open/When: rules[0].when.request.child: {} tests nothing in \"child\"",
        "open.json:5:62: open.Open/When: rules[1].when.request.child.child: {} tests nothing in \"child.child\"",
        "write {\"present\": true} for \"child is set\"",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }

    // What the message says to write holds as it says.
    std::fs::write(
        &file,
        r#"{"service": "open.Open", "methods": {"When": {"rules": [
  {"when": {"request": {"child": {"equals": {}}}}, "reply": {"name": "empty"}},
  {"when": {"request": {"child": {"present": true}}}, "reply": {"name": "set"}},
  {"when": {"request": {"child": {"present": false}}}, "reply": {"name": "unset"}}
]}}}"#,
    )
    .unwrap();
    let s = Server::start(&["--protos", protos.to_str().unwrap(), "--handlers", dir]);
    let c = Client::connect(s.addr, common::pool(&protos)).await;
    for (request, want) in [
        (json!({}), "unset"),
        (json!({"name": "x"}), "unset"),
        (json!({"child": {}}), "empty"),
        (json!({"child": {"name": "x"}}), "set"),
    ] {
        let reply = to_json(&call(&c, "open.Open/When", request.clone()).await);
        assert_eq!(reply, json!({"name": want}), "{request}");
    }
}

/// A copy of a value the request does not carry leaves a reply field with presence unset, but
/// as a list item or a map value it added an item made of the default: an empty `Inner` in
/// `inners`, `""` in `tags`, `k: 0` in `attrs`, saying what the request did not. Such a copy
/// now adds nothing; a value the client did set, even to its default, is still copied.
#[tokio::test(flavor = "multi_thread")]
async fn copying_an_unset_request_value_into_a_list_or_map_adds_no_item() {
    let handlers = tempfile::tempdir().unwrap();
    std::fs::write(
        handlers.path().join("k.json"),
        r#"{"service": "kitchen.Kitchen", "methods": {"Echo": {"reply": {
  "inners": ["{{inner}}", {"label": "fixed"}],
  "tags": ["{{a}}", "t", "{{inner.label}}"],
  "attrs": {"k": "{{b}}", "x": "{{inner.x}}", "n": 1}
}}}}"#,
    )
    .unwrap();
    let (_s, c) = common::serve_folders(&fixtures().join("protos"), handlers.path(), &[]).await;
    let unset = call(&c, "kitchen.Kitchen/Echo", json!({"id": "none"})).await;
    assert_eq!(
        to_json(&unset),
        json!({"inners": [{"label": "fixed"}], "tags": ["t"], "attrs": {"n": 1}}),
    );
    let set = call(&c, "kitchen.Kitchen/Echo", json!({"inner": {}, "b": 0})).await;
    assert_eq!(
        to_json(&set),
        json!({"inners": [{}, {"label": "fixed"}], "tags": ["t", ""], "attrs": {"k": 0, "x": 0, "n": 1}}),
    );
}
