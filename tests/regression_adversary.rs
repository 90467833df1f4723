//! Regressions found by an adversarial review: hostile scripts must not crash, hang or carry
//! state. Scripts: tests/fixtures/adversary.

mod common;

use std::time::{Duration, Instant};

use common::{fixtures, Client, Server};
use serde_json::json;

fn dir() -> std::path::PathBuf {
    fixtures().join("adversary")
}

async fn start(extra: &[&str]) -> (Server, Client) {
    start_with_budget(300, extra).await
}

/// The server with each call's time budget, in milliseconds.
async fn start_with_budget(budget_ms: u64, extra: &[&str]) -> (Server, Client) {
    let f = dir();
    let mut args = vec![
        "--protos".to_owned(),
        f.join("protos").display().to_string(),
        "--handlers".to_owned(),
        f.join("handlers").display().to_string(),
        "--script-time-ms".to_owned(),
        budget_ms.to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let s = Server::start(&args);
    let c = Client::connect(s.addr, common::pool(&f.join("protos"))).await;
    (s, c)
}

async fn run(
    c: &Client,
    name: &str,
    n: i64,
) -> (Result<serde_json::Value, tonic::Status>, Duration) {
    let t = Instant::now();
    let r = tokio::time::timeout(
        Duration::from_secs(20),
        c.unary("adv.Adv/Run", json!({"name": name, "n": n})),
    )
    .await
    .unwrap_or_else(|_| Err(tonic::Status::unknown("CLIENT TIMEOUT")));
    (r, t.elapsed())
}

fn short(r: &Result<serde_json::Value, tonic::Status>) -> String {
    let s = match r {
        Ok(v) => v.to_string(),
        Err(s) => format!("{:?}: {}", s.code(), s.message()),
    };
    s.chars().take(300).collect()
}

/// Not a regression: the survey the review ran (`cargo test --test regression_adversary -- --ignored --nocapture`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn survey() {
    let (mut s, c) = start(&["--script-states", "1"]).await;
    let names: Vec<(String, i64)> = std::env::var("ATTACKS")
        .unwrap()
        .split(',')
        .map(|a| match a.split_once(':') {
            Some((n, k)) => (n.to_owned(), k.parse().unwrap()),
            None => (a.to_owned(), 0),
        })
        .collect();
    for (name, n) in names {
        for round in 0..2 {
            // a quick call runs beside the attack, on the same state
            let c2 = c.clone();
            let probe = tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                run(&c2, "quick", 0).await
            });
            let (r, t) = run(&c, &name, n).await;
            let (pr, pt) = probe.await.unwrap();
            eprintln!(
                "ATTACK {name}:{n} #{round} {t:?} => {} || probe {pt:?} {}",
                short(&r),
                short(&pr)
            );
            if !s.is_running() {
                eprintln!("SERVER DIED after {name}");
                for l in s.log() {
                    eprintln!("LOG {l}");
                }
                panic!("died");
            }
        }
    }
    let rss = std::fs::read_to_string(format!("/proc/{}/status", s.pid())).unwrap();
    eprintln!("{}", rss.lines().find(|l| l.starts_with("VmRSS")).unwrap());
    for l in s.log() {
        if l.contains("panic") || l.contains("WARN") || l.contains("ERROR") || l.contains("replac")
        {
            eprintln!("LOG {}", l.chars().take(300).collect::<String>());
        }
    }
}

/// `error({message = <3 MiB>})`: the status went out whole as a `grpc-message` trailer larger
/// than clients accept, so the client saw an HTTP/2 error instead of INTERNAL.
#[tokio::test]
async fn huge_error_message_reaches_the_client_as_a_status() {
    let (_s, c) = start(&[]).await;
    let (r, _) = run(&c, "big_msg", 0).await;
    let s = r.expect_err("the call fails");
    assert_eq!(s.code(), tonic::Code::Internal, "{s:?}");
    assert!(
        s.message().ends_with("(message truncated)"),
        "{}",
        short(&Err(s.clone()))
    );
    assert!(s.message().len() <= 4096, "{}", s.message().len());
    // and the server still answers
    let (r, _) = run(&c, "quick", 0).await;
    assert_eq!(r.unwrap()["text"], "quick");
}

/// Trailers near the script's limit (8 KiB) and an error message of 4 KiB whose every byte is
/// percent-encoded (12 KiB on the wire): the Trailers-Only answer passed the 16 KiB clients
/// accept, so the client saw an HTTP/2 error instead of the status and the trailers.
#[tokio::test]
async fn script_trailers_and_an_encoded_message_fit_what_clients_accept() {
    let (_s, c) = start(&[]).await;
    let (r, _) = run(&c, "trailers_odd_msg", 0).await;
    let s = r.expect_err("the call fails");
    assert_eq!(
        s.code(),
        tonic::Code::Internal,
        "{}",
        short(&Err(s.clone()))
    );
    assert!(s.message().contains("éé"), "{}", short(&Err(s.clone())));
    assert_eq!(
        s.metadata().get("x-t7").map(|v| v.len()),
        Some(1000),
        "{:?}",
        s.metadata()
    );
    let (r, _) = run(&c, "quick", 0).await;
    assert_eq!(r.unwrap()["text"], "quick");
}

/// Endless work spread over fresh coroutines that each end before the hook first checks them
/// (Lua counts a hook's instructions per thread, from zero in a new one): nothing was charged
/// but the loop that made them, and the call ran on and on. Now making a coroutine pays for
/// the instructions it runs before its first check. (Where the clock pauses scripts, the
/// default, the signal finds whichever coroutine runs; both ways are tried.)
#[tokio::test]
async fn work_spread_over_short_coroutines_meets_the_budget() {
    for mode in [&["--script-instructions", "20000000"][..], &[]] {
        let (_s, c) = start(mode).await;
        for name in ["short_coroutines", "short_coroutines_create"] {
            for n in [2400, 200] {
                let (r, _) = run(&c, name, n).await;
                let s = r.expect_err("the call fails");
                assert_eq!(
                    s.code(),
                    tonic::Code::ResourceExhausted,
                    "{mode:?} {name}:{n}: {}",
                    short(&Err(s.clone()))
                );
                assert!(s.message().contains("budget"), "{}", s.message());
            }
        }
        let (r, _) = run(&c, "quick", 0).await;
        assert_eq!(r.unwrap()["text"], "quick");
    }
}

