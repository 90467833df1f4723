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

/// `n` tasks that each hold one idle HTTP/2 connection to `addr` (the preface, then only pings
/// answered) and open a new one as soon as the server closes it, until `until`; each answers
/// how many connections it opened.
fn reconnecting_idle(addr: SocketAddr, n: usize, until: Instant) -> Vec<JoinHandle<usize>> {
    (0..n)
        .map(|_| {
            tokio::spawn(async move {
                let until = tokio::time::Instant::from_std(until);
                let mut opened = 0;
                while tokio::time::Instant::now() < until {
                    let Ok(tcp) = tokio::net::TcpStream::connect(addr).await else {
                        continue;
                    };
                    let Ok((send, conn)) = h2::client::handshake(tcp).await else {
                        continue;
                    };
                    opened += 1;
                    let _keep = send;
                    let _ = tokio::time::timeout_at(until, conn).await;
                }
                opened
            })
        })
        .collect()
}

/// Runs `attempt` once a second for `span`, each bounded by `bound`; the failures (attempt
/// number and what went wrong) and the slowest success.
async fn every_second<F, Fut>(
    span: Duration,
    bound: Duration,
    attempt: F,
) -> (Vec<String>, usize, Duration)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let mut failures = Vec::new();
    let mut slowest = Duration::ZERO;
    let mut attempts = 0;
    let end = Instant::now() + span;
    while Instant::now() < end {
        let next = Instant::now() + Duration::from_secs(1);
        attempts += 1;
        let t0 = Instant::now();
        match tokio::time::timeout(bound, attempt()).await {
            Ok(Ok(())) => slowest = slowest.max(t0.elapsed()),
            Ok(Err(e)) => failures.push(format!("#{attempts} at {:?}: {e}", t0.elapsed())),
            Err(_) => failures.push(format!("#{attempts}: no answer within {bound:?}")),
        }
        tokio::time::sleep_until(tokio::time::Instant::from_std(next)).await;
    }
    (failures, attempts, slowest)
}

/// A client that reopens each of 64 idle HTTP/2 connections as soon as it is closed held every
/// admin slot for as long as it kept going (the idle rule frees a slot after 10 s, and the
/// client took it back at once): the operator's requests were refused. A full listener now
/// closes the connection idle the longest to serve a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnecting_idle_connections_do_not_lock_out_the_admin_api() {
    let server = Server::start(&["--admin-token", "s3cret"]);
    let admin = server.admin_addr();
    let until = Instant::now() + Duration::from_secs(17);
    let flood = reconnecting_idle(admin, 64, until);
    tokio::time::sleep(Duration::from_millis(500)).await;

    let addr = admin.to_string();
    let (failures, attempts, slowest) =
        every_second(Duration::from_secs(15), Duration::from_secs(3), || async {
            let (status, body) = protoserve::admin::client::request(
                &addr,
                http::Method::GET,
                "/v1/status",
                Some("s3cret"),
                None,
            )
            .await?;
            match status.as_u16() {
                200 => Ok(()),
                other => Err(format!("{other}: {}", String::from_utf8_lossy(&body))),
            }
        })
        .await;
    let mut opened = 0;
    for task in flood {
        opened += task.await.unwrap();
    }
    eprintln!(
        "{attempts} GET /v1/status, slowest {slowest:?}; the flood opened {opened} connections"
    );
    assert!(
        failures.is_empty(),
        "{} of {attempts} GET /v1/status failed while 64 idle connections were reopened as soon as closed: {failures:#?}",
        failures.len()
    );
    assert!(
        opened > 64,
        "the flood's connections were never closed ({opened} opened)"
    );
}

