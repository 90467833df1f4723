//! Load client for the protoserve benchmarks.
//!
//! h2load drives the unary scenarios; this tool covers what h2load cannot:
//! the streaming shapes of routeguide.RouteGuide, correctness checks with a
//! real gRPC client, and startup-to-first-call timing. Every subcommand
//! prints one JSON object on stdout (the figures bench/run collects) and
//! diagnostics on stderr. Request counts are always bounded (`--calls`,
//! `--pings`) and so is time (`--max-secs`).
//!
//! ```text
//! bench-loadgen check         --addr A --services greeter,echo,routeguide [--db ROUTE_GUIDE_DB.json]
//! bench-loadgen unary         --addr A --path /pkg.Svc/M --body-hex HEX --calls N [--concurrency C] [--connections K]
//! bench-loadgen list-features --addr A --calls N [--db DB.json] [--concurrency C] [--connections K]
//! bench-loadgen record-route  --addr A --db DB.json --calls N --points P [--concurrency C] [--connections K]
//! bench-loadgen route-chat    --addr A --pings N [--per-stream K] [--ping-timeout S]
//! bench-loadgen startup       --addr A --path /pkg.Svc/M [--body-hex HEX] [--timeout S] [--settle S] [--pidfile F] -- CMD ARGS...
//! ```
//!
//! ## RouteChat ping-pong
//! The tutorial's RouteChat answers a note with every note received *earlier*
//! on that stream at the same location. To make each ping produce exactly one
//! reply, every stream starts by sending K "prime" notes, prime j at a fresh
//! location L_j with message `p{j}` (no replies: nothing earlier there). A
//! warm-up ping at L_0 follows; its reply (`p0`) proves the primes were all
//! processed (a stream is ordered), so prime processing never shows up in a
//! measured round trip. Then ping j (j = 1..K) sends one note at L_j and
//! waits for the reply `p{j}`: L_j then holds exactly one earlier note, so
//! the server sends exactly one message back. The timer runs from the send
//! to the arrival of that reply. Any other message (a server that also
//! echoes the note itself, say) is counted as `extra` and skipped, so the
//! pairing stays right. Streams are short (K pings) so a server that scans
//! its notes linearly (the Python tutorial does) is not punished for a
//! stream growing without bound. A reply that does not come within
//! `--ping-timeout` seconds (5) ends the run with exit status 3 and a line
//! on stderr naming the stream (its `x-bench-chat` metadata, for the
//! server's journal), the ping, and what was last sent and received.

use std::collections::HashMap;
use std::io::BufRead;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};

pub mod helloworld {
    tonic::include_proto!("helloworld");
}
pub mod routeguide {
    tonic::include_proto!("routeguide");
}
pub mod bench {
    tonic::include_proto!("bench");
}

use bench::compute_client::ComputeClient;
use bench::echo_client::EchoClient;
use helloworld::greeter_client::GreeterClient;
use routeguide::route_guide_client::RouteGuideClient;
use routeguide::{Point, Rectangle, RouteNote};

type Error = Box<dyn std::error::Error + Send + Sync>;

// ---------------------------------------------------------------- arguments

struct Args {
    opts: HashMap<String, String>,
    rest: Vec<String>,
}

impl Args {
    fn parse(raw: &[String]) -> Args {
        let mut opts = HashMap::new();
        let mut rest = Vec::new();
        let mut i = 0;
        while i < raw.len() {
            let a = &raw[i];
            if a == "--" {
                rest = raw[i + 1..].to_vec();
                break;
            }
            let Some(key) = a.strip_prefix("--") else {
                die(&format!("unexpected argument {a}"))
            };
            let Some(val) = raw.get(i + 1) else {
                die(&format!("--{key} needs a value"))
            };
            opts.insert(key.to_string(), val.clone());
            i += 2;
        }
        Args { opts, rest }
    }
    fn str(&self, key: &str) -> String {
        self.opts
            .get(key)
            .cloned()
            .unwrap_or_else(|| die(&format!("--{key} is required")))
    }
    fn num<T: FromStr>(&self, key: &str, default: T) -> T {
        match self.opts.get(key) {
            None => default,
            Some(v) => v.parse().unwrap_or_else(|_| die(&format!("--{key}: bad number {v}"))),
        }
    }
}

