//! Regressions of clients that flood one connection with HTTP/2 frames that carry no call
//! (PING, SETTINGS, PRIORITY, empty DATA): each costs the server a little work and often an
//! answer (a PING or SETTINGS ACK), and h2 handles every frame it has read before the
//! connection's task yields; SETTINGS that change INITIAL_WINDOW_SIZE cost work for every stream
//! open. A flood so held a network thread and delayed calls on other connections. The flooding
//! connection is now closed with GOAWAY ENHANCE_YOUR_CALM, the quick calls of another connection
//! never wait long, and a client that pings often is never cut off. Every test starts the real
//! binary on a loopback port with default limits; floods are bounded in time.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::http2::{frame, PREFACE};
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
}

/// HEADERS opening a call of SayHello on `stream`, its request still to come.
fn open_call(stream: u32) -> Vec<u8> {
    let mut block = vec![0x83, 0x86, 0x04, SAY_HELLO.len() as u8];
    block.extend_from_slice(SAY_HELLO.as_bytes());
    block.extend_from_slice(&[0x01, 1, b'x', 0x0f, 0x10, 16]);
    block.extend_from_slice(b"application/grpc");
    block.extend_from_slice(&[0x00, 2, b't', b'e', 8]);
    block.extend_from_slice(b"trailers");
    frame(0x1, 0x4, stream, &block)
}

impl Flood {
    /// About 64 KiB of the flood's frames.
    fn bytes(self) -> Vec<u8> {
        let one = match self {
            Flood::Ping => frame(0x6, 0, 0, &[7; 8]),
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
        };
        one.repeat(64 * 1024 / one.len())
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
    /// The error code of the server's GOAWAY (when read).
    goaway: Option<u32>,
}

/// Follows the frames the server writes: the error code of its GOAWAY, once one arrives.
#[derive(Default)]
struct GoawayWatch {
    pending: Vec<u8>,
    code: Option<u32>,
}

impl GoawayWatch {
    fn feed(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
        let mut at = 0;
        while self.pending.len() - at >= 9 {
            let h = &self.pending[at..];
            let len = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
            if h.len() < 9 + len {
                break;
            }
            if h[3] == 0x7 && len >= 8 {
                self.code = Some(u32::from_be_bytes([h[13], h[14], h[15], h[16]]));
            }
            at += 9 + len;
        }
        self.pending.drain(..at);
    }
}

/// Floods a connection to `addr` with `kind` for `span`, reading what the server writes back if
/// `read`. A connection never read stalls once the socket buffers fill: writes time out, and
/// the flood goes on trying.
fn flood(addr: SocketAddr, kind: Flood, read: bool, span: Duration) -> Flooded {
    let mut tcp = TcpStream::connect(addr).unwrap();
    tcp.set_nodelay(true).unwrap();
    tcp.set_write_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut start = PREFACE.to_vec();
    start.extend(frame(0x4, 0, 0, &[]));
    if matches!(kind, Flood::EmptyData) {
        start.extend(open_call(3));
    }
    if matches!(kind, Flood::WindowSettings) {
        for i in 0..200 {
            start.extend(open_call(3 + 2 * i));
        }
    }
    tcp.write_all(&start).unwrap();
    let received = Arc::new(AtomicU64::new(0));
    let eof = Arc::new(AtomicBool::new(false));
    let reader = read.then(|| {
        let mut r = tcp.try_clone().unwrap();
        let (received, eof) = (received.clone(), eof.clone());
        std::thread::spawn(move || {
            let mut buf = vec![0; 64 * 1024];
            let mut watch = GoawayWatch::default();
            loop {
                match r.read(&mut buf) {
                    Ok(0) | Err(_) => break eof.store(true, Ordering::Relaxed),
                    Ok(n) => {
                        received.fetch_add(n as u64, Ordering::Relaxed);
                        watch.feed(&buf[..n]);
                    }
                };
            }
            watch.code
        })
    });
    let chunk = kind.bytes();
    let until = Instant::now() + span;
    let (mut sent, mut closed, mut at) = (0u64, false, 0);
    while Instant::now() < until && !eof.load(Ordering::Relaxed) {
        // Partial writes go on where they stopped, so frames stay whole.
        match tcp.write(&chunk[at..]) {
            Ok(n) => {
                sent += n as u64;
                at = (at + n) % chunk.len();
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
    let _ = tcp.shutdown(std::net::Shutdown::Both);
    let goaway = reader.and_then(|r| r.join().unwrap());
    Flooded {
        sent,
        received: received.load(Ordering::Relaxed),
        closed,
        goaway,
    }
}

/// Floods for `span` while a quick call runs on another connection every 2 ms: what the flood
/// achieved, the slowest quick call, and the server's peak RSS growth in KiB.
async fn flood_during_calls(
    server: &Server,
    kind: Flood,
    read: bool,
    span: Duration,
) -> (Flooded, Duration, u64) {
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
    let work = tokio::task::spawn_blocking(move || flood(addr, kind, read, span));
    let (flooded, slowest) =
        slowest_call_during(addr, SAY_HELLO, Bytes::new(), async { work.await.unwrap() }).await;
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

/// GOAWAY's ENHANCE_YOUR_CALM.
const ENHANCE_YOUR_CALM: u32 = 0xb;

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
