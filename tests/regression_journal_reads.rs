//! Regressions of journal reads and verifies whose messages decode into far more than their bytes: a
//! repeated field of empty strings takes two bytes on the wire and dozens decoded, a string of
//! control characters six times its length as JSON. Reading a journal of 32 MiB of such
//! messages used to take the server's memory up by 1.5 GB per read (and reads ran side by
//! side); now each read has a budget, and what does not fit is shown as bytes or left to the
//! next page.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{fixtures, proc_status_kib, Client, Server};
use serde_json::Value as Json;

/// A `kitchen.Item` of `len` bytes: tags (field 4) that are all empty strings.
fn empty_tags(len: usize) -> Bytes {
    [0x22u8, 0x00].repeat(len / 2).into()
}

/// A `kitchen.Item` whose id (field 1) is `len` bytes of U+0001.
fn control_id(len: usize) -> Bytes {
    let mut out = vec![0x0a];
    let mut v = len;
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
    out.extend(std::iter::repeat_n(1u8, len));
    out.into()
}

/// Sends each message to `kitchen.Kitchen/Echo` (which answers with it), so the journal holds
/// each twice.
async fn echo_all(server: &Server, messages: &[Bytes]) {
    let client = Client::connect(server.addr, common::pool(&fixtures().join("protos"))).await;
    for m in messages {
        let back = client
            .raw_unary("/kitchen.Kitchen/Echo", m.clone())
            .await
            .unwrap();
        assert_eq!(back.len(), m.len());
    }
}

/// `GET path` on the admin API, with the server's highest RSS meanwhile (KiB).
async fn get_with_peak(server: &Server, path: &str) -> (Json, u64) {
    let pid = server.pid();
    let read = server.admin_get(path);
    tokio::pin!(read);
    let mut peak = proc_status_kib(pid, "VmRSS");
    loop {
        tokio::select! {
            json = &mut read => return (json, peak.max(proc_status_kib(pid, "VmRSS"))),
            () = tokio::time::sleep(Duration::from_millis(20)) => {
                peak = peak.max(proc_status_kib(pid, "VmRSS"));
            }
        }
    }
}

