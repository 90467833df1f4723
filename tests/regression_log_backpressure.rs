//! Regression of a log nobody reads fast enough. The server wrote each log line to standard
//! error from the thread that logged it; once a pipe's reader lagged (a supervisor, `| less`,
//! a CI runner that reads in bursts) the pipe filled, the next line's write waited, and the
//! thread waiting was one that serves calls: every call stopped until the reader caught up,
//! and SIGTERM with them. A client that makes the server warn (a failing script, a flood) so
//! hung it. Lines now wait in memory for a thread of their own, a bounded number of them.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStderr, Command, Stdio};
use std::time::{Duration, Instant};

use common::{project_folder, Client};
use serde_json::json;
use tonic::Code;

const PROTO: &str = r#"syntax = "proto3";
package t;
message Msg { string s = 1; }
service T {
  rpc Fail(Msg) returns (Msg);
  rpc Hello(Msg) returns (Msg);
}
"#;

const HANDLERS: &str = r#"{
  "service": "t.T",
  "methods": {
    "Fail": { "script": "t.lua" },
    "Hello": { "reply": { "s": "hello {{s}}" } }
  }
}"#;

/// Every call of `Fail` raises an error, which the server logs as a warning of about 200 bytes.
const SCRIPT: &str = r#"
function Fail(req) error("failing on purpose: " .. req.s) end
"#;

/// Calls made; their warnings are several times what a pipe holds (64 KiB on Linux).
const CALLS: usize = 2000;

/// The server, its standard error a pipe that is read up to the listening line and never again.
struct Unread {
    child: Child,
    stderr: BufReader<ChildStderr>,
    addr: Option<std::net::SocketAddr>,
}

impl Drop for Unread {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_unread(dir: &std::path::Path) -> Unread {
    let mut child = Command::new(common::binary())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "off",
            "--no-watch",
        ])
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start protoserve");
    let stderr = BufReader::new(child.stderr.take().expect("stderr"));
    let mut server = Unread {
        child,
        stderr,
        addr: None,
    };
    let mut line = String::new();
    while server.addr.is_none() {
        line.clear();
        let n = server.stderr.read_line(&mut line).expect("read the log");
        assert!(n > 0, "protoserve ended before it listened");
        if let Some(i) = line.find("listening on ") {
            let addr: String = line[i + 13..]
                .split(':')
                .take(2)
                .collect::<Vec<_>>()
                .join(":");
            server.addr = Some(addr.parse().expect("listening address"));
        }
    }
    server
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_nobody_reads_holds_up_no_call() {
    let dir = project_folder(&[
        ("protos/t.proto", PROTO),
        ("handlers/t.json", HANDLERS),
        ("handlers/t.lua", SCRIPT),
    ]);
    let mut server = start_unread(dir.path());
    let client = Client::connect(
        server.addr.unwrap(),
        common::pool(&dir.path().join("protos")),
    )
    .await;
    let padding = "x".repeat(100);
    let started = Instant::now();
    for i in 0..CALLS {
        let call = client.unary("t.T/Fail", json!({ "s": format!("{i} {padding}") }));
        let status = tokio::time::timeout(Duration::from_secs(10), call)
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "call {i} of {CALLS} unanswered after 10 s ({:?} in): the server waits for \
                     its log to be read",
                    started.elapsed()
                )
            })
            .expect_err("Fail fails");
        assert_eq!(status.code(), Code::Internal, "{status:?}");
    }
    let hello = tokio::time::timeout(
        Duration::from_secs(10),
        client.unary("t.T/Hello", json!({ "s": "there" })),
    )
    .await
    .expect("a declarative call after the warnings is answered");
    assert_eq!(hello.unwrap(), json!({ "s": "hello there" }));
    // SIGTERM still ends it.
    let pid = server.child.id().to_string();
    Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill -TERM");
    let until = Instant::now() + Duration::from_secs(15);
    while server.child.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < until,
            "SIGTERM did not end a server whose log is not read"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
