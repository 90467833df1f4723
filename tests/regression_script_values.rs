//! Regressions of what scripts hand back to the server: replies and coroutine values with an
//! `__eq`, statuses and error values naming huge strings, and huge `os.date` formats must not
//! run script code where nothing can pause it, hold copies outside `--script-memory`, flood the
//! log, or keep a state busy in one library call. Scripts: tests/fixtures/script_values.

mod common;

use std::time::Duration;

use common::{fixtures, Client, Server};
use serde_json::{json, Value as Json};
use tonic::{Code, Status};

/// Some cases here use a lot of memory or CPU, and one reads the watchdog: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn dir() -> std::path::PathBuf {
    fixtures().join("script_values")
}

async fn start(extra: &[&str]) -> (Server, Client, tokio::sync::MutexGuard<'static, ()>) {
    let serial = SERIAL.lock().await;
    let f = dir();
    let (s, c) = common::serve_folders(&f.join("protos"), &f.join("handlers"), extra).await;
    (s, c, serial)
}

async fn run(c: &Client, name: &str, n: i64) -> Result<Json, Status> {
    tokio::time::timeout(
        Duration::from_secs(60),
        c.unary("values.Values/Run", json!({"name": name, "n": n})),
    )
    .await
    .unwrap_or_else(|_| Err(Status::unknown("CLIENT TIMEOUT")))
}

/// The guard compared the call's reply, and values passing through coroutines, with its
/// private tokens using `==`: a table with an `__eq` had it run there (on a reply, where the
/// executor cannot pause it, so a looping `__eq` kept every call on the state waiting for the
/// whole budget), and handed it the token. Lua runs no `__eq` for any of these.
#[tokio::test]
async fn replies_and_coroutine_values_run_no_eq() {
    let (_s, c, _serial) = start(&[]).await;
    let r = run(&c, "eq_reply", 0).await;
    assert_eq!(r.unwrap()["text"], "reply");
    let r = run(&c, "eq_coroutine", 0).await;
    assert_eq!(r.unwrap()["text"], "yielded first+again ww true");
}

/// A status, and an error from a library function (`grpc.status`' code, `require`), held its
/// own copy of the string it named, outside Lua's memory: a script keeping them (128 statuses
/// naming 8 MiB under `--script-memory 64`) grew the server by gigabytes. Each keeps what a
/// status can carry now.
#[tokio::test]
async fn kept_statuses_and_errors_hold_no_copy_of_huge_strings() {
    let (s, c, _serial) = start(&["--script-memory", "64", "--script-time-ms", "20000"]).await;
    let before = common::proc_status_kib(s.pid(), "VmHWM");
    let r = run(&c, "kept_statuses", 8 << 20).await.unwrap();
    assert_eq!(r["n"], "128");
    let r = run(&c, "kept_status_codes", 8 << 20).await.unwrap();
    assert_eq!(r["n"], "64");
    let text = r["text"].as_str().unwrap();
    assert!(text.contains("is not a gRPC status code"), "{text}");
    let r = run(&c, "kept_require_errors", 8 << 20).await.unwrap();
    assert_eq!(r["n"], "64");
    let text = r["text"].as_str().unwrap();
    assert!(text.contains("require(\"xxxx"), "{text}");
    let grown = common::proc_status_kib(s.pid(), "VmHWM").saturating_sub(before);
    // Each case holds at most its 8 MiB string and Lua's own garbage, under 64 MiB; a copy
    // per status or error would be 512 MiB or more.
    assert!(
        grown < 320 * 1024,
        "the server grew by {} MiB for statuses and errors a script kept",
        grown / 1024
    );
    // What the statuses say is unchanged.
    let e = run(&c, "status_bad_utf8", 0).await.unwrap_err();
    assert_eq!(e.code(), Code::Internal);
    assert!(e.message().contains("invalid utf-8"), "{}", e.message());
    let e = run(&c, "status_long", 1 << 20).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert!(e.message().starts_with("yyyy"), "{}", e.message());
    assert!(
        e.message().ends_with("(message truncated)"),
        "{}",
        e.message()
    );
    assert!(e.message().len() <= 4096, "{}", e.message().len());
}

