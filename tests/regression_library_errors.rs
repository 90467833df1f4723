//! Regressions of errors from Lua's library functions that the server wraps.
//!
//! The server calls many library functions through wrappers of its own (to charge big inputs
//! to the call's budget), so Lua's messages lost what they say in stock Lua: `("x"):rep(-1,
//! {})` ended the call with "bad argument #3 to '?' (string expected, got table)", with no
//! line, and `setmetatable(1, {})` with the wrapper's place, `protoserve:82:`. Such errors now
//! name the script's line and the function as the script called it, whether they end the call
//! or `pcall` catches them; a script's own error without a position stays as it raised it.
//! A stack overflow that Lua raised inside a wrapper (a `gsub` whose function calls `gsub`, a
//! `__lt` or `__index` that calls `math.max`, `os.time` or `table.concat` again) was placed at
//! `?:-1:`, the wrapper's code having no line information; it names the script's line now.
//! `grpc.status(5, {})` said "bad argument #2 to '?'": it names `grpc.status` now, as its
//! other argument errors did.

mod common;

use bytes::Bytes;
use common::serve_repo_protos_with;

const JSON: &str = r#"{ "service": "helloworld.Greeter",
  "methods": { "SayHello": { "script": "lib.lua" }, "SayHelloAgain": { "script": "lib.lua" } } }"#;

/// Each case on a line of its own (line 2 onwards), in a call that is not a tail call.
const CASES: [(&str, &str); 10] = [
    (
        "(\"x\"):rep(-1, {})",
        "bad argument #3 to 'rep' (string expected, got table)",
    ),
    (
        "string.format(\"%d\", \"x\")",
        "bad argument #2 to 'format' (number expected, got string)",
    ),
    (
        "(\"x\"):byte({})",
        "bad argument #2 to 'byte' (number expected, got table)",
    ),
    (
        "select(-5, 1)",
        "bad argument #1 to 'select' (index out of range)",
    ),
    (
        "utf8.char(-1)",
        "bad argument #1 to 'char' (value out of range)",
    ),
    (
        "string.char(256)",
        "bad argument #1 to 'char' (value out of range)",
    ),
    (
        "setmetatable(1, {})",
        "bad argument #1 to 'setmetatable' (table expected, got number)",
    ),
    (
        "table.concat({{}})",
        "invalid value (table) at index 1 in table for 'concat'",
    ),
    (
        "table.insert({}, 1, 2, 3)",
        "wrong number of arguments to 'insert'",
    ),
    ("error(\"as raised\", 0)", "as raised"),
];

fn script() -> String {
    let mut lua = String::from("local cases = {\n");
    for (code, _) in CASES {
        lua.push_str(&format!("  function() local r = {code} return r end,\n"));
    }
    lua.push_str(
        "}\nfunction SayHello(req)\n  local r = cases[tonumber(req.name)]()\n  return { message = tostring(r) }\nend\n\
         function SayHelloAgain(req)\n  local ok, e = pcall(cases[tonumber(req.name)])\n  return { message = tostring(e) }\nend\n",
    );
    lua
}

/// Runs case `i` (from 0) through `method`: its answer.
async fn run_case(client: &common::Client, method: &str, i: usize) -> Result<Bytes, tonic::Status> {
    let n = (i + 1).to_string();
    let mut request = vec![0x0a, n.len() as u8];
    request.extend_from_slice(n.as_bytes());
    client
        .raw_unary(
            &format!("/helloworld.Greeter/{method}"),
            Bytes::from(request),
        )
        .await
}

/// What case `i` (from 0) says, as stock Lua would: at its line, but a script's own error as
/// raised.
fn stock(i: usize, expected: &str) -> String {
    if expected == "as raised" {
        expected.to_owned()
    } else {
        format!("lib.lua:{}: {expected}", i + 2)
    }
}

#[tokio::test]
async fn library_errors_name_the_scripts_line_and_the_function_it_called() {
    let lua = script();
    let (_server, client, _dir) =
        serve_repo_protos_with(&[("lib.json", JSON), ("lib.lua", &lua)], &[]).await;
    for (i, (code, expected)) in CASES.iter().enumerate() {
        let status = run_case(&client, "SayHello", i).await.expect_err(code);
        let message = status.message();
        // (The call's message starts with the method, then ": " and the script's error, whose
        // file is named by its path.)
        let want = stock(i, expected);
        assert!(
            message.ends_with(&format!(": {want}")) || message.ends_with(&format!("/{want}")),
            "{code}: {message:?} does not end with {want:?}"
        );
    }
}