/// 2000 `ctx:set_trailer` calls of 1 KiB each: the trailers went out whole (2 MiB), which the
/// client refused with an HTTP/2 error; now `ctx:set_trailer` fails past 7680 bytes in all
/// (the rest of a client's 8 KiB is left to the protocol's own entries).
#[tokio::test]
async fn huge_script_metadata_fails_in_the_script_not_on_the_wire() {
    let (_s, c) = start(&[]).await;
    let (r, _) = run(&c, "hdr_big", 0).await;
    let s = r.expect_err("the call fails");
    assert_eq!(s.code(), tonic::Code::Internal, "{s:?}");
    assert!(
        s.message().contains("may take 7680 bytes in all"),
        "{}",
        s.message()
    );
}

/// `grpc.status(0/0, …)` read NaN as 0 and answered "an error needs a code other than OK".
#[tokio::test]
async fn nan_status_code_is_not_a_code() {
    let (_s, c) = start(&[]).await;
    let (r, _) = run(&c, "status_odd", 4).await;
    let s = r.expect_err("the call fails");
    assert!(
        s.message().contains("NaN is not a gRPC status code"),
        "{}",
        s.message()
    );
}

/// `ctx:set_trailer("connection", "close")` (or `te`, …): HTTP/2 forbids the field, so the
/// server reset the stream and the client saw CANCELLED instead of the reply; `grpc-status`
/// set by a script contradicted the real status. Reserved keys now fail in the script.
#[tokio::test]
async fn reserved_metadata_keys_fail_in_the_script() {
    let (_s, c) = start(&[]).await;
    let (r, _) = run(&c, "hdr", 0).await;
    let text = r.expect("hdr answers").to_string();
    // bad key, x-bin, newline value, grpc-status, :path, content-type, "", X-UPPER, x-big, te,
    // connection, grpc-message, non-ASCII key
    assert!(
        text.contains(
            "falsefalse truetrue falsefalse falsefalse falsefalse falsefalse falsefalse truetrue \
             falsefalse falsefalse falsefalse falsefalse falsefalse"
        ),
        "{text}"
    );
}

/// A call stuck where its state cannot pause it (here comparing long strings, work inside single
/// instructions, with a budget that lasts seconds) never got an answer: the watchdog replaced
/// its state, but the client waited until its own deadline. Now the watchdog answers it with
/// UNAVAILABLE and the replacement state serves the next call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stuck_call_is_answered_when_its_state_is_replaced() {
    // Counting instructions, the loop is checked only every 10 000 of them: stuck for good.
    let (s, c) = start_with_budget(
        600_000,
        &[
            "--script-states",
            "1",
            "--script-watchdog-ms",
            "300",
            "--script-instructions",
            "4000000000",
        ],
    )
    .await;
    let (r, took) = run(&c, "stuck_in_vm", STUCK_STEPS).await;
    let status = r.expect_err("the stuck call fails");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(took < Duration::from_secs(10), "answered after {took:?}");
    let (r, _) = run(&c, "quick", 0).await;
    assert_eq!(r.unwrap()["text"], "quick");
    // The log line is written after the answer and read from the server's stderr meanwhile.
    let logged = Instant::now();
    while !s.log().iter().any(|l| l.contains("replaced")) {
        assert!(logged.elapsed() < Duration::from_secs(10), "{:?}", s.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `local function f() pcall(f) pcall(f) end f()`: a tree of protected calls that keeps hitting
/// Lua's C-stack limit, where the instruction hook itself cannot run, never met its budget and
/// spun a core for good. Protected calls now nest only so deep, so the hook keeps running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pcall_recursion_tree_meets_its_budget() {
    let (_s, c) = start(&["--script-states", "1", "--script-watchdog-ms", "60000"]).await;
    let (r, took) = run(&c, "pcall_recurse", 0).await;
    let status = r.expect_err("the call ends");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    let (r, _) = run(&c, "quick", 0).await;
    assert_eq!(r.unwrap()["text"], "quick");
}

/// The CPU time (utime + stime, in clock ticks: 100 a second on Linux) `pid` uses over `span`.
fn cpu_ticks_over(pid: u32, span: Duration) -> u64 {
    let ticks = || {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        let field = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        // After the command: state is field 0, utime 11, stime 12.
        field(11) + field(12)
    };
    let before = ticks();
    std::thread::sleep(span);
    ticks().saturating_sub(before)
}

/// `close_nested`: an endless `__close` pending in the function the budget stopped. The hook
/// raised the stop, and to raise it mlua clears the interrupted function's stack, which in
/// Lua 5.4 runs that function's pending `__close` handlers at once, inside the hook, where no
/// hook runs: the watchdog answered UNAVAILABLE and replaced the state, but the old thread spun
/// a core for good. Now the hook yields the coroutine and its resumer raises the stop; where
/// Lua cannot yield (an `__index` called from C), the `__close` handlers setmetatable saw do
/// nothing once the call is stopped. Each call ends with RESOURCE_EXHAUSTED, no state is
/// replaced, and the server goes back to idle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_call_leaves_no_close_handler_running() {
    // A loop in an `__index` called from C runs its whole budget in one go (Lua cannot pause it
    // there): the watchdog must not take that for a stuck state on a busy machine.
    let (s, c) = start(&["--script-states", "1", "--script-watchdog-ms", "4000"]).await;
    for name in [
        "close_nested",
        "close_sort",
        "close_in_c",
        "close_in_close",
        "close_coroutine",
        "close_for",
        // Coroutines stopped where they cannot yield keep hooks off: resuming and closing
        // them again, a late `__close` inside their pcall, nesting, an `__index` called from
        // C around them.
        "co_dead_close",
        "co_pcall_late_close",
        "co_deep",
        "co_in_c_close",
        // A tree of closes, each run from the handler of the one above, to the C-stack limit.
        "close_recurse",
        // An endless `__close` of a coroutine dead by an error, run when it is closed; a late
        // one below the levels looked at before a close; stack walks before unwinding.
        "park_spin",
        "late_deep_close",
        "walk_many",
        // Error values whose metamethods never return; the stop raised with memory full.
        "err_meta",
        "mem_then_spin",
        "mem_then_spin_co",
    ] {
        let (r, took) = run(&c, name, 0).await;
        let status = r.expect_err("the call is stopped");
        assert_eq!(
            status.code(),
            tonic::Code::ResourceExhausted,
            "{name}: {status:?}"
        );
        assert!(
            took < Duration::from_secs(10),
            "{name}: answered after {took:?}"
        );
    }
    let (r, _) = run(&c, "quick", 0).await;
    assert_eq!(r.unwrap()["text"], "quick");
    let pid = s.pid();
    let ticks = tokio::task::spawn_blocking(move || cpu_ticks_over(pid, Duration::from_secs(2)))
        .await
        .unwrap();
    // Idle is a tick or two; a spinning thread takes most of a core (up to 200 ticks).
    assert!(
        ticks < 20,
        "the server used {ticks} ticks of CPU in 2 s of idling"
    );
    assert!(
        !s.log().iter().any(|l| l.contains("replaced")),
        "{:?}",
        s.log()
    );
}

