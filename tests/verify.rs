//! `verify` over the admin API and from the command line: counts, conditions on any message of
//! a call, and failures that explain themselves.

mod common;

use common::{Client, Server};
use serde_json::{json, Value as Json};
use tonic::metadata::MetadataMap;

fn kitchen() -> Server {
    Server::kitchen()
}

async fn client(server: &Server) -> Client {
    Client::connect(
        server.addr,
        common::pool(&common::fixtures().join("protos")),
    )
    .await
}

async fn verify(server: &Server, body: Json) -> Json {
    let (status, answer) = server.admin_post("/v1/verify", &body).await;
    assert_eq!(status, 200, "{body}: {answer:#}");
    answer
}

async fn call_get(client: &Client, id: &str, user: Option<&str>) {
    let mut md = MetadataMap::new();
    if let Some(user) = user {
        md.insert("x-user", user.parse().unwrap());
    }
    client
        .unary_with(
            "kitchen.Kitchen/Get",
            json!({"id": id, "limit": 5, "name": "pan"}),
            md,
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn counts_and_conditions() {
    let server = kitchen();
    let client = client(&server).await;
    call_get(&client, "1", Some("ann")).await;
    call_get(&client, "2", Some("bob")).await;
    call_get(&client, "2", None).await;

    let get = "kitchen.Kitchen/Get";
    for (body, ok, count) in [
        (json!({"method": get}), true, 3),
        (json!({"method": get, "exactly": 3}), true, 3),
        (json!({"method": get, "exactly": 2}), false, 3),
        (
            json!({"method": get, "when": {"request": {"id": "2"}}, "exactly": 2}),
            true,
            2,
        ),
        (
            json!({"method": get, "when": {"request": {"id": "2"}}, "at_most": 1}),
            false,
            2,
        ),
        (
            json!({"method": get, "when": {"request": {"limit": {"gte": 5}}}, "at_least": 3}),
            true,
            3,
        ),
        (
            json!({"method": get, "when": {"metadata": {"x-user": "ann"}}, "exactly": 1}),
            true,
            1,
        ),
        (
            json!({"method": get, "when": {"metadata": {"x-user": {"present": false}}}}),
            true,
            1,
        ),
        (
            json!({"method": get, "when": {"request": {"id": "2"}, "metadata": {"x-user": "bob"}}, "exactly": 1}),
            true,
            1,
        ),
        (
            json!({"method": get, "when": {"request": {"id": "3"}}, "exactly": 0}),
            true,
            0,
        ),
        (
            json!({"method": get, "at_least": 1, "at_most": 2}),
            false,
            3,
        ),
        (json!({"method": "kitchen.Kitchen/Fail"}), false, 0),
    ] {
        let answer = verify(&server, body.clone()).await;
        assert_eq!(answer["ok"], ok, "{body}: {answer:#}");
        assert_eq!(answer["count"], count, "{body}: {answer:#}");
    }
    // Too many: the message names the calls that matched.
    let answer = verify(
        &server,
        json!({"method": get, "when": {"request": {"id": "2"}}, "at_most": 1}),
    )
    .await;
    let message = answer["message"].as_str().unwrap();
    assert!(
        message.starts_with(
            "expected at most 1 call to kitchen.Kitchen/Get matching the conditions, found 2"
        ),
        "{message}"
    );
    assert_eq!(answer["matched"].as_array().unwrap().len(), 2);
    // No calls at all: said so.
    let answer = verify(&server, json!({"method": "kitchen.Kitchen/Fail"})).await;
    assert!(answer["message"]
        .as_str()
        .unwrap()
        .contains("the journal has no calls to kitchen.Kitchen/Fail"));
}

#[tokio::test]
async fn a_failed_verify_shows_the_closest_calls_and_what_failed() {
    let server = kitchen();
    let client = client(&server).await;
    call_get(&client, "1", Some("ann")).await;
    call_get(&client, "2", Some("bob")).await;
    call_get(&client, "3", None).await;
    let answer = verify(
        &server,
        json!({"method": "kitchen.Kitchen/Get",
               "when": {"request": {"id": "2", "limit": {"gt": 6}}, "metadata": {"x-user": "ann"}},
               "exactly": 1}),
    )
    .await;
    assert_eq!(answer["ok"], false);
    assert_eq!(answer["expected"], json!({"exactly": 1}));
    assert_eq!(answer["count"], 0);
    assert_eq!(answer["calls_to_method"], 3);
    let misses = answer["near_misses"].as_array().unwrap();
    assert_eq!(misses.len(), 3);
    // Closest first: the calls with two failed conditions, newest first, then the one with three.
    let failed = |i: usize| -> Vec<&str> {
        misses[i]["failed"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f.as_str().unwrap())
            .collect()
    };
    assert_eq!(
        failed(0),
        [
            "metadata x-user: wanted \"ann\", got \"bob\"",
            "request.limit: wanted gt 6, got 5"
        ]
    );
    assert_eq!(
        failed(1),
        [
            "request.id: wanted \"2\", got \"1\"",
            "request.limit: wanted gt 6, got 5"
        ]
    );
    assert_eq!(
        failed(2),
        [
            "metadata x-user: wanted \"ann\", got missing",
            "request.id: wanted \"2\", got \"3\"",
            "request.limit: wanted gt 6, got 5"
        ]
    );
    assert_eq!(misses[0]["request"]["id"], "2");
    let message = answer["message"].as_str().unwrap();
    assert!(
        message.contains("expected exactly 1 call to kitchen.Kitchen/Get matching the conditions, found 0; closest: call"),
        "{message}"
    );
    // "show" limits the list.
    let answer = verify(
        &server,
        json!({"method": "kitchen.Kitchen/Get", "when": {"request": {"id": "9"}}, "show": 1}),
    )
    .await;
    assert_eq!(answer["near_misses"].as_array().unwrap().len(), 1);
    // Without "show", at most 5 are listed.
    for id in ["4", "5", "6", "7"] {
        call_get(&client, id, None).await;
    }
    let answer = verify(
        &server,
        json!({"method": "kitchen.Kitchen/Get", "when": {"request": {"id": "9"}}}),
    )
    .await;
    assert_eq!(answer["calls_to_method"], 7, "{answer:#}");
    assert_eq!(
        answer["near_misses"].as_array().unwrap().len(),
        5,
        "{answer:#}"
    );
}

#[tokio::test]
async fn any_message_of_a_stream_can_match() {
    let server = kitchen();
    let client = client(&server).await;
    client
        .client_stream(
            "kitchen.Kitchen/Collect",
            vec![
                json!({"id": "a"}),
                json!({"id": "needle", "limit": 2}),
                json!({"id": "c"}),
            ],
        )
        .await
        .unwrap();
    client
        .client_stream("kitchen.Kitchen/Collect", vec![json!({"id": "x"})])
        .await
        .unwrap();
    let answer = verify(
        &server,
        json!({"method": "kitchen.Kitchen/Collect", "when": {"request": {"id": "needle", "limit": 2}}}),
    )
    .await;
    assert_eq!(answer["ok"], true, "{answer:#}");
    assert_eq!(answer["count"], 1);
    // Conditions hold within one message, not across messages.
    let answer = verify(
        &server,
        json!({"method": "kitchen.Kitchen/Collect", "when": {"request": {"id": "a", "limit": 2}}}),
    )
    .await;
    assert_eq!(answer["count"], 0, "{answer:#}");
    let first = &answer["near_misses"][0];
    assert_eq!(first["failed"].as_array().unwrap().len(), 1, "{first:#}");
    // A call with no request message fails a request condition, saying so.
    client
        .client_stream("kitchen.Kitchen/Collect", vec![])
        .await
        .unwrap();
    let answer = verify(
        &server,
        json!({"method": "kitchen.Kitchen/Collect", "when": {"request": {"id": "zzz"}}, "show": 50}),
    )
    .await;
    let says_empty = answer["near_misses"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["failed"][0] == "the call has no request message");
    assert!(says_empty, "{answer:#}");
}

#[tokio::test]
async fn a_bad_verify_is_refused_like_a_bad_rule() {
    let server = kitchen();
    let (status, answer) = server
        .admin_post(
            "/v1/verify",
            &json!({"method": "kitchen.Kitchen/Get", "when": {"request": {"limit": {"prefix": "a"}}}}),
        )
        .await;
    assert_eq!(status, 400);
    let message = answer["message"].as_str().unwrap();
    assert!(message.contains("when.request.limit.prefix"), "{message}");
    assert!(message.contains("works on string fields"), "{message}");
    let (status, answer) = server
        .admin_post("/v1/verify", &json!({"method": "kitchen.Kitchen/Gett"}))
        .await;
    assert_eq!(status, 404);
    assert!(answer["message"]
        .as_str()
        .unwrap()
        .contains("did you mean \"kitchen.Kitchen/Get\""));
}

/// Runs `protoserve verify ARGS…` with `file` holding `body`.
fn cli(args: &[&str], body: &str) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("verify.json");
    std::fs::write(&file, body).unwrap();
    let mut all = vec!["verify"];
    all.extend_from_slice(args);
    all.push(file.to_str().unwrap());
    common::run(&all)
}

#[tokio::test]
async fn verify_command_exits_0_1_or_2() {
    let server = Server::start(&[
        "--protos",
        common::fixtures().join("protos").to_str().unwrap(),
        "--handlers",
        common::fixtures().join("handlers").to_str().unwrap(),
        "--admin-token",
        "tok",
    ]);
    let client = client(&server).await;
    call_get(&client, "1", Some("ann")).await;
    let admin = server.admin_addr().to_string();
    let url = format!("http://{admin}/");
    let holds =
        r#"{"method": "kitchen.Kitchen/Get", "when": {"request": {"id": "1"}}, "exactly": 1}"#;
    let fails = r#"{"method": "kitchen.Kitchen/Get", "when": {"request": {"id": "2"}}}"#;

    let run = |args: Vec<String>, body: String| {
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            cli(&args, &body)
        })
    };
    let with = |addr: &str| {
        vec![
            "--admin".to_owned(),
            addr.to_owned(),
            "--admin-token".to_owned(),
            "tok".to_owned(),
        ]
    };
    let (code, out, err) = run(with(&admin), holds.into()).await.unwrap();
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("ok: expected exactly 1 call"), "{out}");

    let (code, out, err) = run(with(&url), fails.into()).await.unwrap();
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.starts_with("FAILED: expected at least 1 call"), "{out}");
    assert!(out.contains("request.id: wanted \"2\", got \"1\""), "{out}");

    // Several verifies: all run, any failure fails.
    let (code, out, _) = run(with(&admin), format!("[{holds}, {fails}]"))
        .await
        .unwrap();
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("ok: [0]") && out.contains("FAILED: [1]"),
        "{out}"
    );

    // Usage and connection problems.
    let (code, _, err) = run(vec!["--admin".into(), admin.clone()], holds.into())
        .await
        .unwrap();
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("401") && err.contains("Bearer"), "{err}");
    let (code, _, err) = run(with(&admin), "{\"method\": ".into()).await.unwrap();
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("verify.json:1:"), "{err}");
    let (code, _, err) = run(with(&admin), r#"{"methd": "x"}"#.into()).await.unwrap();
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("did you mean \"method\""), "{err}");
    // A method the server does not serve is a mistake in the file, not a failed verify.
    let (code, out, err) = run(with(&admin), r#"{"method": "kitchen.Kitchen/Gte"}"#.into())
        .await
        .unwrap();
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("did you mean \"kitchen.Kitchen/Get\""),
        "{err}"
    );
    // A file that checks nothing would always pass: refused.
    let (code, out, err) = run(with(&admin), "[]".into()).await.unwrap();
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("no verifies"), "{err}");
    // "-" reads the verifies from standard input; the token may come from the environment.
    let stdin = {
        let admin = admin.clone();
        let holds = holds.to_owned();
        tokio::task::spawn_blocking(move || {
            let mut child = std::process::Command::new(common::binary())
                .args(["verify", "--admin", &admin, "-"])
                .env("PROTOSERVE_ADMIN_TOKEN", "tok")
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            std::io::Write::write_all(&mut child.stdin.take().unwrap(), holds.as_bytes()).unwrap();
            child.wait_with_output().unwrap()
        })
        .await
        .unwrap()
    };
    let out = String::from_utf8_lossy(&stdin.stdout);
    assert_eq!(stdin.status.code(), Some(0), "{out}");
    assert!(out.starts_with("ok: expected exactly 1 call"), "{out}");
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let (code, _, err) = run(with(&closed), holds.into()).await.unwrap();
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("cannot reach the admin API"), "{err}");
    let (code, _, err) = tokio::task::spawn_blocking(|| common::run(&["verify"]))
        .await
        .unwrap();
    assert_eq!(code, 2, "{err}");
}