/// The same on the public port, full at `--max-connections`, with a gRPC client that connects
/// and calls at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnecting_idle_connections_do_not_lock_out_the_public_port() {
    let server = Server::start(&["--max-connections", "8"]);
    let addr = server.addr;
    let until = Instant::now() + Duration::from_secs(17);
    let flood = reconnecting_idle(addr, 8, until);
    tokio::time::sleep(Duration::from_millis(500)).await;

    let pool = common::pool(&common::repo().join("protos"));
    let (failures, attempts, slowest) =
        every_second(Duration::from_secs(15), Duration::from_secs(3), || {
            let pool = pool.clone();
            async move {
                let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
                    .unwrap()
                    .connect()
                    .await
                    .map_err(|e| format!("connect: {e}"))?;
                let client = Client { pool, channel };
                let reply = client
                    .unary("helloworld.Greeter/SayHello", json!({"name": "x"}))
                    .await
                    .map_err(|s| format!("SayHello: {s}"))?;
                match reply["message"].as_str() {
                    Some("Hello, x!") => Ok(()),
                    _ => Err(format!("SayHello answered {reply}")),
                }
            }
        })
        .await;
    let mut opened = 0;
    for task in flood {
        opened += task.await.unwrap();
    }
    eprintln!("{attempts} SayHello, slowest {slowest:?}; the flood opened {opened} connections");
    assert!(
        failures.is_empty(),
        "{} of {attempts} SayHello failed while 8 idle connections were reopened as soon as closed (--max-connections 8): {failures:#?}",
        failures.len()
    );
    assert!(
        opened > 8,
        "the flood's connections were never closed ({opened} opened)"
    );
}

/// Handlers whose `ListFeatures` streams one message a second for 12 s.
fn slow_stream_handlers() -> [(&'static str, String); 2] {
    let features: Vec<_> = (0..12).map(|i| json!({"name": format!("f{i}")})).collect();
    [
        (
            "g.json",
            json!({"service": "helloworld.Greeter", "methods": {
                "SayHello": {"reply": {"message": "Hello, {{name}}!"}}
            }})
            .to_string(),
        ),
        (
            "r.json",
            json!({"service": "routeguide.RouteGuide", "methods": {
                "ListFeatures": {"stream": features, "delay_ms": 1000}
            }})
            .to_string(),
        ),
    ]
}

/// One gRPC call with an empty request on `conn`: its status, `code: message` (or what failed).
async fn h2_call(
    conn: &h2::client::SendRequest<bytes::Bytes>,
    addr: SocketAddr,
    path: &str,
) -> String {
    let mut conn = match conn.clone().ready().await {
        Ok(c) => c,
        Err(e) => return format!("connection not ready: {e}"),
    };
    let req = common::grpc_request(addr, path).body(()).unwrap();
    let (resp, mut send) = match conn.send_request(req, false) {
        Ok(r) => r,
        Err(e) => return format!("refused: {e}"),
    };
    if let Err(e) = send.send_data(bytes::Bytes::from_static(&[0, 0, 0, 0, 0]), true) {
        return format!("send: {e}");
    }
    common::http2::status_of(resp).await
}

/// A connection with a call in flight is never the one closed to make room, however long ago
/// it was opened: an open server stream outlives a flood of idle connections, twice as many as
/// the slots, each reopened as soon as it is closed; and the connection is not told to close
/// either (a second call on it after the stream is served).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_with_a_call_in_flight_is_never_evicted() {
    let files = slow_stream_handlers();
    let files: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let (server, _client, _dir) =
        common::serve_repo_protos_with(&files, &["--max-connections", "4"]).await;
    let addr = server.addr;
    // A raw HTTP/2 connection: a GOAWAY on it shows as the second call's refusal.
    let conn = common::h2_connect(addr).await;
    let stream = tokio::spawn({
        let conn = conn.clone();
        async move { h2_call(&conn, addr, "/routeguide.RouteGuide/ListFeatures").await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Until shortly before the stream ends: then the connection is idle, and may be closed.
    let until = Instant::now() + Duration::from_secs(9);
    let flood = reconnecting_idle(addr, 8, until);
    let streamed = tokio::time::timeout(Duration::from_secs(30), stream)
        .await
        .expect("the stream did not end")
        .unwrap();
    let mut opened = 0;
    for task in flood {
        opened += task.await.unwrap();
    }
    let again = h2_call(&conn, addr, "/helloworld.Greeter/SayHello").await;
    eprintln!("stream: {streamed}; then: {again}; the flood opened {opened} connections");
    assert!(
        opened > 8,
        "no connection was evicted ({opened} opened): the test tests nothing"
    );
    assert_eq!(
        streamed, "0: ",
        "the stream's connection was closed to make room"
    );
    assert_eq!(
        again, "0: ",
        "the stream's connection was told to close (GOAWAY)"
    );
}

/// When every connection of a full listener has a call in flight, a new one is refused at
/// once with a GOAWAY that says why; it does not wait, and the calls go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_listener_with_every_connection_busy_refuses_at_once() {
    let files = slow_stream_handlers();
    let files: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let (server, first, _dir) =
        common::serve_repo_protos_with(&files, &["--max-connections", "2"]).await;
    let second = Client::connect(server.addr, first.pool.clone()).await;
    let mut streams = Vec::new();
    for client in [&first, &second] {
        let mut s = client
            .server_stream_open("routeguide.RouteGuide/ListFeatures", json!({}))
            .await
            .unwrap();
        s.message().await.unwrap().unwrap();
        streams.push(s);
    }

    // A raw HTTP/2 client, to see the refusal itself.
    let t0 = Instant::now();
    let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut tcp, common::http2::PREFACE)
        .await
        .unwrap();
    let mut read = Vec::new();
    let got = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read_to_end(&mut tcp, &mut read),
    )
    .await;
    assert!(got.is_ok(), "the refused connection was left open");
    let mut watch = common::http2::Watch::default();
    watch.feed(&read);
    assert_eq!(
        watch.goaway,
        Some(common::http2::ENHANCE_YOUR_CALM),
        "{:?}",
        String::from_utf8_lossy(&read)
    );
    let text = String::from_utf8_lossy(&read);
    assert!(text.contains("--max-connections (2)"), "{text:?}");
    eprintln!("refused in {:?}", t0.elapsed());

    // A gRPC client is told so too, at once.
    let t0 = Instant::now();
    let third = tokio::time::timeout(Duration::from_secs(5), async {
        let channel = tonic::transport::Channel::from_shared(format!("http://{}", server.addr))
            .unwrap()
            .connect()
            .await
            .map_err(|e| e.to_string())?;
        Client {
            pool: first.pool.clone(),
            channel,
        }
        .unary("helloworld.Greeter/SayHello", json!({"name": "x"}))
        .await
        .map_err(|s| s.to_string())
    })
    .await
    .expect("a call on a full listener waited instead of being refused");
    let err = third.expect_err("a call on a full listener of busy connections was served");
    eprintln!("gRPC client refused in {:?}: {err}", t0.elapsed());

    for mut s in streams {
        s.message().await.expect("a stream was cut by the refusal");
    }
}