/// `close_sort_late`: a `__close` given to a metatable after `setmetatable` (so the sandbox never
/// saw it), pending in a sort comparator (where Lua could not yield) when the budget stops the call.
/// The hook raised the stop through mlua, which first clears the interrupted function's stack,
/// and Lua 5.4 ran that function's `__close` right there, inside the hook, where no hook runs:
/// the watchdog answered UNAVAILABLE and replaced the state, but the old thread spun a core for
/// good. The hook now raises the stop with the interrupted function left alone; the `__close`
/// runs once the unwinding has turned hooks back on, under the call's stopped budget.
/// `close_in_c_late` is the same in a `__close` that coroutine.close runs (which Lua runs from C).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_close_where_lua_cannot_yield_does_not_spin_its_thread() {
    let (s, c) = start(&["--script-states", "1", "--script-watchdog-ms", "4000"]).await;
    let (r, took) = run(&c, "close_sort_late", 0).await;
    let status = r.expect_err("the call is stopped");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    let (r, took2) = run(&c, "close_in_c_late", 0).await;
    let took = took.max(took2);
    let pid = s.pid();
    let window = Duration::from_secs(2);
    let ticks = tokio::task::spawn_blocking(move || cpu_ticks_over(pid, window))
        .await
        .unwrap();
    // Linux counts 100 ticks a second: a spinning thread takes what it gets of a core (up to 200
    // ticks here; under half of that on a busy machine), an idle server a tick or two. The bound
    // is a fifth of one core.
    let bound = u64::try_from(window.as_millis()).unwrap() / 10 / 5;
    assert!(
        ticks < bound,
        "the server used {ticks} ticks of CPU in {window:?} after the call ended (bound {bound})"
    );
    let status = r.expect_err("the call is stopped");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(took < Duration::from_secs(10), "answered after {took:?}");
    let (r, _) = run(&c, "quick", 0).await;
    assert_eq!(r.unwrap()["text"], "quick");
    assert!(
        !s.log().iter().any(|l| l.contains("replaced")),
        "{:?}",
        s.log()
    );
}

/// Opens a `Stream` call that runs attack `name` and waits for its "started" message (the attack
/// runs from then on); the task returned waits for the attack's reply and notes when it came.
async fn started(
    c: &Client,
    name: &str,
    n: i64,
) -> tokio::task::JoinHandle<(Result<Option<serde_json::Value>, tonic::Status>, Instant)> {
    let mut stream = c
        .server_stream_open("adv.Adv/Stream", json!({"name": name, "n": n}))
        .await
        .expect("the stream opens");
    let first = tokio::time::timeout(Duration::from_secs(20), stream.message())
        .await
        .expect("started within 20 s")
        .expect("a message")
        .expect("a message");
    assert_eq!(common::to_json(&first)["text"], "started");
    tokio::spawn(async move {
        let reply = tokio::time::timeout(Duration::from_secs(60), stream.message()).await;
        let at = Instant::now();
        let reply = match reply {
            Ok(r) => r.map(|m| m.map(|m| common::to_json(&m))),
            Err(_) => Err(tonic::Status::unknown("CLIENT TIMEOUT")),
        };
        (reply, at)
    })
}

/// With one state, quick calls made one after another while attack `name` runs must all answer
/// before it. (Three of them: a call held up until the attack's turn ends answers together with
/// the attack, in either order; the next one comes clearly after.)
async fn quick_calls_overtake(name: &str, n: i64, text: &str) {
    let (_s, c) = start_with_budget(
        600_000,
        &["--script-states", "1", "--script-watchdog-ms", "60000"],
    )
    .await;
    quick_calls_overtake_on(&c, name, n, text).await;
}

/// [`quick_calls_overtake`] on a server already started (with one state).
async fn quick_calls_overtake_on(c: &Client, name: &str, n: i64, text: &str) {
    quick_calls_overtake_after(c, name, n, text, Duration::ZERO).await;
}

/// [`quick_calls_overtake_on`], the quick calls made `after` the attack started (once it is
/// past work of its own that the hook pauses anyway).
async fn quick_calls_overtake_after(c: &Client, name: &str, n: i64, text: &str, after: Duration) {
    let c = c.clone();
    let long = started(&c, name, n).await;
    tokio::time::sleep(after).await;
    let mut quick_done = Instant::now();
    for i in 0..3 {
        let (r, took) = run(&c, "quick", i).await;
        quick_done = Instant::now();
        assert_eq!(r.expect("the quick call answers")["text"], "quick");
        eprintln!("{name}: quick call {i} took {took:?}");
    }
    let (reply, long_done) = long.await.unwrap();
    let reply = reply.expect("the long call answers").expect("a reply");
    assert_eq!(reply["text"], text, "{reply}");
    eprintln!(
        "{name}: the long call ended {:?} after the quick calls",
        long_done.saturating_duration_since(quick_done)
    );
    assert!(
        quick_done < long_done,
        "the last quick call answered {:?} after the long one",
        quick_done - long_done
    );
}

/// A loop of instructions that each work for milliseconds inside the VM (comparing two 64 MiB
/// strings) was checked by the count hook only every 10 000 instructions, minutes apart, so a
/// quick call on the same state waited for the whole loop. The clock's signal now pauses it at
/// the next instruction, and quick calls answer while the loop goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loop_of_long_instructions_lets_quick_calls_overtake() {
    quick_calls_overtake("stuck_in_vm", STUCK_STEPS, &format!("{STUCK_STEPS},x")).await;
}