/// A verify with a key given twice (`"exactly": 1, "exactly": 0`) ran with the last value, so
/// a user who meant one call passed with none: it is refused, over the admin API (400, at its
/// line and column) and from `protoserve verify` (exit 2, at `file:line:col`), naming the
/// first.
#[tokio::test]
async fn a_verify_with_a_key_given_twice_is_refused() {
    let server = kitchen();
    let twice = r#"{"method": "kitchen.Kitchen/Get", "exactly": 1, "exactly": 0}"#;
    let (status, answer) = server
        .admin_call("POST", "/v1/verify", None, Some(twice))
        .await;
    assert_eq!(status, 400, "{answer:#}");
    let message = answer["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("line 1, column 49")
            && message.contains("duplicate key \"exactly\"")
            && message.contains("the first is at line 1, column 35"),
        "{answer:#}"
    );
    let admin = server.admin_addr().to_string();
    let (code, out, err) = tokio::task::spawn_blocking(move || cli(&["--admin", &admin], twice))
        .await
        .unwrap();
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("verify.json:1:49: duplicate key \"exactly\"")
            && err.contains("help: keep one"),
        "{err}"
    );
}

/// A `-bin` key sent with a value that is not base64 is present (the journal shows it): a test
/// of presence holds, and a test of its bytes says the value is not valid base64, not that the
/// key is missing.
#[tokio::test]
async fn a_bin_key_whose_value_is_not_base64_is_present() {
    let server = kitchen();
    let mut send = common::h2_connect(server.addr).await.ready().await.unwrap();
    let req = common::grpc_request(server.addr, "/kitchen.Kitchen/Get")
        .header("x-bad-bin", "!!!not*base64")
        .body(())
        .unwrap();
    let (resp, mut body) = send.send_request(req, false).unwrap();
    body.send_data(
        bytes::Bytes::from_static(&[0, 0, 0, 0, 3, 0x0a, 1, b'1']),
        true,
    )
    .unwrap();
    let resp = resp.await.unwrap();
    let mut stream = resp.into_body();
    while let Some(chunk) = stream.data().await {
        chunk.unwrap();
    }
    let get = "kitchen.Kitchen/Get";
    let answer = verify(
        &server,
        json!({"method": get, "when": {"metadata": {"x-bad-bin": {"present": true}}}}),
    )
    .await;
    assert_eq!(answer["ok"], true, "{answer:#}");
    let answer = verify(
        &server,
        json!({"method": get, "when": {"metadata": {"x-bad-bin": "AAAA"}}}),
    )
    .await;
    assert_eq!(answer["ok"], false, "{answer:#}");
    let said = answer["near_misses"][0].to_string();
    assert!(
        said.contains("not valid base64")
            && said.contains("!!!not*base64")
            && !said.contains("missing"),
        "{answer:#}"
    );
}

