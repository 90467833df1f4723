//! Regressions of changes the file watcher did not see, which left the server serving an old
//! version for good:
//!
//! - A Kubernetes ConfigMap update. A ConfigMap volume holds each file as a link through
//!   `..data`, itself a link to the current version's hidden folder; an update writes a new
//!   folder and renames a new `..data` link over the old one. Every event of it is on a hidden
//!   name, and the watcher passed over hidden names.
//! - An overflow of the kernel's event queue (16,384 events by default: a `git checkout` of a
//!   big tree, or a server too busy to read them for a moment). The watcher is told that events
//!   were lost, and went on as if none had been; it now reads everything again.

mod common;

use std::os::unix::fs::symlink;
use std::process::Command;
use std::time::{Duration, Instant};

use common::project::{live_handler, Project};
use common::Client;
use serde_json::json;

/// Polls `Chat` until it answers with `word` (for 20 s at most).
async fn wait_for_word(client: &Client, word: &str) {
    let want = json!({ "text": format!("{word}: x") });
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = client.unary("live.Live/Chat", json!({"text": "x"})).await;
        if got.as_ref().ok() == Some(&want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "still {got:?} after 20 s, want {want}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn signal(pid: u32, name: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{name} failed");
}

#[tokio::test]
async fn a_configmap_style_update_reloads() {
    let project = Project::new();
    std::fs::remove_file(project.path("handlers/live.json")).unwrap();
    // handlers/..v1/live.json, handlers/..data -> ..v1, handlers/live.json -> ..data/live.json
    std::fs::create_dir(project.path("handlers/..v1")).unwrap();
    std::fs::write(project.path("handlers/..v1/live.json"), live_handler("v1")).unwrap();
    symlink("..v1", project.path("handlers/..data")).unwrap();
    symlink("..data/live.json", project.path("handlers/live.json")).unwrap();
    let server = project.start(&[]);
    let client = project.client(&server).await;
    wait_for_word(&client, "v1").await;

    // The update, as the kubelet makes it.
    std::fs::create_dir(project.path("handlers/..v2")).unwrap();
    std::fs::write(project.path("handlers/..v2/live.json"), live_handler("v2")).unwrap();
    symlink("..v2", project.path("handlers/..data_tmp")).unwrap();
    std::fs::rename(
        project.path("handlers/..data_tmp"),
        project.path("handlers/..data"),
    )
    .unwrap();
    std::fs::remove_dir_all(project.path("handlers/..v1")).unwrap();
    wait_for_word(&client, "v2").await;
}

/// The kernel's limit on queued events, and so how many events overflow it.
fn max_queued_events() -> usize {
    std::fs::read_to_string("/proc/sys/fs/inotify/max_queued_events")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(16_384)
}

#[tokio::test]
async fn an_overflow_of_the_event_queue_reloads_everything() {
    let project = Project::new();
    let server = project.start(&[]);
    let client = project.client(&server).await;
    wait_for_word(&client, "v1").await;
    // Stopped, the server reads no events: creating hidden files (several events each) fills
    // the queue past its limit, and the edit after them is one of the events lost.
    signal(server.pid(), "STOP");
    let files = max_queued_events();
    for i in 0..files {
        std::fs::write(project.path(&format!("handlers/.noise{i}")), b"x").unwrap();
    }
    project.write("handlers/live.json", &live_handler("v2"));
    signal(server.pid(), "CONT");
    wait_for_word(&client, "v2").await;
}