/// Loop steps per comparison of `sort_long` (about 12 000 comparisons): seconds of work.
const SORT_STEPS: i64 = 5_000;
/// Loop steps per call of `gsub_long`'s replacement function (2 000 calls): seconds of work.
const GSUB_STEPS: i64 = 30_000;
/// Loop steps `spin_in_c` runs in a `__close` that coroutine.close runs: seconds of work.
const SPIN_IN_C_STEPS: i64 = 100_000_000;
/// Coroutines `walk_many` fails, each with a stack walk before it unwinds: seconds of work.
const WALK_MANY: i64 = 150;
/// Comparisons of 64 MiB strings `stuck_in_vm` runs between two checks of the hook: seconds.
const STUCK_STEPS: i64 = 500;

/// A sort whose comparator runs for seconds held its state's thread the whole time (Lua's sort
/// calls the comparator from C, where the instruction hook cannot pause it): a quick call on the
/// same state waited for the whole sort. `table.sort` now runs in Lua, so the hook pauses it
/// every time slice like any script, and quick calls answer while the sort goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_sort_comparator_does_not_hold_up_other_calls() {
    quick_calls_overtake("sort_long", SORT_STEPS, "sorted").await;
}

/// The same for a `string.gsub` replacement function: gsub's loop now runs in Lua too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_gsub_callback_does_not_hold_up_other_calls() {
    quick_calls_overtake("gsub_long", GSUB_STEPS, "cbcbcb").await;
}

/// Bytes the backtracking pattern attacks match over (`find_long` and the others): about
/// `n^2 / 2` steps of the matcher, seconds of work.
const PATTERN_BYTES: i64 = 8_000;

/// A backtracking match inside `string.find` held its state's thread for as long as it ran (up
/// to the call's budget): the matcher paid for its steps but could not be paused, so a quick
/// call on the same state waited for the whole match. A match still running when its time
/// slice ends now goes on as a job on a stack of its own, suspended at each slice's end, and the
/// hook pauses the call between two resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_pattern_find_does_not_hold_up_other_calls() {
    quick_calls_overtake("find_long", PATTERN_BYTES, "found nil").await;
}

/// The same where instructions are counted (`--script-instructions`): the job's suspensions
/// at the end of each time slice did not get the call paused, and a quick call on the same
/// state waited for the whole match. The count hook is now swapped for a one-shot check at the
/// next instruction, as the clock's signal sets one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_pattern_find_with_counted_instructions_does_not_hold_up_other_calls() {
    let (_s, c) = start_with_budget(
        600_000,
        &[
            "--script-states",
            "1",
            "--script-watchdog-ms",
            "60000",
            "--script-instructions",
            "100000000000",
        ],
    )
    .await;
    quick_calls_overtake_on(&c, "find_long", PATTERN_BYTES, "found nil").await;
}

/// The same for `string.match`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_pattern_match_does_not_hold_up_other_calls() {
    quick_calls_overtake("match_long", PATTERN_BYTES, "matched nil").await;
}

/// The same for a step of a `string.gmatch` iterator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_pattern_gmatch_does_not_hold_up_other_calls() {
    quick_calls_overtake("gmatch_long", PATTERN_BYTES, "matches 0").await;
}

/// The same for `string.gsub` with a replacement string (its loop runs in Rust).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_pattern_gsub_does_not_hold_up_other_calls() {
    quick_calls_overtake("gsub_string_long", PATTERN_BYTES, "replaced 0").await;
}

/// The same for the search of each match of `string.gsub` with a table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_pattern_gsub_with_a_table_does_not_hold_up_other_calls() {
    quick_calls_overtake("gsub_table_long", PATTERN_BYTES, "replaced 0").await;
}

/// `table.concat` over a million numbers made a string of each inside one C call, about half
/// a second in all, while every other call on the state waited. A long range is now joined in
/// pieces, each its own call, and the hook pauses the call between two of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joining_many_numbers_does_not_hold_up_other_calls() {
    let (_s, c) = start_with_budget(
        600_000,
        &["--script-states", "1", "--script-watchdog-ms", "60000"],
    )
    .await;
    // The quick calls come once the wrapper has read the table (in Lua, paused like any code)
    // and is joining it.
    let after = Duration::from_millis(250);
    quick_calls_overtake_after(&c, "concat_numbers_long", 0, "8777784 bytes", after).await;
}

/// The server [`quick_calls_overtake`] starts, with room for inputs of a hundred megabytes.
async fn start_for_big_inputs() -> (Server, Client) {
    start_with_budget(
        600_000,
        &[
            "--script-states",
            "1",
            "--script-watchdog-ms",
            "60000",
            "--script-memory",
            "1024",
        ],
    )
    .await
}

/// MiB of the strings the `*_long` string attacks work on.
const BIG_STRING_MIB: i64 = 100;

/// `string.upper` and `lower` of a 100 MiB string walked it a byte at a time in one C call
/// (0.15 s in a release build) while every other call on the state waited. Strings from 64 KiB
/// on are now done in Rust in pieces, paid for one by one, and the hook pauses the call between
/// two pieces; only making the Lua string at the end is one step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changing_the_case_of_a_big_string_does_not_hold_up_other_calls() {
    let (_s, c) = start_for_big_inputs().await;
    let bytes = BIG_STRING_MIB << 20;
    quick_calls_overtake_on(&c, "upper_long", BIG_STRING_MIB, &format!("upper {bytes}")).await;
    quick_calls_overtake_on(&c, "lower_long", BIG_STRING_MIB, &format!("lower {bytes}")).await;
}

/// The same for `string.reverse`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reversing_a_big_string_does_not_hold_up_other_calls() {
    let (_s, c) = start_for_big_inputs().await;
    let text = format!("reverse {}", BIG_STRING_MIB << 20);
    quick_calls_overtake_on(&c, "reverse_long", BIG_STRING_MIB, &text).await;
}

/// The same for `utf8.len`, which makes no string: the whole count pauses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counting_the_characters_of_a_big_string_does_not_hold_up_other_calls() {
    let (_s, c) = start_for_big_inputs().await;
    let text = format!("utf8.len {}", BIG_STRING_MIB << 19);
    quick_calls_overtake_on(&c, "utf8_len_long", BIG_STRING_MIB, &text).await;
}