fn die(msg: &str) -> ! {
    eprintln!("bench-loadgen: {msg}");
    std::process::exit(2);
}

// ---------------------------------------------------------------- raw codec

/// Passes already-encoded protobuf bytes through, for calling any method by path.
#[derive(Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }
    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        let n = src.remaining();
        Ok(Some(src.copy_to_bytes(n)))
    }
}

async fn raw_unary(channel: Channel, path: PathAndQuery, body: Bytes) -> Result<Bytes, Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.map_err(|e| Status::unavailable(e.to_string()))?;
    Ok(grpc.unary(Request::new(body), path, RawCodec).await?.into_inner())
}

fn hex_decode(s: &str) -> Bytes {
    let s = s.trim();
    if s.len() % 2 != 0 {
        die("--body-hex: odd length");
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap_or_else(|_| die("--body-hex: not hex")))
        .collect::<Vec<u8>>()
        .into()
}

// ---------------------------------------------------------------- helpers

async fn connect(addr: &str) -> Result<Channel, Error> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .connect()
        .await?)
}

async fn channels(args: &Args) -> Result<Vec<Channel>, Error> {
    let addr = args.str("addr");
    let n: usize = args.num("connections", 4);
    let mut out = Vec::with_capacity(n);
    for _ in 0..n.max(1) {
        out.push(connect(&addr).await?);
    }
    Ok(out)
}

fn json_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

fn point(lat: i32, lng: i32) -> Point {
    Point {
        latitude: lat,
        longitude: lng,
    }
}

/// A rectangle holding the whole world, so every feature of any DB.
fn whole_map() -> Rectangle {
    Rectangle {
        lo: Some(point(-900_000_000, -1_800_000_000)),
        hi: Some(point(900_000_000, 1_800_000_000)),
    }
}