fn messages(call: &Json) -> &Vec<Json> {
    call["messages"].as_array().expect("messages")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn costly_messages_are_shown_as_bytes_within_bounded_memory() {
    let server = Server::kitchen();
    // 4 calls of two 4 MiB messages each: 32 MiB in the journal, about 16 million empty
    // strings once decoded.
    let big = empty_tags(4 * 1024 * 1024 - 64);
    echo_all(&server, &vec![big.clone(); 4]).await;
    echo_all(&server, &[control_id(5)]).await;
    let before = proc_status_kib(server.pid(), "VmRSS");

    let started = Instant::now();
    let (page, peak) = get_with_peak(&server, "/v1/journal?page_size=1000").await;
    let grown_mib = peak.saturating_sub(before) / 1024;
    assert!(
        grown_mib < 512,
        "reading the journal took the server's memory up by {grown_mib} MiB (in {:?})",
        started.elapsed()
    );

    let calls = page["calls"].as_array().unwrap();
    let big_calls: Vec<&Json> = calls.iter().collect();
    assert_eq!(big_calls.len(), 5, "{:#}", page["next_page_token"]);
    for call in &big_calls[..4] {
        for m in messages(call) {
            assert!(m["message"].is_null(), "{m:#}");
            let error = m["error"].as_str().unwrap();
            assert!(error.contains("not decoded"), "{error}");
            assert!(error.contains("times its size"), "{error}");
            let shown = m["bytes_base64"].as_str().unwrap();
            assert!(shown.len() > big.len(), "the bytes are shown whole");
        }
    }
    // A small message is shown as JSON as ever.
    let small = messages(big_calls[4]);
    assert_eq!(small[0]["message"]["id"], "\u{1}\u{1}\u{1}\u{1}\u{1}");

    // One call alone, the same.
    let id = big_calls[0]["id"].as_u64().unwrap();
    let (call, peak) = get_with_peak(&server, &format!("/v1/journal/{id}")).await;
    assert!(messages(&call)[0]["error"].is_string());
    let grown_mib = peak.saturating_sub(before) / 1024;
    assert!(grown_mib < 512, "GET /v1/journal/{id}: {grown_mib} MiB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_ends_before_a_call_its_budget_cannot_show() {
    let server = Server::kitchen();
    // Each call: two 3 MiB strings of control characters, 18 MiB of JSON text each.
    let big = control_id(3 * 1024 * 1024);
    echo_all(&server, &vec![big; 3]).await;

    let mut ids = Vec::new();
    let mut token: Option<String> = None;
    let mut pages = 0;
    for _ in 0..10 {
        pages += 1;
        let path = match &token {
            Some(t) => format!("/v1/journal?page_size=1000&page_token={t}"),
            None => "/v1/journal?page_size=1000".to_owned(),
        };
        let page = server.admin_get(&path).await;
        let calls = page["calls"].as_array().unwrap();
        assert!(!calls.is_empty(), "{path}");
        for call in calls {
            for m in messages(call) {
                // Every message is shown decoded: the page ended before a call that would
                // not have fitted.
                assert!(m["error"].is_null(), "{:#}", m["error"]);
                assert_eq!(m["message"]["id"].as_str().unwrap().len(), 3 * 1024 * 1024);
            }
            ids.push(call["id"].as_u64().unwrap());
        }
        token = page["next_page_token"].as_str().map(str::to_owned);
        if token.is_none() {
            break;
        }
    }
    assert_eq!(ids.len(), 3, "{ids:?}");
    // Two calls would take 84 MiB of text: each page holds one.
    assert_eq!(pages, 3, "{ids:?}");
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
}

/// Messages shown as their bytes (too costly to decode) were not counted in a read's budget: a
/// page of such calls grew without bound (128 MB for 16 calls of 3 MB), past what the admin API
/// holds for a client, so every read of the default page size was refused as busy, for good.
/// Their base64 text counts now, and the page ends before a call that would not fit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_of_messages_shown_as_bytes_is_held_to_the_read_budget() {
    let server = Server::kitchen_args(&["--journal-bytes", "512MiB"]);
    // 12 calls of two 4 MiB messages of empty strings: 5.6 MB of base64 each, 134 MB in all.
    let calls = 12;
    echo_all(&server, &vec![empty_tags(4 * 1024 * 1024 - 64); calls]).await;
    let mut ids = Vec::new();
    let mut token: Option<String> = None;
    for _ in 0..calls {
        let path = match &token {
            Some(t) => format!("/v1/journal?page_token={t}"),
            None => "/v1/journal".to_owned(),
        };
        let page = server.admin_get(&path).await;
        let text = page.to_string().len();
        assert!(text < 80 * 1024 * 1024, "{path}: an answer of {text} bytes");
        let shown = page["calls"].as_array().unwrap();
        assert!(!shown.is_empty(), "{path}");
        ids.extend(shown.iter().map(|c| c["id"].as_u64().unwrap()));
        token = page["next_page_token"].as_str().map(str::to_owned);
        if token.is_none() {
            break;
        }
    }
    assert_eq!(ids.len(), calls, "{ids:?}");
}

/// A verify runs over every call to the method: each recorded request was decoded whatever it
/// cost, and every near miss kept its request as JSON until the few shown were picked (4 such
/// calls: over 800 MB, and a 117 MB answer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_over_costly_requests_stays_within_bounded_memory() {
    let server = Server::kitchen();
    echo_all(&server, &vec![empty_tags(4 * 1024 * 1024 - 64); 4]).await;
    let before = proc_status_kib(server.pid(), "VmRSS");
    let pid = server.pid();
    let body = serde_json::json!({
        "method": "kitchen.Kitchen/Echo",
        "when": {"request": {"id": "x"}},
        "exactly": 1,
    });
    let verify = server.admin_post("/v1/verify", &body);
    tokio::pin!(verify);
    let mut peak = before;
    let (status, answer) = loop {
        tokio::select! {
            done = &mut verify => break done,
            () = tokio::time::sleep(Duration::from_millis(20)) => {
                peak = peak.max(proc_status_kib(pid, "VmRSS"));
            }
        }
    };
    let grown_mib = peak.saturating_sub(before) / 1024;
    assert!(grown_mib < 400, "the verify took {grown_mib} MiB");
    assert_eq!(status, 200, "{answer:#}");
    assert_eq!(answer["ok"], false);
    assert_eq!(answer["calls_to_method"], 4);
    let misses = answer["near_misses"].as_array().unwrap();
    assert_eq!(misses.len(), 4);
    let failed = misses[0]["failed"][0].as_str().unwrap();
    assert!(failed.contains("not checked"), "{failed}");
    assert!(failed.contains("8 times its size"), "{failed}");
}

/// A verify showed each near miss's request with a budget of its own: fifty misses of 3 MB
/// requests made a 150 MB answer, past what the admin API holds for a client, so the verify
/// was refused as busy every time. The requests shown share one read's budget; past it a
/// miss is shown without its request, saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verifys_near_misses_are_held_to_one_reads_budget() {
    let server = Server::kitchen_args(&["--journal-bytes", "512MiB"]);
    // 40 requests whose id is 3 MB of "a": 3 MB of JSON each when shown.
    let big = {
        let mut b = vec![0x0a, 0xc0, 0x8d, 0xb7, 0x01];
        b.extend(std::iter::repeat_n(b'a', 3_000_000));
        Bytes::from(b)
    };
    echo_all(&server, &vec![big; 40]).await;
    let body = serde_json::json!({
        "method": "kitchen.Kitchen/Echo",
        "when": {"request": {"id": "b"}},
        "at_least": 1,
        "show": 40,
    });
    let (status, answer) = server.admin_post("/v1/verify", &body).await;
    assert_eq!(status, 200, "{}", &answer.to_string()[..300]);
    let text = answer.to_string().len();
    assert!(text < 80 * 1024 * 1024, "an answer of {text} bytes");
    let misses = answer["near_misses"].as_array().unwrap();
    assert_eq!(misses.len(), 40);
    let with_request = misses.iter().filter(|m| m["request"].is_object()).count();
    assert!(with_request >= 1, "{}", &answer.to_string()[..300]);
    assert!(
        misses.iter().any(|m| m["request_left_out"].is_string()),
        "every request shown"
    );
}