/// An admin connection refused because all 64 have a request in flight gets `503` with a JSON
/// body saying why; it used to be closed at once, or answered before its request arrived, and
/// an HTTP/1.1 client then saw only "operation was canceled".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_admin_connection_is_told_why() {
    use tokio::io::AsyncWriteExt;
    let server = Server::start(&[]);
    let admin = server.admin_addr();
    // 64 requests in flight: bodies announced and never sent.
    let mut busy = Vec::new();
    for _ in 0..64 {
        let mut tcp = tokio::net::TcpStream::connect(admin).await.unwrap();
        tcp.write_all(b"POST /v1/verify HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{")
            .await
            .unwrap();
        busy.push(tcp);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut outcomes = Vec::new();
    for _ in 0..10 {
        let answer = tokio::time::timeout(
            Duration::from_secs(5),
            protoserve::admin::client::request(
                &admin.to_string(),
                http::Method::GET,
                "/v1/status",
                None,
                None,
            ),
        )
        .await
        .expect("a refused connection was left waiting");
        outcomes.push(match answer {
            Ok((status, body)) => {
                format!("{}: {}", status.as_u16(), String::from_utf8_lossy(&body))
            }
            Err(e) => e,
        });
    }
    let told = outcomes
        .iter()
        .filter(|o| {
            o.starts_with("503: {\"error\":\"busy\"") && o.contains("each has a request in flight")
        })
        .count();
    eprintln!("{told} of 10 told why: {outcomes:#?}");
    assert_eq!(told, 10, "{outcomes:#?}");
    drop(busy);
}