/// An error value's message was copied whole out of Lua and written whole to the log: a call
/// raising a 32 MiB string wrote a log line of over 100 MB (control characters escaped), and
/// held the copies outside `--script-memory` meanwhile.
#[tokio::test]
async fn huge_error_messages_are_cut_before_the_log() {
    let (s, c, _serial) = start(&["--script-time-ms", "20000"]).await;
    for name in ["error_string", "error_table"] {
        let e = run(&c, name, 32 << 20).await.unwrap_err();
        assert_eq!(e.code(), Code::Internal, "{name}: {}", e.message());
        assert!(
            e.message().ends_with("(message truncated)"),
            "{name}: {}",
            e.message()
        );
    }
    assert_eq!(run(&c, "quick", 0).await.unwrap()["text"], "quick");
    let logged: usize = s.log().iter().map(String::len).sum();
    assert!(logged < 256 * 1024, "the log took {logged} bytes");
    let line = s
        .log()
        .into_iter()
        .find(|l| l.contains("script error") && l.contains("\\n\\u{0}"))
        .expect("the error is logged, escaped");
    assert!(line.contains("(message truncated)"), "{line}");
}

/// Lua's os.date formats its whole format in one call: twelve million conversions kept the
/// state in that call for a second or more, past the watchdog, which replaced the state (and the
/// call failed). A big format is now formatted in pieces, between which the call is paused.
#[tokio::test]
async fn a_huge_date_format_is_paused_between_pieces() {
    let (_s, c, _serial) = start(&[
        "--script-states",
        "1",
        "--script-time-ms",
        "60000",
        "--script-watchdog-ms",
        "400",
    ])
    .await;
    let r = run(&c, "date_big", 12_000_000).await;
    assert_eq!(r.unwrap()["n"], "24000000");
    assert_eq!(run(&c, "quick", 0).await.unwrap()["text"], "quick");
}

/// The pieces give what Lua's own gives, errors included.
#[tokio::test]
async fn a_huge_date_format_gives_what_lua_gives() {
    let (_s, c, _serial) = start(&["--script-time-ms", "20000"]).await;
    let r = run(&c, "date_same", 0).await.unwrap();
    let text = r["text"].as_str().unwrap().to_owned();
    let words: Vec<&str> = text.split(' ').collect();
    assert!(words[..36].iter().all(|w| *w == "true"), "{text}");
    let rest = words[36..].join(" ");
    let conversion = format!(
        "bad argument #1 to '?' (invalid conversion specifier '%Q{}')",
        "%c".repeat(10)
    );
    assert!(rest.starts_with(&conversion), "{rest}");
    assert!(
        rest.contains("bad argument #2 to '?' (number expected, got string)"),
        "{rest}"
    );
    assert!(rest.ends_with("true"), "{rest}");
}

/// A reply was read whole before its size stopped it, outside the call's budget: a table that
/// holds the next one twice, 60 deep, is little memory but 2^60 tables to read, so with a
/// large `--max-message-size` a call read it for many seconds (until the watchdog replaced the
/// state). Reading a reply counts against the budget now.
#[tokio::test]
async fn a_reply_of_shared_tables_is_read_within_the_budget() {
    let (_s, c, _serial) = start(&[
        "--script-states",
        "1",
        "--script-time-ms",
        "300",
        "--max-message-size",
        "67108864",
        "--script-watchdog-ms",
        "2000",
    ])
    .await;
    let e = run(&c, "shared_reply", 60).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{}", e.message());
    assert!(e.message().contains("time budget"), "{}", e.message());
    assert_eq!(run(&c, "quick", 0).await.unwrap()["text"], "quick");
    // A reply sharing tables within the limits is still sent whole.
    let r = run(&c, "shared_reply", 3).await.unwrap();
    assert_eq!(r["kids"].as_array().unwrap().len(), 2);
}