/// messages decoded and the rest as bytes, on a page (where it comes first) as when read alone:
/// the error says so, instead of sending the reader to read fewer calls or this call alone,
/// which showed the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_over_a_reads_budget_is_not_sent_to_be_read_alone() {
    let server = Server::kitchen();
    let client = Client::connect(server.addr, common::pool(&fixtures().join("protos"))).await;
    // Three 3 MiB strings of control characters, echoed: six messages of about 22 MB each as
    // JSON text and decoded, over the 64 MiB of one read.
    let id = "\u{1}".repeat(3 * 1024 * 1024);
    let items = vec![serde_json::json!({ "id": id }); 3];
    let (replies, status) = client.bidi("kitchen.Kitchen/EchoStream", items).await;
    assert!(status.is_none(), "{status:?}");
    assert_eq!(replies.len(), 3);

    let page = server.admin_get("/v1/journal?page_size=10").await;
    let calls = page["calls"].as_array().unwrap();
    assert_eq!(calls.len(), 1, "{page:#}");
    let call_id = calls[0]["id"].as_u64().unwrap();
    let alone = server.admin_get(&format!("/v1/journal/{call_id}")).await;
    for call in [&calls[0], &alone] {
        let shown = messages(call);
        assert_eq!(shown.len(), 6);
        assert!(shown[0]["error"].is_null(), "{:#}", shown[0]["error"]);
        let error = shown[5]["error"]
            .as_str()
            .expect("the last message is not decoded");
        assert!(error.contains("not decoded"), "{error}");
        assert!(
            !error.contains("page_size") && !error.contains("alone"),
            "reading fewer calls or the call alone shows the same: {error}"
        );
        assert!(
            error.contains("the call's earlier messages took"),
            "{error}"
        );
    }
}

/// `GET path` on the admin API over a plain socket, raising `first` at the answer's first
/// byte: the time to it, and the whole answer's length. Nothing is parsed, so the time is the
/// server's.
fn get_first_byte(
    admin: std::net::SocketAddr,
    path: &str,
    first: &std::sync::atomic::AtomicBool,
) -> (Duration, usize) {
    use std::io::{Read, Write};
    let mut tcp = std::net::TcpStream::connect(admin).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    let started = Instant::now();
    write!(
        tcp,
        "GET {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut byte = [0u8; 1];
    tcp.read_exact(&mut byte).unwrap();
    let at = started.elapsed();
    first.store(true, std::sync::atomic::Ordering::Release);
    let mut rest = Vec::new();
    tcp.read_to_end(&mut rest).unwrap();
    (at, 1 + rest.len())
}

/// A journal page is written as JSON on a blocking thread. It was written on a thread that
/// drives the network, so a page of megabytes held up every gRPC call that thread served for
/// as long as the writing took (with one such thread, as here, every call). Until a page's
/// first byte comes, the longest a small call waits is held to a third of that time,
/// measured in the same run (the median of seven reads).
#[tokio::test(flavor = "multi_thread")]
async fn a_big_journal_page_holds_up_no_grpc_call() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let f = fixtures();
    let server = Server::start_with_env(
        &[
            "--protos",
            f.join("protos").to_str().unwrap(),
            "--handlers",
            f.join("handlers").to_str().unwrap(),
        ],
        &[("TOKIO_WORKER_THREADS", "1")],
    );
    // Echoes of 1 MiB ids: a page shows as many as a read's budget allows (about 8 MB).
    let big: Vec<Bytes> = (0..8)
        .map(|_| {
            let mut v = control_id(1 << 20).to_vec();
            v[4..].fill(b'a');
            Bytes::from(v)
        })
        .collect();
    echo_all(&server, &big).await;
    let client = Client::connect(server.addr, common::pool(&f.join("protos"))).await;
    let ping = || client.unary("kitchen.Kitchen/Get", serde_json::json!({"id": "ping"}));
    ping().await.unwrap();

    let admin = server.admin_addr();
    let mut ratios = Vec::new();
    for _ in 0..7 {
        let first = Arc::new(AtomicBool::new(false));
        let seen = first.clone();
        let read =
            std::thread::spawn(move || get_first_byte(admin, "/v1/journal?page_size=100", &seen));
        let mut longest = Duration::ZERO;
        while !first.load(Ordering::Acquire) {
            let started = Instant::now();
            ping().await.unwrap();
            longest = longest.max(started.elapsed());
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let (first_byte, len) = read.join().unwrap();
        assert!(
            len > 4 << 20,
            "the page holds the big messages: {len} bytes"
        );
        ratios.push((
            longest.as_secs_f64() / first_byte.as_secs_f64(),
            longest,
            first_byte,
        ));
    }
    ratios.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (ratio, longest, first_byte) = ratios[3];
    assert!(
        ratio < 1.0 / 3.0,
        "a call waited {longest:?} while the page took {first_byte:?} to come (median of {ratios:?})"
    );
}