/// The route guide DB the servers were given (`--db`): (point, name) per feature.
fn load_db(args: &Args) -> Vec<(Point, String)> {
    let path = args.str("db");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| die(&format!("--db {path}: {e}")));
    let json: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| die(&format!("--db {path}: {e}")));
    let num = |v: &serde_json::Value| v.as_i64().unwrap_or(0) as i32;
    json.as_array()
        .unwrap_or_else(|| die("--db: not a JSON array"))
        .iter()
        .map(|f| {
            let loc = &f["location"];
            (
                point(num(&loc["latitude"]), num(&loc["longitude"])),
                f["name"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// The first and second named features, for routes that hit features.
fn named_points(db: &[(Point, String)]) -> (Point, Point) {
    let mut named = db.iter().filter(|(_, n)| !n.is_empty()).map(|(p, _)| p.clone());
    let a = named.next().unwrap_or_else(|| point(1, 1));
    let b = named.next().unwrap_or_else(|| a.clone());
    (a, b)
}

// ---------------------------------------------------------------- closed-loop driver

#[derive(Default)]
struct Totals {
    calls: AtomicU64,
    errors: AtomicU64,
    messages: AtomicU64,
    first_error: Mutex<Option<String>>,
}

/// Runs `calls` calls from `concurrency` tasks (each bound to one of the
/// channels), stopping early after `max_secs`. `call` returns the number of
/// messages that call moved.
async fn drive<F, Fut>(chans: Vec<Channel>, calls: u64, concurrency: usize, max_secs: f64, call: F)
where
    F: Fn(Channel) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<u64, String>> + Send,
{
    let totals = Arc::new(Totals::default());
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(max_secs);
    let mut tasks = Vec::new();
    for t in 0..concurrency.max(1) {
        let ch = chans[t % chans.len()].clone();
        let (totals, next, call) = (totals.clone(), next.clone(), call.clone());
        tasks.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < calls && Instant::now() < deadline {
                match call(ch.clone()).await {
                    Ok(n) => {
                        totals.calls.fetch_add(1, Ordering::Relaxed);
                        totals.messages.fetch_add(n, Ordering::Relaxed);
                    }
                    Err(e) => {
                        totals.errors.fetch_add(1, Ordering::Relaxed);
                        totals.first_error.lock().unwrap().get_or_insert(e);
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("load task panicked");
    }
    let secs = start.elapsed().as_secs_f64();
    let calls = totals.calls.load(Ordering::Relaxed);
    let errors = totals.errors.load(Ordering::Relaxed);
    let messages = totals.messages.load(Ordering::Relaxed);
    let first_error = totals.first_error.lock().unwrap().clone().unwrap_or_default();
    println!(
        "{{\"calls\":{calls},\"errors\":{errors},\"messages\":{messages},\"secs\":{secs:.6},\
         \"calls_per_s\":{:.2},\"msgs_per_s\":{:.2},\"first_error\":\"{}\"}}",
        calls as f64 / secs,
        messages as f64 / secs,
        json_escape(&first_error)
    );
    if errors > 0 {
        eprintln!("bench-loadgen: {errors} calls failed, first: {first_error}");
    }
}

// ---------------------------------------------------------------- subcommands

async fn cmd_unary(args: &Args) -> Result<(), Error> {
    let path = PathAndQuery::from_str(&args.str("path"))?;
    let body = hex_decode(&args.opts.get("body-hex").cloned().unwrap_or_default());
    let expect_len: i64 = args.num("expect-len", -1);
    let chans = channels(args).await?;
    drive(
        chans,
        args.num("calls", 1000),
        args.num("concurrency", 16),
        args.num("max-secs", 60.0),
        move |ch| {
            let (path, body) = (path.clone(), body.clone());
            async move {
                let reply = raw_unary(ch, path, body).await.map_err(|s| s.to_string())?;
                if expect_len >= 0 && reply.len() as i64 != expect_len {
                    return Err(format!("reply is {} bytes, expected {expect_len}", reply.len()));
                }
                Ok(1)
            }
        },
    )
    .await;
    Ok(())
}

async fn cmd_list_features(args: &Args) -> Result<(), Error> {
    let chans = channels(args).await?;
    let expect: i64 = if args.opts.contains_key("db") {
        load_db(args).len() as i64
    } else {
        -1
    };
    drive(
        chans,
        args.num("calls", 1000),
        args.num("concurrency", 16),
        args.num("max-secs", 60.0),
        move |ch| async move {
            let mut client = RouteGuideClient::new(ch);
            let mut stream = client
                .list_features(whole_map())
                .await
                .map_err(|s| s.to_string())?
                .into_inner();
            let mut n = 0u64;
            while stream.message().await.map_err(|s| s.to_string())?.is_some() {
                n += 1;
            }
            if expect >= 0 && n as i64 != expect {
                return Err(format!("ListFeatures streamed {n} features, expected {expect}"));
            }
            Ok(n)
        },
    )
    .await;
    Ok(())
}

async fn cmd_record_route(args: &Args) -> Result<(), Error> {
    let chans = channels(args).await?;
    let points: usize = args.num("points", 100);
    // A walk across the map; some points are features of the tutorial DB.
    let (fa, fb) = named_points(&load_db(args));
    let route: Arc<Vec<Point>> = Arc::new(
        (0..points)
            .map(|i| match i % 4 {
                0 => fa.clone(),
                1 => fb.clone(),
                _ => point(400_000_000 + (i as i32) * 1000, -745_000_000 + (i as i32) * 700),
            })
            .collect(),
    );
    drive(
        chans,
        args.num("calls", 1000),
        args.num("concurrency", 16),
        args.num("max-secs", 60.0),
        move |ch| {
            let route = route.clone();
            async move {
                let mut client = RouteGuideClient::new(ch);
                let out = tokio_stream::iter(route.iter().cloned().collect::<Vec<_>>());
                let summary = client.record_route(out).await.map_err(|s| s.to_string())?.into_inner();
                if summary.point_count as usize != route.len() {
                    return Err(format!("point_count {} != {}", summary.point_count, route.len()));
                }
                Ok(route.len() as u64)
            }
        },
    )
    .await;
    Ok(())
}

async fn cmd_route_chat(args: &Args) -> Result<(), Error> {
    let ch = connect(&args.str("addr")).await?;
    let pings: usize = args.num("pings", 1000);
    let per_stream: usize = args.num::<usize>("per-stream", 100).max(1);
    let max_secs: f64 = args.num("max-secs", 60.0);
    let ping_timeout = Duration::from_secs_f64(args.num("ping-timeout", 5.0));
    let nonce = (std::process::id() % 100_000) as i32;
    let start = Instant::now();
    let mut rtts: Vec<Duration> = Vec::with_capacity(pings);
    let mut extra = 0u64;
    let mut stream_no = 0i32;
    while rtts.len() < pings && start.elapsed().as_secs_f64() < max_secs {
        stream_no += 1;
        let k = per_stream.min(pings - rtts.len());
        let lng = -(nonce * 1000 + stream_no % 1000);
        let note = |j: usize, msg: String| RouteNote {
            location: Some(point(j as i32 + 1, lng)),
            message: msg,
        };
        let (tx, rx) = mpsc::channel::<RouteNote>(k + 4);
        for j in 0..=k {
            tx.send(note(j, format!("p{j}"))).await?;
        }
        tx.send(note(0, "warm-up".into())).await?;
        let mut client = RouteGuideClient::new(ch.clone());
        // Counts the notes the transport took from the channel, for a stall's report.
        let taken = Arc::new(AtomicU64::new(0));
        let counted = taken.clone();
        let notes = tokio_stream::StreamExt::map(ReceiverStream::new(rx), move |n| {
            counted.fetch_add(1, Ordering::Relaxed);
            n
        });
        let mut request = Request::new(notes);
        let tag = format!("{nonce}-{stream_no}");
        request.metadata_mut().insert(CHAT_TAG, tag.parse()?);
        let mut chat = Chat {
            tag,
            stream_no,
            last_sent: format!("warm-up at (1, {lng})"),
            sent_at: Instant::now(),
            last_received: "nothing".into(),
            queued: k as u64 + 2,
            taken,
            received: 0,
            timeout: ping_timeout,
        };
        // The response headers come with the first reply (the warm-up's).
        let mut inbound = match tokio::time::timeout(ping_timeout, client.route_chat(request)).await {
            Ok(response) => response?.into_inner(),
            Err(_) => chat.stalled(0, "the response headers and p0"),
        };
        chat.await_reply(&mut inbound, 0, "p0", &mut extra).await?;
        for j in 1..=k {
            let t0 = Instant::now();
            tx.send(note(j, "ping".into())).await?;
            chat.queued += 1;
            chat.sent(format!("ping at ({}, {lng})", j + 1), t0);
            chat.await_reply(&mut inbound, j, &format!("p{j}"), &mut extra).await?;
            rtts.push(t0.elapsed());
        }
        drop(tx);
        while inbound.message().await?.is_some() {
            extra += 1;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    rtts.sort();
    let pct = |p: f64| -> f64 {
        if rtts.is_empty() {
            return 0.0;
        }
        let idx = ((rtts.len() as f64 - 1.0) * p).round() as usize;
        rtts[idx].as_secs_f64() * 1e6
    };
    let mean = rtts.iter().map(|d| d.as_secs_f64()).sum::<f64>() / rtts.len().max(1) as f64 * 1e6;
    println!(
        "{{\"pings\":{},\"streams\":{stream_no},\"extra\":{extra},\"secs\":{secs:.6},\"p50_us\":{:.1},\
         \"p90_us\":{:.1},\"p99_us\":{:.1},\"max_us\":{:.1},\"mean_us\":{mean:.1},\"pings_per_s\":{:.2}}}",
        rtts.len(),
        pct(0.50),
        pct(0.90),
        pct(0.99),
        pct(1.0),
        rtts.len() as f64 / secs
    );
    Ok(())
}

/// Request metadata naming a RouteChat stream (`NONCE-STREAM`), so a stalled one can be found
/// in the server's call journal (`/v1/journal?metadata=x-bench-chat=...`).
const CHAT_TAG: &str = "x-bench-chat";

/// Exit status of `route-chat` when a reply does not arrive within `--ping-timeout`.
const STALL_EXIT: i32 = 3;

/// One RouteChat stream's progress, to name a stall: a reply that never comes fails the run
/// after `--ping-timeout` (default 5 s) with what was last sent and received, instead of
/// hanging until the driver's timeout kills it.
struct Chat {
    tag: String,
    /// Notes put in the request channel so far.
    queued: u64,
    /// Notes the transport has taken from it.
    taken: Arc<AtomicU64>,
    stream_no: i32,
    last_sent: String,
    sent_at: Instant,
    last_received: String,
    received: u64,
    timeout: Duration,
}

impl Chat {
    fn sent(&mut self, what: String, at: Instant) {
        self.last_sent = what;
        self.sent_at = at;
    }

    /// Reads replies until the note whose message is `want` (ping `ping`; 0 is the warm-up);
    /// others count as `extra`. Exits with [`STALL_EXIT`] when it does not come in time.
    async fn await_reply(
        &mut self,
        inbound: &mut tonic::Streaming<RouteNote>,
        ping: usize,
        want: &str,
        extra: &mut u64,
    ) -> Result<(), Error> {
        loop {
            let next = match tokio::time::timeout(self.timeout, inbound.message()).await {
                Ok(next) => next?,
                Err(_) => self.stalled(ping, want),
            };
            match next {
                Some(n) => {
                    self.received += 1;
                    self.last_received = format!("{:?} {:.3} s after the send", n.message, self.sent_at.elapsed().as_secs_f64());
                    if n.message == want {
                        return Ok(());
                    }
                    *extra += 1;
                }
                None => return Err(format!("stream ended while waiting for {want}").into()),
            }
        }
    }

    fn stalled(&self, ping: usize, want: &str) -> ! {
        eprintln!(
            "bench-loadgen route-chat: stall: stream {} ({CHAT_TAG}: {}), ping {ping}: sent {} {:.3} s ago, \
             waiting for {want:?}; the client's HTTP/2 took {} of the {} notes queued; {} replies received \
             on this stream, the last {}",
            self.stream_no,
            self.tag,
            self.last_sent,
            self.sent_at.elapsed().as_secs_f64(),
            self.taken.load(Ordering::Relaxed),
            self.queued,
            self.received,
            self.last_received,
        );
        std::process::exit(STALL_EXIT);
    }
}

async fn cmd_startup(args: &Args) -> Result<(), Error> {
    let addr = args.str("addr");
    let path = PathAndQuery::from_str(&args.str("path"))?;
    let body = hex_decode(&args.opts.get("body-hex").cloned().unwrap_or_default());
    let timeout = Duration::from_secs_f64(args.num("timeout", 60.0));
    let Some((prog, prog_args)) = args.rest.split_first() else {
        die("startup needs -- CMD ARGS...")
    };

    let start = Instant::now();
    let mut child = std::process::Command::new(prog)
        .args(prog_args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let pid = child.id();
    if let Some(pidfile) = args.opts.get("pidfile") {
        std::fs::write(pidfile, format!("{pid}\n"))?;
    }
    let stderr = child.stderr.take().unwrap();
    let listening: Arc<Mutex<Option<Duration>>> = Arc::default();
    let tail: Arc<Mutex<Vec<String>>> = Arc::default();
    {
        let (listening, tail) = (listening.clone(), tail.clone());
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("listening on") {
                    listening.lock().unwrap().get_or_insert(start.elapsed());
                }
                let mut t = tail.lock().unwrap();
                t.push(line);
                if t.len() > 20 {
                    t.remove(0);
                }
            }
        });
    }

    let mut last_err = String::new();
    let first_call = loop {
        if start.elapsed() > timeout {
            break None;
        }
        if let Ok(Some(status)) = child.try_wait() {
            last_err = format!("server exited: {status}");
            break None;
        }
        let attempt = async {
            let ch = Endpoint::from_shared(format!("http://{addr}"))?
                .connect_timeout(Duration::from_millis(200))
                .connect()
                .await?;
            raw_unary(ch, path.clone(), body.clone()).await?;
            Ok::<(), Error>(())
        };
        match tokio::time::timeout(Duration::from_secs(2), attempt).await {
            Ok(Ok(())) => break Some(start.elapsed()),
            Ok(Err(e)) => last_err = e.to_string(),
            Err(_) => last_err = "call timed out".into(),
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    let status_kib = |key: &str| {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with(key))
                    .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()))
            })
            .unwrap_or(0)
    };
    let rss_kib = status_kib("VmRSS:");
    // Peak so far, and (with --settle S) the resident size S seconds later, serving idle.
    let hwm_kib = status_kib("VmHWM:");
    let settle = args.num("settle", 0.0);
    let steady_kib = if first_call.is_some() && settle > 0.0 {
        tokio::time::sleep(Duration::from_secs_f64(settle)).await;
        status_kib("VmRSS:")
    } else {
        rss_kib
    };
    let _ = child.kill();
    let _ = child.wait();
    let ms = |d: Option<Duration>| {
        d.map(|d| format!("{:.3}", d.as_secs_f64() * 1e3))
            .unwrap_or("null".into())
    };
    let listening = *listening.lock().unwrap();
    println!(
        "{{\"listening_ms\":{},\"first_call_ms\":{},\"rss_kib\":{rss_kib},\"hwm_kib\":{hwm_kib},\"steady_kib\":{steady_kib},\"error\":\"{}\"}}",
        ms(listening),
        ms(first_call),
        json_escape(if first_call.is_some() { "" } else { &last_err })
    );
    if first_call.is_none() {
        std::thread::sleep(Duration::from_millis(50));
        for l in tail.lock().unwrap().iter() {
            eprintln!("  server: {l}");
        }
        return Err(format!("no successful call: {last_err}").into());
    }
    Ok(())
}

/// Correctness checks with real generated clients; prints `ok ...` / `FAIL ...`.
async fn cmd_check(args: &Args) -> Result<(), Error> {
    let ch = connect(&args.str("addr")).await?;
    let services = args
        .opts
        .get("services")
        .cloned()
        .unwrap_or("greeter,echo,routeguide".into());
    let mut failures = 0;
    let mut report = |name: &str, res: Result<(), String>| match res {
        Ok(()) => eprintln!("ok   {name}"),
        Err(e) => {
            eprintln!("FAIL {name}: {e}");
            failures += 1;
        }
    };
    for svc in services.split(',').filter(|s| !s.is_empty()) {
        match svc {
            "greeter" => {
                let mut c = GreeterClient::new(ch.clone());
                let r = within(c.say_hello(helloworld::HelloRequest { name: "world".into() })).await;
                report(
                    "helloworld.Greeter/SayHello",
                    match r {
                        Ok(r) if r.get_ref().message == "Hello, world!" => Ok(()),
                        Ok(r) => Err(format!("message {:?}", r.get_ref().message)),
                        Err(s) => Err(s.to_string()),
                    },
                );
            }
            "echo" => {
                let mut c = EchoClient::new(ch.clone()).max_decoding_message_size(16 << 20);
                for size in [0usize, 1024, 65536] {
                    let data: Bytes = (0..size).map(|i| (i * 7 + 3) as u8).collect::<Vec<u8>>().into();
                    let r = within(c.echo(bench::Blob { data: data.clone() })).await;
                    report(
                        &format!("bench.Echo/Echo {size} B"),
                        match r {
                            Ok(r) if r.get_ref().data == data => Ok(()),
                            Ok(r) => Err(format!("got {} bytes back, not the same", r.get_ref().data.len())),
                            Err(s) => Err(s.to_string()),
                        },
                    );
                }
            }
            "routeguide" | "getfeature" | "listfeatures" | "recordroute" | "routechat" => {
                check_route_guide(ch.clone(), &load_db(args), svc, &mut report).await
            }
            "compute" => {
                let mut c = ComputeClient::new(ch.clone());
                let r = within(c.route(bench::RouteRequest { points: COMPUTE_POINTS })).await;
                let want = compute_route_distance(COMPUTE_POINTS);
                report(
                    &format!("bench.Compute/Route {COMPUTE_POINTS} points"),
                    match r {
                        // Within a metre: the sum of ten thousand floats may round differently.
                        Ok(r) if r.get_ref().point_count == COMPUTE_POINTS
                            && (r.get_ref().distance - want).abs() <= 1 => Ok(()),
                        Ok(r) => Err(format!("result {:?}, expected distance {want}", r.get_ref())),
                        Err(s) => Err(s.to_string()),
                    },
                );
            }
            other => die(&format!("unknown service {other} (greeter, echo, compute, routeguide or one of its getfeature, listfeatures, recordroute, routechat)")),
        }
    }
    if failures > 0 {
        return Err(format!("{failures} checks failed").into());
    }
    println!("{{\"ok\":true}}");
    Ok(())
}

/// Points per bench.Compute/Route call in the "compute" scenario (bench/run sends the same).
const COMPUTE_POINTS: i32 = 10_000;

/// What bench.Compute/Route answers for `n` points (see bench/protos/bench.proto).
fn compute_route_distance(n: i32) -> i64 {
    let point = |i: i64| {
        (
            (400_000_000 + (i * 7919) % 2_000_000 - 1_000_000) as f64,
            (-740_000_000 + (i * 104_729) % 2_000_000 - 1_000_000) as f64,
        )
    };
    let mut total = 0.0f64;
    for i in 1..i64::from(n) {
        let (a, b) = (point(i - 1), point(i));
        let lat1 = (a.0 / 1e7).to_radians();
        let lat2 = (b.0 / 1e7).to_radians();
        let dlat = lat2 - lat1;
        let dlon = ((b.1 - a.1) / 1e7).to_radians();
        let h = (dlat / 2.0).sin().powi(2) + lat1.cos() * lat2.cos() * (dlon / 2.0).sin().powi(2);
        total += 6_371_000.0 * 2.0 * h.sqrt().atan2((1.0 - h).sqrt());
    }
    total.floor() as i64
}

/// Bounds one check step: a server that never answers fails the check instead of hanging it.
async fn within<T>(fut: impl std::future::Future<Output = Result<T, Status>>) -> Result<T, Status> {
    match tokio::time::timeout(Duration::from_secs(10), fut).await {
        Ok(r) => r,
        Err(_) => Err(Status::deadline_exceeded("no answer within 10 s (bench-loadgen check)")),
    }
}

/// `which` is "routeguide" (every method) or one method's lower-case name.
async fn check_route_guide(
    ch: Channel,
    db: &[(Point, String)],
    which: &str,
    report: &mut impl FnMut(&str, Result<(), String>),
) {
    let all = which == "routeguide";
    let mut c = RouteGuideClient::new(ch);
    let (fa, fb) = named_points(db);
    let name_at = |p: &Point| {
        db.iter()
            .find(|(q, _)| q == p)
            .map(|(_, n)| n.clone())
            .unwrap_or_default()
    };
    let want_name = name_at(&fa);
    if all || which == "getfeature" {
        let r = within(c.get_feature(fa.clone())).await;
        report(
            "routeguide.RouteGuide/GetFeature (known)",
            match r {
                Ok(f) if f.get_ref().name == want_name => Ok(()),
                Ok(f) => Err(format!("feature {:?}", f.get_ref())),
                Err(s) => Err(s.to_string()),
            },
        );
        let r = within(c.get_feature(point(1, 2))).await;
        report(
            "routeguide.RouteGuide/GetFeature (unknown)",
            match r {
                Ok(f) if f.get_ref().name.is_empty() && f.get_ref().location == Some(point(1, 2)) => Ok(()),
                Ok(f) => Err(format!("feature {:?}", f.get_ref())),
                Err(s) => Err(s.to_string()),
            },
        );
    }
    if all || which == "listfeatures" {
        let r = within(async {
            let mut s = c.list_features(whole_map()).await?.into_inner();
            let mut n = 0;
            while s.message().await?.is_some() {
                n += 1;
            }
            Ok::<_, Status>(n)
        })
        .await;
        report(
            "routeguide.RouteGuide/ListFeatures",
            match r {
                Ok(n) if n == db.len() => Ok(()),
                Ok(n) => Err(format!("{n} features streamed, expected the DB's {}", db.len())),
                Err(s) => Err(s.to_string()),
            },
        );
    }
    if all || which == "recordroute" {
        let route = vec![fa.clone(), fb.clone(), point(1, 2)];
        let want_features = route.iter().filter(|p| !name_at(p).is_empty()).count() as i32;
        let r = within(c.record_route(tokio_stream::iter(route))).await;
        report(
            "routeguide.RouteGuide/RecordRoute",
            match r {
                Ok(s)
                    if s.get_ref().point_count == 3
                        && s.get_ref().feature_count == want_features
                        && s.get_ref().distance > 0 =>
                {
                    Ok(())
                }
                Ok(s) => Err(format!("summary {:?}", s.get_ref())),
                Err(s) => Err(s.to_string()),
            },
        );
    }
    if all || which == "routechat" {
        let r = within(async {
            let at = |m: &str| RouteNote {
                location: Some(point(5, 6)),
                message: m.into(),
            };
            let other = RouteNote {
                location: Some(point(7, 8)),
                message: "elsewhere".into(),
            };
            let notes = vec![at("first"), other, at("second")];
            let mut s = c.route_chat(tokio_stream::iter(notes)).await?.into_inner();
            let mut got = Vec::new();
            while let Some(n) = s.message().await? {
                got.push(n.message);
            }
            Ok::<_, Status>(got)
        })
        .await;
        report(
            "routeguide.RouteGuide/RouteChat",
            match r {
                Ok(got) if got == ["first"] => Ok(()),
                Ok(got) => Err(format!("replies {got:?}, expected [\"first\"]")),
                Err(s) => Err(s.to_string()),
            },
        );
    }
}

#[tokio::main]
async fn main() {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let Some((sub, rest)) = raw.split_first() else {
        die("usage: bench-loadgen check|unary|list-features|record-route|route-chat|startup --addr A ...")
    };
    let args = Args::parse(rest);
    let res = match sub.as_str() {
        "check" => cmd_check(&args).await,
        "unary" => cmd_unary(&args).await,
        "list-features" => cmd_list_features(&args).await,
        "record-route" => cmd_record_route(&args).await,
        "route-chat" => cmd_route_chat(&args).await,
        "startup" => cmd_startup(&args).await,
        other => die(&format!("unknown subcommand {other}")),
    };
    if let Err(e) = res {
        eprintln!("bench-loadgen {sub}: {e}");
        std::process::exit(1);
    }
}
