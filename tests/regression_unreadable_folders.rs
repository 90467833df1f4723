//! Regressions of folders the server cannot read, under the folders it loads and watches. Each
//! used to go wrong:
//!
//! - an unreadable folder under `handlers/` or `data/` passed `check` (loading does not look
//!   into it) but stopped `serve` (its one recursive watch per folder failed on it): `check`
//!   said ok to a project `serve` refused;
//! - a folder made unreadable while serving went unnoticed by the reloads;
//! - an unreadable folder under an `-I` folder stopped `serve` although nothing imported from
//!   it, and `check` passed.
//!
//! The tests may run as root, which reads a `chmod 000` folder all the same: the server then
//! runs without the capabilities that let it, and each test first proves that it cannot read
//! the folder.

mod common;

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::project::{live_handler, Project};
use common::{binary, run_bounded, Client, Server};
use serde_json::json;

/// Whether this process runs as root (effective user id 0).
fn is_root() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .expect("Uid in /proc/self/status");
    uid.split_whitespace().nth(1) == Some("0")
}

/// A command that runs `program` subject to file permissions: as root, without the
/// capabilities that read any folder.
fn unprivileged(program: impl AsRef<OsStr>) -> Command {
    if !is_root() {
        return Command::new(program);
    }
    let mut command = Command::new("setpriv");
    command
        .arg("--bounding-set=-dac_override,-dac_read_search")
        .arg("--inh-caps=-dac_override,-dac_read_search")
        .arg("--")
        .arg(program);
    command
}

/// Sets `dir`'s permission bits.
fn chmod(dir: &Path, mode: u32) {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Makes `dir` unreadable, and proves that a program run as the server is cannot list it.
fn lock(dir: &Path) {
    chmod(dir, 0o000);
    let listed = unprivileged("ls")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run ls");
    assert!(
        !listed.success(),
        "{} is readable all the same: the test would prove nothing",
        dir.display()
    );
}

/// Waits (bounded) until `count` log lines contain `needle`.
fn wait_for_lines(server: &Server, needle: &str, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while server.log().iter().filter(|l| l.contains(needle)).count() < count {
        assert!(
            Instant::now() < deadline,
            "fewer than {count} log lines with {needle:?}: {:#?}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `live.Live/Chat` until it answers `want` (bounded).
async fn wait_for_answer(client: &Client, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = client.unary("live.Live/Chat", json!({"text": "x"})).await;
        if got.as_ref().ok() == Some(&json!({ "text": want })) {
            return;
        }
        assert!(Instant::now() < deadline, "still {got:?}, want {want}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn start(project: &Project, extra: &[&str]) -> Server {
    let mut args = project.args();
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    Server::start_command(unprivileged(binary()), &refs)
}

#[test]
fn an_unreadable_folder_in_an_input_folder_stops_check_and_serve_alike() {
    for input in ["handlers", "data", "protos"] {
        let project = Project::new();
        let locked = project.path(&format!("{input}/locked"));
        std::fs::create_dir(&locked).unwrap();
        lock(&locked);
        let said = format!(
            "{}: cannot read this folder: Permission denied",
            locked.display()
        );
        let mut check = unprivileged(binary());
        check.arg("check").args(project.args());
        let (code, err) = run_bounded(check);
        let mut serve = unprivileged(binary());
        serve
            .args(["serve", "--listen", "127.0.0.1:0", "--admin", "off"])
            .args(project.args());
        let (serve_code, serve_err) = run_bounded(serve);
        chmod(&locked, 0o755);
        assert_eq!(code, Some(2), "check refuses {input}/locked: {err}");
        assert!(err.contains(&said), "check names it and why: {err}");
        assert!(
            err.contains("help: make it readable by the server"),
            "and what to do: {err}"
        );
        assert_eq!(serve_code, Some(2), "serve as check: {serve_err}");
        assert!(serve_err.contains(&said), "with check's words: {serve_err}");
    }
}

#[tokio::test]
async fn a_folder_made_unreadable_while_serving_fails_the_reload_and_the_rest_stays_watched() {
    let project = Project::new();
    let sub = project.path("handlers/sub");
    std::fs::create_dir(&sub).unwrap();
    let server = start(&project, &["--no-cache"]);
    let client = project.client(&server).await;
    wait_for_answer(&client, "v1: x").await;
    lock(&sub);
    let said = format!("{}: cannot read this folder", sub.display());
    wait_for_lines(&server, &said, 1);
    wait_for_lines(&server, "reload (files changed) failed", 1);
    wait_for_answer(&client, "v1: x").await;
    // Still watched: a change elsewhere is a reload, which fails the same way.
    project.write("handlers/live.json", &live_handler("v2"));
    wait_for_lines(&server, &said, 2);
    wait_for_lines(&server, "reload (files changed) failed", 2);
    wait_for_answer(&client, "v1: x").await;
    chmod(&sub, 0o755);
    wait_for_answer(&client, "v2: x").await;
}

#[tokio::test]
async fn an_unreadable_folder_in_an_import_folder_leaves_the_rest_watched() {
    let project = Project::new();
    let locked = project.path("include/locked");
    std::fs::create_dir_all(&locked).unwrap();
    lock(&locked);
    let include = project.path("include").display().to_string();
    let server = start(&project, &["--no-cache", "-I", &include]);
    let client = project.client(&server).await;
    wait_for_answer(&client, "v1: x").await;
    wait_for_lines(
        &server,
        &format!("cannot watch {}: Permission denied", locked.display()),
        1,
    );
    project.write("handlers/live.json", &live_handler("v2"));
    wait_for_answer(&client, "v2: x").await;
    chmod(&locked, 0o755);
}

/// Each folder is watched on its own: a folder under an input folder removed and made again
/// (as `git checkout` does, often with the inode of the one before) is watched again.
#[tokio::test]
async fn a_folder_removed_and_made_again_under_an_input_folder_is_watched_again() {
    let project = Project::new();
    let script = |word: &str| {
        format!("function Chat(req) return {{ text = \"{word}: \" .. req.text }} end\n")
    };
    std::fs::create_dir(project.path("handlers/lib")).unwrap();
    project.write("handlers/lib/live.lua", &script("s1"));
    project.write(
        "handlers/live.json",
        r#"{"service": "live.Live", "methods": {"Chat": {"script": "lib/live.lua"}}}"#,
    );
    let server = start(&project, &["--no-cache"]);
    let client = project.client(&server).await;
    wait_for_answer(&client, "s1: x").await;
    std::fs::remove_dir_all(project.path("handlers/lib")).unwrap();
    wait_for_lines(&server, "reload (files changed) failed", 1);
    std::fs::create_dir(project.path("handlers/lib")).unwrap();
    project.write("handlers/lib/live.lua", &script("s2"));
    wait_for_answer(&client, "s2: x").await;
    // Only a change inside the new folder: seen through its own watch.
    project.write("handlers/lib/live.lua", &script("s3"));
    wait_for_answer(&client, "s3: x").await;
}
