//! A unary request whose fields are all scalars (strings and bytes included) or singular
//! messages of them reaches its script as slots pushed straight onto the Lua stack, strings
//! copied from the request bytes. The script must see what the Lua value path gave it:
//! the values sent, defaults for what was not, `nil` for unset optional fields and messages,
//! and a `string` field that is not UTF-8 must be refused with the same status and message.

mod common;

use bytes::Bytes;
use serde_json::json;
use tonic::Code;

const PROTO: &str = r#"
syntax = "proto3";
package flat;

service Echo {
  rpc Echo (Req) returns (Out);
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
function Echo(req, ctx)
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
"#;

async fn serve() -> (common::Server, common::Client, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let protos = dir.path().join("protos");
    let handlers = dir.path().join("handlers");
    std::fs::create_dir_all(&protos).unwrap();
    std::fs::create_dir_all(&handlers).unwrap();
    std::fs::write(protos.join("flat.proto"), PROTO).unwrap();
    std::fs::write(
        handlers.join("echo.json"),
        r#"{ "service": "flat.Echo", "methods": { "Echo": { "script": "echo.lua" } } }"#,
    )
    .unwrap();
    std::fs::write(handlers.join("echo.lua"), SCRIPT).unwrap();
    let (server, client) = common::serve_folders(&protos, &handlers, &[]).await;
    (server, client, dir)
}

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
    for (raw, field) in [
        (&[0x0a, 1, 0xff][..], "flat.Req.name"),
        (&[0x3a, 3, 0x0a, 1, 0xc3][..], "flat.Inner.text"),
        (&[0x12, 1, 0xff, 0x42, 2, 0xc3, 0x28][..], "flat.Req.s"),
    ] {
        let err = client
            .raw_unary("/flat.Echo/Echo", Bytes::copy_from_slice(raw))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{field}: {err:?}");
        assert!(
            err.message()
                .contains(&format!("field {field} is not valid UTF-8")),
            "{field}: {err:?}"
        );
    }
}