/// Each `print` line was capped, but not how many a call printed: a loop of prints wrote tens
/// of megabytes of log per call in its time budget. A call's output stops at 256 KiB, said once.
#[tokio::test]
async fn a_call_prints_at_most_its_quota_to_the_log() {
    let (s, c, _serial) = start(&["--script-time-ms", "20000"]).await;
    let r = run(&c, "print_lines", 2000).await.unwrap();
    assert_eq!(r["text"], "printed");
    let r = run(&c, "print_lines", 10).await.unwrap();
    assert_eq!(r["text"], "printed");
    // The log is written by another thread than the one that answered: wait for the second
    // call's last line to be in it (the assertions below say what it holds).
    let waited_until = std::time::Instant::now() + Duration::from_secs(20);
    let log = loop {
        let log = s.log();
        if log.iter().any(|l| l.contains(r"10\tpppp")) || std::time::Instant::now() > waited_until {
            break log;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let printed: Vec<&String> = log.iter().filter(|l| l.contains("pppp")).collect();
    let bytes: usize = printed.iter().map(|l| l.len()).sum();
    // The first call's 65 lines or so, then the second call's 10.
    assert!(
        (60..=80).contains(&printed.len()) && bytes < 400 * 1024,
        "{} lines, {bytes} bytes printed",
        printed.len()
    );
    assert_eq!(
        log.iter()
            .filter(|l| l.contains("as much as a call may"))
            .count(),
        1
    );
    assert!(
        printed.last().unwrap().contains(r"10\tpppp"),
        "{}",
        printed.last().unwrap()
    );
}

/// The encoded forms of frozen tables were kept per state with a bound on their number only:
/// frozen replies that share a big part (a few bytes of Lua memory each, 3 MiB encoded) grew
/// the server by 3 MiB per reply sent, past `--script-memory` (gigabytes for a few thousand).
#[tokio::test]
async fn big_frozen_replies_are_not_all_kept_encoded() {
    let (s, c, _serial) = start(&["--script-states", "1", "--script-memory", "64"]).await;
    let before = common::proc_status_kib(s.pid(), "VmHWM");
    for n in 1..=200 {
        let r = run(&c, "frozen_reply", n).await.unwrap();
        assert_eq!(r["n"], n.to_string());
    }
    // Sent again, each is the same.
    let r = run(&c, "frozen_reply", 7).await.unwrap();
    assert_eq!(r["kids"].as_array().unwrap().len(), 3);
    let grown = common::proc_status_kib(s.pid(), "VmHWM").saturating_sub(before);
    assert!(
        grown < 300 * 1024,
        "the server grew by {} MiB sending 200 frozen replies",
        grown / 1024
    );
}

/// An error about a reply quoted the script's string whole: a bad key, value or enum name of
/// 16 MiB was copied (and the key's or enum name's edit distance to every field or value name
/// computed, seconds each, outside the budget) into a message the status then cut. Errors show
/// the string's start now.
#[tokio::test]
async fn bad_reply_errors_show_the_start_of_huge_strings() {
    let (_s, c, _serial) = start(&["--script-time-ms", "20000"]).await;
    // (A map key goes out before its value is read: under the size limit.)
    for (name, n, says) in [
        ("bad_key", 16 << 20, "has no field \"kkkk"),
        ("bad_value", 16 << 20, "expected int64, got string \"vvvv"),
        ("bad_enum", 16 << 20, "values.Kind has no value \"EEEE"),
        ("bad_map_value", 2 << 20, "field m[mmmm"),
    ] {
        let e = run(&c, name, n).await.unwrap_err();
        assert_eq!(e.code(), Code::Internal, "{name}: {}", e.message());
        let m = e.message();
        assert!(m.contains(says), "{name}: {m}");
        assert!(
            m.contains('…') && m.len() < 1024,
            "{name}: {} bytes: {m}",
            m.len()
        );
    }
}

/// A list whose table held keys besides its sequence (`{a, b, [10] = c}`, or a message where a
/// list of them was meant) lost those entries without a word: Lua's length sees only 1 to n.
/// Such a reply, or a server-streaming function's returned list, now fails naming the key.
#[tokio::test]
async fn list_entries_outside_the_sequence_fail_the_call() {
    let (_s, c, _serial) = start(&[]).await;
    for (name, n, says) in [
        (
            "list_stray",
            10,
            "kids: expected a list of items 1 to 2, but the table also has key integer 10",
        ),
        ("list_stray", 0, "also has key integer 0"),
        (
            "list_named",
            0,
            "kids: expected a list, got a table with key string \"text\"",
        ),
    ] {
        let e = run(&c, name, n).await.unwrap_err();
        assert_eq!(e.code(), Code::Internal, "{name}: {}", e.message());
        assert!(e.message().contains(says), "{name} {n}: {}", e.message());
    }
    let r = run(&c, "list_ok", 300).await.unwrap();
    assert_eq!(r["kids"].as_array().map(Vec::len), Some(300));
    assert_eq!(r["kids"][299]["n"], "300");

    let ok = c
        .server_stream("values.Values/List", json!({"name": "ok"}))
        .await;
    assert_eq!(ok.unwrap().len(), 3);
    for (name, says) in [
        (
            "stray",
            "expected a list of messages of items 1 to 1, but the table also has key integer 7",
        ),
        (
            "named",
            "expected a list of messages, got a table with key string \"text\"",
        ),
    ] {
        let e = c
            .server_stream("values.Values/List", json!({"name": name, "n": 7}))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Internal, "{name}: {}", e.message());
        assert!(e.message().contains(says), "{name}: {}", e.message());
    }
}

/// An error of the server's own functions (`ctx:sleep`, `grpc.status`, `ctx:send`), caught
/// with `pcall`, `xpcall` or `coroutine.resume`, was an mlua error value: `tostring` gave mlua's
/// wording and a traceback of the server's frames, and `"..." .. e` failed. It is now the
/// string a Lua library function raises; a caught `grpc.status` raised again keeps its code.
/// Uncaught, such an error named no line of the script; it now names the calling line.
#[tokio::test]
async fn caught_errors_of_server_functions_are_plain_strings() {
    let (_s, c, _serial) = start(&[]).await;
    let r = run(&c, "caught_errors", 0).await.unwrap();
    let text = r["text"].as_str().unwrap();
    assert_eq!(
        text,
        "string: bad argument #1 to 'ctx:sleep' (number expected, got string)\
         |string: grpc.status: the code must be a name or a number, not a table\
         |string: ctx:send: values.Values/Run answers with one message; return it instead\
         |handled bad argument #1 to 'ctx:sleep' (number expected, got table)"
    );
    // Not caught: the script's line, as Lua's own errors have it.
    let e = run(&c, "uncaught_server_error", 0).await.unwrap_err();
    assert_eq!(e.code(), Code::Internal, "{}", e.message());
    assert!(
        e.message().ends_with(
            "values.lua:135: bad argument #1 to 'ctx:sleep' (number expected, got string)"
        ),
        "{}",
        e.message()
    );
    let e = run(&c, "caught_status", 0).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{}", e.message());
    assert_eq!(e.message(), "kept");
}

/// A reply the fast encoder (which reads the Lua stack) gives up on is encoded again by the
/// plain one, which names what is wrong; the second reading was charged to the call on top of
/// the first, so a reply that holds a bad value after a large part cost twice its reading and a
/// call within its budget was stopped for the budget instead of told which field is wrong.
/// `ctx:send` read such a message three times (its C function's stack encoder, then
/// `try_send`'s, then the plain one). Here the chain of shared tables is read once within the
/// instruction budget (one level more, twice the reading, is not), and the bad field after it
/// is reported, returned or sent.
#[tokio::test]
async fn a_bad_reply_is_charged_for_one_reading() {
    let (_s, c, _serial) = start(&[
        "--script-instructions",
        "1500000",
        "--script-time-ms",
        "60000",
        "--max-message-size",
        "67108864",
        // A debug build reading 1 M units on a busy machine can take seconds in one C call;
        // the watchdog is not what this test is about.
        "--script-watchdog-ms",
        "60000",
    ])
    .await;
    // About 2^(n+2) units to read: 1 M for 18 levels, 2 M for 19.
    let e = run(&c, "shared_reply_bad_last", 19).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{}", e.message());
    let e = run(&c, "shared_reply_bad_last", 18).await.unwrap_err();
    assert!(
        e.message().contains("field kind") && e.message().contains("NO_SUCH_KIND"),
        "{:?}: {}",
        e.code(),
        e.message()
    );
    assert_ne!(e.code(), Code::ResourceExhausted, "{}", e.message());
    let send = |n: i64| {
        c.server_stream(
            "values.Values/List",
            json!({"name": "shared_bad_last", "n": n}),
        )
    };
    let e = send(19).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{}", e.message());
    let e = send(18).await.unwrap_err();
    assert!(
        e.message().contains("field kind") && e.message().contains("NO_SUCH_KIND"),
        "ctx:send: {:?}: {}",
        e.code(),
        e.message()
    );
}

/// Replies sent with `ctx:send` from inside coroutines, wrapped coroutines and protected calls,
/// one built by another coroutine than the one sending it, a bad one caught by `pcall`, and a
/// list returned from a coroutine: each arrives as written.
#[tokio::test]
async fn replies_sent_from_coroutines_arrive_whole() {
    let (_s, c, _serial) = start(&[]).await;
    let got = tokio::time::timeout(
        Duration::from_secs(60),
        c.server_stream("values.Values/List", json!({"name": "coroutines"})),
    )
    .await
    .expect("stream within a minute")
    .unwrap();
    let texts: Vec<&str> = got
        .iter()
        .map(|m| m["text"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        texts,
        [
            "wrapped",
            "protected",
            "made elsewhere",
            "nested",
            "field text: expected string, got integer 5",
            "returned"
        ],
        "{got:?}"
    );
    assert_eq!(got[0]["kids"][0]["n"], "1");
    assert_eq!(got[1]["kind"], "ONE");
    assert_eq!(got[2]["m"]["a"], "1");
    assert_eq!(got[3]["n"], "-1");
    assert_eq!(got[5]["kids"].as_array().unwrap().len(), 2);
    assert_eq!(got[5]["kids"][1]["m"]["a"], "1");
}
