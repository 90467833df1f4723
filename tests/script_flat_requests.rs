//! A request whose fields are all scalars (strings and bytes included) or singular messages
//! of them reaches its script as slots pushed straight onto the Lua stack, strings copied
//! from the request bytes, whether it comes alone or in a stream. The script must see what
//! the Lua value path gave it: the values sent, defaults for what was not, `nil` for unset
//! optional fields and messages, and a `string` field that is not UTF-8 must be refused with
//! the same status and message. A state that runs out of memory while a streamed string is
//! copied into it must keep serving.

mod common;

use bytes::Bytes;
use serde_json::json;
use tonic::Code;

const PROTO: &str = r#"
syntax = "proto3";
package flat;

service Echo {
  rpc Echo (Req) returns (Out);
  rpc Many (stream Req) returns (Out);
  rpc Chat (stream Req) returns (stream Out);
  rpc Hoard (stream Req) returns (Out);
}

message Req {
  string name = 1;
  bytes raw = 2;
  bool b = 3;
  int64 n = 4;
  double x = 5;
  optional string opt = 6;
  Inner inner = 7;
  oneof choice {
    string s = 8;
    bytes d = 9;
  }
}

message Inner {
  string text = 1;
  sint32 k = 2;
}

message Out {
  string text = 1;
}
"#;

/// Every field as text, with the types Lua sees.
const SCRIPT: &str = r#"
local function show(v)
  if v == nil then return "nil" end
  if type(v) == "string" then return "s:" .. v:gsub("[^%w ]", function(c) return ("\\%d"):format(c:byte()) end) end
  return math.type(v) or type(v), tostring(v)