/// The same for `utf8.offset` of the last character, which walks the whole string.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_the_last_character_of_a_big_string_does_not_hold_up_other_calls() {
    let (_s, c) = start_for_big_inputs().await;
    let text = format!("utf8.offset {}", BIG_STRING_MIB << 20);
    quick_calls_overtake_on(&c, "utf8_offset_long", BIG_STRING_MIB, &text).await;
}

/// `string.format("%q")` of a 30 MiB string full of zero bytes escaped them a byte at a time
/// in one C call of Lua's, over a second. Strings from 64 KiB on are now quoted in Rust in
/// pieces, and the hook pauses the call between two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quoting_a_big_string_does_not_hold_up_other_calls() {
    let (_s, c) = start_for_big_inputs().await;
    // Each zero byte (every other byte) is quoted as two: "\0".
    let text = format!("format {}", (30 << 20) * 3 / 2 + 2);
    quick_calls_overtake_on(&c, "quote_long", 30, &text).await;
}

/// `tonumber` of 100 MiB of digits read them a byte at a time in one C call of Lua's (about
/// 0.1 s in a release build), so did `tonumber(s, 8)` and `s + 1`, while every other call on
/// the state waited. Strings from 64 KiB on are now read in Rust in pieces, paid for one by
/// one, into a short numeral Lua reads as it reads the long one (or, with a base, the integer),
/// and the hook pauses the call between two pieces.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_a_long_numeral_does_not_hold_up_other_calls() {
    let (_s, c) = start_for_big_inputs().await;
    quick_calls_overtake_on(&c, "tonumber_long", BIG_STRING_MIB, "tonumber 0").await;
    quick_calls_overtake_on(&c, "tonumber_base_long", BIG_STRING_MIB, "base -1").await;
    quick_calls_overtake_on(&c, "arithmetic_long", BIG_STRING_MIB, "arithmetic 1").await;
}

/// Elements of the tables the shifting attacks make (just under a power of two, so that the
/// shift itself makes the table grow at most once more).
const BIG_TABLE: i64 = (1 << 22) - 1;

/// `table.move`, and `table.insert` and `remove` at the front, shifted four million elements in
/// one C call of Lua's while every other call on the state waited. A long plain shift is now
/// done by Lua's own move in pieces of 4 096 elements, in the order Lua's loop takes, and the
/// hook pauses the call between two pieces.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shifting_a_big_table_does_not_hold_up_other_calls() {
    let (_s, c) = start_for_big_inputs().await;
    let n = BIG_TABLE;
    let moved = format!("moved 1,1,{}", n - 1);
    quick_calls_overtake_on(&c, "move_big", n, &moved).await;
    let inserted = format!("inserted 0,1,{}", n + 1);
    quick_calls_overtake_on(&c, "insert_big", n, &inserted).await;
    let removed = format!("removed 1,2,{}", n - 1);
    quick_calls_overtake_on(&c, "remove_big", n, &removed).await;
}

/// The same shifts at positions Lua's functions convert (a float with an integral value, numeric
/// strings) skipped the pieces, and `table.insert` at a float position was not even paid for;
/// a move from a string (which reads nils through its `__index`) too. Each was one C call over
/// four million elements.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shifting_a_big_table_at_converted_positions_does_not_hold_up_other_calls() {
    let (_s, c) = start_for_big_inputs().await;
    let n = BIG_TABLE;
    let moved = format!("moved 1,1,{}", n - 1);
    quick_calls_overtake_on(&c, "move_converted_long", n, &moved).await;
    let inserted = format!("inserted 0,1,{}", n + 1);
    quick_calls_overtake_on(&c, "insert_float_long", n, &inserted).await;
    let removed = format!("removed 1,2,{}", n - 1);
    quick_calls_overtake_on(&c, "remove_string_long", n, &removed).await;
    quick_calls_overtake_on(&c, "move_from_string_long", n, "cleared nil,nil,0").await;
}

/// `table.move` from a string (which Lua's move reads nils from) into a table whose `__newindex`
/// is a function went to Lua's own move, which called the function from C, where the hook could
/// not pause it: every other call on the state waited for all twenty writes. The loop now runs
/// in Lua, as for a table source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moving_from_a_string_into_a_newindex_function_does_not_hold_up_other_calls() {
    quick_calls_overtake("newindex_from_string", 1_000_000, "writes 20").await;
}

/// The same for a match inside a `__close` handler run by `coroutine.close`, inside a
/// coroutine made by `coroutine.wrap`, and inside an `xpcall` message handler: each job is
/// resumed from Lua in a coroutine that can yield, so the call is paused there too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_pattern_in_close_wrap_or_handler_does_not_hold_up_other_calls() {
    let (_s, c) = start_with_budget(
        600_000,
        &["--script-states", "1", "--script-watchdog-ms", "60000"],
    )
    .await;
    for name in ["find_in_close", "find_in_wrap", "find_in_handler"] {
        quick_calls_overtake_on(&c, name, PATTERN_BYTES, "found nil").await;
    }
}

/// `pcall` around a long match cannot swallow the call's stop: a job that finds its call over
/// budget ends with the abort, and the next check raises it again wherever it is caught.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pcall_around_long_matches_does_not_outlive_the_budget() {
    let (_s, c) = start_with_budget(1_000, &["--script-states", "1"]).await;
    let (r, took) = run(&c, "find_pcall_loop", PATTERN_BYTES).await;
    let status = r.expect_err("the loop runs past its budget");
    assert_eq!(
        status.code(),
        tonic::Code::ResourceExhausted,
        "{}",
        short(&Err(status.clone()))
    );
    assert!(
        status.message().contains("time budget"),
        "{}",
        status.message()
    );
    assert!(took < Duration::from_secs(10), "{took:?}");
    let (r, _) = run(&c, "quick", 0).await;
    assert_eq!(r.unwrap()["text"], "quick");
}

/// A match that ran past `--script-watchdog-ms` without returning to Lua had its state replaced
/// as stuck (the call got UNAVAILABLE, and every other call on the state was lost with it),
/// although its budget was longer. Paused at every time slice, it now ends at its budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_pattern_match_ends_at_its_budget_not_at_the_watchdog() {
    let (s, c) = start_with_budget(
        1_500,
        &["--script-states", "1", "--script-watchdog-ms", "400"],
    )
    .await;
    let (r, took) = run(&c, "find_long", 1_000_000).await;
    let status = r.expect_err("the match runs past its budget");
    assert_eq!(
        status.code(),
        tonic::Code::ResourceExhausted,
        "{}",
        short(&Err(status.clone()))
    );
    assert!(
        status.message().contains("time budget"),
        "{}",
        status.message()
    );
    assert!(took >= Duration::from_millis(1_400), "{took:?}");
    assert!(
        !s.log().iter().any(|l| l.contains("replaced")),
        "{:?}",
        s.log()
    );
    let (r, _) = run(&c, "quick", 0).await;
    assert_eq!(r.unwrap()["text"], "quick");
}