/// The payload of the PING that h2 sends with its first GOAWAY: the second GOAWAY, naming the
/// last stream taken, waits for its ACK.
const SHUTDOWN_PING: [u8; 8] = [0x0b, 0x7b, 0xa2, 0xf0, 0x8b, 0x9b, 0xfe, 0x54];

/// What a [`Withholding`] connection has seen: the server's frames, and when it closed.
#[derive(Default)]
struct Seen {
    frames: common::http2::Watch,
    /// When the first GOAWAY arrived.
    goaway_at: Option<Instant>,
    /// When the server closed the connection (end of stream or error).
    closed_at: Option<Instant>,
}

/// A raw HTTP/2 connection that answers SETTINGS and every PING but the graceful-shutdown one,
/// so the server never gets to send its second GOAWAY.
struct Withholding {
    seen: std::sync::Arc<std::sync::Mutex<Seen>>,
    write: std::sync::Arc<tokio::sync::Mutex<tokio::net::tcp::OwnedWriteHalf>>,
}

impl Withholding {
    async fn open(addr: SocketAddr) -> Withholding {
        use common::http2::{frame, ACK, PING, PREFACE, SETTINGS};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        let (mut read, mut write) = tcp.into_split();
        let mut hello = PREFACE.to_vec();
        hello.extend(frame(SETTINGS, 0, 0, &[]));
        write.write_all(&hello).await.unwrap();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Seen::default()));
        let write = std::sync::Arc::new(tokio::sync::Mutex::new(write));
        let (seen2, write2) = (seen.clone(), write.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            let (mut settings, mut pings) = (0, 0);
            loop {
                let n = read.read(&mut buf).await.unwrap_or(0);
                let mut answer = Vec::new();
                {
                    let mut seen = seen2.lock().unwrap();
                    if n == 0 {
                        seen.closed_at = Some(Instant::now());
                        return;
                    }
                    seen.frames.feed(&buf[..n]);
                    if seen.goaway_at.is_none() && !seen.frames.goaways.is_empty() {
                        seen.goaway_at = Some(Instant::now());
                    }
                    for _ in settings..seen.frames.settings {
                        answer.extend(frame(SETTINGS, ACK, 0, &[]));
                    }
                    settings = seen.frames.settings;
                    for ping in &seen.frames.pings[pings..] {
                        if *ping != SHUTDOWN_PING {
                            answer.extend(frame(PING, ACK, 0, ping));
                        }
                    }
                    pings = seen.frames.pings.len();
                }
                if !answer.is_empty() {
                    let _ = write2.lock().await.write_all(&answer).await;
                }
            }
        });
        Withholding { seen, write }
    }

    /// Opens a call to `path` on `stream` with an empty request.
    async fn call(&self, stream: u32, path: &str) {
        use common::http2::{call_headers, frame, grpc_message, END_HEADERS, HEADERS};
        use tokio::io::AsyncWriteExt;
        let mut bytes = frame(HEADERS, END_HEADERS, stream, &call_headers(path));
        bytes.extend(grpc_message(stream, &[]));
        let _ = self.write.lock().await.write_all(&bytes).await;
    }

    /// When the first GOAWAY arrived, waiting up to `within`; `None` if it did not, or the
    /// connection closed without one.
    async fn goaway(&self, within: Duration) -> Option<Instant> {
        let end = Instant::now() + within;
        loop {
            {
                let seen = self.seen.lock().unwrap();
                if seen.goaway_at.is_some() || seen.closed_at.is_some() {
                    return seen.goaway_at;
                }
            }
            if Instant::now() >= end {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn closed_at(&self) -> Option<Instant> {
        self.seen.lock().unwrap().closed_at
    }
}

/// Established TCP connections whose local port is `port` (the server's side of them).
fn established(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let local = format!(":{port:04X}");
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.len() > 3 && fields[1].ends_with(&local) && fields[3] == "01"
        })
        .count()
}