/// The same errors caught with `pcall`, as the script sees them.
#[tokio::test]
async fn caught_library_errors_read_as_in_stock_lua() {
    let lua = script();
    let (_server, client, _dir) =
        serve_repo_protos_with(&[("lib.json", JSON), ("lib.lua", &lua)], &[]).await;
    for (i, (code, expected)) in CASES.iter().enumerate() {
        let reply = run_case(&client, "SayHelloAgain", i).await.expect(code);
        let message = String::from_utf8_lossy(&reply[2..]).into_owned();
        let want = stock(i, expected);
        assert!(
            message == want || message.ends_with(&format!("/{want}")),
            "{code}: caught {message:?}, not {want:?}"
        );
    }
}

/// `grpc.status` with a message that is not a string, uncaught and caught (a caught error of
/// the server's own functions is the plain message, as for `ctx:sleep`).
#[tokio::test]
async fn grpc_status_argument_errors_name_grpc_status() {
    let lua = "function SayHello(req)\n  error(grpc.status(5, {}))\nend\n\
               function SayHelloAgain(req)\n  local ok, e = pcall(grpc.status, 5, {})\n  return { message = tostring(e) }\nend\n";
    let (_server, client, _dir) =
        serve_repo_protos_with(&[("lib.json", JSON), ("lib.lua", lua)], &[]).await;
    let want = "bad argument #2 to 'grpc.status' (string expected, got table)";
    let status = run_case(&client, "SayHello", 0).await.unwrap_err();
    assert!(
        status.message().ends_with(&format!("lib.lua:2: {want}")),
        "{:?}",
        status.message()
    );
    let reply = run_case(&client, "SayHelloAgain", 0).await.unwrap();
    assert_eq!(String::from_utf8_lossy(&reply[2..]), want);
}

/// Recursions through library functions the server wraps, each on its own line (from line 2).
const OVERFLOWS: [&str; 4] = [
    "local function g(s) return (s:gsub('.', g)) end return g('abc')",
    "local mt = {} mt.__lt = function() return math.max(setmetatable({}, mt), setmetatable({}, mt)) end return tostring(math.max(setmetatable({}, mt), setmetatable({}, mt)))",
    "local mt = {} mt.__index = function() return os.time(setmetatable({}, mt)) end return tostring(os.time(setmetatable({}, mt)))",
    "local mt = {} mt.__len = function() return 1 end mt.__index = function() return table.concat(setmetatable({}, mt)) end return (table.concat(setmetatable({}, mt)))",
];

#[tokio::test]
async fn stack_overflows_inside_wrappers_name_the_scripts_line() {
    let mut lua = String::from("local cases = {\n");
    for code in OVERFLOWS {
        lua.push_str(&format!("  function() {code} end,\n"));
    }
    lua.push_str(
        "}\nfunction SayHello(req)\n  local r = cases[tonumber(req.name)]()\n  return { message = tostring(r) }\nend\n\
         function SayHelloAgain(req)\n  local ok, e = pcall(cases[tonumber(req.name)])\n  return { message = tostring(e) }\nend\n",
    );
    let (_server, client, _dir) =
        serve_repo_protos_with(&[("lib.json", JSON), ("lib.lua", &lua)], &[]).await;
    for (i, code) in OVERFLOWS.iter().enumerate() {
        let at = format!("lib.lua:{}: ", i + 2);
        let status = run_case(&client, "SayHello", i).await.expect_err(code);
        let message = status.message();
        assert!(
            message.contains(&at) && message.ends_with("stack overflow"),
            "{code}: {message:?} is not at {at:?}"
        );
        let reply = run_case(&client, "SayHelloAgain", i).await.expect(code);
        let caught = String::from_utf8_lossy(&reply[2..]).into_owned();
        assert!(
            caught.contains(&at) && caught.ends_with("stack overflow"),
            "{code}: caught {caught:?}, not at {at:?}"
        );
    }
}
