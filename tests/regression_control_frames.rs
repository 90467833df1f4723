//! Regressions of clients that flood one connection with HTTP/2 frames that carry no call
//! (PING, SETTINGS, PRIORITY, empty DATA, WINDOW_UPDATE, RST_STREAM): each costs the server a
//! little work and often an answer (a PING or SETTINGS ACK), and h2 handles every frame it has
//! read before the connection's task yields; SETTINGS that change INITIAL_WINDOW_SIZE cost work
//! for every stream open. A flood so held a network thread and delayed calls on other
//! connections, and WINDOW_UPDATE and RST_STREAM floods went on for as long as the client liked.
//! The flooding connection is now closed with GOAWAY ENHANCE_YOUR_CALM, the quick calls of
//! another connection never wait long, and a client that pings often is never cut off. Guards
//! too, of what h2 does itself: WINDOW_UPDATE errors, rapid reset (CVE-2023-44487) and
//! CONTINUATION floods. Every test starts the real binary on a loopback port with default
//! limits; floods are bounded in time.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::http2::{
    call_headers, frame, grpc_message, rst_stream, window_update, Watch, CANCEL, CONTINUATION,
    END_HEADERS, ENHANCE_YOUR_CALM, FLOW_CONTROL_ERROR, HEADERS, PREFACE, PROTOCOL_ERROR,
};
use common::{slowest_call_during, Server};

const SAY_HELLO: &str = "/helloworld.Greeter/SayHello";

/// The frames one flood repeats.
#[derive(Debug, Clone, Copy)]
enum Flood {
    Ping,
    Settings,
    Priority,
    /// Empty DATA frames on an open call, which do not end it.
    EmptyData,
    /// SETTINGS that change INITIAL_WINDOW_SIZE, on a connection with 200 calls open: each
    /// changes the window of every open stream.
    WindowSettings,
    /// WINDOW_UPDATE frames adding 1 to the connection's window, with no data pending.
    WindowUpdates,
    /// WINDOW_UPDATE frames for a stream whose call has ended.
    ClosedStreamUpdates,
    /// RST_STREAM frames for a stream whose call has ended and one never opened (below it).
    ClosedStreamResets,
    /// Streams opened and given WINDOW_UPDATE past 2^31-1 (which the server resets each).
    StreamWindowOverflows,
    /// Calls to `path` with request `message`, each reset (RST_STREAM CANCEL) right after it
    /// was sent, in the same write: the rapid reset of CVE-2023-44487.
    RapidReset {
        path: &'static str,
        message: &'static [u8],
    },
    /// PING acknowledgements of PINGs the server never sent.
    UnaskedPingAcks,
    /// Empty frames of a type HTTP/2 does not define (0x42), which h2 skips.
    UnknownFrames,
    /// HEADERS without END_HEADERS, then CONTINUATION frames full of headers without end.
    Continuation,
    /// The same with empty CONTINUATION frames.
    EmptyContinuation,
}

/// HEADERS opening a call of SayHello on `stream`, its request still to come.
fn open_call(stream: u32) -> Vec<u8> {
    frame(HEADERS, END_HEADERS, stream, &call_headers(SAY_HELLO))
}

/// Frames of a flood that opens streams: how many streams one chunk opens.
const STREAMS_PER_CHUNK: u32 = 100;

