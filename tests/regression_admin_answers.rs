//! Regression: admin answers that clients do not take are bounded in memory and in time.
//!
//! A journal read was built one at a time, but its answer (up to some 50 MB of JSON) then
//! waited in the connection for as long as the client left it there: one HTTP/2 connection
//! asking for the whole journal on 32 streams with a window of 0 held 1.5 GB, and 40 HTTP/1.1
//! connections that never read 1.7 GB, without end. Answers not yet taken are now counted
//! against 128 MiB for the whole listener (past it a request is refused at once with 503), and
//! a connection holding an answer its client has not taken for 30 s is closed.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{proc_status_kib, serve_files};

const PROTO: &str = r#"syntax = "proto3";
package big;
message Blob { string text = 1; }
service Big { rpc Echo(Blob) returns (Blob); }
"#;

const HANDLERS: &str = r#"{"service": "big.Big", "methods": {"Echo": {"echo": {}}}}"#;

/// A `Blob` of `n` control characters, encoded: six bytes each in JSON (`\u0001`).
fn blob(n: usize) -> Bytes {
    Bytes::from(common::len_field(1, &vec![1u8; n]))
}

fn rss_mib(pid: u32) -> u64 {
    proc_status_kib(pid, "VmRSS") / 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journal_answers_a_client_never_takes_are_bounded_and_dropped_with_their_connection() {
    let (server, client, _dir) = serve_files(
        &[("protos/big.proto", PROTO), ("handlers/big.json", HANDLERS)],
        &[],
    )
    .await;
    // Eight calls of 4 MB each way, within the journal's 64 MiB: its first page is some 50 MB of
    // JSON.
    for _ in 0..8 {
        let echoed = client
            .raw_unary("/big.Big/Echo", blob(4_000_000))
            .await
            .expect("the echo answered");
        assert_eq!(echoed.len(), 4_000_005);
    }
    let pid = server.pid();
    let before = rss_mib(pid);

    // One connection, a window of 0: the server can send heads but no body.
    let tcp = tokio::net::TcpStream::connect(server.admin_addr())
        .await
        .unwrap();
    let (mut send, conn) = h2::client::Builder::new()
        .initial_window_size(0)
        .handshake::<_, Bytes>(tcp)
        .await
        .unwrap();
    let closed = tokio::spawn(async move {
        let _ = conn.await;
        Instant::now()
    });
    let mut answers = Vec::new();
    for _ in 0..10 {
        let req = http::Request::builder()
            .method("GET")
            .uri(format!("http://{}/v1/journal", server.admin_addr()))
            .body(())
            .unwrap();
        let (resp, _) = send.send_request(req, true).unwrap();
        answers.push(resp);
    }
    let asked = Instant::now();
    let mut statuses = Vec::new();
    for resp in answers {
        let resp = tokio::time::timeout(Duration::from_secs(120), resp)
            .await
            .expect("every read was answered (a head, at least) within the listener's limit")
            .expect("a response head");
        statuses.push(resp.status().as_u16());
        // Kept, unread, until the connection goes.
        std::mem::forget(resp);
    }
    // What the unread answers hold, once what building them took is given back.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let held = rss_mib(pid);
    eprintln!("statuses {statuses:?}; server RSS {before} MiB before the reads, {held} MiB while their answers wait");
    let taken = statuses.iter().filter(|s| **s == 200).count();
    assert!(
        taken >= 1 && statuses.contains(&503),
        "the answers past the listener's limit are refused with 503: {statuses:?}"
    );
    assert!(
        held < before + 200,
        "ten unread answers of some 50 MB grew the server from {before} MiB to {held} MiB (bound: 200 MiB more)"
    );

    // The client never takes its answers: the connection is closed 30 s after they were ready.
    let closed_at = tokio::time::timeout(Duration::from_secs(60), closed)
        .await
        .expect("the connection holding answers its client never took was closed")
        .unwrap();
    let after = closed_at - asked;
    assert!(
        after >= Duration::from_secs(25),
        "closed after {after:?}, before the 30 s a client has to take an answer"
    );
    // With it gone, another client reads the journal as usual.
    let page = server.admin_get("/v1/journal?page_size=1").await;
    assert_eq!(
        page["calls"].as_array().map(Vec::len),
        Some(1),
        "{}",
        serde_json::to_string(&page)
            .unwrap()
            .chars()
            .take(300)
            .collect::<String>()
    );
}