/// An evicted connection was sent only h2's first GOAWAY, which takes no stream id; the second
/// waits for the client to ACK a PING. A client that never did kept the connection taking new
/// calls, and one that opened long calls on it kept it open for good: four such connections
/// were still open after 20 s serving 16 `Watch` streams, the server held 8 connections on
/// `--max-connections 4`, and with as many evicted connections waiting to close as there are
/// slots, every later eviction dropped its connection without GOAWAY. Calls begun after the
/// GOAWAY no longer keep a connection open: it is dropped at `CLOSE_GRACE` (5 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evicted_connection_withholding_the_ping_ack_is_closed_within_the_grace() {
    let server = Server::start(&["--max-connections", "4"]);
    let addr = server.addr;
    let mut evicted = Vec::new();
    for _ in 0..4 {
        evicted.push(Withholding::open(addr).await);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = established(addr.port());
    // Four more take the slots of the first four, which are told to go away, and each opens
    // four Watch streams after its GOAWAY.
    let mut newer = Vec::new();
    for _ in 0..4 {
        newer.push(Withholding::open(addr).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // CLOSE_GRACE (5 s) and a generous margin; short of the 10 s after which the idle rule
    // would close the newer connections too.
    closed_within_the_grace(&evicted, Duration::from_secs(5), "evicted").await;
    let still_open = established(addr.port());
    let newer_closed = newer.iter().filter(|c| c.closed_at().is_some()).count();
    eprintln!(
        "{before} connections before the evictions; {still_open} established after, \
         {newer_closed} of the 4 newer closed"
    );
    assert_eq!(
        newer_closed, 0,
        "connections that took the slots were closed"
    );
    assert_eq!(
        still_open, 4,
        "the server holds {still_open} connections on --max-connections 4"
    );

    // The slots turn over gracefully again: one more connection evicts the oldest of the four,
    // with GOAWAY (not dropped at once, as when too many evicted connections are waiting).
    let _one_more = Withholding::open(addr).await;
    let told = newer[0].goaway(Duration::from_secs(5)).await;
    assert!(
        told.is_some(),
        "the connection idle the longest was dropped without GOAWAY to make room (closed: {})",
        newer[0].closed_at().is_some()
    );
}

/// The same for a connection closed for being idle on a crowded listener: its client, never
/// ACKing the shutdown PING and opening Watch streams after the GOAWAY, kept it open for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_closed_connection_withholding_the_ping_ack_is_closed_within_the_grace() {
    let server = Server::start(&["--max-connections", "4"]);
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(Withholding::open(server.addr).await);
    }
    // All four slots taken: after 10 s without a call each is sent GOAWAY.
    closed_within_the_grace(&idle, Duration::from_secs(20), "idle-closed").await;
}

/// Waits up to `told` for each of `conns` to be sent GOAWAY, opens four Watch streams on each
/// after it, and asserts that each is then closed within CLOSE_GRACE (5 s) and a margin,
/// whatever its client (which never ACKs the shutdown PING) does.
async fn closed_within_the_grace(conns: &[Withholding], told: Duration, what: &str) {
    const WATCH: &str = "/grpc.health.v1.Health/Watch";
    let mut goaways = Vec::new();
    for conn in conns {
        let at = conn
            .goaway(told)
            .await
            .unwrap_or_else(|| panic!("an {what} connection was not sent GOAWAY"));
        goaways.push(at);
        for stream in [1, 3, 5, 7] {
            conn.call(stream, WATCH).await;
        }
    }
    let bound = Duration::from_secs(9);
    let end = *goaways.last().unwrap() + bound;
    while conns.iter().any(|c| c.closed_at().is_none()) && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let lasted: Vec<Option<Duration>> = conns
        .iter()
        .zip(&goaways)
        .map(|(c, at)| c.closed_at().map(|closed| closed.duration_since(*at)))
        .collect();
    let answered: usize = conns
        .iter()
        .map(|c| c.seen.lock().unwrap().frames.answered.len())
        .sum();
    eprintln!(
        "{what} connections closed after their GOAWAY: {lasted:?} (None: still open after \
         {bound:?}); {answered} HEADERS on their Watch streams"
    );
    let late = lasted
        .iter()
        .filter(|d| d.is_none_or(|d| d > bound))
        .count();
    assert_eq!(
        late,
        0,
        "{late} of {} {what} connections not closed within {bound:?} of their GOAWAY (CLOSE_GRACE \
         is 5 s) while their client withheld the shutdown PING's ACK and opened Watch streams: \
         {lasted:?}",
        conns.len()
    );
}