/// Loop steps a metamethod of the `*_long` attacks runs (twice for two-element ones): about a
/// second of work in all.
const META_STEPS: i64 = 20_000_000;

/// Library functions that call script code (a `__tostring`, an `__index`, an `__lt`...) called it
/// from C, where Lua cannot yield: a slow metamethod held up every call on its state until it
/// returned. They now call it from Lua, where the hook pauses it every time slice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_tostring_metamethod_does_not_hold_up_other_calls() {
    quick_calls_overtake("tostring_long", 2 * META_STEPS, "slow").await;
}

/// An xpcall message handler, which Lua calls from C at the error: it now runs from Lua once the
/// failed call has unwound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_xpcall_handler_does_not_hold_up_other_calls() {
    quick_calls_overtake("xpcall_long", 2 * META_STEPS, "handled").await;
}

/// A `__close` that runs while an error unwinds through `pcall` is paused like any script code
/// (Lua 5.4 finishes a `pcall` in a coroutine where it can yield).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_close_while_pcall_unwinds_does_not_hold_up_other_calls() {
    quick_calls_overtake("close_in_pcall_long", 2 * META_STEPS, "false,unwound").await;
}

/// A `__close` that `coroutine.close` runs, running for seconds, held its state's thread the
/// whole time (Lua runs it from C, where nothing can yield, so the hook could not pause it): a
/// quick call on the same state waited for it. The coroutine now unwinds itself and runs its
/// handlers inside itself, where the hook pauses them like any script code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_close_run_by_coroutine_close_does_not_hold_up_other_calls() {
    quick_calls_overtake("spin_in_c", SPIN_IN_C_STEPS, "5000000050000000,x").await;
}

/// The same for a `__close` pending in a coroutine dead by an error, which runs when
/// coroutine.close closes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_close_of_a_coroutine_dead_by_an_error_does_not_hold_up_other_calls() {
    quick_calls_overtake("park_spin", SPIN_IN_C_STEPS, "false,dies,5000000050000000").await;
}

/// Uncaught errors in coroutines with deep stacks full of locals: the walk over those locals
/// before each unwinding runs where the hook cannot pause it, so it must stay short.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stack_walks_before_unwinding_do_not_hold_up_other_calls() {
    quick_calls_overtake("walk_many", WALK_MANY, &format!("walked {WALK_MANY}")).await;
}

/// `ctx:sleep` in a `__close` that `coroutine.close` runs failed ("cannot wait ... where Lua
/// cannot yield"): Lua runs that handler from C. It now runs inside the coroutine, which waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_run_by_coroutine_close_may_wait() {
    let (_s, c) = start(&["--script-states", "1"]).await;
    let (r, _) = run(&c, "sleep_in_close", 0).await;
    assert_eq!(r.expect("the call answers")["text"], "slept,inner");
}

/// A metamethod that is a callable table (a table with `__call`) went to Lua's C function, which
/// called it from C; it now runs from Lua like a function metamethod.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_callable_table_metamethod_does_not_hold_up_other_calls() {
    quick_calls_overtake("callable_tostring_long", 2 * META_STEPS, "callable").await;
}

/// xpcall with its handler run from Lua answers as Lua's does: the function's results, the
/// handler's answer, a failing handler retried until "error in error handling", Lua's argument
/// error; the one visible difference is that pending `__close` handlers run before the handler.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xpcall_answers_as_lua_does() {
    let (_s, c) = start(&[]).await;
    let (r, _) = run(&c, "xpcall_semantics", 0).await;
    let text = r.expect("an answer")["text"].as_str().unwrap().to_owned();
    let lines: Vec<&str> = text.split('|').collect();
    assert_eq!(
        lines,
        [
            "true,3,ok",
            "false,H:boom",
            "false,7",
            "false,error in error handling",
            "true",
            "false,bad argument #2 to 'xpcall' (function expected, got no value)",
            "false,bad argument #2 to 'xpcall' (function expected, got number)",
            "false,E",
            "close:E handler:E",
        ]
    );
}

/// `string.format("%s", v)` (the same `__tostring`, through Lua's luaL_tolstring).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_format_tostring_does_not_hold_up_other_calls() {
    quick_calls_overtake("format_long", 2 * META_STEPS, "<slow>").await;
}

/// `print(v)` (the server's print converted with luaL_tolstring, from Rust).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_print_tostring_does_not_hold_up_other_calls() {
    quick_calls_overtake("print_long", 2 * META_STEPS, "printed").await;
}

/// `table.concat` over a table with an `__index` (and `__len`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_concat_index_does_not_hold_up_other_calls() {
    quick_calls_overtake("concat_long", META_STEPS, "v1,v2").await;
}

/// `table.unpack` over a table with an `__index` (and `__len`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_unpack_index_does_not_hold_up_other_calls() {
    quick_calls_overtake("unpack_long", META_STEPS, "v1v2").await;
}

/// `table.insert(t, v)` into a table with an `__newindex`: Lua's C function made the write, so
/// the metamethod ran where the hook cannot pause it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_insert_newindex_does_not_hold_up_other_calls() {
    quick_calls_overtake("insert_newindex_long", 2 * META_STEPS, "in0").await;
}

/// `table.insert(t, v)` into a table with an `__len` (asked once, from C, before the write).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_insert_len_does_not_hold_up_other_calls() {
    quick_calls_overtake("insert_len_long", 2 * META_STEPS, "in").await;
}

/// `table.move` from a table with an `__index`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_move_index_does_not_hold_up_other_calls() {
    quick_calls_overtake("move_long", META_STEPS, "v1v2").await;
}

/// `ipairs` over a table with an `__index`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_ipairs_index_does_not_hold_up_other_calls() {
    quick_calls_overtake("ipairs_long", 2 * META_STEPS, "v1v2").await;
}

