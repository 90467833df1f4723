//! Regressions of the command line: flags with values that would silently lift a limit or
//! exhaust the machine are refused, and a file named on the command line is named back when it
//! cannot be read. `protoserve list | head -1` ended with a panic ("failed printing to stdout:
//! Broken pipe") and a backtrace on stderr once head had gone: a reader that stops early now ends
//! the listing quietly. So does `protoserve verify | head -1`, whose verdicts still set the exit
//! status, and `check` into a pipe closed before it writes. A size flag given `1.5MiB` called
//! `.5mib` an unknown unit (so did `-1M`, `+5`), and a number too large was "not a size": a
//! fraction that makes whole bytes is taken now, and each other says what is wrong with it.
//! `protoserve verify` of a file that is not UTF-8 said "stream did not contain valid UTF-8"
//! without a place, and one nested too deep was "not valid JSON"; both are placed and named as
//! in a handler file now.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};

use common::{binary, repo, run};
use prost::Message as _;

/// The tutorial Greeter as a binary FileDescriptorSet.
fn greeter_set() -> Vec<u8> {
    protox::compile(["helloworld.proto"], [repo().join("protos")])
        .expect("compile the Greeter")
        .encode_to_vec()
}

#[test]
fn a_missing_descriptor_set_is_named_with_its_flag_while_the_cache_is_on() {
    let cache = tempfile::tempdir().unwrap();
    let cache = cache.path().to_str().unwrap();
    let (code, _, err) = run(&[
        "check",
        "--descriptor-set",
        "no/such/set.binpb",
        "--cache-dir",
        cache,
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--descriptor-set no/such/set.binpb: no such file")
            && err.contains("buf build"),
        "{err}"
    );
    let (code, _, err) = run(&["check", "--descriptor-set", "protos", "--cache-dir", cache]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--descriptor-set protos: a folder, not a file"),
        "{err}"
    );
}

#[test]
fn a_descriptor_set_from_a_pipe_is_read_once_while_the_cache_is_on() {
    let dir = tempfile::tempdir().unwrap();
    let handlers = dir.path().join("handlers");
    std::fs::create_dir(&handlers).unwrap();
    std::fs::write(
        handlers.join("greeter.json"),
        r#"{"service": "helloworld.Greeter", "methods": {"SayHello": {"reply": {"message": "hi"}}}}"#,
    )
    .unwrap();
    let mut child = Command::new(binary())
        .current_dir(repo())
        .args(["check", "--descriptor-set", "/dev/stdin", "--handlers"])
        .arg(&handlers)
        .arg("--cache-dir")
        .arg(dir.path().join("cache"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&greeter_set())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(
        stdout.starts_with("ok: 1 services, 2 methods (1 with handlers)"),
        "{stdout}"
    );
}

#[test]
fn script_memory_zero_is_refused_rather_than_unlimited() {
    // The Lua allocator reads a limit of 0 (or one past isize::MAX bytes) as no limit at all.
    for value in ["0", "9007199254740992"] {
        let (code, _, err) = run(&["check", "--script-memory", value]);
        assert_eq!(code, 2, "--script-memory {value}: {err}");
        assert!(
            err.contains("--script-memory") && err.contains("from 1 to 1048576"),
            "{err}"
        );
    }
    let (code, out, err) = run(&["check", "--script-memory", "1"]);
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn script_states_past_the_cap_are_refused_before_any_state_starts() {
    // 4096 states take 1.6 GiB and 8 s to start; a typo's 100000 would exhaust the machine.
    let (code, _, err) = run(&["check", "--script-states", "1025"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--script-states") && err.contains("at most 1024"),
        "{err}"
    );
}

#[test]
fn zero_milliseconds_for_scripts_are_refused() {
    for flag in ["--script-time-ms", "--script-watchdog-ms"] {
        let (code, _, err) = run(&["check", flag, "0"]);
        assert_eq!(code, 2, "{flag} 0: {err}");
        assert!(
            err.contains(flag) && err.contains("must be at least 1"),
            "{err}"
        );
    }
}

#[test]
fn a_handlers_path_that_is_a_file_is_named_with_its_flag() {
    let (code, _, err) = run(&["check", "--handlers", "handlers/helloworld.json"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--handlers handlers/helloworld.json: not a folder (point --handlers at"),
        "{err}"
    );
}

#[test]
fn a_listen_or_admin_address_without_an_ip_says_what_to_write() {
    for (flag, value, wanted) in [
        (
            "--listen",
            "50051",
            "a port without an address; give both, such as 127.0.0.1:50051",
        ),
        (
            "--listen",
            "localhost:50051",
            "not an IP address with a port; give one such as 127.0.0.1:50051",
        ),
        (
            "--admin",
            "9901",
            "a port without an address; give both, such as 127.0.0.1:9901; or off",
        ),
    ] {
        let (code, _, err) = run(&[flag, value]);
        assert_eq!(code, 2, "{flag} {value}: {err}");
        assert!(err.contains(wanted), "{flag} {value}: {err}");
    }
}

#[test]
fn verify_admin_takes_the_addresses_serve_admin_takes_and_says_what_to_write() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("none.json");
    std::fs::write(
        &file,
        r#"{"method": "helloworld.Greeter/SayHello", "exactly": 0}"#,
    )
    .unwrap();
    let file = file.to_str().unwrap();
    for (value, wanted) in [
        (
            "9901",
            "a port without an address; give both, such as 127.0.0.1:9901",
        ),
        (
            ":9901",
            "a port without an address; give both, such as 127.0.0.1:9901",
        ),
        ("off", "the server's admin API must be on for verify"),
        ("127.0.0.1:0", "port 0 is where serve picks a free port"),
    ] {
        let (code, _, err) = run(&["verify", "--admin", value, file]);
        assert_eq!(code, 2, "verify --admin {value}: {err}");
        assert!(err.contains(wanted), "verify --admin {value}: {err}");
        assert!(
            !err.contains("invalid socket address"),
            "verify --admin {value}: {err}"
        );
    }
    // What serve was given, and what its log shows, reach it.
    let server = common::Server::start(&[]);
    let admin = server.admin_addr().to_string();
    for value in [admin.clone(), format!("http://{admin}/")] {
        let (code, out, err) = run(&["verify", "--admin", &value, file]);
        assert_eq!(code, 0, "verify --admin {value}: {out}{err}");
    }
}

#[test]
fn verify_of_an_empty_file_points_at_no_column_zero() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.json");
    std::fs::write(&empty, "").unwrap();
    let (code, _, err) = run(&["verify", empty.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    // Columns count from 1; the end of an empty file has none, as in a handler file.
    let wanted = format!("error: {}:1: not valid JSON:", empty.display());
    assert!(err.starts_with(&wanted), "{err}");
}

#[test]
fn options_before_a_subcommand_are_refused_rather_than_ignored() {
    // They were the default serve's, left unused: this checked protos/ and said ok.
    for (args, sub) in [
        (&["--protos", "no/such/protos", "check"][..], "check"),
        (&["--handlers", "no/such/handlers", "list"][..], "list"),
    ] {
        let (code, out, err) = run(args);
        assert_eq!(code, 2, "{args:?}: {out}{err}");
        assert!(
            err.contains(&format!("the subcommand '{sub}' cannot be used with"))
                && err.contains(&format!(
                    "give the options after the subcommand, as in `protoserve {sub} --protos DIR`"
                )),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn zero_timeouts_and_a_zero_message_size_are_refused() {
    // With --handshake-timeout 0, a client whose preface came 100 ms after it connected got the
    // server's SETTINGS and was closed; with --keepalive-timeout 0, a client that answered the
    // first ping 20 ms later was dropped; --max-message-size 0 leaves room for empty messages only.
    // (`--protos` names no folder so that a binary taking the value stops at once anyway.)
    for (flag, value, wanted) in [
        ("--handshake-timeout", "0", "must be more than 0"),
        ("--keepalive-timeout", "0ms", "must be more than 0"),
        ("--max-message-size", "0", "must be at least 1"),
    ] {
        let (code, _, err) = run(&["serve", flag, value, "--protos", "no/such/protos"]);
        assert_eq!(code, 2, "{flag} {value}: {err}");
        assert!(
            err.contains(&format!("invalid value '{value}' for '{flag}")) && err.contains(wanted),
            "{flag} {value}: {err}"
        );
    }
    let (code, _, err) = run(&["check", "--max-message-size", "0"]);
    assert_eq!(code, 2, "{err}");
}

#[test]
fn a_device_as_descriptor_set_is_refused_without_reading_it() {
    // /dev/null read as "holds no files" (blaming a pipe); /dev/zero was read until memory ran
    // out. Only /dev/null is tried here, so that an older binary cannot exhaust the machine.
    let (code, _, err) = run(&["check", "--descriptor-set", "/dev/null", "--no-cache"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--descriptor-set /dev/null: a device, not a file"),
        "{err}"
    );
}

#[test]
fn list_into_a_pipe_closed_after_the_first_line_ends_quietly() {
    // A listing far larger than a pipe holds (64 KiB), so that the server is still writing when
    // the reader goes: 40 services of 100 methods, about 250 KiB of lines.
    let dir = tempfile::tempdir().unwrap();
    let protos = dir.path().join("protos");
    let handlers = dir.path().join("handlers");
    std::fs::create_dir(&protos).unwrap();
    std::fs::create_dir(&handlers).unwrap();
    let mut proto = String::from("syntax = \"proto3\";\npackage wide;\nmessage M {}\n");
    for s in 0..40 {
        proto.push_str(&format!("service Service{s} {{\n"));
        for m in 0..100 {
            proto.push_str(&format!("  rpc Method{m} (M) returns (M);\n"));
        }
        proto.push_str("}\n");
    }
    std::fs::write(protos.join("wide.proto"), proto).unwrap();
    let child = Command::new(binary())
        .current_dir(dir.path())
        .args(["list", "--no-cache", "--protos"])
        .arg(&protos)
        .arg("--handlers")
        .arg(&handlers)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run protoserve list");
    // `| head -1`: read the first line, then close the pipe.
    let (first, code, err) = first_line_then_close(child);
    assert_eq!(first, "wide.Service0\n");
    assert!(
        !err.contains("panicked") && !err.contains("failed printing"),
        "{err}"
    );
    assert_eq!(err, "", "nothing on stderr when the reader stops early");
    assert_eq!(code, Some(0), "{err}");
}

/// Reads the first line of `child`'s stdout, closes the pipe, and waits: (exit code, stderr).
fn first_line_then_close(mut child: std::process::Child) -> (String, Option<i32>, String) {
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (first, child.wait().unwrap().code(), err)
}

#[test]
fn verify_into_a_pipe_closed_after_the_first_line_ends_quietly_with_its_verdict() {
    // 2 000 verifies print about 150 KiB of verdicts, more than a pipe holds.
    let server = common::Server::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("many.json");
    let one = r#"{"method": "helloworld.Greeter/SayHello", "exactly": 0}"#;
    std::fs::write(&file, format!("[{}]", vec![one; 2000].join(","))).unwrap();
    let child = Command::new(binary())
        .args(["verify", "--admin", &server.admin_addr().to_string()])
        .arg(&file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run protoserve verify");
    let (first, code, err) = first_line_then_close(child);
    assert!(first.starts_with("ok: "), "{first}");
    assert!(
        !err.contains("panicked") && !err.contains("failed printing"),
        "{err}"
    );
    assert_eq!(err, "", "nothing on stderr when the reader stops early");
    assert_eq!(code, Some(0), "every verify holds: {err}");
}

#[test]
fn check_into_a_pipe_closed_before_it_writes_ends_quietly() {
    let mut child = Command::new(binary())
        .current_dir(repo())
        .args(["check", "--no-cache"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run protoserve check");
    // The reader goes while check still loads (tens of milliseconds).
    drop(child.stdout.take());
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let code = child.wait().unwrap().code();
    assert!(
        !err.contains("panicked") && !err.contains("failed printing"),
        "{err}"
    );
    assert_eq!(code, Some(0), "the files are fine: {err}");
}

/// Every size flag reads sizes as `--journal-bytes` does: `--max-buffered 1GiB` was refused with
/// "invalid digit found in string", and `--max-message-size` took bare bytes only. A size with
/// a unit is honoured: a message past `--max-message-size 1KiB` is refused.
#[tokio::test]
async fn size_flags_take_units_as_the_journal_size_does() {
    let server = common::Server::start(&[
        "--max-message-size",
        "1KiB",
        "--max-buffered",
        "1GiB",
        "--max-buffered-per-connection",
        "64MiB",
    ]);
    let client = common::Client::connect(server.addr, common::pool(&repo().join("protos"))).await;
    let small = client
        .unary(
            "helloworld.Greeter/SayHello",
            serde_json::json!({"name": "x".repeat(900)}),
        )
        .await
        .expect("a message under 1 KiB");
    assert!(
        small["message"].as_str().unwrap().ends_with("xx!"),
        "{small}"
    );
    let big = client
        .unary(
            "helloworld.Greeter/SayHello",
            serde_json::json!({"name": "x".repeat(1100)}),
        )
        .await
        .expect_err("a message over 1 KiB");
    assert_eq!(big.code(), tonic::Code::ResourceExhausted, "{big:?}");
    let (code, _, err) = run(&[
        "serve",
        "--max-buffered",
        "1x",
        "--protos",
        "no/such/protos",
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("KiB, MiB or GiB"), "{err}");
}

/// A size flag says what is wrong with a size that is not one: `1.5MiB` was refused as the
/// "unknown unit \".5mib\"" (it means 1536KiB, and is taken now, as a duration takes `1.5s`),
/// `-1M` and `+5` were unknown units too (`1e6` still names `e6`, which is one), and a number
/// too large for the machine was "not a size".
#[test]
fn size_flags_say_what_is_wrong_with_a_size() {
    let handlers = tempfile::tempdir().unwrap();
    let check = |flag: &str, size: &str| {
        let (code, _, err) = run(&[
            "check",
            &format!("{flag}={size}"),
            "--protos",
            repo().join("protos").to_str().unwrap(),
            "--handlers",
            handlers.path().to_str().unwrap(),
        ]);
        (code, err)
    };
    let (code, err) = check("--max-message-size", "1.5MiB");
    assert_eq!(code, 0, "{err}");
    for (size, wanted) in [
        ("0.3KiB", "\"0.3KiB\" is not a whole number of bytes"),
        ("-1M", "\"-1M\" is not a size"),
        ("+5", "\"+5\" is not a size"),
        ("1e6", "unknown unit \"e6\" in \"1e6\""),
        ("4 TB", "unknown unit \"TB\" in \"4 TB\""),
        (
            "99999999999999999999",
            "\"99999999999999999999\" is too large",
        ),
        (
            "99999999999999999999G",
            "\"99999999999999999999G\" is too large",
        ),
    ] {
        let (code, err) = check("--max-message-size", size);
        assert_eq!(code, 2, "{size}: {err}");
        assert!(err.contains(wanted), "{size}: {wanted:?} missing in {err}");
    }
}

/// `protoserve verify` places a file that is not UTF-8 at its first bad byte, as `check` does
/// a handler file ("stream did not contain valid UTF-8" named no place), and says a file nested
/// more than 128 deep is so, not "not valid JSON: recursion limit exceeded".
#[test]
fn verify_places_a_file_that_is_not_utf8_and_names_deep_nesting() {
    let dir = tempfile::tempdir().unwrap();
    let verify = |name: &str, bytes: &[u8]| {
        let file = dir.path().join(name);
        std::fs::write(&file, bytes).unwrap();
        let file = file.to_str().unwrap().to_owned();
        let (code, _, err) = run(&["verify", "--admin", "127.0.0.1:1", &file]);
        assert_eq!(code, 2, "{err}");
        (file, err)
    };
    let (file, err) = verify(
        "latin1.json",
        b"\xEF\xBB\xBF{\"method\": \"helloworld.Greeter/SayHello\",\n \"when\": {\"request\": {\"name\": \"caf\xE9\"}}}",
    );
    assert!(
        err.contains(&format!("error: {file}:2:35: not UTF-8 text")),
        "{err}"
    );
    assert!(err.contains("help: save the file as UTF-8"), "{err}");
    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    let (file, err) = verify("deep.json", deep.as_bytes());
    assert!(
        err.contains(&format!(
            "error: {file}:1:128: arrays and objects nested more than 128 deep"
        )),
        "{err}"
    );
}

/// `check 2>&1 | head -1` of a handler file with thousands of problems: the report fills the
/// pipe, the reader goes, and `eprintln!` panicked (exit 101, the panic unseen with stderr
/// gone). The report is written quietly and `check` exits 2 for the problems.
#[test]
fn check_reporting_into_a_closed_pipe_exits_for_its_problems() {
    let dir = tempfile::tempdir().unwrap();
    let methods: Vec<String> = (0..3000)
        .map(|i| format!("\"NoSuchMethod{i}\": {{ \"reply\": {{}} }}"))
        .collect();
    std::fs::write(
        dir.path().join("k.json"),
        format!(
            "{{ \"service\": \"helloworld.Greeter\", \"methods\": {{ {} }} }}",
            methods.join(",\n")
        ),
    )
    .unwrap();
    let mut child = Command::new(binary())
        .current_dir(repo())
        .args(["check", "--no-cache", "--handlers"])
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run protoserve check");
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut first = String::new();
    err.read_line(&mut first).unwrap();
    drop(err);
    let code = child.wait().unwrap().code();
    assert!(first.contains("NoSuchMethod"), "{first}");
    assert_eq!(code, Some(2), "the problems, not a panic: {first}");
}

/// An HTTP/1.1 server on loopback that answers every request with 200 and `body`, then closes.
fn fake_admin(body: &'static str) -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            // The request line, headers and the small verify body arrive at once.
            let mut buf = [0u8; 8192];
            let _ = stream.read(&mut buf);
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    addr
}

/// `protoserve verify` pointed at something that answers 200 but is not protoserve's admin API
/// printed `FAILED: ` with no reason and exited 1, as if the verify did not hold (and an
/// answer of `{"ok": true}` from any server passed with 0); both are errors now (exit 2) that
/// show what came back and where to point `--admin`.
#[test]
fn verify_refuses_an_answer_that_is_not_a_verdict() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("v.json");
    std::fs::write(
        &file,
        r#"{"method": "helloworld.Greeter/SayHello", "exactly": 1}"#,
    )
    .unwrap();
    for body in ["not json", "{}", "<html>", r#"{"ok": true}"#, ""] {
        let addr = fake_admin(body).to_string();
        let (code, out, err) = run(&["verify", "--admin", &addr, file.to_str().unwrap()]);
        assert_eq!(code, 2, "{body:?}: out {out:?}, err {err:?}");
        assert!(
            err.contains("with something other than a verify's verdict"),
            "{body:?}: {err}"
        );
        assert!(err.contains("help: point --admin"), "{body:?}: {err}");
        assert!(!out.contains("ok:") && !out.contains("FAILED"), "{out}");
    }
}
