//! Regressions of one client keeping the turn that big requests take for everyone.
//!
//! Big requests (decoded from 16 KiB) and compressed messages that may inflate big are worked
//! on off the network threads, one at a time for the whole server. They waited for that turn in
//! one line, first come first served, and a compressed message held it until it was inflated
//! whole: a client that never cancels could line up as much work as it liked, and a big
//! request on another connection waited for all of it. Twenty-four 512 KiB gzip messages of
//! empty deflate blocks on one connection (3 s each to inflate in a release build, 50 s in a
//! debug one, on a busy two-core machine) kept another connection's big gzip request, and a
//! big echo, waiting past the tests' 20 s bound, in either build; two dozen declarative
//! requests that take 0.1 s (release) to 0.9 s (debug) each to decode kept a big request
//! waiting for all of them, 1.4 s and 7-21 s. Now the turns go round the connections, and a
//! message is inflated a slice of work (2 ms) at a time, so the other connection waits for
//! about one slice, or one declarative request, of the greedy client's work.
//!
//! The greedy client is one HTTP/2 connection whose calls all stay open until the test ends;
//! the other connection's call is timed, and the greedy calls still waiting once it is
//! answered show that it was answered ahead of them. The tests measure waits, so they take
//! turns.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::gzip::{empty_blocks, frame, gzip, noise_hex};
use common::len_field;
use common::Server;
use tokio::task::JoinSet;

/// The tests here measure how long calls wait, so they take turns: one test's greedy client
/// would count against another's timed call.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Calls the greedy connection keeps open.
const GREEDY_CALLS: usize = 24;

/// One HTTP/2 connection of a client that never cancels: its calls, each sent whole, and
/// answered in tasks of their own. Dropped, the connection closes.
struct Greedy {
    send: h2::client::SendRequest<Bytes>,
    connection: tokio::task::JoinHandle<()>,
    answers: JoinSet<String>,
    addr: SocketAddr,
}

impl Greedy {
    async fn connect(addr: SocketAddr) -> Greedy {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (send, conn) = h2::client::handshake(tcp).await.unwrap();
        let connection = tokio::spawn(async move {
            let _ = conn.await;
        });
        Greedy {
            send,
            connection,
            answers: JoinSet::new(),
            addr,
        }
    }

    /// Sends one call to `path` with `message` (framed), gzip-encoded if `gzip`.
    async fn call(&mut self, path: &str, message: Bytes, gzip: bool) {
        let mut send = self.send.clone().ready().await.unwrap();
        let mut req = common::grpc_request(self.addr, path);
        if gzip {
            req = req.header("grpc-encoding", "gzip");
        }
        let (resp, mut body) = send.send_request(req.body(()).unwrap(), false).unwrap();
        body.reserve_capacity(message.len());
        body.send_data(message, true).unwrap();
        self.answers.spawn(async move {
            let _body = body;
            common::http2::status_of(resp).await
        });
    }

    /// How many of its calls are answered so far, and their statuses.
    fn answered(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(done) = self.answers.try_join_next() {
            out.push(done.unwrap());
        }
        out
    }
}

impl Drop for Greedy {
    fn drop(&mut self) {
        self.answers.abort_all();
        self.connection.abort();
    }
}

/// One call to `path` with `message` on a connection of its own, gzip-encoded if `gzip`: its
/// status and how long it took, or `None` if it took longer than `within`.
async fn timed_call(
    addr: SocketAddr,
    path: &str,
    message: Bytes,
    gzip: bool,
    within: Duration,
) -> (Option<String>, Duration) {
    let mut other = Greedy::connect(addr).await;
    let started = Instant::now();
    other.call(path, message, gzip).await;
    let answer = tokio::time::timeout(within, other.answers.join_next()).await;
    (answer.ok().flatten().map(Result::unwrap), started.elapsed())
}