impl Flood {
    /// About 64 KiB of the flood's frames (the `round`th chunk, for floods that open streams).
    fn bytes(self, round: u32) -> Vec<u8> {
        let streams = (0..STREAMS_PER_CHUNK).map(|i| 1 + 2 * (round * STREAMS_PER_CHUNK + i));
        let one = match self {
            Flood::Ping => frame(0x6, 0, 0, &[7; 8]),
            Flood::UnaskedPingAcks => frame(0x6, 0x1, 0, &[7; 8]),
            Flood::UnknownFrames => frame(0x42, 0, 0, &[]),
            // SETTINGS_ENABLE_PUSH = 0: valid from a client, changes nothing.
            Flood::Settings => frame(0x4, 0, 0, &[0, 2, 0, 0, 0, 0]),
            // Stream 3 (never opened) depends on stream 0, weight 16.
            Flood::Priority => frame(0x2, 0, 3, &[0, 0, 0, 0, 15]),
            Flood::EmptyData => frame(0x0, 0, 3, &[]),
            Flood::WindowSettings => {
                let mut two = frame(0x4, 0, 0, &[0, 4, 0, 1, 0, 0]);
                two.extend(frame(0x4, 0, 0, &[0, 4, 0, 0, 0xff, 0xff]));
                two
            }
            Flood::WindowUpdates => window_update(0, 1),
            Flood::ClosedStreamUpdates => window_update(3, 1),
            Flood::ClosedStreamResets => [rst_stream(1, CANCEL), rst_stream(3, CANCEL)].concat(),
            Flood::StreamWindowOverflows => {
                return streams
                    .flat_map(|s| [open_call(s), window_update(s, 0x7fff_ffff)].concat())
                    .collect()
            }
            Flood::RapidReset { path, message } => {
                return streams
                    .flat_map(|s| {
                        let mut call = frame(HEADERS, END_HEADERS, s, &call_headers(path));
                        call.extend(grpc_message(s, message));
                        call.extend(rst_stream(s, CANCEL));
                        call
                    })
                    .collect()
            }
            Flood::Continuation => {
                // Literal headers `x-a: aaa…` (100 bytes), never indexed, 150 to a frame.
                let mut field = vec![0x00, 3];
                field.extend_from_slice(b"x-a");
                field.push(100);
                field.extend_from_slice(&[b'a'; 100]);
                frame(CONTINUATION, 0, 1, &field.repeat(150))
            }
            Flood::EmptyContinuation => frame(CONTINUATION, 0, 1, &[]),
        };
        one.repeat(64 * 1024 / one.len())
    }

    /// What the client sends before the flood.
    fn start(self) -> Vec<u8> {
        let mut start = PREFACE.to_vec();
        start.extend(frame(0x4, 0, 0, &[]));
        match self {
            Flood::EmptyData => start.extend(open_call(3)),
            Flood::WindowSettings => {
                for i in 0..200 {
                    start.extend(open_call(3 + 2 * i));
                }
            }
            Flood::ClosedStreamUpdates | Flood::ClosedStreamResets => {
                start.extend(open_call(3));
                start.extend(grpc_message(3, b""));
            }
            Flood::Continuation | Flood::EmptyContinuation => {
                start.extend(frame(HEADERS, 0, 1, &call_headers(SAY_HELLO)));
            }
            _ => {}
        }
        start
    }
}

/// What one flooding connection achieved (the byte counts are for failure messages).
#[derive(Debug)]
#[allow(dead_code)]
struct Flooded {
    /// Bytes of frames written.
    sent: u64,
    /// Bytes the server wrote back (when read).
    received: u64,
    /// Whether the server closed the connection (a write or read failed, or EOF).
    closed: bool,
    /// How long after the flood began it was closed.
    closed_after: Option<Duration>,
    /// The error code of the server's GOAWAY (when read).
    goaway: Option<u32>,
    /// The RST_STREAM frames the server sent (when read): stream and error code.
    resets: Vec<(u32, u32)>,
}