/// `"show"` over 50 lists 50 near misses, as documented (larger values count as 50).
#[tokio::test]
async fn show_over_the_maximum_lists_at_most_50() {
    let server = kitchen();
    let client = client(&server).await;
    for i in 0..55 {
        call_get(&client, &i.to_string(), None).await;
    }
    let answer = verify(
        &server,
        json!({"method": "kitchen.Kitchen/Get", "when": {"request": {"id": "x"}}, "show": 100000}),
    )
    .await;
    assert_eq!(answer["calls_to_method"], 55, "{answer:#}");
    assert_eq!(answer["near_misses"].as_array().unwrap().len(), 50);
}

/// `since` and `until` take any RFC 3339 offset, not only `Z`.
#[tokio::test]
async fn journal_times_take_any_rfc3339_offset() {
    let server = kitchen();
    let client = client(&server).await;
    call_get(&client, "1", None).await;
    for since in [
        "1970-01-01T00:00:00-01:00",
        "1970-01-01T05:30:00%2B05:30",
        "1970-01-01T00:00:00Z",
    ] {
        let (status, page) = server
            .admin_call("GET", &format!("/v1/journal?since={since}"), None, None)
            .await;
        assert_eq!(status, 200, "since={since}: {page:#}");
        assert_eq!(page["calls"].as_array().unwrap().len(), 1, "since={since}");
    }
    // The offset counts: the same wall-clock time far ahead finds nothing.
    let (status, page) = server
        .admin_call(
            "GET",
            "/v1/journal?since=2999-01-01T00:00:00-01:00",
            None,
            None,
        )
        .await;
    assert_eq!(status, 200, "{page:#}");
    assert_eq!(page["calls"].as_array().unwrap().len(), 0);
}

/// `protoserve verify` read its file whole, whatever it was: `verify /dev/zero` and
/// `yes '[' | protoserve verify -` grew to gigabytes until killed. It reads at most what the
/// admin API takes in one request (1 MiB) and says so, and takes regular files (or `-`) only.
#[test]
fn verify_reads_at_most_what_the_admin_api_takes() {
    use std::io::Write;
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    let (code, err) = common::run_bounded({
        let mut cmd = Command::new(common::binary());
        cmd.args(["verify", "/dev/zero"]);
        cmd
    });
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("/dev/zero: not a regular file"), "{err}");

    let mut child = Command::new(common::binary())
        .args(["verify", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run protoserve verify -");
    let mut stdin = child.stdin.take().unwrap();
    // Endless input, until the reader goes away (or 30 s pass).
    let feeder = std::thread::spawn(move || {
        let chunk = vec![b'['; 64 * 1024];
        let until = Instant::now() + Duration::from_secs(30);
        while Instant::now() < until && stdin.write_all(&chunk).is_ok() {}
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    feeder.join().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    let status = status.expect("verify - of endless input ends by itself");
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(
        err.contains("-: more than 1 MiB, the most the admin API takes"),
        "{err}"
    );
}