end
function Echo(req)
  local parts = {}
  for _, k in ipairs({ "name", "raw", "b", "n", "x", "opt", "s", "d" }) do
    local t, v = show(req[k])
    parts[#parts + 1] = k .. "=" .. t .. (v and (":" .. v) or "")
  end
  if req.inner then
    local t = show(req.inner.text)
    parts[#parts + 1] = "inner.text=" .. t .. " inner.k=" .. math.type(req.inner.k) .. ":" .. req.inner.k
  else
    parts[#parts + 1] = "inner=nil"
  end
  return { text = table.concat(parts, " ") }
end

function Many(reqs)
  local each = {}
  for req in reqs do each[#each + 1] = Echo(req).text end
  return { text = table.concat(each, " | ") }
end

function Chat(reqs, ctx)
  for req in reqs do ctx:send(Echo(req)) end
end

-- Keeps every name: a state of a few MiB runs out while one is copied in.
function Hoard(reqs)
  local kept = {}
  local ok, err = pcall(function()
    for req in reqs do kept[#kept + 1] = req.name end
  end)
  if ok then return { text = "kept " .. #kept } end
  -- Taking the stream again after the error must not hang or find it locked.
  local more = 0
  pcall(function() for _ in reqs do more = more + 1 end end)
  error(err, 0)
end
"#;

async fn serve() -> (common::Server, common::Client, tempfile::TempDir) {
    serve_with(&[]).await
}

async fn serve_with(extra: &[&str]) -> (common::Server, common::Client, tempfile::TempDir) {
    let handlers = r#"{ "service": "flat.Echo", "methods": {
        "Echo": { "script": "echo.lua" }, "Many": { "script": "echo.lua" },
        "Chat": { "script": "echo.lua" }, "Hoard": { "script": "echo.lua" } } }"#;
    common::serve_files(
        &[
            ("protos/flat.proto", PROTO),
            ("handlers/echo.json", handlers),
            ("handlers/echo.lua", SCRIPT),
        ],
        extra,
    )
    .await
}

/// The status a request of [`NOT_UTF8`] gets, naming `field`.
fn refused_as_not_utf8(err: &tonic::Status, field: &str) {
    assert_eq!(err.code(), Code::InvalidArgument, "{field}: {err:?}");
    assert!(
        err.message()
            .contains(&format!("field {field} is not valid UTF-8")),
        "{field}: {err:?}"
    );
}

/// Requests with a `string` field that is not UTF-8, and the field.
const NOT_UTF8: [(&[u8], &str); 3] = [
    (&[0x0a, 1, 0xff], "flat.Req.name"),
    (&[0x3a, 3, 0x0a, 1, 0xc3], "flat.Inner.text"),
    (&[0x12, 1, 0xff, 0x42, 2, 0xc3, 0x28], "flat.Req.s"),
];

fn text(out: &serde_json::Value) -> &str {
    out["text"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn flat_requests_reach_scripts_with_the_values_sent() {
    let (_server, client, _dir) = serve().await;

    let out = client.unary("flat.Echo/Echo", json!({})).await.unwrap();
    assert_eq!(
        text(&out),
        "name=s: raw=s: b=boolean:false n=integer:0 x=float:0.0 opt=nil s=nil d=nil inner=nil"
    );

    let out = client
        .unary(
            "flat.Echo/Echo",
            json!({
                "name": "héllo", "raw": "AP8=", "b": true, "n": "-7", "x": 2.5, "opt": "",
                "inner": { "text": "in", "k": -3 }, "d": "YQ=="
            }),
        )
        .await
        .unwrap();
    assert_eq!(
        text(&out),
        "name=s:h\\195\\169llo raw=s:\\0\\255 b=boolean:true n=integer:-7 x=float:2.5 opt=s: \
         s=nil d=s:a inner.text=s:in inner.k=integer:-3"
    );

    // Raw bytes: a repeated string (the last one counts), then a oneof member replaced.
    let raw = Bytes::from_static(&[
        0x0a, 1, b'a', 0x0a, 2, b'b', b'c', 0x42, 1, b'x', 0x4a, 1, b'y', 0x32, 0,
    ]);
    let out = client.raw_unary("/flat.Echo/Echo", raw).await.unwrap();
    // `Out` is field 1 and its text, whose length takes one byte.
    assert_eq!(
        std::str::from_utf8(&out[2..]).unwrap(),
        "name=s:bc raw=s: b=boolean:false n=integer:0 x=float:0.0 opt=s: s=nil d=s:y inner=nil"
    );
}

#[tokio::test]
async fn strings_that_are_not_utf8_are_refused_as_before() {
    let (_server, client, _dir) = serve().await;
    for (raw, field) in NOT_UTF8 {
        let err = client
            .raw_unary("/flat.Echo/Echo", Bytes::copy_from_slice(raw))
            .await
            .unwrap_err();
        refused_as_not_utf8(&err, field);
    }
}

/// The requests of the unary test, as a stream: what each one shows, in order.
const STREAMED: [&str; 3] = [
    "name=s: raw=s: b=boolean:false n=integer:0 x=float:0.0 opt=nil s=nil d=nil inner=nil",
    "name=s:h\\195\\169llo raw=s:\\0\\255 b=boolean:true n=integer:-7 x=float:2.5 opt=s: \
     s=nil d=s:a inner.text=s:in inner.k=integer:-3",
    "name=s:bc raw=s: b=boolean:false n=integer:0 x=float:0.0 opt=s: s=nil d=s:y inner=nil",
];

fn streamed_requests() -> Vec<Bytes> {
    vec![
        Bytes::new(),
        // name "héllo", raw 00 ff, b, n -7, x 2.5, opt "", inner { text "in", k -3 }, d "a"
        Bytes::from_static(&[
            0x0a, 6, b'h', 0xc3, 0xa9, b'l', b'l', b'o', 0x12, 2, 0x00, 0xff, 0x18, 1, 0x20, 0xf9,
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 0x29, 0, 0, 0, 0, 0, 0, 0x04,
            0x40, 0x32, 0, 0x3a, 6, 0x0a, 2, b'i', b'n', 0x10, 5, 0x4a, 1, b'a',
        ]),
        Bytes::from_static(&[
            0x0a, 1, b'a', 0x0a, 2, b'b', b'c', 0x42, 1, b'x', 0x4a, 1, b'y', 0x32, 0,
        ]),
    ]
}

#[tokio::test]
async fn flat_request_streams_reach_scripts_with_the_values_sent() {
    let (_server, client, _dir) = serve().await;
    let out = client
        .raw_client_stream("/flat.Echo/Many", streamed_requests())
        .await
        .unwrap();
    // `Out` is field 1 and its text, whose length takes two bytes.
    assert_eq!(
        std::str::from_utf8(&out[3..]).unwrap(),
        STREAMED.join(" | ")
    );

    let items: Vec<serde_json::Value> = streamed_requests()
        .iter()
        .map(|b| {
            let input = client.method("flat.Echo/Chat").input();
            common::to_json(&prost_reflect::DynamicMessage::decode(input, b.clone()).unwrap())
        })
        .collect();
    let (outs, status) = client.bidi("flat.Echo/Chat", items).await;
    assert!(status.is_none(), "{status:?}");
    let texts: Vec<&str> = outs.iter().map(text).collect();
    assert_eq!(texts, STREAMED);
}

#[tokio::test]
async fn streamed_strings_that_are_not_utf8_are_refused_as_before() {
    let (_server, client, _dir) = serve().await;
    for (raw, field) in NOT_UTF8 {
        let good = Bytes::from_static(&[0x0a, 1, b'a']);
        let err = client
            .raw_client_stream("/flat.Echo/Many", vec![good, Bytes::copy_from_slice(raw)])
            .await
            .unwrap_err();
        refused_as_not_utf8(&err, field);
    }
}

/// A name of `n` bytes, as a request.
fn named(n: usize) -> Bytes {
    let mut b = vec![0x0a];
    let mut len = n;
    while len >= 0x80 {
        b.push((len as u8) | 0x80);
        len >>= 7;
    }
    b.push(len as u8);
    b.resize(b.len() + n, b'z');
    Bytes::from(b)
}

#[tokio::test]
async fn a_state_out_of_memory_while_a_streamed_string_is_copied_keeps_serving() {
    let (_server, client, _dir) =
        serve_with(&["--script-states", "1", "--script-memory", "8"]).await;
    for round in 0..3 {
        let err = client
            .raw_client_stream("/flat.Echo/Hoard", (0..6).map(|_| named(3 << 20)).collect())
            .await
            .unwrap_err();
        assert_eq!(
            err.code(),
            Code::ResourceExhausted,
            "round {round}: {err:?}"
        );
        // The same state answers the next calls, streamed and unary.
        let out = client
            .raw_client_stream("/flat.Echo/Hoard", vec![named(10), named(20)])
            .await
            .unwrap();
        assert_eq!(
            std::str::from_utf8(&out[2..]).unwrap(),
            "kept 2",
            "round {round}"
        );
        let out = client
            .unary("flat.Echo/Echo", json!({ "name": "ok" }))
            .await
            .unwrap();
        assert!(text(&out).starts_with("name=s:ok "), "round {round}: {out}");
    }
}