/// Floods a connection to `addr` with `kind` for `span`, reading what the server writes back if
/// `read`. A connection never read stalls once the socket buffers fill: writes time out, and
/// the flood goes on trying.
fn flood(addr: SocketAddr, kind: Flood, read: bool, span: Duration) -> Flooded {
    let mut tcp = TcpStream::connect(addr).unwrap();
    tcp.set_nodelay(true).unwrap();
    tcp.set_write_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    tcp.write_all(&kind.start()).unwrap();
    if matches!(kind, Flood::ClosedStreamUpdates | Flood::ClosedStreamResets) {
        // The call on stream 3 ends.
        std::thread::sleep(Duration::from_millis(100));
    }
    let received = Arc::new(AtomicU64::new(0));
    let eof = Arc::new(AtomicBool::new(false));
    let reader = read.then(|| {
        let mut r = tcp.try_clone().unwrap();
        let (received, eof) = (received.clone(), eof.clone());
        std::thread::spawn(move || {
            let mut buf = vec![0; 64 * 1024];
            let mut watch = Watch::default();
            loop {
                match r.read(&mut buf) {
                    Ok(0) | Err(_) => break eof.store(true, Ordering::Relaxed),
                    Ok(n) => {
                        received.fetch_add(n as u64, Ordering::Relaxed);
                        watch.feed(&buf[..n]);
                    }
                };
            }
            watch
        })
    });
    let began = Instant::now();
    let until = began + span;
    let mut round = 0;
    let mut chunk = kind.bytes(round);
    let (mut sent, mut closed, mut at) = (0u64, false, 0);
    while Instant::now() < until && !eof.load(Ordering::Relaxed) {
        // Partial writes go on where they stopped, so frames stay whole.
        match tcp.write(&chunk[at..]) {
            Ok(n) => {
                sent += n as u64;
                at += n;
                if at == chunk.len() {
                    at = 0;
                    if matches!(
                        kind,
                        Flood::StreamWindowOverflows | Flood::RapidReset { .. }
                    ) {
                        round += 1;
                        chunk = kind.bytes(round);
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => {
                closed = true;
                break;
            }
        }
    }
    closed = closed || eof.load(Ordering::Relaxed);
    let closed_after = closed.then(|| began.elapsed());
    let _ = tcp.shutdown(std::net::Shutdown::Both);
    let watch = reader.map(|r| r.join().unwrap()).unwrap_or_default();
    Flooded {
        sent,
        received: received.load(Ordering::Relaxed),
        closed,
        closed_after,
        goaway: watch.goaway,
        resets: watch.resets,
    }
}

/// Floods for `span` while a quick call (SayHello, or `kitchen.Kitchen/Nothing` on a server of
/// the fixtures) runs on another connection every 2 ms: what the flood achieved, the slowest
/// quick call, and the server's peak RSS growth in KiB.
async fn flood_during_calls(
    server: &Server,
    kind: Flood,
    read: bool,
    span: Duration,
) -> (Flooded, Duration, u64) {
    let addr = server.addr;
    flood_during(server, kind, move || flood(addr, kind, read, span)).await
}

/// Runs `work` (a flood of `kind`) while a quick call runs on another connection every 2 ms:
/// what it returned, the slowest quick call, and the server's peak RSS growth in KiB.
async fn flood_during<T: Send + 'static>(
    server: &Server,
    kind: Flood,
    work: impl FnOnce() -> T + Send + 'static,
) -> (T, Duration, u64) {
    let probe = match kind {
        Flood::RapidReset { .. } => "/kitchen.Kitchen/Nothing",
        _ => SAY_HELLO,
    };
    let addr = server.addr;
    let pid = server.pid();
    let before = common::proc_status_kib(pid, "VmRSS");
    let peak = Arc::new(AtomicU64::new(before));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = std::thread::spawn({
        let (peak, done) = (peak.clone(), done.clone());
        move || {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(common::proc_status_kib(pid, "VmRSS"), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    });
    let work = tokio::task::spawn_blocking(work);
    let (flooded, slowest) =
        slowest_call_during(addr, probe, Bytes::new(), async { work.await.unwrap() }).await;
    done.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let grown = peak.load(Ordering::Relaxed).saturating_sub(before);
    (flooded, slowest, grown)
}

/// A client may drop the server's connections to the point where one network thread serves
/// them all; the quick calls then share the flooder's thread, as they would with any number of
/// threads when each is held by a flooder.
fn one_thread_server() -> Server {
    Server::start_with_env(&[], &[("TOKIO_WORKER_THREADS", "1")])
}

/// Slowest a quick call on another connection may be while one connection floods: calls take
/// a few milliseconds on a loaded machine in a debug build; before floods were closed, a
/// connection with 200 calls open sending SETTINGS that change their windows held the only
/// network thread for 500 to 750 ms at a time.
const SLOWEST_QUICK_CALL: Duration = Duration::from_millis(250);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_changing_windows_of_open_calls_keep_no_other_call_waiting() {
    let server = one_thread_server();
    let (flooded, slowest, grown) =
        flood_during_calls(&server, Flood::WindowSettings, true, Duration::from_secs(3)).await;
    assert!(
        slowest < SLOWEST_QUICK_CALL,
        "a quick call waited {slowest:?} while another connection sent SETTINGS ({flooded:?})"
    );
    assert!(
        flooded.closed,
        "the flooding connection is closed: {flooded:?}"
    );
    assert_eq!(flooded.goaway, Some(ENHANCE_YOUR_CALM), "{flooded:?}");
    assert!(grown < 16 * 1024, "the server grew by {grown} KiB");
    let line = server.wait_for_log("closed (GOAWAY ENHANCE_YOUR_CALM)");
    assert!(line.contains("SETTINGS"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_settings_priority_and_empty_data_floods_are_closed() {
    let server = one_thread_server();
    for kind in [
        Flood::Ping,
        Flood::Settings,
        Flood::Priority,
        Flood::EmptyData,
    ] {
        let (flooded, slowest, grown) =
            flood_during_calls(&server, kind, true, Duration::from_secs(2)).await;
        assert!(
            slowest < SLOWEST_QUICK_CALL,
            "a quick call waited {slowest:?} during a {kind:?} flood ({flooded:?})"
        );
        assert!(flooded.closed, "a {kind:?} flood is closed: {flooded:?}");
        assert_eq!(
            flooded.goaway,
            Some(ENHANCE_YOUR_CALM),
            "{kind:?}: {flooded:?}"
        );
        assert!(
            grown < 16 * 1024,
            "{kind:?}: the server grew by {grown} KiB"
        );
    }
    // A flooder that reads nothing is closed too (its PINGs are counted as they arrive).
    let (flooded, _, _) =
        flood_during_calls(&server, Flood::Ping, false, Duration::from_secs(2)).await;
    assert!(
        flooded.closed,
        "an unread PING flood is closed: {flooded:?}"
    );
    // The log says why, once a second at most.
    let warned = server
        .log()
        .iter()
        .filter(|l| l.contains("WARN") && l.contains("ENHANCE_YOUR_CALM"))
        .count();
    assert!((1..=5).contains(&warned), "{:?}", server.log());
}

/// A client that pings every 10 ms (100 a second, ten times the most eager keepalive) and opens
/// and ends calls on the same connection is never cut off, in a span of several of the
/// budget's one-second windows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_pinging_every_10ms_is_never_cut_off() {
    let server = Server::repo_default();
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let (mut send, mut conn) = h2::client::handshake(tcp).await.unwrap();
    let mut pings = conn.ping_pong().expect("ping_pong");
    let driver = tokio::spawn(conn);
    let until = Instant::now() + Duration::from_secs(3);
    let mut rounds = 0;
    while Instant::now() < until {
        pings
            .ping(h2::Ping::opaque())
            .await
            .expect("the ping is answered");
        if rounds % 10 == 0 {
            send = send.ready().await.expect("the connection is open");
            let request = common::grpc_request(server.addr, SAY_HELLO)
                .body(())
                .unwrap();
            let (response, mut body) = send.send_request(request, false).unwrap();
            body.send_data(Bytes::from_static(&[0, 0, 0, 0, 0]), true)
                .unwrap();
            let response = response.await.expect("the call is answered");
            assert_eq!(response.status(), 200);
            let mut body = response.into_body();
            while let Some(chunk) = body.data().await {
                chunk.unwrap();
            }
            let trailers = body.trailers().await.unwrap().expect("trailers");
            assert_eq!(trailers["grpc-status"], "0", "{trailers:?}");
        }
        rounds += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(rounds > 100, "{rounds} pings");
    assert!(!driver.is_finished(), "the connection is still open");
    assert!(
        !server.log().iter().any(|l| l.contains("ENHANCE_YOUR_CALM")),
        "{:?}",
        server.log()
    );
}

/// A stock client (tonic, on hyper) with a keepalive ping every 100 ms and adaptive flow-control
/// windows, which ping to measure bandwidth while replies arrive, downloading large replies on
/// one connection: never cut off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keepalive_client_with_adaptive_windows_is_never_cut_off() {
    let f = common::fixtures();
    let server = Server::start(&[
        "--protos",
        f.join("protos").to_str().unwrap(),
        "--handlers",
        f.join("hostile/handlers").to_str().unwrap(),
    ]);
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .http2_keep_alive_interval(Duration::from_millis(100))
        .keep_alive_while_idle(true)
        .http2_adaptive_window(true)
        .connect()
        .await
        .expect("connect");
    let client = common::Client {
        pool: common::pool(&f.join("protos")),
        channel,
    };
    let until = Instant::now() + Duration::from_secs(3);
    let mut replies = 0;
    while Instant::now() < until {
        let out = client
            .unary(
                "kitchen.Kitchen/Get",
                serde_json::json!({"limit": 2_000_000}),
            )
            .await
            .expect("the large reply arrives");
        // 2 MB of bytes, in base64.
        assert_eq!(out["blob"].as_str().map(str::len), Some(2_666_668));
        replies += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(replies >= 3, "{replies} replies");
    assert!(
        !server.log().iter().any(|l| l.contains("ENHANCE_YOUR_CALM")),
        "{:?}",
        server.log()
    );
}

/// Most bytes a flood may have written before its connection was closed: the budget closes it
/// within its first thousand idle frames (13 KiB of WINDOW_UPDATE or RST_STREAM), h2 within
/// 20 rapid resets or a few CONTINUATION frames; the rest is what the socket buffers took
/// meanwhile. A flood left open writes hundreds of MiB in its two seconds.
const MOST_BYTES_BEFORE_CLOSED: u64 = 16 * 1024 * 1024;

/// Floods with `kind` for `span`, opening a new connection each time the server closes one (a
/// persistent flooder, so quick calls run during the whole span), during quick calls on another
/// connection: what each connection achieved, the slowest quick call, and the server's peak RSS
/// growth in KiB.
async fn floods_during_calls(
    server: &Server,
    kind: Flood,
    span: Duration,
) -> (Vec<Flooded>, Duration, u64) {
    let addr = server.addr;
    let (flooded, slowest, grown) = flood_during(server, kind, move || {
        let until = Instant::now() + span;
        let mut all = Vec::new();
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            let one = flood(addr, kind, true, left);
            if !one.closed {
                // Open until the span ended: kept if it had a second to be closed in.
                if left >= Duration::from_secs(1) {
                    all.push(one);
                }
                break;
            }
            all.push(one);
        }
        all
    })
    .await;
    (flooded, slowest, grown)
}

/// Floods with `kind` for two seconds during quick calls on another connection, and checks the
/// flood's cost: the quick calls never wait long, the server's memory stays put, and each
/// flooding connection is closed, soon, with GOAWAY `goaway`. The first connection's outcome.
async fn assert_flood_closed(server: &Server, kind: Flood, goaway: &[u32]) -> Flooded {
    let (all, slowest, grown) = floods_during_calls(server, kind, Duration::from_secs(2)).await;
    let first = &all[0];
    let latest = all.iter().filter_map(|f| f.closed_after).max();
    let most_sent = all.iter().map(|f| f.sent).max().unwrap();
    eprintln!(
        "{kind:?}: {} connections, the first closed after {:?} and {} bytes sent ({} RST_STREAM \
         received), the latest after {latest:?}, most bytes sent {most_sent}; slowest quick call \
         {slowest:?}, server grew {grown} KiB",
        all.len(),
        first.closed_after,
        first.sent,
        first.resets.len(),
    );
    assert!(
        slowest < SLOWEST_QUICK_CALL,
        "a quick call waited {slowest:?} during a {kind:?} flood ({first:?})"
    );
    for flooded in &all {
        assert!(
            flooded.closed && flooded.goaway.is_some_and(|g| goaway.contains(&g)),
            "a {kind:?} flood is closed with GOAWAY {goaway:?}: {flooded:?}"
        );
        assert!(
            flooded.sent < MOST_BYTES_BEFORE_CLOSED
                && flooded.closed_after < Some(Duration::from_secs(1)),
            "a {kind:?} flood is closed within its first frames: {flooded:?}"
        );
    }
    assert!(
        grown < 16 * 1024,
        "{kind:?}: the server grew by {grown} KiB"
    );
    all.into_iter().next().unwrap()
}

/// PING acknowledgements the server never asked for, and frames of an unknown type, were not
/// counted: a connection sending them was never closed (122 million unknown frames in 5 s from
/// two connections), and h2 logged a warning for each acknowledgement, unthrottled (1.7 million
/// lines, 214 MB, in 3 s from one connection; with the log read slowly through a pipe, the
/// network threads waited on it and every call with them). Both count as idle frames now, and
/// h2's own warnings are left out of the default log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unasked_ping_acks_and_unknown_frames_are_closed_and_not_logged_each() {
    let server = one_thread_server();
    for kind in [Flood::UnaskedPingAcks, Flood::UnknownFrames] {
        assert_flood_closed(&server, kind, &[ENHANCE_YOUR_CALM]).await;
    }
    let log = server.log();
    let acks = log.iter().filter(|l| l.contains("PING ack")).count();
    assert_eq!(
        acks,
        0,
        "h2's warnings are logged: {:?}",
        &log[..log.len().min(5)]
    );
    assert!(
        log.len() < 100,
        "{} log lines for two floods: {:?}",
        log.len(),
        &log[..5]
    );
}

/// WINDOW_UPDATE frames with no data waiting for them (to the connection's window, or to a
/// stream whose call has ended, which h2 ignores) were taken without end: the connection stayed
/// open for as long as the client sent them. They count as idle frames now, unless the server
/// sent DATA they answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn window_update_floods_are_closed() {
    let server = one_thread_server();
    for kind in [Flood::WindowUpdates, Flood::ClosedStreamUpdates] {
        assert_flood_closed(&server, kind, &[ENHANCE_YOUR_CALM]).await;
    }
    let line = server.wait_for_log("closed (GOAWAY ENHANCE_YOUR_CALM)");
    assert!(line.contains("WINDOW_UPDATE"), "{line}");
}

/// RST_STREAM frames for a stream whose call has ended, or for one never opened below the last
/// opened (closed by then): h2 ignores them, and took them without end. Beyond one per stream
/// opened, they count as idle frames now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_floods_of_closed_streams_are_closed() {
    let server = one_thread_server();
    let flooded =
        assert_flood_closed(&server, Flood::ClosedStreamResets, &[ENHANCE_YOUR_CALM]).await;
    assert!(flooded.resets.is_empty(), "{flooded:?}");
    let line = server.wait_for_log("closed (GOAWAY ENHANCE_YOUR_CALM)");
    assert!(line.contains("RST_STREAM"), "{line}");
    // A reset of a stream never opened (above the last opened) is a connection error.
    let mut bytes = Flood::Ping.start();
    bytes.extend(rst_stream(101, CANCEL));
    let (watch, closed) = exchange(server.addr, &bytes);
    assert!(closed && watch.goaway == Some(PROTOCOL_ERROR), "{watch:?}");
}

/// Writes `bytes` on a new connection and reads what the server answers, until it closes the
/// connection or half a second passes without a frame: what it sent, and whether it closed.
fn exchange(addr: SocketAddr, bytes: &[u8]) -> (Watch, bool) {
    let mut tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    tcp.write_all(bytes).unwrap();
    let mut watch = Watch::default();
    let mut buf = vec![0; 64 * 1024];
    let closed = loop {
        match tcp.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => watch.feed(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
            Err(_) => break false,
        }
    };
    (watch, closed)
}

/// WINDOW_UPDATE errors of RFC 9113 (section 6.9), which h2 answers: an increment of 0 is a
/// PROTOCOL_ERROR (h2 closes the connection even for a stream's, which the RFC allows), a
/// window taken past 2^31-1 a FLOW_CONTROL_ERROR (the connection's closes the connection, a
/// stream's resets the stream); a flood of streams so given window ends after 1024 streams reset
/// or refused (over the 256 open), with GOAWAY ENHANCE_YOUR_CALM
/// (`max_local_error_reset_streams`). A guard: h2 did all this already.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn window_update_errors_follow_rfc_9113() {
    let server = one_thread_server();
    let start = Flood::Ping.start();
    let with = |frames: &[Vec<u8>]| [start.clone(), frames.concat()].concat();

    let (watch, closed) = exchange(server.addr, &with(&[window_update(0, 0)]));
    assert!(closed && watch.goaway == Some(PROTOCOL_ERROR), "{watch:?}");
    let (watch, closed) = exchange(server.addr, &with(&[open_call(1), window_update(1, 0)]));
    assert!(closed && watch.goaway == Some(PROTOCOL_ERROR), "{watch:?}");
    let (watch, closed) = exchange(server.addr, &with(&[window_update(0, 0x7fff_ffff)]));
    assert!(
        closed && watch.goaway == Some(FLOW_CONTROL_ERROR),
        "{watch:?}"
    );
    let (watch, closed) = exchange(
        server.addr,
        &with(&[open_call(1), window_update(1, 0x7fff_ffff)]),
    );
    assert!(
        !closed && watch.goaway.is_none() && watch.resets == [(1, FLOW_CONTROL_ERROR)],
        "{watch:?}"
    );

    let flooded =
        assert_flood_closed(&server, Flood::StreamWindowOverflows, &[ENHANCE_YOUR_CALM]).await;
    // Streams reset for their window, or refused over the 256 open: 1024 at most.
    assert!(flooded.resets.len() <= 1024, "{flooded:?}");
}

/// HEADERS without END_HEADERS, then CONTINUATION frames without end (the CVE-2024-27316
/// class): h2 closes the connection after a few frames past the header list limit (GOAWAY
/// ENHANCE_YOUR_CALM, or COMPRESSION_ERROR when the headers outgrow the limit first), and holds
/// at most the limit meanwhile. A guard: h2 did this already.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuation_floods_are_closed_by_http2() {
    let server = one_thread_server();
    for kind in [Flood::Continuation, Flood::EmptyContinuation] {
        let flooded = assert_flood_closed(&server, kind, &[ENHANCE_YOUR_CALM, 0x9]).await;
        // Each frame is 15.4 KiB (or 9 bytes): closed within its first few dozen.
        assert!(flooded.received < 64 * 1024, "{kind:?}: {flooded:?}");
    }
}

/// CPU time (user and system) the process `pid` used so far.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("proc stat");
    // Fields after the command (in parentheses): state is the 3rd field, utime the 14th.
    let rest: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    let ticks: u64 = rest[11].parse::<u64>().unwrap() + rest[12].parse::<u64>().unwrap();
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_millis(ticks * 1000 / per_second)
}

