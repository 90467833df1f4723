//! Regressions of the command line: flags with values that would silently lift a limit or
//! exhaust the machine are refused, and a file named on the command line is named back when it
//! cannot be read.

mod common;

use std::io::Write;
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