/// A connection with two dozen calls open, each a gzip message of empty deflate blocks that
/// takes seconds to inflate, held up a big gzip request, and a big request to an `echo`, on
/// another connection until it had inflated them all (minutes); now the other connection's
/// calls wait for a slice of that work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_of_many_slow_gzip_messages_holds_up_another_connection_for_a_slice_of_them() {
    const BOUND: Duration = Duration::from_secs(3);
    const WITHIN: Duration = Duration::from_secs(20);
    let _turn = TURN.lock().await;
    let server = Server::kitchen();
    let addr = server.addr;
    let mut greedy = Greedy::connect(addr).await;
    let slow = frame(1, &empty_blocks(512 * 1024));
    for _ in 0..GREEDY_CALLS {
        greedy
            .call("/kitchen.Kitchen/Echo", slow.clone(), true)
            .await;
    }
    // Every message arrived and waits (a few MiB on loopback take milliseconds).
    tokio::time::sleep(Duration::from_millis(500)).await;

    // An Item whose blob (7) is 64 KiB of noise: its gzip is past the in-place bound.
    let item = [
        len_field(1, b"other"),
        len_field(7, &noise_hex(64 * 1024, 3)),
    ]
    .concat();
    let (zipped, zipped_took) = timed_call(
        addr,
        "/kitchen.Kitchen/Echo",
        frame(1, &gzip(&item)),
        true,
        WITHIN,
    )
    .await;
    // 300 KB, a few long fields: an echo answered off the network threads.
    let big = [len_field(1, b"plain"), len_field(7, &noise_hex(300_000, 4))].concat();
    let (plain, plain_took) =
        timed_call(addr, "/kitchen.Kitchen/Echo", frame(0, &big), false, WITHIN).await;
    let answered = greedy.answered();
    eprintln!(
        "other connection: big gzip Echo {zipped_took:?}, big Echo {plain_took:?}; \
         greedy calls answered meanwhile: {}",
        answered.len()
    );
    assert_eq!(
        zipped.as_deref(),
        Some("0: "),
        "the other connection's big gzip Echo waited {zipped_took:?} (bound {WITHIN:?}) \
         behind {GREEDY_CALLS} slow gzip messages of one client"
    );
    assert_eq!(
        plain.as_deref(),
        Some("0: "),
        "the other connection's big Echo waited {plain_took:?} (bound {WITHIN:?}) behind \
         {GREEDY_CALLS} slow gzip messages of one client"
    );
    assert!(
        zipped_took < BOUND && plain_took < BOUND,
        "the other connection's calls waited {zipped_took:?} and {plain_took:?} behind \
         {GREEDY_CALLS} slow gzip messages of one client"
    );
    assert!(
        answered.len() < GREEDY_CALLS / 2,
        "the greedy client's messages must still be waiting: {answered:?}"
    );
}

/// Two dozen declarative requests that are slow to decode (a `rules` handler decodes every
/// request) on one connection held up a big request on another until they were all answered;
/// now the other connection's request waits for about one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_of_many_slow_declarative_requests_holds_up_another_connection_for_one_of_them() {
    let _turn = TURN.lock().await;
    let file = serde_json::json!({
        "service": "kitchen.Kitchen",
        "methods": {
            "Lookup": {"rules": [{"reply": {"id": "looked up"}}]}
        }
    });
    let (server, _handlers) = Server::kitchen_with(&file.to_string(), &[]);
    let addr = server.addr;
    // Query.tags (6), empty strings: a value built for each when decoded.
    let slow = frame(0, &b"\x32\x00".repeat(SLOW_TAGS));
    let mut greedy = Greedy::connect(addr).await;

    // How long one such request takes alone.
    let started = Instant::now();
    greedy
        .call("/kitchen.Kitchen/Lookup", slow.clone(), false)
        .await;
    let alone = greedy.answers.join_next().await.unwrap().unwrap();
    let one = started.elapsed();
    assert_eq!(alone, "0: ");

    for _ in 0..GREEDY_CALLS {
        greedy
            .call("/kitchen.Kitchen/Lookup", slow.clone(), false)
            .await;
    }
    // Every request arrived and waits (7 MB on loopback); few are answered yet, even in a
    // release build.
    tokio::time::sleep(Duration::from_millis(200)).await;
    // 20 KB of names: decoded, so a big request.
    let query = len_field(3, &noise_hex(20_000, 5));
    let within = (one * GREEDY_CALLS as u32 * 2).max(Duration::from_secs(20));
    let mut answered = greedy.answered();
    let before = answered.len();
    let (answer, took) = timed_call(
        addr,
        "/kitchen.Kitchen/Lookup",
        frame(0, &query),
        false,
        within,
    )
    .await;
    answered.extend(greedy.answered());
    let meanwhile = answered.len() - before;
    eprintln!(
        "one slow request alone: {one:?}; the other connection's big request: {took:?}; \
         greedy calls answered before it: {before}, meanwhile: {meanwhile}"
    );
    assert_eq!(
        answer.as_deref(),
        Some("0: "),
        "the other connection's big request waited {took:?} (bound {within:?}) behind \
         {GREEDY_CALLS} slow requests of one client, {one:?} each"
    );
    // Before, it waited for all the greedy client's requests; now for the one being answered
    // (and one more may end as the count is taken). Counted rather than timed: how long one
    // takes varies with the machine's load.
    assert!(
        meanwhile <= 2,
        "the other connection's big request waited {took:?}, until {meanwhile} more of the \
         {GREEDY_CALLS} slow requests of one client ({one:?} each alone) were answered"
    );
    assert!(
        answered.len() < GREEDY_CALLS / 2,
        "the greedy client's requests must still be waiting: {answered:?}"
    );
    assert!(
        answered.iter().all(|a| a == "0: "),
        "the greedy client's requests are answered: {answered:?}"
    );
}

/// Empty strings in each slow declarative request: some hundreds of milliseconds to decode in
/// a debug build (fewer than `--max-message-size` lets a request decode: each takes some
/// 170 bytes once decoded).
const SLOW_TAGS: usize = 150_000;