/// Calls to `path` with request `message`, each reset once the server had time to start it
/// (1 ms after its request), on one connection for `span`: rapid resets that h2 does not count
/// (it counts streams reset before the server took them). How many calls were reset, and the
/// server's answer to the connection.
fn paced_resets(addr: SocketAddr, path: &str, message: &[u8], span: Duration) -> (u32, Watch) {
    let mut tcp = TcpStream::connect(addr).unwrap();
    tcp.set_nodelay(true).unwrap();
    let mut r = tcp.try_clone().unwrap();
    let reader = std::thread::spawn(move || {
        let mut buf = vec![0; 64 * 1024];
        let mut watch = Watch::default();
        while let Ok(n @ 1..) = r.read(&mut buf) {
            watch.feed(&buf[..n]);
        }
        watch
    });
    tcp.write_all(&Flood::Ping.start()).unwrap();
    let until = Instant::now() + span;
    let mut calls = 0;
    while Instant::now() < until {
        let stream = 1 + 2 * calls;
        let mut call = frame(HEADERS, END_HEADERS, stream, &call_headers(path));
        call.extend(grpc_message(stream, message));
        if tcp.write_all(&call).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
        if tcp.write_all(&rst_stream(stream, CANCEL)).is_err() {
            break;
        }
        calls += 1;
    }
    let _ = tcp.shutdown(std::net::Shutdown::Both);
    (calls, reader.join().unwrap())
}

