//! Regressions of idle HTTP/2 connections holding a listener's connection slots: a client that
//! opens as many connections as the listener serves, sends the preface and answers pings but
//! never asks anything, must not lock everyone else out. Real binary on loopback, real HTTP/2
//! client (the `h2` crate, which answers pings and settings).

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{Client, Server};
use serde_json::json;
use tokio::task::JoinHandle;

/// `n` HTTP/2 connections that complete the handshake and then only keep the connection alive;
/// each task ends when the server closes its connection.
async fn idle_connections(addr: SocketAddr, n: usize) -> Vec<JoinHandle<()>> {
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (send, conn) = h2::client::handshake(tcp).await.unwrap();
        tasks.push(tokio::spawn(async move {
            let _keep = send;
            let _ = conn.await;
        }));
    }
    tasks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_http2_connections_do_not_lock_out_the_admin_api() {
    let server = Server::start(&["--admin-token", "s3cret"]);
    let admin = server.admin_addr();
    // The admin listener serves 64 connections at once.
    let idle = idle_connections(admin, 64).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        idle.iter().all(|t| !t.is_finished()),
        "the idle connections must be open to start with"
    );

    // Past the 10 s idle limit: they are closed (GOAWAY), so a real request gets a slot.
    tokio::time::sleep(Duration::from_secs(11)).await;
    let t0 = Instant::now();
    let call = server.admin_call("GET", "/v1/status", Some("s3cret"), None);
    let (status, body) = tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .expect("GET /v1/status got no answer with 64 idle HTTP/2 connections open");
    assert_eq!(status, 200, "{body:#}");
    eprintln!("answered in {:?} after 11 s", t0.elapsed());
    let deadline = Instant::now() + Duration::from_secs(10);
    while idle.iter().any(|t| !t.is_finished()) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let open = idle.iter().filter(|t| !t.is_finished()).count();
    assert_eq!(open, 0, "{open} idle connection(s) still open");
}

/// The public port leaves idle gRPC channels alone while it has room, and closes connections
/// idle for 10 s once 3/4 of `--max-connections` are open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_http2_connections_do_not_lock_out_the_public_port() {
    let server = Server::start(&["--max-connections", "8"]);
    // 5 of 8: below 3/4 (6), so idle connections stay, as a gRPC channel expects.
    let roomy = idle_connections(server.addr, 5).await;
    tokio::time::sleep(Duration::from_secs(12)).await;
    let closed = roomy.iter().filter(|t| t.is_finished()).count();
    assert_eq!(
        closed, 0,
        "{closed} idle connection(s) closed while the listener had room"
    );

    // 3 more fill the listener: all 8 idle ones are closed after 10 s.
    let full = idle_connections(server.addr, 3).await;
    tokio::time::sleep(Duration::from_secs(11)).await;
    let t0 = Instant::now();
    let client = Client::connect(server.addr, common::pool(&common::repo().join("protos")));
    let reply = tokio::time::timeout(Duration::from_secs(10), async {
        client
            .await
            .unary("helloworld.Greeter/SayHello", json!({"name": "x"}))
            .await
    })
    .await
    .expect("SayHello got no answer with --max-connections idle HTTP/2 connections open");
    reply.unwrap();
    eprintln!("answered in {:?}", t0.elapsed());
    // Closing stops once the listener has room again, the connections idle the longest going
    // first: at least 3 of those 5 (how many more depends on when each one's timer fires
    // against the count falling below 6).
    let open = roomy
        .iter()
        .chain(&full)
        .filter(|t| !t.is_finished())
        .count();
    assert!(
        open < 6,
        "{open} idle connection(s) still open: the listener is still crowded"
    );
    let closed = roomy.iter().filter(|t| t.is_finished()).count();
    assert!(
        closed >= 3,
        "the connections idle the longest were not closed ({closed} of 5)"
    );
}