/// `math.min` and `math.max` over tables with an `__lt`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_min_max_lt_does_not_hold_up_other_calls() {
    quick_calls_overtake("min_long", META_STEPS, "min1 max2").await;
}

/// `os.time` over a table with an `__index`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_os_time_index_does_not_hold_up_other_calls() {
    quick_calls_overtake("time_long", 2 * META_STEPS, "year 2020").await;
}

/// `"1" + v`: Lua's string arithmetic calls `v`'s `__add` from C.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_string_arith_metamethod_does_not_hold_up_other_calls() {
    quick_calls_overtake("arith_long", 2 * META_STEPS, "added").await;
}

/// `table.sort` hands a short array of plain numbers to Lua's C sort. It judged the table by
/// `#t`, so an `__len` that removed the table's metatable and reported two numbers sent a table
/// of a hundred elements, most with an `__lt`, to C: Lua's sort took the raw length and called
/// each `__lt` from C, where the hook cannot pause it (a slow one held up every call on the
/// state), and a long array of numbers was sorted there without its charge. Lua sorts the two
/// elements `__len` reports, and so does `table.sort` now.
#[tokio::test]
async fn sort_whose_len_drops_its_metatable_sorts_what_len_reports() {
    let (_s, c) = start(&[]).await;
    let (r, _) = run(&c, "sort_len_unhooks", 0).await;
    let r = r.expect("the sort ends");
    assert_eq!(r["text"], "1,2; compared: 0, from C: 0", "{r}");
}

/// `table.insert(t, 1, v)` and `table.remove(t, 1)` ask `#t` in the wrapper (to charge the shift)
/// and again in Lua's C function: an `__len` that answered 1, then `math.maxinteger - 1`, had
/// the C function shift elements for ever, where no hook runs. The call ended only when the
/// watchdog replaced its state, and the state's thread spun on, a core lost per call. For a
/// table with a metatable `#t` is now asked once, as Lua does, and the shift runs in Lua, where
/// the budget stops a long one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insert_and_remove_ask_len_once() {
    let (_s, c) = start(&["--script-states", "1", "--script-watchdog-ms", "60000"]).await;
    for n in [0, 1] {
        let (r, _) = run(&c, "insert_len_flip", n).await;
        assert_eq!(r.expect("the call answers")["text"], "done");
    }
    // A length that is huge from the start: the shift in Lua meets the budget.
    for n in [2, 3] {
        let (r, _) = run(&c, "insert_len_flip", n).await;
        let status = r.expect_err("the shift passes the budget");
        assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    }
    let (r, _) = run(&c, "quick", 0).await;
    assert_eq!(r.unwrap()["text"], "quick");
}

/// A call stuck where its state cannot pause it (comparing long strings, work inside single
/// instructions) keeps its state's thread until it returns, yet new calls were still handed to that state whenever it
/// had no more calls than the others, and waited for it. The pool now passes over a state whose
/// current turn has run far past a time slice: calls arriving meanwhile (eight at once, each
/// waiting a while, so they pile up) all go to the other state and answer while the stuck call
/// still runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_calls_avoid_a_state_stuck_where_lua_cannot_yield() {
    // Counting instructions, the loop is checked only every 10 000 of them: stuck for good.
    let (_s, c) = start_with_budget(
        600_000,
        &[
            "--script-states",
            "2",
            "--script-watchdog-ms",
            "60000",
            "--script-instructions",
            "4000000000",
        ],
    )
    .await;
    let stuck = started(&c, "stuck_in_vm", STUCK_STEPS).await;
    // Long enough for the stuck turn to count as stuck (ten time slices).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let naps: Vec<_> = (0..8)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move { run(&c, "nap", 300).await })
        })
        .collect();
    let mut last_nap = Instant::now();
    for nap in naps {
        let (r, took) = nap.await.unwrap();
        last_nap = Instant::now();
        assert_eq!(r.expect("the nap answers")["text"], "nap", "after {took:?}");
    }
    let (reply, stuck_done) = stuck.await.unwrap();
    let reply = reply.expect("the stuck call answers").expect("a reply");
    assert!(
        reply["text"].as_str().is_some_and(|t| t.contains(',')),
        "{reply}"
    );
    eprintln!(
        "the stuck call ended {:?} after the last nap",
        stuck_done.saturating_duration_since(last_nap)
    );
    assert!(
        last_nap < stuck_done,
        "a nap answered {:?} after the stuck call",
        last_nap - stuck_done
    );
}

/// Runs `protoserve check ARGS…` for at most 30 s: (exit code, None if killed; stderr).
fn check_bounded(args: &[&str]) -> (Option<i32>, String) {
    let mut cmd = std::process::Command::new(common::binary());
    cmd.arg("check").args(args);
    common::run_bounded(cmd)
}

/// Top-level code stopped by the load budget with an endless `__close` pending (one given to
/// the metatable after `setmetatable`): the stop ran it inside the hook, with hooks off, and
/// startup hung for good. Top-level code now runs in a coroutine the hook can yield, so
/// startup fails at once with the budget error at that line. (Where the clock pauses scripts,
/// the default, loading stops at its 5 s limit instead, also at that line.)
#[test]
fn stopped_top_level_code_leaves_no_close_handler_running() {
    load_stops_at(
        "local mt = {}\n\
         local obj = setmetatable({}, mt)\n\
         mt.__close = function() while true do end end\n\
         do\n\
         \x20 local x <close> = obj\n\
         \x20 while true do end\n\
         end\n\
         function Run(req) return {} end\n",
        "adv.lua:6",
    );
}

/// A load stopped while the script was inside a library function written in Lua (here
/// `string.rep`'s wrapper), or while the loop that resumes the load between two pauses ran,
/// named that code's place (`=stdlib:…`, `=protoserve guard:…`) instead of the script's line.
/// The stop now names the nearest line of the script file itself: where it called the library
/// function, or where it was last paused.
#[test]
fn a_load_stopped_inside_a_library_function_names_the_script_line() {
    load_stops_at(
        "local n = 0\n\
         while true do\n\
         \x20 n = n + #string.rep(\"ab\", 3, \",\")\n\
         end\n\
         function Run(req) return {} end\n",
        "adv.lua:3",
    );
}