/// Calls of slow methods (a script looping until its time budget, 1 s of CPU; a reply with a
/// 5 s `delay_ms`) reset by the client at full speed, HEADERS, request and RST_STREAM in one
/// write (the rapid reset of CVE-2023-44487): h2 closes the connection after 20 streams reset
/// before the server took them (GOAWAY ENHANCE_YOUR_CALM). Reset 1 ms after their request
/// instead, once their handlers started, they are not counted, but each reset stops its
/// handler (a script call is told at once and stops at its next hook): the server's CPU
/// falls idle as soon as the resets stop, and the script states answer at once. Throughout,
/// quick calls on another connection never wait long. A guard: h2 and the handlers' cancelling
/// did this already.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_calls_pile_up_no_work() {
    let f = common::fixtures();
    let handlers = tempfile::tempdir().unwrap();
    for file in ["lab.json", "lab.lua", "util.lua"] {
        std::fs::copy(
            f.join("lab_handlers").join(file),
            handlers.path().join(file),
        )
        .unwrap();
    }
    std::fs::write(
        handlers.path().join("kitchen.json"),
        r#"{"service": "kitchen.Kitchen", "methods": {
            "Get": {"reply": {"id": "late"}, "delay_ms": 5000},
            "Nothing": {"reply": {}}}}"#,
    )
    .unwrap();
    let server = Server::start_with_env(
        &[
            "--protos",
            f.join("protos").to_str().unwrap(),
            "--handlers",
            handlers.path().to_str().unwrap(),
            "--data",
            f.join("data").to_str().unwrap(),
        ],
        &[("TOKIO_WORKER_THREADS", "1")],
    );
    let pid = server.pid();
    // lab.Query { id: "loop" }: `while true do end`.
    const LOOP: &[u8] = b"\x0a\x04loop";
    for (path, message) in [("/lab.Lab/Fail", LOOP), ("/kitchen.Kitchen/Get", &[][..])] {
        assert_flood_closed(
            &server,
            Flood::RapidReset { path, message },
            &[ENHANCE_YOUR_CALM],
        )
        .await;
        let paced = async {
            let addr = server.addr;
            tokio::task::spawn_blocking(move || {
                paced_resets(addr, path, message, Duration::from_secs(2))
            })
            .await
            .unwrap()
        };
        let ((calls, watch), slowest) =
            slowest_call_during(server.addr, "/kitchen.Kitchen/Nothing", Bytes::new(), paced).await;
        assert!(calls > 200, "{calls} calls reset");
        assert!(
            slowest < SLOWEST_QUICK_CALL,
            "a quick call waited {slowest:?} during {calls} paced resets of {path}"
        );
        // The reset calls' handlers stopped: the server falls idle.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let before = cpu_time(pid);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let used = cpu_time(pid) - before;
        eprintln!(
            "{calls} paced resets of {path}: slowest quick call {slowest:?}, CPU in the second \
             after {used:?}"
        );
        assert!(
            used < Duration::from_millis(250),
            "after {calls} calls of {path} were reset, the server went on to use {used:?} of CPU \
             in a second ({watch:?})"
        );
        let client = common::Client::connect(server.addr, common::pool(&f.join("protos"))).await;
        let t = Instant::now();
        let out = client
            .unary("lab.Lab/Roundtrip", serde_json::json!({"id": "after"}))
            .await
            .expect("a script call answers");
        assert_eq!(out["id"], "after");
        assert!(
            t.elapsed() < Duration::from_millis(250),
            "a script call took {:?} after {calls} paced resets of {path}",
            t.elapsed()
        );
    }
}