/// `check` of a handler whose script `adv.lua` (its text `script`) never finishes loading ends
/// with exit 2 and the stop at `at`, with the budget counted in instructions and, by default,
/// by the clock.
fn load_stops_at(script: &str, at: &str) {
    let handlers = tempfile::tempdir().unwrap();
    std::fs::write(
        handlers.path().join("adv.json"),
        r#"{ "service": "adv.Adv", "methods": { "Run": { "script": "adv.lua" } } }"#,
    )
    .unwrap();
    std::fs::write(handlers.path().join("adv.lua"), script).unwrap();
    let protos = dir().join("protos");
    // A budget met well inside loading's 5 s on a busy machine: 20 million instructions of
    // `string.rep` calls took longer than that while CI built and tested alongside.
    for (mode, why) in [
        (&["--script-instructions", "2000000"][..], "budget"),
        (&[], "ran for more than 5 s"),
    ] {
        let mut args = vec![
            "--protos",
            protos.to_str().unwrap(),
            "--handlers",
            handlers.path().to_str().unwrap(),
        ];
        args.extend(mode);
        let (code, err) = check_bounded(&args);
        assert_eq!(code, Some(2), "startup did not end: {err}");
        assert!(err.contains(at), "{err}");
        assert!(err.contains(why), "{err}");
    }
}

/// A script's error message and `print` went to the log raw, so a newline in them started a
/// line that looked like the server's own (and a NUL cut it). Control characters are escaped.
#[tokio::test]
async fn script_text_cannot_forge_log_lines() {
    let handlers = tempfile::tempdir().unwrap();
    std::fs::write(
        handlers.path().join("adv.json"),
        r#"{ "service": "adv.Adv", "methods": { "Run": { "script": "adv.lua" } } }"#,
    )
    .unwrap();
    std::fs::write(
        handlers.path().join("adv.lua"),
        r#"function Run(req)
  print("printed\n2000-01-01T00:00:00Z  INFO forged by print\0")
  error("failed\n2000-01-01T00:00:00Z  INFO forged by error\0")
end
"#,
    )
    .unwrap();
    let (s, c) = common::serve_folders(&dir().join("protos"), handlers.path(), &[]).await;
    let r = c.unary("adv.Adv/Run", json!({})).await;
    assert_eq!(r.unwrap_err().code(), tonic::Code::Internal);
    // The log lines of both reach the reader before long.
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until
        && !(s.log().iter().any(|l| l.contains("printed"))
            && s.log().iter().any(|l| l.contains("failed")))
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let log = s.log();
    assert!(
        log.iter().any(|l| l.contains(r"printed\n2000-01-01")),
        "{log:?}"
    );
    assert!(
        log.iter().any(|l| l.contains(r"failed\n2000-01-01")),
        "{log:?}"
    );
    assert!(
        !log.iter()
            .any(|l| l.starts_with("2000-01-01") || l.contains('\0')),
        "{log:?}"
    );
}

/// Lua's `coroutine.resume` can raise after it has started: given more arguments than the
/// coroutine's stack has room for, with the state's memory full, making its "too many
/// arguments" message raised a memory error, which left by longjmp past the code that takes
/// back the note of the running coroutine for the clock. The note kept naming that suspended
/// coroutine, so the clock set its hook there, never on the code running: the loop the script
/// runs next (caught error, memory given back) was never paused or stopped, and its state was
/// lost for good (the coroutine it named is later freed, under a signal handler that still
/// writes to it). The coroutine is now resumed only where nothing can raise while it is noted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_error_in_coroutine_resume_leaves_the_call_stoppable() {
    let (_s, c) = start_with_budget(
        8_000,
        &[
            "--script-states",
            "1",
            "--script-watchdog-ms",
            "600000",
            "--script-memory",
            "96",
        ],
    )
    .await;
    let mut stream = c
        .server_stream_open("adv.Adv/Stream", json!({"name": "resume_args_oom", "n": 0}))
        .await
        .expect("the stream opens");
    let first = next_message(&mut stream).await.expect("a message");
    assert_eq!(first.expect("a message")["text"], "started");
    let armed = next_message(&mut stream)
        .await
        .expect("armed before the budget")
        .expect("a message");
    assert_eq!(armed["text"], "armed");
    // At least one resume failed with a memory error before one got through.
    let failed: i64 = armed["n"].as_str().unwrap_or("0").parse().unwrap_or(0);
    assert!(failed >= 1, "{armed}");
    let status = next_message(&mut stream)
        .await
        .expect_err("the spinning call is stopped");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("time budget"), "{status:?}");
    let (r, _) = run(&c, "quick", 0).await;
    assert_eq!(r.unwrap()["text"], "quick");
}

/// The next message of a stream, waited for a minute at most.
async fn next_message(
    stream: &mut tonic::Streaming<prost_reflect::DynamicMessage>,
) -> Result<Option<serde_json::Value>, tonic::Status> {
    match tokio::time::timeout(Duration::from_secs(60), stream.message()).await {
        Ok(r) => r.map(|m| m.map(|m| common::to_json(&m))),
        Err(_) => Err(tonic::Status::unknown("CLIENT TIMEOUT")),
    }
}

/// A state that uses much memory limits how many calls it keeps paused for a time slice, so
/// that calls holding big values are not all paused holding them. The memory counted includes
/// garbage: when that limit was "none", one call that left a 64 MiB string behind made a later
/// long loop run unpaused, and quick calls on its state waited for its end. Now such a state
/// still pauses one call, and collects after a call while it is over the mark; here two long
/// loops follow the garbage, and quick calls answer while both run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_left_by_an_ended_call_does_not_stop_time_slices() {
    let (_s, c) = start_with_budget(
        600_000,
        &["--script-states", "1", "--script-watchdog-ms", "60000"],
    )
    .await;
    let (r, _) = run(&c, "garbage", 64 << 20).await;
    assert_eq!(r.expect("the call answers")["n"], (64 << 20).to_string());
    let first = started(&c, "spin_plain", SPIN_PLAIN_STEPS).await;
    quick_calls_overtake_on(&c, "spin_plain", SPIN_PLAIN_STEPS, "spun").await;
    let (reply, _) = first.await.unwrap();
    let reply = reply
        .expect("the first long call answers")
        .expect("a reply");
    assert_eq!(reply["text"], "spun", "{reply}");
}

/// Loop steps `spin_plain` runs: seconds of work.
const SPIN_PLAIN_STEPS: i64 = 300_000_000;
